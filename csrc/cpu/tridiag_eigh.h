// Householder tridiagonalisation + implicit QL (EISPACK tred2/tql2, in the public-domain JAMA formulation) for one
// small dense symmetric matrix (CPU, torch-free).
//
// Why not Jacobi here: on CPU the fused gram_eigh_polar op is measured against LAPACK (torch.linalg.eigh), and
// cyclic Jacobi costs ~8 sweeps x 3 n^3 flops against ~(4/3 + 3) n^3 for tred2/tql2 (measured: Jacobi made the op
// 2x slower than the torch reference at n = 32..64). The accuracy needed is absolute (eps * lam_max) because only
// eigenvalues above rcond^2 lam_max are kept: the same guarantee LAPACK's eigh gives the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/simd.h"

namespace orthokern {
namespace cpu {

// On entry V (n x n, row-major) holds the symmetric matrix (both triangles). On exit d holds the eigenvalues
// (ascending after tql2) and V the eigenvectors as COLUMNS. e is n scratch values.
template <typename T>
ORTHOKERN_CPU_CLONES void tred2(T* V, T* d, T* e, int64_t n) {
  auto at = [&](int64_t i, int64_t j) -> T& { return V[i * n + j]; };
  for (int64_t j = 0; j < n; ++j) d[j] = at(n - 1, j);
  for (int64_t i = n - 1; i > 0; --i) {
    T scale = 0, h = 0;
    for (int64_t k = 0; k < i; ++k) scale += std::abs(d[k]);
    if (scale == T(0)) {
      e[i] = d[i - 1];
      for (int64_t j = 0; j < i; ++j) {
        d[j] = at(i - 1, j);
        at(i, j) = 0;
        at(j, i) = 0;
      }
    } else {
      for (int64_t k = 0; k < i; ++k) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      T f = d[i - 1];
      T g = std::sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h = h - f * g;
      d[i - 1] = f - g;
      for (int64_t j = 0; j < i; ++j) e[j] = 0;
      for (int64_t j = 0; j < i; ++j) {
        f = d[j];
        at(j, i) = f;
        g = e[j] + at(j, j) * f;
        for (int64_t k = j + 1; k <= i - 1; ++k) {
          g += at(k, j) * d[k];
          e[k] += at(k, j) * f;
        }
        e[j] = g;
      }
      f = 0;
      for (int64_t j = 0; j < i; ++j) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const T hh = f / (h + h);
      for (int64_t j = 0; j < i; ++j) e[j] -= hh * d[j];
      for (int64_t j = 0; j < i; ++j) {
        f = d[j];
        g = e[j];
        for (int64_t k = j; k <= i - 1; ++k) at(k, j) -= (f * e[k] + g * d[k]);
        d[j] = at(i - 1, j);
        at(i, j) = 0;
      }
    }
    d[i] = h;
  }
  for (int64_t i = 0; i < n - 1; ++i) {
    at(n - 1, i) = at(i, i);
    at(i, i) = 1;
    const T h = d[i + 1];
    if (h != T(0)) {
      for (int64_t k = 0; k <= i; ++k) d[k] = at(k, i + 1) / h;
      for (int64_t j = 0; j <= i; ++j) {
        T g = 0;
        for (int64_t k = 0; k <= i; ++k) g += at(k, i + 1) * at(k, j);
        for (int64_t k = 0; k <= i; ++k) at(k, j) -= g * d[k];
      }
    }
    for (int64_t k = 0; k <= i; ++k) at(k, i + 1) = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    d[j] = at(n - 1, j);
    at(n - 1, j) = 0;
  }
  at(n - 1, n - 1) = 1;
  e[0] = 0;
}

// Implicit QL on the tridiagonal (d, e) from tred2. Vt holds the transformation from tred2 TRANSPOSED (its rows
// are the columns of V) so that each rotation updates two contiguous rows; the iteration count per eigenvalue is
// bounded so that NaN cannot hang it.
template <typename T>
ORTHOKERN_CPU_CLONES void tql2_rows(T* Vt, T* d, T* e, int64_t n) {
  for (int64_t i = 1; i < n; ++i) e[i - 1] = e[i];
  e[n - 1] = 0;
  T f = 0, tst1 = 0;
  const T eps = std::numeric_limits<T>::epsilon();
  for (int64_t l = 0; l < n; ++l) {
    tst1 = std::max(tst1, std::abs(d[l]) + std::abs(e[l]));
    int64_t m = l;
    while (m < n - 1 && !(std::abs(e[m]) <= eps * tst1)) ++m;
    if (m > l) {
      int iter = 0;
      do {
        ++iter;
        T g = d[l];
        T p = (d[l + 1] - g) / (T(2) * e[l]);
        T r = std::hypot(p, T(1));
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const T dl1 = d[l + 1];
        T h = g - d[l];
        for (int64_t i = l + 2; i < n; ++i) d[i] -= h;
        f += h;
        p = d[m];
        T c = 1, c2 = c, c3 = c;
        const T el1 = e[l + 1];
        T s = 0, s2 = 0;
        for (int64_t i = m - 1; i >= l; --i) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = std::hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          T* vi = Vt + i * n;
          T* vi1 = Vt + (i + 1) * n;
          for (int64_t k = 0; k < n; ++k) {
            const T x = vi1[k];
            vi1[k] = s * vi[k] + c * x;
            vi[k] = c * vi[k] - s * x;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::abs(e[l]) > eps * tst1 && iter < 60);
    }
    d[l] = d[l] + f;
    e[l] = 0;
  }
}

// Eigen-decomposition of the symmetric A (n x n, both triangles, overwritten): eigenvalues in d (unsorted),
// eigenvectors as ROWS of Vt. work: n x n + n.
template <typename T>
void tridiag_eigh_rows(T* A, T* d, T* Vt, int64_t n, T* work) {
  T* e = work;
  tred2(A, d, e, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < n; ++k) Vt[i * n + k] = A[k * n + i];
  tql2_rows(Vt, d, e, n);
}

}  // namespace cpu
}  // namespace orthokern
