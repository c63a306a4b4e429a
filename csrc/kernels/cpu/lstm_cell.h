// The LSTM cell's forward pointwise step: the forward's shared state (ForwardCtx, with the cell
// state), the gate activations and cell update that end every forward tile (cell_update), and
// LstmCell, the cell policy the generic loops take (gru_cell.h has the GRU's). The cell backward
// is written out in backward()'s step loop (backward.h says why).
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/vec.h"
#include "cpu/steps.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// What the forward's threads share: sizes, packed weights and state buffers.
template <typename acc_t>
struct ForwardCtx {
  int64_t H, P, G, Hp;  // G: gates x H, a row of the gate buffer
  bool proj;
  const Steps* steps;
  // Packed by pack_gate_weight in the cell's gate groups (GateLayout): [nblk][NG / GS][K][GS][U]
  // (the LSTM's lookahead's W_ih in groups of Lookahead::RV; AVX-512, where GS = 4).
  const acc_t* wp;  // W_hh^T, K = P
  const acc_t* wi;  // W_ih^T, K = I, when the tiles take the input, else nullptr
  acc_t* ring;      // batch 1 with wi: [2][Lookahead::S][nblk][4][U], x W_ih^T of two chunks
  acc_t* cst;       // [B, Hp] cell state (LSTM)
  acc_t* hpre;      // [B, Hp] o * tanh(c) before the projection
};

// The cell update of one row and one block of U units, on registers: pre-activations in, c and
// h out (h to hnext/y, or to hpre before a projection), activations saved when training. Returns
// h (before any projection).
template <typename scalar_t, typename acc_t, typename V>
__attribute__((always_inline)) inline V cell_update(const ForwardParams<scalar_t, acc_t>& p,
                                                     const ForwardCtx<acc_t>& x, const V (&pre)[4], int64_t b,
                                                     int64_t row, int64_t j0, int nu, int64_t t, acc_t* hnext) {
  const int64_t H = x.H, P = x.P;
  const V i = sigmoid_v(pre[0]), f = sigmoid_v(pre[1]), g = tanh_v(pre[2]), o = sigmoid_v(pre[3]);
  // Lanes past nu are padding: zero pre-activations and cell state, which stay finite.
  acc_t* cs = x.cst + b * x.Hp + j0;
  const V c = f * loadu<V>(cs) + i * g;
  storeu(cs, c);
  const V h = o * tanh_v(c);
  if (p.save) {
    acc_t* grow = p.gates + row * x.G + j0;
    store_n(grow, i, nu);
    store_n(grow + H, f, nu);
    store_n(grow + 2 * H, g, nu);
    store_n(grow + 3 * H, o, nu);
    store_n(p.cells + row * H + j0, c, nu);
  }
  const bool last = x.steps->last(t, b, p.reverse);
  if (x.proj) {
    storeu(x.hpre + b * x.Hp + j0, h);
  } else {
    store_n(hnext + b * P + j0, h, nu);
    store_n(p.y + row * P + j0, h, nu);
    if (last) store_n(p.h_n + b * P + j0, h, nu);
  }
  if (last) store_n(p.c_n + b * H + j0, c, nu);
  return h;
}

// The LSTM as the generic loops see it (forward.h, gate_tiles.h, gemv.h, backward.h): four gates,
// i f g o, every recurrent product summed with the input projection.
struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr bool kLstm = true;
  static constexpr bool apart(int) { return false; }
  static constexpr int kApartGate = -1;
  template <typename scalar_t, typename acc_t, typename V>
  __attribute__((always_inline)) static V update(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x,
                                                 const V (&pre)[4], int64_t b, int64_t row, int64_t j0, int nu,
                                                 int64_t t, const acc_t*, acc_t* hnext, const V*) {
    return cell_update(p, x, pre, b, row, j0, nu, t, hnext);
  }
};

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
