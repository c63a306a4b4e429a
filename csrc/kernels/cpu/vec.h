// Vector registers for the per-ISA CPU core: GCC vector types of LSTM_VEC_BYTES, loads and stores
// of the first n lanes in any of the kernels' dtypes (bf16 widened and rounded on whole vectors),
// and the vectorized exp, sigmoid and tanh the cell steps use.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/lstm_cpu.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// Vector registers through GCC's vector extensions: one source, any target width.
typedef float vfloat __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef double vdouble __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef int32_t vint __attribute__((vector_size(LSTM_VEC_BYTES)));
template <typename acc_t> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; };
template <> struct VecOf<double> { using type = vdouble; };

template <typename V, typename T>
inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename T>
inline void storeu(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(bf16_t v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename scalar_t> scalar_t from_acc(float v);
template <typename scalar_t> scalar_t from_acc(double v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
template <> inline bf16_t from_acc<bf16_t>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

// bf16 <-> float on whole vectors (a shift each way; rounding to nearest even, NaN kept quiet),
// so that bf16 loads and stores vectorize like the float ones.
typedef uint32_t vuint __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef uint16_t vhalfword __attribute__((vector_size(LSTM_VEC_BYTES / 2)));
inline vfloat widen_bf16(const bf16_t* p) {
  vhalfword h;
  std::memcpy(&h, p, sizeof h);
  return (vfloat)(__builtin_convertvector(h, vuint) << 16);
}
inline vhalfword narrow_bf16(vfloat v) {
  const vuint u = (vuint)v;
  const vuint rounded = u + (((u >> 16) & 1u) + 0x7fffu);
  const vuint quiet = u | 0x400000u;
  const vuint r = (u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
  return __builtin_convertvector(r >> 16, vhalfword);
}

#if LSTM_VEC_BYTES == 64
// AVX-512 has single instructions for two steps of the portable exp (after #else): rounding
// to an integer (vrndscaleps) and scaling by 2^n (vscalefps); and a 14-bit reciprocal estimate
// (vrcp14ps) that one Newton step brings to about 1 ulp, in place of a division. exp(v) for v in
// [-87, 87] (the callers clamp): the same Cody-Waite reduction; e^r = 1 + r + r^2 q(r) with q of
// degree 4 (a minimax fit, within 1.1 ulp on |r| <= ln2/2 in float arithmetic, as the degree-5 q
// of the portable version). The clamps keep NaN (vmaxps/vminps return the second operand when
// either is NaN) and leave sigmoid(-87) = 1.6e-38 and tanh(9) = 1 in float.
inline __m512 exp_in_range(__m512 v) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vfloat r = (vfloat)_mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f),
                                            _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v));
  // The multiply-adds spelled as FMAs (what GCC contracts them to by default), so that a copy
  // compiled with contraction off (the int8 kernels, q8_avx512.cpp) keeps them.
  const auto fma = [](vfloat a, vfloat b, float c) {
    return (vfloat)_mm512_fmadd_ps((__m512)a, (__m512)b, _mm512_set1_ps(c));
  };
  vfloat q = vfloat{} + 1.381461275741458e-3f;
  q = fma(q, r, 8.368710055947304e-3f);
  q = fma(q, r, 4.166838899254799e-2f);
  q = fma(q, r, 1.666652113199234e-1f);
  q = fma(q, r, 4.999999403953552e-1f);
  const vfloat e = (vfloat)_mm512_fmadd_ps((__m512)q, (__m512)(r * r), (__m512)r) + 1.0f;
  return _mm512_scalef_ps((__m512)e, n);
}
inline vfloat recip_v(vfloat d) {  // d in [1, 2^126]
  const vfloat r = (vfloat)_mm512_maskz_rcp14_ps(0xffff, (__m512)d);
  return r * (vfloat)_mm512_fnmadd_ps((__m512)d, (__m512)r, _mm512_set1_ps(2.0f));
}
inline vfloat sigmoid_v(vfloat x) {
  const __m512 v = _mm512_min_ps(_mm512_set1_ps(87.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x));
  return recip_v(1.0f + (vfloat)exp_in_range(_mm512_sub_ps(_mm512_setzero_ps(), v)));
}
inline vfloat tanh_v(vfloat x) {
  const vint sign = (vint)x & int32_t(0x80000000);
  const __m512 ax = _mm512_min_ps(_mm512_set1_ps(9.0f), (__m512)((vint)x ^ sign));
  const vfloat e = (vfloat)exp_in_range(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ax));
  return (vfloat)((vint)((1.0f - e) * recip_v(1.0f + e)) | sign);
}
#else
// exp for float vectors in plain arithmetic (libm's does not vectorize without -ffast-math):
// Cody-Waite range reduction and a degree-6 polynomial, within about 2 ulp; NaN stays NaN
// (every comparison with NaN is false, so the clamps pass it through).
inline vfloat exp_v(vfloat x) {
  const vfloat lo = vfloat{} - 87.33654f, hi = vfloat{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vfloat magic = vfloat{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + magic) - magic;
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat q = vfloat{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const vfloat e = q * r * r + r + 1.0f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  return e * (vfloat)bits;  // a GCC vector cast between equal sizes reinterprets the bits
}
inline vfloat sigmoid_v(vfloat x) { return 1.0f / (1.0f + exp_v(-x)); }
inline vfloat tanh_v(vfloat x) {
  const vfloat ax = x < 0.0f ? -x : x;
  const vfloat e = exp_v(-2.0f * ax);
  const vfloat r = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -r : r;
}
#endif
// float64 is the accuracy path: libm per lane.
inline vdouble sigmoid_v(vdouble x) {
  for (int l = 0; l < static_cast<int>(sizeof(vdouble) / sizeof(double)); ++l) x[l] = 1.0 / (1.0 + std::exp(-x[l]));
  return x;
}
inline vdouble tanh_v(vdouble x) {
  for (int l = 0; l < static_cast<int>(sizeof(vdouble) / sizeof(double)); ++l) x[l] = std::tanh(x[l]);
  return x;
}

// The first n lanes of p (n <= U), zeros after.
template <typename V, typename acc_t>
inline V load_n(const acc_t* p, int n) {
  constexpr int U = sizeof(V) / sizeof(acc_t);
  if (n == U) return loadu<V>(p);
  acc_t tmp[U] = {};
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  return loadu<V>(tmp);
}
// The first n lanes of p in any of our dtypes (bf16 widens), zeros after.
template <typename V, typename T>
inline V load_any_n(const T* p, int n) {
  using acc_t = std::remove_reference_t<decltype(V{}[0])>;
  if constexpr (std::is_same_v<T, acc_t>) {
    return load_n<V>(p, n);
  } else {
    if (n == static_cast<int>(sizeof(V) / sizeof(acc_t))) return widen_bf16(p);
    acc_t tmp[sizeof(V) / sizeof(acc_t)] = {};
    for (int i = 0; i < n; ++i) tmp[i] = to_acc(p[i]);
    return loadu<V>(tmp);
  }
}
// Stores the first n lanes of v to p, converting to scalar_t.
template <typename scalar_t, typename V>
inline void store_n(scalar_t* p, V v, int n) {
  using acc_t = std::remove_reference_t<decltype(v[0])>;
  constexpr int U = sizeof(V) / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (n == U) return storeu(p, v);
  } else if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    const vhalfword h = narrow_bf16(v);
    if (n == U) return std::memcpy(p, &h, sizeof h), void();  // a vector store, not a call
    return std::memcpy(p, &h, n * sizeof(bf16_t)), void();
  }
  for (int i = 0; i < n; ++i) p[i] = from_acc<scalar_t>(v[i]);
}

// a in every lane (a - 0 folds away exactly, signed zeros included, leaving one broadcast).
template <typename V, typename acc_t>
inline V splat(acc_t a) {
  return a - V{};
}

// U lanes of a weight row in acc_t (bf16 widens by a shift).
template <typename V, typename scalar_t>
inline V load_w(const scalar_t* w) {
  if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    return widen_bf16(w);
  } else {
    return loadu<V>(w);
  }
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
