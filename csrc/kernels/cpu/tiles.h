// Register tiles: the tiling constants per instruction set (Tiling) and a cell's packed gate groups
// (GateLayout), the multiply-accumulate tile
// over packed weights (mac_tile), and the loops that cover rows and column blocks with tiles of
// compile-time sizes. Cell-independent.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/vec.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// U: acc_t lanes of one vector register; hidden units are packed in blocks of U.
// MR: batch rows of one register tile (the bf16 and projection tiles and the backward's; the
// forward's gate tiles take FR); NR = 4U columns (the four gates of one unit block).
// GV: weight vectors per k of one tile's pass, so MR x GV accumulators: 4 x 4 (all four gates at
// once) in AVX-512's 32 registers, 6 x 2 (two passes of two gates) in the 16 of AVX2 and SSE.
// Each weight vector loaded feeds MR FMAs. AVX2 had 2 x 4 before: at full FMA rate that read 32
// bytes per cycle from L2, all of Zen 3's L2-to-L1 width; 6 x 2 reads 11 and took 0.73-0.80x of
// the time at B = 3..128 (1 thread, I = H = 256..512).
// FR: the most rows of the forward's gate tiles (gate_tile, for_gate_tiles). AVX-512 takes up to
// 6 rows x 4 gate vectors there (24 accumulators: each weight vector feeds 6 FMAs, 21 bytes per
// cycle from L2 at full rate where 4 x 4 read 32), in balanced tiles so that no tile of one or
// two rows is left; 16 registers keep 6 x 2 in tiles of 6 and the rows left.
template <typename acc_t>
struct Tiling {
  static constexpr int U = LSTM_VEC_BYTES / sizeof(acc_t);
  static constexpr int MR = LSTM_VEC_BYTES >= 64 ? 4 : 6;
  static constexpr int GV = LSTM_VEC_BYTES >= 64 ? 4 : 2;
  static constexpr int FR = 6;
  static constexpr int NR = 4 * U;
};

// How a cell's gate weights are packed for the gate tiles (pack_gate_weight): its NG gates in
// groups of GS = min(GV, NG), each group's k loop contiguous, NRC lanes per k of a unit block (a
// last group of fewer gates padded to GS, never read). The LSTM's four gates fill NR; a GRU's three
// are one group of 3 with AVX-512 (3U lanes) and groups of 2 and 1 with 16 registers.
template <typename Cell, typename acc_t>
struct GateLayout {
  static constexpr int NG = Cell::kGates;
  static constexpr int GS = Tiling<acc_t>::GV < NG ? Tiling<acc_t>::GV : NG;
  static constexpr int NRC = (NG + GS - 1) / GS * GS * Tiling<acc_t>::U;
};

// f(g0, w) (integral constants) for the passes of a gate tile over NG gates, GV at a time: gates
// [g0, g0 + w), the last pass of the gates left.
template <int GV, int NG, int G0 = 0, typename F>
inline void for_gate_passes(F&& f) {
  if constexpr (G0 < NG) {
    f(std::integral_constant<int, G0>{}, std::integral_constant<int, (GV < NG - G0 ? GV : NG - G0)>{});
    for_gate_passes<GV, NG, G0 + GV>(f);
  }
}

