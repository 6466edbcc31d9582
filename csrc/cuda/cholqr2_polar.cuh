// Batched shifted CholeskyQR2 + polar factor of the small R, for tall (m x n) matrices with n <= 256
// (torch-free). Same numerics as orthokern/reference/cholqr2.py, everything in double:
//   X = 2^-e G (||X||_F in [0.5, 1)),  A1 = X^T X + s1 I,  R1 = chol(A1),  Q1 = X R1^-1,
//   A2 = Q1^T Q1 + s2 I,  R2 = chol(A2),  R = R2 R1,  O = Q1 R2^-1 polar_k(R)
// with s = 11 (m n + n (n + 1)) u ||A||_2 (Fukaya et al. 2020; ||A||_2 bounded by min(trace, max row sum)), so the
// Cholesky never breaks down on finite input, rank-deficient and zero included. polar_k(R) comes from a one-sided Jacobi SVD of R^T in parallel
// order (it works on R itself: no squaring of the condition number, singular values to high relative accuracy).
//
// The n x n factors do not fit in shared memory for n up to 256 (512 KiB in double), so this is a pipeline of
// simple batched kernels over a double workspace that stays mostly in L2:
//   prepare -> gram -> cholesky -> trsm (Q1 in place) -> gram -> cholesky -> small_polar -> apply.
// X and Q1 are stored transposed (n x m per matrix) so that one-thread-per-row kernels access them coalesced.
#pragma once

#include "cuda/common.cuh"
#include "cuda/jacobi.cuh"

