// The small-batch path of the forward (gemv_block): dot products along the rows of W_hh as it lies
// in memory, folded to a unit block's sums in registers, for up to 4 rows, then the cell's update.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/tiles.h"
#include "cpu/lstm_cell.h"
#include "cpu/gru_cell.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// One round of fold_rows: lane l of the result takes, from a (l < U / 2) or b (l >= U / 2), block
// (l mod U / 2) / S (blocks of 2S lanes, the partial sums of one row each) and adds its halves.
template <int S, typename V, size_t... L>
inline V fold_pair(V a, V b, std::index_sequence<L...>) {
  constexpr int N = sizeof...(L), M = N / 2;
  return __builtin_shufflevector(a, b, ((L < M ? 0 : N) + (L % M) / S * 2 * S + L % S)...) +
         __builtin_shufflevector(a, b, ((L < M ? 0 : N) + (L % M) / S * 2 * S + L % S + S)...);
}
// Folds N vectors, each holding the partial sums of U / (2S) rows in blocks of 2S lanes, into one
// holding all N U / (2S) rows in order, in blocks of 2S / N lanes: from r[u] = the U lanes of row
// u (S = U / 2, N = U), lane u of the result is the sum of r[u]. log2(N) rounds, N - 1 pairs of
// two shuffles and an add, where a sum per vector took 2 log2(U) + 1 ops and a scalar store.
template <int U, int S, typename V, int N>
inline V fold_rows(const V (&r)[N]) {
  if constexpr (N == 1) {
    return r[0];
  } else {
    V h[N / 2];
#pragma GCC unroll 16
    for (int i = 0; i < N / 2; ++i) h[i] = fold_pair<S>(r[2 * i], r[2 * i + 1], std::make_index_sequence<U>{});
    return fold_rows<U, S / 2>(h);
  }
}

// s[r][b] += w_r * rows[b] in lanes over K elements, for NW weight rows w_r = w + min(r, nw - 1) *
// ldw (rows past nw repeat the last: the caller drops their lanes) and NB rows at once; w and rows
// in any of our dtypes. Each k loads NW + NB vectors for NW NB products.
template <int NW, int NB, typename V, typename wt_t, typename rt_t>
inline void dot_rows(const wt_t* w, int64_t ldw, int nw, const rt_t* const (&rows)[NB], int64_t K, V (&s)[NW][NB]) {
  constexpr int U = sizeof(V) / sizeof(s[0][0][0]);
  const wt_t* wr[NW];
  for (int r = 0; r < NW; ++r) wr[r] = w + std::min(r, nw - 1) * ldw;
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    V rv[NB];
#pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) rv[b] = load_w<V>(rows[b] + k);
#pragma GCC unroll 16
    for (int r = 0; r < NW; ++r) {
      const V wv = load_w<V>(wr[r] + k);
#pragma GCC unroll 16
      for (int b = 0; b < NB; ++b) s[r][b] += wv * rv[b];
    }
  }
  if (k < K) {  // the last K mod U elements, zeros after
    const int n = static_cast<int>(K - k);
    V rv[NB];
    for (int b = 0; b < NB; ++b) rv[b] = load_any_n<V>(rows[b] + k, n);
    for (int r = 0; r < NW; ++r) {
      const V wv = load_any_n<V>(wr[r] + k, n);
      for (int b = 0; b < NB; ++b) s[r][b] += wv * rv[b];
    }
  }
}

// The first n lanes of v, zeros after.
template <typename V>
inline V first_lanes(V v, int n) {
  constexpr int U = sizeof(V) / sizeof(v[0]);
  for (int i = n; i < U; ++i) v[i] = 0;
  return v;
}

