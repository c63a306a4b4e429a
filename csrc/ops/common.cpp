#include "ops/common.h"

#include "cpu/lstm_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>

namespace lstm_fused {

at::ScalarType acc_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

namespace {

void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& x,
                  std::initializer_list<int64_t> sizes) {
  TORCH_CHECK(t.defined(), "lstm_fused: ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "lstm_fused: ", name, " has dtype ",
              t.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "lstm_fused: ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.sizes().equals(sizes), "lstm_fused: ", name, " must have shape ",
              c10::IntArrayRef(sizes), ", got ", t.sizes());
}

}  // namespace

LayerShape check_layer_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                            const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor* c0,
                            const c10::optional<at::Tensor>& batch_sizes, int64_t gates) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "lstm_fused: x must be floating point, got ",
              x.scalar_type());
  LayerShape s{};
  s.packed = batch_sizes.has_value();
  TORCH_CHECK(x.dim() == (s.packed ? 2 : 3), "lstm_fused: x must be ",
              s.packed ? "[N, I] (packed rows)" : "[T, B, I]", ", got shape ", x.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) % gates == 0, "lstm_fused: w_ih must be [", gates, "H, I], got ",
              w_ih.sizes());
  s.H = w_ih.size(0) / gates;
  s.I = x.size(-1);
  s.P = w_hr ? w_hr->size(0) : s.H;
  s.B = h0.dim() == 2 ? h0.size(0) : -1;
  check_tensor(w_ih, "w_ih", x, {gates * s.H, s.I});
  check_tensor(w_hh, "w_hh", x, {gates * s.H, s.P});
  if (b_ih) check_tensor(*b_ih, "b_ih", x, {gates * s.H});
  if (b_hh) check_tensor(*b_hh, "b_hh", x, {gates * s.H});
  if (w_hr) check_tensor(*w_hr, "w_hr", x, {s.P, s.H});
  check_tensor(h0, "h0", x, {s.B, s.P});
  if (c0) check_tensor(*c0, "c0", x, {s.B, s.H});
  if (!s.packed) {
    s.T = x.size(0);
    TORCH_CHECK(x.size(1) == s.B, "lstm_fused: x has batch ", x.size(1), " but h0 has ", s.B);
    s.N = s.T * s.B;
    return s;
  }
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1,
              "lstm_fused: batch_sizes must be a 1-D int64 CPU tensor");
  s.T = bs.size(0);
  s.N = x.size(0);
  const at::Tensor bsc = bs.contiguous();
  const int64_t* v = bsc.const_data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < s.T; ++t) {
    TORCH_CHECK(v[t] > 0 && v[t] <= (t ? v[t - 1] : s.B),
                "lstm_fused: batch_sizes must be positive, non-increasing and at most the batch "
                "size of h0, got ", bs);
    total += v[t];
  }
  TORCH_CHECK(total == s.N, "lstm_fused: batch_sizes sum to ", total, " but x has ", s.N, " rows");
  return s;
}

LayerShape check_forward_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh,
                              const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                              const at::Tensor& c0, const c10::optional<at::Tensor>& batch_sizes) {
  return check_layer_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, &c0, batch_sizes, 4);
}

void check_backward_args(const at::Tensor& grad_y, const at::Tensor& grad_hn,
                         const at::Tensor& grad_cn, const at::Tensor& y, const at::Tensor& gates,
                         const at::Tensor& cells, const LayerShape& s) {
  TORCH_CHECK(gates.numel() == s.N * 4 * s.H && cells.numel() == s.N * s.H,
              "lstm_fused: backward needs the activations saved by forward(save=True)");
  TORCH_CHECK(grad_y.numel() == s.N * s.P && y.numel() == s.N * s.P,
              "lstm_fused: grad_y and y must have ", s.N * s.P, " elements");
  TORCH_CHECK(grad_hn.numel() == s.B * s.P && grad_cn.numel() == s.B * s.H,
              "lstm_fused: grad_hn/grad_cn must be [B, P]/[B, H]");
  TORCH_CHECK(grad_y.scalar_type() == y.scalar_type() && grad_hn.scalar_type() == y.scalar_type() &&
                  grad_cn.scalar_type() == y.scalar_type(),
              "lstm_fused: gradients must have the dtype of y");
}

std::vector<int64_t> output_sizes(const at::Tensor& x, int64_t P) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = P;
  return sizes;
}

