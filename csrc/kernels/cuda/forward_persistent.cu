// The persistent forward recurrence: one cooperative launch for all T steps.
//
// Block g owns hidden units j0 .. j0+U-1 (all four gate rows of each, so the cell update and c stay
// in the block) and, with a projection, output columns q0 .. q0+Q-1 of W_hr. Its rows of W_hh
// (and W_hr) are loaded into shared memory once. Per step:
//   phase A: stage h_{t-1} of the active rows (y of the previous step, or h0) into shared memory
//            in tiles of BT rows; each warp computes 4 gate rows x 4 batch rows as a K-split dot
//            product (lanes split K, then a transpose-reduce), adds the input projection, and
//            updates the cell; h goes to y (or, with a projection, to the h_pre workspace);
//   phase B: (projection only) after a grid barrier, y[:, q0..] = h_pre W_hr[q0..]^T;
// then a grid barrier, so that the next step reads complete rows of y.
#include "common.cuh"

namespace lstm_fused {
namespace cuda {
namespace {

struct FwdPlan {
  int grid = 0;
  int U = 0, Q = 0;    // units and projection columns per block
  int Kp = 0, Kh = 0;  // P and H padded to kChunk
  int ldw = 0;         // row stride of the W_hh slice and of the h tile (Kp, +8 for the MMA path)
  int Mpad = 0;        // rows of the W_hh slice in shared memory (4U, padded to 16 for MMA)
  int BT = 0;          // rows per staged tile
  int64_t red_floats = 0, tile_bytes = 0, smem = 0;
};

template <typename T, bool PROJ>
__global__ void __launch_bounds__(kThreads, 1) forward_kernel(const ForwardArgs a, const FwdPlan p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sync = a.tuning & 3;
  const bool per_warp = (a.tuning & 4) != 0;
  const int64_t H = a.H, P = a.P, H4 = 4 * a.H;
  const int j0 = blockIdx.x * p.U;
  const int nu = static_cast<int>(max64(0, min64(p.U, H - j0)));
  const int q0 = PROJ ? blockIdx.x * p.Q : j0;
  const int nq = PROJ ? static_cast<int>(max64(0, min64(p.Q, P - q0))) : nu;
  const int Qp = static_cast<int>(round_up(p.Q, 4));
  unsigned* flags_a = a.flags;
  unsigned* flags_b = a.flags + gridDim.x;

  T* Wh = reinterpret_cast<T*>(smem);                      // [Mpad][ldw], row u*4+g
  T* Wr = Wh + static_cast<int64_t>(p.Mpad) * p.ldw;       // [Qp][Kh] (projection)
  unsigned char* tile = reinterpret_cast<unsigned char*>(Wr + (PROJ ? Qp * p.Kh : 0));
  float* red = reinterpret_cast<float*>(tile + p.tile_bytes);  // [ksplit][Mpad][BT]
  float* cs = red + p.red_floats;                               // [max_bs][U]

  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* w_hr = static_cast<const T*>(a.w_hr);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* c0 = static_cast<const T*>(a.c0);
  T* y = static_cast<T*>(a.y);
  T* h_n = static_cast<T*>(a.h_n);
  T* c_n = static_cast<T*>(a.c_n);

  for (int r = warp; r < p.Mpad; r += kWarps) {
    const int u = r >> 2, g = r & 3;
    const T* src = u < nu ? w_hh + (g * H + j0 + u) * P : nullptr;
    stage_row(Wh + static_cast<int64_t>(r) * p.ldw, src, static_cast<int>(P), p.ldw, lane);
  }
  if (PROJ) {
    for (int r = warp; r < Qp; r += kWarps) {
      const T* src = r < nq ? w_hr + (q0 + r) * H : nullptr;
      stage_row(Wr + static_cast<int64_t>(r) * p.Kh, src, static_cast<int>(H), p.Kh, lane);
    }
  }
  for (int64_t i = threadIdx.x; i < a.max_bs * p.U; i += kThreads) {
    const int64_t b = i / p.U;
    const int u = static_cast<int>(i % p.U);
    cs[i] = u < nu ? to_f(c0[b * H + j0 + u]) : 0.f;
  }
  // Rows that never run keep h0/c0.
  for (int64_t i = threadIdx.x; i < (a.B - a.max_bs) * nu; i += kThreads) {
    const int64_t b = a.max_bs + i / nu, j = j0 + i % nu;
    c_n[b * H + j] = c0[b * H + j];
  }
  for (int64_t i = threadIdx.x; i < (a.B - a.max_bs) * nq; i += kThreads) {
    const int64_t b = a.max_bs + i / nq, q = q0 + i % nq;
    h_n[b * P + q] = h0[b * P + q];
  }
  // The gate biases of this thread's first (row, unit) item, the same unit every step.
  float bias_first[4] = {0.f, 0.f, 0.f, 0.f};
  if (nu > 0) {
#pragma unroll
    for (int g = 0; g < 4; ++g) bias_first[g] = gate_bias<T>(a, g * H + j0 + threadIdx.x % nu);
  }
  __syncthreads();

  const Steps st{a.T, a.B, a.offsets, a.reverse};
  for (int64_t s = 0; s < a.T; ++s) {
    const int64_t off = st.off(s), bs = st.bs(s);
    const int64_t poff = s > 0 ? st.off(s - 1) : 0, pbs = st.bs(s - 1);
    const int64_t nbs = st.bs(s + 1);
    const bool last_step = s == a.T - 1;
    const unsigned epoch = static_cast<unsigned>(s);
    float* h_pre = PROJ ? a.h_pre + (s & 1) * a.B * H : nullptr;

    // The input projection does not depend on the recurrence: load this thread's first values
    // before waiting for the other blocks.
    float pre[4] = {0.f, 0.f, 0.f, 0.f};
    const int first_pairs = nu * static_cast<int>(min64(bs, p.BT));
    const bool prefetch = (a.tuning & 8) == 0;
    if (prefetch && static_cast<int>(threadIdx.x) < first_pairs) {
      const int64_t row = off + threadIdx.x / nu, j = j0 + threadIdx.x % nu;
      const float* gr = a.gates + row * H4 + j;
#pragma unroll
      for (int g = 0; g < 4; ++g) pre[g] = gr[g * H] + bias_first[g];
    }
    wait_epoch(PROJ ? flags_b : flags_a, epoch, sync);

    // Phase A: gates and cell update of this block's units.
    T* At = reinterpret_cast<T*>(tile);
    for (int64_t b0 = 0; b0 < bs; b0 += p.BT) {
      const int nb = static_cast<int>(min64(p.BT, bs - b0));
      if (b0 > 0) __syncthreads();
      stage_tile(At, p.ldw, p.BT, static_cast<int>(P), [&](int r) -> const T* {
        const int64_t b = b0 + r;
        if (r >= nb) return nullptr;
        return b < pbs ? y + (poff + b) * P : h0 + b * P;
      }, per_warp);
      __syncthreads();
      const int nsplit = tile_products<T>(Wh, p.ldw, p.Mpad, nu, At, p.ldw, p.Kp, nb, p.BT, red, lane, warp);
      __syncthreads();
      for (int i = threadIdx.x; i < nu * nb; i += kThreads) {
        const int u = i % nu, r = i / nu;
        const int64_t b = b0 + r, j = j0 + u, row = off + b;
        float* gr = a.gates + row * H4 + j;
        float x[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          if (prefetch && b0 == 0 && i == static_cast<int>(threadIdx.x)) {
            x[g] = pre[g];
          } else {
            const bool own_unit = i == static_cast<int>(threadIdx.x);  // u == threadIdx.x % nu
            x[g] = gr[g * H] + (own_unit ? bias_first[g] : gate_bias<T>(a, g * H + j));
          }
          for (int ks = 0; ks < nsplit; ++ks) {
            x[g] += red[static_cast<int64_t>(ks) * p.Mpad * p.BT + (u * 4 + g) * p.BT + r];
          }
        }
        const float gi = act_sigmoid<T>(x[0]), gf = act_sigmoid<T>(x[1]);
        const float gg = act_tanh<T>(x[2]), go = act_sigmoid<T>(x[3]);
        float* cp = cs + b * p.U + u;
        const float c = gf * *cp + gi * gg;
        *cp = c;
        const float h = go * act_tanh<T>(c);
        if (a.save) {
          gr[0] = gi;
          gr[H] = gf;
          gr[2 * H] = gg;
          gr[3 * H] = go;
          a.cells[row * H + j] = c;
        }
        if (PROJ) {
          h_pre[b * H + j] = h;
        } else {
          const T hv = from_f<T>(h);
          y[row * P + j] = hv;
          if (last_step || b >= nbs) h_n[b * P + j] = hv;
        }
      }
    }
    signal_epoch(flags_a, epoch + 1, sync);

    if (PROJ) {
      // Phase B: y[:, q0..q0+nq) = h_pre W_hr[q0..]^T.
      wait_epoch(flags_a, epoch + 1, sync);
      float* Af = reinterpret_cast<float*>(tile);
      const int ngq = (nq + 3) / 4;
      for (int64_t b0 = 0; b0 < bs; b0 += p.BT) {
        const int nb = static_cast<int>(min64(p.BT, bs - b0));
        if (b0 > 0) __syncthreads();
        stage_tile(Af, p.Kh, p.BT, static_cast<int>(H), [&](int r) -> const float* {
          return r < nb ? h_pre + (b0 + r) * H : nullptr;
        }, per_warp);
        __syncthreads();
        const int ngroups = (nb + 3) / 4;
        for (int item = warp; item < ngq * ngroups; item += kWarps) {
          const int grp = item % ngq, ag = item / ngq;
          float acc[16];
#pragma unroll
          for (int i = 0; i < 16; ++i) acc[i] = 0.f;
          dot4x4(Wr + static_cast<int64_t>(grp) * 4 * p.Kh, p.Kh,
                 Af + static_cast<int64_t>(ag) * 4 * p.Kh, p.Kh, p.Kh, lane, acc);
          const float v = reduce16(acc, lane);
          const int idx = (lane >> 1) & 15;
          const int q = grp * 4 + (idx >> 2), a_row = ag * 4 + (idx & 3);
          if ((lane & 1) == 0 && q < nq && a_row < nb) {
            const int64_t b = b0 + a_row;
            const T hv = from_f<T>(v);
            y[(off + b) * P + q0 + q] = hv;
            if (last_step || b >= nbs) h_n[b * P + q0 + q] = hv;
          }
        }
      }
      signal_epoch(flags_b, epoch + 1, sync);
    }
  }

  __syncthreads();
  for (int64_t i = threadIdx.x; i < a.max_bs * p.U; i += kThreads) {
    const int64_t b = i / p.U;
    const int u = static_cast<int>(i % p.U);
    if (u < nu) c_n[b * H + j0 + u] = from_f<T>(cs[i]);
  }
}

template <typename T, bool PROJ>
FwdPlan make_plan(const ForwardArgs& a, int64_t max_batch) {
  FwdPlan p;
  const DeviceInfo d = device_info();
  if (d.sms == 0 || a.max_bs > max_batch || a.H <= 0 || a.T <= 0) return p;
  const int64_t sz = sizeof(T);
  p.U = static_cast<int>(std::max<int64_t>((a.H + d.sms - 1) / d.sms, std::max(1, a.min_units)));
  const int64_t grid = (a.H + p.U - 1) / p.U;
  p.Q = PROJ ? static_cast<int>((a.P + grid - 1) / grid) : p.U;
  p.Kp = static_cast<int>(round_up(a.P, kChunk));
  p.Kh = static_cast<int>(round_up(a.H, kChunk));
  p.ldw = p.Kp + (kMma<T> ? 8 : 0);
  p.Mpad = static_cast<int>(kMma<T> ? round_up(4 * p.U, 16) : 4 * p.U);
  const int step = kMma<T> ? 8 : 4;
  const int64_t fixed = p.Mpad * p.ldw * sz + (PROJ ? round_up(p.Q, 4) * p.Kh * sz : 0) +
                        round_up(a.max_bs * p.U * 4, 16);
  for (int bt = static_cast<int>(std::min<int64_t>(32, round_up(a.max_bs, step))); bt >= step;
       bt -= step) {
    const int64_t tile = round_up(std::max<int64_t>(bt * p.ldw * sz, PROJ ? bt * p.Kh * 4 : 0), 16);
    const int64_t red = (kMma<T> ? std::max(128, p.Mpad) : p.Mpad) * static_cast<int64_t>(bt);
    if (fixed + tile + red * 4 <= d.smem_optin) {
      p.BT = bt;
      p.tile_bytes = tile;
      p.red_floats = red;
      p.smem = fixed + tile + red * 4;
      break;
    }
  }
  if (p.BT == 0) return p;
  if (!fits_cooperative(reinterpret_cast<const void*>(forward_kernel<T, PROJ>),
                        static_cast<int>(grid), static_cast<size_t>(p.smem))) {
    return p;
  }
  p.grid = static_cast<int>(grid);
  return p;
}

template <typename T, bool PROJ>
int launch(const ForwardArgs& a, cudaStream_t stream) {
  const FwdPlan p = make_plan<T, PROJ>(a, INT64_MAX);
  if (p.grid == 0) return static_cast<int>(cudaErrorInvalidConfiguration);
  ForwardArgs args = a;
  FwdPlan plan = p;
  void* params[] = {&args, &plan};
  return static_cast<int>(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(forward_kernel<T, PROJ>), dim3(p.grid), dim3(kThreads),
      params, static_cast<size_t>(p.smem), stream));
}

template <typename T>
int plan_grid(const ForwardArgs& a, int64_t max_batch) {
  return a.w_hr ? make_plan<T, true>(a, max_batch).grid : make_plan<T, false>(a, max_batch).grid;
}

template <typename T>
int launch_any(const ForwardArgs& a, cudaStream_t stream) {
  return a.w_hr ? launch<T, true>(a, stream) : launch<T, false>(a, stream);
}

}  // namespace

int forward_persistent_plan(const ForwardArgs& a, Scalar s, int64_t max_batch) {
  switch (s) {
    case Scalar::kFloat32: return plan_grid<float>(a, max_batch);
    case Scalar::kFloat16: return plan_grid<__half>(a, max_batch);
    case Scalar::kBFloat16: return plan_grid<__nv_bfloat16>(a, max_batch);
    default: return 0;
  }
}

int forward_persistent(const ForwardArgs& a, Scalar s, cudaStream_t stream) {
  switch (s) {
    case Scalar::kFloat32: return launch_any<float>(a, stream);
    case Scalar::kFloat16: return launch_any<__half>(a, stream);
    case Scalar::kBFloat16: return launch_any<__nv_bfloat16>(a, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace cuda
}  // namespace lstm_fused
