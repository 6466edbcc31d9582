// Parallel-order (round-robin) Jacobi eigensolver for one small symmetric matrix held in shared memory by one
// thread block, and the batched eigh_small kernel built on it (torch-free).
//
// Round-robin ordering: in each of the N - 1 rounds of a sweep (N = n rounded up to even) the n/2 pairs (p, q)
// are disjoint, so their rotations commute and are applied at once: first to the rows (J^T A), then to the
// columns (A J); the 2 x 2 block of each pair is then set from the closed form (a_pq = 0 exactly). Sweeps stop
// when no pair needs a rotation under the relative rule |a_pq| <= eps sqrt(|a_pp a_qq|) (high relative accuracy
// for small eigenvalues), or after a bounded number of sweeps so that NaN cannot hang the loop.
#pragma once

#include "cuda/common.cuh"
#include "limits.h"

namespace orthokern {
namespace cuda {

constexpr int kMaxSmallN = limits::kCudaSmallMaxN;
constexpr int kJacobiMaxSweeps = 40;

template <typename T>
struct JacobiShared {
  T c[kMaxSmallN / 2], s[kMaxSmallN / 2], dp[kMaxSmallN / 2], dq[kMaxSmallN / 2];
  int p[kMaxSmallN / 2], q[kMaxSmallN / 2], active[kMaxSmallN / 2];
  int rotated;
};

// Pair k of round r of the circle method over N (even) indices: N - 1 is fixed, the others rotate.
__device__ __forceinline__ void round_robin_pair(int round, int k, int N, int& p, int& q) {
  int a, b;
  if (k == 0) {
    a = round;
    b = N - 1;
  } else {
    a = (round + k) % (N - 1);
    b = (round - k + (N - 1)) % (N - 1);
  }
  p = a < b ? a : b;
  q = a < b ? b : a;
}

template <typename T>
__device__ __forceinline__ bool jacobi_needs_rotation(T app, T aqq, T apq) {
  const T scale = sqrt(fabs(app)) * sqrt(fabs(aqq));
  return fabs(apq) > Limits<T>::eps * scale && apq != T(0);
}

// Golub & Van Loan sym.schur2, smaller angle; hypot keeps tau^2 from overflowing.
template <typename T>
__device__ __forceinline__ void jacobi_rotation(T app, T aqq, T apq, T& c, T& s, T& t) {
  const T tau = (aqq - app) / (T(2) * apq);
  t = (tau >= T(0) ? T(1) : T(-1)) / (fabs(tau) + hypot(T(1), tau));
  c = T(1) / sqrt(T(1) + t * t);
  s = t * c;
}

// A (n x n, leading dimension ld, shared, both triangles set) is diagonalised in place (its diagonal ends as the
// unsorted eigenvalues); Vt (n x ld, shared) receives the eigenvectors as rows. All threads of the block call it.
template <typename T>
__device__ void block_jacobi_eigh(T* A, T* Vt, int n, int ld, JacobiShared<T>& js, int max_sweeps) {
  const int tid = threadIdx.x, nt = blockDim.x;
  const int N = n + (n & 1), npairs = N / 2;
  for (int idx = tid; idx < n * n; idx += nt) {
    const int i = idx / n, j = idx - i * n;
    Vt[i * ld + j] = i == j ? T(1) : T(0);
  }
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    __syncthreads();  // previous readers of js.rotated (and of Vt's initialisation) are done
    if (tid == 0) js.rotated = 0;
    __syncthreads();
    for (int round = 0; round < N - 1; ++round) {
      for (int k = tid; k < npairs; k += nt) {
        int p, q;
        round_robin_pair(round, k, N, p, q);
        int act = 0;
        if (q < n) {
          const T app = A[p * ld + p], aqq = A[q * ld + q], apq = A[p * ld + q];
          if (jacobi_needs_rotation(app, aqq, apq)) {
            T c, s, t;
            jacobi_rotation(app, aqq, apq, c, s, t);
            js.c[k] = c;
            js.s[k] = s;
            js.dp[k] = app - t * apq;
            js.dq[k] = aqq + t * apq;
            act = 1;
            js.rotated = 1;
          }
        }
        js.p[k] = p;
        js.q[k] = q;
        js.active[k] = act;
      }
      __syncthreads();
      for (int idx = tid; idx < npairs * n; idx += nt) {  // rows: A <- J^T A, Vt <- J^T Vt
        const int k = idx / n, j = idx - k * n;
        if (!js.active[k]) continue;
        const int p = js.p[k], q = js.q[k];
        const T c = js.c[k], s = js.s[k];
        T x = A[p * ld + j], y = A[q * ld + j];
        A[p * ld + j] = c * x - s * y;
        A[q * ld + j] = s * x + c * y;
        x = Vt[p * ld + j];
        y = Vt[q * ld + j];
        Vt[p * ld + j] = c * x - s * y;
        Vt[q * ld + j] = s * x + c * y;
      }
      __syncthreads();
      for (int idx = tid; idx < npairs * n; idx += nt) {  // columns: A <- A J
        const int k = idx / n, i = idx - k * n;
        if (!js.active[k]) continue;
        const int p = js.p[k], q = js.q[k];
        const T c = js.c[k], s = js.s[k];
        const T x = A[i * ld + p], y = A[i * ld + q];
        A[i * ld + p] = c * x - s * y;
        A[i * ld + q] = s * x + c * y;
      }
      __syncthreads();
      for (int k = tid; k < npairs; k += nt) {
        if (!js.active[k]) continue;
        const int p = js.p[k], q = js.q[k];
        A[p * ld + p] = js.dp[k];
        A[q * ld + q] = js.dq[k];
        A[p * ld + q] = T(0);
        A[q * ld + p] = T(0);
      }
      __syncthreads();
    }
    if (js.rotated == 0) break;  // read by every thread after the round's last barrier: a uniform exit
  }
  __syncthreads();
}

__host__ __device__ inline int small_threads(int n) { return n > 32 ? 256 : (n > 16 ? 128 : 64); }

// eigh of a batch of symmetric (n x n) matrices, n <= 64, one block per matrix; lower triangle read (as
// torch.linalg.eigh); eigenvalues ascending in w (batch, n), eigenvectors as columns of W (batch, n, n).
template <typename T>
__global__ void __launch_bounds__(256) eigh_small_kernel(const T* __restrict__ A, T* __restrict__ w,
                                                         T* __restrict__ W, int n) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ JacobiShared<T> js;
  __shared__ int perm[kMaxSmallN];
  const int ld = n + 1;
  T* sA = reinterpret_cast<T*>(smem_raw);
  T* sV = sA + n * ld;
  __shared__ int nonfinite;
  const int64_t b = blockIdx.x;
  const T* a = A + b * n * n;
  if (threadIdx.x == 0) nonfinite = 0;
  __syncthreads();
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    if (j <= i) {
      const T v = a[idx];
      sA[i * ld + j] = v;
      sA[j * ld + i] = v;
      if (!isfinite(v)) nonfinite = 1;  // every writer stores the same value
    }
  }
  __syncthreads();
  if (nonfinite) {
    // The stopping rule never rotates a NaN pair, which would leave finite, plausible-looking output: say NaN.
    for (int j = threadIdx.x; j < n; j += blockDim.x) w[b * n + j] = T(NAN);
    for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) W[b * n * n + idx] = T(NAN);
    return;
  }
  block_jacobi_eigh(sA, sV, n, ld, js, kJacobiMaxSweeps);
  if (threadIdx.x == 0) {
    // Selection sort of at most 64 indices by eigenvalue; NaN compares false and keeps its place.
    for (int i = 0; i < n; ++i) perm[i] = i;
    for (int i = 0; i < n; ++i) {
      int best = i;
      for (int j = i + 1; j < n; ++j)
        if (sA[perm[j] * ld + perm[j]] < sA[perm[best] * ld + perm[best]]) best = j;
      const int tmp = perm[i];
      perm[i] = perm[best];
      perm[best] = tmp;
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += blockDim.x) w[b * n + j] = sA[perm[j] * ld + perm[j]];
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    W[b * n * n + idx] = sV[perm[j] * ld + i];
  }
}

// Launches eigh_small_kernel on `stream`; returns the error of the shared-memory attribute call (the caller
// checks the launch itself).
template <typename T>
cudaError_t launch_eigh_small(const T* A, T* w, T* W, int64_t batch, int n, cudaStream_t stream) {
  const size_t smem = size_t(2) * n * (n + 1) * sizeof(T);
  // The attribute is per function and device, shared by every host thread: set it for the largest n, not for
  // this call's, so a concurrent launch with a larger n is never refused.
  const size_t smem_max = size_t(2) * kMaxSmallN * (kMaxSmallN + 1) * sizeof(T);
  cudaError_t err = cudaFuncSetAttribute(eigh_small_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_max));
  if (err != cudaSuccess) return err;
  eigh_small_kernel<T><<<static_cast<unsigned>(batch), small_threads(n), smem, stream>>>(A, w, W, n);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace orthokern
