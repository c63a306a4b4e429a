// The entry points each instruction set's copy exports (lstm_cpu_isa.h declares them,
// lstm_cpu.cpp dispatches between the copies): the generic loops with each cell.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/forward.h"
#include "cpu/backward.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

template <typename scalar_t, typename acc_t>
void forward(const ForwardParams<scalar_t, acc_t>& p, bool amx) {
  forward_loop<LstmCell>(p, amx);
}

template <typename scalar_t, typename acc_t>
void backward(const BackwardParams<scalar_t, acc_t>& p) {
  backward_loop<LstmCell>(p);
}

template <typename scalar_t, typename acc_t>
void gru_forward(const ForwardParams<scalar_t, acc_t>& p) {
  forward_loop<GruCell>(p, false);
}

template <typename scalar_t, typename acc_t>
void gru_backward(const BackwardParams<scalar_t, acc_t>& p) {
  backward_loop<GruCell>(p);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
