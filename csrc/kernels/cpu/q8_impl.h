// The int8 layer loops, written once and compiled once per instruction set (q8_<isa>.cpp defines
// LSTM_ISA, LSTM_VEC_BYTES and Q8_LEVEL, sets the target pragma and includes this file).
//
// One call: the team quantizes x row by row and, unless the loop takes it (fuse_input),
// runs the input projection over every row (rows split across threads), then the time loop: threads split the unit blocks, each computing all
// gates of its units, so the cell update needs no exchange; after a step, the new h rows are
// quantized (rows split) for the next step's product. Two barriers a step (four with a
// projection, whose product needs the whole quantized o * tanh(c) row).
#pragma once

#include "cpu/q8.h"
#include "cpu/vec.h"
#include "cpu/team.h"
#include "cpu/q8_dot.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

constexpr int U = LSTM_VEC_BYTES / 4;  // float lanes
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds |v| < 2^22 half to even
typedef uint8_t vbyte __attribute__((vector_size(U)));

// q8.h's activation quantization of a[0, K) into q[0, Kp) (the padding gets the zero point, which
// meets zero weights). A row with a NaN or an infinity gets a NaN scale and q = 0, so that every
// product it feeds is NaN, as a float LSTM's would be.
inline void quantize_row(const float* a, int64_t K, int64_t Kp, uint8_t* q, float* scale, int32_t* zp) {
  // min and max skip NaN (every comparison with it is false), so NaN is looked for apart; an
  // infinity makes the range, and so the scale, infinite.
  vfloat vlo = vfloat{}, vhi = vfloat{};
  vint vnan = vint{};
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    const vfloat v = loadu<vfloat>(a + k);
    vlo = v < vlo ? v : vlo;
    vhi = v > vhi ? v : vhi;
    vnan |= v != v;
  }
  float lo = 0.0f, hi = 0.0f;
  bool nan = false;
  for (int l = 0; l < U; ++l) {
    lo = std::min(lo, vlo[l]);
    hi = std::max(hi, vhi[l]);
    nan |= vnan[l] != 0;
  }
  for (; k < K; ++k) {
    lo = std::min(lo, a[k]);
    hi = std::max(hi, a[k]);
    nan |= a[k] != a[k];
  }
  float s = (hi - lo) / 255.0f;
  if (!std::isfinite(s) || nan) {
    *scale = std::numeric_limits<float>::quiet_NaN();
    *zp = 0;
    std::memset(q, 0, Kp);
    return;
  }
  if (s == 0.0f) s = 1.0f;
  const float z = std::min(255.0f, std::max(0.0f, (-lo / s + kRound) - kRound));
  *scale = s;
  *zp = static_cast<int32_t>(z);
  k = 0;
  for (; k + U <= K; k += U) {
    vfloat v = (loadu<vfloat>(a + k) / s + kRound) - kRound + z;
    v = v < 0.0f ? vfloat{} : v;
    v = v > 255.0f ? vfloat{} + 255.0f : v;
    const vbyte b = __builtin_convertvector(__builtin_convertvector(v, vint), vbyte);
    std::memcpy(q + k, &b, sizeof b);
  }
  for (; k < K; ++k) {
    const float v = std::min(255.0f, std::max(0.0f, (a[k] / s + kRound) - kRound + z));
    q[k] = static_cast<uint8_t>(v);
  }
  for (; k < Kp; ++k) q[k] = static_cast<uint8_t>(*zp);
}

