// The int8 register tiles: int32 sums of R rows of uint8 activations against NV packed blocks of
// int8 weights (q8.h's layout), one instruction set per Q8_LEVEL:
//   4  AVX512-VNNI on zmm: one vpdpbusd per block and row for four k's of 16 units
//   3  the same on ymm, EVEX-encoded (AVX512-VNNI with AVX512VL): two vpdpbusd per block
//   2  the same on ymm, VEX-encoded (AVX-VNNI, on CPUs without AVX-512)
//   1  AVX2: both sides widened to int16 and summed in pairs by vpmaddwd (exact: 255 * 127 * 2
//      fits int32; vpmaddubsw's int16 sums would saturate at full-range weights)
//   0  portable C++
// Every level computes the same exact int32 sums (what follows them differs only in the
// activations: the zmm level has its own exp).
// Part of the per-ISA int8 core, included by q8_impl.h.
#pragma once

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

using q8::kBlock;

inline int32_t load_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

#if Q8_LEVEL == 4
constexpr int kTileRows = 6;    // 6 x 4 accumulators + 4 weights + 1 broadcast of 32 zmm
constexpr int kTileBlocks = 4;
template <int R, int NV>
__attribute__((always_inline)) inline void dot_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t wstride,
                                                    int64_t kgroups, int32_t* out, int64_t ldo) {
  __m512i acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t kg = 0; kg < kgroups; ++kg) {
    __m512i wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + v * wstride + kg * 64);
    for (int r = 0; r < R; ++r) {
      const __m512i av = _mm512_set1_epi32(load_i32(a + r * lda + kg * 4));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, wv[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_si512(out + r * ldo + v * kBlock, acc[r][v]);
}
#elif Q8_LEVEL == 3 || Q8_LEVEL == 2
#if Q8_LEVEL == 3
#define Q8_DPBUSD _mm256_dpbusd_epi32
constexpr int kTileRows = 6;  // 32 registers: 6 x 2 x 2 accumulators + 4 weights + 1 broadcast
constexpr int kTileBlocks = 2;
#else
#define Q8_DPBUSD _mm256_dpbusd_avx_epi32
constexpr int kTileRows = 4;  // 16 registers: 4 x 2 accumulators + 2 weights + 1 broadcast
constexpr int kTileBlocks = 1;
#endif
template <int R, int NV>
__attribute__((always_inline)) inline void dot_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t wstride,
                                                    int64_t kgroups, int32_t* out, int64_t ldo) {
  __m256i acc[R][NV][2];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v][0] = acc[r][v][1] = _mm256_setzero_si256();
  for (int64_t kg = 0; kg < kgroups; ++kg) {
    __m256i wv[NV][2];
    for (int v = 0; v < NV; ++v)
      for (int h = 0; h < 2; ++h)
        wv[v][h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + v * wstride + kg * 64 + h * 32));
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_set1_epi32(load_i32(a + r * lda + kg * 4));
      for (int v = 0; v < NV; ++v)
        for (int h = 0; h < 2; ++h) acc[r][v][h] = Q8_DPBUSD(acc[r][v][h], av, wv[v][h]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      for (int h = 0; h < 2; ++h)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo + v * kBlock + h * 8), acc[r][v][h]);
}
#undef Q8_DPBUSD
#elif Q8_LEVEL == 1
constexpr int kTileRows = 3;  // 3 x 4 accumulators + 3 broadcasts + 1 weight of 16 ymm
constexpr int kTileBlocks = 1;
// A block's 64 bytes of a k group are four quarters of 4 units x 4 k's. Widened to int16, one
// quarter against the row's four activations (as int16, broadcast) gives 8 int32 lanes: two per
// unit (k0 k1 and k2 k3), folded into one per unit at the end.
template <int R, int NV>
__attribute__((always_inline)) inline void dot_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t wstride,
                                                    int64_t kgroups, int32_t* out, int64_t ldo) {
  static_assert(NV == 1, "one block per tile with 16 registers");
  (void)wstride;
  __m256i acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = _mm256_setzero_si256();
  for (int64_t kg = 0; kg < kgroups; ++kg) {
    __m256i av[R];
    for (int r = 0; r < R; ++r)
      av[r] = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(load_i32(a + r * lda + kg * 4))));
    for (int q = 0; q < 4; ++q) {
      const __m256i wq =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + kg * 64 + q * 16)));
      for (int r = 0; r < R; ++r) acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(av[r], wq));
    }
  }
  for (int r = 0; r < R; ++r) {
    // hadd of the quarters of units 0-3 and 4-7 gives units 0 1 4 5 | 2 3 6 7; the permute sorts.
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][2], acc[r][3]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * ldo + 8), hi);
  }
}
#else
constexpr int kTileRows = 2;
constexpr int kTileBlocks = 1;
template <int R, int NV>
inline void dot_tile(const uint8_t* a, int64_t lda, const int8_t* w, int64_t wstride, int64_t kgroups, int32_t* out,
                     int64_t ldo) {
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      int32_t acc[kBlock] = {};
      const int8_t* wb = w + v * wstride;
      const uint8_t* ar = a + r * lda;
      for (int64_t kg = 0; kg < kgroups; ++kg)
        for (int l = 0; l < kBlock; ++l)
          for (int k = 0; k < 4; ++k)
            acc[l] += int32_t{ar[kg * 4 + k]} * int32_t{wb[kg * 64 + l * 4 + k]};
      std::memcpy(out + r * ldo + v * kBlock, acc, sizeof acc);
    }
}
#endif

// dot_tile for any rows <= kTileRows and blocks <= kTileBlocks, picked at run time.
template <int R = kTileRows, int NV = kTileBlocks>
inline void dot_tile_n(int rows, int blocks, const uint8_t* a, int64_t lda, const int8_t* w, int64_t wstride,
                       int64_t kgroups, int32_t* out, int64_t ldo) {
  if constexpr (R > 1) {
    if (rows < R) return dot_tile_n<R - 1, NV>(rows, blocks, a, lda, w, wstride, kgroups, out, ldo);
  }
  if constexpr (NV > 1) {
    if (blocks < NV) return dot_tile_n<R, NV - 1>(rows, blocks, a, lda, w, wstride, kgroups, out, ldo);
  }
  dot_tile<R, NV>(a, lda, w, wstride, kgroups, out, ldo);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
