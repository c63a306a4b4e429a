// The int8 loops on AVX512-VNNI, zmm (picked at run time by q8.cpp).
#include "cpu/q8_isa.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")
// Every float operation rounded on its own, as the PyTorch reference rounds it: a contracted
// multiply-add would make the results depend on the path (input projection before the loop or in
// it) and on the instruction set.
#pragma GCC optimize("fp-contract=off")
#define LSTM_ISA q8_avx512
#define LSTM_VEC_BYTES 64
#define Q8_LEVEL 4
#include "cpu/q8_impl.h"
#pragma GCC pop_options
