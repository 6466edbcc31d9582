// The n x n factor of newton_schulz on the Gram side, for one small matrix (n <= 64), written once for both the CUDA
// kernel (one thread block per matrix, csrc/cuda/gram_ns_factor.cuh) and its CPU twin (csrc/cpu/ops_gram_ns.cpp),
// which runs the same per-thread functions for every thread of a simulated block, phase by phase. Torch-free.
//
// Maths (orthokern/reference/newton_schulz.py, gram_side_factor): from the Gram matrix A (scaled so its entries are
// about 1), t = 1.01 ||A^2||_F^(1/4), Y = A / t^2, Q = I / t; for each step (a, b, c): P = a I + b Y + c Y^2,
// Q <- Q P, and, except after the last step, Y <- (P Y) P. Then X Q is the iteration's result for X with X^T X = A.
//
// A block is kThreads threads; thread tid owns the 4 x 4 tile of rows 4 (tid / 16) .. and columns 4 (tid % 16) ..
// of every n x n product (64 x 64 at most). Phases communicate only through shared memory, separated by barriers,
// and every multiply-add is an explicit fma(), so the CUDA kernel and the twin compute the same numbers in the
// same order (the norm's partial sums are added by one thread, serially).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ORTHOKERN_HD __host__ __device__ __forceinline__
#else
#define ORTHOKERN_HD inline
#endif

#include "kernel_limits.h"

namespace orthokern {
namespace gram_ns {

constexpr int kThreads = 256;
constexpr int kTile = 4;
constexpr int kTilesPerRow = 16;  // kTile * kTilesPerRow = 64 = limits::kCudaSmallMaxN
constexpr int kMaxSteps = 64;
static_assert(kTile * kTilesPerRow == limits::kCudaSmallMaxN, "one block covers the largest n");
static_assert(kTilesPerRow * kTilesPerRow == kThreads, "one 4 x 4 tile per thread");

// The schedule, passed by value as a kernel argument (no device buffer: graph-capturable, no host-to-device copy).
struct Schedule {
  int steps;
  double a[kMaxSteps], b[kMaxSteps], c[kMaxSteps];
};

// Shared-memory layout of one block: four n x n buffers and the norm's partial sums.
ORTHOKERN_HD int64_t workspace_doubles(int n) { return 4 * int64_t(n) * n + kThreads + 1; }

// C = A B for thread tid's tile (row-major n x n).
ORTHOKERN_HD void matmul_tile(double* C, const double* A, const double* B, int n, int tid) {
  const int r0 = (tid / kTilesPerRow) * kTile, c0 = (tid % kTilesPerRow) * kTile;
  if (r0 >= n || c0 >= n) return;
  double acc[kTile][kTile];
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j) acc[i][j] = 0.0;
  for (int k = 0; k < n; ++k) {
    double a[kTile], b[kTile];
    for (int i = 0; i < kTile; ++i) a[i] = r0 + i < n ? A[(r0 + i) * n + k] : 0.0;
    for (int j = 0; j < kTile; ++j) b[j] = c0 + j < n ? B[k * n + c0 + j] : 0.0;
    for (int i = 0; i < kTile; ++i)
      for (int j = 0; j < kTile; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
  }
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j)
      if (r0 + i < n && c0 + j < n) C[(r0 + i) * n + c0 + j] = acc[i][j];
}

// The element indices of thread tid's tile, for elementwise phases: f(index, row, column).
template <typename F>
ORTHOKERN_HD void for_tile(int n, int tid, F f) {
  const int r0 = (tid / kTilesPerRow) * kTile, c0 = (tid % kTilesPerRow) * kTile;
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j)
      if (r0 + i < n && c0 + j < n) f((r0 + i) * n + c0 + j, r0 + i, c0 + j);
}

// Phase: load A (global) into Y, and thread tid's partial sum of squares of A^2 (already in W) into partial[tid].
ORTHOKERN_HD void load_tile(double* Y, const double* A, int n, int tid) {
  for_tile(n, tid, [&](int e, int, int) { Y[e] = A[e]; });
}