namespace orthokern {
namespace cuda {

constexpr int kCholqrMaxN = limits::kCudaCholqr2MaxN;
constexpr int kCholqrThreads = 256;
constexpr int kSvdJacobiMaxSweeps = 40;
constexpr double kUnitRoundoff64 = 1.1102230246251565e-16;  // 2^-53

// Workspace (doubles) for a batch: Xt (m n), A, R1, R2, U, V, N (n n each) per matrix.
inline int64_t cholqr2_workspace_doubles(int64_t batch, int64_t m, int64_t n) {
  return batch * (m * n + 6 * n * n);
}

// Per matrix: finite flag; Xt = (2^-e G)^T in double, zeros for a non-finite matrix (its result is NaN anyway).
template <typename In>
__global__ void __launch_bounds__(kCholqrThreads)
    cholqr_prepare_kernel(const In* __restrict__ G, double* __restrict__ Xt, int* __restrict__ finite, int m, int n) {
  __shared__ double red[32];
  const int64_t b = blockIdx.x, mn = int64_t(m) * n;
  const In* g = G + b * mn;
  double* xt = Xt + b * mn;
  double amax = 0.0, nonfinite = 0.0;
  for (int64_t idx = threadIdx.x; idx < mn; idx += blockDim.x) {
    const double v = double(to_wide(g[idx]));
    if (!isfinite(v)) nonfinite = 1.0;
    amax = fmax(amax, fabs(v));
  }
  nonfinite = block_reduce(nonfinite, MaxOp(), red);
  amax = block_reduce(amax, MaxOp(), red);
  const bool ok = nonfinite == 0.0;
  // Scale first by the largest entry so that the sum of squares cannot overflow, then to ||X||_F in [0.5, 1).
  const int e0 = ok ? frexp_exponent(amax) : 0;
  double ss = 0.0;
  if (ok)
    for (int64_t idx = threadIdx.x; idx < mn; idx += blockDim.x) {
      const double v = ldexp(double(to_wide(g[idx])), -e0);
      ss += v * v;
    }
  ss = block_reduce(ss, SumOp(), red);
  const int shift = -(e0 + frexp_exponent(sqrt(ss)));
  for (int64_t idx = threadIdx.x; idx < mn; idx += blockDim.x) {  // idx over Xt (n x m): coalesced writes
    const int64_t j = idx / m, i = idx - j * m;
    xt[idx] = ok ? ldexp(double(to_wide(g[i * n + j])), shift) : 0.0;
  }
  if (threadIdx.x == 0) finite[b] = ok ? 1 : 0;
}

// A = Xt Xt^T (n x n) per matrix; grid (batch, tiles^2), 16 x 16 threads per output tile (upper tiles only).
__global__ void __launch_bounds__(256)
    cholqr_gram_kernel(const double* __restrict__ Xt, double* __restrict__ A, int m, int n) {
  __shared__ double sa[16][17], sb[16][17];
  const int tiles = (n + 15) / 16;
  const int ta = blockIdx.y / tiles, tb = blockIdx.y - ta * tiles;
  if (ta > tb) return;  // whole block: uniform
  const int64_t b = blockIdx.x;
  const double* xt = Xt + b * int64_t(m) * n;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int ra = ta * 16 + ty, rb = tb * 16 + ty;
  double acc = 0.0;
  for (int i0 = 0; i0 < m; i0 += 16) {
    const int i = i0 + tx;
    sa[ty][tx] = (ra < n && i < m) ? xt[int64_t(ra) * m + i] : 0.0;
    sb[ty][tx] = (rb < n && i < m) ? xt[int64_t(rb) * m + i] : 0.0;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 16; ++k) acc += sa[ty][k] * sb[tx][k];
    __syncthreads();
  }
  const int a = ta * 16 + ty, c = tb * 16 + tx;
  if (a < n && c < n) {
    double* out = A + b * int64_t(n) * n;
    out[a * n + c] = acc;
    out[c * n + a] = acc;
  }
}

// R = chol(A + s I) (upper, R^T R = A + s I), s = Fukaya et al.'s shift; one block per matrix, in global memory.
// A non-positive pivot cannot occur for a finite shifted Gram matrix; should rounding make one, it is replaced by
// the shift so that R stays finite (that direction falls below rcond and is dropped).
__global__ void __launch_bounds__(kCholqrThreads)
    cholqr_cholesky_kernel(const double* __restrict__ A, double* __restrict__ R, int m, int n) {
  __shared__ double red[32];
  __shared__ double pivot;
  const int64_t b = blockIdx.x, nn = int64_t(n) * n;
  const double* a = A + b * nn;
  double* r = R + b * nn;
  // ||A||_2 <= min(trace, largest absolute row sum): the row sum is the tight one on the second pass, where
  // A = Q1^T Q1 is near I and the trace n would make the shift perturb the result by ~n u (m n + n^2).
  double tr = 0.0, rmax = 0.0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    tr += a[k * n + k];
    double r = 0.0;
    for (int c = 0; c < n; ++c) r += fabs(a[k * n + c]);
    rmax = fmax(rmax, r);
  }
  tr = block_reduce(tr, SumOp(), red);
  rmax = block_reduce(rmax, MaxOp(), red);
  const double norm2 = fmin(tr, rmax);
  const double s = 11.0 * (double(m) * n + double(n) * (n + 1)) * kUnitRoundoff64 * (norm2 > 0.0 ? norm2 : 1.0);
  for (int idx = threadIdx.x; idx < n * n; idx += blockDim.x) {
    const int i = idx / n, j = idx - i * n;
    r[idx] = j < i ? 0.0 : a[idx] + (i == j ? s : 0.0);
  }
  __syncthreads();
  for (int j = 0; j < n; ++j) {
    if (threadIdx.x == 0) {
      double d = r[j * n + j];
      if (!(d > 0.0)) d = s;
      pivot = sqrt(d);
      r[j * n + j] = pivot;
    }
    __syncthreads();
    const double rjj = pivot;
    for (int l = j + 1 + threadIdx.x; l < n; l += blockDim.x) r[j * n + l] /= rjj;
    __syncthreads();
    const int w = n - j - 1;
    for (int idx = threadIdx.x; idx < w * w; idx += blockDim.x) {
      const int i = j + 1 + idx / w, l = j + 1 + idx % w;
      if (l >= i) r[i * n + l] -= r[j * n + i] * r[j * n + l];
    }
    __syncthreads();
  }
}

// Rows of X become rows of X R^-1, in place in Xt (n x m); one thread per row; grid (batch, ceil(m / threads)).
__global__ void __launch_bounds__(kCholqrThreads)
    cholqr_trsm_kernel(double* __restrict__ Xt, const double* __restrict__ R, int m, int n) {
  const int64_t b = blockIdx.x;
  const int i = blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= m) return;
  double* xt = Xt + b * int64_t(m) * n;
  const double* r = R + b * int64_t(n) * n;
  for (int j = 0; j < n; ++j) {
    double v = xt[int64_t(j) * m + i];
    for (int k = 0; k < j; ++k) v -= xt[int64_t(k) * m + i] * r[k * n + j];
    xt[int64_t(j) * m + i] = v / r[j * n + j];
  }
}

