// The CPU implementations of the orthokern polar ops (registered in ops_cpu.cpp, which checks their arguments
// first). G: a batch of matrices (B, m, n) of float64, float32, bfloat16 or float16, any strides; the result is
// contiguous, in G's dtype.
#pragma once

#include <ATen/ATen.h>

namespace orthokern {
namespace cpu {

at::Tensor gram_eigh_polar(const at::Tensor& G, double rcond);  // gram_eigh_polar.cpp
at::Tensor cholqr2_polar(const at::Tensor& G, double rcond);     // cholqr2_polar.cpp
// The largest column norm of each matrix of O (B, m, n), float64 for float64 O, else float32 (column_norm_max.cpp).
at::Tensor column_norm_max(const at::Tensor& O);

}  // namespace cpu
}  // namespace orthokern
