// Building blocks of the C++ CPU engine (stack.cpp): activations and the rows-in-lanes loops.
//
// A block of RB rows is held "rows in lanes": X[d*RB + i] is row i's entry d, so every loop over
// i has a compile-time length and vectorizes. DC is D when it is a compile-time constant, else 0.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace deepres_cpp {

enum Act : int64_t { kTanh = 0, kRelu = 1, kGelu = 2, kSilu = 3, kIdentity = 4 };

// tanh for float32: Eigen's rational approximation (odd degree-13 over even degree-6 polynomial on
// [-7.905, 7.905], ±1 beyond), evaluated as x·(P(x²)/Q(x²)) rather than Eigen's (x·P)/Q with a
// branch to x for |x| < 4e-4: the same maximum error on [-10, 10] (measured in docs/engines.md),
// relative error ≤ 2.2e-7 down to the smallest normal float with no branch (x·P underflows there),
// and 0.31 against 0.38 ns per value in a lane loop (-18 %: one select less, and the product by x
// off the division's dependency chain). Branch-free, so the lane loops vectorize. NaN propagates
// (every comparison with NaN is false).
inline float tanh_approx(float a) {
  constexpr float kClamp = 7.90531110763549805f;
  float x = a > kClamp ? kClamp : a;
  x = x < -kClamp ? -kClamp : x;
  const float x2 = x * x;
  float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return x * (p / q);
}
inline double tanh_approx(double a) { return std::tanh(a); }  // float64: the exact library function

template <typename T>
inline T inv_sqrt2() { return static_cast<T>(0.70710678118654752440); }
template <typename T>
inline T inv_sqrt_2pi() { return static_cast<T>(0.39894228040143267794); }

// s = σ(z) over n contiguous values (the activation switch is outside the loops).
template <typename T>
void activate(int64_t act, const T* __restrict z, T* __restrict s, int64_t n) {
  switch (act) {
    case kTanh:
      for (int64_t i = 0; i < n; ++i) s[i] = tanh_approx(z[i]);
      break;
    case kRelu:
      for (int64_t i = 0; i < n; ++i) s[i] = z[i] <= T(0) ? T(0) : z[i];  // NaN stays NaN
      break;
    case kGelu:
      for (int64_t i = 0; i < n; ++i) s[i] = z[i] * (T(0.5) * (T(1) + std::erf(z[i] * inv_sqrt2<T>())));
      break;
    case kSilu:
      for (int64_t i = 0; i < n; ++i) s[i] = z[i] / (T(1) + std::exp(-z[i]));
      break;
    default:
      for (int64_t i = 0; i < n; ++i) s[i] = z[i];
  }
}

// s = σ(z) and, in place of z, σ'(z).
template <typename T>
void activate_pair(int64_t act, T* __restrict z, T* __restrict s, int64_t n) {
  switch (act) {
    case kTanh:
      for (int64_t i = 0; i < n; ++i) {
        const T t = tanh_approx(z[i]);
        s[i] = t;
        z[i] = T(1) - t * t;
      }
      break;
    case kRelu:
      for (int64_t i = 0; i < n; ++i) {
        const bool off = z[i] <= T(0);
        s[i] = off ? T(0) : z[i];
        z[i] = off ? T(0) : T(1);
      }
      break;
    case kGelu:
      for (int64_t i = 0; i < n; ++i) {
        const T x = z[i];
        const T cdf = T(0.5) * (T(1) + std::erf(x * inv_sqrt2<T>()));
        s[i] = x * cdf;
        z[i] = cdf + x * std::exp(T(-0.5) * x * x) * inv_sqrt_2pi<T>();
      }
      break;
    case kSilu:
      for (int64_t i = 0; i < n; ++i) {
        const T x = z[i];
        const T sig = T(1) / (T(1) + std::exp(-x));
        s[i] = x * sig;
        z[i] = sig * (T(1) + x * (T(1) - sig));
      }
      break;
    default:
      for (int64_t i = 0; i < n; ++i) {
        s[i] = z[i];
        z[i] = T(1);
      }
  }
}

