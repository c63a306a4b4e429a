// The int8 kernels' dispatch (the instruction set picked once, from what the running CPU supports,
// capped by LSTM_FUSED_CPU_ISA) and the weight packing, which runs once per weight.
#include "cpu/q8_isa.h"

#include <string>

namespace lstm_fused {
namespace cpu {
namespace q8 {
namespace {

enum class Level { kBaseline, kAvx2, kAvxVnni, kAvx512Vnni };

struct Choice {
  Level level;
  bool vex;  // kAvxVnni: the VEX encoding (AVX-VNNI) rather than AVX512-VNNI's EVEX on ymm
};

Choice choose() {
  Level best = Level::kBaseline;
  bool avx512_vnni = false, avx_vnni = false;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  avx512_vnni = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                __builtin_cpu_supports("avx512vnni");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  avx_vnni = avx2 && __builtin_cpu_supports("avxvnni");
  best = avx512_vnni ? Level::kAvx512Vnni : avx_vnni ? Level::kAvxVnni : avx2 ? Level::kAvx2 : Level::kBaseline;
#endif
  Level level = best;
  if (const char* want = std::getenv("LSTM_FUSED_CPU_ISA")) {
    const std::string w(want);
    const Level cap = w == "baseline" ? Level::kBaseline
                      : w == "avx2"   ? Level::kAvx2
                      : w == "avx_vnni" ? Level::kAvxVnni
                                        : Level::kAvx512Vnni;
    level = static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
  }
  return {level, level == Level::kAvxVnni && avx_vnni};
}

const Choice& chosen() {
  static const Choice c = choose();
  return c;
}

}  // namespace

const char* isa_name() {
  switch (chosen().level) {
    case Level::kAvx512Vnni: return "avx512_vnni";
    case Level::kAvxVnni: return "avx_vnni";
    case Level::kAvx2: return "avx2";
    default: return "baseline";
  }
}

void layer_forward(const LayerParams& p) {
  switch (chosen().level) {
    case Level::kAvx512Vnni: return q8_avx512::layer_forward(p);
    case Level::kAvxVnni: return chosen().vex ? q8_avx_vnni::layer_forward(p) : q8_avx512_ymm::layer_forward(p);
    case Level::kAvx2: return q8_avx2::layer_forward(p);
    default: return q8_baseline::layer_forward(p);
  }
}

void linear(const float* a, int64_t N, const Weight& w, const float* bias, float* out, int nt) {
  switch (chosen().level) {
    case Level::kAvx512Vnni: return q8_avx512::linear(a, N, w, bias, out, nt);
    case Level::kAvxVnni:
      return chosen().vex ? q8_avx_vnni::linear(a, N, w, bias, out, nt) : q8_avx512_ymm::linear(a, N, w, bias, out, nt);
    case Level::kAvx2: return q8_avx2::linear(a, N, w, bias, out, nt);
    default: return q8_baseline::linear(a, N, w, bias, out, nt);
  }
}

void pack_weight(const float* w, int64_t units, int gates, int64_t K, int8_t* out, float* scale, int32_t* colsum) {
  const int64_t nblk = blocks_of(units), Kp = padded_k(K), cols = nblk * gates * kBlock;
  std::memset(out, 0, cols * Kp);
  std::fill(scale, scale + cols, 0.0f);
  std::fill(colsum, colsum + cols, 0);
  for (int g = 0; g < gates; ++g) {
    for (int64_t u = 0; u < units; ++u) {
      const float* row = w + (g * units + u) * K;
      float amax = 0.0f;
      bool finite = true;
      for (int64_t k = 0; k < K; ++k) {
        finite &= std::isfinite(row[k]);
        amax = std::max(amax, std::fabs(row[k]));
      }
      // A weight row with a NaN or an infinity: NaN scale (its outputs are NaN, as in float).
      const float s = !finite ? std::numeric_limits<float>::quiet_NaN() : amax > 0.0f ? amax / 127.0f : 1.0f;
      const int64_t jb = u / kBlock, l = u % kBlock, col = (jb * gates + g) * kBlock + l;
      int8_t* blk = out + (jb * gates + g) * Kp * kBlock;
      int32_t sum = 0;
      for (int64_t k = 0; finite && k < K; ++k) {
        const float q = std::min(127.0f, std::max(-127.0f, std::nearbyint(row[k] / s)));
        const int8_t v = static_cast<int8_t>(q);
        blk[(k / kGroup) * kBlock * kGroup + l * kGroup + k % kGroup] = v;
        sum += v;
      }
      scale[col] = s;
      colsum[col] = sum;
    }
  }
}

}  // namespace q8
}  // namespace cpu
}  // namespace lstm_fused
