// The int8 loops on AVX-VNNI (the VEX-encoded vpdpbusd of CPUs without AVX-512), ymm.
#include "cpu/q8_isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
// Every float operation rounded on its own (q8_avx512.cpp says why).
#pragma GCC optimize("fp-contract=off")
#define LSTM_ISA q8_avx_vnni
#define LSTM_VEC_BYTES 32
#define Q8_LEVEL 2
#include "cpu/q8_impl.h"
#pragma GCC pop_options
