#!/usr/bin/env bash
# Everything that needs a GPU, in one call (a lent GPU is billed by the minute): build against the machine's torch
# with the CUDA kernels required, the GPU tests, compute-sanitizer (memcheck, racecheck, synccheck) over the CUDA-
# kernel tests, the dry-run plan beside the Triton kernel benchmark, and the full benchmark suites, which rewrite the
# GPU sections of bench/RESULTS.md. Logs go to $OUT (or ./gpu-out).
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

# A GPU session without the CUDA kernels would test nothing of them and still end green: stop at once instead.
ORTHOKERN_REQUIRE_CUDA=1 python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1 || {
  echo "build failed (ORTHOKERN_REQUIRE_CUDA=1): see $OUT/build.log"; tail -n 30 "$OUT/build.log"; exit 1; }
python3 -P -c "import orthokern, json, sys; i = orthokern.info(); print(json.dumps(i, indent=1)); sys.exit(0 if i['extension_cuda'] and 'cuda' in i.get('backends_cuda', []) else 1)" > "$OUT/info.log" 2>&1 || {
  echo "orthokern._C has no working CUDA kernels here: see $OUT/info.log"; cat "$OUT/info.log"; exit 1; }
cat "$OUT/info.log"

step tests_gpu python3 -P -m pytest -q -p no:cacheprovider -m "cuda or triton_interpret" tests
step tests_all python3 -P -m pytest -q -p no:cacheprovider -x tests
for tool in memcheck racecheck synccheck; do
  step "sanitizer_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 python3 -P -m pytest -q -p no:cacheprovider \
    tests/test_gram_ns_factor.py -m cuda
done
step plan python3 -P -m orthokern.bench plan --suite all --json "$OUT/plan.json"
step triton_bench python3 -P bench/bench_triton_kernels.py --json "$OUT/triton_bench.json"
step bench_polar python3 -P -m orthokern.bench --suite all --out "$OUT/bench" --results-md bench/RESULTS.md --no-progress
step bench_train python3 -P -m orthokern.bench --suite train --out "$OUT/bench" --results-md bench/RESULTS.md --no-progress
cp bench/RESULTS.md "$OUT/RESULTS.md"
exit $status
