// Small device helpers shared by the orthokern CUDA kernels (torch-free: raw pointers, CUDA headers only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace orthokern {
namespace cuda {

template <typename T>
struct Limits;
template <>
struct Limits<float> {
  static constexpr float eps = FLT_EPSILON;
  static constexpr float min_normal = FLT_MIN;
  static constexpr int min_exponent = FLT_MIN_EXP;
};
template <>
struct Limits<double> {
  static constexpr double eps = DBL_EPSILON;
  static constexpr double min_normal = DBL_MIN;
  static constexpr int min_exponent = DBL_MIN_EXP;
};

// Widening loads: half precision is a storage format, arithmetic is float32 at least.
__device__ __forceinline__ float to_wide(float x) { return x; }
__device__ __forceinline__ double to_wide(double x) { return x; }
__device__ __forceinline__ float to_wide(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_wide(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Out>
struct Store {
  template <typename T>
  __device__ __forceinline__ static Out from(T v) { return static_cast<Out>(v); }
};
template <>
struct Store<__half> {
  template <typename T>
  __device__ __forceinline__ static __half from(T v) { return __float2half_rn(static_cast<float>(v)); }
};
template <>
struct Store<__nv_bfloat16> {
  template <typename T>
  __device__ __forceinline__ static __nv_bfloat16 from(T v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};

// 2^e as T, exact (a denormal power of two is still exact in float).
template <typename T>
__device__ __forceinline__ T pow2(int e) {
  return static_cast<T>(ldexp(1.0, e));
}

__device__ __forceinline__ int frexp_exponent(double x) {
  int e = 0;
  frexp(x, &e);
  return e;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Reduction over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `sh` is 32 elements of shared memory; the leading __syncthreads makes it safe to call back to back.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* sh) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = sh[0];
  for (int i = 1; i < nwarps; ++i) r = op(r, sh[i]);
  return r;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace cuda
}  // namespace orthokern
