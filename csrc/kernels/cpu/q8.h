// int8 inference kernels (dynamic quantization): an LSTM or GRU layer whose input projection,
// recurrent product and projection are int8 x uint8 products with int32 sums, everything else
// (gates, cell state, outputs) in float32. No torch in here; csrc/ops/q8_cpu.cpp is the adapter.
//
// Numerics, exactly as lstm_fused/quantized.py's reference computes them:
// - A weight W [rows, K] is quantized per output row, symmetric: s = max|W_row| / 127 (1 for a
//   zero row), q = round_half_even(W / s), in [-127, 127].
// - An activation row a [K] (a row of x, of h_{t-1}, or of o * tanh(c) before a projection) is
//   quantized when it is read, asymmetric over its range with 0 inside: lo = min(0, min a),
//   hi = max(0, max a), s_a = (hi - lo) / 255 (1 when hi == lo), zp = round(-lo / s_a) clamped
//   to [0, 255], qa = clamp(round(a / s_a) + zp, 0, 255).
// - a . W_n = float(sum_k qa_k q_nk - zp * colsum_n) * (s_a * s_n), colsum_n = sum_k q_nk; the
//   sums and their difference are exact in int32 for K <= kMaxK. With the input side x W_ih^T + b (b = b_ih + b_hh in float32, GRU's n
//   gate b_in alone) and the recurrent side h W_hh^T added to it (GRU's n: r * (h W_hn^T + b_hn)).
//
// Packed layout (the same on every instruction set, so a packed weight is portable): a weight of
// `gates` gates of U units each ([gates * U, K] row-major, gate-major as torch stores it) becomes
// nblk = ceil(U / 16) unit blocks, each holding its 16 units of every gate:
//   packed [nblk][gates][Kp / 4][16][4] int8, Kp = K rounded up to 4,
// i.e. block (jb, g) lane l is unit jb * 16 + l of gate g (zero past U), and its four k's sit
// next to each other, as vpdpbusd sums four products into one int32 lane. scale and colsum are
// [nblk * gates * 16] in the same order (zero in the padding). The column order of every packed
// output buffer follows it: column (jb * gates + g) * 16 + l.
#pragma once

#include <cstdint>

namespace lstm_fused {
namespace cpu {
namespace q8 {

constexpr int kBlock = 16;  // units per block: one int32 zmm
constexpr int kGroup = 4;   // products per int32 lane of vpdpbusd
// Largest K: |sum qa q - zp colsum| <= 2 * 255 * 127 * K must stay below 2^31 in the int32 sums.
constexpr int64_t kMaxK = 32767;

inline int64_t blocks_of(int64_t units) { return (units + kBlock - 1) / kBlock; }
inline int64_t padded_k(int64_t K) { return (K + kGroup - 1) / kGroup * kGroup; }

// A packed weight, read-only.
struct Weight {
  const int8_t* w = nullptr;         // [nblk * gates][Kp / 4][16][4]
  const float* scale = nullptr;      // [nblk * gates * 16]
  const int32_t* colsum = nullptr;   // [nblk * gates * 16]
  int64_t K = 0, Kp = 0, nblk = 0;   // nblk = blocks_of(units)
  int gates = 1;
  int64_t cols() const { return nblk * gates * kBlock; }
};

// Quantizes and packs w ([gates * units, K] float32 row-major) into out (nblk * gates * 16 * Kp
// bytes), scale and colsum (nblk * gates * 16 each).
void pack_weight(const float* w, int64_t units, int gates, int64_t K, int8_t* out, float* scale, int32_t* colsum);

// One layer and direction of an LSTM (gates 4: i f g o) or GRU (gates 3: r z n) over a dense or
// packed sequence, in the row layout of ../lstm.h (T, B, batch_sizes, reverse as there).
struct LayerParams {
  int64_t T = 0, B = 0, I = 0, H = 0, P = 0;  // P: proj_size or H
  const int64_t* batch_sizes = nullptr;         // [T] or nullptr (dense)
  bool reverse = false;
  bool gru = false;
  const float* x = nullptr;    // [N, I]
  Weight w_ih;                 // units H, gates 4 (3), K = I
  Weight w_hh;                 // units H, gates 4 (3), K = P
  bool proj = false;           // with a projection (w_hr)
  Weight w_hr;                 // units P, gates 1, K = H
  const float* bias = nullptr;     // [w_ih.cols()] packed order, or nullptr: b_ih + b_hh (GRU's n: b_in)
  const float* bias_hn = nullptr;  // GRU: [nblk(H) * 16] b_hn, or nullptr
  const float* h0 = nullptr;   // [B, P]
  const float* c0 = nullptr;   // [B, H] (LSTM)
  float* y = nullptr;          // [N, P]
  float* h_n = nullptr;        // [B, P]
  float* c_n = nullptr;        // [B, H] (LSTM)
  // Scratch: gates [N, w_ih.cols()], the input projection over every row before the loop, or
  // with fuse_input xq [N, w_ih.Kp] with xs [N] and xz [N], x quantized, whose products the loop
  // takes beside h's (no gate buffer to write and read back: at B = 32, H = 256, 13 MB a call).
  bool fuse_input = false;     // the loop takes the input projection: xq, xs, xz, else gates
  float* gates = nullptr;
  uint8_t* xq = nullptr;
  float* xs = nullptr;
  int32_t* xz = nullptr;
  int num_threads = 1;
};

void layer_forward(const LayerParams& p);

// out [N, w.cols()] = dequantized (quantized a) W^T (+ bias [w.cols()] if given), a [N, K]:
// the input projection on its own, for tests and for callers that want the int8 GEMM.
void linear(const float* a, int64_t N, const Weight& w, const float* bias, float* out, int num_threads);

// The code path this CPU runs: "avx512_vnni", "avx_vnni", "avx2" or "baseline" (capped by
// LSTM_FUSED_CPU_ISA as the float kernels are: avx512 or amx -> avx512_vnni, avx_vnni, avx2,
// baseline).
const char* isa_name();

}  // namespace q8
}  // namespace cpu
}  // namespace lstm_fused
