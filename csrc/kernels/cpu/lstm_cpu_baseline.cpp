// The CPU loops for any x86-64 (SSE2) or other CPU: the fallback of lstm_cpu.cpp.
#include "cpu/lstm_cpu_isa.h"

#define LSTM_ISA baseline
#define LSTM_VEC_BYTES 16
#include "cpu/lstm_cpu_impl.h"
LSTM_CPU_INSTANTIATE(baseline)
