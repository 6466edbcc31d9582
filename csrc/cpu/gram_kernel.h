// The float64 Gram matrix A = G^T G of one matrix, read from G of any float type and strides, accumulated in float64
// (CPU, torch-free).
//
// Why not the BLAS: a float64 Gram matrix of float32 data through the BLAS needs a float64 copy of G (in blocks)
// and a dgemm, which computes both triangles. Here G is packed block by block into float64 column strips in cache
// (converting and, for a column-major G, transposing on the way), and a register-tiled kernel computes the upper
// triangle only: half the flops of the dgemm. Measured rates are in bench/RESULTS.md.
//
// Layout of a packed block of kc rows: strip s holds columns 12 s .. 12 s + 11 as kc consecutive groups of 12
// (zero past n). A 4 x 12 tile of A (12 accumulators, enough independent FMAs to keep two FMA pipes busy) reads,
// per row, three vectors of its column strip (kept in L1 while every tile of that strip is computed) and four
// broadcasts from the strip of its rows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/simd.h"

namespace orthokern {
namespace cpu {

namespace gram_detail {

#if defined(__GNUC__)
typedef double v4d __attribute__((vector_size(32), aligned(8)));
ORTHOKERN_ALWAYS_INLINE inline v4d load4(const double* p) { return *reinterpret_cast<const v4d*>(p); }
#endif

constexpr int64_t kStrip = 12;

inline int64_t strips(int64_t n) { return (n + kStrip - 1) / kStrip; }

// Rows per packed block: about 512 KiB of packed float64 (a Zen 3 core's L2), between 64 and 512 rows.
inline int64_t block_rows(int64_t n) {
  return std::clamp<int64_t>((int64_t(1) << 16) / (strips(n) * kStrip), 64, 512);
}

// P = rows r of f1 f2 G (element (i, j) at G[i * s_row + j * s_col]) in strips, converted to float64 (f1, f2:
// powers of two, so the products are exact; two factors reach scales beyond float64's exponent range, as
// 2^1074 for a subnormal float64 matrix).
template <typename T>
ORTHOKERN_CPU_CLONES void pack_strips(const T* G, int64_t rows, int64_t n, int64_t s_row, int64_t s_col, double f1,
                                      double f2, double* P) {
  const int64_t ns = strips(n);
  for (int64_t s = 0; s < ns; ++s) {
    double* ps = P + s * rows * kStrip;
    const int64_t j0 = s * kStrip, w = std::min(kStrip, n - j0);
    if (s_col == 1) {
      for (int64_t i = 0; i < rows; ++i) {
        const T* g = G + i * s_row + j0;
        double* d = ps + i * kStrip;
        for (int64_t j = 0; j < w; ++j) d[j] = (f1 * double(g[j])) * f2;
        for (int64_t j = w; j < kStrip; ++j) d[j] = 0.0;
      }
    } else {  // column by column: unit-stride reads when G is column-major
      for (int64_t j = 0; j < w; ++j) {
        const T* g = G + (j0 + j) * s_col;
        for (int64_t i = 0; i < rows; ++i) ps[i * kStrip + j] = (f1 * double(g[i * s_row])) * f2;
      }
      for (int64_t j = w; j < kStrip; ++j)
        for (int64_t i = 0; i < rows; ++i) ps[i * kStrip + j] = 0.0;
    }
  }
}

// A (n x n, upper triangle; some entries just below the diagonal too) += P^T P for a packed block of rows rows.
ORTHOKERN_CPU_CLONES inline void gram_strips(const double* P, int64_t rows, int64_t n, double* A) {
  const int64_t ns = strips(n);
  for (int64_t sb = 0; sb < ns; ++sb) {
    const double* pb = P + sb * rows * kStrip;
    const int64_t b0 = sb * kStrip, bw = std::min(kStrip, n - b0);
    for (int64_t a0 = 0; a0 < std::min(n, b0 + kStrip); a0 += 4) {
      const double* pa = P + (a0 / kStrip) * rows * kStrip + a0 % kStrip;
      const int64_t aw = std::min<int64_t>(4, n - a0);
#if defined(__GNUC__)
      v4d acc[4][3] = {};
      for (int64_t i = 0; i < rows; ++i) {
        const double* b = pb + i * kStrip;
        const v4d y0 = load4(b), y1 = load4(b + 4), y2 = load4(b + 8);
        const double* a = pa + i * kStrip;
        for (int r = 0; r < 4; ++r) {
          const double x = a[r];
          acc[r][0] += x * y0;
          acc[r][1] += x * y1;
          acc[r][2] += x * y2;
        }
      }
      for (int64_t r = 0; r < aw; ++r)
        for (int64_t q = 0; q < bw; ++q) A[(a0 + r) * n + b0 + q] += acc[r][q / 4][q % 4];
#else
      for (int64_t r = 0; r < aw; ++r)
        for (int64_t q = 0; q < bw; ++q) {
          double t = 0;
          for (int64_t i = 0; i < rows; ++i) t += pa[i * kStrip + r] * pb[i * kStrip + q];
          A[(a0 + r) * n + b0 + q] += t;
        }
#endif
    }
  }
}

}  // namespace gram_detail

// Scratch (doubles) gram_full needs for an m x n matrix.
inline int64_t gram_work(int64_t m, int64_t n) {
  return std::min(m, gram_detail::block_rows(n)) * gram_detail::strips(n) * gram_detail::kStrip;
}

// A (n x n, upper triangle; entries just below the diagonal are clobbered) += (2^-e G)^T (2^-e G) for G (m x n)
// with element (i, j) at G[i * s_row + j * s_col], any strides and float type, accumulated in float64 (e != 0 only
// for float64 input of extreme magnitude). work: gram_work(m, n) doubles.
template <typename T>
void gram_add_upper(const T* G, int64_t m, int64_t n, int64_t s_row, int64_t s_col, double* A, double* work,
                    int e = 0) {
  const double f1 = std::ldexp(1.0, -e / 2), f2 = std::ldexp(1.0, -e + e / 2);
  const int64_t block = gram_detail::block_rows(n);
  for (int64_t r0 = 0; r0 < m; r0 += block) {
    const int64_t rb = std::min(block, m - r0);
    gram_detail::pack_strips<T>(G + r0 * s_row, rb, n, s_row, s_col, f1, f2, work);
    gram_detail::gram_strips(work, rb, n, A);
  }
}

// A (n x n, both triangles) from its upper triangle.
inline void mirror_upper(double* A, int64_t n) {
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < a; ++b) A[a * n + b] = A[b * n + a];
}

// A (n x n, both triangles, float64) = (2^-e G)^T (2^-e G) (see gram_add_upper).
template <typename T>
void gram_full(const T* G, int64_t m, int64_t n, int64_t s_row, int64_t s_col, double* A, double* work, int e = 0) {
  std::fill(A, A + n * n, 0.0);
  gram_add_upper<T>(G, m, n, s_row, s_col, A, work, e);
  mirror_upper(A, n);
}

}  // namespace cpu
}  // namespace orthokern
