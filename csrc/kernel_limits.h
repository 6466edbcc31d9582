// Size limits of the compiled kernels, in one place: the kernels include this header, and orthokern.cpp exports
// the values as orthokern._C.LIMITS, which orthokern/compiled.py reads (Python never restates them).
#pragma once

#include <cstdint>

namespace orthokern {
namespace limits {

// CUDA newton_schulz_small: one thread block holds a matrix's n x n float64 iterates in shared memory.
constexpr int kCudaSmallMaxN = 64;
// Its products run on mma.m8n8k4 tensor-core tiles of this size (csrc/gram_ns_factor.h); the cost model counts them.
constexpr int kCudaSmallMmaTile = 8;

}  // namespace limits
}  // namespace orthokern
