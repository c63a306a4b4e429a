// Weight packing: aligned buffers (per call, or kept across calls in PackedWeights), the in-register
// transpose, and the layouts the tiles read: gate weights in unit blocks, W_hr^T, bf16 pairs for
// AVX512-BF16 and AMX tiles, and the backward's column groups of W_hh.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/tiles.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// n uninitialized elements on a cache-line boundary: malloc puts a large block 16 bytes past a
// page boundary, where every vector load of a packed weight straddled two lines; and a
// zero-filled std::vector cost the caller a serial memset of the whole buffer.
template <typename T>
using Buffer = std::unique_ptr<T[], void (*)(void*)>;
template <typename T>
Buffer<T> aligned_buffer(int64_t n) {
  if (n == 0) return Buffer<T>(nullptr, std::free);
  void* ptr = std::aligned_alloc(64, static_cast<size_t>(round_up(n * static_cast<int64_t>(sizeof(T)), 64)));
  if (!ptr) throw std::bad_alloc();
  return Buffer<T>(static_cast<T*>(ptr), std::free);
}

// n elements of slot's storage, which outlives the call (PackedWeights); (re)allocated, and so
// not ready, when its size differs from n's.
template <typename T>
T* kept_buffer(PackedWeights::Slot& slot, int64_t n) {
  const int64_t bytes = round_up(n * static_cast<int64_t>(sizeof(T)), 64);
  if (slot.bytes != bytes) {
    std::free(slot.data);
    slot = PackedWeights::Slot{};
    slot.data = std::aligned_alloc(64, static_cast<size_t>(bytes));
    if (!slot.data) throw std::bad_alloc();
    slot.bytes = bytes;
  }
  return static_cast<T*>(slot.data);
}

// One round of an in-register transpose of U x U: for rows a = r[i] and b = r[i + S] (i & S == 0),
// swap a's lanes with bit S set and b's lanes with it clear (the off-diagonal S x S blocks).
template <int S, typename V, size_t... L>
inline void swap_blocks(V& a, V& b, std::index_sequence<L...>) {
  constexpr int N = sizeof...(L);
  const V lo = __builtin_shufflevector(a, b, ((L & S) == 0 ? L : N + L - S)...);
  const V hi = __builtin_shufflevector(a, b, ((L & S) == 0 ? L + S : N + L)...);
  a = lo;
  b = hi;
}
template <int S, typename V, int N>
inline void transpose_rounds(V (&r)[N]) {
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i)
    if ((i & S) == 0) swap_blocks<S>(r[i], r[i + S], std::make_index_sequence<N>{});
  if constexpr (S > 1) transpose_rounds<S / 2>(r);
}

// dst[j * ldd + i] = src[i * lds + j] for j < n, with i < m from src and zeros for m <= i < U
// (m, n <= U): a whole tile of acc_t through registers (U loads, U log2 U shuffles, U stores,
// where element by element it was U^2 loads and stores: batch 1, T = 16, I = H = 128 took 0.78x of
// the time on 1 thread, 0.91x on 2), anything else element by element.
template <typename scalar_t, typename acc_t>
inline void transpose_tile(const scalar_t* src, int64_t lds, acc_t* dst, int64_t ldd, int m, int n) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (m == U && n == U) {
      V r[U];
#pragma GCC unroll 16
      for (int i = 0; i < U; ++i) r[i] = loadu<V>(src + i * lds);
      transpose_rounds<U / 2>(r);
#pragma GCC unroll 16
      for (int j = 0; j < U; ++j) storeu(dst + j * ldd, r[j]);
      return;
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) dst[j * ldd + i] = to_acc(src[i * lds + j]);
    for (int i = m; i < U; ++i) dst[j * ldd + i] = acc_t(0);
  }
}

// The transpose of a gate weight ([NG H, K]: W_hh, K = P, or W_ih, K = I; NG gates, 4 for the
// LSTM) for unit blocks [b0, b1), the gates of a block of U units side by side: wp[blk][k][gate][u]
// (lanes past H zero), so that a block's k loop streams through contiguous memory. For each k the
// U units of a block are one cache line while their U rows of W are read in step. With gv < NG
// the gates go in groups of gv, each group's k loop contiguous: wp[blk][gate / gv][k][gate % gv][u]
// (a last group of fewer gates padded to gv; the lookahead reads Lookahead::RV gates at a time).
// A block takes K * nrc lanes (GateLayout::NRC).
template <typename scalar_t, typename acc_t>
void pack_gate_weight(const scalar_t* w_g, int64_t H, int64_t K, int64_t b0, int64_t b1, acc_t* wp,
                      int gv = 4, int ng = 4) {
  constexpr int U = Tiling<acc_t>::U;
  const int64_t nrc = (ng + gv - 1) / gv * gv * U;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < ng; ++g) {
      const scalar_t* w = w_g + (g * H + blk * U) * K;
      acc_t* out = wp + blk * K * nrc + (g / gv) * K * gv * U + (g % gv) * U;
      const int64_t ld = gv * U;
      for (int64_t k0 = 0; k0 < K; k0 += U)
        transpose_tile(w + k0, K, out + k0 * ld, ld, nu, static_cast<int>(std::min<int64_t>(U, K - k0)));
    }
  }
}

