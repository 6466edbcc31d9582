// The small-matrix maths of the compiled cholqr2_polar op (CPU, torch-free); the passes over G are in
// cholqr2_polar.cpp. Numerics of orthokern/reference/cholqr2.py, all in float64:
//
//   X = 2^-e G (||X||_F in [0.5, 1)),  A1 = X^T X + s1 I,   R1 = chol(A1),  Q1 = X R1^-1
//   A2 = Q1^T Q1 + s2 I,               R2 = chol(A2),       R = R2 R1 = W diag(sigma) Z^T
//   O = sqrt(1 + s2) Q1 R2^-1 W_k Z_k^T,   k: sigma_i >= rcond sigma_max and sigma_i > 0
//
// with s = 11 (m n + n (n + 1)) u ||A||_2 (Fukaya, Kannan, Nakatsukasa, Zhang, Yamamoto, SIAM J. Sci. Comput.
// 2020), which makes both Cholesky factorisations succeed on any finite input, rank-deficient and zero included.
//
// Why sqrt(1 + s2): R^T R = R1^T A2 R1 = (1 + s2) X^T X + s1 s2 I, so every singular value of R is sqrt(1 + s2)
// times that of X (up to the s1 s2 term, far below rcond), and O = X R^-1 polar(R) comes out shrunk by that factor.
// s2 grows like m n u, which made E grow like 6e-16 m n in float64 (over the 1e-8 bound from m n ~ 2e7 on);
// the factor removes that bias exactly to first order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace orthokern {
namespace cpu {

constexpr double kUnitRoundoff64 = 1.1102230246251565e-16;  // 2^-53

inline double cholqr_shift(double norm2, int64_t m, int64_t n) {
  if (!(norm2 > 0)) norm2 = 1.0;  // a zero matrix still factors: R = sqrt(s) I
  return 11.0 * double(m * n + n * (n + 1)) * kUnitRoundoff64 * norm2;
}

// An upper bound on ||A||_2 for the symmetric PSD A (n x n): min(trace, largest absolute row sum), as the
// reference. On the second pass A = Q1^T Q1 is close to I, whose trace n overestimates ||A||_2 = 1 by n; that shift
// then perturbs the significant directions by ~s/2 (measured: E = 1.3e-8 in float64 at 1152 x 128 with the
// trace). The row-sum (Gershgorin) bound is as safe and tight there.
inline double psd_norm2_bound(const double* A, int64_t n) {
  double tr = 0, rmax = 0;
  for (int64_t a = 0; a < n; ++a) {
    tr += A[a * n + a];
    double r = 0;
    for (int64_t b = 0; b < n; ++b) r += std::abs(A[a * n + b]);
    rmax = std::max(rmax, r);
  }
  return std::min(tr, rmax);
}

// A (n x n) += s I with Fukaya's shift for an m x n factor; returns s.
inline double add_cholqr_shift(double* A, int64_t m, int64_t n) {
  const double s = cholqr_shift(psd_norm2_bound(A, n), m, n);
  for (int64_t a = 0; a < n; ++a) A[a * n + a] += s;
  return s;
}

// Singular value sigma_i counts iff sigma_i >= rcond sigma_max and sigma_i > 0 (inclusive, as the reference);
// w (n) receives 1 for the kept values and 0 for the others.
inline void singular_value_mask(const double* sigma, double* w, int64_t n, double rcond) {
  double smax = 0;
  for (int64_t i = 0; i < n; ++i) smax = std::max(smax, sigma[i]);
  const double thr = rcond * smax;
  for (int64_t i = 0; i < n; ++i) w[i] = (sigma[i] >= thr && sigma[i] > 0) ? 1.0 : 0.0;
}

inline void set_identity(double* A, int64_t n) {
  std::fill(A, A + n * n, 0.0);
  for (int64_t a = 0; a < n; ++a) A[a * n + a] = 1.0;
}

}  // namespace cpu
}  // namespace orthokern
