// The Python module lstm_fused._C: importing it registers the ops (schemas.cpp and the
// TORCH_LIBRARY_IMPL blocks); it also says how the extension was built and which CPU path runs.
#include <torch/extension.h>

#include "cpu/lstm_cpu.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "lstm_fused kernels (ops under torch.ops.lstm_fused)";
  m.def("cpu_isa", &lstm_fused::cpu::isa_name, "Instruction set of the CPU kernels on this CPU");
  m.def("built_with_cuda", [] {
#ifdef LSTM_FUSED_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