// W_hr^T for output columns [c0, c1) (multiples of U): wr[k][c] = w_hr[c][k], k < H, row stride
// Pp = the padded P (columns past P zero).
template <typename scalar_t, typename acc_t>
void pack_w_hr(const scalar_t* w_hr, int64_t H, int64_t P, int64_t c0, int64_t c1, acc_t* wr) {
  constexpr int U = Tiling<acc_t>::U;
  const int64_t Pp = round_up(P, U);
  for (int64_t c = c0; c < c1; c += U)
    for (int64_t k0 = 0; k0 < H; k0 += U)
      transpose_tile(w_hr + c * H + k0, H, wr + k0 * Pp + c, Pp, static_cast<int>(std::min<int64_t>(U, P - c)),
                     static_cast<int>(std::min<int64_t>(U, H - k0)));
}

#ifdef LSTM_BF16_DOT
// W_hh^T for unit blocks [b0, b1) in bf16 pairs along k for vdpbf16ps:
// wpb[blk][k/2][gate][u] holds (W[k][u], W[k+1][u]); padding (units past H, k = P when P is odd)
// is zero.
inline void pack_w_hh_bf16(const bf16_t* w_hh, int64_t H, int64_t P, int64_t b0, int64_t b1, uint32_t* wpb) {
  constexpr int U = 16, NR = 4 * U;
  const int64_t P2 = (P + 1) / 2;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < 4; ++g) {
      const bf16_t* w = w_hh + (g * H + blk * U) * P;
      uint32_t* out = wpb + blk * P2 * NR + g * U;
      for (int64_t k2 = 0; k2 < P2; ++k2)
        for (int u = 0; u < U; ++u) {
          const uint32_t lo = u < nu ? w[u * P + 2 * k2].bits : 0u;
          const uint32_t hi = u < nu && 2 * k2 + 1 < P ? w[u * P + 2 * k2 + 1].bits : 0u;
          out[k2 * NR + u] = lo | (hi << 16);
        }
    }
  }
}
// A gate weight ([4H, K]: W_hh, K = P, or W_ih, K = I) for gate_tile_amx, unit blocks [b0, b1):
// each weight tile (16 k-pairs x 16 units of one gate, 1 KB) contiguous, in the order the tiles
// read them: out[blk][gate / 2][K2 / 16][gate % 2][16 pairs][16 units], K2 pairs per block (a
// multiple of 16; padding zero). So a pass streams through memory, not every fourth line.
inline void pack_weight_amx(const bf16_t* w_g, int64_t H, int64_t K, int64_t K2, int64_t b0, int64_t b1,
                            uint32_t* out) {
  constexpr int U = 16;
  const int64_t kt_n = K2 / 16;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < 4; ++g) {
      const bf16_t* w = w_g + (g * H + blk * U) * K;
      for (int64_t kt = 0; kt < kt_n; ++kt) {
        uint32_t* o = out + blk * K2 * 4 * U + ((g / 2) * kt_n + kt) * 2 * 16 * U + (g % 2) * 16 * U;
        for (int kr = 0; kr < 16; ++kr) {
          const int64_t k = 2 * (kt * 16 + kr);
          for (int u = 0; u < U; ++u) {
            const uint32_t lo = u < nu && k < K ? w[u * K + k].bits : 0u;
            const uint32_t hi = u < nu && k + 1 < K ? w[u * K + k + 1].bits : 0u;
            o[kr * U + u] = lo | (hi << 16);
          }
        }
      }
    }
  }
}
#endif

// W ([rows, P]) for the column blocks [pb0, pb1) of U, in the groups of for_column_groups: the
// group of nv blocks at column c = pb U goes to out + c * rows as [rows][nv U], columns past P
// zero.
template <typename scalar_t, typename acc_t>
void pack_column_groups(const scalar_t* w, int64_t rows, int64_t P, int64_t pb0, int64_t pb1, acc_t* out) {
  constexpr int U = Tiling<acc_t>::U;
  // Row by row, so that w is read in order; group by group, each group's pass read a cache line
  // from every row of w, a stride of P elements that the prefetchers did not follow.
  for (int64_t k = 0; k < rows; ++k)
    for_column_groups(pb0, pb1, [&](auto nv, int64_t pb) {
      constexpr int W = decltype(nv)::value * U;
      acc_t* o = out + pb * U * rows + k * W;
      const int64_t c0 = pb * U, nc = std::min<int64_t>(W, P - c0);
      for (int64_t c = 0; c < nc; ++c) o[c] = to_acc(w[k * P + c0 + c]);
      for (int64_t c = nc; c < W; ++c) o[c] = acc_t(0);
    });
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