// The small-batch path (NB <= 4 rows): dot products along the rows of W_hh as it lies in memory,
// so nothing is packed per call (for a few steps at batch 1 the packing would cost more than
// the steps). With p.x set, the input projection is done here too (for a GRU's n gate in a sum of
// its own: r multiplies the recurrent one alone). One block of U units, all of the cell's gates,
// then the cell's update. The U sums of a gate's dot products come out of
// fold_rows as one vector; against a lane sum and a scalar store per dot product (with 4 / NB
// weight rows per pass): B4 T8 H128 0.83x of the time, B32 T1 H1024 0.76x, B8 T1 H128 0.93x,
// batch 1 0.93-0.99x (2 threads; 1 thread alike).
template <typename Cell, int NB, typename scalar_t, typename acc_t>
inline void gemv_block(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                       int64_t row0, int64_t r0, int64_t t, const acc_t* hcur, acc_t* hnext) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U;
  const int64_t H = x.H, P = x.P, j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, H - j0));
  // NW weight rows by NB rows per pass (16 accumulators with AVX-512); each pass's sums folded
  // to one vector of NW blocks, whose U / NW vectors the last rounds fold to the U units' sums.
  constexpr int NW = NB == 1 ? U : NB == 2 ? U / 2 : U / 4 > 0 ? U / 4 : 1;
  const acc_t* hrows[NB];
  const scalar_t* xrows[NB];
  for (int b = 0; b < NB; ++b) {
    hrows[b] = hcur + (r0 + b) * P;
    xrows[b] = p.x ? p.x + (row0 + r0 + b) * p.I : nullptr;
  }
  constexpr int NG = Cell::kGates;
  V pre[NB][NG];
  // A GRU with the input here: x W_in^T + b_in of each row, summed apart from n's recurrent part.
  V xin[NB];
  for (int g = 0; g < NG; ++g) {
    const int64_t wrow = g * H + j0;
    // Pass 0 sums the gate's products (an apart gate's recurrent one alone); pass 1, for an apart
    // gate with the input here, its input product.
    const int npass = Cell::apart(g) && p.x ? 2 : 1;
    for (int pass = 0; pass < npass; ++pass) {
      const bool with_x = p.x && (npass == 1 || pass == 1);
      V part[NB][U / NW];
      for (int u0 = 0; u0 < U; u0 += NW) {
        V s[NW][NB] = {};
        const int nw = nu - u0;
        if (nw <= 0) {  // all padding
          for (int b = 0; b < NB; ++b) part[b][u0 / NW] = V{};
          continue;
        }
        if (pass == 0) dot_rows(p.w_hh + (wrow + u0) * P, P, nw, hrows, P, s);
        if (with_x) dot_rows(p.w_ih + (wrow + u0) * p.I, p.I, nw, xrows, p.I, s);
        for (int b = 0; b < NB; ++b) {
          V col[NW];
          for (int r = 0; r < NW; ++r) col[r] = s[r][b];
          part[b][u0 / NW] = fold_rows<U, U / 2>(col);
        }
      }
      V bias{};
      if constexpr (!Cell::kLstm) {
        bias = pass == 0 ? Cell::template bias<V>(p, g, j0, nu)
                         : (p.b_ih ? load_any_n<V>(p.b_ih + wrow, nu) : V{});
      } else if (p.x) {
        if (p.b_ih) bias += load_any_n<V>(p.b_ih + wrow, nu);
        if (p.b_hh) bias += load_any_n<V>(p.b_hh + wrow, nu);
      } else if (p.bias) {
        bias = load_n<V>(p.bias + wrow, nu);
      }
      for (int b = 0; b < NB; ++b) {
        const V add = p.x || Cell::apart(g) ? bias : load_n<V>(p.gates + (row0 + r0 + b) * x.G + wrow, nu) + bias;
        const V v = first_lanes(fold_rows<U, U / NW / 2>(part[b]) + add, nu);
        if (pass == 0) {
          pre[b][g] = v;
        } else {
          xin[b] = v;
        }
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    Cell::update(p, x, pre[b], r0 + b, row0 + r0 + b, j0, nu, t, hcur, hnext, p.x ? &xin[b] : static_cast<const V*>(nullptr));
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