// Per matrix (one block): U = R2 R1, one-sided Jacobi on the rows of U (= columns of R^T, one warp per pair,
// round-robin pairs), then N = R2^-1 polar_k(R) with polar_k(R) = sum_{sigma_j > rcond sigma_max} v_j u_j^T.
__global__ void __launch_bounds__(kCholqrThreads)
    cholqr_small_polar_kernel(const double* __restrict__ R1, const double* __restrict__ R2, double* __restrict__ U,
                              double* __restrict__ V, double* __restrict__ Nout, int n, double rcond) {
  __shared__ double sigma[kCholqrMaxN];
  __shared__ double red[32];
  __shared__ int rotated;
  const int64_t b = blockIdx.x, nn = int64_t(n) * n;
  const double* r1 = R1 + b * nn;
  const double* r2 = R2 + b * nn;
  double* u = U + b * nn;
  double* v = V + b * nn;
  double* out = Nout + b * nn;
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nwarps = nt >> 5;
  for (int idx = tid; idx < n * n; idx += nt) {
    const int a = idx / n, c = idx - a * n;
    double s = 0.0;
    for (int k = a; k <= c; ++k) s += r2[a * n + k] * r1[k * n + c];
    u[idx] = s;  // zero below the diagonal: the loop is empty there
    v[idx] = a == c ? 1.0 : 0.0;
  }
  const int N = n + (n & 1), npairs = N / 2;
  for (int sweep = 0; sweep < kSvdJacobiMaxSweeps; ++sweep) {
    __syncthreads();
    if (tid == 0) rotated = 0;
    __syncthreads();
    for (int round = 0; round < N - 1; ++round) {
      for (int k = warp; k < npairs; k += nwarps) {
        int p, q;
        round_robin_pair(round, k, N, p, q);
        if (q >= n) continue;  // warp-uniform
        double* up = u + p * n;
        double* uq = u + q * n;
        double alpha = 0.0, beta = 0.0, gamma = 0.0;
        for (int c = lane; c < n; c += 32) {
          alpha += up[c] * up[c];
          beta += uq[c] * uq[c];
          gamma += up[c] * uq[c];
        }
        alpha = warp_sum(alpha);
        beta = warp_sum(beta);
        gamma = warp_sum(gamma);
        if (!jacobi_needs_rotation(alpha, beta, gamma)) continue;  // warp-uniform after the reductions
        double c_, s_, t_;
        jacobi_rotation(alpha, beta, gamma, c_, s_, t_);
        for (int c = lane; c < n; c += 32) {
          const double x = up[c], y = uq[c];
          up[c] = c_ * x - s_ * y;
          uq[c] = s_ * x + c_ * y;
        }
        double* vp = v + p * n;
        double* vq = v + q * n;
        for (int c = lane; c < n; c += 32) {
          const double x = vp[c], y = vq[c];
          vp[c] = c_ * x - s_ * y;
          vq[c] = s_ * x + c_ * y;
        }
        if (lane == 0) rotated = 1;
      }
      __syncthreads();
    }
    if (rotated == 0) break;  // uniform: read after the last round's barrier
  }
  __syncthreads();
  for (int j = warp; j < n; j += nwarps) {
    double s = 0.0;
    for (int c = lane; c < n; c += 32) s += u[j * n + c] * u[j * n + c];
    s = warp_sum(s);
    if (lane == 0) sigma[j] = sqrt(s);
  }
  __syncthreads();
  double smax = 0.0;
  for (int j = tid; j < n; j += nt) smax = fmax(smax, sigma[j]);
  smax = block_reduce(smax, MaxOp(), red);
  const double thr = rcond * smax;
  for (int idx = tid; idx < n * n; idx += nt) {
    const int j = idx / n;
    u[idx] *= sigma[j] > thr ? 1.0 / sigma[j] : 0.0;  // strict: a zero R keeps nothing
  }
  __syncthreads();
  for (int idx = tid; idx < n * n; idx += nt) {
    const int a = idx / n, c = idx - a * n;
    double s = 0.0;
    for (int j = 0; j < n; ++j) s += v[j * n + a] * u[j * n + c];
    out[idx] = s;
  }
  __syncthreads();
  for (int c = tid; c < n; c += nt) {  // back substitution R2 N = P, one column per thread, in place
    for (int a = n - 1; a >= 0; --a) {
      double s = out[a * n + c];
      for (int k = a + 1; k < n; ++k) s -= r2[a * n + k] * out[k * n + c];
      out[a * n + c] = s / r2[a * n + a];
    }
  }
}

