// The int8 loops in portable C++: the fallback of q8.cpp.
#include "cpu/q8_isa.h"

#define LSTM_ISA q8_baseline
#define LSTM_VEC_BYTES 16
#define Q8_LEVEL 0
#include "cpu/q8_impl.h"
