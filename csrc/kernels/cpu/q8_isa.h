// What each q8_<isa>.cpp includes before its target pragma (the standard headers must be parsed
// under the default target) and the per-ISA entry points q8.cpp dispatches between.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu/q8.h"
#include "lstm.h"

#define Q8_DECLARE(isa)                                                                              \
  namespace lstm_fused {                                                                             \
  namespace cpu {                                                                                    \
  namespace isa {                                                                                    \
  void layer_forward(const q8::LayerParams& p);                                                      \
  void linear(const float* a, int64_t N, const q8::Weight& w, const float* bias, float* out, int nt); \
  }                                                                                                  \
  }                                                                                                  \
  }

Q8_DECLARE(q8_avx512)
Q8_DECLARE(q8_avx512_ymm)
Q8_DECLARE(q8_avx_vnni)
Q8_DECLARE(q8_avx2)
Q8_DECLARE(q8_baseline)
