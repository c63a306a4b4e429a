// bf16 forward tiles, AVX-512 copy only (LSTM_BF16_DOT): vdpbf16ps tiles on W_hh in bf16 pairs
// (gate_tile_bf16) and AMX tiles (gate_tile_amx, with amx_begin / amx_end), each ending in the cell
// update. Compiles to nothing in the other copies.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/tiles.h"
#include "cpu/lstm_cell.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

#ifdef LSTM_BF16_DOT
// bfloat16 through AVX512-BF16 (vdpbf16ps): W_hh^T packed in bf16 pairs along k
// (wpb[blk][k/2][4U] as 32-bit pairs) and h_{t-1} rounded to bf16 (as torch.nn.LSTM keeps it in
// bf16), accumulating in fp32: twice the products per instruction of the fp32 tile and half the
// bytes of W_hh. Compiled only for AVX-512; taken only where the CPU has AVX512-BF16.
bool cpu_has_bf16_dot() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

template <int MR>
__attribute__((target("avx512bf16"))) void gate_tile_bf16(
    const ForwardParams<bf16_t, float>& p, const ForwardCtx<float>& x, const uint32_t* wpb, int64_t P2,
    int64_t blk, int64_t r0, int64_t row0, int64_t t, const uint32_t* hbcur, float* hnext, uint16_t* hbnext) {
  constexpr int U = 16;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  vfloat bias[4];
  for (int g = 0; g < 4; ++g) bias[g] = p.bias ? load_n<vfloat>(p.bias + g * x.H + j0, nu) : vfloat{};
  vfloat acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    if (p.gates_lp) {
      const bf16_t* xg = p.gates_lp + (row0 + r0 + r) * x.G + j0;
      for (int g = 0; g < 4; ++g) acc[r][g] = load_any_n<vfloat>(xg + g * x.H, nu) + bias[g];
      // The next row tile's projection, from a buffer too large for cache (as in gate_tile).
      for (int g = 0; g < 4; ++g) __builtin_prefetch(xg + MR * x.G + g * x.H);
    } else {
      const float* xg = p.gates + (row0 + r0 + r) * x.G + j0;
      for (int g = 0; g < 4; ++g) acc[r][g] = load_n<vfloat>(xg + g * x.H, nu) + bias[g];
      for (int g = 0; g < 4; ++g) __builtin_prefetch(xg + MR * x.G + g * x.H);
    }
  }
  const uint32_t* w = wpb + blk * P2 * 4 * U;
  for (int64_t k2 = 0; k2 < P2; ++k2) {
    __m512bh wv[4];
    for (int v = 0; v < 4; ++v) wv[v] = (__m512bh)_mm512_loadu_si512(w + k2 * 4 * U + v * U);
    for (int r = 0; r < MR; ++r) {
      const __m512bh hv = (__m512bh)_mm512_set1_epi32(static_cast<int>(hbcur[(r0 + r) * P2 + k2]));
      for (int v = 0; v < 4; ++v) acc[r][v] = (vfloat)_mm512_dpbf16_ps((__m512)acc[r][v], hv, wv[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t b = r0 + r;
    const vfloat h = cell_update(p, x, acc[r], b, row0 + b, j0, nu, t, hnext);
    store_n(reinterpret_cast<bf16_t*>(hbnext) + b * 2 * P2 + j0, h, nu);
  }
}

// bfloat16 through AMX (Sapphire Rapids and later; the dispatcher's Isa::kAmx): tdpbf16ps takes a
// 16 x 32 tile of h_{t-1} (bf16) against a 32 x 16 tile of W_hh^T into 16 x 16 fp32 sums, 8192
// products per instruction where vdpbf16ps does 32. The weight tiles (a gate's 16 units of 16
// k-pairs, 1 KB) come from pack_weight_amx; h rows (and, with the input on the tiles, the step's
// x rows copied into xs) have a stride of P2s (I2s) pairs, K rounded up to 32 with zeros past it,
// and there are B rounded up to 16 of them (rows past B, and rows idle at a step, computed and
// dropped). amx_begin configures a thread's eight tiles, amx_end releases them.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) inline void amx_begin() {
  alignas(64) AmxConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  // GCC's _tile_loadconfig does not tell the compiler that it reads all 64 bytes (it dropped the
  // stores above without this).
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) inline void amx_end() { _tile_release(); }

// The products of one unit block for row tiles r0 and (NT == 2) r0 + 16, into sums[tile][gate]:
// h_{t-1} against W_hh^T, then (wib) x_t against W_ih^T. One row tile: tiles 0-3 take its four
// gates, 4 the h / x rows, 5 and 6 the weights. Two: two passes of two gates, tiles 0-1 and 2-3
// the two row tiles' sums, 4-5 their rows, 6-7 the weights, so each weight tile loaded (from L2:
// a thread's share of the packs is 512 KB at I = H = 256) serves both row tiles.
template <int NT>
__attribute__((target("amx-tile,amx-bf16"))) inline void amx_products(const uint32_t* w, int64_t K2, const uint16_t* a) {
  const int64_t lda = 4 * K2;       // bytes per row of a
  const int64_t pass = K2 * 2 * 16;  // uint32 per gate pair (pack_weight_amx)
  if constexpr (NT == 1) {
    for (int64_t k2 = 0; k2 < K2; k2 += 16) {
      const uint32_t* wk = w + k2 * 2 * 16;
      _tile_loadd(4, a + 2 * k2, lda);
      _tile_loadd(5, wk, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, wk + 256, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(5, wk + pass, 64);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, wk + pass + 256, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
  } else {
    const uint16_t* a1 = a + 16 * 2 * K2;
    for (int64_t k2 = 0; k2 < K2; k2 += 16) {
      const uint32_t* wk = w + k2 * 2 * 16;
      _tile_loadd(4, a + 2 * k2, lda);
      _tile_loadd(5, a1 + 2 * k2, lda);
      _tile_loadd(6, wk, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, wk + 256, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
}

template <int NT>
__attribute__((target("amx-tile,amx-bf16"))) void gate_tile_amx(
    const ForwardParams<bf16_t, float>& p, const ForwardCtx<float>& x, const uint32_t* wpb, int64_t P2s,
    const uint32_t* wib, const uint16_t* xs, int64_t I2s, int64_t blk, int64_t r0, int nrows, int64_t row0,
    int64_t t, const uint16_t* hbcur, float* hnext, uint16_t* hbnext) {
  constexpr int U = 16, NR = 4 * U;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  alignas(64) float sums[NT][4][16][U];
  const uint32_t* wh = wpb + blk * P2s * NR;
  const uint32_t* wi = wib ? wib + blk * I2s * NR : nullptr;
  if constexpr (NT == 1) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    amx_products<1>(wh, P2s, hbcur + r0 * 2 * P2s);
    if (wi) amx_products<1>(wi, I2s, xs + r0 * 2 * I2s);
    _tile_stored(0, sums[0][0], 4 * U);
    _tile_stored(1, sums[0][1], 4 * U);
    _tile_stored(2, sums[0][2], 4 * U);
    _tile_stored(3, sums[0][3], 4 * U);
  } else {
    for (int g0 = 0; g0 < 4; g0 += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      amx_products<2>(wh + g0 / 2 * P2s * 2 * U, P2s, hbcur + r0 * 2 * P2s);
      if (wi) amx_products<2>(wi + g0 / 2 * I2s * 2 * U, I2s, xs + r0 * 2 * I2s);
      _tile_stored(0, sums[0][g0], 4 * U);
      _tile_stored(1, sums[0][g0 + 1], 4 * U);
      _tile_stored(2, sums[1][g0], 4 * U);
      _tile_stored(3, sums[1][g0 + 1], 4 * U);
    }
  }
  vfloat bias[4];
  for (int g = 0; g < 4; ++g) bias[g] = p.bias ? load_n<vfloat>(p.bias + g * x.H + j0, nu) : vfloat{};
  for (int r = 0; r < nrows; ++r) {
    const int64_t b = r0 + r;
    vfloat pre[4];
    for (int g = 0; g < 4; ++g) {
      const vfloat in = wib ? vfloat{}
                        : p.gates_lp ? load_any_n<vfloat>(p.gates_lp + (row0 + b) * x.G + g * x.H + j0, nu)
                                     : load_n<vfloat>(p.gates + (row0 + b) * x.G + g * x.H + j0, nu);
      pre[g] = loadu<vfloat>(sums[r / 16][g][r % 16]) + in + bias[g];
    }
    const vfloat h = cell_update(p, x, pre, b, row0 + b, j0, nu, t, hnext);
    store_n(reinterpret_cast<bf16_t*>(hbnext) + b * 2 * P2s + j0, h, nu);
  }
}
#endif

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
