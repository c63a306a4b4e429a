// What each lstm_cpu_<isa>.cpp includes before its target pragma (the standard headers must be
// parsed under the default target) and the declarations lstm_cpu.cpp dispatches between.
#pragma once

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "lstm.h"

#define LSTM_CPU_DECLARE(isa)                                                          \
  namespace lstm_fused {                                                               \
  namespace cpu {                                                                      \
  namespace isa {                                                                      \
  template <typename scalar_t, typename acc_t>                                         \
  void forward(const ForwardParams<scalar_t, acc_t>& p, bool amx);                     \
  template <typename scalar_t, typename acc_t>                                         \
  void backward(const BackwardParams<scalar_t, acc_t>& p);                             \
  template <typename scalar_t, typename acc_t>                                         \
  void gru_forward(const ForwardParams<scalar_t, acc_t>& p);                           \
  template <typename scalar_t, typename acc_t>                                         \
  void gru_backward(const BackwardParams<scalar_t, acc_t>& p);                         \
  bool cpu_has_bf16_dot();                                                             \
  bool amx_takes_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool proj); \
  bool small_batch_path(int64_t T, int64_t B, int64_t H, int64_t P, int64_t acc_bytes); \
  bool tiles_take_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,         \
                        int64_t acc_bytes, int threads);                               \
  }                                                                                    \
  }                                                                                    \
  }

#define LSTM_CPU_INSTANTIATE(isa)                                                                 \
  namespace lstm_fused {                                                                          \
  namespace cpu {                                                                                 \
  namespace isa {                                                                                 \
  template void forward<double, double>(const ForwardParams<double, double>&, bool);                    \
  template void forward<float, float>(const ForwardParams<float, float>&, bool);                        \
  template void forward<bf16_t, float>(const ForwardParams<bf16_t, float>&, bool);                      \
  template void backward<double, double>(const BackwardParams<double, double>&);                  \
  template void backward<float, float>(const BackwardParams<float, float>&);                      \
  template void backward<bf16_t, float>(const BackwardParams<bf16_t, float>&);                    \
  template void gru_forward<double, double>(const ForwardParams<double, double>&);                \
  template void gru_forward<float, float>(const ForwardParams<float, float>&);                    \
  template void gru_forward<bf16_t, float>(const ForwardParams<bf16_t, float>&);                  \
  template void gru_backward<double, double>(const BackwardParams<double, double>&);              \
  template void gru_backward<float, float>(const BackwardParams<float, float>&);                  \
  template void gru_backward<bf16_t, float>(const BackwardParams<bf16_t, float>&);                \
  }                                                                                               \
  }                                                                                               \
  }

LSTM_CPU_DECLARE(avx512)
LSTM_CPU_DECLARE(avx2)
LSTM_CPU_DECLARE(baseline)
