// Shifted CholeskyQR2 + polar factor of the small R, for one tall matrix (CPU, torch-free). Same numerics as
// orthokern/reference/cholqr2.py, all in double:
//   X = 2^-e G (||X||_F in [0.5, 1)),  A1 = X^T X + s1 I, R1 = chol(A1), Q1 = X R1^-1,
//   A2 = Q1^T Q1 + s2 I, R2 = chol(A2),  R = R2 R1,  O = Q1 R2^-1 polar_k(R)
// with s = 11 (m n + n (n + 1)) u ||A||_2 (Fukaya et al. 2020), ||A||_2 bounded above by min(trace, max row sum)
// (the reference takes the trace), which makes the Cholesky succeed on any finite input, rank-deficient and zero
// included.
//
// polar_k(R) comes from a one-sided Jacobi SVD of R^T (rows of R): it works on R itself, so the significant
// singular vectors carry an error near eps * cond rather than the eps * cond^2 of an eigensolver on R^T R, and the
// threshold sigma > rcond sigma_max is decided on singular values computed to high relative accuracy. Jacobi on the
// transpose of a triangular factor converges in few sweeps (Drmac & Veselic 2008).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/gram_eigh_polar.h"
#include "cpu/jacobi.h"

namespace orthokern {
namespace cpu {

constexpr int kSvdJacobiMaxSweeps = 40;
constexpr double kUnitRoundoff64 = 1.1102230246251565e-16;  // 2^-53

inline double cholqr_shift(double norm2, int64_t m, int64_t n) {
  if (!(norm2 > 0)) norm2 = 1.0;  // a zero matrix still factors: R = sqrt(s) I
  return 11.0 * double(m * n + n * (n + 1)) * kUnitRoundoff64 * norm2;
}

// Upper Cholesky factor R (R^T R = A) of the symmetric n x n A (upper triangle read), in place into R.
// A non-positive pivot cannot happen for a finite shifted Gram matrix; should rounding produce one anyway, the
// pivot is replaced by the shift so that the factor stays finite (the direction is then dropped by rcond).
inline void cholesky_upper(const double* A, double* R, int64_t n, double floor_pivot) {
  for (int64_t i = 0; i < n * n; ++i) R[i] = 0;
  for (int64_t j = 0; j < n; ++j) {
    double d = A[j * n + j];
    for (int64_t k = 0; k < j; ++k) d -= R[k * n + j] * R[k * n + j];
    if (!(d > 0)) d = floor_pivot;
    const double rjj = std::sqrt(d);
    R[j * n + j] = rjj;
    for (int64_t l = j + 1; l < n; ++l) {
      double v = A[j * n + l];
      for (int64_t k = 0; k < j; ++k) v -= R[k * n + j] * R[k * n + l];
      R[j * n + l] = v / rjj;
    }
  }
}

// Each row x of X (m x n) becomes x R^-1 (R upper triangular), in place.
ORTHOKERN_CPU_CLONES inline void solve_rows_upper(double* X, const double* R, int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i) {
    double* x = X + i * n;
    for (int64_t j = 0; j < n; ++j) {
      const double q = x[j] / R[j * n + j];
      x[j] = q;
      const double* rj = R + j * n;
      for (int64_t l = j + 1; l < n; ++l) x[l] -= q * rj[l];
    }
  }
}

// An upper bound on ||A||_2 for the symmetric PSD A (upper triangle set): min(trace, largest absolute row sum).
// The reference uses the trace; on the second pass A = Q1^T Q1 is close to I, whose trace n overestimates
// ||A||_2 = 1 by n, and that shift then perturbs the significant directions by ~s/2 (measured: E = 1.3e-8 in
// float64 at 1152 x 128, over the 1e-8 contract). The row-sum (Gershgorin) bound is as safe and tight there.
inline double psd_norm2_bound(const double* A, int64_t n, double trace) {
  double rmax = 0;
  for (int64_t a = 0; a < n; ++a) {
    double r = 0;
    for (int64_t b = 0; b < n; ++b) r += std::abs(b >= a ? A[a * n + b] : A[b * n + a]);
    rmax = std::max(rmax, r);
  }
  return std::min(trace, rmax);
}

// Shifted Cholesky of X^T X: R (n x n upper), with A as scratch.
inline void shifted_cholqr_factor(const double* X, int64_t m, int64_t n, double* A, double* R, double* xrow) {
  const double tr = gram_upper_unscaled<double, double>(X, m, n, A, xrow);
  const double s = cholqr_shift(psd_norm2_bound(A, n, tr), m, n);
  for (int64_t a = 0; a < n; ++a) A[a * n + a] += s;
  cholesky_upper(A, R, n, s);
}

inline int64_t cholqr2_polar_work(int64_t m, int64_t n) { return m * n + 5 * n * n + 2 * n; }

template <typename In>
void cholqr2_polar_one(const In* G, In* O, int64_t m, int64_t n, double rcond, double* work) {
  double* X = work;
  double* A = X + m * n;
  double* R1 = A + n * n;
  double* R2 = R1 + n * n;
  double* Ut = R2 + n * n;
  double* Vt = Ut + n * n;
  double* xrow = Vt + n * n;
  double* sigma = xrow + n;

  if (!all_finite(G, m * n)) {
    const In nan = std::numeric_limits<In>::quiet_NaN();
    std::fill(O, O + m * n, nan);
    return;
  }
  // Scale by powers of two (exact): first by the largest entry so the norm cannot overflow, then to
  // ||X||_F in [0.5, 1) as the reference does.
  const int e0 = max_abs_exponent(G, m * n);
  double nrm2 = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    X[i] = std::ldexp(double(G[i]), -e0);
    nrm2 += X[i] * X[i];
  }
  int e = 0;
  std::frexp(std::sqrt(nrm2), &e);
  for (int64_t i = 0; i < m * n; ++i) X[i] = std::ldexp(X[i], -e);

