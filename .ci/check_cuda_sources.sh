#!/usr/bin/env bash
# Compile each torch-free CUDA kernel translation unit (csrc/cuda/instantiate_*.cu: they instantiate every template
# the ops dispatch to, no torch headers) with nvcc for sm_80 and sm_90, so that a syntax or template error in a
# kernel is caught on a machine without a GPU. Without nvcc: say so and succeed.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]]; then
  NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
fi
if [[ -z "$NVCC" ]]; then
  echo "check_cuda_sources: nvcc not found; skipped (the CUDA kernels were not compile-checked)"
  exit 0
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
units=(csrc/cuda/instantiate_*.cu)
echo "check_cuda_sources: $("$NVCC" --version | tail -1)"
start=$SECONDS
for unit in "${units[@]}"; do
  echo "  nvcc -c $unit (sm_80, sm_90)"
  "$NVCC" -std=c++17 -O3 -Icsrc \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -c "$unit" -o "$out/$(basename "$unit" .cu).o"
done
echo "check_cuda_sources: ${#units[@]} units compiled in $((SECONDS - start)) s"
