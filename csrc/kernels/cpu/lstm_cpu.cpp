// Picks the instruction set once, from what the running CPU supports (a wheel built on one
// machine runs on others), and forwards to that copy of the loops.
#include "cpu/lstm_cpu.h"

#include "cpu/lstm_cpu_isa.h"

#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace lstm_fused {
namespace cpu {
namespace {

// kAmx: the AVX-512 copy, with AMX tiles for bf16 (avx512::gate_tile_amx).
enum class Isa { kBaseline, kAvx2, kAvx512, kAmx };

#if defined(__x86_64__) && defined(__GNUC__)
// AMX-TILE and AMX-BF16 in CPUID, their state enabled by the OS (XCR0 bits 17, 18), and Linux's
// permission for this process to use the tile data (arch_prctl ARCH_REQ_XCOMP_PERM; oneDNN asks
// for it the same way, and asking twice is harmless).
bool amx_usable() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool bf16 = d & (1u << 22), tile = d & (1u << 24);
  if (!bf16 || !tile || !__builtin_cpu_supports("avx512bf16")) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}
#endif

Isa detect() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return amx_usable() ? Isa::kAmx : Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

// LSTM_FUSED_CPU_ISA=baseline|avx2|avx_vnni|avx512|amx caps the choice (tests run every path on one machine).
Isa choose() {
  const Isa best = detect();
  const char* want = std::getenv("LSTM_FUSED_CPU_ISA");
  if (!want) return best;
  const std::string w(want);
  // (avx_vnni caps the int8 kernels, q8.cpp, at ymm VNNI: the float ones at AVX2.)
  const Isa cap = w == "baseline"                     ? Isa::kBaseline
                  : (w == "avx2" || w == "avx_vnni") ? Isa::kAvx2
                  : w == "avx512"                     ? Isa::kAvx512
                                                      : Isa::kAmx;
  return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
}

Isa isa() {
  static const Isa chosen = choose();
  return chosen;
}

}  // namespace

const char* isa_name() {
  switch (isa()) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

bool bf16_gemm_below_fp32() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool below = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") && !amx_usable();
  }();
  return below;
#else
  return false;
#endif
}

bool small_batch_path(int64_t T, int64_t B, int64_t H, int64_t P, int64_t acc_bytes) {
  return avx512::small_batch_path(T, B, H, P, acc_bytes);  // same rule in every copy
}

bool tiles_take_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, int64_t acc_bytes, int threads) {
  switch (isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::tiles_take_input(T, B, I, H, P, acc_bytes, threads);
    case Isa::kAvx2: return avx2::tiles_take_input(T, B, I, H, P, acc_bytes, threads);
    default: return baseline::tiles_take_input(T, B, I, H, P, acc_bytes, threads);
  }
}

bool amx_takes_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool proj) {
  return isa() == Isa::kAmx && avx512::amx_takes_input(T, B, I, H, P, proj);  // kAmx implies AVX512-BF16
}

bool bf16_tiles_used(int64_t T, int64_t B, int64_t H, int64_t P, bool proj) {
  return (isa() == Isa::kAvx512 || isa() == Isa::kAmx) && avx512::cpu_has_bf16_dot() && !proj && !small_batch_path(T, B, H, P, sizeof(float));
}

template <typename scalar_t, typename acc_t>
void lstm_forward(const ForwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAmx: return avx512::forward(params, true);
    case Isa::kAvx512: return avx512::forward(params, false);
    case Isa::kAvx2: return avx2::forward(params, false);
    default: return baseline::forward(params, false);
  }
}

template <typename scalar_t, typename acc_t>
void lstm_backward(const BackwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::backward(params);
    case Isa::kAvx2: return avx2::backward(params);
    default: return baseline::backward(params);
  }
}

template <typename scalar_t, typename acc_t>
void gru_forward(const ForwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::gru_forward(params);
    case Isa::kAvx2: return avx2::gru_forward(params);
    default: return baseline::gru_forward(params);
  }
}

template <typename scalar_t, typename acc_t>
void gru_backward(const BackwardParams<scalar_t, acc_t>& params) {
  switch (isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::gru_backward(params);
    case Isa::kAvx2: return avx2::gru_backward(params);
    default: return baseline::gru_backward(params);
  }
}

template void lstm_forward<double, double>(const ForwardParams<double, double>&);
template void lstm_forward<float, float>(const ForwardParams<float, float>&);
template void lstm_forward<bf16_t, float>(const ForwardParams<bf16_t, float>&);
template void lstm_backward<double, double>(const BackwardParams<double, double>&);
template void lstm_backward<float, float>(const BackwardParams<float, float>&);
template void lstm_backward<bf16_t, float>(const BackwardParams<bf16_t, float>&);
template void gru_forward<double, double>(const ForwardParams<double, double>&);
template void gru_forward<float, float>(const ForwardParams<float, float>&);
template void gru_forward<bf16_t, float>(const ForwardParams<bf16_t, float>&);
template void gru_backward<double, double>(const BackwardParams<double, double>&);
template void gru_backward<float, float>(const BackwardParams<float, float>&);
template void gru_backward<bf16_t, float>(const BackwardParams<bf16_t, float>&);

}  // namespace cpu
}  // namespace lstm_fused
