// The n x n factor of newton_schulz on the Gram side, for one small matrix (n <= 64), written once for both the CUDA
// kernel (one thread block per matrix, csrc/cuda/gram_ns_factor.cuh) and its CPU twin (csrc/cpu/ops_gram_ns.cpp),
// which runs the same per-thread and per-warp functions for every thread and warp of a simulated block, phase by
// phase. Torch-free.
//
// Maths (orthokern/reference/newton_schulz.py, gram_side_factor): from the Gram matrix A (scaled so its entries are
// about 1), t = 1.01 ||A^2||_F^(1/4), Y = A / t^2, Q = I / t; for each step (a, b, c): P = a I + b Y + c Y^2,
// Q <- Q P, and, except after the last step, Y <- (P Y) P. Then X Q is the iteration's result for X with X^T X = A.
//
// Every product is symmetric (Y, P and Q are polynomials in A, so they commute), so only the 8 x 8 tiles on and above
// the diagonal are computed, on the float64 tensor cores (mma.sync m8n8k4, sm_80 on), and mirrored: about
// (n/8 + 1) / (2 n/8) of a full product (36 of 64 tiles at n = 64). A block is kThreads threads = kWarps warps; warp
// w owns the upper tiles w, w + kWarps, ... of each product and keeps their accumulators in registers across the
// k loop, so its mma instructions are independent of each other within a k step. The elementwise phases give each
// thread a 4 x 4 tile. The n x n buffers are padded to np = n rounded up to 8 (zeros outside n x n, kept zero by
// every phase) with a leading dimension of np + 4 doubles, which puts the 8 rows an mma fragment load touches in
// distinct shared-memory banks per half warp. Phases communicate only through shared memory, separated by barriers.
//
// The twin is exact for everything but the mma: it emulates the instruction from the PTX ISA's fragment layout
// (kept in csrc/cpu/ops_gram_ns.cpp, separate from the frag_* functions the kernel loads and stores with), with the
// four products of a k step added in order by fma; the hardware's rounding inside one mma may differ from that, so
// the GPU test compares the kernel with its twin to a tolerance (tests/test_gram_ns_factor.py).
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
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kTile = 4;
constexpr int kTilesPerRow = 16;  // kTile * kTilesPerRow = 64 = limits::kCudaSmallMaxN
constexpr int kMmaTile = limits::kCudaSmallMmaTile;  // mma.m8n8k4: an 8 x 8 output tile per instruction ...
constexpr int kMmaK = 4;                            // ... from an 8 x 4 and a 4 x 8 operand
constexpr int kMaxSteps = 64;
constexpr int kMaxMmaTiles = limits::kCudaSmallMaxN / kMmaTile;
// The upper-triangle tiles of the largest product, shared out between the warps.
constexpr int kMaxTilesPerWarp = (kMaxMmaTiles * (kMaxMmaTiles + 1) / 2 + kWarps - 1) / kWarps;
static_assert(kTile * kTilesPerRow == limits::kCudaSmallMaxN, "one block covers the largest n");
static_assert(kTilesPerRow * kTilesPerRow == kThreads, "one 4 x 4 tile per thread");
static_assert(kMmaTile == 8, "mma.m8n8k4 computes 8 x 8 tiles");
static_assert(limits::kCudaSmallMaxN % kMmaTile == 0, "the largest n is a whole number of mma tiles");

// The schedule, passed by value as a kernel argument (no device buffer: graph-capturable, no host-to-device copy).
struct Schedule {
  int steps;
  double a[kMaxSteps], b[kMaxSteps], c[kMaxSteps];
};

// n rounded up to whole mma tiles, and the leading dimension of the shared-memory buffers.
ORTHOKERN_HD int padded(int n) { return (n + kMmaTile - 1) / kMmaTile * kMmaTile; }
ORTHOKERN_HD int leading(int n) { return padded(n) + kMmaK; }

// Shared-memory layout of one block: four padded n x n buffers and the norm's partial sums.
ORTHOKERN_HD int64_t workspace_doubles(int n) { return 4 * int64_t(padded(n)) * leading(n) + kThreads + 1; }

// Which element of an mma.m8n8k4 f64 fragment lane `lane` holds (PTX ISA, "Matrix fragments for mma.m8n8k4 with
// .f64 floating point type"): one element of the 8 x 4 A (row-major), one of the 4 x 8 B, two of the 8 x 8 C / D.
ORTHOKERN_HD int frag_a_row(int lane) { return lane >> 2; }
ORTHOKERN_HD int frag_a_col(int lane) { return lane & 3; }
ORTHOKERN_HD int frag_b_row(int lane) { return lane & 3; }
ORTHOKERN_HD int frag_b_col(int lane) { return lane >> 2; }
ORTHOKERN_HD int frag_d_row(int lane) { return lane >> 2; }
ORTHOKERN_HD int frag_d_col(int lane, int i) { return 2 * (lane & 3) + i; }

