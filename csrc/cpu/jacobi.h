// Jacobi eigensolver and one-sided Jacobi SVD for small dense matrices (CPU, torch-free).
//
// The eigh_small op on CPU is the twin of the CUDA kernel: the same rotations with the same relative stopping rule
// |a_pq| <= eps sqrt(|a_pp a_qq|), which computes small eigenvalues to high relative accuracy; sweeps are bounded
// so that NaN cannot hang it. (The fused CPU gram_eigh_polar uses tridiag_eigh.h instead, for speed.) The one-sided
// variant gives the SVD of the small R factor in cholqr2_polar.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/simd.h"

namespace orthokern {
namespace cpu {

// (c, s, t) of the rotation that zeroes a_pq of [[app, apq], [apq, aqq]] (Golub & Van Loan, sym.schur2),
// choosing the smaller angle so that the update is stable. hypot keeps tau^2 from overflowing.
template <typename T>
inline void jacobi_rotation(T app, T aqq, T apq, T& c, T& s, T& t) {
  const T tau = (aqq - app) / (T(2) * apq);
  t = (tau >= T(0) ? T(1) : T(-1)) / (std::abs(tau) + std::hypot(T(1), tau));
  c = T(1) / std::sqrt(T(1) + t * t);
  s = t * c;
}

// Whether the off-diagonal entry is still significant: relative to the geometric mean of the diagonal entries
// (high relative accuracy for small eigenvalues). The negated comparison also stops on NaN.
template <typename T>
inline bool jacobi_needs_rotation(T app, T aqq, T apq) {
  const T eps = std::numeric_limits<T>::epsilon();
  const T scale = std::sqrt(std::abs(app)) * std::sqrt(std::abs(aqq));
  return std::abs(apq) > eps * scale && apq != T(0);
}

// (x, y) <- (c x - s y, s x + c y) on two rows of length n: the update every Jacobi rotation applies.
template <typename T>
inline void rotate_rows(T* x, T* y, int64_t n, T c, T s) {
  for (int64_t k = 0; k < n; ++k) {
    const T a = x[k], b = y[k];
    x[k] = c * a - s * b;
    y[k] = s * a + c * b;
  }
}

// Cyclic Jacobi on the symmetric n x n row-major matrix A (both triangles set; overwritten, its diagonal ends as
// the eigenvalues, unsorted). Vt (n x n) receives the eigenvectors as ROWS (row-wise updates are contiguous).
// Returns the number of sweeps done (<= max_sweeps, so NaN input cannot hang it).
template <typename T>
ORTHOKERN_CPU_CLONES int jacobi_eigh_inplace(T* A, T* Vt, int64_t n, int max_sweeps) {
  std::fill(Vt, Vt + n * n, T(0));
  for (int64_t i = 0; i < n; ++i) Vt[i * n + i] = T(1);
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    bool rotated = false;
    for (int64_t p = 0; p < n - 1; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        const T apq = A[p * n + q], app = A[p * n + p], aqq = A[q * n + q];
        if (!jacobi_needs_rotation(app, aqq, apq)) continue;
        rotated = true;
        T c, s, t;
        jacobi_rotation(app, aqq, apq, c, s, t);
        T* rp = A + p * n;
        T* rq = A + q * n;
        rotate_rows(rp, rq, n, c, s);
        // The 2x2 block is set from the closed form (Rutishauser): a_pq is exactly zero, not rounding noise.
        rp[p] = app - t * apq;
        rq[q] = aqq + t * apq;
        rp[q] = rq[p] = T(0);
        for (int64_t k = 0; k < n; ++k) {
          if (k == p || k == q) continue;
          A[k * n + p] = rp[k];
          A[k * n + q] = rq[k];
        }
        rotate_rows(Vt + p * n, Vt + q * n, n, c, s);
      }
    }
    if (!rotated) return sweep;
  }
  return max_sweeps;
}

// eigh of one symmetric matrix: eigenvalues ascending in w (n), eigenvectors as COLUMNS of W (n x n row-major),
// like torch.linalg.eigh. Only the lower triangle of A is read (LAPACK's default, UPLO='L').
template <typename T>
void eigh_small_one(const T* A, T* w, T* W, int64_t n, T* work /* 2 n^2 */) {
  T* a = work;
  T* vt = work + n * n;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      a[i * n + j] = a[j * n + i] = A[i * n + j];
      finite = finite && std::isfinite(A[i * n + j]);
    }
  if (!finite) {
    // The stopping rule never rotates a NaN pair, which would leave finite, plausible-looking output: say NaN.
    std::fill(w, w + n, std::numeric_limits<T>::quiet_NaN());
    std::fill(W, W + n * n, std::numeric_limits<T>::quiet_NaN());
    return;
  }
  jacobi_eigh_inplace(a, vt, n, 40);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a[x * n + x] < a[y * n + y]; });
  for (int64_t j = 0; j < n; ++j) {
    const int64_t k = order[j];
    w[j] = a[k * n + k];
    for (int64_t i = 0; i < n; ++i) W[i * n + j] = vt[k * n + i];
  }
}

// One-sided (Hestenes) Jacobi on the n ROWS of Ut (n x n, row-major): rotates pairs of rows until they are
// mutually orthogonal, applying the same rotations to the rows of Vt (initialised to I). Afterwards
// Ut_in = S Vt^T-ish: with B = Ut_in^T (columns = rows of Ut_in), B V = U Sigma where U Sigma has the final rows of
// Ut as columns and V has the rows of Vt as columns. Returns the sweeps done (<= max_sweeps).
template <typename T>
ORTHOKERN_CPU_CLONES int one_sided_jacobi_rows(T* Ut, T* Vt, int64_t n, int max_sweeps, T* norms /* n */) {
  std::fill(Vt, Vt + n * n, T(0));
  for (int64_t i = 0; i < n; ++i) Vt[i * n + i] = T(1);
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    // Squared row norms, recomputed each sweep and updated in closed form after each rotation (as the diagonal of
    // the two-sided method): a pair then costs one dot product instead of three.
    for (int64_t p = 0; p < n; ++p) {
      T s = 0;
      for (int64_t k = 0; k < n; ++k) s += Ut[p * n + k] * Ut[p * n + k];
      norms[p] = s;
    }
    bool rotated = false;
    for (int64_t p = 0; p < n - 1; ++p) {
      for (int64_t q = p + 1; q < n; ++q) {
        T* up = Ut + p * n;
        T* uq = Ut + q * n;
        T gamma = 0;
        for (int64_t k = 0; k < n; ++k) gamma += up[k] * uq[k];
        const T alpha = norms[p], beta = norms[q];
        if (!jacobi_needs_rotation(alpha, beta, gamma)) continue;
        rotated = true;
        T c, s, t;
        jacobi_rotation(alpha, beta, gamma, c, s, t);
        norms[p] = alpha - t * gamma;
        norms[q] = beta + t * gamma;
        rotate_rows(up, uq, n, c, s);
        rotate_rows(Vt + p * n, Vt + q * n, n, c, s);
      }
    }
    if (!rotated) return sweep;
  }
  return max_sweeps;
}

}  // namespace cpu
}  // namespace orthokern