// out[r, c] = float(sum - zp_r * colsum_c) * (s_r * scale_c) (+ bias_c) for rows [0, rows) and the
// columns of blocks [b0, b1) of W, each a block of 16 columns (kBlock).
inline void gemm_dequant(const uint8_t* a, int64_t lda, const float* as, const int32_t* az, int64_t rows,
                         const q8::Weight& W, int64_t b0, int64_t b1, const float* bias, float* out, int64_t ldo) {
  constexpr int64_t ldt = kTileBlocks * kBlock;
  alignas(64) int32_t tmp[kTileRows * ldt];
  const int64_t wstride = W.Kp * kBlock, kgroups = W.Kp / 4;
  for (int64_t blk = b0; blk < b1; blk += kTileBlocks) {
    const int nv = static_cast<int>(std::min<int64_t>(kTileBlocks, b1 - blk));
    const int64_t c0 = blk * kBlock;
    for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
      const int nr = static_cast<int>(std::min<int64_t>(kTileRows, rows - r0));
      dot_tile_n(nr, nv, a + r0 * lda, lda, W.w + blk * wstride, wstride, kgroups, tmp, ldt);
      for (int r = 0; r < nr; ++r) {
        const float s = as[r0 + r];
        const int32_t z = az[r0 + r];
        float* o = out + (r0 + r) * ldo + c0;
        for (int c = 0; c < nv * kBlock; c += U) {
          const vint acc = loadu<vint>(tmp + r * ldt + c) - z * loadu<vint>(W.colsum + c0 + c);
          vfloat v = __builtin_convertvector(acc, vfloat) * (s * loadu<vfloat>(W.scale + c0 + c));
          if (bias) v += loadu<vfloat>(bias + c0 + c);
          storeu(o + c, v);
        }
      }
    }
  }
}

// Quantizes rows [r0, r1) of x ([*, K]) in chunks and runs their product with W into out.
inline void project_rows(const float* x, int64_t K, int64_t r0, int64_t r1, const q8::Weight& W, const float* bias,
                         float* out, int64_t ldo) {
  constexpr int64_t kChunk = 48;  // rows quantized at once: their bytes stay in L1 for every block
  std::vector<uint8_t> xq(kChunk * W.Kp);
  float xs[kChunk];
  int32_t xz[kChunk];
  for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
    const int64_t n = std::min(kChunk, r1 - c0);
    for (int64_t r = 0; r < n; ++r) quantize_row(x + (c0 + r) * K, K, W.Kp, xq.data() + r * W.Kp, xs + r, xz + r);
    gemm_dequant(xq.data(), W.Kp, xs, xz, n, W, 0, W.nblk * W.gates, bias, out + c0 * ldo, ldo);
  }
}

void linear(const float* a, int64_t N, const q8::Weight& w, const float* bias, float* out, int num_threads) {
  SpinBarrier bar;
  run_team(num_threads, bar, [&](int tid, int nt) {
    int64_t r0, r1;
    split_range(N, tid, nt, &r0, &r1);
    project_rows(a, w.K, r0, r1, w, bias, out, w.cols());
  });
}

// The state rows of one step: h (fp32, in the caller's h_n), c (c_n), h quantized for the next
// product, and with a projection o * tanh(c) before it, fp32 and quantized.
struct State {
  std::vector<uint8_t> hq, rq;
  std::vector<float> hs, rs, r;
  std::vector<int32_t> hz, rz;
};

// float(sum - z * colsum) * (s * scale) on the U lanes from column c.
inline vfloat dequant(const int32_t* sum, int32_t z, float s, const q8::Weight& W, int64_t c) {
  const vint acc = loadu<vint>(sum) - z * loadu<vint>(W.colsum + c);
  return __builtin_convertvector(acc, vfloat) * (s * loadu<vfloat>(W.scale + c));
}

