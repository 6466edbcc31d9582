// CPU implementations of the orthokern ops: argument checks and torch plumbing; the algorithms are in the
// torch-free headers next to this file. Matrices of a batch are independent: at::parallel_for over the batch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "cpu/cholqr2_polar.h"
#include "cpu/gram_eigh_polar.h"
#include "cpu/jacobi.h"

namespace orthokern {
namespace {

void check_polar_input(const char* op, const at::Tensor& G, double rcond) {
  TORCH_CHECK(G.dim() == 3, op, ": G must be a batch of matrices (B, m, n), got shape ", G.sizes());
  const auto dt = G.scalar_type();
  TORCH_CHECK(dt == at::kDouble || dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": G must be float64, float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(G.device().is_cpu(), op, ": the CPU kernel got G on ", G.device());
  TORCH_CHECK(rcond >= 0.0 && rcond < 1.0, op, ": rcond must be in [0, 1), got ", rcond);
}

std::tuple<at::Tensor, at::Tensor> eigh_small_cpu(const at::Tensor& A) {
  TORCH_CHECK(A.dim() >= 2 && A.size(-1) == A.size(-2),
              "eigh_small: A must be a batch of square matrices (..., n, n), got shape ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "eigh_small: A must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.device().is_cpu(), "eigh_small: the CPU kernel got A on ", A.device());
  const at::Tensor Ac = A.contiguous();
  const int64_t n = A.size(-1);
  at::Tensor W = at::empty_like(Ac);
  at::Tensor w = at::empty(A.sizes().slice(0, A.dim() - 1), A.options());
  if (Ac.numel() == 0) return {w, W};
  const int64_t batch = Ac.numel() / (n * n);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "eigh_small_cpu", [&] {
    const scalar_t* a = Ac.const_data_ptr<scalar_t>();
    scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* Wp = W.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      std::vector<scalar_t> work(2 * n * n);
      for (int64_t b = b0; b < b1; ++b)
        cpu::eigh_small_one<scalar_t>(a + b * n * n, wp + b * n, Wp + b * n * n, n, work.data());
    });
  });
  return {w, W};
}

template <typename In, typename GramT, typename ApplyT>
void run_gram_eigh_polar(const at::Tensor& X, at::Tensor& O, double rcond) {
  const int64_t batch = X.size(0), m = X.size(1), n = X.size(2);
  const In* x = X.const_data_ptr<In>();
  In* o = O.mutable_data_ptr<In>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<GramT> gwork(cpu::gram_eigh_polar_work_gram(n));
    std::vector<ApplyT> awork(cpu::gram_eigh_polar_work_apply(n));
    for (int64_t b = b0; b < b1; ++b)
      cpu::gram_eigh_polar_one<In, GramT, ApplyT>(x + b * m * n, o + b * m * n, m, n, rcond, gwork.data(),
                                                   awork.data());
  });
}

at::Tensor gram_eigh_polar_cpu(const at::Tensor& G, double rcond, bool accurate) {
  check_polar_input("gram_eigh_polar", G, rcond);
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  // Half precision is a storage format here: compute on a float32 copy (as the reference does).
  const bool half = G.scalar_type() == at::kBFloat16 || G.scalar_type() == at::kHalf;
  const at::Tensor X = half ? G.to(at::kFloat).contiguous() : G.contiguous();
  at::Tensor O = at::empty_like(X, at::MemoryFormat::Contiguous);
  if (X.scalar_type() == at::kDouble) {
    run_gram_eigh_polar<double, double, double>(X, O, rcond);
  } else if (accurate) {
    run_gram_eigh_polar<float, double, float>(X, O, rcond);
  } else {
    run_gram_eigh_polar<float, float, float>(X, O, rcond);
  }
  return half ? O.to(G.scalar_type()) : O;
}

at::Tensor cholqr2_polar_cpu(const at::Tensor& G, double rcond) {
  check_polar_input("cholqr2_polar", G, rcond);
  TORCH_CHECK(G.size(1) >= G.size(2), "cholqr2_polar: G must be tall (m >= n), got shape ", G.sizes());
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  const bool half = G.scalar_type() == at::kBFloat16 || G.scalar_type() == at::kHalf;
  const at::Tensor X = half ? G.to(at::kFloat).contiguous() : G.contiguous();
  at::Tensor O = at::empty_like(X, at::MemoryFormat::Contiguous);
  const int64_t batch = X.size(0), m = X.size(1), n = X.size(2);
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "cholqr2_polar_cpu", [&] {
    const scalar_t* x = X.const_data_ptr<scalar_t>();
    scalar_t* o = O.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      std::vector<double> work(cpu::cholqr2_polar_work(m, n));
      for (int64_t b = b0; b < b1; ++b)
        cpu::cholqr2_polar_one<scalar_t>(x + b * m * n, o + b * m * n, m, n, rcond, work.data());
    });
  });
  return half ? O.to(G.scalar_type()) : O;
}

}  // namespace

TORCH_LIBRARY_IMPL(orthokern, CPU, m) {
  m.impl("eigh_small", &eigh_small_cpu);
  m.impl("gram_eigh_polar", &gram_eigh_polar_cpu);
  m.impl("cholqr2_polar", &cholqr2_polar_cpu);
}

}  // namespace orthokern
