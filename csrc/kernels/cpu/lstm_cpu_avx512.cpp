// The CPU loops compiled for AVX-512 (picked at run time by lstm_cpu.cpp).
#include "cpu/lstm_cpu_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#define LSTM_ISA avx512
#define LSTM_VEC_BYTES 64
#define LSTM_BF16_DOT 1
#include "cpu/lstm_cpu_impl.h"
LSTM_CPU_INSTANTIATE(avx512)
#pragma GCC pop_options
