#!/usr/bin/env bash
# Compile each torch-free CUDA kernel translation unit with nvcc, when nvcc exists (filled in with the kernels).
set -euo pipefail
echo "check_cuda_sources: no CUDA kernel sources yet"
