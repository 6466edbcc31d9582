// Registration of the CPU kernels of the orthokern ops (schemas in csrc/orthokern.cpp) and their argument checks;
// the kernels are in gram_eigh_polar.cpp, cholqr2_polar.cpp and column_norm_max.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/ops_cpu.h"

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

// The kernels call ATen ops on G; below the autograd key they run as plain computations even when G requires
// grad (these ops have no derivative of their own: polar()'s autograd.Function differentiates the result).
at::Tensor gram_eigh_polar_cpu(const at::Tensor& G, double rcond) {
  check_polar_input("gram_eigh_polar", G, rcond);
  at::AutoDispatchBelowADInplaceOrView guard;
  return cpu::gram_eigh_polar(G, rcond);
}

at::Tensor cholqr2_polar_cpu(const at::Tensor& G, double rcond) {
  check_polar_input("cholqr2_polar", G, rcond);
  TORCH_CHECK(G.size(1) >= G.size(2), "cholqr2_polar: G must be tall (m >= n), got shape ", G.sizes());
  at::AutoDispatchBelowADInplaceOrView guard;
  return cpu::cholqr2_polar(G, rcond);
}

at::Tensor column_norm_max_cpu(const at::Tensor& O) {
  TORCH_CHECK(O.dim() == 3, "column_norm_max: O must be a batch of matrices (B, m, n), got shape ", O.sizes());
  const auto dt = O.scalar_type();
  TORCH_CHECK(dt == at::kDouble || dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "column_norm_max: O must be float64, float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(O.device().is_cpu(), "column_norm_max: the CPU kernel got O on ", O.device());
  at::AutoDispatchBelowADInplaceOrView guard;
  return cpu::column_norm_max(O);
}

}  // namespace

TORCH_LIBRARY_IMPL(orthokern, CPU, m) {
  m.impl("gram_eigh_polar", &gram_eigh_polar_cpu);
  m.impl("cholqr2_polar", &cholqr2_polar_cpu);
  m.impl("column_norm_max", &column_norm_max_cpu);
}

}  // namespace orthokern
