// The op schemas, declared once. Implementations: lstm_cpu.cpp (CPU), lstm_cuda.cpp (CUDA builds).
// Fake implementations and autograd: lstm_fused/ops.py.
//
// forward: one layer, one direction, whole sequence (see csrc/kernels/lstm.h for the row layout).
//   x [T, B, I] dense, or [N, I] packed rows when batch_sizes ([T] int64 on the CPU) is given;
//   h0 [B, P], c0 [B, H]. Returns y (x.shape[:-1] + [P]), h_n [B, P], c_n [B, H], and when
//   save: gates [N, 4H] (activated i, f, g, o) and cells [N, H] in the accumulation dtype
//   (float32 for half types); without save both are empty ([0]).
// backward: the gradients of forward's inputs from those of y, h_n, c_n. db is [4H] (the grad of
//   b_ih and of b_hh alike) when has_bias, else [0]; dw_hr is [P, H] when w_hr is given, else [0].
// gru_forward / gru_backward: the same for a GRU layer (gates r, z, n; CPU only): w_ih [3H, I],
//   w_hh [3H, H], h0 [B, H]; returns y, h_n and when save gates [N, 3H] (activated r, z, n) and
//   hn [N, H] (h W_hn^T + b_hn); gru_backward returns db_ih and db_hh apart (they differ in n).
// q8_*: int8 inference (CPU only; numerics and packed layout in csrc/kernels/cpu/q8.h).
//   q8_pack: w [gates * units, K] float32 quantized per row and packed: packed int8
//   [ceil(units / 16) * gates, ceil(K / 4), 16, 4], scale float32 and colsum int32 [blocks * 16],
//   shape int64 [units, K].
//   q8_linear: x [..., K] times a packed weight ([packed, scale, colsum, shape], any gates) ->
//   [..., blocks * 16] in the packed column order, plus bias (same order); x quantized per row.
//   q8_forward: one LSTM layer and direction (c0 [B, H] given; w_hr [] or a packed [P, H]) or GRU
//   layer (c0 None; bias_hn [blocks(H) * 16] is b_hn), x and h0 as forward's; bias is b_ih + b_hh
//   in the packed order (GRU's n gate: b_in). Returns y, h_n and c_n ([0] for a GRU).
#include <torch/library.h>

TORCH_LIBRARY(lstm_fused, m) {
  m.def(
      "forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
      "Tensor h0, Tensor c0, Tensor? batch_sizes, bool reverse, bool save) -> "
      "(Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  m.def(
      "backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor w_hh, "
      "Tensor? w_hr, Tensor h0, Tensor c0, Tensor y, Tensor gates, Tensor cells, "
      "Tensor? batch_sizes, bool reverse, bool has_bias) -> "
      "(Tensor dx, Tensor dw_ih, Tensor dw_hh, Tensor db, Tensor dw_hr, Tensor dh0, Tensor dc0)");
  m.def(
      "gru_forward(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor h0, "
      "Tensor? batch_sizes, bool reverse, bool save) -> (Tensor y, Tensor h_n, Tensor gates, Tensor hn)");
  m.def(
      "gru_backward(Tensor grad_y, Tensor grad_hn, Tensor x, Tensor w_ih, Tensor w_hh, Tensor h0, Tensor y, "
      "Tensor gates, Tensor hn, Tensor? batch_sizes, bool reverse, bool has_bias) -> "
      "(Tensor dx, Tensor dw_ih, Tensor dw_hh, Tensor db_ih, Tensor db_hh, Tensor dh0)");
  m.def("q8_pack(Tensor w, int gates) -> (Tensor packed, Tensor scale, Tensor colsum, Tensor shape)");
  m.def("q8_linear(Tensor x, Tensor[] w, Tensor? bias) -> Tensor");
  m.def(
      "q8_forward(Tensor x, Tensor[] w_ih, Tensor[] w_hh, Tensor[] w_hr, Tensor? bias, Tensor? bias_hn, "
      "Tensor h0, Tensor? c0, Tensor? batch_sizes, bool reverse) -> (Tensor y, Tensor h_n, Tensor c_n)");
}
