// The GRU cell as the generic forward loops see it (GruCell): three gates r, z, n in torch.nn.GRU's
// order, where n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)) keeps its recurrent product
// apart from the input projection, and h' = n + z (h - n). Its backward step is gru_cell_backward,
// called from backward()'s step loop.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/lstm_cell.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// ForwardParams for a GRU: gates [N, 3H] holds x W_ih^T (the input projection, unless x is set:
// the small-batch path or the register tiles then compute it, n's input sum apart), and b_ih and b_hh [3H] are read as they are (bias and
// bias_hn are not read: the tiles add the biases, which saves the caller the ops that would
// combine them, a fifth of a streaming step); with save, gates is overwritten with r, z and n,
// and cells [N, H] receives h W_hn^T + b_hn, which the backward needs for dr. No c0 / c_n, no
// projection (P == H).
struct GruCell {
  static constexpr int kGates = 3;
  static constexpr bool kLstm = false;
  // The n gate's recurrent product: the tiles start it from b_hn and leave x W_in^T out of it.
  static constexpr bool apart(int g) { return g == kApartGate; }
  static constexpr int kApartGate = 2;
  // What gate g's sum starts from beside its products: b_i + b_h for r and z, b_hn for n.
  template <typename V, typename scalar_t, typename acc_t>
  static V bias(const ForwardParams<scalar_t, acc_t>& p, int g, int64_t j0, int nu) {
    const int64_t o = g * p.H + j0;
    V b = p.b_hh ? load_any_n<V>(p.b_hh + o, nu) : V{};
    if (!apart(g) && p.b_ih) b = load_any_n<V>(p.b_ih + o, nu) + b;
    return b;
  }
  // One row and one block of U units: pre holds the r and z pre-activations and h W_hn^T + b_hn;
  // hcur is h_{t-1} (every row's, [B, H]); xin is x W_in^T + b_in where the caller summed it,
  // else nullptr (read from gates). Lanes past nu are padding: zero inputs, finite results.
  template <typename scalar_t, typename acc_t, typename V>
  __attribute__((always_inline)) static V update(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x,
                                                 const V (&pre)[3], int64_t b, int64_t row, int64_t j0, int nu,
                                                 int64_t t, const acc_t* hcur, acc_t* hnext, const V* xin) {
    const int64_t H = x.H;
    acc_t* grow = p.gates ? p.gates + row * x.G + j0 : nullptr;
    const V r = sigmoid_v(pre[0]), z = sigmoid_v(pre[1]);
    const V xn = xin ? *xin
                     : load_n<V>(grow + 2 * H, nu) + (p.b_ih ? load_any_n<V>(p.b_ih + 2 * H + j0, nu) : V{});
    const V n = tanh_v(xn + r * pre[2]);
    const V hp = load_n<V>(hcur + b * H + j0, nu);
    const V h = n + z * (hp - n);
    if (p.save) {  // after the read of x W_in^T above: the same lanes of the same buffer
      store_n(grow, r, nu);
      store_n(grow + H, z, nu);
      store_n(grow + 2 * H, n, nu);
      store_n(p.cells + row * H + j0, pre[2], nu);
    }
    store_n(hnext + b * H + j0, h, nu);
    store_n(p.y + row * H + j0, h, nu);
    if (x.steps->last(t, b, p.reverse)) store_n(p.h_n + b * H + j0, h, nu);
    return h;
  }
};

// The GRU's backward step for row `row` (sequence b) and units [j, j + n): from dh (dL/dh_t, the
// output's gradient and the later step's), the saved r, z, n and h W_hn^T + b_hn, and h_{t-1}:
// dgates (the recurrent side: dr, dz, d(h W_hn^T + b_hn) = dn r) for dh_{t-1}'s product and
// dW_hh, dgates_x (the input side: dr, dz, dn) for dx and dW_ih, and carry = dh z, the part of
// dh_{t-1} that bypasses W_hh.
template <typename V, typename acc_t>
__attribute__((always_inline)) inline void gru_cell_backward(V dh, const acc_t* gr, const acc_t* hnr, V hp, int64_t H,
                                                             int64_t j, int n, acc_t* dg, acc_t* dgx, acc_t* carry) {
  const V r = load_n<V>(gr + j, n), z = load_n<V>(gr + H + j, n), nv = load_n<V>(gr + 2 * H + j, n);
  const V hn = load_n<V>(hnr + j, n);
  const V dn = dh * (acc_t(1) - z) * (acc_t(1) - nv * nv);
  const V dz = dh * (hp - nv) * z * (acc_t(1) - z);
  const V dr = dn * hn * r * (acc_t(1) - r);
  store_n(dg + j, dr, n);
  store_n(dg + H + j, dz, n);
  store_n(dg + 2 * H + j, dn * r, n);
  store_n(dgx + j, dr, n);
  store_n(dgx + H + j, dz, n);
  store_n(dgx + 2 * H + j, dn, n);
  store_n(carry + j, dh * z, n);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
