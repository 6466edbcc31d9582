// The torch plumbing shared by the compiled CPU polar ops: the threading policy, the Gram pass of one matrix and
// the checks on it, how the passes that go through ATen cut a batch into chunks and row blocks, and the result's
// allocation. The BLAS products go through ATen (at::bmm_out), i.e. the BLAS torch links; what is computed per
// matrix is in the torch-free headers.
//
// Threads: the per-matrix kernels run in parallel over the matrices of a batch (or over the rows of one large
// matrix), the BLAS and LAPACK calls between those parallel regions with their own threads: never one inside the
// other. Blocks: where G is converted through ATen (half-precision and rescaled applies, cholqr2's passes) it is
// cut into row blocks that stay in cache. There is never a full-size float64 copy of G.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "cpu/gram_kernel.h"
#include "cpu/scaling.h"

namespace orthokern {
namespace cpu {

// For the passes that convert G through ATen (cholqr2's, and gram_eigh's apply for half-precision or rescaled
// input). Bytes of G per chunk of small matrices: enough work per chunk to amortise the few ATen calls made per
// chunk (microseconds each), small enough (half a Zen 3 core's L2) to stay in cache between the passes over it.
constexpr int64_t kChunkBytes = int64_t(1) << 19;
// Float64 bytes of one row block of a large matrix.
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

// Threads an op may use here: torch's intra-op thread count, 1 inside a parallel region.
inline int64_t op_threads() { return at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads()); }

// fn(i, t) for every i in [0, count), spread over `threads` threads (t: the thread's index, for its scratch) with
// dynamic scheduling: each thread takes the next index from a shared counter, so that a thread the OS deschedules
// (on a shared machine) does not hold back a fixed share of the work. fn must not call the BLAS or LAPACK: MKL run
// inside a parallel region starts its own threads there (torch turns MKL's dynamic adjustment off), which
// oversubscribes the cores; the ops call the BLAS between parallel regions instead, with its own threads.
inline void parallel_matrices(int64_t count, int64_t threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (threads <= 1 || count <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t i = next++; i < count; i = next++) fn(i, t);
  });
}

// A new contiguous tensor for a result. From 4 MiB on, its memory is backed by transparent huge pages where the
// kernel grants them on request (Linux, THP in "madvise" mode): writing the result once then costs one page fault
// per 2 MiB instead of one per 4 KiB, whose system time was measured comparable to the apply's sgemm itself for a
// result of tens of MiB. Only the 2 MiB-aligned interior of the buffer is advised; elsewhere nothing changes.
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

// The float64 Gram matrix A (n x n, both triangles) of 2^-e Gi for one matrix Gi (m x n view, any float dtype and
// strides), reading Gi once (gram_kernel.h). With threads > 1 the rows are split among the threads, each summing
// into its own n x n accumulator (the kernel code only: no BLAS call runs inside the parallel region).
// work[t]: scratch of thread t, at least gram_work(m, n) doubles (and n^2 more when threads > 1).
inline void gram_one(const at::Tensor& Gi, double* A, int e, std::vector<std::vector<double>>& work,
                     int64_t threads = 1) {
  const int64_t m = Gi.size(0), n = Gi.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Gi.scalar_type(), "orthokern_gram", [&] {
    const scalar_t* g = Gi.const_data_ptr<scalar_t>();
    const int64_t sr = Gi.stride(0), sc = Gi.stride(1);
    if (threads <= 1) {
      gram_full<scalar_t>(g, m, n, sr, sc, A, work[0].data(), e);
      return;
    }
    // Row ranges of several packed blocks each, taken by the threads from a shared counter (a thread the OS
    // deschedules does not hold back a fixed half of the rows), summed into one accumulator per thread.
    const int64_t per = std::max<int64_t>(gram_detail::block_rows(n), (m + 8 * threads - 1) / (8 * threads));
    const int64_t ranges = (m + per - 1) / per;
    for (int64_t t = 0; t < threads; ++t) {
      double* acc = work[t].data() + gram_work(m, n);
      std::fill(acc, acc + n * n, 0.0);
    }
    parallel_matrices(ranges, threads, [&](int64_t r, int64_t t) {
      const int64_t r0 = r * per, rows = std::min(m, r0 + per) - r0;
      gram_add_upper<scalar_t>(g + r0 * sr, rows, n, sr, sc, work[t].data() + gram_work(m, n), work[t].data(), e);
    });
    std::fill(A, A + n * n, 0.0);
    for (int64_t t = 0; t < threads; ++t) {
      const double* acc = work[t].data() + gram_work(m, n);
      for (int64_t a = 0; a < n; ++a)
        for (int64_t b = a; b < n; ++b) A[a * n + b] += acc[a * n + b];
    }
    mirror_upper(A, n);
  });
}

// Scratch per thread for gram_one.
inline std::vector<std::vector<double>> gram_scratch(int64_t m, int64_t n, int64_t threads) {
  const int64_t len = gram_work(m, n) + (threads > 1 ? n * n : 0);
  return std::vector<std::vector<double>>(std::max<int64_t>(1, threads), std::vector<double>(len));
}

// What the Gram matrix of one matrix says about it (scaling.h), and the exponent e of X = 2^-e G.
struct GramScale {
  GramStatus status = GramStatus::kOk;
  int e = 0;
};

// After gram_one(Gi, A, 0, ...): classify the matrix by the trace of its Gram matrix; for a float64 matrix of
// extreme magnitude recompute the Gram matrix from 2^-e0 Gi (one more pass over this matrix only); scale A to the
// Gram matrix of X = 2^-e Gi. A of a zero or non-finite matrix is set to the identity (any finite matrix would do:
// its result is overwritten by zeros or NaN), so that the factorisations that follow never see a NaN.
inline GramScale scale_gram_of(const at::Tensor& Gi, double* A, std::vector<std::vector<double>>& work,
                               int64_t threads = 1) {
  const int64_t n = Gi.size(1);
  double tr = trace(A, n);
  GramScale out;
  out.status = gram_status(tr, Gi.scalar_type() != at::kDouble);
  int e0 = 0;
  if (out.status == GramStatus::kCheck)
    out.status = at::isfinite(Gi).all().item<bool>() ? GramStatus::kRescale : GramStatus::kNonFinite;
  if (out.status == GramStatus::kRescale) {
    const double amax = Gi.abs().max().item<double>();
    if (amax == 0) {
      out.status = GramStatus::kZero;
    } else {
      e0 = amax_exponent(amax);
      gram_one(Gi, A, e0, work, threads);
      tr = trace(A, n);
      out.status = GramStatus::kOk;
    }
  }
  if (out.status == GramStatus::kOk) {
    const int ef = frobenius_exponent(tr);
    scale_gram(A, n, ef);
    out.e = e0 + ef;
  } else {
    std::fill(A, A + n * n, 0.0);
    for (int64_t k = 0; k < n; ++k) A[k * n + k] = 1.0;
  }
  return out;
}

// The results of zero and non-finite matrices (scale_gram_of's status): zeros and NaN.
inline void set_special_results(at::Tensor& O, const std::vector<GramScale>& sc) {
  for (size_t i = 0; i < sc.size(); ++i) {
    if (sc[i].status == GramStatus::kNonFinite) O.select(0, int64_t(i)).fill_(std::numeric_limits<double>::quiet_NaN());
    if (sc[i].status == GramStatus::kZero) O.select(0, int64_t(i)).zero_();
  }
}

}  // namespace cpu
}  // namespace orthokern
