// The backward of one layer and direction (backward_loop, generic over the cell: LstmCell,
// GruCell): the projection's dh, the cell backward of each row, and dh_{t-1} = dgates_t W_hh (plus
// a GRU's dh_t z) in panels of W_hh, on the thread team.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/team.h"
#include "cpu/pack.h"
#include "cpu/dispatch.h"
#include "cpu/steps.h"
#include "cpu/gru_cell.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

template <typename Cell, typename scalar_t, typename acc_t>
void backward_loop(const BackwardParams<scalar_t, acc_t>& p) {
  using Tl = Tiling<acc_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tl::U, MR = Tl::MR;
  const int64_t T = p.T, B = p.B, H = p.H, P = p.P, G = Cell::kGates * H;
  const int64_t Hp = round_up(H, U), Pp = round_up(P, U);
  const bool proj = p.w_hr != nullptr;
  const Steps steps(p.batch_sizes, T, B);

  // W_hh ([4H, P]) for dh_{t-1} = dgates_t W_hh: read in place when it is in acc_t with no column
  // padding, unless the sequence has kPackMinSteps steps or more and (AVX-512) at most
  // kBwdPackMaxRows rows; otherwise packed by column groups (pack_column_groups), so that a
  // register tile's k loop is one contiguous stream.
  const acc_t* whp = nullptr;  // W_hh in place, or nullptr: packed into wb
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    const bool pack_rows = B <= kBwdPackMaxRows || LSTM_VEC_BYTES < 64;
    if (P == Pp && !(T >= kPackMinSteps && pack_rows)) whp = p.w_hh;
  }
  Buffer<acc_t> wb = aligned_buffer<acc_t>(whp ? 0 : G * Pp);
  // W_hr as it is ([P, H]), padded to Hp: d(o*tanh(c)) = dh W_hr.
  std::vector<acc_t> wr(proj ? P * Hp : 0, acc_t(0));
  if (proj)
    for (int64_t k = 0; k < P; ++k)
      for (int64_t c = 0; c < H; ++c) wr[k * Hp + c] = to_acc(p.w_hr[k * H + c]);

  // carry: a GRU's dh_t z, the part of dh_{t-1} that does not pass through W_hh.
  std::vector<acc_t> dh(B * P), dc(Cell::kLstm ? B * H : 0), dht(proj ? B * P : 0), dhp(proj ? B * Hp : 0);
  std::vector<acc_t> carry(Cell::kLstm ? 0 : B * P);
  for (int64_t i = 0; i < B * P; ++i) dh[i] = to_acc(p.grad_hn[i]);
  for (int64_t i = 0; i < static_cast<int64_t>(dc.size()); ++i) dc[i] = to_acc(p.grad_cn[i]);

  const int64_t nblk = Hp / U;
  // Rows of W_hh per panel of the dh product: about kBwdPanelBytes of W_hh (all columns), at
  // least 64 rows; one panel (the whole product) up to H = 128. From the sizes alone, not the
  // thread count, so that results do not depend on it.
  const int64_t kc = std::max<int64_t>(64, kBwdPanelBytes / static_cast<int64_t>(Pp * sizeof(acc_t)) / 16 * 16);
  const int nt_req = std::max(1, std::min<int>(p.num_threads, static_cast<int>(std::max(nblk, Pp / U))));
  SpinBarrier bar;
  run_team(nt_req, bar, [&](int tid, int nt) {
    int64_t ub0, ub1, pb0, pb1;
    split_range(nblk, tid, nt, &ub0, &ub1);
    split_range(Pp / U, tid, nt, &pb0, &pb1);
    const int64_t j_begin = ub0 * U, j_end = std::min(H, ub1 * U);
    const int64_t p_begin = pb0 * U, p_end = std::min(P, pb1 * U);
    if (!whp) pack_column_groups(p.w_hh, G, P, pb0, pb1, wb.get());
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = p.reverse ? s : T - 1 - s;
      const int64_t rows = steps.rows(t), row0 = steps.off[t];
      if (proj) {
        // dL/dh_t in full (the projection mixes every column into every unit).
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t c = p_begin; c < p_end; ++c) {
            const acc_t v = to_acc(p.grad_y[(row0 + b) * P + c]) + dh[b * P + c];
            dht[b * P + c] = v;
            p.dh_out[(row0 + b) * P + c] = v;
          }
        bar.wait();
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = dht.data() + (r0 + r) * P;
          column_blocks(P, arows, wr.data(), Hp, ub0, ub1,
                        [&](int r, int64_t blk, V dh) { storeu(dhp.data() + (r0 + r) * Hp + blk * U, dh); });
        });
      }
      // The cell backward of this thread's units. A GRU's is gru_cell_backward; the LSTM's is in
      // the loop rather than in a function of lstm_cell.h. Moved into one (always inlined, same
      // statements), GCC 12 fused dct's product and sum into an FMA that it does not form here:
      // gradients 1 ulp apart.
      if constexpr (!Cell::kLstm) {
        for (int64_t b = 0; b < rows; ++b) {
          const int64_t row = row0 + b, tp = steps.prev(t, b, p.reverse);
          const scalar_t* hp = tp >= 0 ? p.y + (steps.off[tp] + b) * P : p.h0 + b * P;
          for (int64_t j = j_begin; j < j_end; j += U) {
            const int n = static_cast<int>(std::min<int64_t>(U, j_end - j));
            const V dhv = load_any_n<V>(p.grad_y + row * P + j, n) + load_n<V>(dh.data() + b * P + j, n);
            gru_cell_backward(dhv, p.gates + row * G, p.cells + row * H, load_any_n<V>(hp + j, n), H, j, n,
                              p.dgates + row * G, p.dgates_x + row * G, carry.data() + b * P);
          }
        }
      }
      for (int64_t b = 0; b < (Cell::kLstm ? rows : 0); ++b) {
        const int64_t row = row0 + b, tp = steps.prev(t, b, p.reverse);
        const acc_t* gr = p.gates + row * G;
        const acc_t* cr = p.cells + row * H;
        acc_t* dg = p.dgates + row * G;
        const acc_t* cprev = tp >= 0 ? p.cells + (steps.off[tp] + b) * H : nullptr;
        for (int64_t j = j_begin; j < j_end; j += U) {
          const int n = static_cast<int>(std::min<int64_t>(U, j_end - j));
          const V dhv = proj ? load_n<V>(dhp.data() + b * Hp + j, n)
                             : load_any_n<V>(p.grad_y + row * P + j, n) + load_n<V>(dh.data() + b * P + j, n);
          const V i = load_n<V>(gr + j, n), f = load_n<V>(gr + H + j, n);
          const V g = load_n<V>(gr + 2 * H + j, n), o = load_n<V>(gr + 3 * H + j, n);
          const V cp = cprev ? load_n<V>(cprev + j, n) : load_any_n<V>(p.c0 + b * H + j, n);
          const V tc = tanh_v(load_n<V>(cr + j, n));
          if (proj) store_n(p.h_pre + row * H + j, o * tc, n);
          const V dct = load_n<V>(dc.data() + b * H + j, n) + dhv * o * (acc_t(1) - tc * tc);
          store_n(dc.data() + b * H + j, dct * f, n);
          store_n(dg + j, dct * g * i * (acc_t(1) - i), n);
          store_n(dg + H + j, dct * cp * f * (acc_t(1) - f), n);
          store_n(dg + 2 * H + j, dct * i * (acc_t(1) - g * g), n);
          store_n(dg + 3 * H + j, dhv * tc * o * (acc_t(1) - o), n);
        }
      }
      bar.wait();
      // dh_{t-1} = dgates_t W_hh for this thread's columns; the h each row read, for dW_hh.
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t row = row0 + b, tp = steps.prev(t, b, p.reverse);
        const scalar_t* src = tp >= 0 ? p.y + (steps.off[tp] + b) * P : p.h0 + b * P;
        for (int64_t c = p_begin; c < p_end; ++c) p.h_prev[row * P + c] = to_acc(src[c]);
      }
      // In panels of kc rows of W_hh (all row tiles per panel, partial sums kept in dh), so that
      // this thread's columns of a panel stay in L2 while every row tile passes: whole, they are
      // 8 MB at H = 1024 and came from L3 once per row tile.
      for (int64_t k0 = 0; k0 < G; k0 += kc) {
        const int64_t kn = std::min(kc, G - k0);
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = p.dgates + (row0 + r0 + r) * G + k0;
          // GV column blocks per register tile where there are GV, then one at a time.
          const auto columns = [&](auto nv, int64_t pb) {
            constexpr int NV = decltype(nv)::value;
            V acc[M][NV];  // set lane by lane: a zero-initialized array became a rep stos
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
              const int nc = static_cast<int>(std::min<int64_t>(U, P - (pb + v) * U));
#pragma GCC unroll 4
              for (int r = 0; r < M; ++r) {
                if constexpr (Cell::kLstm) {
                  acc[r][v] = k0 > 0 ? load_n<V>(dh.data() + (r0 + r) * P + (pb + v) * U, nc) : V{};
                } else {
                  acc[r][v] = load_n<V>((k0 > 0 ? dh : carry).data() + (r0 + r) * P + (pb + v) * U, nc);
                }
              }
            }
            const acc_t* w = whp ? whp + k0 * Pp + pb * U : wb.get() + pb * U * G + k0 * NV * U;
            mac_tile<M, NV>(kn, arows, w, whp ? Pp : NV * U, acc);
            for (int v = 0; v < NV; ++v) {
              const int nc = static_cast<int>(std::min<int64_t>(U, P - (pb + v) * U));
              for (int r = 0; r < M; ++r) store_n(dh.data() + (r0 + r) * P + (pb + v) * U, acc[r][v], nc);
            }
          };
          for_column_groups(pb0, pb1, columns);
        });
      }
      bar.wait();
    }
  });
  for (int64_t i = 0; i < B * P; ++i) p.dh0[i] = from_acc<scalar_t>(dh[i]);
  for (int64_t i = 0; i < static_cast<int64_t>(dc.size()); ++i) p.dc0[i] = from_acc<scalar_t>(dc[i]);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