ORTHOKERN_HD void sum_squares_tile(double* partial, const double* W, int n, int tid) {
  double s = 0.0;
  for_tile(n, tid, [&](int e, int, int) { s = fma(W[e], W[e], s); });
  partial[tid] = s;
}

// One thread: t = 1.01 ||A^2||_F^(1/4) from the partial sums, in thread order; 1 for a zero matrix.
ORTHOKERN_HD double norm_from_partials(const double* partial) {
  double s = 0.0;
  for (int i = 0; i < kThreads; ++i) s += partial[i];
  const double t = 1.01 * sqrt(sqrt(sqrt(s)));
  return t > 0.0 ? t : 1.0;
}

// Phase: Y <- Y / t^2, W (= A^2) <- W / t^4, Q <- I / t.
ORTHOKERN_HD void normalise_tile(double* Y, double* W, double* Q, double t, int n, int tid) {
  const double t2 = t * t, t4 = t2 * t2;
  for_tile(n, tid, [&](int e, int r, int c) {
    Y[e] = Y[e] / t2;
    W[e] = W[e] / t4;
    Q[e] = r == c ? 1.0 / t : 0.0;
  });
}

// Phase: P <- a I + b Y + c W (W = Y^2; not read when c == 0).
ORTHOKERN_HD void poly_tile(double* P, const double* Y, const double* W, double a, double b, double c, int n,
                            int tid) {
  for_tile(n, tid, [&](int e, int r, int col) {
    double v = b * Y[e];
    if (c != 0.0) v = fma(c, W[e], v);
    P[e] = r == col ? v + a : v;
  });
}

// Phase: out (global) <- Q.
ORTHOKERN_HD void store_tile(double* out, const double* Q, int n, int tid) {
  for_tile(n, tid, [&](int e, int, int) { out[e] = Q[e]; });
}

// The whole computation for one matrix, as a sequence of phases separated by barrier(). ``run_phase(f)`` runs
// f(tid) for every thread tid of the block (on a GPU: each thread its own tid; in the twin: a loop).
template <typename RunPhase, typename Barrier>
ORTHOKERN_HD void factor_one(const double* A, double* out, int n, const Schedule& s, double* smem, RunPhase run_phase,
                             Barrier barrier) {
  double* bufs[4] = {smem, smem + n * n, smem + 2 * n * n, smem + 3 * n * n};
  double *Y = bufs[0], *P = bufs[1], *Q = bufs[2], *W = bufs[3];
  double* partial = smem + 4 * n * n;  // kThreads partial sums, then t
  run_phase([&](int tid) { load_tile(Y, A, n, tid); });
  barrier();
  run_phase([&](int tid) { matmul_tile(W, Y, Y, n, tid); });
  barrier();
  run_phase([&](int tid) { sum_squares_tile(partial, W, n, tid); });
  barrier();
  run_phase([&](int tid) {
    if (tid == 0) partial[kThreads] = norm_from_partials(partial);
  });
  barrier();
  const double t = partial[kThreads];
  run_phase([&](int tid) { normalise_tile(Y, W, Q, t, n, tid); });
  barrier();
  for (int k = 0; k < s.steps; ++k) {
    const double a = s.a[k], b = s.b[k], c = s.c[k];
    if (k > 0 && c != 0.0) {  // step 0 uses the A^2 the norm needed
      run_phase([&](int tid) { matmul_tile(W, Y, Y, n, tid); });
      barrier();
    }
    run_phase([&](int tid) { poly_tile(P, Y, W, a, b, c, n, tid); });
    barrier();
    run_phase([&](int tid) { matmul_tile(W, Q, P, n, tid); });  // W = Q P
    barrier();
    double* old_q = Q;
    Q = W;
    W = old_q;
    if (k + 1 < s.steps) {
      run_phase([&](int tid) { matmul_tile(W, P, Y, n, tid); });  // W = P Y
      barrier();
      run_phase([&](int tid) { matmul_tile(Y, W, P, n, tid); });  // Y = (P Y) P
      barrier();
    }
  }
  run_phase([&](int tid) { store_tile(out, Q, n, tid); });
}

}  // namespace gram_ns
}  // namespace orthokern
