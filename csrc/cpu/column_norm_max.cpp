// The breakdown guard of auto on the CPU (orthokern/dispatch.py, broken): the largest column norm of each matrix of
// O (B, m, n), read in one pass over O at memory speed. torch's vector_norm(O, dim=-2) squares into a full-size
// temporary or reduces across rows element by element; here each matrix's rows are streamed once into n running sums.
//
// The sums are in float32 for float32 and half-precision O (float64 for float64): the guard compares with 1 + 1e-2,
// and m rounding errors of at most eps32 each stay far below that for any m a matrix can have in memory. An overflow
// gives Inf, which the guard flags as it should; a NaN anywhere in the matrix gives NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/ops_cpu.h"

namespace orthokern {
namespace cpu {
namespace {

template <typename T, typename Acc>
void column_norm_max_kernel(const at::Tensor& O, Acc* out) {
  const int64_t B = O.size(0), m = O.size(1), n = O.size(2);
  const int64_t sb = O.stride(0), sm = O.stride(1), sn = O.stride(2);
  const T* base = O.const_data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<Acc> acc(n);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), Acc(0));
      Acc* a = acc.data();
      const T* mat = base + b * sb;
      for (int64_t i = 0; i < m; ++i) {
        const T* row = mat + i * sm;
        if (sn == 1) {  // the common case, contiguous rows: a loop the compiler vectorises
          for (int64_t j = 0; j < n; ++j) {
            const Acc v = static_cast<Acc>(row[j]);
            a[j] += v * v;
          }
        } else {
          for (int64_t j = 0; j < n; ++j) {
            const Acc v = static_cast<Acc>(row[j * sn]);
            a[j] += v * v;
          }
        }
      }
      Acc best = 0;
      bool nan = false;
      for (int64_t j = 0; j < n; ++j) {
        nan |= std::isnan(a[j]);
        best = a[j] > best ? a[j] : best;
      }
      out[b] = nan ? std::numeric_limits<Acc>::quiet_NaN() : std::sqrt(best);
    }
  });
}

}  // namespace

at::Tensor column_norm_max(const at::Tensor& O) {
  const bool f64 = O.scalar_type() == at::kDouble;
  at::Tensor out = at::empty({O.size(0)}, O.options().dtype(f64 ? at::kDouble : at::kFloat));
  if (O.size(0) == 0) return out;
  if (O.size(1) == 0 || O.size(2) == 0) return out.zero_();
  switch (O.scalar_type()) {
    case at::kDouble: column_norm_max_kernel<double, double>(O, out.data_ptr<double>()); break;
    case at::kFloat: column_norm_max_kernel<float, float>(O, out.data_ptr<float>()); break;
    case at::kBFloat16: column_norm_max_kernel<at::BFloat16, float>(O, out.data_ptr<float>()); break;
    case at::kHalf: column_norm_max_kernel<at::Half, float>(O, out.data_ptr<float>()); break;
    default: TORCH_CHECK(false, "column_norm_max: unsupported dtype ", O.scalar_type());
  }
  return out;
}

}  // namespace cpu
}  // namespace orthokern
