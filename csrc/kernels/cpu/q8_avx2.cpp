// The int8 loops on AVX2 (vpmaddwd on widened operands), for CPUs without VNNI.
#include "cpu/q8_isa.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// Every float operation rounded on its own (q8_avx512.cpp says why).
#pragma GCC optimize("fp-contract=off")
#define LSTM_ISA q8_avx2
#define LSTM_VEC_BYTES 32
#define Q8_LEVEL 1
#include "cpu/q8_impl.h"
#pragma GCC pop_options
