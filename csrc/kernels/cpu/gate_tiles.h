// The forward's register tiles in acc_t: gate_tile (rows by one unit block, all of a cell's gates,
// on the packed weights) and, at batch 1, the LSTM's lookahead that computes the next chunk's input projection
// during the recurrence (lookahead_tile).
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/tiles.h"
#include "cpu/lstm_cell.h"
#include "cpu/gru_cell.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// One register tile of the forward: MR rows (r0..) by one block of U units, all of the cell's
// gates; the matrix products on the packed W_ih^T (when the tiles take the input) and W_hh^T, GV
// gates per pass, then the cell's update on the registers. A gate whose recurrent product stays
// apart (Cell::apart: a GRU's n) starts from its recurrent bias (GruCell::bias), and its input
// projection is left for the update to read.
template <typename Cell, int MR, typename scalar_t, typename acc_t>
inline void gate_tile(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                      int64_t r0, int64_t row0, int64_t t, const acc_t* hcur, acc_t* hnext) {
  using V = typename VecOf<acc_t>::type;
  using L = GateLayout<Cell, acc_t>;
  constexpr int U = Tiling<acc_t>::U, NG = L::NG;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  const acc_t* arows[MR];
  V bias[NG];
  for (int g = 0; g < NG; ++g) {
    if constexpr (Cell::kLstm) {
      bias[g] = p.bias ? load_n<V>(p.bias + g * x.H + j0, nu) : V{};
    } else {
      bias[g] = Cell::template bias<V>(p, g, j0, nu);
    }
  }
  // With the input on the tiles, the apart gate (Cell::kApartGate) sums its input side first,
  // from bias_x (a GRU's b_in), into xin; then its recurrent side from bias (b_hn).
  constexpr int AG = Cell::kApartGate;
  V bias_x{};
  if constexpr (AG >= 0) {
    if (x.wi && p.b_ih) bias_x = load_any_n<V>(p.b_ih + AG * x.H + j0, nu);
  }
  V xin[AG >= 0 ? MR : 1];
  V acc[MR][NG];
  for (int r = 0; r < MR; ++r) {
    arows[r] = hcur + (r0 + r) * x.P;
    if (x.wi) {
      for (int g = 0; g < NG; ++g) acc[r][g] = g == AG ? bias_x : bias[g];
      continue;
    }
    const acc_t* xg = p.gates + (row0 + r0 + r) * x.G + j0;
    for (int g = 0; g < NG; ++g) acc[r][g] = Cell::apart(g) ? bias[g] : load_n<V>(xg + g * x.H, nu) + bias[g];
    // The next row tile's input projection (a cold [N, G] buffer): fetch it during this tile's
    // k loop. A prefetch past the last row is harmless.
    const acc_t* xn = xg + MR * x.G;
    for (int g = 0; g < NG; ++g) __builtin_prefetch(xn + g * x.H);
  }
  // Gates per pass: the packed groups (GS) one at a time, except that a tile of one or two rows
  // takes all gates at once: two accumulators per pass would leave FMAs waiting on their latency.
  constexpr int GS = L::GS, GV = MR <= 2 ? NG : GS;
  for_gate_passes<GV, NG>([&](auto g0c, auto wc) {
    constexpr int g0 = decltype(g0c)::value, W = decltype(wc)::value;
    V part[MR][W];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < W; ++v) part[r][v] = acc[r][g0 + v];
    if constexpr (std::is_same_v<scalar_t, acc_t>) {  // the adapter passes x only in acc_t
      if (x.wi) {
        const acc_t* xrows[MR];
        for (int r = 0; r < MR; ++r) xrows[r] = p.x + (row0 + r0 + r) * p.I;
        mac_tile<MR, W, false, GS>(p.I, xrows, x.wi + blk * p.I * L::NRC + g0 * p.I * U, GS * U, part, GS * p.I * U);
        if constexpr (AG >= g0 && AG < g0 + W) {
          for (int r = 0; r < MR; ++r) {
            xin[r] = part[r][AG - g0];
            part[r][AG - g0] = bias[AG];
          }
        }
      }
    }
    if (!p.recurrent_in_gates)
      mac_tile<MR, W, false, GS>(x.P, arows, x.wp + blk * x.P * L::NRC + g0 * x.P * U, GS * U, part, GS * x.P * U);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < W; ++v) acc[r][g0 + v] = part[r][v];
  });
  for (int r = 0; r < MR; ++r) {
    const V* xr = nullptr;
    if constexpr (AG >= 0) xr = x.wi ? &xin[r] : nullptr;
    Cell::update(p, x, acc[r], r0 + r, row0 + r0 + r, j0, nu, t, hcur, hnext, xr);
  }
}

// Batch 1 with the input on the tiles: x_t W_ih^T alone would be one FMA per W_ih vector read
// from L2, as h_{t-1} W_hh^T is, where a GEMM over the sequence reuses each weight vector across
// rows (but is one more pass, ~30% of the call at H = 128). The lookahead does the GEMM's work
// during the recurrence: while a chunk of S steps runs, each step adds one piece of the next
// chunk's projection (RV of a block's four gate vectors over 1/KQ of I, for all S rows: S FMAs per
// weight vector), in slices alternating with slices of the W_hh product, so that the piece's
// FMAs can run while the core waits on L2 for W_hh (they do in part: at I = H = 128 the pieces
// add about 0.6 us to a 1.7 us step on 2 threads, where the GEMM's share was 0.7 us). Each
// block's pieces belong to the thread owning the block (no synchronization); the ring holds two
// chunks: the current one and the next.
struct Lookahead {
  static constexpr int S = 8, RV = 2, KQ = S * RV / 4;
};