// acc[k][:] += w_k · x[:] for the four rows k of a register block (x: RB lanes).
template <typename T, int RB>
__attribute__((always_inline)) inline void accumulate4(T (&acc)[4][RB], T w0, T w1, T w2, T w3,
                                                       const T* __restrict x) {
  for (int i = 0; i < RB; ++i) {
    acc[0][i] += w0 * x[i];
    acc[1][i] += w1 * x[i];
    acc[2][i] += w2 * x[i];
    acc[3][i] += w3 * x[i];
  }
}

// Y[k][:] (+)= (scale ·) acc[k][:] for the four rows k of a register block (rows in lanes).
template <typename T, int RB, bool ACC, bool SCALE>
__attribute__((always_inline)) inline void store4(const T (&acc)[4][RB], T* __restrict Y, T scale) {
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < RB; ++i) {
      const T value = SCALE ? scale * acc[k][i] : acc[k][i];
      T* y = Y + k * RB;
      y[i] = ACC ? y[i] + value : value;
    }
}

// Z[j][:] (+)= scale · Σ_d w[j][d] X[d][:]  for j < M; w is (M, D) row-major, X and Z rows in lanes.
// DC is D when it is a compile-time constant, 0 otherwise.
template <typename T, int RB, int DC, bool ACC>
inline void project(const T* __restrict w, const T* __restrict X, T* __restrict Z, int64_t M, int64_t Drt,
                    T scale) {
  const int64_t D = DC ? DC : Drt;
  int64_t j = 0;
  for (; j + 4 <= M; j += 4) {
    T acc[4][RB] = {};
    const T* w0 = w + j * D;
    for (int64_t d = 0; d < D; ++d) {
      accumulate4<T, RB>(acc, w0[d], w0[D + d], w0[2 * D + d], w0[3 * D + d], X + d * RB);
    }
    store4<T, RB, ACC, true>(acc, Z + j * RB, scale);
  }
  for (; j < M; ++j) {
    T acc[RB] = {};
    const T* w0 = w + j * D;
    for (int64_t d = 0; d < D; ++d)
      for (int i = 0; i < RB; ++i) acc[i] += w0[d] * X[d * RB + i];
    T* z = Z + j * RB;
    for (int i = 0; i < RB; ++i) z[i] = ACC ? z[i] + scale * acc[i] : scale * acc[i];
  }
}

// Y[d][:] (+)= Σ_j w[j][d] S[j][:]  for d < D (no scale: the caller scales once, when adding to h).
template <typename T, int RB, int DC, bool ACC>
inline void expand(const T* __restrict w, const T* __restrict S, T* __restrict Y, int64_t M, int64_t Drt) {
  const int64_t D = DC ? DC : Drt;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    T acc[4][RB] = {};
    for (int64_t j = 0; j < M; ++j) {
      const T* wj = w + j * D + d;
      accumulate4<T, RB>(acc, wj[0], wj[1], wj[2], wj[3], S + j * RB);
    }
    store4<T, RB, ACC, false>(acc, Y + d * RB, T(1));
  }
  for (; d < D; ++d) {
    T acc[RB] = {};
    for (int64_t j = 0; j < M; ++j)
      for (int i = 0; i < RB; ++i) acc[i] += w[j * D + d] * S[j * RB + i];
    T* y = Y + d * RB;
    for (int i = 0; i < RB; ++i) y[i] = ACC ? y[i] + acc[i] : acc[i];
  }
}

// One leftover row of the pairs below: acc = Σ_n w[n·ws] X[n] and accd = Σ_n (w[n·ws] Xd[n] +
// wd[n·ws] X[n]) over n < count (X, Xd: rows of RB lanes). acc takes the loop of project's and
// expand's own leftover rows, so the pair's primal is theirs, bit for bit.
template <typename T, int RB>
inline void pair_row(const T* __restrict w, const T* __restrict wd, int64_t ws, const T* __restrict X,
                     const T* __restrict Xd, int64_t count, T (&acc)[RB], T (&accd)[RB]) {
  for (int64_t n = 0; n < count; ++n)
    for (int i = 0; i < RB; ++i) acc[i] += w[n * ws] * X[n * RB + i];
  for (int64_t n = 0; n < count; ++n)
    for (int i = 0; i < RB; ++i) {
      accd[i] += w[n * ws] * Xd[n * RB + i];
      accd[i] += wd[n * ws] * X[n * RB + i];
    }
}

