// Size limits of the compiled kernels, in one place: the kernels include this header, and orthokern.cpp exports
// the values as orthokern._C.LIMITS, which orthokern/compiled.py reads (Python never restates them).
#pragma once

#include <cstdint>

namespace orthokern {
namespace limits {

// CUDA eigh_small and gram_eigh_polar keep n x n blocks (and two of them in float64) in shared memory.
constexpr int kCudaSmallMaxN = 64;
// CUDA cholqr2_polar: n x n factors in a global (L2-resident) workspace; Jacobi SVD sweeps grow as n^3.
constexpr int kCudaCholqr2MaxN = 256;
// CUDA kernels: cholqr2's triangular solve puts ceil(m / 256) blocks on grid axis y (at most 65535).
constexpr int64_t kCudaMaxRows = int64_t(65535) * 256;

}  // namespace limits
}  // namespace orthokern