// One k of a piece: pacc[i][v] += xt[k][i] * wi[k][v] for the S rows and RV gate vectors (wi: a
// block's gate pair, packed with gv = RV).
template <typename V, typename acc_t>
inline void lookahead_k(V (&pacc)[Lookahead::S][Lookahead::RV], const acc_t* wi, const acc_t* xt, int64_t k) {
  constexpr int U = Tiling<acc_t>::U, RV = Lookahead::RV, S = Lookahead::S;
  V bv[RV];
#pragma GCC unroll 8
  for (int v = 0; v < RV; ++v) bv[v] = loadu<V>(wi + k * RV * U + v * U);
#pragma GCC unroll 8
  for (int i = 0; i < S; ++i) {
    const V av = splat<V>(xt[k * S + i]);
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) pacc[i][v] += av * bv[v];
  }
}

// A piece's S rows by RV vectors to the ring (dst: its first vector in the chunk's slot).
template <typename V, typename acc_t>
inline void lookahead_store(acc_t* dst, int64_t nblk, const V (&pacc)[Lookahead::S][Lookahead::RV]) {
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR;
#pragma GCC unroll 8
  for (int i = 0; i < Lookahead::S; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < Lookahead::RV; ++v) storeu(dst + i * nblk * NR + v * U, pacc[i][v]);
}

// One step of unit block blk at batch 1 (visiting step s, time t, row row0): W_hh product and cell
// update as gate_tile<1>, with the input projection from the ring, and a piece of the next chunk's
// from xt (that chunk's x rows, transposed: xt[k][i] for k < I, i < S). down: the W_hh product's k
// in reverse (see the step loop).
template <typename scalar_t, typename acc_t>
inline void lookahead_tile(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                           int64_t s, int64_t row0, int64_t t, const acc_t* xt, const acc_t* hcur, acc_t* hnext,
                           bool down) {
  using V = typename VecOf<acc_t>::type;
  using L = Lookahead;
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR, RV = L::RV, S = L::S;
  const int64_t nblk = x.Hp / U, c = s / S, r = s % S, j0 = blk * U, I = p.I, P = x.P;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  const acc_t* cur = x.ring + ((c & 1) * S + r) * nblk * NR + blk * NR;
  V acc[1][4];
  for (int g = 0; g < 4; ++g)
    acc[0][g] = loadu<V>(cur + g * U) + (p.bias ? load_n<V>(p.bias + g * x.H + j0, nu) : V{});
  // This step's piece of chunk c + 1: gate vectors [half * RV, half * RV + RV), k in [ka, kb).
  const bool ahead = (c + 1) * S < p.T;
  const int half = static_cast<int>(r % (4 / RV)), kq = static_cast<int>(r / (4 / RV));
  const int64_t ka = ahead ? kq * I / L::KQ : 0, kb = ahead ? (kq + 1) * I / L::KQ : 0;
  acc_t* nxt = x.ring + ((c + 1) & 1) * S * nblk * NR + blk * NR + half * RV * U;
  V pacc[S][RV];
#pragma GCC unroll 8
  for (int i = 0; i < S; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) pacc[i][v] = kq == 0 ? V{} : loadu<V>(nxt + i * nblk * NR + v * U);
  const acc_t* wi = x.wi + blk * I * NR + half * I * RV * U;
  const acc_t* wh = x.wp + blk * P * NR;
  // One k of the piece per slice of the W_hh product: finer slices overlapped better (a slice of
  // P/8 k: 1.0x of the GEMM's time, P/32: 0.91x, one piece k: 0.90x).
  const int64_t ns = std::max<int64_t>(1, kb - ka), q = P / ns, extra = P % ns;
  for (int64_t i = 0; i < ns; ++i) {
    const int64_t sl = down ? ns - 1 - i : i, h0 = sl * q + std::min(sl, extra), len = q + (sl < extra);
    const acc_t* hrow[1] = {hcur + h0};
    if (down) {
      mac_tile<1, 4, true>(len, hrow, wh + h0 * NR, NR, acc);
    } else {
      mac_tile<1, 4>(len, hrow, wh + h0 * NR, NR, acc);
    }
    if (i < kb - ka) lookahead_k(pacc, wi, xt, ka + i);
  }
  if (ahead) lookahead_store(nxt, nblk, pacc);
  cell_update(p, x, acc[0], 0, row0, j0, nu, t, hnext);
}

// xt[k][i] = row i of chunk c of the visiting order (steps past the end repeat the last; dropped).
template <typename scalar_t, typename acc_t>
inline void lookahead_rows(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t c,
                           acc_t* xt) {
  constexpr int S = Lookahead::S;
  for (int i = 0; i < S; ++i) {
    const int64_t v = std::min(c * S + i, p.T - 1), t = p.reverse ? p.T - 1 - v : v;
    const scalar_t* row = p.x + x.steps->off[t] * p.I;
    for (int64_t k = 0; k < p.I; ++k) xt[k * S + i] = to_acc(row[k]);
  }
}

// Chunk 0 of the lookahead ring for block blk, whole (before the first step), from its xt.
template <typename acc_t>
inline void lookahead_first(const ForwardCtx<acc_t>& x, int64_t I, int64_t blk, const acc_t* xt) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR, RV = Lookahead::RV;
  for (int half = 0; half < 4 / RV; ++half) {
    V pacc[Lookahead::S][RV] = {};
    const acc_t* wi = x.wi + blk * I * NR + half * I * RV * U;
    for (int64_t k = 0; k < I; ++k) lookahead_k(pacc, wi, xt, k);
    lookahead_store(x.ring + blk * NR + half * RV * U, x.Hp / U, pacc);
  }
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
