// CUDA implementations of the orthokern ops: argument checks, device guard, current stream, launch checks. The
// kernels themselves are torch-free (*.cuh next to this file).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "cuda/gram_ns_factor.cuh"

namespace orthokern {
namespace {

at::Tensor gram_ns_factor_cuda(const at::Tensor& A, c10::ArrayRef<double> coeffs) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2),
              "gram_ns_factor: A must be a batch of square matrices (B, n, n), got shape ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kDouble, "gram_ns_factor: A must be float64, got ", A.scalar_type());
  TORCH_CHECK(A.is_cuda(), "gram_ns_factor: the CUDA kernel got A on ", A.device());
  const int64_t n = A.size(1);
  TORCH_CHECK(n <= limits::kCudaSmallMaxN, "gram_ns_factor: n = ", n, " > ", limits::kCudaSmallMaxN,
              " is not supported (one thread block holds a matrix)");
  TORCH_CHECK(A.size(0) <= std::numeric_limits<int>::max(), "gram_ns_factor: batch ", A.size(0),
              " exceeds the grid's x dimension");
  TORCH_CHECK(coeffs.size() % 3 == 0 && coeffs.size() / 3 <= size_t(gram_ns::kMaxSteps),
              "gram_ns_factor: coeffs must hold (a, b, c) for 0 to ", gram_ns::kMaxSteps, " steps, got ",
              coeffs.size(), " numbers");
  gram_ns::Schedule s{};
  s.steps = static_cast<int>(coeffs.size() / 3);
  for (int k = 0; k < s.steps; ++k) {
    s.a[k] = coeffs[3 * k];
    s.b[k] = coeffs[3 * k + 1];
    s.c[k] = coeffs[3 * k + 2];
  }
  c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor Ac = A.contiguous();
  at::Tensor out = at::empty_like(Ac);
  C10_CUDA_CHECK(cuda::launch_gram_ns_factor(Ac.const_data_ptr<double>(), out.mutable_data_ptr<double>(), A.size(0),
                                             static_cast<int>(n), s, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(orthokern, CUDA, m) { m.impl("gram_ns_factor", &gram_ns_factor_cuda); }

}  // namespace orthokern
