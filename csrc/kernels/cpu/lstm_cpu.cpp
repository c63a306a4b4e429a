// Picks the instruction set once, from what the running CPU supports (a wheel built on one
// machine runs on others), and forwards to that copy of the loops.
#include "cpu/lstm_cpu.h"

#include "cpu/lstm_cpu_isa.h"

#include <cstdlib>
#include <string>

namespace lstm_fused {
namespace cpu {
namespace {

enum class Isa { kBaseline, kAvx2, kAvx512 };

Isa detect() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// LSTM_FUSED_CPU_ISA=baseline|avx2|avx512 caps the choice (tests run every path on one machine).
Isa choose() {
  const Isa best = detect();
  const char* want = std::getenv("LSTM_FUSED_CPU_ISA");
  if (!want) return best;
  const std::string w(want);
  const Isa cap = w == "baseline" ? Isa::kBaseline : w == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

Isa isa() {
  static const Isa chosen = choose();
  return chosen;
}

}  // namespace

const char* isa_name() {
  switch (isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

bool small_batch_path(int64_t T, int64_t B, int64_t H, int64_t P, int64_t acc_bytes) {
  return avx512::small_batch_path(T, B, H, P, acc_bytes);  // same rule in every copy
}

bool tiles_take_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, int64_t acc_bytes) {
  switch (isa()) {
    case Isa::kAvx512: return avx512::tiles_take_input(T, B, I, H, P, acc_bytes);
    case Isa::kAvx2: return avx2::tiles_take_input(T, B, I, H, P, acc_bytes);
    default: return baseline::tiles_take_input(T, B, I, H, P, acc_bytes);
  }
}

bool bf16_tiles_used(int64_t T, int64_t B, int64_t H, int64_t P, bool proj) {
  return isa() == Isa::kAvx512 && avx512::cpu_has_bf16_dot() && !proj && !small_batch_path(T, B, H, P, sizeof(float));
}

template <typename scalar_t, typename acc_t>
void lstm_forward(const ForwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAvx512: return avx512::forward(params);
    case Isa::kAvx2: return avx2::forward(params);
    default: return baseline::forward(params);
  }
}

template <typename scalar_t, typename acc_t>
void lstm_backward(const BackwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAvx512: return avx512::backward(params);
    case Isa::kAvx2: return avx2::backward(params);
    default: return baseline::backward(params);
  }
}

template void lstm_forward<double, double>(const ForwardParams<double, double>&);
template void lstm_forward<float, float>(const ForwardParams<float, float>&);
template void lstm_forward<bf16_t, float>(const ForwardParams<bf16_t, float>&);
template void lstm_backward<double, double>(const BackwardParams<double, double>&);
template void lstm_backward<float, float>(const BackwardParams<float, float>&);
template void lstm_backward<bf16_t, float>(const BackwardParams<bf16_t, float>&);

}  // namespace cpu
}  // namespace lstm_fused