// The cell update of `rows` rows (sequences b0 + r, rows row0 + b0 + r) and unit block jb, from
// the int32 sums tmp [rows][gates * 16] of h W_hh^T, and where the loop takes the input
// projection, tmpx [rows][gates * 16] of x W_ih^T (else the gate buffer holds it, dequantized).
template <bool kGru>
inline void cell_rows(const q8::LayerParams& p, State& st, const int32_t* tmp, const int32_t* tmpx, int64_t ldt,
                      int64_t b0, int rows, int64_t row0, int64_t jb, bool proj) {
  constexpr int G = kGru ? 3 : 4;
  const q8::Weight& W = p.w_hh;
  const int64_t gcols = W.cols();
  for (int r = 0; r < rows; ++r) {
    const int64_t b = b0 + r, row = row0 + b;
    const float s = st.hs[b];
    const int32_t z = st.hz[b];
    const float* grow = p.gates + row * gcols;
    for (int l0 = 0; l0 < kBlock; l0 += U) {
      const int64_t j = jb * kBlock + l0;
      if (j >= p.H) break;
      const int nu = static_cast<int>(std::min<int64_t>(U, p.H - j));
      vfloat rec[G], pre[G];
      for (int g = 0; g < G; ++g) {
        const int64_t c = (jb * G + g) * kBlock + l0;
        rec[g] = dequant(tmp + r * ldt + g * kBlock + l0, z, s, W, c);
        if (tmpx) {  // as gemm_dequant would have written it to the gate buffer
          pre[g] = dequant(tmpx + r * ldt + g * kBlock + l0, p.xz[row], p.xs[row], p.w_ih, c);
          if (p.bias) pre[g] += loadu<vfloat>(p.bias + c);
        } else {
          pre[g] = loadu<vfloat>(grow + c);
        }
      }
      vfloat h;
      if constexpr (kGru) {
        const vfloat rg = sigmoid_v(pre[0] + rec[0]), zg = sigmoid_v(pre[1] + rec[1]);
        vfloat hn = rec[2];
        if (p.bias_hn) hn += loadu<vfloat>(p.bias_hn + jb * kBlock + l0);
        const vfloat n = tanh_v(pre[2] + rg * hn);
        const vfloat hprev = load_n<vfloat>(p.h_n + b * p.P + j, nu);
        h = (hprev - n) * zg + n;
      } else {
        const vfloat i = sigmoid_v(pre[0] + rec[0]), f = sigmoid_v(pre[1] + rec[1]);
        const vfloat g = tanh_v(pre[2] + rec[2]), o = sigmoid_v(pre[3] + rec[3]);
        const vfloat c = f * load_n<vfloat>(p.c_n + b * p.H + j, nu) + i * g;
        store_n(p.c_n + b * p.H + j, c, nu);
        h = o * tanh_v(c);
      }
      if (proj) {
        store_n(st.r.data() + b * p.H + j, h, nu);
      } else {
        store_n(p.h_n + b * p.P + j, h, nu);
        store_n(p.y + row * p.P + j, h, nu);
      }
    }
  }
}

