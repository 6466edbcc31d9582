// gram_eigh_polar on the CPU: the passes over G and the calls into the kernels; the per-matrix maths is in
// gram_eigh_polar.h, scaling.h, gram_kernel.h and symmetric_eigh.h, the blocking and threading in aten_blocks.h.
//
// Memory traffic: G is read twice (the Gram pass, the apply) and O written once; nothing else of G's size is read
// or written. The power-of-two scale and the zero and non-finite checks all come from the trace of the n x n Gram
// matrix, and the scale is folded into the n x n factor of the apply (scaling.h: can_fold), so there is no
// separate reduction or scaling pass. The Gram matrix is accumulated in float64 (for float32 and half input from
// blocks converted in cache), the eigensolver runs in float64, the apply in float32 (float64 for float64 input)
// through the BLAS, stored once in G's dtype.
//
// Threads: the per-matrix work (Gram, eigensolver, n x n factor) runs in parallel over the matrices of the batch
// (over the rows of each matrix's Gram pass when there are few); LAPACK's eigensolver (n > kOwnEighMaxN) and the
// BLAS apply run between those regions, on their own threads.
#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "cpu/aten_blocks.h"
#include "cpu/gram_eigh_polar.h"
#include "cpu/gram_kernel.h"
#include "cpu/ops_cpu.h"
#include "cpu/scaling.h"
#include "cpu/symmetric_eigh.h"