namespace {

// Whether torch's oneDNN takes half-type GEMMs on this CPU (mkldnn::_is_mkldnn_bf16_supported /
// _fp16_supported: AVX-512 or AVX2 with the VNNI-2 / NE-convert extensions). Without them
// oneDNN fails to create the primitive (an AVX2-only Zen 3, say) and at::mm must do it.
bool onednn_takes(at::ScalarType t) {
  auto ask = [](const char* name) {
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    if (!op) return false;
    std::vector<c10::IValue> stack;
    op->callBoxed(&stack);
    return stack.at(0).toBool();
  };
  static const bool bf16 = ask("mkldnn::_is_mkldnn_bf16_supported");
  static const bool fp16 = ask("mkldnn::_is_mkldnn_fp16_supported");
  return t == at::kFloat || (t == at::kBFloat16 && bf16) || (t == at::kHalf && fp16);
}

// x [N, K] times w [M, K]^T through oneDNN's matmul (mkldnn::_linear_pointwise, registered by
// x86 builds of torch): measured 20-30% faster than at::mm's MKL sgemm for these tall-skinny
// shapes on this project's CPUs. Returns an undefined tensor where the op is absent or the dtype
// is one oneDNN does not take (float64; half types on CPUs without their instructions).
at::Tensor onednn_matmul_nt(const at::Tensor& x, const at::Tensor& w) {
  static const std::optional<c10::OperatorHandle> op =
      c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  if (!op || !x.is_cpu() || !onednn_takes(x.scalar_type())) return {};
  std::vector<c10::IValue> stack{x.contiguous(), w.contiguous(), c10::IValue(), std::string("none"),
                                 c10::List<std::optional<c10::Scalar>>(), std::string("")};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

bool half_gemm_widened(at::ScalarType t) {
  return !onednn_takes(t) || (t == at::kBFloat16 && cpu::bf16_gemm_below_fp32());
}

at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih, const LayerShape& s,
                            at::ScalarType acc) {
  // Half types: the GEMM runs in the input dtype (fp32 accumulation inside the BLAS, twice the
  // fp32 rate where the CPU has fast bf16 dot products: a Zen 4, AMX), its output widened to acc.
  // Where oneDNN cannot take the half type, at::mm's own bf16 GEMM runs at ~1 GFLOP/s (an AVX2
  // Zen 3: 1.2 against 108 for fp32 at n = 512), and where it takes bf16 at half the fp32 rate
  // (Intel without AMX), the operands are widened first and the GEMM runs in acc
  // (half_gemm_widened), which computes the same products with fp32 sums and skips the output's
  // rounding to bf16.
  const at::Tensor x2 = x.reshape({s.N, s.I});
  if (x.is_cpu() && x.scalar_type() != acc && half_gemm_widened(x.scalar_type()))
    return matmul_nt(x2.to(acc), w_ih.to(acc));
  return matmul_nt(x2, w_ih).to(acc);
}

at::Tensor matmul_nt(const at::Tensor& a, const at::Tensor& w) {
  at::Tensor r = a.size(0) > 0 ? onednn_matmul_nt(a, w) : at::Tensor();
  return r.defined() ? r : at::mm(a, w.t());
}

at::Tensor combined_bias(const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                         at::ScalarType acc) {
  at::Tensor bias;
  if (b_ih) bias = b_ih->to(acc);
  if (b_hh) bias = bias.defined() ? bias + b_hh->to(acc) : b_hh->to(acc);
  return bias.defined() ? bias.contiguous() : bias;
}

at::Tensor input_gradient(const at::Tensor& dgates, const at::Tensor& w_ih, const at::Tensor& x) {
  const at::Tensor w_ih_acc = w_ih.to(dgates.scalar_type());
  at::Tensor dx = dgates.size(0) > 0 ? onednn_matmul_nt(dgates, w_ih_acc.t()) : at::Tensor();
  if (!dx.defined()) dx = at::mm(dgates, w_ih_acc);
  return dx.to(x.scalar_type()).view(x.sizes());
}

int threads_for(int64_t T, int64_t rows, int64_t G, int64_t P) {
  const int64_t per_step = std::max<int64_t>(rows, 1) * G * P;
  // Inside a parallel region (forward_pair: one direction per thread) the call has its thread.
  if (at::in_parallel_region()) return 1;
  return (per_step < (1 << 15) || T * per_step < (1 << 16)) ? 1 : at::get_num_threads();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
weight_gradients(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& dgates,
                 const at::Tensor& h_prev, const at::Tensor& dh_out, const at::Tensor& h_pre,
                 const at::Tensor& dh0, const at::Tensor& dc0, const LayerShape& s, bool has_bias) {
  const auto dtype = x.scalar_type();
  const at::Tensor x2 = x.reshape({s.N, s.I}).to(dgates.scalar_type());
  at::Tensor dx = input_gradient(dgates, w_ih, x);
  at::Tensor dw_ih = at::mm(dgates.t(), x2).to(dtype);
  at::Tensor dw_hh = at::mm(dgates.t(), h_prev).to(dtype);
  at::Tensor db = has_bias ? dgates.sum(0).to(dtype) : at::empty({0}, x.options());
  at::Tensor dw_hr = dh_out.defined() ? at::mm(dh_out.t(), h_pre).to(dtype) : at::empty({0}, x.options());
  return {dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0};
}

}  // namespace lstm_fused
