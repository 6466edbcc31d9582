// CUDA implementations of the orthokern ops: argument checks, device guard, current stream, launch checks.
// The kernels themselves are torch-free (*.cuh next to this file).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "cuda/cholqr2_polar.cuh"
#include "cuda/gram_eigh_polar.cuh"
#include "cuda/jacobi.cuh"

namespace orthokern {

constexpr int64_t kMaxRowsCuda = limits::kCudaMaxRows;
namespace {

// c10 half types are layout-compatible with CUDA's; the kernels take the CUDA ones.
template <typename T>
struct CudaType {
  using type = T;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

void check_polar_input(const char* op, const at::Tensor& G, double rcond, int64_t max_n) {
  TORCH_CHECK(G.dim() == 3, op, ": G must be a batch of matrices (B, m, n), got shape ", G.sizes());
  const auto dt = G.scalar_type();
  TORCH_CHECK(dt == at::kDouble || dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op,
              ": G must be float64, float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(G.is_cuda(), op, ": the CUDA kernel got G on ", G.device());
  TORCH_CHECK(rcond >= 0.0 && rcond < 1.0, op, ": rcond must be in [0, 1), got ", rcond);
  TORCH_CHECK(G.size(2) <= max_n, op, ": n = ", G.size(2), " > ", max_n, " is not supported by the CUDA kernel");
  // m: the row loops step an int by up to 32 past m, and cholqr2's triangular solve puts ceil(m / 256) blocks on
  // grid axis y (at most 65535).
  TORCH_CHECK(G.size(1) <= kMaxRowsCuda && G.size(0) <= std::numeric_limits<int>::max(), op,
              ": G is too large (B must fit in int32 and m <= ", kMaxRowsCuda, "), got shape ", G.sizes());
}

std::tuple<at::Tensor, at::Tensor> eigh_small_cuda(const at::Tensor& A) {
  TORCH_CHECK(A.dim() >= 2 && A.size(-1) == A.size(-2),
              "eigh_small: A must be a batch of square matrices (..., n, n), got shape ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "eigh_small: A must be float32 or float64, got ", A.scalar_type());
  TORCH_CHECK(A.is_cuda(), "eigh_small: the CUDA kernel got A on ", A.device());
  const int64_t n = A.size(-1);
  TORCH_CHECK(n <= cuda::kMaxSmallN, "eigh_small: n = ", n, " > ", cuda::kMaxSmallN,
              " is not supported by the CUDA kernel");
  c10::cuda::CUDAGuard guard(A.device());
  const at::Tensor Ac = A.contiguous();
  at::Tensor W = at::empty_like(Ac);
  at::Tensor w = at::empty(A.sizes().slice(0, A.dim() - 1), A.options());
  if (Ac.numel() == 0) return {w, W};
  const int64_t batch = Ac.numel() / (n * n);
  TORCH_CHECK(batch <= std::numeric_limits<int>::max(), "eigh_small: batch too large: ", batch);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (A.scalar_type() == at::kDouble) {
    C10_CUDA_CHECK(cuda::launch_eigh_small<double>(Ac.const_data_ptr<double>(), w.mutable_data_ptr<double>(),
                                                   W.mutable_data_ptr<double>(), batch, int(n), stream));
  } else {
    C10_CUDA_CHECK(cuda::launch_eigh_small<float>(Ac.const_data_ptr<float>(), w.mutable_data_ptr<float>(),
                                                  W.mutable_data_ptr<float>(), batch, int(n), stream));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {w, W};
}

template <typename T>
void run_gram_eigh_polar(const at::Tensor& G, at::Tensor& O, double rcond, bool accurate, cudaStream_t stream) {
  using In = typename CudaType<T>::type;
  const In* g = reinterpret_cast<const In*>(G.const_data_ptr<T>());
  In* o = reinterpret_cast<In*>(O.mutable_data_ptr<T>());
  const int64_t batch = G.size(0);
  const int m = int(G.size(1)), n = int(G.size(2));
  cudaError_t err;
  if constexpr (std::is_same_v<T, double>) {
    err = cuda::launch_gram_eigh_polar<In, double, double>(g, o, batch, m, n, rcond, stream);
  } else {
    err = accurate ? cuda::launch_gram_eigh_polar<In, double, float>(g, o, batch, m, n, rcond, stream)
                   : cuda::launch_gram_eigh_polar<In, float, float>(g, o, batch, m, n, rcond, stream);
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gram_eigh_polar_cuda(const at::Tensor& G, double rcond, bool accurate) {
  check_polar_input("gram_eigh_polar", G, rcond, cuda::kMaxSmallN);
  c10::cuda::CUDAGuard guard(G.device());
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  const at::Tensor Gc = G.contiguous();
  at::Tensor O = at::empty_like(Gc, at::MemoryFormat::Contiguous);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (G.scalar_type()) {
    case at::kDouble: run_gram_eigh_polar<double>(Gc, O, rcond, accurate, stream); break;
    case at::kFloat: run_gram_eigh_polar<float>(Gc, O, rcond, accurate, stream); break;
    case at::kHalf: run_gram_eigh_polar<c10::Half>(Gc, O, rcond, accurate, stream); break;
    default: run_gram_eigh_polar<c10::BFloat16>(Gc, O, rcond, accurate, stream); break;
  }
  return O;
}

template <typename T>
void run_cholqr2_polar(const at::Tensor& G, at::Tensor& O, double rcond, cudaStream_t stream) {
  using In = typename CudaType<T>::type;
  const int64_t batch = G.size(0);
  const int m = int(G.size(1)), n = int(G.size(2));
  at::Tensor ws = at::empty({cuda::cholqr2_workspace_doubles(batch, m, n)}, G.options().dtype(at::kDouble));
  at::Tensor finite = at::empty({batch}, G.options().dtype(at::kInt));
  const cuda::Cholqr2Workspace w =
      cuda::cholqr2_split_workspace(ws.mutable_data_ptr<double>(), finite.mutable_data_ptr<int>(), batch, m, n);
  cuda::launch_cholqr_prepare<In>(reinterpret_cast<const In*>(G.const_data_ptr<T>()), w, batch, m, n, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cuda::launch_cholqr_factor(w.Xt, w.A, w.R1, batch, m, n, stream);  // gram + cholesky (two launches)
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cuda::launch_cholqr_trsm(w.Xt, w.R1, batch, m, n, stream);  // Xt <- Q1^T
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cuda::launch_cholqr_factor(w.Xt, w.A, w.R2, batch, m, n, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cuda::launch_cholqr_small_polar(w, batch, n, rcond, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cuda::launch_cholqr_apply<In>(w, reinterpret_cast<In*>(O.mutable_data_ptr<T>()), batch, m, n, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor cholqr2_polar_cuda(const at::Tensor& G, double rcond) {
  check_polar_input("cholqr2_polar", G, rcond, cuda::kCholqrMaxN);
  TORCH_CHECK(G.size(1) >= G.size(2), "cholqr2_polar: G must be tall (m >= n), got shape ", G.sizes());
  c10::cuda::CUDAGuard guard(G.device());
  if (G.numel() == 0) return at::zeros_like(G, at::MemoryFormat::Contiguous);
  const at::Tensor Gc = G.contiguous();
  at::Tensor O = at::empty_like(Gc, at::MemoryFormat::Contiguous);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (G.scalar_type()) {
    case at::kDouble: run_cholqr2_polar<double>(Gc, O, rcond, stream); break;
    case at::kFloat: run_cholqr2_polar<float>(Gc, O, rcond, stream); break;
    case at::kHalf: run_cholqr2_polar<c10::Half>(Gc, O, rcond, stream); break;
    default: run_cholqr2_polar<c10::BFloat16>(Gc, O, rcond, stream); break;
  }
  return O;
}

}  // namespace

TORCH_LIBRARY_IMPL(orthokern, CUDA, m) {
  m.impl("eigh_small", &eigh_small_cuda);
  m.impl("gram_eigh_polar", &gram_eigh_polar_cuda);
  m.impl("cholqr2_polar", &cholqr2_polar_cuda);
}

}  // namespace orthokern
