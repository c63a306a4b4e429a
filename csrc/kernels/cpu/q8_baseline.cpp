// The int8 loops in portable C++: the fallback of q8.cpp.
#include "cpu/q8_isa.h"

#pragma GCC push_options
// Every float operation rounded on its own (q8_avx512.cpp says why).
#pragma GCC optimize("fp-contract=off")
#define LSTM_ISA q8_baseline
#define LSTM_VEC_BYTES 16
#define Q8_LEVEL 0
#include "cpu/q8_impl.h"
#pragma GCC pop_options
