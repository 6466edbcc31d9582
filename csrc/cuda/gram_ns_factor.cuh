// CUDA kernel of the Gram-side Newton–Schulz factor (csrc/gram_ns_factor.h): one thread block of
// gram_ns::kThreads threads per matrix, the four padded n x n float64 buffers in shared memory (136 KiB at n = 64),
// the whole iteration in one launch, its products on the float64 tensor cores (mma.sync m8n8k4, sm_80 on: the
// architectures setup.py builds for). Torch-free: raw pointers, sizes and a stream.
#pragma once

#include <cuda_runtime.h>

#include "gram_ns_factor.h"

namespace orthokern {
namespace cuda {

// d += A_tile B_tile for this lane's fragments (gram_ns::frag_*); every lane of the warp executes it together.
__device__ __forceinline__ void mma_m8n8k4_f64(double (&d)[1][2], const double (&a)[1], const double (&b)[1]) {
  asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};"
               : "+d"(d[0][0]), "+d"(d[0][1])
               : "d"(a[0]), "d"(b[0]));
}

__global__ void __launch_bounds__(gram_ns::kThreads)
    gram_ns_factor_kernel(const double* __restrict__ A, double* __restrict__ out, int n, gram_ns::Schedule s) {
  extern __shared__ double smem[];
  const int64_t offset = int64_t(blockIdx.x) * n * n;
  const int tid = threadIdx.x;
  const gram_ns::Lanes<1> lane{{tid % gram_ns::kWarpSize}};
  gram_ns::factor_one(
      A + offset, out + offset, n, s, smem, [tid](auto phase) { phase(tid); },
      [tid, &lane](auto phase) { phase(tid / gram_ns::kWarpSize, lane); }, [] { __syncthreads(); },
      [](double(&d)[1][2], const double(&a)[1], const double(&b)[1]) { mma_m8n8k4_f64(d, a, b); });
}

// Launches the kernel for `batch` matrices (A, out: batch x n x n, contiguous, on the current device).
inline cudaError_t launch_gram_ns_factor(const double* A, double* out, int64_t batch, int n,
                                         const gram_ns::Schedule& s, cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  const size_t smem = size_t(gram_ns::workspace_doubles(n)) * sizeof(double);
  // Above 48 KiB a kernel must opt in to its dynamic shared memory; set once for the largest n (the attribute is per
  // device and per function: set again on every call rather than cache per device, it costs a driver call only).
  const size_t smem_max = size_t(gram_ns::workspace_doubles(limits::kCudaSmallMaxN)) * sizeof(double);
  cudaError_t err = cudaFuncSetAttribute(gram_ns_factor_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_max));
  if (err != cudaSuccess) return err;
  gram_ns_factor_kernel<<<dim3(static_cast<unsigned>(batch)), gram_ns::kThreads, smem, stream>>>(A, out, n, s);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace orthokern
