// Fused Gram + Jacobi eigh polar factor for a batch of tall (m x n) matrices with n <= 64 (torch-free).
//
// One thread block per matrix, one launch for the batch. Same numerics as orthokern/reference/gram_eigh.py:
//   1. A = G^T G accumulated in GramT (double: accurate mode, float: fast mode) from row tiles of G staged in
//      shared memory; each thread owns a 4 x 4 block of the upper triangle in registers (first read of G).
//      The same pass flags NaN/Inf (such a matrix gets an all-NaN result, never a plausible one).
//   2. Scale by a power of two so that ||X||_F is in [0.5, 1) (exact; the reference's scaling). Should the
//      unscaled Gram matrix overflow or underflow (gradients beyond ~1e19 or below ~1e-13 in fast mode), it is
//      recomputed from G pre-scaled by its largest entry: a rare, block-uniform branch.
//   3. Parallel-order Jacobi on A in shared memory (GramT), bounded sweeps.
//   4. keep lam > rcond^2 lam_max (strict: a zero matrix maps to zero); M = W lam^{-1/2} W^T in ApplyT.
//   5. O = (2^shift G) M in ApplyT (float for float/half input, double for double), row tiles again (second read of G).
#pragma once

#include "cuda/common.cuh"
#include "cuda/jacobi.cuh"

namespace orthokern {
namespace cuda {

constexpr int kGramTileRows = 32;

__host__ __device__ inline int round_up4(int n) { return (n + 3) / 4 * 4; }

// Upper-triangle 4 x 4 register blocks of (2^-e0 G)^T (2^-e0 G) into A (n x ld, shared, both triangles).
// Sets *bad when G holds a non-finite value. All threads of the block call it; blockDim.x >= (npad / 4)^2.
template <typename In, typename GramT>
__device__ void block_gram(const In* __restrict__ g, int m, int n, int npad, int e0, GramT* tile, GramT* A, int ld,
                           int* bad) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int nb = npad / 4;
  const int bi = tid / nb, bj = tid - (tid / nb) * nb;
  const bool owner = tid < nb * nb && bi <= bj;
  GramT acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = GramT(0);
  for (int r0 = 0; r0 < m; r0 += kGramTileRows) {
    const int rows = min(kGramTileRows, m - r0);
    for (int idx = tid; idx < kGramTileRows * npad; idx += nt) {
      const int r = idx / npad, c = idx - r * npad;
      GramT v = GramT(0);
      if (r < rows && c < n) {
        const auto w = to_wide(g[int64_t(r0 + r) * n + c]);
        if (!isfinite(w)) *bad = 1;
        // ldexp in double: 2^-e0 alone may not be representable in float (e0 < -126 for denormal G).
        v = e0 == 0 ? GramT(w) : GramT(ldexp(double(w), -e0));
      }
      tile[idx] = v;
    }
    __syncthreads();
    if (owner) {
      for (int r = 0; r < rows; ++r) {
        GramT xa[4], xb[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          xa[i] = tile[r * npad + 4 * bi + i];
          xb[i] = tile[r * npad + 4 * bj + i];
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] += xa[i] * xb[j];
      }
    }
    __syncthreads();
  }
  if (owner) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int a = 4 * bi + i, b = 4 * bj + j;
        if (a < n && b < n) {
          A[a * ld + b] = acc[i][j];
          A[b * ld + a] = acc[i][j];
        }
      }
  }
  __syncthreads();
}

template <typename GramT>
__device__ GramT block_trace(const GramT* A, int n, int ld, GramT* red) {
  GramT v = GramT(0);
  for (int k = threadIdx.x; k < n; k += blockDim.x) v += A[k * ld + k];
  return block_reduce(v, SumOp(), red);
}

