// Fallback path, one step at a time: the fused pointwise kernels that follow the adapter's
// per-step recurrent GEMM (used where W_hh does not fit on chip, for large batches, and for
// float64). One thread per (row, unit); every output element has one writer.
#include "common.cuh"

namespace lstm_fused {
namespace cuda {
namespace {

__device__ __forceinline__ double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float sigm(float x) { return sigmoidf_(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }

template <typename T> __device__ __forceinline__ T to_scalar(float v) { return from_f<T>(v); }
template <typename T> __device__ __forceinline__ T to_scalar_d(double v) {
  return from_f<T>(static_cast<float>(v));
}
template <> __device__ __forceinline__ double to_scalar_d<double>(double v) { return v; }

template <typename T, typename A>
__device__ __forceinline__ T out_cast(A v) {
  if constexpr (sizeof(A) == 8) return to_scalar_d<T>(v); else return to_scalar<T>(v);
}

template <typename T, typename A>
__global__ void forward_step_kernel(const FallbackForwardStep a) {
  const int64_t H = a.H, P = a.P;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= a.step.bs * H) return;
  const int64_t b = i / H, j = i % H;
  const int64_t row = a.step.off + b;
  A* g = static_cast<A*>(a.gates) + row * 4 * H + j;
  const T* r = static_cast<const T*>(a.rec) + b * 4 * H + j;
  const A gi = sigm(g[0] + static_cast<A>(to_f(r[0])));
  const A gf = sigm(g[H] + static_cast<A>(to_f(r[H])));
  const A gg = tanh_(g[2 * H] + static_cast<A>(to_f(r[2 * H])));
  const A go = sigm(g[3 * H] + static_cast<A>(to_f(r[3 * H])));
  A* cs = static_cast<A*>(a.c_state) + b * H + j;
  const A c = gf * *cs + gi * gg;
  *cs = c;
  const A h = go * tanh_(c);
  if (a.save) {
    g[0] = gi;
    g[H] = gf;
    g[2 * H] = gg;
    g[3 * H] = go;
    static_cast<A*>(a.cells)[row * H + j] = c;
  }
  const T hv = out_cast<T>(h);
  if (a.proj) {
    static_cast<T*>(a.h_pre_out)[b * H + j] = hv;
  } else {
    static_cast<T*>(a.y)[row * P + j] = hv;
    static_cast<T*>(a.h_state)[b * P + j] = hv;
  }
}

template <typename T, typename A>
__global__ void backward_step_kernel(const FallbackBackwardStep a) {
  const int64_t H = a.H, P = a.P;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= a.step.bs * H) return;
  const int64_t b = i / H, j = i % H;
  const int64_t row = a.step.off + b;
  const bool has_pred = b < a.step.pred_bs;
  A dh = static_cast<const A*>(a.dh_in)[b * a.ld_dh_in + j];
  if (a.grad_y) dh += static_cast<A>(to_f(static_cast<const T*>(a.grad_y)[row * P + j]));
  const A* g = static_cast<const A*>(a.gates) + row * 4 * H + j;
  const A gi = g[0], gf = g[H], gg = g[2 * H], go = g[3 * H];
  const A c = static_cast<const A*>(a.cells)[row * H + j];
  const A cprev = has_pred ? static_cast<const A*>(a.cells)[(a.step.pred_off + b) * H + j]
                           : static_cast<A>(to_f(static_cast<const T*>(a.c0)[b * H + j]));
  const A tc = tanh_(c);
  A* dcs = static_cast<A*>(a.dc_state) + b * H + j;
  const A one = 1;
  const A dc = *dcs + dh * go * (one - tc * tc);
  A* dg = static_cast<A*>(a.dgates) + row * 4 * H + j;
  dg[0] = dc * gg * gi * (one - gi);
  dg[H] = dc * cprev * gf * (one - gf);
  dg[2 * H] = dc * gi * (one - gg * gg);
  dg[3 * H] = dh * tc * go * (one - go);
  *dcs = dc * gf;
  if (a.h_pre) static_cast<A*>(a.h_pre)[row * H + j] = go * tc;
  if (j < P) {
    const T* src = has_pred ? static_cast<const T*>(a.y) + (a.step.pred_off + b) * P
                            : static_cast<const T*>(a.h0) + b * P;
    static_cast<T*>(a.h_prev)[row * P + j] = src[j];
  }
}

template <typename T, typename A, typename Args>
int launch_step(void (*kernel)(Args), const Args& a, cudaStream_t stream) {
  const int64_t n = a.step.bs * a.H;
  if (n == 0) return 0;
  constexpr int kBlock = 256;
  kernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(a);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// float64 uses to_f(double) (identity) and A = double throughout.
int fallback_forward_step(const FallbackForwardStep& a, Scalar s, cudaStream_t stream) {
  switch (s) {
    case Scalar::kFloat32: return launch_step<float, float>(forward_step_kernel<float, float>, a, stream);
    case Scalar::kFloat16: return launch_step<__half, float>(forward_step_kernel<__half, float>, a, stream);
    case Scalar::kBFloat16:
      return launch_step<__nv_bfloat16, float>(forward_step_kernel<__nv_bfloat16, float>, a, stream);
    case Scalar::kFloat64: return launch_step<double, double>(forward_step_kernel<double, double>, a, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int fallback_backward_step(const FallbackBackwardStep& a, Scalar s, cudaStream_t stream) {
  switch (s) {
    case Scalar::kFloat32: return launch_step<float, float>(backward_step_kernel<float, float>, a, stream);
    case Scalar::kFloat16: return launch_step<__half, float>(backward_step_kernel<__half, float>, a, stream);
    case Scalar::kBFloat16:
      return launch_step<__nv_bfloat16, float>(backward_step_kernel<__nv_bfloat16, float>, a, stream);
    case Scalar::kFloat64:
      return launch_step<double, double>(backward_step_kernel<double, double>, a, stream);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace lstm_fused
