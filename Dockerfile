# syntax=docker/dockerfile:1
# Tandem gateway. Build stage compiles llama-cpp-python; the runtime stage is slim,
# runs as a non-root user and keeps models in a volume.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY routers ./routers
COPY clients ./clients
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tandem
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENV TANDEM_CACHE=/home/tandem/.cache/tandem
VOLUME ["/home/tandem/.cache/tandem"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
# Pass `--config /etc/tandem/tandem.yaml` (or set TANDEM_CONFIG) with a mounted file
# (deploy/); without either the embedded default config runs.
ENTRYPOINT ["tandem", "serve", "--host", "0.0.0.0", "--port", "8000"]
