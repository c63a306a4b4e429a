// The Python module lstm_fused._C: importing it registers the ops (schemas.cpp and the
// TORCH_LIBRARY_IMPL blocks); it also says how the extension was built and which CPU path runs.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/lstm_cpu.h"
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
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lstm_fused kernels (ops under torch.ops.lstm_fused)";
  m.def("cpu_isa", &lstm_fused::cpu::isa_name, "Instruction set of the CPU kernels on this CPU");
  m.def("forward_unboxed", &forward_unboxed, "lstm_fused::forward through the C++ dispatcher (eager calls)",
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
