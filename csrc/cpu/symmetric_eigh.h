// Eigen-decomposition of one small dense symmetric float64 matrix (CPU, torch-free): Householder
// tridiagonalisation, the orthogonal factor formed explicitly, then implicit QL (the tql2 of EISPACK, in the public
// domain JAMA formulation) with the rotations applied to contiguous rows.
//
// Why not LAPACK (syevd, through at::linalg_eigh) for small n: on the reference CPU it pays a fixed cost per call
// that dominates there (bench/RESULTS.md has the measured crossover, kept in gram_eigh_polar.cpp); above the
// crossover its blocked divide and conquer wins. The accuracy is the same kind: eigenvalues to eps ||A|| and
// eigenvectors orthonormal to eps, which is what the threshold rcond^2 lam_max needs.
//
// Storage: all matrices row-major. Every O(n^3) loop runs along rows (unit stride) so that it vectorises:
//  * the tridiagonalisation reads and updates the upper triangle by rows (dot products and axpys);
//  * the orthogonal factor is built transposed (Vt = Q^T), so that its rows are the eigenvector candidates;
//  * each QL sweep first computes its rotations (scalar recurrence), then applies the whole sweep to the rows of Vt
//    in one pass over column blocks held in registers: one load and one store per element and rotation instead of
//    two of each.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/simd.h"

