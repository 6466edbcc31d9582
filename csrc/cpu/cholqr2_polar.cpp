// cholqr2_polar on the CPU: the passes over G and the BLAS / LAPACK calls; the per-matrix maths is in
// cholqr2_polar.h and scaling.h, the blocking and threading in aten_blocks.h.
//
// Memory traffic: G is read three times (the first Gram matrix; the second, of Q1 = X R1^-1; the apply) and O
// written once. Q1 is never stored: each pass recomputes its block of Q1 from a float64 block of G in cache, by a
// triangular solve (BLAS trsm), which costs m n^2 flops instead of writing and re-reading an m x n float64 matrix.
// Everything runs in float64, as the reference; the result is rounded once to G's dtype.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "cpu/aten_blocks.h"
#include "cpu/cholqr2_polar.h"
#include "cpu/ops_cpu.h"
#include "cpu/scaling.h"

namespace orthokern {
namespace cpu {
namespace {

struct Scratch {
  std::vector<std::vector<double>> gram;  // gram_one's, per thread
  at::Tensor x;              // float64 blocks of X = 2^-e G
  at::Tensor q;              // float64 blocks of Q1 = X R1^-1
  at::Tensor y;              // float64 blocks of O (input not float64)
};

// The block of Q1 = (2^-e_i G_i) R1_i^-1 for rows [r0, r0 + rb) of each matrix of the chunk.
at::Tensor q1_block(const at::Tensor& G, const at::Tensor& R1, const std::vector<int>& e, int64_t r0, int64_t rb,
                    Scratch& s) {
  const at::Tensor src = G.narrow(1, r0, rb);
  at::Tensor x = s.x.narrow(0, 0, src.numel()).view(src.sizes());
  x.copy_(src);
  scale_matrices_pow2_(x, e);
  at::Tensor q = s.q.narrow(0, 0, src.numel()).view(src.sizes());
  at::linalg_solve_triangular_out(q, R1, x, /*upper=*/true, /*left=*/false);
  return q;
}

at::Tensor upper_cholesky(const at::Tensor& A) {
  // The shift makes A positive definite for any finite input, so the factorisation cannot fail; should rounding
  // produce a non-positive pivot anyway, LAPACK stops there and the factor holds NaN: the result then shows it.
  return std::get<0>(at::linalg_cholesky_ex(A, /*upper=*/true));
}

void cholqr2_chunk(const at::Tensor& G, at::Tensor& O, double rcond, int64_t rows, Scratch& s) {
  const int64_t c = G.size(0), m = G.size(1), n = G.size(2);
  at::Tensor A = at::empty({c, n, n}, G.options().dtype(at::kDouble));
  double* a = A.data_ptr<double>();
  const int64_t gram_threads = int64_t(s.gram.size());
  std::vector<GramScale> sc(c);
  std::vector<int> e(c);
  for (int64_t i = 0; i < c; ++i) {
    gram_one(G.select(0, i), a + i * n * n, 0, s.gram, gram_threads);
    sc[i] = scale_gram_of(G.select(0, i), a + i * n * n, s.gram, gram_threads);
    e[i] = sc[i].e;
  }
  const auto ok = [&](int64_t i) { return sc[i].status == GramStatus::kOk; };

  for (int64_t i = 0; i < c; ++i)
    if (ok(i)) add_cholqr_shift(a + i * n * n, m, n);
  const at::Tensor R1 = upper_cholesky(A);

  // Second pass: A2 = Q1^T Q1 accumulated block by block (upper triangle, gram_kernel.h).
  A.zero_();
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    const int64_t rb = std::min(rows, m - r0);
    const at::Tensor q = q1_block(G, R1, e, r0, rb, s);
    const double* qp = q.const_data_ptr<double>();
    for (int64_t i = 0; i < c; ++i) gram_add_upper<double>(qp + i * rb * n, rb, n, n, 1, a + i * n * n, s.gram[0].data());
  }
  std::vector<double> s2(c, 0.0);
  for (int64_t i = 0; i < c; ++i) {
    mirror_upper(a + i * n * n, n);
    if (ok(i)) {
      s2[i] = add_cholqr_shift(a + i * n * n, m, n);
    } else {
      set_identity(a + i * n * n, n);  // their Q1 may hold NaN; their result is set at the end
    }
  }
  const at::Tensor R2 = upper_cholesky(A);

  // The polar factor of the small R = R2 R1 = W diag(sigma) Z^T, restricted to the significant singular values,
  // and N = sqrt(1 + s2) R2^-1 W_k Z_k^T, so that O = Q1 N.
  auto [W, sigma, Zh] = at::linalg_svd(at::bmm(R2, R1), /*full_matrices=*/false);
  at::Tensor keep = at::empty({c, n}, A.options());
  const double* sp = sigma.data_ptr<double>();
  double* kp = keep.data_ptr<double>();
  for (int64_t i = 0; i < c; ++i) singular_value_mask(sp + i * n, kp + i * n, n, rcond);
  at::Tensor N = at::linalg_solve_triangular(R2, at::bmm(W * keep.unsqueeze(1), Zh), /*upper=*/true, /*left=*/true);
  std::vector<double> bias(c);
  for (int64_t i = 0; i < c; ++i) bias[i] = std::sqrt(1.0 + s2[i]);
  N.mul_(at::tensor(bias, A.options()).view({c, 1, 1}));

  // Third pass: O = Q1 N block by block, rounded once to O's dtype.
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    const int64_t rb = std::min(rows, m - r0);
    const at::Tensor q = q1_block(G, R1, e, r0, rb, s);
    at::Tensor Ob = O.narrow(1, r0, rb);
    if (O.scalar_type() == at::kDouble) {
      at::bmm_out(Ob, q, N);
    } else {
      at::Tensor y = s.y.narrow(0, 0, q.numel()).view(q.sizes());
      at::bmm_out(y, q, N);
      Ob.copy_(y);
    }
  }
  set_special_results(O, sc);
}

}  // namespace

at::Tensor cholqr2_polar(const at::Tensor& G, double rcond) {
  const int64_t B = G.size(0), m = G.size(1), n = G.size(2);
  at::Tensor O = empty_result({B, m, n}, G.options());
  if (O.numel() == 0) return O;
  // Chunks one after the other: the LAPACK and BLAS calls on each run on their own threads, and so does the Gram
  // pass of a chunk of one matrix (split by rows).
  const BlockPlan plan = plan_blocks(B, m, n, G.element_size());
  const int64_t block = plan.chunk * plan.rows * n;
  const auto f64 = G.options().dtype(at::kDouble);
  Scratch s{gram_scratch(std::max(m, plan.rows), n, plan.chunk == 1 ? op_threads() : 1), at::empty({block}, f64),
            at::empty({block}, f64), at::Tensor()};
  if (G.scalar_type() != at::kDouble) s.y = at::empty({block}, f64);
  for (int64_t b0 = 0; b0 < B; b0 += plan.chunk) {
    const int64_t c = std::min(plan.chunk, B - b0);
    at::Tensor Oc = O.narrow(0, b0, c);
    cholqr2_chunk(G.narrow(0, b0, c), Oc, rcond, plan.rows, s);
  }
  return O;
}

}  // namespace cpu
}  // namespace orthokern
