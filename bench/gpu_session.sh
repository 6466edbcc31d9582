#!/usr/bin/env bash
# Everything that needs a GPU, in one call (a lent GPU is billed by the minute): build against the machine's
# torch, the GPU tests, compute-sanitizer over the CUDA-kernel tests, the Triton kernel benchmark, and the full
# benchmark suites, which rewrite the GPU sections of bench/RESULTS.md. Logs go to $OUT (or ./gpu-out).
#
#   bash bench/gpu_session.sh            # then copy bench/RESULTS.md and the logs back, and commit
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember a failure, go on
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s (log: $OUT/$name.log)"; tail -n 3 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/device.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" >> "$OUT/device.txt"
cat "$OUT/device.txt"

step build python3 -m pip install --no-build-isolation --no-deps -v .
# -P: import the installed package (with its CUDA extension), not the checkout.
step info python3 -P -c "import orthokern, json; print(json.dumps(orthokern.info(), indent=1))"
step tests_gpu python3 -P -m pytest -q -p no:cacheprovider -m "cuda or triton_interpret" tests
step tests_all python3 -P -m pytest -q -p no:cacheprovider -x tests
step sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 python3 -P -m pytest -q -p no:cacheprovider \
  tests/test_cpp_ops.py -m cuda
step triton_bench python3 -P bench/bench_triton_kernels.py --json "$OUT/triton_bench.json"
step bench_polar python3 -P -m orthokern.bench --suite all --out "$OUT/bench" --results-md bench/RESULTS.md --no-progress
step bench_train python3 -P -m orthokern.bench --suite train --out "$OUT/bench" --results-md bench/RESULTS.md --no-progress
cp bench/RESULTS.md "$OUT/RESULTS.md"
exit $status
