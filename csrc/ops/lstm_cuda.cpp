// CUDA implementations of lstm_fused::forward / lstm_fused::backward (schemas in schemas.cpp).
//
// The input projection and the weight gradients are GEMMs over all rows through ATen (cuBLAS); the
// recurrence is one persistent cooperative kernel (kernels/cuda/forward_persistent.cu,
// backward_persistent.cu) where W_hh fits on chip and the batch is small, else a per-step cuBLAS
// GEMM plus a fused pointwise kernel (kernels/cuda/pointwise.cu); float64 always takes the latter.
// Everything runs on the current stream with no host synchronization, so the ops can be captured
// in a CUDA graph (for packed input the row offsets go to the device through pinned memory).
//
// LSTM_FUSED_CUDA_PATH=persistent|fallback forces a path (tests use it to cover both).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "kernels/cuda/lstm_cuda.h"
#include "ops/common.h"

namespace lstm_fused {
namespace {

using cuda::Scalar;
using Tensor = at::Tensor;
using OptTensor = c10::optional<at::Tensor>;

template <typename T> struct KindOf;
template <> struct KindOf<float> { static constexpr Scalar value = Scalar::kFloat32; };
template <> struct KindOf<double> { static constexpr Scalar value = Scalar::kFloat64; };
template <> struct KindOf<at::Half> { static constexpr Scalar value = Scalar::kFloat16; };
template <> struct KindOf<at::BFloat16> { static constexpr Scalar value = Scalar::kBFloat16; };

Scalar kind_of(at::ScalarType t) {
  Scalar k = Scalar::kFloat32;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "lstm_fused_cuda",
                                  [&] { k = KindOf<scalar_t>::value; });
  return k;
}

enum class Path { kAuto, kPersistent, kFallback };

Path forced_path() {
  const char* e = std::getenv("LSTM_FUSED_CUDA_PATH");
  if (e == nullptr) return Path::kAuto;
  if (std::strcmp(e, "persistent") == 0) return Path::kPersistent;
  if (std::strcmp(e, "fallback") == 0) return Path::kFallback;
  return Path::kAuto;
}

// The largest batch for which the persistent kernels beat a per-step cuBLAS GEMM (they compute
// with FFMA; beyond this the GEMM's tensor cores win).
int64_t persistent_batch_limit(Path path) { return path == Path::kPersistent ? INT64_MAX : 64; }

// Experiment switches for the persistent kernels (see ForwardArgs::tuning and ::min_units):
// LSTM_FUSED_CUDA_TUNING (forward), LSTM_FUSED_CUDA_BWD_TUNING (backward) and
// LSTM_FUSED_CUDA_UNITS; unset, the measured defaults apply.
int env_int(const char* name, int otherwise) {
  const char* e = std::getenv(name);
  return e ? std::atoi(e) : otherwise;
}

void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, "lstm_fused: ", what, " failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(err)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Host row offsets [T+1] of the visited layout (off(t) as in kernels/lstm.h).
std::vector<int64_t> host_offsets(const OptTensor& batch_sizes, const LayerShape& s) {
  std::vector<int64_t> off(s.T + 1);
  if (batch_sizes) {
    const Tensor bs = batch_sizes->contiguous();
    const int64_t* v = bs.const_data_ptr<int64_t>();
    off[0] = 0;
    for (int64_t t = 0; t < s.T; ++t) off[t + 1] = off[t] + v[t];
  } else {
    for (int64_t t = 0; t <= s.T; ++t) off[t] = t * s.B;
  }
  return off;
}

// The offsets on the device (packed input only): copied from pinned memory without a host sync.
Tensor device_offsets(const std::vector<int64_t>& off, const at::Device& dev) {
  Tensor pinned = at::empty({static_cast<int64_t>(off.size())},
                            at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(pinned.data_ptr<int64_t>(), off.data(), off.size() * sizeof(int64_t));
  return pinned.to(dev, at::kLong, /*non_blocking=*/true);
}

// [N, 4H] in the accumulation dtype: x W_ih^T, plus b_ih + b_hh when `add_bias` (the persistent
// and cluster kernels add the biases themselves: one op instead of up to four, each ~20 us of host
// time on the H100 machine, which bounds single-step calls). Half types multiply on the tensor
// cores in their own dtype with fp32 accumulation and output (and the biases added in fp32).
Tensor input_projection_cuda(const Tensor& x, const Tensor& w_ih, const OptTensor& b_ih,
                             const OptTensor& b_hh, const LayerShape& s, at::ScalarType acc,
                             bool add_bias) {
  const Tensor x2 = x.reshape({s.N, s.I});
  Tensor bias;
  if (add_bias && b_ih) bias = b_ih->to(acc);
  if (add_bias && b_hh) bias = bias.defined() ? bias + b_hh->to(acc) : b_hh->to(acc);
  if (acc == x.scalar_type()) {
    return bias.defined() ? at::addmm(bias, x2, w_ih.t()) : at::mm(x2, w_ih.t());
  }
  Tensor g = at::mm(x2, w_ih.t(), acc);
  return bias.defined() ? g.add_(bias) : g;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> forward_cuda(
    const Tensor& x_in, const Tensor& w_ih_in, const Tensor& w_hh_in, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& w_hr_in, const Tensor& h0_in, const Tensor& c0_in,
    const OptTensor& batch_sizes, bool reverse, bool save) {
  TORCH_CHECK(x_in.is_cuda(), "lstm_fused: the CUDA forward got x on ", x_in.device());
  LSTM_FUSED_NO_AUTOCAST;
  const c10::cuda::CUDAGuard guard(x_in.device());
  const LayerShape s =
      check_forward_args(x_in, w_ih_in, w_hh_in, b_ih, b_hh, w_hr_in, h0_in, c0_in, batch_sizes);
  const auto dtype = x_in.scalar_type();
  const auto acc = acc_dtype(dtype);
  const Scalar kind = kind_of(dtype);
  const Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous();
  const Tensor w_hr = w_hr_in ? w_hr_in->contiguous() : Tensor();
  const Tensor b_ih_c = b_ih ? b_ih->contiguous() : Tensor(), b_hh_c = b_hh ? b_hh->contiguous() : Tensor();
  const bool proj = w_hr.defined();

  const bool empty_input = s.T == 0 || s.N == 0;
  const std::vector<int64_t> off = empty_input ? std::vector<int64_t>{0, 0} : host_offsets(batch_sizes, s);
  const int64_t max_bs = off[1] - off[0];
  const Path path = forced_path();

  cuda::ForwardArgs a;
  a.T = s.T;
  a.B = s.B;
  a.H = s.H;
  a.P = s.P;
  a.max_bs = max_bs;
  a.reverse = reverse;
  a.save = save;
  a.tuning = env_int("LSTM_FUSED_CUDA_TUNING", a.tuning);
  a.min_units = env_int("LSTM_FUSED_CUDA_UNITS", a.min_units);
  a.w_hr = proj ? w_hr.data_ptr() : nullptr;  // the plans differ with a projection
  // The kernel that runs the recurrence: the cluster kernel (half types with a small W_hh and
  // batch, sm_90; tuning bit 8 turns it off, for comparisons), the grid-wide persistent kernel, or
  // (grid 0) the per-step fallback below.
  const bool kernels = !empty_input && kind != Scalar::kFloat64 && path != Path::kFallback;
  const bool cluster = kernels && (a.tuning & 256) == 0 && cuda::forward_cluster_plan(a, kind) > 0;
  const int grid =
      kernels && !cluster ? cuda::forward_persistent_plan(a, kind, persistent_batch_limit(path)) : 0;
  const bool fused_bias = cluster || grid > 0;

  Tensor gates = input_projection_cuda(x, w_ih, b_ih, b_hh, s, acc, !fused_bias).contiguous();
  Tensor y = at::empty(output_sizes(x, s.P), x.options());
  Tensor h_n = at::empty({s.B, s.P}, x.options());
  Tensor c_n = at::empty({s.B, s.H}, x.options());
  Tensor cells = save ? at::empty({s.N, s.H}, x.options().dtype(acc)) : at::empty({0}, x.options().dtype(acc));
  Tensor saved_gates = save ? gates : at::empty({0}, x.options().dtype(acc));
  if (empty_input) {
    h_n.copy_(h0);
    c_n.copy_(c0);
    return {y, h_n, c_n, saved_gates, cells};
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (fused_bias) {
    a.gates = gates.data_ptr<float>();
    a.b_ih = b_ih_c.defined() ? b_ih_c.data_ptr() : nullptr;
    a.b_hh = b_hh_c.defined() ? b_hh_c.data_ptr() : nullptr;
    a.cells = save ? cells.data_ptr<float>() : nullptr;
    a.w_hh = w_hh.data_ptr();
    a.h0 = h0.data_ptr();
    a.c0 = c0.data_ptr();
    a.y = y.data_ptr();
    a.h_n = h_n.data_ptr();
    a.c_n = c_n.data_ptr();
    const Tensor offsets = batch_sizes ? device_offsets(off, x.device()) : Tensor();
    a.offsets = offsets.defined() ? offsets.data_ptr<int64_t>() : nullptr;
    if (cluster) {
      check_launch(cuda::forward_cluster(a, kind, stream), "forward_cluster");
      return {y, h_n, c_n, saved_gates, cells};
    }
    const Tensor h_pre = proj ? at::empty({2, s.B, s.H}, x.options().dtype(at::kFloat)) : Tensor();
    // Step flags (not needed with grid.sync, the measured default of the forward).
    const bool use_flags = (a.tuning & 3) != 2;
    const Tensor flags = use_flags ? at::zeros({2 * grid}, x.options().dtype(at::kInt)) : Tensor();
    a.h_pre = proj ? h_pre.data_ptr<float>() : nullptr;
    a.flags = use_flags ? reinterpret_cast<unsigned*>(flags.data_ptr<int32_t>()) : nullptr;
    check_launch(cuda::forward_persistent(a, kind, stream), "forward_persistent");
    return {y, h_n, c_n, saved_gates, cells};
  }

  // Fallback: one cuBLAS GEMM and one pointwise kernel per step (two GEMMs with a projection).
  Tensor h_state = h0.clone();
  Tensor c_state = c0.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor h_pre = proj ? at::empty({s.B, s.H}, x.options()) : Tensor();
  const Tensor y2 = y.view({s.N, s.P});
  const Tensor w_hh_t = w_hh.t();
  const Tensor w_hr_t = proj ? w_hr.t() : Tensor();
  for (int64_t i = 0; i < s.T; ++i) {
    const int64_t t = reverse ? s.T - 1 - i : i;
    const int64_t bs = off[t + 1] - off[t];
    const Tensor rec = at::mm(h_state.narrow(0, 0, bs), w_hh_t);
    cuda::FallbackForwardStep f;
    f.H = s.H;
    f.P = s.P;
    f.step.off = off[t];
    f.step.bs = bs;
    f.save = save;
    f.proj = proj;
    f.gates = gates.data_ptr();
    f.rec = rec.data_ptr();
    f.cells = save ? cells.data_ptr() : nullptr;
    f.c_state = c_state.data_ptr();
    f.h_state = h_state.data_ptr();
    f.y = y.data_ptr();
    f.h_pre_out = proj ? h_pre.data_ptr() : nullptr;
    check_launch(cuda::fallback_forward_step(f, kind, stream), "fallback_forward_step");
    if (proj) {
      Tensor rows = y2.narrow(0, off[t], bs);
      at::mm_out(rows, h_pre.narrow(0, 0, bs), w_hr_t);
      h_state.narrow(0, 0, bs).copy_(rows);
    }
  }
  h_n.copy_(h_state);
  c_n.copy_(c_state);
  return {y, h_n, c_n, saved_gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_cuda(
    const Tensor& grad_y_in, const Tensor& grad_hn_in, const Tensor& grad_cn_in,
    const Tensor& x_in, const Tensor& w_ih_in, const Tensor& w_hh_in, const OptTensor& w_hr_in,
    const Tensor& h0_in, const Tensor& c0_in, const Tensor& y_in, const Tensor& gates_in,
    const Tensor& cells_in, const OptTensor& batch_sizes, bool reverse, bool has_bias) {
  TORCH_CHECK(x_in.is_cuda(), "lstm_fused: the CUDA backward got x on ", x_in.device());
  LSTM_FUSED_NO_AUTOCAST;
  const c10::cuda::CUDAGuard guard(x_in.device());
  const LayerShape s = check_forward_args(x_in, w_ih_in, w_hh_in, c10::nullopt, c10::nullopt,
                                          w_hr_in, h0_in, c0_in, batch_sizes);
  check_backward_args(grad_y_in, grad_hn_in, grad_cn_in, y_in, gates_in, cells_in, s);
  const auto dtype = x_in.scalar_type();
  const auto acc = acc_dtype(dtype);
  const Scalar kind = kind_of(dtype);
  const Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), w_hh = w_hh_in.contiguous();
  const Tensor h0 = h0_in.contiguous(), c0 = c0_in.contiguous(), y = y_in.contiguous();
  const Tensor grad_y = grad_y_in.contiguous(), grad_hn = grad_hn_in.contiguous(),
               grad_cn = grad_cn_in.contiguous();
  const Tensor gates = gates_in.contiguous(), cells = cells_in.contiguous();
  const Tensor w_hr = w_hr_in ? w_hr_in->contiguous() : Tensor();
  const bool proj = w_hr.defined();
  const auto acc_opts = x.options().dtype(acc);

  Tensor dgates;  // input dtype from the persistent kernel, accumulation dtype from the fallback
  Tensor h_prev = at::empty({s.N, s.P}, x.options());
  Tensor dh_out = proj ? at::empty({s.N, s.P}, acc_opts) : Tensor();
  Tensor h_pre = proj ? at::empty({s.N, s.H}, acc_opts) : Tensor();
  Tensor dh0 = at::empty({s.B, s.P}, x.options());
  Tensor dc0 = at::empty({s.B, s.H}, x.options());

  if (s.T == 0 || s.N == 0) {
    dgates = at::empty({s.N, 4 * s.H}, acc_opts);
    dh0.copy_(grad_hn);
    dc0.copy_(grad_cn);
  } else {
    const std::vector<int64_t> off = host_offsets(batch_sizes, s);
    const int64_t max_bs = off[1] - off[0];
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    const Path path = forced_path();
    bool done = false;
    if (kind != Scalar::kFloat64 && path != Path::kFallback) {
      cuda::BackwardArgs a;
      a.T = s.T;
      a.B = s.B;
      a.H = s.H;
      a.P = s.P;
      a.max_bs = max_bs;
      a.reverse = reverse;
      a.tuning = env_int("LSTM_FUSED_CUDA_BWD_TUNING", a.tuning);
      a.min_units = env_int("LSTM_FUSED_CUDA_UNITS", a.min_units);
      a.grad_y = grad_y.data_ptr();
      a.grad_hn = grad_hn.data_ptr();
      a.grad_cn = grad_cn.data_ptr();
      a.w_hh = w_hh.data_ptr();
      a.w_hr = proj ? w_hr.data_ptr() : nullptr;
      a.h0 = h0.data_ptr();
      a.c0 = c0.data_ptr();
      a.y = y.data_ptr();
      a.gates = gates.data_ptr<float>();
      a.cells = cells.data_ptr<float>();
      a.h_prev = h_prev.data_ptr();
      a.dh_out = proj ? dh_out.data_ptr<float>() : nullptr;
      a.h_pre = proj ? h_pre.data_ptr<float>() : nullptr;
      a.dh0 = dh0.data_ptr();
      a.dc0 = dc0.data_ptr();
      // float32 backward does FFMA over K = 4H per step: past about B*H = 32K the per-step cuBLAS
      // GEMM of the fallback wins (H100: B32 H1024 69 ms persistent vs 53 ms fallback).
      const bool fp32_heavy = kind == Scalar::kFloat32 && max_bs * s.H >= 32768;
      const int grid = (path == Path::kAuto && fp32_heavy)
                           ? 0
                           : cuda::backward_persistent_plan(a, kind, persistent_batch_limit(path));
      if (grid > 0) {
        const Tensor offsets = batch_sizes ? device_offsets(off, x.device()) : Tensor();
        const Tensor flags = at::zeros({2 * grid}, x.options().dtype(at::kInt));
        a.offsets = offsets.defined() ? offsets.data_ptr<int64_t>() : nullptr;
        a.flags = reinterpret_cast<unsigned*>(flags.data_ptr<int32_t>());
        dgates = at::empty({s.N, 4 * s.H}, x.options());
        a.dgates = dgates.data_ptr();
        check_launch(cuda::backward_persistent(a, kind, stream), "backward_persistent");
        done = true;
      }
    }
    if (!done) {
      // Fallback: per visited step a pointwise kernel and the GEMM dh_{t-1} = dgates_t W_hh,
      // in the accumulation dtype.
      dgates = at::empty({s.N, 4 * s.H}, acc_opts);
      Tensor dh_rec = grad_hn.to(acc, false, /*copy=*/true);
      Tensor dc_state = grad_cn.to(acc, false, /*copy=*/true);
      const Tensor w_hh_a = w_hh.to(acc);
      const Tensor w_hr_a = proj ? w_hr.to(acc) : Tensor();
      const Tensor grad_y2 = grad_y.view({s.N, s.P});
      for (int64_t i = 0; i < s.T; ++i) {
        const int64_t t = reverse ? i : s.T - 1 - i;
        const int64_t bs = off[t + 1] - off[t];
        const int64_t pred = reverse ? t + 1 : t - 1;
        const bool has_pred = pred >= 0 && pred < s.T;
        cuda::FallbackBackwardStep f;
        f.H = s.H;
        f.P = s.P;
        f.step.off = off[t];
        f.step.bs = bs;
        f.step.pred_off = has_pred ? off[pred] : 0;
        f.step.pred_bs = has_pred ? off[pred + 1] - off[pred] : 0;
        Tensor dh_pre;
        if (proj) {
          Tensor dho = dh_out.narrow(0, off[t], bs);
          at::add_out(dho, grad_y2.narrow(0, off[t], bs), dh_rec.narrow(0, 0, bs));
          dh_pre = at::mm(dho, w_hr_a);
          f.dh_in = dh_pre.data_ptr();
          f.ld_dh_in = s.H;
          f.grad_y = nullptr;
        } else {
          f.dh_in = dh_rec.data_ptr();
          f.ld_dh_in = s.P;
          f.grad_y = grad_y.data_ptr();
        }
        f.gates = gates.data_ptr();
        f.cells = cells.data_ptr();
        f.c0 = c0.data_ptr();
        f.h0 = h0.data_ptr();
        f.y = y.data_ptr();
        f.dc_state = dc_state.data_ptr();
        f.dgates = dgates.data_ptr();
        f.h_pre = proj ? h_pre.data_ptr() : nullptr;
        f.h_prev = h_prev.data_ptr();
        check_launch(cuda::fallback_backward_step(f, kind, stream), "fallback_backward_step");
        Tensor rec_rows = dh_rec.narrow(0, 0, bs);
        at::mm_out(rec_rows, dgates.narrow(0, off[t], bs), w_hh_a);
      }
      dh0.copy_(dh_rec);
      dc0.copy_(dc_state);
    }
  }

  // Weight, bias and input gradients: GEMMs over all rows (half types in their own dtype on the
  // tensor cores, fp32 accumulation inside cuBLAS); db is a column sum accumulated in fp32.
  const Tensor dg = dgates.scalar_type() != dtype ? dgates.to(dtype) : dgates;
  const Tensor x2 = x.reshape({s.N, s.I});
  Tensor dx = at::mm(dg, w_ih).view(x.sizes());
  Tensor dw_ih = at::mm(dg.t(), x2);
  Tensor dw_hh = at::mm(dg.t(), h_prev);
  Tensor db = has_bias ? dgates.sum(0, /*keepdim=*/false, acc).to(dtype) : at::empty({0}, x.options());
  Tensor dw_hr = proj ? at::mm(dh_out.to(dtype).t(), h_pre.to(dtype)) : at::empty({0}, x.options());
  return {dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0};
}

}  // namespace
}  // namespace lstm_fused

TORCH_LIBRARY_IMPL(lstm_fused, CUDA, m) {
  m.impl("forward", &lstm_fused::forward_cuda);
  m.impl("backward", &lstm_fused::backward_cuda);
}