template <bool kGru>
void layer_loop(const q8::LayerParams& p) {
  constexpr int G = kGru ? 3 : 4;
  const bool proj = p.proj;
  const int64_t T = p.T, B = p.B, H = p.H, P = p.P;
  std::vector<int64_t> off(T + 1, 0);
  for (int64_t t = 0; t < T; ++t) off[t + 1] = off[t] + step_rows(p.batch_sizes, B, t);
  const int64_t N = off[T], nblk = p.w_hh.nblk, Pk = p.w_hh.Kp, Hk = proj ? p.w_hr.Kp : 0, Ik = p.w_ih.Kp;
  const bool fused = p.fuse_input;
  State st;
  st.hq.resize(B * Pk);
  st.hs.resize(B);
  st.hz.resize(B);
  if (proj) {
    st.rq.resize(B * Hk);
    st.rs.resize(B);
    st.rz.resize(B);
    st.r.resize(B * H);
  }
  SpinBarrier bar;
  run_team(p.num_threads, bar, [&](int tid, int nt) {
    int64_t lo, hi;
    split_range(B, tid, nt, &lo, &hi);
    for (int64_t b = lo; b < hi; ++b) {
      std::memcpy(p.h_n + b * P, p.h0 + b * P, P * sizeof(float));
      if (!kGru) std::memcpy(p.c_n + b * H, p.c0 + b * H, H * sizeof(float));
      quantize_row(p.h_n + b * P, P, Pk, st.hq.data() + b * Pk, &st.hs[b], &st.hz[b]);
    }
    split_range(N, tid, nt, &lo, &hi);
    if (fused) {
      for (int64_t r = lo; r < hi; ++r) quantize_row(p.x + r * p.I, p.I, Ik, p.xq + r * Ik, &p.xs[r], &p.xz[r]);
    } else {
      project_rows(p.x, p.I, lo, hi, p.w_ih, p.bias, p.gates, p.w_ih.cols());
    }
    bar.wait();
    int64_t j0, j1;
    split_range(nblk, tid, nt, &j0, &j1);
    int64_t pb0 = 0, pb1 = 0;
    if (proj) split_range(p.w_hr.nblk, tid, nt, &pb0, &pb1);
    constexpr int64_t ldt = G * kBlock;
    alignas(64) int32_t tmp[kTileRows * ldt], tmpx[kTileRows * ldt];
    alignas(64) int32_t ptmp[kTileRows * kTileBlocks * kBlock];
    const int64_t wstride = Pk * kBlock, xstride = Ik * kBlock;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = p.reverse ? T - 1 - s : s, rows = off[t + 1] - off[t], row0 = off[t];
      for (int64_t jb = j0; jb < j1; ++jb) {
        const int8_t* wb = p.w_hh.w + jb * G * wstride;
        const int8_t* xb = p.w_ih.w + jb * G * xstride;
        for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
          const int nr = static_cast<int>(std::min<int64_t>(kTileRows, rows - r0));
          for (int g0 = 0; g0 < G; g0 += kTileBlocks) {
            const int nv = std::min(kTileBlocks, G - g0);
            if (fused)
              dot_tile_n(nr, nv, p.xq + (row0 + r0) * Ik, Ik, xb + g0 * xstride, xstride, Ik / 4, tmpx + g0 * kBlock,
                         ldt);
            dot_tile_n(nr, nv, st.hq.data() + r0 * Pk, Pk, wb + g0 * wstride, wstride, Pk / 4, tmp + g0 * kBlock, ldt);
          }
          cell_rows<kGru>(p, st, tmp, fused ? tmpx : nullptr, ldt, r0, nr, row0, jb, proj);
        }
      }
      bar.wait();
      if (proj) {
        split_range(rows, tid, nt, &lo, &hi);
        for (int64_t b = lo; b < hi; ++b)
          quantize_row(st.r.data() + b * H, H, Hk, st.rq.data() + b * Hk, &st.rs[b], &st.rz[b]);
        bar.wait();
        const q8::Weight& R = p.w_hr;
        const int64_t rstride = Hk * kBlock;
        constexpr int64_t lpt = kTileBlocks * kBlock;
        for (int64_t pb = pb0; pb < pb1; pb += kTileBlocks) {
          const int nv = static_cast<int>(std::min<int64_t>(kTileBlocks, pb1 - pb));
          for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
            const int nr = static_cast<int>(std::min<int64_t>(kTileRows, rows - r0));
            dot_tile_n(nr, nv, st.rq.data() + r0 * Hk, Hk, R.w + pb * rstride, rstride, Hk / 4, ptmp, lpt);
            for (int r = 0; r < nr; ++r) {
              const int64_t b = r0 + r;
              for (int c = 0; c < nv * kBlock; ++c) {
                const int64_t col = pb * kBlock + c;
                if (col >= P) break;
                const float v = static_cast<float>(ptmp[r * lpt + c] - st.rz[b] * R.colsum[col]) *
                                (st.rs[b] * R.scale[col]);
                p.h_n[b * P + col] = v;
                p.y[(row0 + b) * P + col] = v;
              }
            }
          }
        }
        bar.wait();
      }
      split_range(rows, tid, nt, &lo, &hi);
      for (int64_t b = lo; b < hi; ++b)
        quantize_row(p.h_n + b * P, P, Pk, st.hq.data() + b * Pk, &st.hs[b], &st.hz[b]);
      bar.wait();
    }
  });
}

void layer_forward(const q8::LayerParams& p) {
  if (p.gru) return layer_loop<true>(p);
  layer_loop<false>(p);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
