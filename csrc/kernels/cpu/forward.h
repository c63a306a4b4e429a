// The forward of one layer and direction (forward_loop, generic over the cell: LstmCell, GruCell):
// picks the path, packs the weights, runs the step loop on the thread team over the tiles of
// gate_tiles.h, gemv.h and bf16.h, and the projection after each step. The LSTM's bf16 dot-product
// and AMX tiles and its lookahead at batch 1 are the LSTM's alone; a GRU runs the small-batch path
// and the register tiles in acc_t (bf16 weights widened when packed), the input on them too.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/team.h"
#include "cpu/pack.h"
#include "cpu/dispatch.h"
#include "cpu/gate_tiles.h"
#include "cpu/gemv.h"
#include "cpu/bf16.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

template <typename Cell, typename scalar_t, typename acc_t>
void forward_loop(const ForwardParams<scalar_t, acc_t>& p, bool amx) {
  using Tl = Tiling<acc_t>;
  using L = GateLayout<Cell, acc_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tl::U, MR = Tl::MR, NR = Tl::NR;
  const int64_t T = p.T, B = p.B, H = p.H, P = p.P, G = L::NG * H;
  const int64_t Hp = round_up(H, U), Pp = round_up(P, U);
  const int64_t nblk = Hp / U;
  const bool proj = p.w_hr != nullptr;
  const Steps steps(p.batch_sizes, T, B);

  // The small-batch path reads W_hh in place; the tiles read it packed (pack_gate_weight), the
  // AVX512-BF16 tiles in bf16 pairs (pack_w_hh_bf16).
  const bool gemv = small_batch_path(T, B, H, P, sizeof(acc_t));
#ifdef LSTM_BF16_DOT
  // The AVX512-BF16 path (see gate_tile_bf16): bf16 weights and h; no projection.
  bool dot = false;
  if constexpr (std::is_same_v<scalar_t, bf16_t> && Cell::kLstm) dot = !gemv && !proj && cpu_has_bf16_dot();
  // The same path on AMX tiles (gate_tile_amx) where the dispatcher allows them.
  const bool amx_tiles = dot && amx;
#else
  constexpr bool dot = false, amx_tiles = false;
  (void)amx;
#endif
  const bool fp_tiles = !gemv && !dot;
  const bool pack = fp_tiles && !p.recurrent_in_gates;
  // With p.kept the packs outlive the call: a later call over the same weights reads them as the
  // first one left them (the adapter's time chunks).
  PackedWeights* const kept = p.kept;
  const int64_t wp_size = nblk * P * L::NRC;
  Buffer<acc_t> wp_own = aligned_buffer<acc_t>(pack && !kept ? wp_size : 0);
  acc_t* const wp = !pack ? nullptr : kept ? kept_buffer<acc_t>(kept->w_hh, wp_size) : wp_own.get();
  const bool pack_whh = pack && !(kept && kept->w_hh.ready);
  // With x set on the tile path the tiles multiply x_t by W_ih^T too (packed as W_hh is).
  const bool tile_input = fp_tiles && p.x != nullptr;
  Buffer<acc_t> wi = aligned_buffer<acc_t>(tile_input ? nblk * p.I * L::NRC : 0);
  Buffer<acc_t> wr_own = aligned_buffer<acc_t>(proj && !kept ? H * Pp : 0);
  acc_t* const wr = !proj ? nullptr : kept ? kept_buffer<acc_t>(kept->w_hr, H * Pp) : wr_own.get();
  const bool pack_whr = proj && !(kept && kept->w_hr.ready);
  // bf16 h (double-buffered as hbuf below) in rows of P2 pairs, HB rows: for AMX, whole tiles.
  const int64_t P2 = amx_tiles ? round_up(P, 32) / 2 : (P + 1) / 2, HB = amx_tiles ? round_up(B, 16) : B;
  Buffer<uint32_t> wpb = aligned_buffer<uint32_t>(dot ? nblk * P2 * NR : 0);
  // AMX with x set: the tiles take the input too (amx_takes_input), W_ih packed as W_hh is, and
  // each thread copies a step's rows of x into whole tiles of I2 pairs (zeros past I).
  const bool amx_input = amx_tiles && p.x != nullptr;
  const int64_t I2 = amx_input ? round_up(p.I, 32) / 2 : 0;
  Buffer<uint32_t> wib = aligned_buffer<uint32_t>(amx_input ? nblk * I2 * NR : 0);
  std::vector<uint16_t> hb(dot ? 2 * HB * 2 * P2 : 0, 0);
  if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    for (int64_t b = 0; b < (dot ? B : 0); ++b)
      for (int64_t k = 0; k < P; ++k) hb[b * 2 * P2 + k] = hb[(HB + b) * 2 * P2 + k] = p.h0[b * P + k].bits;
  }
  // h is double-buffered (every thread reads all of h_{t-1} while writing its part of h_t);
  // rows not yet started keep h0 in both buffers. c belongs to the thread owning the unit.
  std::vector<acc_t> hbuf(2 * B * P), cst(Cell::kLstm ? B * Hp : 0, acc_t(0)), hpre(proj ? B * Hp : 0, acc_t(0));
  for (int64_t i = 0; i < B * P; ++i) hbuf[i] = hbuf[B * P + i] = to_acc(p.h0[i]);
  for (int64_t b = 0; b < (p.c0 ? B : 0); ++b)
    for (int64_t j = 0; j < H; ++j) cst[b * Hp + j] = to_acc(p.c0[b * H + j]);
  const int64_t first_rows = T > 0 ? steps.rows(0) : 0;
  for (int64_t i = first_rows * P; i < B * P; ++i) p.h_n[i] = p.h0[i];
  for (int64_t i = first_rows * H; i < (p.c0 ? B * H : 0); ++i) p.c_n[i] = p.c0[i];

  // Batch 1 with the input on the tiles: x W_ih^T a chunk of steps ahead (lookahead_tile). AVX-512
  // only (tiles_take_input never gives batch 1 the input with 16 registers): spelled out so that
  // the other copies do not compile the lookahead's 16-accumulator loops, dead and spilling there.
  const bool lookahead = Cell::kLstm && LSTM_VEC_BYTES >= 64 && tile_input && B == 1;
  Buffer<acc_t> ring = aligned_buffer<acc_t>(lookahead ? 2 * Lookahead::S * nblk * NR : 0);
  const ForwardCtx<acc_t> ctx{H, P, G, Hp, proj, &steps, wp, wi.get(), ring.get(), cst.data(), hpre.data()};
  const int nt_req = std::max(1, std::min<int>(p.num_threads, static_cast<int>(nblk)));
  SpinBarrier bar;
  run_team(nt_req, bar, [&](int tid, int nt) {
    int64_t ub0, ub1, pb0, pb1;
    split_range(nblk, tid, nt, &ub0, &ub1);
    split_range(Pp / U, tid, nt, &pb0, &pb1);
    // Each thread packs the weights only it reads (its unit blocks, its projection columns): in
    // parallel, into its own cache, and with no barrier before the first step.
    if (pack_whh) pack_gate_weight(p.w_hh, H, P, ub0, ub1, wp, L::GS, L::NG);
    if (tile_input && lookahead) pack_gate_weight(p.w_ih, H, p.I, ub0, ub1, wi.get(), Lookahead::RV);
    if (tile_input && !lookahead) pack_gate_weight(p.w_ih, H, p.I, ub0, ub1, wi.get(), L::GS, L::NG);
    // The lookahead's x rows of the next chunk, transposed, this thread's copy.
    std::vector<acc_t> xt(lookahead ? p.I * Lookahead::S : 0);
    if (lookahead) lookahead_rows(p, ctx, 0, xt.data());
    for (int64_t blk = ub0; blk < ub1 && lookahead; ++blk) lookahead_first(ctx, p.I, blk, xt.data());
    if (pack_whr) pack_w_hr(p.w_hr, H, P, pb0 * U, pb1 * U, wr);
#ifdef LSTM_BF16_DOT
    if constexpr (std::is_same_v<scalar_t, bf16_t>) {
      if (dot && !amx_tiles) pack_w_hh_bf16(p.w_hh, H, P, ub0, ub1, wpb.get());
      if (amx_tiles) pack_weight_amx(p.w_hh, H, P, P2, ub0, ub1, wpb.get());
      if (amx_input) pack_weight_amx(p.w_ih, H, p.I, I2, ub0, ub1, wib.get());
      if (amx_tiles) amx_begin();
    }
#endif
    std::vector<uint16_t> xs(amx_input ? HB * 2 * I2 : 0, 0);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = p.reverse ? T - 1 - s : s;
      const int64_t rows = steps.rows(t), row0 = steps.off[t];
      const acc_t* hcur = hbuf.data() + (s & 1) * B * P;
      acc_t* hnext = hbuf.data() + ((s + 1) & 1) * B * P;
      // Unit blocks outside, rows inside: a block's slice of W_hh (P x 4U) stays in L1/L2 while
      // every row tile streams past it, so W_hh is read once per step.
      for (int64_t blk = ub0; blk < ub1 && gemv; ++blk)
        for_row_tiles<kGemvRows>(rows, [&](int64_t r0, auto m) {
          gemv_block<Cell, decltype(m)::value>(p, ctx, blk, row0, r0, t, hcur, hnext);
        });
#ifdef LSTM_BF16_DOT
      if constexpr (std::is_same_v<scalar_t, bf16_t>) {
        const uint16_t* hbcur = hb.data() + (s & 1) * HB * 2 * P2;
        uint16_t* hbnext = hb.data() + ((s + 1) & 1) * HB * 2 * P2;
        for (int64_t b = 0; b < rows && amx_input; ++b)
          std::memcpy(xs.data() + b * 2 * I2, p.x + (row0 + b) * p.I, p.I * sizeof(bf16_t));
        for (int64_t blk = ub0; blk < ub1 && amx_tiles; ++blk)
          for (int64_t r0 = 0; r0 < rows; r0 += 32) {
            const int n = static_cast<int>(std::min<int64_t>(32, rows - r0));
            if (n > 16) {
              gate_tile_amx<2>(p, ctx, wpb.get(), P2, wib.get(), xs.data(), I2, blk, r0, n, row0, t, hbcur, hnext, hbnext);
            } else {
              gate_tile_amx<1>(p, ctx, wpb.get(), P2, wib.get(), xs.data(), I2, blk, r0, n, row0, t, hbcur, hnext, hbnext);
            }
          }
        for (int64_t blk = ub0; blk < ub1 && dot && !amx_tiles; ++blk)
          for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
            gate_tile_bf16<decltype(m)::value>(p, ctx, wpb.get(), P2, blk, r0, row0, t,
                                               reinterpret_cast<const uint32_t*>(hbcur), hnext, hbnext);
          });
      }
