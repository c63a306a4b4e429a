// CPU implementations of lstm_fused::gru_forward / gru_backward: checks, dtype dispatch,
// allocation, the input-projection GEMM and the weight-gradient GEMMs through ATen; the recurrence
// in kernels/cpu (the LSTM's loops with the GRU cell: cpu::gru_forward / gru_backward).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/lstm_cpu.h"
#include "ops/common.h"

namespace lstm_fused {
namespace {

LayerShape check_gru_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                          const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                          const at::Tensor& h0, const c10::optional<at::Tensor>& batch_sizes) {
  return check_layer_args(x, w_ih, w_hh, b_ih, b_hh, c10::nullopt, h0, nullptr, batch_sizes, 3);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0, const c10::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save) {
  LSTM_FUSED_NO_AUTOCAST;
  const LayerShape s = check_gru_args(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes);
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc);
  const int64_t H = s.H;
  // A few steps of small-batch inference (streaming): the kernel does the input projection too,
  // as the LSTM's does, which saves a GEMM call and a buffer per call. Otherwise x W_ih^T over
  // every row. The kernel reads b_ih and b_hh as they are (b_hn apart from b_in: r multiplies it).
  const bool fuse_input = !save && s.B <= 4 && s.T <= 4;
  // fp32/fp64 on the register tiles where they take the input, as the LSTM's (tiles_take_input,
  // with the LSTM's four gates of weights: a little on the safe side), from 4 rows: a GRU has no
  // batch-1 lookahead, and a tile of one row would do one FMA per W_ih vector.
  const int threads = threads_for(s.T, s.B, 3 * H, H);
  const bool tile_input = !fuse_input && s.B >= 4 && x.scalar_type() == acc &&
                          cpu::tiles_take_input(s.T, s.B, s.I, H, H, at::elementSize(acc), threads);
  const bool kernel_input = fuse_input || tile_input;
  at::Tensor gates = !kernel_input ? input_projection(x, w_ih, s, acc)
                     : save        ? empty_reused({s.N, 3 * H}, acc_opts)
                                   : at::Tensor();
  const at::Tensor xc = kernel_input ? x.contiguous() : at::Tensor();
  const at::Tensor wihc = kernel_input ? w_ih.contiguous() : at::Tensor();
  const at::Tensor bihc = b_ih ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bhhc = b_hh ? b_hh->contiguous() : at::Tensor();
  at::Tensor y = empty_reused(output_sizes(x, H), x.options());
  at::Tensor h_n = at::empty({s.B, H}, x.options());
  at::Tensor hn = save ? empty_reused({s.N, H}, acc_opts) : at::empty({0}, acc_opts);
  const at::Tensor bs = batch_sizes ? batch_sizes->contiguous() : at::Tensor();
  const at::Tensor whh = w_hh.contiguous(), h0c = h0.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_fused_gru_forward_cpu", [&] {
    using kscalar = typename KernelType<scalar_t>::type;
    using kacc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ForwardParams<kscalar, kacc> p;
    set_layer(p, s, bs, reverse, threads);  // s.P == H: no projection
    p.gates = gates.defined() && gates.numel() ? gates.mutable_data_ptr<kacc>() : nullptr;
    p.x = kptr<scalar_t>(xc);
    p.w_ih = kptr<scalar_t>(wihc);
    p.I = s.I;
    p.b_ih = kptr<scalar_t>(bihc);
    p.b_hh = kptr<scalar_t>(bhhc);
    p.w_hh = kptr<scalar_t>(whh);
    p.h0 = kptr<scalar_t>(h0c);
    p.y = kptr_mut<scalar_t>(y);
    p.h_n = kptr_mut<scalar_t>(h_n);
    p.cells = save ? hn.mutable_data_ptr<kacc>() : nullptr;
    p.save = save;
    cpu::gru_forward(p);
  });
  if (!save) gates = at::empty({0}, acc_opts);  // (as forward's: nothing of it is for the caller)
  return {y, h_n, gates, hn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& x, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& y, const at::Tensor& gates,
    const at::Tensor& hn, const c10::optional<at::Tensor>& batch_sizes, bool reverse, bool has_bias) {
  LSTM_FUSED_NO_AUTOCAST;
  const LayerShape s = check_gru_args(x, w_ih, w_hh, c10::nullopt, c10::nullopt, h0, batch_sizes);
  const int64_t H = s.H;
  TORCH_CHECK(gates.numel() == s.N * 3 * H && hn.numel() == s.N * H,
              "lstm_fused: gru_backward needs the activations saved by gru_forward(save=True)");
  TORCH_CHECK(grad_y.numel() == s.N * H && y.numel() == s.N * H, "lstm_fused: grad_y and y must have ", s.N * H,
              " elements");
  TORCH_CHECK(grad_hn.numel() == s.B * H, "lstm_fused: grad_hn must be [B, H]");
  TORCH_CHECK(grad_y.scalar_type() == y.scalar_type() && grad_hn.scalar_type() == y.scalar_type(),
              "lstm_fused: gradients must have the dtype of y");
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc);
  at::Tensor dgates = empty_reused({s.N, 3 * H}, acc_opts);
  at::Tensor dgates_x = empty_reused({s.N, 3 * H}, acc_opts);
  at::Tensor h_prev = empty_reused({s.N, H}, acc_opts);
  at::Tensor dh0 = at::empty({s.B, H}, x.options());
  const at::Tensor bs = batch_sizes ? batch_sizes->contiguous() : at::Tensor();
  const at::Tensor gy = grad_y.contiguous(), ghn = grad_hn.contiguous();
  const at::Tensor whh = w_hh.contiguous(), h0c = h0.contiguous();
  const at::Tensor yc = y.contiguous(), gc = gates.contiguous(), hc = hn.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_fused_gru_backward_cpu", [&] {
    using kscalar = typename KernelType<scalar_t>::type;
    using kacc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    BackwardParams<kscalar, kacc> p;
    set_layer(p, s, bs, reverse, threads_for(s.T, s.B, 3 * H, H));  // s.P == H: no projection
    p.grad_y = kptr<scalar_t>(gy);
    p.grad_hn = kptr<scalar_t>(ghn);
    p.w_hh = kptr<scalar_t>(whh);
    p.h0 = kptr<scalar_t>(h0c);
    p.y = kptr<scalar_t>(yc);
    p.gates = gc.const_data_ptr<kacc>();
    p.cells = hc.const_data_ptr<kacc>();
    p.dgates = dgates.mutable_data_ptr<kacc>();
    p.dgates_x = dgates_x.mutable_data_ptr<kacc>();
    p.h_prev = h_prev.mutable_data_ptr<kacc>();
    p.dh0 = kptr_mut<scalar_t>(dh0);
    cpu::gru_backward(p);
  });
  const auto dtype = x.scalar_type();
  at::Tensor dx = input_gradient(dgates_x, w_ih, x);
  at::Tensor dw_ih = at::mm(dgates_x.t(), x.reshape({s.N, s.I}).to(acc)).to(dtype);
  at::Tensor dw_hh = at::mm(dgates.t(), h_prev).to(dtype);
  at::Tensor db_ih = has_bias ? dgates_x.sum(0).to(dtype) : at::empty({0}, x.options());
  at::Tensor db_hh = has_bias ? dgates.sum(0).to(dtype) : at::empty({0}, x.options());
  return {dx, dw_ih, dw_hh, db_ih, db_hh, dh0};
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("gru_forward", &gru_forward_cpu);
  m.impl("gru_backward", &gru_backward_cpu);
}

}  // namespace lstm_fused