// The lanes one call of a warp function computes for: the one lane of the calling thread in the kernel (NL = 1), all
// kWarpSize lanes of a warp in the twin (NL = kWarpSize), which runs them in lock step.
template <int NL>
struct Lanes {
  int id[NL];
};

// The (row, column) block of the t-th tile on or above the diagonal of an nt x nt grid of tiles, row by row.
ORTHOKERN_HD void upper_tile(int t, int nt, int* ti, int* tj) {
  int i = 0;
  while (t >= nt - i) {
    t -= nt - i;
    ++i;
  }
  *ti = i;
  *tj = i + t;
}

// C = A B for symmetric C (np x np, leading dimension ld, np a multiple of kMmaTile): warp `warp`'s share of the
// upper tiles on the tensor cores, each element also written to its mirror. `mma(d, a, b)` is
// mma.sync.aligned.m8n8k4.row.col.f64 for the lanes of `lanes`: d[j][0..1] += A_tile B_tile at lane j's fragment.
// Every element (r, c) with r <= c is written to C[r][c] and C[c][r] by exactly one lane; the lanes of a diagonal
// tile that hold an element below the diagonal write nothing, so no two lanes write one address.
template <int NL, typename Mma>
ORTHOKERN_HD void sym_matmul_warp(double* C, const double* A, const double* B, int np, int ld, int warp,
                                  const Lanes<NL>& lanes, Mma mma) {
  const int nt = np / kMmaTile, tiles = nt * (nt + 1) / 2;
  // Loops over a warp's tiles run to the constant kMaxTilesPerWarp (and skip the tiles it does not have), so that
  // the compiler unrolls them and keeps the accumulators and offsets in registers, not in local memory.
  int row0[kMaxTilesPerWarp], col0[kMaxTilesPerWarp];
  for (int i = 0; i < kMaxTilesPerWarp; ++i) {
    int ti = 0, tj = 0;
    if (warp + i * kWarps < tiles) upper_tile(warp + i * kWarps, nt, &ti, &tj);
    row0[i] = ti * kMmaTile;
    col0[i] = tj * kMmaTile;
  }
  double d[kMaxTilesPerWarp][NL][2];
  for (int i = 0; i < kMaxTilesPerWarp; ++i)
    for (int j = 0; j < NL; ++j) d[i][j][0] = d[i][j][1] = 0.0;
  for (int k0 = 0; k0 < np; k0 += kMmaK) {
    for (int i = 0; i < kMaxTilesPerWarp; ++i) {
      if (warp + i * kWarps >= tiles) break;  // the same for every lane: the warp stays converged for the mma
      double a[NL], b[NL];
      for (int j = 0; j < NL; ++j) {
        const int lane = lanes.id[j];
        a[j] = A[(row0[i] + frag_a_row(lane)) * ld + k0 + frag_a_col(lane)];
        b[j] = B[(k0 + frag_b_row(lane)) * ld + col0[i] + frag_b_col(lane)];
      }
      mma(d[i], a, b);
    }
  }
  for (int i = 0; i < kMaxTilesPerWarp; ++i) {
    if (warp + i * kWarps >= tiles) break;
    for (int j = 0; j < NL; ++j) {
      const int lane = lanes.id[j];
      const int r = row0[i] + frag_d_row(lane);
      for (int e = 0; e < 2; ++e) {
        const int c = col0[i] + frag_d_col(lane, e);
        if (r <= c) {
          C[r * ld + c] = d[i][j][e];
          C[c * ld + r] = d[i][j][e];
        }
      }
    }
  }
}

// The element indices of thread tid's tile of the padded np x np buffer, for elementwise phases:
// f(index, row, column).
template <typename F>
ORTHOKERN_HD void for_tile(int np, int ld, int tid, F f) {
  const int r0 = (tid / kTilesPerRow) * kTile, c0 = (tid % kTilesPerRow) * kTile;
  for (int i = 0; i < kTile; ++i)
    for (int j = 0; j < kTile; ++j)
      if (r0 + i < np && c0 + j < np) f((r0 + i) * ld + c0 + j, r0 + i, c0 + j);
}

// Phase: load A (global, n x n) into Y, zeros in the padding.
ORTHOKERN_HD void load_tile(double* Y, const double* A, int n, int np, int ld, int tid) {
  for_tile(np, ld, tid, [&](int e, int r, int c) { Y[e] = r < n && c < n ? A[r * n + c] : 0.0; });
}

