// The int8 loops on ymm with AVX512-VNNI's EVEX-encoded vpdpbusd: LSTM_FUSED_CPU_ISA=avx_vnni on a
// CPU with AVX512-VNNI but not AVX-VNNI runs these, the same code as q8_avx_vnni.cpp.
#include "cpu/q8_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")
// Every float operation rounded on its own (q8_avx512.cpp says why).
#pragma GCC optimize("fp-contract=off")
#define LSTM_ISA q8_avx512_ymm
#define LSTM_VEC_BYTES 32
#define Q8_LEVEL 3
#include "cpu/q8_impl.h"
#pragma GCC pop_options
