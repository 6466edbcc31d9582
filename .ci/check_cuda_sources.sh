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
shopt -s nullglob
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

# The torch binding (csrc/cuda/ops_cuda.cu) too, where torch's headers are importable: setup.py turns a failed
# extension build into a warning, so a broken binding would otherwise only show as a CPU-only install on a GPU
# machine. A CPU torch wheel lacks the one header its CUDA build generates (c10/cuda/impl/cuda_cmake_macros.h);
# an empty stand-in is enough to compile against.
PY="${PYTHON:-python}"
if [[ -f csrc/cuda/ops_cuda.cu ]] && TORCH_INC="$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(" ".join(include_paths()))' 2>/dev/null)"; then
  mkdir -p "$out/stub/c10/cuda/impl"
  [[ -f "$out/stub/c10/cuda/impl/cuda_cmake_macros.h" ]] || echo '#pragma once' > "$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
  PY_INC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  incs=(-I"$out/stub")
  for d in $TORCH_INC; do incs+=(-I"$d"); done
  start=$SECONDS
  echo "  nvcc -c csrc/cuda/ops_cuda.cu (torch binding, sm_90)"
  # torch's own headers warn by the hundred under nvcc: show the log only if the compile fails.
  if ! "$NVCC" -std=c++20 -O1 -Icsrc "${incs[@]}" -I"$PY_INC" -DORTHOKERN_WITH_CUDA=1 -arch=sm_90 \
      -c csrc/cuda/ops_cuda.cu -o "$out/ops_cuda.o" > "$out/ops_cuda.log" 2>&1; then
    grep -B2 -A6 -i "error" "$out/ops_cuda.log" | head -80
    echo "check_cuda_sources: the torch binding csrc/cuda/ops_cuda.cu failed to compile"
    exit 1
  fi
  echo "check_cuda_sources: torch binding compiled in $((SECONDS - start)) s"
else
  echo "check_cuda_sources: torch not importable; the torch binding was not compile-checked"
fi
