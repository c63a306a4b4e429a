// CPU implementations of lstm_fused::forward / backward: checks, dtype dispatch, allocation, the
// input-projection GEMM and the weight-gradient GEMMs through ATen; the recurrence in
// kernels/cpu (one call per op, raw pointers only).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/lstm_cpu.h"
#include "ops/common.h"

namespace lstm_fused {
namespace {

// Gate bytes per chunk of the chunked inference path (about half of this machine's L2 + its
// share of L3 for two cores).
constexpr int64_t kChunkGateBytes = int64_t{2} << 20;
// glibc hands out blocks above its mmap threshold as fresh mappings and unmaps them when freed,
// so each call pays a page fault and a zeroed page per 4 KB of them. The threshold follows the
// largest block freed, up to 32 MB: a gate buffer above that is fresh pages on every call
// (B128 T256 I=H=512 inference: 11-15% of our time on a Zen 3, measured by telling glibc to keep
// freed memory). Inference whose gates would pass kFreshGateBytes runs in chunks of
// kKeptGateBytes, which glibc keeps (on that Zen 3: that row 0.89x of the time, B8 T1024 H512
// 0.91x, packed B32 lengths 500-1000 H512 0.92x). The chunks share one pack of W_hh
// (PackedWeights): packed again per chunk, packed B64 lengths 100-400 H1024 (16-step chunks of
// ~630 rows) took 1.12x the time of one GEMM; packed once, 0.95x.
constexpr int64_t kFreshGateBytes = int64_t{32} << 20;
constexpr int64_t kKeptGateBytes = int64_t{16} << 20;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
    const c10::optional<at::Tensor>& batch_sizes, bool reverse, bool save) {
  LSTM_FUSED_NO_AUTOCAST;
  const LayerShape s = check_forward_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes);
  const auto acc = acc_dtype(x.scalar_type());
  // A few steps of small-batch inference (streaming): the kernel does the input projection too,
  // which saves a GEMM call and a buffer per call.
  const bool fuse_input = !save && s.B <= 4 && s.T <= 4;
  // One step of a batch too large for the kernel's in-place path: its recurrent product is one
  // more GEMM added to the gates, so W_hh is not packed for a single use (16 MB at H = 1024).
  const bool step_gemm = s.T == 1 && !fuse_input && x.scalar_type() == acc && !cpu::small_batch_path(s.T, s.B, s.H, s.P, at::elementSize(acc));
  // fp32/fp64 on the register tiles, where they can take it: the tiles multiply x_t by W_ih^T
  // beside h_{t-1} by W_hh^T (at batch 1, a chunk of steps ahead), in place of a GEMM over the
  // whole sequence and its [N, 4H] buffer.
  // bf16 on AMX tiles likewise (x_t W_ih^T beside h_{t-1} W_hh^T, where they fit: amx_takes_input).
  const int threads = threads_for(s.T, s.B, 4 * s.H, s.P);
  const bool tile_input = !fuse_input && !step_gemm &&
                          (x.scalar_type() == acc ? cpu::tiles_take_input(s.T, s.B, s.I, s.H, s.P, at::elementSize(acc), threads)
                                                  : x.scalar_type() == at::kBFloat16 &&
                                                        cpu::amx_takes_input(s.T, s.B, s.I, s.H, s.P, w_hr.has_value()));
  // bf16 inference on AVX512-BF16 tiles: they read the GEMM's bf16 output as it is (unless the
  // GEMM runs in fp32 on widened operands: half_gemm_widened).
  const bool gates_lp = !save && !fuse_input && !tile_input && x.scalar_type() == at::kBFloat16 &&
                        cpu::bf16_tiles_used(s.T, s.B, s.H, s.P, w_hr.has_value()) &&
                        !half_gemm_widened(x.scalar_type());
  // Inference where the gate buffer of the whole sequence would be large: the input projection
  // and the recurrence run in time chunks. With W_hh small the chunks' gates stay in cache
  // (whole, the GEMM is bound by writing the buffer to memory: B=128, T=1024, H=32 writes 67 MB);
  // otherwise past kFreshGateBytes they are blocks glibc keeps between calls. Packed batches too,
  // their chunks of fewer rows as sequences end.
  const at::ScalarType gates_dtype = gates_lp ? x.scalar_type() : acc;
  const int64_t row_gate_bytes = 4 * s.H * at::elementSize(gates_dtype);
  const int64_t step_gate_bytes = s.B * row_gate_bytes;
  const bool small_whh = 4 * s.H * s.P * at::elementSize(acc) <= kChunkGateBytes / 8;
  const int64_t chunk_gate_bytes = small_whh ? kChunkGateBytes : kKeptGateBytes;
  const bool chunked = !save && !fuse_input && !tile_input && s.T > 1 &&
                       (small_whh ? s.N * row_gate_bytes > 4 * kChunkGateBytes
                                  : s.N * row_gate_bytes > kFreshGateBytes);
  // The kernel computes the projection itself (fuse_input, tile_input): gates only receives the
  // activations the backward reads.
  const bool kernel_input = fuse_input || tile_input;
  at::Tensor gates = !(kernel_input || chunked) ? input_projection(x, w_ih, s, gates_dtype)
                     : save ? empty_reused({s.N, 4 * s.H}, x.options().dtype(acc))
                            : at::empty({0}, x.options().dtype(acc));
  if (step_gemm && s.N > 0) gates.add_(matmul_nt(h0.narrow(0, 0, s.N), w_hh));
  const at::Tensor bias = fuse_input ? at::Tensor() : combined_bias(b_ih, b_hh, acc);
  const at::Tensor xc = kernel_input ? x.contiguous() : at::Tensor();
  const at::Tensor wihc = kernel_input ? w_ih.contiguous() : at::Tensor();
  const at::Tensor bihc = fuse_input && b_ih ? b_ih->contiguous() : at::Tensor();
  const at::Tensor bhhc = fuse_input && b_hh ? b_hh->contiguous() : at::Tensor();
  at::Tensor y = empty_reused(output_sizes(x, s.P), x.options());
  at::Tensor h_n = at::empty({s.B, s.P}, x.options());
  at::Tensor c_n = at::empty({s.B, s.H}, x.options());
  at::Tensor cells = save ? empty_reused({s.N, s.H}, x.options().dtype(acc)) : at::empty({0}, x.options().dtype(acc));
  const at::Tensor bs = batch_sizes ? batch_sizes->contiguous() : at::Tensor();
  const at::Tensor whh = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  const at::Tensor whr = w_hr ? w_hr->contiguous() : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_fused_forward_cpu", [&] {
    using kscalar = typename KernelType<scalar_t>::type;
    using kacc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    ForwardParams<kscalar, kacc> p;
    set_layer(p, s, bs, reverse, threads);
    p.recurrent_in_gates = step_gemm;
    if (gates_lp) {
      p.gates_lp = kptr<scalar_t>(gates);
    } else if (gates.numel()) {
      p.gates = gates.mutable_data_ptr<kacc>();
    }
    p.bias = bias.defined() ? bias.const_data_ptr<kacc>() : nullptr;
    p.x = kptr<scalar_t>(xc);
    p.w_ih = kptr<scalar_t>(wihc);
    p.b_ih = kptr<scalar_t>(bihc);
    p.b_hh = kptr<scalar_t>(bhhc);
    p.I = s.I;
    p.w_hh = kptr<scalar_t>(whh);
    p.w_hr = kptr<scalar_t>(whr);
    p.h0 = kptr<scalar_t>(h0c);
    p.c0 = kptr<scalar_t>(c0c);
    p.y = kptr_mut<scalar_t>(y);
    p.h_n = kptr_mut<scalar_t>(h_n);
    p.c_n = kptr_mut<scalar_t>(c_n);
    p.cells = save ? cells.mutable_data_ptr<kacc>() : nullptr;
    p.save = save;
    if (!chunked) {
      cpu::lstm_forward(p);
      return;
    }
    // Chunks in visiting order, the state carried in h_n and c_n: the kernel reads h0 and c0
    // whole before it writes any state, leaves the rows a chunk does not run as they are (finished
    // ones, or in the reverse direction ones not yet started), and writes every row it ran at the
    // chunk's last step. A chunk's steps have at most B rows each (fewer when packed).
    const int64_t tc = std::max<int64_t>(1, chunk_gate_bytes / step_gate_bytes);
    const int64_t nchunks = (s.T + tc - 1) / tc;
    const int64_t* bsp = bs.defined() ? bs.const_data_ptr<int64_t>() : nullptr;
    std::vector<int64_t> off(s.T + 1, 0);  // off[t]: the first row of step t
    for (int64_t t = 0; t < s.T; ++t) off[t + 1] = off[t] + (bsp ? bsp[t] : s.B);
    h_n.copy_(h0c);
    c_n.copy_(c0c);
    p.h0 = p.h_n;
    p.c0 = p.c_n;
    PackedWeights kept;  // W_hh (and W_hr) packed by the first chunk, read by the others
    p.kept = &kept;
    kscalar* y0 = kptr_mut<scalar_t>(y);
    for (int64_t i = 0; i < nchunks; ++i) {
      const int64_t t0 = reverse ? std::max<int64_t>(0, s.T - (i + 1) * tc) : i * tc;
      const int64_t t1 = reverse ? s.T - i * tc : std::min(s.T, (i + 1) * tc);
      LayerShape sc = s;
      sc.T = t1 - t0;
      sc.N = off[t1] - off[t0];
      const at::Tensor xi = bsp ? x.narrow(0, off[t0], sc.N) : x.narrow(0, t0, sc.T);
      at::Tensor g = input_projection(xi, w_ih, sc, gates_dtype);
      p.T = sc.T;
      p.batch_sizes = bsp ? bsp + t0 : nullptr;
      if (gates_lp) {
        p.gates_lp = kptr<scalar_t>(g);
      } else {
        p.gates = g.mutable_data_ptr<kacc>();
      }
      p.y = y0 + off[t0] * s.P;
      cpu::lstm_forward(p);
    }
  });
  if (!save && gates.numel() != 0) gates = at::empty({0}, x.options().dtype(acc));
  return {y, h_n, c_n, gates, cells};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
             const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor& c0,
             const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells,
             const c10::optional<at::Tensor>& batch_sizes, bool reverse, bool has_bias) {
  LSTM_FUSED_NO_AUTOCAST;
  const LayerShape s = check_forward_args(x, w_ih, w_hh, c10::nullopt, c10::nullopt, w_hr, h0, c0, batch_sizes);
  check_backward_args(grad_y, grad_hn, grad_cn, y, gates, cells, s);
  const auto acc = acc_dtype(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc);
  const bool proj = w_hr.has_value();
  at::Tensor dgates = empty_reused({s.N, 4 * s.H}, acc_opts);
  at::Tensor h_prev = empty_reused({s.N, s.P}, acc_opts);
  at::Tensor dh_out = proj ? empty_reused({s.N, s.P}, acc_opts) : at::Tensor();
  at::Tensor h_pre = proj ? empty_reused({s.N, s.H}, acc_opts) : at::Tensor();
  at::Tensor dh0 = at::empty({s.B, s.P}, x.options());
  at::Tensor dc0 = at::empty({s.B, s.H}, x.options());
  const at::Tensor bs = batch_sizes ? batch_sizes->contiguous() : at::Tensor();
  const at::Tensor gy = grad_y.contiguous(), ghn = grad_hn.contiguous(), gcn = grad_cn.contiguous();
  const at::Tensor whh = w_hh.contiguous(), h0c = h0.contiguous(), c0c = c0.contiguous();
  const at::Tensor whr = proj ? w_hr->contiguous() : at::Tensor();
  const at::Tensor yc = y.contiguous(), gc = gates.contiguous(), cc = cells.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "lstm_fused_backward_cpu", [&] {
    using kscalar = typename KernelType<scalar_t>::type;
    using kacc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    BackwardParams<kscalar, kacc> p;
    set_layer(p, s, bs, reverse, threads_for(s.T, s.B, 4 * s.H, s.P));
    p.grad_y = kptr<scalar_t>(gy);
    p.grad_hn = kptr<scalar_t>(ghn);
    p.grad_cn = kptr<scalar_t>(gcn);
    p.w_hh = kptr<scalar_t>(whh);
    p.w_hr = kptr<scalar_t>(whr);
    p.h0 = kptr<scalar_t>(h0c);
    p.c0 = kptr<scalar_t>(c0c);
    p.y = kptr<scalar_t>(yc);
    p.gates = gc.const_data_ptr<kacc>();
    p.cells = cc.const_data_ptr<kacc>();
    p.dgates = dgates.mutable_data_ptr<kacc>();
    p.h_prev = h_prev.mutable_data_ptr<kacc>();
    p.dh_out = proj ? dh_out.mutable_data_ptr<kacc>() : nullptr;
    p.h_pre = proj ? h_pre.mutable_data_ptr<kacc>() : nullptr;
    p.dh0 = kptr_mut<scalar_t>(dh0);
    p.dc0 = kptr_mut<scalar_t>(dc0);
    cpu::lstm_backward(p);
  });
  return weight_gradients(x, w_ih, dgates, h_prev, dh_out, h_pre, dh0, dc0, s, has_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("forward", &forward_cpu);
  m.impl("backward", &backward_cpu);
}

}  // namespace lstm_fused
