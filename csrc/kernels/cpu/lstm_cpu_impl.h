// The CPU recurrent loops, written once and compiled once per instruction set: each
// lstm_cpu_<isa>.cpp defines LSTM_ISA (the namespace) and LSTM_VEC_BYTES (vector register width),
// sets `#pragma GCC target`, and includes this file. Plain C++ over GCC vector types and
// fixed-size register tiles, which the compiler maps onto that target's registers, so one source
// serves all; the one exception is the AVX512-BF16 tile (LSTM_BF16_DOT, AVX-512 copy only),
// whose dot-product instruction has no portable spelling.
//
// Only to be included by lstm_cpu_<isa>.cpp, after cpu/lstm_cpu_isa.h: the standard headers must
// be parsed before the target pragma, never under it.
//
// The core is split by concern, in the order below (each piece includes what it builds on):
// vec.h (vector types, conversions, activations), tiles.h (register tiles and their loops),
// team.h (thread team and barrier), steps.h (row layout), pack.h (weight packing), dispatch.h
// (size rules), lstm_cell.h and gru_cell.h (the cells: gate counts and pointwise steps),
// gate_tiles.h, gemv.h and bf16.h (the forward's tiles), forward.h and backward.h (the loops, generic
// over the cell; the LSTM's cell backward is in backward.h's step loop), entry.h (what lstm_cpu.cpp
// calls).
//
// Every piece declares its code in namespace lstm_fused::cpu::LSTM_ISA (not in a shared header)
// so that each instruction set gets its own copy: one inline function compiled for two targets
// would break ODR and the linker could hand the AVX-512 copy to the baseline path. #pragma once
// holds per translation unit, and each lstm_cpu_<isa>.cpp includes this file once.
#include "cpu/lstm_cpu.h"

#include "cpu/vec.h"
#include "cpu/tiles.h"
#include "cpu/team.h"
#include "cpu/steps.h"
#include "cpu/pack.h"
#include "cpu/dispatch.h"
#include "cpu/lstm_cell.h"
#include "cpu/gru_cell.h"
#include "cpu/gate_tiles.h"
#include "cpu/gemv.h"
#include "cpu/bf16.h"
#include "cpu/forward.h"
#include "cpu/backward.h"
#include "cpu/entry.h"