// The forward-mode pair of project: Z = scale · w X and Zd = scale · (w Xd + wd X), in one pass
// over d that loads each w once for X and Xd (the jvp's first product pair).
template <typename T, int RB, int DC>
inline void project_pair(const T* __restrict w, const T* __restrict wd, const T* __restrict X,
                         const T* __restrict Xd, T* __restrict Z, T* __restrict Zd, int64_t M, int64_t Drt,
                         T scale) {
  const int64_t D = DC ? DC : Drt;
  int64_t j = 0;
  for (; j + 4 <= M; j += 4) {
    T acc[4][RB] = {}, accd[4][RB] = {};
    const T* w0 = w + j * D;
    const T* t0 = wd + j * D;
    for (int64_t d = 0; d < D; ++d) {
      accumulate4<T, RB>(acc, w0[d], w0[D + d], w0[2 * D + d], w0[3 * D + d], X + d * RB);
      accumulate4<T, RB>(accd, w0[d], w0[D + d], w0[2 * D + d], w0[3 * D + d], Xd + d * RB);
      accumulate4<T, RB>(accd, t0[d], t0[D + d], t0[2 * D + d], t0[3 * D + d], X + d * RB);
    }
    store4<T, RB, false, true>(acc, Z + j * RB, scale);
    store4<T, RB, false, true>(accd, Zd + j * RB, scale);
  }
  for (; j < M; ++j) {
    T acc[RB] = {}, accd[RB] = {};
    pair_row<T, RB>(w + j * D, wd + j * D, 1, X, Xd, D, acc, accd);
    for (int i = 0; i < RB; ++i) {
      Z[j * RB + i] = scale * acc[i];
      Zd[j * RB + i] = scale * accd[i];
    }
  }
}

// The forward-mode pair of expand: Y = Σ_j w[j] S[j] and Yd = Σ_j (w[j] Sd[j] + wd[j] S[j]).
template <typename T, int RB, int DC>
inline void expand_pair(const T* __restrict w, const T* __restrict wd, const T* __restrict S,
                        const T* __restrict Sd, T* __restrict Y, T* __restrict Yd, int64_t M, int64_t Drt) {
  const int64_t D = DC ? DC : Drt;
  int64_t d = 0;
  for (; d + 4 <= D; d += 4) {
    T acc[4][RB] = {}, accd[4][RB] = {};
    for (int64_t j = 0; j < M; ++j) {
      const T* wj = w + j * D + d;
      const T* tj = wd + j * D + d;
      accumulate4<T, RB>(acc, wj[0], wj[1], wj[2], wj[3], S + j * RB);
      accumulate4<T, RB>(accd, wj[0], wj[1], wj[2], wj[3], Sd + j * RB);
      accumulate4<T, RB>(accd, tj[0], tj[1], tj[2], tj[3], S + j * RB);
    }
    store4<T, RB, false, false>(acc, Y + d * RB, T(1));
    store4<T, RB, false, false>(accd, Yd + d * RB, T(1));
  }
  for (; d < D; ++d) {
    T acc[RB] = {}, accd[RB] = {};
    pair_row<T, RB>(w + d, wd + d, D, S, Sd, M, acc, accd);
    for (int i = 0; i < RB; ++i) {
      Y[d * RB + i] = acc[i];
      Yd[d * RB + i] = accd[i];
    }
  }
}

// A GCC/Clang vector of float32 for rows of DC numbers: 4 wide for D = 4, else 8 wide.
template <int DC>
struct FloatVec {
  static constexpr int width = DC == 4 ? 4 : 8;
  typedef float type __attribute__((vector_size(width * sizeof(float))));
};

