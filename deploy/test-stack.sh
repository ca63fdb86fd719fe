#!/usr/bin/env bash
# `make deploy-test`: the compose `cpu` stack built and run here, as a user would, with
# images made from a local Debian base (Docker Hub is not needed).
#  1. a Docker Engine: installed (Debian's docker.io) and started if none is running,
#     and stopped again at the end if this script started it;
#  2. the base image (deploy/base/build-base.sh), the Tandem image (the Dockerfile, its
#     BASE_IMAGE argument) and Prometheus (deploy/base/prometheus.Dockerfile);
#  3. tests/deploy against ports published on 127.0.0.1: the openai SDK on every route,
#     Prometheus scraping, a restart from the model volume, a clean SIGTERM drain;
#  4. the image size and the start times in $RECORD (docs/DEPLOYMENT.md quotes them).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${BASE_IMAGE:-tandem-base:bookworm}"
RECORD="${RECORD:-$HOME/.cache/tandem/deploy/last-run.json}"
export DOCKER_BUILDKIT=0 BASE_IMAGE
docker_bin=/usr/bin/docker  # Debian's client matches Debian's engine
started_engine="" created_env=""

cleanup() {
  if [ -n "$created_env" ]; then rm -f deploy/.env; fi
  if [ -n "$started_engine" ]; then
    kill "$started_engine" 2>/dev/null || true
    wait "$started_engine" 2>/dev/null || true
  fi
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -q && apt-get install -y -q "$2"; }; }
need dockerd docker.io
need docker-compose docker-compose
need debootstrap debootstrap
if ! "$docker_bin" info >/dev/null 2>&1; then
  dockerd >/tmp/tandem-dockerd.log 2>&1 &
  started_engine=$!
  for _ in $(seq 60); do "$docker_bin" info >/dev/null 2>&1 && break; sleep 1; done
  "$docker_bin" info >/dev/null
fi
mkdir -p "$(dirname "$RECORD")"
PATH="$(dirname "$docker_bin"):$PATH" deploy/base/build-base.sh "$BASE_IMAGE"
t0=$(date +%s)
"$docker_bin" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t tandem-gateway:latest .
build_s=$(( $(date +%s) - t0 ))
"$docker_bin" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
  -t tandem-prometheus:local -f deploy/base/prometheus.Dockerfile deploy/base
if [ ! -f deploy/.env ]; then cp deploy/.env.example deploy/.env; created_env=1; fi
PATH="$(dirname "$docker_bin"):$PATH" TANDEM_DEPLOY_TEST=1 TANDEM_DEPLOY_RECORD="$RECORD.tests" \
  .venv/bin/python -m pytest -q -ra tests/deploy
size=$("$docker_bin" image inspect -f '{{.Size}}' tandem-gateway:latest)
python3 - "$RECORD" "$size" "$build_s" <<'PY'
import json, pathlib, sys, time
out, size, build_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tests = json.loads(pathlib.Path(out + ".tests").read_text())
record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "image_size_mb": round(size / 1e6), "image_build_s": build_s, **tests}
pathlib.Path(out).write_text(json.dumps(record, indent=2) + "\n")
print(json.dumps(record))
PY