// acc[r][v] += sum_k a[r][k] * b[k][v*U : v*U+U] for r < MR, v < NV: a register tile of MR rows
// by NV vectors. Rows of A come as pointers so the caller can map tile rows onto any rows (a
// partial tile repeats its last row; those results are dropped). b is packed, row stride ldb.
// Down: k from K - 1 down to 0 (the same sums, added in the other order). GS < NV: b's vectors
// come in groups of GS, group g at b + g * gstride (pack_gate_weight's gate groups).
// The k loop unrolled by 4 (the same sums in the same order): its counter, pointer updates and
// branch once per four k. Against no unrolling, in one process (a switch read per call, calls
// alternated), T = 100, I = H = 256 unless said: B32 2 threads 0.92-0.94x of the time, 1 thread
// 0.97-1.02x; packed B32 0.95x; proj 0.94x; training 0.93-0.96x; B4 0.93x; AVX2 (6 x 2 tiles)
// 0.91-0.92x; batch 1 1.0x. Unrolled by 2: about half of that.
template <int MR, int NV, bool Down = false, int GS = NV, typename acc_t, typename V>
inline void mac_tile(int64_t K, const acc_t* const (&a)[MR], const acc_t* b, int64_t ldb, V (&acc)[MR][NV],
                     int64_t gstride = 0) {
  constexpr int U = sizeof(V) / sizeof(acc_t);
#pragma GCC unroll 4
  for (int64_t i = 0; i < K; ++i) {
    const int64_t k = Down ? K - 1 - i : i;
    V bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = loadu<V>(b + (v / GS) * gstride + k * ldb + (v % GS) * U);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V av = splat<V>(a[r][k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
}

// f(std::integral_constant<int, m>{}) for a run-time m in 1..M: register tiles of exactly the rows
// there are (a short tile that repeated its last row did up to 4x the work: the whole backward
// product at batch 1).
template <int M, typename F>
inline void with_rows(int m, F&& f) {
  if constexpr (M > 1) {
    if (m < M) return with_rows<M - 1>(m, f);
  }
  f(std::integral_constant<int, M>{});
}

// f(r0, m) for the register tiles over rows [0, rows): tiles of M rows, the last one of the rows
// left (m as in with_rows).
template <int M, typename F>
inline void for_row_tiles(int64_t rows, F&& f) {
  for (int64_t r0 = 0; r0 < rows; r0 += M)
    with_rows<M>(static_cast<int>(std::min<int64_t>(M, rows - r0)), [&](auto m) { f(r0, m); });
}

// f(r0, m) over rows [0, rows) in the fewest tiles of at most M rows, sizes within one of each
// other, the larger first: 32 rows as 6 6 5 5 5 5 rather than five of 6 and one of 2 (a tile of
// one or two rows reads a weight vector for every one or two FMAs). Larger first, a tile's m rows
// of prefetch (gate_tile) cover the next tile.
template <int M, typename F>
inline void for_balanced_tiles(int64_t rows, F&& f) {
  const int64_t n = (rows + M - 1) / M;
  for (int64_t i = 0, r0 = 0; i < n; ++i) {
    const int m = static_cast<int>((rows - r0 + n - i - 1) / (n - i));
    with_rows<M>(m, [&](auto mm) { f(r0, mm); });
    r0 += m;
  }
}

// The forward's gate tiles over rows [0, rows), f(r0, m) as for_row_tiles: balanced tiles of up
// to FR rows with all four gates per pass (AVX-512), else tiles of FR and the rows left (with two
// gates per pass, balanced tiles lost: 8 rows as 4 + 4 took 1.15-1.18x the time of 6 + 2 on an
// AVX2 Zen 3, a 4 x 2 tile having 8 accumulator chains to 6 x 2's 12).
template <typename acc_t, typename F>
inline void for_gate_tiles(int64_t rows, F&& f) {
  using Tl = Tiling<acc_t>;
  if constexpr (Tl::GV == 4) {
    for_balanced_tiles<Tl::FR>(rows, f);
  } else {
    for_row_tiles<Tl::FR>(rows, f);
  }
}

// The projection's products, U columns per block: for cb in [c0, c1),
// acc[r] = sum_k arows[r][k] * w[k][cb U .. cb U + U) (row stride ldw), then store(r, cb, acc[r]).
// With 16 registers the blocks go GV at a time (M x GV accumulators: each W_hr vector loaded
// feeds M FMAs on 12 chains instead of 6); AVX-512 takes them one at a time, as measured there.
template <int M, typename acc_t, typename F>
inline void column_blocks(int64_t K, const acc_t* const (&arows)[M], const acc_t* w, int64_t ldw, int64_t c0,
                          int64_t c1, F&& store) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U, NB = LSTM_VEC_BYTES >= 64 ? 1 : Tiling<acc_t>::GV;
  int64_t cb = c0;
  const auto blocks = [&](auto nb) {
    constexpr int N = decltype(nb)::value;
    V acc[M][N];
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < N; ++v) acc[r][v] = V{};
    mac_tile<M, N>(K, arows, w + cb * U, ldw, acc);
    for (int v = 0; v < N; ++v)
      for (int r = 0; r < M; ++r) store(r, cb + v, acc[r][v]);
  };
  for (; cb + NB <= c1; cb += NB) blocks(std::integral_constant<int, NB>{});
  for (; cb < c1; ++cb) blocks(std::integral_constant<int, 1>{});
}

// f(nv, pb) over the column blocks [pb0, pb1) of the backward's dh product, in the groups its
// register tiles take: GV blocks (GV loads feed MR x GV FMAs), then one at a time.
template <typename F>
inline void for_column_groups(int64_t pb0, int64_t pb1, F&& f) {
  constexpr int GV = Tiling<float>::GV;
  int64_t pb = pb0;
  for (; pb + GV <= pb1; pb += GV) f(std::integral_constant<int, GV>{}, pb);
  for (; pb < pb1; ++pb) f(std::integral_constant<int, 1>{}, pb);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
