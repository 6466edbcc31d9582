// The passes over G shared by the compiled CPU polar ops (torch plumbing): how a batch is cut into chunks and row
// blocks, the float64 Gram pass, the apply pass, and the threading policy. The matrix products go through ATen
// (at::bmm_out / baddbmm_), i.e. the BLAS torch links; what is computed per matrix is in the torch-free headers.
//
// Blocks: a chunk is a run of whole matrices (many small ones) or one matrix (large ones), cut into row blocks where
// G is converted to float64 through ATen, so that a block stays in cache. There is never a full-size float64 copy
// of G.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "cpu/gram_kernel.h"
#include "cpu/scaling.h"

namespace orthokern {
namespace cpu {

// Bytes of G per chunk of small matrices: enough work per chunk to amortise the few ATen calls made per chunk
// (microseconds each), and small enough (half a Zen 3 core's L2) that the chunk of G read by the Gram pass is
// still in cache when the apply reads it again.
constexpr int64_t kChunkBytes = int64_t(1) << 19;
// Float64 bytes of one row block of a large matrix in the passes that convert G to float64 through ATen.
constexpr int64_t kBlockBytes = int64_t(1) << 18;
// Fewest rows per such block: below this the n x n accumulator is re-read too often per flop.
constexpr int64_t kMinBlockRows = 256;

struct BlockPlan {
  int64_t chunk;  // matrices per chunk
  int64_t rows;   // rows per float64 block (m when chunk > 1)
};

inline BlockPlan plan_blocks(int64_t batch, int64_t m, int64_t n, int64_t elem_size) {
  const int64_t per_matrix = std::max<int64_t>(1, m * n * elem_size);
  if (2 * per_matrix <= kChunkBytes) return {std::max<int64_t>(1, std::min(batch, kChunkBytes / per_matrix)), m};
  const int64_t rows = std::max(kBlockBytes / std::max<int64_t>(1, n * int64_t(sizeof(double))), kMinBlockRows);
  return {1, std::min(rows, m)};
}

// Chunks of a batch in parallel when there are enough of them to share among the threads (each BLAS call then
// runs on one thread: ATen does not nest its parallel regions, and MKL and OpenBLAS run sequentially inside
// one), else one after the other with the BLAS calls multithreaded: never both.
inline void for_each_chunk(int64_t chunks, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && chunks >= threads && !at::in_parallel_region()) {
    at::parallel_for(0, chunks, 1, fn);
  } else {
    fn(0, chunks);
  }
}

// A new contiguous tensor for a result. From 4 MiB on, its memory is backed by transparent huge pages where the
// kernel grants them on request (Linux, THP in "madvise" mode): writing the result once then costs one page fault
// per 2 MiB instead of one per 4 KiB (measured at 256 x 576 x 64 float32: 9217 faults and as much system time as
// the apply's sgemm itself). Only the 2 MiB-aligned interior of the buffer is advised; elsewhere nothing changes.
inline at::Tensor empty_result(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options.memory_format(at::MemoryFormat::Contiguous));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const uintptr_t bytes = uintptr_t(t.nbytes());
  if (bytes >= 2 * kHuge) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (p + kHuge - 1) & ~(kHuge - 1), hi = (p + bytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only: failure is harmless
  }
#endif
  return t;
}

// A (c, rows, n) view of scratch storage with the memory layout of src (row- or column-major matrices), so that a
// copy between them streams along the unit stride of both.
inline at::Tensor block_like(const at::Tensor& storage, const at::Tensor& src) {
  const int64_t c = src.size(0), rows = src.size(1), n = src.size(2);
  at::Tensor flat = storage.narrow(0, 0, c * rows * n);
  const bool col_major = src.stride(1) == 1 && src.stride(2) != 1 && n > 1;
  return col_major ? flat.view({c, n, rows}).transpose(1, 2) : flat.view({c, rows, n});
}

// t *= 2^-e in place, exactly (powers of two), in steps whose factors are normal numbers of t's dtype (2^139
// scales a subnormal float32 block up, and is not a float32 itself). Upscaling, every step stays below the final
// values; downscaling, above them: no step over- or underflows where the result does not.
inline void scale_pow2_(at::Tensor t, int e) {
  const int step = t.scalar_type() == at::kDouble ? 1000 : 100;
  while (e != 0) {
    const int s = std::clamp(e, -step, step);
    t.mul_(std::ldexp(1.0, -s));
    e -= s;
  }
}