template <typename In, typename GramT, typename ApplyT>
__global__ void __launch_bounds__(256)
    gram_eigh_polar_kernel(const In* __restrict__ G, In* __restrict__ O, int m, int n, double rcond) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ JacobiShared<GramT> js;
  __shared__ GramT red[32];
  __shared__ double redd[32];
  __shared__ int bad;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int ld = n + 1, npad = round_up4(n);
  GramT* A = reinterpret_cast<GramT*>(smem_raw);
  GramT* Vt = A + n * ld;
  GramT* tile = Vt + n * ld;  // kGramTileRows x npad
  GramT* inv = tile + kGramTileRows * npad;
  const int64_t b = blockIdx.x;
  const In* g = G + b * int64_t(m) * n;
  In* o = O + b * int64_t(m) * n;
  if (tid == 0) bad = 0;
  __syncthreads();

  block_gram<In, GramT>(g, m, n, npad, 0, tile, A, ld, &bad);
  GramT tr = block_trace(A, n, ld, red);  // ends with a barrier: `bad` is final
  if (bad) {
    const In nan = Store<In>::from(GramT(NAN));
    for (int64_t idx = tid; idx < int64_t(m) * n; idx += nt) o[idx] = nan;
    return;
  }
  int e0 = 0;
  const GramT tiny_trace = pow2<GramT>(Limits<GramT>::min_exponent + 40);
  // (tr < tiny_trace includes tr == 0: squares of a tiny G underflow to zero; a true zero G stays zero.)
  if (!isfinite(tr) || tr < tiny_trace) {
    double amax = 0.0;
    for (int64_t idx = tid; idx < int64_t(m) * n; idx += nt) amax = fmax(amax, fabs(double(to_wide(g[idx]))));
    amax = block_reduce(amax, MaxOp(), redd);
    e0 = frexp_exponent(amax);
    block_gram<In, GramT>(g, m, n, npad, e0, tile, A, ld, &bad);
    tr = block_trace(A, n, ld, red);
  }
  // ||X||_F = sqrt(tr) 2^-e in [0.5, 1): A scales by 2^-2e.
  const int e = frexp_exponent(double(sqrt(tr)));
  const GramT s2 = pow2<GramT>(-2 * e);
  for (int idx = tid; idx < n * n; idx += nt) {
    const int i = idx / n, j = idx - i * n;
    A[i * ld + j] *= s2;
  }
  __syncthreads();

  block_jacobi_eigh(A, Vt, n, ld, js, kJacobiMaxSweeps);

  GramT lam_max = GramT(0);
  for (int k = tid; k < n; k += nt) lam_max = fmax(lam_max, A[k * ld + k]);
  lam_max = block_reduce(lam_max, MaxOp(), red);
  const GramT thr = GramT(rcond) * GramT(rcond) * lam_max;
  for (int k = tid; k < n; k += nt) {
    const GramT lam = A[k * ld + k];
    inv[k] = lam > thr ? GramT(1) / sqrt(fmax(lam, Limits<GramT>::min_normal)) : GramT(0);
  }
  __syncthreads();
  // M = W diag(inv) W^T, into A's storage (A is no longer needed), as ApplyT with leading dim n.
  ApplyT* M = reinterpret_cast<ApplyT*>(A);
  for (int idx = tid; idx < n * n; idx += nt) {
    const int a = idx / n, c = idx - a * n;
    GramT s = GramT(0);
    for (int k = 0; k < n; ++k) s += Vt[k * ld + a] * inv[k] * Vt[k * ld + c];
    M[idx] = ApplyT(s);
  }
  __syncthreads();
  // O = X M with X = 2^shift G. The scale goes on X, as in the reference, not on M: for a G near the bottom of
  // float32's range M would overflow. Two power-of-two factors, each representable, make the product exact.
  const int shift = -(e0 + e);
  const ApplyT f1 = pow2<ApplyT>(shift / 2), f2 = pow2<ApplyT>(shift - shift / 2);

  ApplyT* xt = reinterpret_cast<ApplyT*>(tile);  // kGramTileRows x n ApplyT fits in the GramT tile
  for (int r0 = 0; r0 < m; r0 += kGramTileRows) {
    const int rows = min(kGramTileRows, m - r0);
    for (int idx = tid; idx < rows * n; idx += nt) xt[idx] = ApplyT(to_wide(g[int64_t(r0) * n + idx])) * f1 * f2;
    __syncthreads();
    for (int idx = tid; idx < rows * n; idx += nt) {
      const int r = idx / n, c = idx - r * n;
      ApplyT acc = ApplyT(0);
      for (int k = 0; k < n; ++k) acc += xt[r * n + k] * M[k * n + c];
      o[int64_t(r0) * n + idx] = Store<In>::from(acc);
    }
    __syncthreads();
  }
}

template <typename GramT>
inline size_t gram_eigh_polar_smem(int n) {
  return (size_t(2) * n * (n + 1) + size_t(kGramTileRows) * round_up4(n) + n) * sizeof(GramT);
}

// Launches the fused kernel for G, O (batch, m, n) contiguous, n <= 64; returns the shared-memory attribute
// call's error (the caller checks the launch itself).
template <typename In, typename GramT, typename ApplyT>
cudaError_t launch_gram_eigh_polar(const In* G, In* O, int64_t batch, int m, int n, double rcond,
                                   cudaStream_t stream) {
  const size_t smem = gram_eigh_polar_smem<GramT>(n);
  auto kernel = gram_eigh_polar_kernel<In, GramT, ApplyT>;
  // Per function and device, shared by every host thread: set for the largest n (see launch_eigh_small).
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(gram_eigh_polar_smem<GramT>(kMaxSmallN)));
  if (err != cudaSuccess) return err;
  kernel<<<static_cast<unsigned>(batch), small_threads(n), smem, stream>>>(G, O, m, n, rcond);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace orthokern