namespace orthokern {
namespace cpu {

// Scratch (doubles) symmetric_eigh needs for an n x n matrix.
inline int64_t symmetric_eigh_work(int64_t n) { return 4 * n; }

namespace detail {

// x . y with eight partial sums: the compiler may not reorder a floating-point sum (no -ffast-math here), so the
// partial sums are what lets it vectorise the loop.
ORTHOKERN_ALWAYS_INLINE inline double dot(const double* x, const double* y, int64_t len) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k] * y[i + k];
  double t = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
  for (; i < len; ++i) t += x[i] * y[i];
  return t;
}

// Reduce the symmetric A (n x n, upper triangle read and updated) to tridiagonal form T = Q^T A Q: d (n) its
// diagonal, e (n) its superdiagonal (e[n-1] = 0). The Householder vectors are left in the rows of A (row k holds v_k
// in columns k+1 .. n-1, v_k[0] = 1 stored), their scalars in tau (n). p: n scratch.
//
// Step k (LAPACK's sytd2 on the upper triangle, by rows): p = t A22 v, computed from the upper triangle alone by
// one pass over its rows (a dot product for the part right of the diagonal, an axpy for the part below, which is
// the transpose of the part right of it), then A22 -= v w^T + w v^T on the upper triangle only.
ORTHOKERN_CPU_CLONES inline void tridiagonalise(double* A, double* d, double* e, double* tau, double* p, int64_t n) {
  for (int64_t k = 0; k + 2 < n; ++k) {
    double* row = A + k * n;
    d[k] = row[k];
    double* x = row + k + 1;  // column k below the diagonal = row k right of it
    const int64_t r = n - k - 1;
    const double alpha = x[0];
    const double sigma = dot(x + 1, x + 1, r - 1);
    if (sigma == 0) {  // already reduced in this column: H = I
      e[k] = alpha;
      tau[k] = 0;
      continue;
    }
    const double beta = alpha > 0 ? -std::sqrt(alpha * alpha + sigma) : std::sqrt(alpha * alpha + sigma);
    const double t = (beta - alpha) / beta;
    const double scale = 1.0 / (alpha - beta);
    x[0] = 1.0;
    for (int64_t i = 1; i < r; ++i) x[i] *= scale;
    e[k] = beta;
    tau[k] = t;
    double* A22 = A + (k + 1) * n + (k + 1);
    std::fill(p, p + r, 0.0);
    for (int64_t i = 0; i < r; ++i) {
      const double* ai = A22 + i * n;
      const double xi = x[i];
      p[i] += ai[i] * xi + dot(ai + i + 1, x + i + 1, r - i - 1);
      for (int64_t j = i + 1; j < r; ++j) p[j] += xi * ai[j];
    }
    for (int64_t i = 0; i < r; ++i) p[i] *= t;
    const double c = 0.5 * t * dot(p, x, r);
    for (int64_t i = 0; i < r; ++i) p[i] -= c * x[i];
    for (int64_t i = 0; i < r; ++i) {
      double* ai = A22 + i * n;
      const double vi = x[i], wi = p[i];
      for (int64_t j = i; j < r; ++j) ai[j] -= vi * p[j] + wi * x[j];
    }
  }
  if (n >= 2) {
    d[n - 2] = A[(n - 2) * n + (n - 2)];
    e[n - 2] = A[(n - 2) * n + (n - 1)];
  }
  d[n - 1] = A[(n - 1) * n + (n - 1)];
  e[n - 1] = 0;
  if (n >= 2) tau[n - 2] = 0;
  tau[n - 1] = 0;
}

// Vt = Q^T = H_{n-3} ... H_1 H_0, accumulated from the right (Vt <- Vt H_k for k = n-3 .. 0): before step k, Vt
// differs from the identity only in its trailing block from k+2 on, so step k touches rows and columns k+1 .. n-1.
ORTHOKERN_CPU_CLONES inline void form_qt(const double* A, const double* tau, double* Vt, double* u, int64_t n) {
  std::fill(Vt, Vt + n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) Vt[i * n + i] = 1.0;
  for (int64_t k = n - 3; k >= 0; --k) {
    if (tau[k] == 0) continue;
    const double* v = A + k * n + k + 1;  // v[0] = 1 was stored explicitly
    const int64_t r = n - k - 1;
    double* Z = Vt + (k + 1) * n + (k + 1);
    for (int64_t i = 0; i < r; ++i) u[i] = tau[k] * dot(Z + i * n, v, r);
    for (int64_t i = 0; i < r; ++i) {
      double* zi = Z + i * n;
      const double ui = u[i];
      for (int64_t j = 0; j < r; ++j) zi[j] -= ui * v[j];
    }
  }
}

// One QL sweep's rotations applied to rows l .. m of Vt (n columns): rotation i (from m-1 down to l) mixes rows i
// and i+1, (r_i, r_i+1) <- (c_i r_i - s_i r_i+1, s_i r_i + c_i r_i+1). Row i+1 is final once rotation i is done,
// and row i carries on to rotation i-1, so a column block is loaded and stored once per rotation.
ORTHOKERN_CPU_CLONES inline void apply_sweep(double* Vt, int64_t n, int64_t l, int64_t m, const double* cs,
                                             const double* sn) {
  int64_t j0 = 0;
#if defined(__GNUC__)
  // Sixteen columns at a time in four 4-wide registers (GCC/Clang vector extensions; SSE pairs on the baseline
  // clone). The compiler does not keep a carried array in registers across the row loop by itself.
  typedef double v4 __attribute__((vector_size(32), aligned(8)));
  for (; j0 + 16 <= n; j0 += 16) {
    const double* src = Vt + m * n + j0;
    v4 c0 = *reinterpret_cast<const v4*>(src), c1 = *reinterpret_cast<const v4*>(src + 4);
    v4 c2 = *reinterpret_cast<const v4*>(src + 8), c3 = *reinterpret_cast<const v4*>(src + 12);
    for (int64_t i = m - 1; i >= l; --i) {
      const double c = cs[i], s = sn[i];
      double* ri = Vt + i * n + j0;
      v4* out = reinterpret_cast<v4*>(ri + n);
      const v4 a0 = *reinterpret_cast<const v4*>(ri), a1 = *reinterpret_cast<const v4*>(ri + 4);
      const v4 a2 = *reinterpret_cast<const v4*>(ri + 8), a3 = *reinterpret_cast<const v4*>(ri + 12);
      out[0] = s * a0 + c * c0;
      out[1] = s * a1 + c * c1;
      out[2] = s * a2 + c * c2;
      out[3] = s * a3 + c * c3;
      c0 = c * a0 - s * c0;
      c1 = c * a1 - s * c1;
      c2 = c * a2 - s * c2;
      c3 = c * a3 - s * c3;
    }
    v4* dst = reinterpret_cast<v4*>(Vt + l * n + j0);
    dst[0] = c0;
    dst[1] = c1;
    dst[2] = c2;
    dst[3] = c3;
  }
#endif
  for (int64_t j = j0; j < n; ++j) {
    double carry = Vt[m * n + j];
    for (int64_t i = m - 1; i >= l; --i) {
      const double c = cs[i], s = sn[i];
      const double a = Vt[i * n + j];
      Vt[(i + 1) * n + j] = s * a + c * carry;
      carry = c * a - s * carry;
    }
    Vt[l * n + j] = carry;
  }
}

// sqrt(a^2 + b^2) without hypot's cost where the squares cannot over- or underflow (the matrices here are scaled
// to norm <= 1, and entries below the deflation threshold never get here), hypot otherwise.
inline double pythag(double a, double b) {
  const double r = std::sqrt(a * a + b * b);
  return (r > 1e-150 && r < 1e150) ? r : std::hypot(a, b);
}

// Implicit QL on the tridiagonal (d, e) (e[i] couples d[i] and d[i+1]), rotations applied to the rows of Vt.
// The iteration count per eigenvalue is bounded (a NaN cannot hang it); cs, sn: n scratch each.
inline void tridiagonal_ql(double* d, double* e, double* Vt, int64_t n, double* cs, double* sn) {
  double f = 0, tst1 = 0;
  const double eps = std::numeric_limits<double>::epsilon();
  for (int64_t l = 0; l < n; ++l) {
    tst1 = std::max(tst1, std::abs(d[l]) + std::abs(e[l]));
    int64_t m = l;
    while (m < n - 1 && !(std::abs(e[m]) <= eps * tst1)) ++m;
    if (m > l) {
      int iter = 0;
      do {
        ++iter;
        double g = d[l];
        double p = (d[l + 1] - g) / (2.0 * e[l]);
        double r = pythag(p, 1.0);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const double dl1 = d[l + 1];
        double h = g - d[l];
        for (int64_t i = l + 2; i < n; ++i) d[i] -= h;
        f += h;
        p = d[m];
        double c = 1, c2 = 1, c3 = 1, s = 0, s2 = 0;
        const double el1 = e[l + 1];
        for (int64_t i = m - 1; i >= l; --i) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = pythag(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          cs[i] = c;
          sn[i] = s;
        }
        apply_sweep(Vt, n, l, m, cs, sn);
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::abs(e[l]) > eps * tst1 && iter < 60);
    }
    d[l] = d[l] + f;
    e[l] = 0;
  }
}

}  // namespace detail

// Eigen-decomposition of the symmetric A (n x n row-major, upper triangle read; overwritten): eigenvalues in lam
// (unsorted), eigenvectors as the ROWS of Vt (n x n). work: symmetric_eigh_work(n) doubles.
inline void symmetric_eigh(double* A, double* lam, double* Vt, int64_t n, double* work) {
  double* e = work;
  double* tau = work + n;
  double* s1 = work + 2 * n;
  double* s2 = work + 3 * n;
  if (n == 1) {
    lam[0] = A[0];
    Vt[0] = 1.0;
    return;
  }
  detail::tridiagonalise(A, lam, e, tau, s1, n);
  detail::form_qt(A, tau, Vt, s1, n);
  detail::tridiagonal_ql(lam, e, Vt, n, s1, s2);
}

}  // namespace cpu
}  // namespace orthokern
