#!/usr/bin/env bash
# llama.cpp's own llama-server, built from the llama.cpp source vendored in the
# llama-cpp-python sdist the gateway uses (same kernels, same version), cached in
# ~/.cache/tandem/llama-server/$VERSION/ so that later runs and CI reuse it.
# Prints the binary's path. Usage: bench/build_llama_server.sh [python]
set -euo pipefail
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
PY="${1:-.venv/bin/python}"
CACHE="${HOME}/.cache/tandem/llama-server"
OUT="${CACHE}/${VERSION}"
BIN="${OUT}/bin/llama-server"
if [[ -x "${BIN}" ]]; then echo "${BIN}"; exit 0; fi
mkdir -p "${CACHE}"
SDIST="${CACHE}/llama_cpp_python-${VERSION}.tar.gz"
if [[ ! -f "${SDIST}" ]]; then
  "${PY}" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==${VERSION}" -d "${CACHE}" >&2
fi
if [[ "${VERSION}" == "0.3.36" ]]; then
  echo "${SHA256}  ${SDIST}" | sha256sum -c --quiet - >&2
fi
SRC="$(mktemp -d)"
trap 'rm -rf "${SRC}"' EXIT
tar -xzf "${SDIST}" -C "${SRC}"
LLAMA="${SRC}/llama_cpp_python-${VERSION}/vendor/llama.cpp"
cmake -S "${LLAMA}" -B "${SRC}/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "${SRC}/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "${OUT}/bin"
cp "${SRC}/build/bin/llama-server" "${BIN}.tmp" && mv "${BIN}.tmp" "${BIN}"
echo "${BIN}"
