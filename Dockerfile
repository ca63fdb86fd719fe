# Tandem gateway. The build stage compiles llama-cpp-python; the runtime stage is slim,
# runs as a non-root user and keeps models in a volume.
# BASE_IMAGE: any Debian-based image with python3 (3.10+) and its venv module. The
# default is the public one users pull; machines without Docker Hub build their own
# (deploy/base/build-base.sh, what `make deploy-test` does).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/build
WORKDIR /src
# llama-cpp-python compiles for minutes: its own layer, before any source, so a change to
# Tandem's code reuses it (the version is pyproject.toml's; make test checks they agree)
ARG LLAMA_CPP_VERSION=0.3.36
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
RUN /opt/build/bin/pip install --no-cache-dir --upgrade pip wheel \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels \
      "llama-cpp-python==${LLAMA_CPP_VERSION}"
COPY pyproject.toml README.md ./
COPY server ./server
COPY routers ./routers
COPY clients ./clients
COPY privacy ./privacy
RUN /opt/build/bin/pip wheel --no-cache-dir --find-links /wheels --wheel-dir /wheels .

FROM ${BASE_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 tandem \
 && python3 -m venv /opt/tandem
COPY --from=build /wheels /wheels
RUN /opt/tandem/bin/pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PATH=/opt/tandem/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TANDEM_CACHE=/home/tandem/.cache/tandem
# created here so that a new named volume takes this owner
RUN mkdir -p /home/tandem/.cache/tandem && chown -R 10001:10001 /home/tandem/.cache
USER 10001:10001
VOLUME ["/home/tandem/.cache/tandem"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
# Pass `--config /etc/tandem/tandem.yaml` (or set TANDEM_CONFIG) with a mounted file
# (deploy/); without either the embedded default config runs.
ENTRYPOINT ["tandem", "serve", "--host", "0.0.0.0", "--port", "8000"]
