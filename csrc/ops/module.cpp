// The Python module lstm_fused._C: importing it registers the ops (schemas.cpp and the
// TORCH_LIBRARY_IMPL blocks); it also says how the extension was built and which CPU path runs.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <unistd.h>

#include <exception>

#include "cpu/lstm_cpu.h"
#include "cpu/q8.h"
#include "ops/common.h"

// setup.py's hash of csrc/ as an identifier: h followed by the hex digits.
#ifndef LSTM_FUSED_SOURCE_HASH
#define LSTM_FUSED_SOURCE_HASH hunknown
#endif
#define LSTM_FUSED_STRING_(x) #x
#define LSTM_FUSED_STRING(x) LSTM_FUSED_STRING_(x)

namespace {
using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const c10::optional<at::Tensor>&, bool, bool);

// lstm_fused::forward through the dispatcher's typed C++ entry: the same op with every dispatch
// key (autograd, __torch_dispatch__ modes, tracing, profiling), without the Python op path's
// boxing of eleven arguments into a stack (about 2 us of a 10 us streaming call). For eager
// callers only (lstm_fused/ops.py says when).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_unboxed(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& batch_sizes, bool reverse, bool save) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lstm_fused::forward", "").typed<ForwardSig>();
  return op.call(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, save);
}

using GruForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const at::Tensor&, const c10::optional<at::Tensor>&, bool, bool);

// lstm_fused::gru_forward entered as forward_unboxed enters forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_forward_unboxed(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0, const c10::optional<at::Tensor>& batch_sizes,
    bool reverse, bool save) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lstm_fused::gru_forward", "").typed<GruForwardSig>();
  return op.call(x, w_ih, w_hh, b_ih, b_hh, h0, batch_sizes, reverse, save);
}

// A stack of one layer and one direction (lstm_fused/functional.py) in one crossing from Python:
// h0 / c0 as the module holds them ([1, B, P] / [1, B, H]), their selects and h_n / c_n's
// unsqueezes done here (about 1.5 us each from Python, of a streaming call's 20-25 us).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_layer_unboxed(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& h0,
    const at::Tensor& c0, const c10::optional<at::Tensor>& batch_sizes, bool save) {
  auto out =
      forward_unboxed(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0.select(0, 0), c0.select(0, 0), batch_sizes, false, save);
  return {std::move(std::get<0>(out)), std::get<1>(out).unsqueeze(0), std::get<2>(out).unsqueeze(0)};
}

// A GRU stack of one layer and one direction, as forward_layer_unboxed: h0 [1, B, H] selected and
// h_n unsqueezed here.
std::tuple<at::Tensor, at::Tensor> gru_forward_layer_unboxed(
    const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& h0, const c10::optional<at::Tensor>& batch_sizes,
    bool save) {
  auto out = gru_forward_unboxed(x, w_ih, w_hh, b_ih, b_hh, h0.select(0, 0), batch_sizes, false, save);
  return {std::move(std::get<0>(out)), std::get<1>(out).unsqueeze(0)};
}

using Q8ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, at::TensorList, at::TensorList, at::TensorList, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, const at::Tensor&, const c10::optional<at::Tensor>&,
    const c10::optional<at::Tensor>&, bool);

// An int8 stack of one layer and one direction (lstm_fused/quantized.py), as forward_layer_unboxed:
// lstm_fused::q8_forward through the dispatcher's C++ entry, h0 / c0 [1, B, *] selected and h_n /
// c_n unsqueezed here (a streaming step of the int8 LSTM is ~15 us in all).
std::tuple<at::Tensor, at::Tensor, at::Tensor> q8_forward_layer_unboxed(
    const at::Tensor& x, const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& w_hh,
    const std::vector<at::Tensor>& w_hr, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& bias_hn, const at::Tensor& h0, const c10::optional<at::Tensor>& c0,
    const c10::optional<at::Tensor>& batch_sizes) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lstm_fused::q8_forward", "").typed<Q8ForwardSig>();
  const c10::optional<at::Tensor> c = c0 ? c10::optional<at::Tensor>(c0->select(0, 0)) : c10::nullopt;
  auto out = op.call(x, w_ih, w_hh, w_hr, bias, bias_hn, h0.select(0, 0), c, batch_sizes, false);
  at::Tensor c_n = c0 ? std::get<2>(out).unsqueeze(0) : std::get<2>(out);
  return {std::move(std::get<0>(out)), std::get<1>(out).unsqueeze(0), c_n};
}

// Whether a direction's W_hh (as the kernel packs it, in the accumulation dtype) takes at most
// half of one core's L2: a direction alone on a core streams all of it every step, where two
// threads splitting the steps each stream half. Measured on a Xeon with 2 MB of L2 per core, two
// threads, concurrent against one after the other: H = 256 (1 MB) 0.95-1.0x of the time, H = 64
// and 128 0.78-0.81x, H = 512 (4 MB) at batch 1 1.49x and batch 8 1.11x.
bool pair_fits_l2(const at::Tensor& w_hh) {
  static const int64_t l2 = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  const int64_t acc_bytes = at::elementSize(lstm_fused::acc_dtype(w_hh.scalar_type()));
  return w_hh.numel() * acc_bytes <= l2 / 2;
}

using ForwardOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// A bidirectional layer's two lstm_fused::forward calls (forward direction, then reverse: their
// weights and states; x, batch_sizes and save shared), at once on two threads where the CPU ops
// get exactly two: each direction then runs its recurrence on one thread with no barrier per
// step, where one after the other each split its steps across both (measured at commit 0ba2974;
// docs/performance.md). The calls go through the dispatcher as forward_unboxed's do, in the
// caller's thread-local state (grad mode, dispatch keys, profiler). Elsewhere (CUDA, other
// thread counts; nested teams are not built) one after the other.
std::tuple<ForwardOut, ForwardOut> forward_pair_unboxed(
    const at::Tensor& x, const c10::optional<at::Tensor>& batch_sizes, bool save, const at::Tensor& w_ih0,
    const at::Tensor& w_hh0, const c10::optional<at::Tensor>& b_ih0, const c10::optional<at::Tensor>& b_hh0,
    const c10::optional<at::Tensor>& w_hr0, const at::Tensor& h00, const at::Tensor& c00, const at::Tensor& w_ih1,
    const at::Tensor& w_hh1, const c10::optional<at::Tensor>& b_ih1, const c10::optional<at::Tensor>& b_hh1,
    const c10::optional<at::Tensor>& w_hr1, const at::Tensor& h01, const at::Tensor& c01) {
  ForwardOut out[2];
  const auto run = [&](int d) {
    out[d] = d == 0 ? forward_unboxed(x, w_ih0, w_hh0, b_ih0, b_hh0, w_hr0, h00, c00, batch_sizes, false, save)
                    : forward_unboxed(x, w_ih1, w_hh1, b_ih1, b_hh1, w_hr1, h01, c01, batch_sizes, true, save);
  };
  if (!x.is_cpu() || at::get_num_threads() != 2 || at::in_parallel_region() || !pair_fits_l2(w_hh0)) {
    run(0);
    run(1);
    return {std::move(out[0]), std::move(out[1])};
  }
  const at::ThreadLocalState state;
  std::exception_ptr error[2];
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t d = begin; d < end; ++d) {
      try {
        run(static_cast<int>(d));
      } catch (...) {
        error[d] = std::current_exception();
      }
    }
  });
  for (const auto& e : error)
    if (e) std::rethrow_exception(e);
  return {std::move(out[0]), std::move(out[1])};
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lstm_fused kernels (ops under torch.ops.lstm_fused)";
  m.def("cpu_isa", &lstm_fused::cpu::isa_name, "Instruction set of the CPU kernels on this CPU");
  m.def("int8_isa", &lstm_fused::cpu::q8::isa_name, "Instruction set of the int8 CPU kernels on this CPU");
  m.def("bf16_gemm_widened", [] { return lstm_fused::half_gemm_widened(at::kBFloat16); },
        "Whether a bf16 input projection on the CPU runs as an fp32 GEMM on widened operands");
  m.def("forward_unboxed", &forward_unboxed, "lstm_fused::forward through the C++ dispatcher (eager calls)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("gru_forward_unboxed", &gru_forward_unboxed, "lstm_fused::gru_forward through the C++ dispatcher (eager calls)",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("forward_layer_unboxed", &forward_layer_unboxed,
        "A one-layer, one-direction stack's lstm_fused::forward call, h0 / c0 and h_n / c_n with their layer dim",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("gru_forward_layer_unboxed", &gru_forward_layer_unboxed,
        "A one-layer, one-direction GRU stack's lstm_fused::gru_forward call, h0 and h_n with their layer dim",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("q8_forward_layer_unboxed", &q8_forward_layer_unboxed,
        "A one-layer, one-direction int8 stack's lstm_fused::q8_forward call, states with their layer dim",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("forward_pair_unboxed", &forward_pair_unboxed,
        "A bidirectional layer's two lstm_fused::forward calls, concurrently on two CPU threads",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("empty_cache", &lstm_fused::release_cached_buffers,
        "Frees the memory kept for reuse by the CPU ops' large buffers (LSTM_FUSED_CPU_CACHE_MB caps it)");
  m.def("cached_bytes", &lstm_fused::cached_buffer_bytes, "Bytes the CPU ops keep for reuse now");
  m.def("source_hash", [] { return std::string(LSTM_FUSED_STRING(LSTM_FUSED_SOURCE_HASH)).substr(1); },
        "Hash of the csrc/ files this extension was built from (lstm_fused/_provenance.py)");
  m.def("built_with_cuda", [] {
#ifdef LSTM_FUSED_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