  shifted_cholqr_factor(X, m, n, A, R1, xrow);
  solve_rows_upper(X, R1, m, n);  // X <- Q1
  shifted_cholqr_factor(X, m, n, A, R2, xrow);

  // Ut <- R = R2 R1 (upper triangular); its rows are the columns of R^T for the one-sided Jacobi.
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      double s = 0;
      for (int64_t k = a; k <= b; ++k) s += R2[a * n + k] * R1[k * n + b];
      Ut[a * n + b] = b >= a ? s : 0.0;
    }
  // R^T V = U Sigma  =>  R = V Sigma U^T, polar(R) = V U^T; rows of Ut are (U Sigma)^T, rows of Vt are V^T.
  one_sided_jacobi_rows(Ut, Vt, n, kSvdJacobiMaxSweeps, sigma);  // sigma: scratch until set below
  double smax = 0;
  for (int64_t j = 0; j < n; ++j) {
    double s = 0;
    for (int64_t k = 0; k < n; ++k) s += Ut[j * n + k] * Ut[j * n + k];
    sigma[j] = std::sqrt(s);
    smax = std::max(smax, sigma[j]);
  }
  const double thr = rcond * smax;
  for (int64_t j = 0; j < n; ++j) {
    // Strict comparison, as in the reference: a zero R keeps nothing.
    const double w = sigma[j] > thr ? 1.0 / sigma[j] : 0.0;
    for (int64_t k = 0; k < n; ++k) Ut[j * n + k] *= w;
  }
  // P = polar_k(R) = sum_j v_j u_j^T into A; then N = R2^-1 P into A (so that O = Q1 N = Q P).
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += Vt[j * n + a] * Ut[j * n + b];
      A[a * n + b] = s;
    }
  for (int64_t b = 0; b < n; ++b)
    for (int64_t a = n - 1; a >= 0; --a) {
      double v = A[a * n + b];
      for (int64_t k = a + 1; k < n; ++k) v -= R2[a * n + k] * A[k * n + b];
      A[a * n + b] = v / R2[a * n + a];
    }
  matmul_rows<double, double, In>(X, A, O, m, n, 1.0, 1.0, xrow, sigma);  // sigma is free scratch now
}

}  // namespace cpu
}  // namespace orthokern