// Units j, j + JB, … of outer (below) in blocks of JB, then what is left in blocks of JB/2, …, 1:
// a block keeps JB·NV vector accumulators, and a small M (4 at shape C) still gets a full block.
// Each out[j][:] sums over i in the same order whatever block it falls in (bitwise the same).
template <int JB, int RB, int DC>
__attribute__((always_inline)) inline void outer_blocks(const float* __restrict S, const float* __restrict Yt,
                                                        float* __restrict out, int64_t j, int64_t M,
                                                        float scale) {
  using V = typename FloatVec<DC>::type;
  constexpr int W = FloatVec<DC>::width, NV = DC / W;
  for (; j + JB <= M; j += JB) {
    V acc[JB][NV];
    for (int k = 0; k < JB; ++k)
      for (int n = 0; n < NV; ++n) acc[k][n] = V{};
    for (int i = 0; i < RB; ++i) {
      V y[NV];
      for (int n = 0; n < NV; ++n) std::memcpy(&y[n], Yt + i * DC + n * W, sizeof(V));
      for (int k = 0; k < JB; ++k) {
        const V b = S[(j + k) * RB + i] - V{};
        for (int n = 0; n < NV; ++n) acc[k][n] += b * y[n];
      }
    }
    for (int k = 0; k < JB; ++k)
      for (int n = 0; n < NV; ++n) {
        const V r = acc[k][n] * scale;
        std::memcpy(out + (j + k) * DC + n * W, &r, sizeof(V));
      }
  }
  if constexpr (JB > 1) outer_blocks<JB / 2, RB, DC>(S, Yt, out, j, M, scale);
}

// out[j][d] = scale · Σ_i S[j][i] Yt[i][d]: a reduction over the chunk's rows, with Yt the
// transposed (RB, D) copy of a rows-in-lanes block, so that it vectorizes over d. With a
// compile-time D, a block of JB units keeps JB·D accumulators in registers.
template <typename T, int RB, int DC>
inline void outer(const T* __restrict S, const T* __restrict Yt, T* __restrict out, int64_t M, int64_t Drt,
                  T scale) {
  if constexpr (DC != 0) {  // float32 only (dispatch_shape): explicit vectors, broadcast s, load y
    // JB·NV accumulators: 8 of AVX2's 16 vector registers. AVX-512 has 32 (ymm16-31 as well): there a
    // block twice as tall reuses each loaded y for twice as many units j.
#ifdef __AVX512F__
    constexpr int JB = DC <= 8 ? 16 : (DC <= 16 ? 8 : 4);
#else
    constexpr int JB = DC <= 8 ? 8 : (DC <= 16 ? 4 : 2);
#endif
    outer_blocks<JB, RB, DC>(S, Yt, out, 0, M, scale);
  } else {
    const int64_t D = Drt;
    for (int64_t j = 0; j < M; ++j) {
      T* o = out + j * D;
      std::fill(o, o + D, T(0));
      for (int i = 0; i < RB; ++i) {
        const T b = S[j * RB + i];
        const T* y = Yt + i * D;
        for (int64_t e = 0; e < D; ++e) o[e] += b * y[e];
      }
      for (int64_t e = 0; e < D; ++e) o[e] *= scale;
    }
  }
}

// Rows [row0, row0 + n) of a (B, D) row-major block into rows-in-lanes form (zero lanes past n).
template <typename T, int RB>
inline void load_rows(const T* __restrict src, int64_t n, int64_t D, T* __restrict dst) {
  std::fill(dst, dst + D * RB, T(0));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) dst[d * RB + i] = src[i * D + d];
}

template <typename T, int RB>
inline void store_rows(const T* __restrict src, int64_t n, int64_t D, T* __restrict dst) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t d = 0; d < D; ++d) dst[i * D + d] = src[d * RB + i];
}

template <typename T, int RB, int DC>
inline void transpose_block(const T* __restrict src, int64_t Drt, T* __restrict dst) {
  const int64_t D = DC ? DC : Drt;
  for (int i = 0; i < RB; ++i)
    for (int64_t d = 0; d < D; ++d) dst[i * D + d] = src[d * RB + i];
}

}  // namespace deepres_cpp
