// The dense and packed row layout of lstm.h as the loops walk it: each step's first row and row
// count, and which step a row's state came from or goes to.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/lstm_cpu.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// Row index helpers for the packed/dense row layout of lstm.h.
struct Steps {  // row index helpers, see lstm.h
  std::vector<int64_t> off;  // off[t]: first row of step t; off[T] = N
  const int64_t* batch_sizes;
  int64_t T, B;
  Steps(const int64_t* bs, int64_t T_, int64_t B_) : off(T_ + 1), batch_sizes(bs), T(T_), B(B_) {
    off[0] = 0;
    for (int64_t t = 0; t < T; ++t) off[t + 1] = off[t] + rows(t);
  }
  int64_t rows(int64_t t) const { return step_rows(batch_sizes, B, t); }
  // The step a row's state came from, in the order the forward ran; -1: from h0/c0.
  int64_t prev(int64_t t, int64_t b, bool reverse) const {
    if (!reverse) return t > 0 ? t - 1 : -1;
    return (t + 1 < T && b < rows(t + 1)) ? t + 1 : -1;
  }
  // Whether step t is the last one the forward runs for sequence b.
  bool last(int64_t t, int64_t b, bool reverse) const {
    if (reverse) return t == 0;
    return t + 1 == T || b >= rows(t + 1);
  }
};

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
