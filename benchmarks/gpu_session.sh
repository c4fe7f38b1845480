#!/usr/bin/env bash
# The GPU checks in one go, on a machine with a CUDA GPU (step timeouts 270 s + 420 s; not yet timed):
#   1. the CUDA tests: pytest -m gpu (GradCache exactness on CUDA, bf16/fp16, train + predict, ...)
#   2. the GPU benchmark: python benchmarks/gpu.py -> benchmarks/results/gpu.json
# Usage, from the repository root, in an environment with gigamil[test] and a CUDA build of torch:
#   bash benchmarks/gpu_session.sh [LOG_DIR]
# LOG_DIR (default benchmarks/results) receives gpu_tests.log and gpu_benchmark.log, and a copy of
# gpu.json. Exit status: that of the tests, else that of the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${1:-benchmarks/results}"
mkdir -p "$LOG_DIR" benchmarks/results
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' || exit 3
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_session.sh: no CUDA device (torch.cuda.is_available() is False)")
print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

timeout 270 python -m pytest -m gpu -q -p no:cacheprovider -rA tests/unit \
    2>&1 | tee "$LOG_DIR/gpu_tests.log"
tests=${PIPESTATUS[0]}

timeout 420 python benchmarks/gpu.py --threads "$(nproc)" --out benchmarks/results/gpu.json \
    2>&1 | tee "$LOG_DIR/gpu_benchmark.log"
bench=${PIPESTATUS[0]}
if [ "$LOG_DIR" != benchmarks/results ] && [ -f benchmarks/results/gpu.json ]; then
    cp benchmarks/results/gpu.json "$LOG_DIR/gpu.json"
fi
echo "pytest -m gpu: exit $tests; benchmarks/gpu.py: exit $bench"
[ "$tests" -ne 0 ] && exit "$tests"
exit "$bench"
