// gram_eigh_polar on the CPU: the passes over G and the calls into the kernels; the per-matrix maths is in
// gram_eigh_polar.h, scaling.h, gram_kernel.h and symmetric_eigh.h, the blocking and threading in aten_blocks.h.
//
// Memory traffic: G is read twice (the Gram pass, the apply) and O written once; nothing else of G's size is read
// or written. The power-of-two scale and the zero and non-finite checks all come from the trace of the n x n Gram
// matrix, and the scale is folded into the n x n factor of the apply (scaling.h: can_fold), so there is no
// separate reduction or scaling pass. The Gram matrix is accumulated in float64 (for float32 and half input from
// blocks converted in cache), the eigensolver runs in float64, the apply in float32 (float64 for float64 input)
// through the BLAS, stored once in G's dtype.
#include <ATen/ATen.h>

#include <cmath>
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

struct Scratch {
  std::vector<double> gram;     // gram_full's packed block
  std::vector<double> eigh;    // symmetric_eigh's work
  std::vector<double> factor;  // inverse_sqrt_factor's work
  at::Tensor apply;          // apply-dtype blocks of G (half input, or a scale that cannot be folded)
  at::Tensor out;            // apply-dtype blocks of O (half input)
};

// O = (2^-pre_i G_i) Ma_i for each matrix i of the chunk, in Ma's dtype, stored in O's dtype.
void apply_chunk(const at::Tensor& G, const at::Tensor& Ma, at::Tensor& O, int64_t rows, const std::vector<int>& pre,
                 Scratch& s) {
  const bool prescale = std::any_of(pre.begin(), pre.end(), [](int e) { return e != 0; });
  const bool same_dtype = G.scalar_type() == Ma.scalar_type() && O.scalar_type() == Ma.scalar_type();
  if (same_dtype && !prescale) {
    at::bmm_out(O, G, Ma);  // the common case: one BLAS call reading G and writing O
    return;
  }
  const int64_t m = G.size(1);
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    const int64_t rb = std::min(rows, m - r0);
    at::Tensor blk = load_block(s.apply, G.narrow(1, r0, rb));
    scale_matrices_pow2_(blk, pre);
    at::Tensor Ob = O.narrow(1, r0, rb);
    if (O.scalar_type() == Ma.scalar_type()) {
      at::bmm_out(Ob, blk, Ma);
    } else {
      at::Tensor y = s.out.narrow(0, 0, Ob.numel()).view(Ob.sizes());
      at::bmm_out(y, blk, Ma);
      Ob.copy_(y);  // half precision: rounded once, here
    }
  }
}

template <typename ApplyT>
void gram_eigh_chunk(const at::Tensor& G, at::Tensor& O, double rcond, int64_t rows, Scratch& s) {
  const int64_t c = G.size(0), n = G.size(2);
  const auto f64 = G.options().dtype(at::kDouble);
  at::Tensor A = at::empty({c, n, n}, f64);
  gram_chunk(G, A, s.gram);
  const GramScales sc = scale_grams(G, A, s.gram);

  // Eigenvalues lam (c, n) and eigenvectors as the rows of Vt (c, n, n).
  at::Tensor lam, Vt;
  if (n <= kOwnEighMaxN) {
    lam = at::empty({c, n}, f64);
    Vt = at::empty({c, n, n}, f64);
    double* a = A.data_ptr<double>();
    for (int64_t i = 0; i < c; ++i)
      symmetric_eigh(a + i * n * n, lam.data_ptr<double>() + i * n, Vt.data_ptr<double>() + i * n * n, n,
                     s.eigh.data());
  } else {
    at::Tensor W;
    std::tie(lam, W) = at::linalg_eigh(A);
    Vt = W.transpose(1, 2);
  }
  at::Tensor d = at::empty({c, n}, f64);
  const double* lp = lam.data_ptr<double>();
  double* dp = d.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i) inverse_sqrt_weights(lp + i * n, dp + i * n, n, rcond);
  at::Tensor M = at::empty({c, n, n}, f64);
  Vt = Vt.contiguous();  // (LAPACK's eigenvectors are column-major, so their transpose already is)
  double* vp = Vt.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i)
    inverse_sqrt_factor(vp + i * n * n, dp + i * n, n, M.data_ptr<double>() + i * n * n, s.factor.data());

  // The scale 2^-e goes into the n x n factor (exact), or onto the blocks of G where the folded factor would
  // leave ApplyT's range.
  at::Tensor Ma = at::empty({c, n, n}, G.options().dtype(c10::CppTypeToScalarType<ApplyT>::value));
  const double* mp = M.data_ptr<double>();
  ApplyT* map = Ma.data_ptr<ApplyT>();
  std::vector<int> pre(c, 0);
  for (int64_t i = 0; i < c; ++i) {
    const double* Mi = mp + i * n * n;
    const bool fold = can_fold<ApplyT>(max_abs(Mi, n * n), sc.e[i]);
    pre[i] = fold ? 0 : sc.e[i];
    fold_scale<ApplyT>(Mi, map + i * n * n, n * n, fold ? -sc.e[i] : 0);
  }
  apply_chunk(G, Ma, O, rows, pre, s);
  set_special_results(O, sc);
}

}  // namespace

at::Tensor gram_eigh_polar(const at::Tensor& G, double rcond) {
  const int64_t B = G.size(0), m = G.size(1), n = G.size(2);
  at::Tensor O = empty_result({B, m, n}, G.options());
  if (O.numel() == 0) return O;
  const bool dbl = G.scalar_type() == at::kDouble;
  const bool half = G.scalar_type() == at::kHalf || G.scalar_type() == at::kBFloat16;
  const auto apply_dtype = dbl ? at::kDouble : at::kFloat;
  const BlockPlan plan = plan_blocks(B, m, n, G.element_size());
  const int64_t chunks = (B + plan.chunk - 1) / plan.chunk;
  for_each_chunk(chunks, [&](int64_t c0, int64_t c1) {
    const int64_t block = plan.chunk * plan.rows * n;
    Scratch s;
    s.gram.resize(gram_work(m, n));
    s.eigh.resize(symmetric_eigh_work(n));
    s.factor.resize(gram_work(n, n));
    s.apply = at::empty({block}, G.options().dtype(apply_dtype));
    if (half) s.out = at::empty({block}, G.options().dtype(apply_dtype));
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t b0 = ch * plan.chunk, c = std::min(plan.chunk, B - b0);
      at::Tensor Oc = O.narrow(0, b0, c);
      if (dbl) {
        gram_eigh_chunk<double>(G.narrow(0, b0, c), Oc, rcond, plan.rows, s);
      } else {
        gram_eigh_chunk<float>(G.narrow(0, b0, c), Oc, rcond, plan.rows, s);
      }
    }
  });
  return O;
}

}  // namespace cpu
}  // namespace orthokern
