#!/usr/bin/env bash
# The GPU tests, on a machine with torch and a CUDA device (the gateway's own
# dependencies need not be there: test_client.py then skips, saying why).
#   bash tests/gpu/run.sh [output file, default docs/gpu_tests.txt]
set -o pipefail
cd "$(dirname "$0")/../.." || exit 1
out=${1:-docs/gpu_tests.txt}
{
  echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
  python3 -c 'import torch, transformers; print("# torch", torch.__version__, "transformers", transformers.__version__)'
  echo "# command: bash tests/gpu/run.sh"
  python3 -m pytest tests/gpu -v -ra -p no:cacheprovider --confcutdir=tests/gpu \
    -W ignore::UserWarning -W ignore::DeprecationWarning --durations=5
} 2>&1 | tee "$out"
