// The CPU loops compiled for AVX2 + FMA (picked at run time by lstm_cpu.cpp).
#include "cpu/lstm_cpu_isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define LSTM_ISA avx2
#define LSTM_VEC_BYTES 32
#include "cpu/lstm_cpu_impl.h"
LSTM_CPU_INSTANTIATE(avx2)
#pragma GCC pop_options
