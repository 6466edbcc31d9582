// CPU twin of the CUDA gram_ns_factor kernel: the same per-thread and per-warp phases of csrc/gram_ns_factor.h, run
// for every thread (every warp, its 32 lanes in lock step) of a simulated block in turn (a phase ends where the
// kernel has a barrier), with the tensor-core instruction emulated below. It exists to test the kernel's indexing
// and arithmetic on machines without a GPU; the dispatch never prefers it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "gram_ns_factor.h"

namespace orthokern {
namespace {

constexpr int kLanes = gram_ns::kWarpSize;

// mma.sync.aligned.m8n8k4.row.col.f64 for a whole warp, from the PTX ISA's fragment layout written out here
// independently of gram_ns::frag_* (so that a wrong frag_* function fails the twin's tests): the 8 x 4 A has
// element (r, k) in lane 4 r + k, the 4 x 8 B has (k, c) in lane 4 c + k, and D = A B + C has (r, c) in lane
// 4 r + c / 2, slot c % 2. The four products of an element are added to it in k order by fma.
void mma_m8n8k4_f64(double (&d)[kLanes][2], const double (&a)[kLanes], const double (&b)[kLanes]) {
  double out[kLanes][2];
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) {
      double v = d[4 * r + c / 2][c % 2];
      for (int k = 0; k < 4; ++k) v = std::fma(a[4 * r + k], b[4 * c + k], v);
      out[4 * r + c / 2][c % 2] = v;
    }
  for (int l = 0; l < kLanes; ++l) d[l][0] = out[l][0], d[l][1] = out[l][1];
}

gram_ns::Schedule make_schedule(c10::ArrayRef<double> coeffs, const char* op) {
  TORCH_CHECK(coeffs.size() % 3 == 0 && coeffs.size() / 3 <= size_t(gram_ns::kMaxSteps), op,
              ": coeffs must hold (a, b, c) for 0 to ", gram_ns::kMaxSteps, " steps, got ", coeffs.size(), " numbers");
  gram_ns::Schedule s{};
  s.steps = static_cast<int>(coeffs.size() / 3);
  for (int k = 0; k < s.steps; ++k) {
    s.a[k] = coeffs[3 * k];
    s.b[k] = coeffs[3 * k + 1];
    s.c[k] = coeffs[3 * k + 2];
  }
  return s;
}

at::Tensor gram_ns_factor_cpu(const at::Tensor& A, c10::ArrayRef<double> coeffs) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2),
              "gram_ns_factor: A must be a batch of square matrices (B, n, n), got shape ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kDouble, "gram_ns_factor: A must be float64, got ", A.scalar_type());
  TORCH_CHECK(A.device().is_cpu(), "gram_ns_factor: the CPU kernel got A on ", A.device());
  const int64_t n = A.size(1);
  TORCH_CHECK(n <= limits::kCudaSmallMaxN, "gram_ns_factor: n = ", n, " > ", limits::kCudaSmallMaxN,
              " is not supported (one thread block holds a matrix)");
  const gram_ns::Schedule s = make_schedule(coeffs, "gram_ns_factor");
  const at::Tensor Ac = A.contiguous();
  at::Tensor out = at::empty_like(Ac);
  const int64_t batch = A.size(0);
  if (batch == 0 || n == 0) return out;
  const double* a = Ac.const_data_ptr<double>();
  double* o = out.mutable_data_ptr<double>();
  const int ni = static_cast<int>(n);
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> smem(gram_ns::workspace_doubles(ni));
    gram_ns::Lanes<kLanes> lanes;
    for (int l = 0; l < kLanes; ++l) lanes.id[l] = l;
    for (int64_t b = b0; b < b1; ++b) {
      gram_ns::factor_one(
          a + b * n * n, o + b * n * n, ni, s, smem.data(),
          [](auto phase) {
            for (int tid = 0; tid < gram_ns::kThreads; ++tid) phase(tid);
          },
          [&lanes](auto phase) {
            for (int warp = 0; warp < gram_ns::kWarps; ++warp) phase(warp, lanes);
          },
          [] {}, mma_m8n8k4_f64);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(orthokern, CPU, m) { m.impl("gram_ns_factor", &gram_ns_factor_cpu); }

}  // namespace orthokern
