// The small-matrix maths of the compiled gram_eigh_polar op (CPU, torch-free); the passes over G are in
// gram_eigh_polar.cpp. Numerics of orthokern/reference/gram_eigh.py:
//
//   A = X^T X (float64),  X = 2^-e G with ||X||_F in [0.5, 1)
//   A = W diag(lam) W^T,  keep lam_i >= rcond^2 lam_max and lam_i > 0
//   M = W diag(d) W^T,    d_i = lam_i^-1/2 for kept i, else 0;   O = X M = G (2^-e M)
//
// (W's columns are the eigenvectors; here they are the rows of Vt = W^T, as symmetric_eigh returns them.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/gram_kernel.h"

namespace orthokern {
namespace cpu {

// Singular value s_i of X counts iff s_i >= rcond * s_max and s_i > 0; on the Gram side lam_i = s_i^2, so
// lam_i >= rcond^2 lam_max and lam_i > 0 (inclusive, as in the reference). An all-zero matrix keeps nothing.
// d (n) receives lam_i^-1/2 for the kept eigenvalues and 0 for the others; returns how many were kept.
inline int64_t inverse_sqrt_weights(const double* lam, double* d, int64_t n, double rcond) {
  double lam_max = 0;
  for (int64_t i = 0; i < n; ++i) lam_max = std::max(lam_max, lam[i]);
  const double thr = rcond * rcond * lam_max;
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = lam[i] >= thr && lam[i] > 0;
    d[i] = keep ? 1.0 / std::sqrt(lam[i]) : 0.0;
    kept += keep;
  }
  return kept;
}

// The rows sqrt(d_i) Vt_i with d_i > 0, moved to the front of Vt (n x n, overwritten); returns how many. Their
// Gram matrix is M = Vt^T diag(d) Vt: one triangle, only the kept eigenvectors, through gram_kernel.h.
inline int64_t scaled_kept_rows(double* Vt, const double* d, int64_t n) {
  int64_t k = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!(d[i] > 0)) continue;
    const double w = std::sqrt(d[i]);
    for (int64_t j = 0; j < n; ++j) Vt[k * n + j] = w * Vt[i * n + j];
    ++k;
  }
  return k;
}

// M = Vt^T diag(d) Vt (n x n, both triangles) for d >= 0; Vt is overwritten. work: gram_work(n, n).
inline void inverse_sqrt_factor(double* Vt, const double* d, int64_t n, double* M, double* work) {
  const int64_t k = scaled_kept_rows(Vt, d, n);
  gram_full<double>(Vt, k, n, n, 1, M, work);
}

}  // namespace cpu
}  // namespace orthokern