// Each matrix t_i of the chunk t (c, rows, n) *= 2^-e_i: one ATen call for the whole chunk where every factor is a
// normal float64 (always but for float64 input of extreme magnitude), else matrix by matrix.
inline void scale_matrices_pow2_(at::Tensor t, const std::vector<int>& e) {
  const bool any = std::any_of(e.begin(), e.end(), [](int x) { return x != 0; });
  if (!any) return;
  const bool one_call = t.scalar_type() == at::kDouble &&
                        std::all_of(e.begin(), e.end(), [](int x) { return std::abs(x) <= 1000; });
  if (one_call) {
    std::vector<double> f(e.size());
    for (size_t i = 0; i < e.size(); ++i) f[i] = std::ldexp(1.0, -e[i]);
    t.mul_(at::tensor(f, t.options()).view({int64_t(e.size()), 1, 1}));
  } else {
    for (size_t i = 0; i < e.size(); ++i) scale_pow2_(t.select(0, int64_t(i)), e[i]);
  }
}

// src converted to the dtype of storage in a block view of it.
inline at::Tensor load_block(const at::Tensor& storage, const at::Tensor& src) {
  at::Tensor blk = block_like(storage, src);
  blk.copy_(src);
  return blk;
}

// A (c, n, n) = (2^-e G_i)^T (2^-e G_i) in float64 for each matrix of the chunk G (c, m, n) of any float dtype and
// strides, reading G once (gram_kernel.h). work: at least gram_work(m, n) doubles.
inline void gram_chunk(const at::Tensor& G, at::Tensor& A, std::vector<double>& work, int e = 0) {
  const int64_t c = G.size(0), m = G.size(1), n = G.size(2);
  double* a = A.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, G.scalar_type(), "orthokern_gram", [&] {
    const scalar_t* g = G.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < c; ++i)
      gram_full<scalar_t>(g + i * G.stride(0), m, n, G.stride(1), G.stride(2), a + i * n * n, work.data(), e);
  });
}

// Per matrix of a chunk: what its Gram matrix says about it (scaling.h), and the exponent e of X = 2^-e G.
struct GramScales {
  std::vector<GramStatus> status;
  std::vector<int> e;
};

// After gram_chunk(G, A, ...): classify each matrix by the trace of its Gram matrix, recompute the Gram matrices
// of float64 matrices of extreme magnitude from 2^-e0 G (one more pass over those matrices only), and scale every
// A_i to the Gram matrix of X_i = 2^-e_i G_i. A_i of a zero or non-finite matrix is set to the identity (any
// finite matrix would do: its result is overwritten by zeros or NaN), so that the factorisations that follow
// never see a NaN.
inline GramScales scale_grams(const at::Tensor& G, at::Tensor& A, std::vector<double>& work) {
  const int64_t c = G.size(0), n = G.size(2);
  const bool wide_gram = G.scalar_type() != at::kDouble;
  double* a = A.data_ptr<double>();
  GramScales out{std::vector<GramStatus>(c), std::vector<int>(c, 0)};
  for (int64_t i = 0; i < c; ++i) {
    double* Ai = a + i * n * n;
    double tr = trace(Ai, n);
    GramStatus st = gram_status(tr, wide_gram);
    int e0 = 0;
    if (st == GramStatus::kCheck)
      st = at::isfinite(G.select(0, i)).all().item<bool>() ? GramStatus::kRescale : GramStatus::kNonFinite;
    if (st == GramStatus::kRescale) {
      const double amax = G.select(0, i).abs().max().item<double>();
      if (amax == 0) {
        st = GramStatus::kZero;
      } else {
        e0 = amax_exponent(amax);
        at::Tensor Ai_t = A.narrow(0, i, 1);
        gram_chunk(G.narrow(0, i, 1), Ai_t, work, e0);
        tr = trace(Ai, n);
        st = GramStatus::kOk;
      }
    }
    if (st == GramStatus::kOk) {
      const int ef = frobenius_exponent(tr);
      scale_gram(Ai, n, ef);
      out.e[i] = e0 + ef;
    } else {
      std::fill(Ai, Ai + n * n, 0.0);
      for (int64_t k = 0; k < n; ++k) Ai[k * n + k] = 1.0;
    }
    out.status[i] = st;
  }
  return out;
}

// The results of zero and non-finite matrices (scale_grams' status): zeros and NaN.
inline void set_special_results(at::Tensor& O, const GramScales& sc) {
  for (size_t i = 0; i < sc.status.size(); ++i) {
    if (sc.status[i] == GramStatus::kNonFinite) O.select(0, int64_t(i)).fill_(std::numeric_limits<double>::quiet_NaN());
    if (sc.status[i] == GramStatus::kZero) O.select(0, int64_t(i)).zero_();
  }
}

}  // namespace cpu
}  // namespace orthokern
