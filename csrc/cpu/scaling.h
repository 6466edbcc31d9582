// Power-of-two scaling of one matrix from its float64 Gram matrix (CPU, torch-free): what the compiled polar ops
// decide per matrix from the trace of A = G^T G, so that no pass over G is spent on scaling.
//
// Every scale here is a power of two, so applying it changes no mantissa bit (unless a result leaves the normal
// range, which the choices below avoid for every entry that matters).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace orthokern {
namespace cpu {

// What the trace of a matrix's float64 Gram matrix says about it.
enum class GramStatus : int8_t {
  kOk,         // finite, nonzero and well inside float64's range: use A as computed
  kZero,       // G == 0: the result is zero
  kNonFinite,  // G holds a NaN or an Inf: the result is all NaN
  kRescale,    // float64 G only: A over- or underflowed; recompute it from 2^-e0 G (e0: exponent of max |G_ij|)
  kCheck,      // float64 G only: the trace is not finite; G is either non-finite or so large that A overflowed
};

// The trace of A must lie in [2^kTraceMinExp, 2^kTraceMaxExp] for A to carry float64's full relative accuracy:
// below, squares of the smaller entries of G underflow (each lost square is below 2^-1022, i.e. below
// 2^(-1022 - kTraceMinExp) times the trace); above, a sum of m squares may overflow on the way.
constexpr int kTraceMinExp = -900;
constexpr int kTraceMaxExp = 1000;

// wide_gram: whether A was accumulated from a narrower type (float32 or half) in float64. Then it can neither
// overflow (m * (2^128)^2 < 2^308) nor lose a square (2^-149 squared is 2^-298), so only zero and non-finite
// values are special.
inline GramStatus gram_status(double trace, bool wide_gram) {
  if (!std::isfinite(trace)) return wide_gram ? GramStatus::kNonFinite : GramStatus::kCheck;
  if (trace == 0.0) return wide_gram ? GramStatus::kZero : GramStatus::kRescale;
  if (wide_gram) return GramStatus::kOk;
  int e = 0;
  std::frexp(trace, &e);
  return (e < kTraceMinExp || e > kTraceMaxExp) ? GramStatus::kRescale : GramStatus::kOk;
}

// e such that X = 2^-e G has ||X||_F = sqrt(trace(G^T G)) / 2^e in [0.5, 1) (trace > 0).
inline int frobenius_exponent(double trace) {
  int e = 0;
  std::frexp(std::sqrt(trace), &e);
  return e;
}

// e0 such that max |G_ij| * 2^-e0 lies in [0.5, 1) (amax > 0), for the kRescale recomputation.
inline int amax_exponent(double amax) {
  int e = 0;
  std::frexp(amax, &e);
  return e;
}

// The apply O = G (2^-e M), with M the n x n factor computed for X = 2^-e G. The scale is folded into the small
// factor when 2^-e M fits the apply type T: its largest entry below 2^(max_exp - 8) (so it is finite with room to
// spare), and e small enough that the entries falling below T's smallest normal number do not matter: such an
// entry f contributes G_ik f with |G_ik| < 2^e, i.e. less than 2^(e + min_exp - 1), to an entry of O whose
// significant part is O(1); that is kept below 2^-(2 digits), far under T's rounding. Otherwise the apply scales
// each block of G by 2^-e in cache instead: only for gradients near the ends of T's range (float32 below ~1e-30
// or above ~1e23).
template <typename T>
inline bool can_fold(double amax_M, int e) {
  using L = std::numeric_limits<T>;
  if (!(amax_M > 0)) return true;  // M == 0 (nothing kept): folding is exact
  int em = 0;
  std::frexp(amax_M, &em);
  // (|e| <= 1000 keeps 2^-e itself a normal float64 for fold_scale.)
  return em - e <= L::max_exponent - 8 && e + L::min_exponent - 1 <= -2 * L::digits && std::abs(e) <= 1000;
}

// out = T(2^shift * M) for len entries, entries below T's smallest normal number flushed to zero (see can_fold:
// they are negligible, and denormal operands would slow the BLAS apply down many times). |shift| <= 1000 (can_fold),
// so 2^shift is a normal float64 and the product is exact.
template <typename T>
inline void fold_scale(const double* M, T* out, int64_t len, int shift) {
  const double tiny = double(std::numeric_limits<T>::min());
  const double f = std::ldexp(1.0, shift);
  for (int64_t i = 0; i < len; ++i) {
    const double v = M[i] * f;
    out[i] = std::abs(v) < tiny ? T(0) : T(v);
  }
}

// A (n x n) *= 2^-2e, so that A is the Gram matrix of X = 2^-e G (exact: a power of two).
// |e| <= 500 (the trace of A lies in [2^kTraceMinExp, 2^kTraceMaxExp]), so 2^-2e is a normal float64.
inline void scale_gram(double* A, int64_t n, int e) {
  const double f = std::ldexp(1.0, -2 * e);
  for (int64_t i = 0; i < n * n; ++i) A[i] *= f;
}

inline double trace(const double* A, int64_t n) {
  double t = 0;
  for (int64_t i = 0; i < n; ++i) t += A[i * n + i];
  return t;
}

inline double max_abs(const double* x, int64_t len) {
  double a = 0;
  for (int64_t i = 0; i < len; ++i) a = std::max(a, std::abs(x[i]));
  return a;
}

}  // namespace cpu
}  // namespace orthokern