// O = Q1 N in In (row-major), NaN for matrices flagged non-finite; grid (batch, blocks), grid-stride.
template <typename In>
__global__ void __launch_bounds__(kCholqrThreads)
    cholqr_apply_kernel(const double* __restrict__ Qt, const double* __restrict__ Nmat, const int* __restrict__ finite,
                        In* __restrict__ O, int m, int n) {
  const int64_t b = blockIdx.x, mn = int64_t(m) * n;
  const double* qt = Qt + b * mn;
  const double* nm = Nmat + b * int64_t(n) * n;
  In* o = O + b * mn;
  const bool ok = finite[b] != 0;
  for (int64_t idx = int64_t(blockIdx.y) * blockDim.x + threadIdx.x; idx < mn; idx += int64_t(gridDim.y) * blockDim.x) {
    const int64_t i = idx / n;
    const int c = int(idx - i * n);
    double acc = 0.0;
    for (int k = 0; k < n; ++k) acc += qt[int64_t(k) * m + i] * nm[k * n + c];
    o[idx] = Store<In>::from(ok ? acc : double(NAN));
  }
}

// Host-side launch helpers: the binding calls them in order and checks each launch.
struct Cholqr2Workspace {
  double* Xt;
  double* A;
  double* R1;
  double* R2;
  double* U;
  double* V;
  double* N;
  int* finite;
};

inline Cholqr2Workspace cholqr2_split_workspace(double* ws, int* finite, int64_t batch, int64_t m, int64_t n) {
  Cholqr2Workspace w;
  w.Xt = ws;
  w.A = w.Xt + batch * m * n;
  w.R1 = w.A + batch * n * n;
  w.R2 = w.R1 + batch * n * n;
  w.U = w.R2 + batch * n * n;
  w.V = w.U + batch * n * n;
  w.N = w.V + batch * n * n;
  w.finite = finite;
  return w;
}

template <typename In>
void launch_cholqr_prepare(const In* G, const Cholqr2Workspace& w, int64_t batch, int m, int n, cudaStream_t st) {
  cholqr_prepare_kernel<In><<<static_cast<unsigned>(batch), kCholqrThreads, 0, st>>>(G, w.Xt, w.finite, m, n);
}

inline void launch_cholqr_factor(double* Xt, double* A, double* R, int64_t batch, int m, int n, cudaStream_t st) {
  const int tiles = (n + 15) / 16;
  cholqr_gram_kernel<<<dim3(static_cast<unsigned>(batch), tiles * tiles), 256, 0, st>>>(Xt, A, m, n);
  cholqr_cholesky_kernel<<<static_cast<unsigned>(batch), kCholqrThreads, 0, st>>>(A, R, m, n);
}

inline void launch_cholqr_trsm(double* Xt, const double* R, int64_t batch, int m, int n, cudaStream_t st) {
  const unsigned rows = static_cast<unsigned>((m + kCholqrThreads - 1) / kCholqrThreads);
  cholqr_trsm_kernel<<<dim3(static_cast<unsigned>(batch), rows), kCholqrThreads, 0, st>>>(Xt, R, m, n);
}

inline void launch_cholqr_small_polar(const Cholqr2Workspace& w, int64_t batch, int n, double rcond,
                                      cudaStream_t st) {
  cholqr_small_polar_kernel<<<static_cast<unsigned>(batch), kCholqrThreads, 0, st>>>(w.R1, w.R2, w.U, w.V, w.N, n,
                                                                                     rcond);
}

template <typename In>
void launch_cholqr_apply(const Cholqr2Workspace& w, In* O, int64_t batch, int m, int n, cudaStream_t st) {
  const int64_t blocks = (int64_t(m) * n + kCholqrThreads - 1) / kCholqrThreads;
  const unsigned gy = static_cast<unsigned>(blocks < 65535 ? blocks : 65535);
  cholqr_apply_kernel<In><<<dim3(static_cast<unsigned>(batch), gy), kCholqrThreads, 0, st>>>(w.Xt, w.N, w.finite,
                                                                                           O, m, n);
}

}  // namespace cuda
}  // namespace orthokern
