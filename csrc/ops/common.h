// Device-agnostic pieces of the adapters (lstm_cpu.cpp, lstm_cuda.cpp): argument checks, sizes,
// and the GEMMs around the recurrence (input projection before it, weight gradients after it),
// all through ATen so that each device gets its own BLAS (oneDNN/MKL, cuBLAS).
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include "lstm.h"

#include <tuple>
#include <vector>

namespace lstm_fused {

// Every op entry point starts with this: the GEMMs inside must run in the dtypes the op chose,
// also when the caller is under autocast (the module casts before the op, as nn.LSTM does).
#define LSTM_FUSED_NO_AUTOCAST \
  c10::impl::ExcludeDispatchKeyGuard no_autocast_guard_(c10::autocast_dispatch_keyset)

// The kernels' element types for a tensor's (c10::BFloat16 as the bit-compatible bf16_t), and a
// tensor's data as such (kptr: nullptr when undefined or empty).
template <typename T>
struct KernelType {
  using type = T;
};
template <>
struct KernelType<c10::BFloat16> {
  using type = bf16_t;
};

template <typename scalar_t>
const typename KernelType<scalar_t>::type* kptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<const typename KernelType<scalar_t>::type*>(t.const_data_ptr<scalar_t>()) : nullptr;
}
template <typename scalar_t>
typename KernelType<scalar_t>::type* kptr_mut(at::Tensor& t) {
  return reinterpret_cast<typename KernelType<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>());
}

struct LayerShape {
  int64_t T, B, I, H, P, N;  // as in kernels/lstm.h; N: rows of x
  bool packed;
};

// The accumulation dtype: float32 for half types, else the dtype itself.
at::ScalarType acc_dtype(at::ScalarType t);

// Checks what the forward op receives (shapes, dtypes, devices, batch_sizes) and returns the sizes.
LayerShape check_forward_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh,
                              const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
                              const at::Tensor& c0, const c10::optional<at::Tensor>& batch_sizes);

// check_forward_args for a layer of `gates` gates ([gates H, I] weights; 3 for a GRU), c0 optional.
LayerShape check_layer_args(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                            const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0, const at::Tensor* c0,
                            const c10::optional<at::Tensor>& batch_sizes, int64_t gates);

// Threads for a CPU call of T steps of `rows` rows over G gate rows of P inputs: one when a step is
// too small to split (the barrier per step costs about a microsecond) or the whole call too small
// to pay for waking the team.
int threads_for(int64_t T, int64_t rows, int64_t G, int64_t P);

// The sizes, layout and threads of ForwardParams / BackwardParams from the checked shape.
template <typename Params>
void set_layer(Params& p, const LayerShape& s, const at::Tensor& batch_sizes, bool reverse, int threads) {
  p.T = s.T;
  p.B = s.B;
  p.H = s.H;
  p.P = s.P;
  p.batch_sizes = batch_sizes.defined() ? batch_sizes.const_data_ptr<int64_t>() : nullptr;
  p.reverse = reverse;
  p.num_threads = threads;
}

void check_backward_args(const at::Tensor& grad_y, const at::Tensor& grad_hn,
                         const at::Tensor& grad_cn, const at::Tensor& y, const at::Tensor& gates,
                         const at::Tensor& cells, const LayerShape& s);

// An uninitialized CPU tensor whose memory, from 1 MB on, is kept when it dies and handed to a
// later call of a size that fits (buffer_cache.cpp): the ops' large per-call buffers stay in
// pages the process already has, instead of page-faulting fresh ones on every call.
at::Tensor empty_reused(at::IntArrayRef sizes, const at::TensorOptions& opts);
// Frees the kept memory (lstm_fused.empty_cache()); the bytes kept now.
void release_cached_buffers();
size_t cached_buffer_bytes();

// x.shape[:-1] + [P]
std::vector<int64_t> output_sizes(const at::Tensor& x, int64_t P);

// a [N, K] times w [M, K]^T: oneDNN's matmul where torch has it for the dtype, else at::mm.
at::Tensor matmul_nt(const at::Tensor& a, const at::Tensor& w);

// Whether a CPU input projection in the half type t runs as a GEMM in acc on widened operands:
// where oneDNN does not take t (at::mm's own bf16 GEMM ran at ~1 GFLOP/s), or takes bf16 below
// its fp32 rate (cpu::bf16_gemm_below_fp32).
bool half_gemm_widened(at::ScalarType t);

// [N, 4H] in acc dtype: x W_ih^T, one GEMM over every row (the kernels add the biases).
at::Tensor input_projection(const at::Tensor& x, const at::Tensor& w_ih, const LayerShape& s,
                            at::ScalarType acc);

// [4H] in acc dtype: b_ih + b_hh; undefined without biases.
at::Tensor combined_bias(const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                         at::ScalarType acc);

// dx = dgates w_ih in x's dtype and shape (oneDNN's matmul where it takes the dtype).
at::Tensor input_gradient(const at::Tensor& dgates, const at::Tensor& w_ih, const at::Tensor& x);

// The backward op's outputs from what the recurrence produced: dx, dW_ih, dW_hh, db, dW_hr as
// GEMMs over all rows, plus dh0 and dc0 as they are. dh_out/h_pre are undefined without w_hr.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
weight_gradients(const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& dgates,
                 const at::Tensor& h_prev, const at::Tensor& dh_out, const at::Tensor& h_pre,
                 const at::Tensor& dh0, const at::Tensor& dc0, const LayerShape& s, bool has_bias);

}  // namespace lstm_fused