// Phase: thread tid's partial sum of squares of A^2 (in W) into partial[tid].
ORTHOKERN_HD void sum_squares_tile(double* partial, const double* W, int np, int ld, int tid) {
  double s = 0.0;
  for_tile(np, ld, tid, [&](int e, int, int) { s = fma(W[e], W[e], s); });
  partial[tid] = s;
}

// One thread: t = 1.01 ||A^2||_F^(1/4) from the partial sums, in thread order; 1 for a zero matrix.
ORTHOKERN_HD double norm_from_partials(const double* partial) {
  double s = 0.0;
  for (int i = 0; i < kThreads; ++i) s += partial[i];
  const double t = 1.01 * sqrt(sqrt(sqrt(s)));
  return t > 0.0 ? t : 1.0;
}

// Phase: Y <- Y / t^2, W (= A^2) <- W / t^4, Q <- I / t (zero in the padding).
ORTHOKERN_HD void normalise_tile(double* Y, double* W, double* Q, double t, int n, int np, int ld, int tid) {
  const double t2 = t * t, t4 = t2 * t2;
  for_tile(np, ld, tid, [&](int e, int r, int c) {
    Y[e] = Y[e] / t2;
    W[e] = W[e] / t4;
    Q[e] = r == c && r < n ? 1.0 / t : 0.0;
  });
}

// Phase: P <- a I + b Y + c W (W = Y^2; not read when c == 0), zero in the padding.
ORTHOKERN_HD void poly_tile(double* P, const double* Y, const double* W, double a, double b, double c, int n, int np,
                            int ld, int tid) {
  for_tile(np, ld, tid, [&](int e, int r, int col) {
    double v = b * Y[e];
    if (c != 0.0) v = fma(c, W[e], v);
    P[e] = r == col && r < n ? v + a : v;
  });
}

// Phase: out (global, n x n) <- Q.
ORTHOKERN_HD void store_tile(double* out, const double* Q, int n, int np, int ld, int tid) {
  for_tile(np, ld, tid, [&](int e, int r, int c) {
    if (r < n && c < n) out[r * n + c] = Q[e];
  });
}

// The whole computation for one matrix, as a sequence of phases separated by barrier(). ``run_phase(f)`` runs f(tid)
// for every thread tid of the block and ``run_warps(f)`` runs f(warp, lanes) for every warp (on a GPU: each thread
// its own tid, and its own warp with lanes = {its lane}; in the twin: loops, with all of a warp's lanes at once).
// ``mma`` is the tensor-core instruction (sym_matmul_warp) for the lanes run_warps passes.
template <typename RunPhase, typename RunWarps, typename Barrier, typename Mma>
ORTHOKERN_HD void factor_one(const double* A, double* out, int n, const Schedule& s, double* smem, RunPhase run_phase,
                             RunWarps run_warps, Barrier barrier, Mma mma) {
  const int np = padded(n), ld = leading(n), size = np * ld;
  double* bufs[4] = {smem, smem + size, smem + 2 * size, smem + 3 * size};
  double *Y = bufs[0], *P = bufs[1], *Q = bufs[2], *W = bufs[3];
  double* partial = smem + 4 * size;  // kThreads partial sums, then t
  // C = A B on the tensor cores (C distinct from A and B)
  auto product = [&](double* C, const double* A_, const double* B_) {
    run_warps([&](int warp, const auto& lanes) { sym_matmul_warp(C, A_, B_, np, ld, warp, lanes, mma); });
    barrier();
  };
  run_phase([&](int tid) { load_tile(Y, A, n, np, ld, tid); });
  barrier();
  product(W, Y, Y);
  run_phase([&](int tid) { sum_squares_tile(partial, W, np, ld, tid); });
  barrier();
  run_phase([&](int tid) {
    if (tid == 0) partial[kThreads] = norm_from_partials(partial);
  });
  barrier();
  const double t = partial[kThreads];
  run_phase([&](int tid) { normalise_tile(Y, W, Q, t, n, np, ld, tid); });
  barrier();
  for (int k = 0; k < s.steps; ++k) {
    const double a = s.a[k], b = s.b[k], c = s.c[k];
    if (k > 0 && c != 0.0) product(W, Y, Y);  // step 0 uses the A^2 the norm needed
    run_phase([&](int tid) { poly_tile(P, Y, W, a, b, c, n, np, ld, tid); });
    barrier();
    product(W, Q, P);  // W = Q P
    double* old_q = Q;
    Q = W;
    W = old_q;
    if (k + 1 < s.steps) {
      product(W, P, Y);  // W = P Y
      product(Y, W, P);  // Y = (P Y) P
    }
  }
  run_phase([&](int tid) { store_tile(out, Q, n, np, ld, tid); });
}

}  // namespace gram_ns
}  // namespace orthokern