namespace orthokern {
namespace cpu {
namespace {

// Up to this n the torch-free eigensolver (symmetric_eigh.h) beats LAPACK's syevd through at::linalg_eigh on the
// reference CPU (one thread, measured in bench/RESULTS.md): syevd's fixed cost per call dominates for small n;
// above, its blocked divide and conquer wins.
constexpr int64_t kOwnEighMaxN = 128;
// Bytes of the float64 n x n matrices (Gram matrices and LAPACK's eigenvectors) held at once for the LAPACK path.
constexpr int64_t kGroupBytes = int64_t(1) << 26;

// Scratch of the per-matrix work, one per thread (A, lam, Vt, eigh: only for the torch-free eigensolver).
struct Scratch {
  std::vector<std::vector<double>> gram;  // gram_one's (one thread)
  std::vector<double> A, lam, Vt, eigh, d, M;
  Scratch(int64_t m, int64_t n, bool own_eigh)
      : gram(gram_scratch(std::max(m, n), n, 1)), d(n), M(n * n) {
    if (!own_eigh) return;
    A.resize(n * n);
    lam.resize(n);
    Vt.resize(n * n);
    eigh.resize(symmetric_eigh_work(n));
  }
};

// From the eigen-decomposition of the scaled Gram matrix of one matrix (eigenvalues lam, eigenvectors as the rows
// of Vt, which is overwritten): its n x n factor, with the scale 2^-e folded in where the result fits ApplyT
// (exact), else left to the apply (pre = e: the blocks of G are scaled in cache). With threads > 1 (one matrix at
// a time) the factor's Gram pass is split by rows among the threads (gram), else it runs on this thread (s.gram).
template <typename ApplyT>
void finish_factor(const double* lam, double* Vt, int64_t n, double rcond, int e, ApplyT* Ma, int* pre, Scratch& s,
                   std::vector<std::vector<double>>& gram, int64_t threads) {
  inverse_sqrt_weights(lam, s.d.data(), n, rcond);
  const int64_t k = scaled_kept_rows(Vt, s.d.data(), n);
  const at::Tensor rows = at::from_blob(Vt, {k, n}, at::TensorOptions().dtype(at::kDouble));
  gram_one(rows, s.M.data(), 0, threads > 1 ? gram : s.gram, threads);
  const bool fold = can_fold<ApplyT>(max_abs(s.M.data(), n * n), e);
  *pre = fold ? 0 : e;
  fold_scale<ApplyT>(s.M.data(), Ma, n * n, fold ? -e : 0);
}

// O = (2^-pre_i G_i) Ma_i for every matrix, in Ma's dtype, stored in O's dtype: one BLAS call in the common case,
// else through float32/float64 blocks converted (and scaled) in cache.
void apply(const at::Tensor& G, const at::Tensor& Ma, at::Tensor& O, const std::vector<int>& pre) {
  const bool prescale = std::any_of(pre.begin(), pre.end(), [](int e) { return e != 0; });
  if (G.scalar_type() == Ma.scalar_type() && !prescale) {
    at::bmm_out(O, G, Ma);
    return;
  }
  const int64_t B = G.size(0), m = G.size(1), n = G.size(2);
  const BlockPlan plan = plan_blocks(B, m, n, G.element_size());
  const int64_t block = plan.chunk * plan.rows * n;
  const at::Tensor xs = at::empty({block}, Ma.options()), ys = at::empty({block}, Ma.options());
  for (int64_t b0 = 0; b0 < B; b0 += plan.chunk) {
    const int64_t c = std::min(plan.chunk, B - b0);
    const std::vector<int> pc(pre.begin() + b0, pre.begin() + b0 + c);
    const at::Tensor Mc = Ma.narrow(0, b0, c);
    for (int64_t r0 = 0; r0 < m; r0 += plan.rows) {
      const int64_t rb = std::min(plan.rows, m - r0);
      at::Tensor blk = load_block(xs, G.narrow(0, b0, c).narrow(1, r0, rb));
      scale_matrices_pow2_(blk, pc);
      at::Tensor Ob = O.narrow(0, b0, c).narrow(1, r0, rb);
      if (O.scalar_type() == Ma.scalar_type()) {
        at::bmm_out(Ob, blk, Mc);
      } else {
        at::Tensor y = ys.narrow(0, 0, Ob.numel()).view(Ob.sizes());
        at::bmm_out(y, blk, Mc);
        Ob.copy_(y);  // half precision: rounded once, here
      }
    }
  }
}

template <typename ApplyT>
void gram_eigh_batch(const at::Tensor& G, at::Tensor& O, double rcond) {
  const int64_t B = G.size(0), m = G.size(1), n = G.size(2);
  const int64_t threads = op_threads();
  // Enough matrices are shared out one matrix per task (dynamic scheduling); fewer are done one matrix at a time
  // with the Gram passes split by rows among the threads. "Enough": as many as threads where the torch-free
  // eigensolver runs inside the task (it cannot be split), four per thread otherwise (a few large matrices, whose
  // Gram passes split evenly by rows while whole matrices would not: three over two threads take two rounds).
  std::vector<Scratch> scratch;
  for (int64_t t = 0; t < threads; ++t) scratch.emplace_back(m, n, n <= kOwnEighMaxN);
  std::vector<std::vector<double>> rows_gram = gram_scratch(std::max(m, n), n, threads);
  const int64_t enough = n <= kOwnEighMaxN ? threads : 4 * threads;
  const auto run = [&](int64_t count, const std::function<void(int64_t, int64_t, int64_t)>& fn) {
    if (threads > 1 && count >= enough) {
      parallel_matrices(count, threads, [&](int64_t i, int64_t t) { fn(i, t, 1); });
    } else {
      for (int64_t i = 0; i < count; ++i) fn(i, 0, threads);
    }
  };

  at::Tensor Ma = at::empty({B, n, n}, G.options().dtype(c10::CppTypeToScalarType<ApplyT>::value));
  ApplyT* map = Ma.data_ptr<ApplyT>();
  std::vector<GramScale> sc(B);
  std::vector<int> pre(B, 0);

  if (n <= kOwnEighMaxN) {
    run(B, [&](int64_t i, int64_t t, int64_t gt) {
      Scratch& s = scratch[t];
      auto& gram = gt > 1 ? rows_gram : s.gram;
      const at::Tensor Gi = G.select(0, i);
      gram_one(Gi, s.A.data(), 0, gram, gt);
      sc[i] = scale_gram_of(Gi, s.A.data(), gram, gt);
      symmetric_eigh(s.A.data(), s.lam.data(), s.Vt.data(), n, s.eigh.data());
      finish_factor<ApplyT>(s.lam.data(), s.Vt.data(), n, rcond, sc[i].e, map + i * n * n, &pre[i], s, rows_gram, gt);
    });
  } else {
    const int64_t group = std::max<int64_t>(1, kGroupBytes / (2 * n * n * int64_t(sizeof(double))));
    for (int64_t g0 = 0; g0 < B; g0 += group) {
      const int64_t gc = std::min(group, B - g0);
      at::Tensor A = at::empty({gc, n, n}, G.options().dtype(at::kDouble));
      double* a = A.data_ptr<double>();
      run(gc, [&](int64_t i, int64_t t, int64_t gt) {
        auto& gram = gt > 1 ? rows_gram : scratch[t].gram;
        const at::Tensor Gi = G.select(0, g0 + i);
        gram_one(Gi, a + i * n * n, 0, gram, gt);
        sc[g0 + i] = scale_gram_of(Gi, a + i * n * n, gram, gt);
      });
      auto [lam, W] = at::linalg_eigh(A);                // LAPACK, on its own threads
      at::Tensor Vt = W.transpose(1, 2).contiguous();  // (LAPACK's eigenvectors are column-major: no copy)
      const double* lp = lam.data_ptr<double>();
      double* vp = Vt.data_ptr<double>();
      run(gc, [&](int64_t i, int64_t t, int64_t gt) {
        finish_factor<ApplyT>(lp + i * n, vp + i * n * n, n, rcond, sc[g0 + i].e, map + (g0 + i) * n * n,
                              &pre[g0 + i], scratch[t], rows_gram, gt);
      });
    }
  }
  apply(G, Ma, O, pre);
  set_special_results(O, sc);
}

}  // namespace

at::Tensor gram_eigh_polar(const at::Tensor& G, double rcond) {
  at::Tensor O = empty_result(G.sizes(), G.options());
  if (O.numel() == 0) return O;
  if (G.scalar_type() == at::kDouble) {
    gram_eigh_batch<double>(G, O, rcond);
  } else {
    gram_eigh_batch<float>(G, O, rcond);
  }
  return O;
}

}  // namespace cpu
}  // namespace orthokern