#endif
      if (lookahead && s % Lookahead::S == 0 && s + Lookahead::S < T)
        lookahead_rows(p, ctx, s / Lookahead::S + 1, xt.data());
      // Odd steps visit the blocks and each block's k in reverse, so that a step starts on the
      // W_hh lines the last one read, still in L1 (about 12 KB of them: 0.95-0.96x of the time).
      const bool down = s & 1;
      for (int64_t i = ub0; i < ub1 && lookahead && rows; ++i)
        lookahead_tile(p, ctx, down ? ub0 + ub1 - 1 - i : i, s, row0, t, xt.data(), hcur, hnext, down);
      for (int64_t blk = ub0; blk < ub1 && !gemv && !dot && !lookahead; ++blk)
        for_gate_tiles<acc_t>(rows, [&](int64_t r0, auto m) {
          gate_tile<Cell, decltype(m)::value>(p, ctx, blk, r0, row0, t, hcur, hnext);
        });
      if (proj) {
        // h_t = W_hr (o * tanh(c)): every thread needs all units, so wait for them first.
        bar.wait();
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = hpre.data() + (r0 + r) * Hp;
          column_blocks(H, arows, wr, Pp, pb0, pb1, [&](int r, int64_t pb, V h) {
            const int nc = static_cast<int>(std::min<int64_t>(U, P - pb * U));
            const int64_t b = r0 + r, row = row0 + b;
            store_n(hnext + b * P + pb * U, h, nc);
            store_n(p.y + row * P + pb * U, h, nc);
            if (steps.last(t, b, p.reverse)) store_n(p.h_n + b * P + pb * U, h, nc);
          });
        });
      }
      // Rows idle at this step need no copy across the buffers: with the forward direction they
      // have finished for good, with the reverse one they have not started and hold h0 in both.
      bar.wait();
    }
#ifdef LSTM_BF16_DOT
    if (amx_tiles) amx_end();
#endif
  });
  // Every block and column is packed now (the team covered them all, whatever its size).
  if (kept && pack) kept->w_hh.ready = true;
  if (kept && proj) kept->w_hr.ready = true;
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
