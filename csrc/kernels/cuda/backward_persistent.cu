// The persistent backward recurrence: one cooperative launch visits the steps in reverse order of
// the forward.
//
// Block g owns hidden units j0 .. j0+U-1 and the W_hh columns q0 .. q0+Q-1 (the same as its units
// without a projection), kept transposed in shared memory for the whole launch. Per visited step:
//   phase A (columns): dh[:, q] = grad_y[:, q] + dgates_prev W_hh[:, q] for the rows of this step
//            (dgates_prev: the step visited before, i.e. the next one in time; a row that starts
//            here takes grad_hn instead, a row that ended at the previous step gets dh0 = the dot);
//            it also writes h_prev (the h_{t-1} of each row) for dW_hh;
//   phase B (units):   (projection: after a grid barrier, dh_pre = dh_out W_hr[:, j]) the pointwise
//            gradient of the cell from the saved gates and cells gives dgates of this step and
//            carries dc (kept in shared memory) to the step before;
// then a grid barrier, so that the next phase A reads complete rows of dgates.
// No atomics: every output element has exactly one writer; the result is bitwise reproducible.
#include "common.cuh"

namespace lstm_fused {
namespace cuda {
namespace {

struct BwdPlan {
  int grid = 0;
  int U = 0, Q = 0;    // units and W_hh columns per block
  int K4 = 0, Kp = 0;  // 4H and P padded to kChunk
  int ldk = 0;         // row stride of the W_hh^T slice and of the dgates tile (K4, +8 for MMA)
  int Qm = 0;          // rows of the W_hh^T slice in shared memory (Q padded to 4, or 16 for MMA)
  int BT = 0;
  int64_t red_floats = 0, tile_bytes = 0, state_bytes = 0;
  int64_t smem = 0;
};

// What the cell gradient of one (row, unit) reads from the forward: independent of the
// recurrence, so it can be loaded before waiting for the other blocks.
struct CellIn {
  float gi, gf, gg, go, c, cprev;
};

template <typename T>
__device__ __forceinline__ CellIn load_cell(const BackwardArgs& a, const Steps& st, int64_t s,
                                            int64_t j, int64_t b) {
  const int64_t H = a.H, H4 = 4 * a.H;
  const int64_t row = st.off(s) + b;
  const float* g = a.gates + row * H4 + j;
  CellIn in;
  in.gi = g[0];
  in.gf = g[H];
  in.gg = g[2 * H];
  in.go = g[3 * H];
  in.c = a.cells[row * H + j];
  in.cprev = b < st.bs(s + 1) ? a.cells[(st.off(s + 1) + b) * H + j]
                              : to_f(static_cast<const T*>(a.c0)[b * H + j]);
  return in;
}

template <typename T, bool PROJ>
__device__ __forceinline__ void cell_grad(const BackwardArgs& a, int64_t row, int64_t j,
                                          float* dcp, float dh, const CellIn& in) {
  const int64_t H = a.H;
  const float tc = tanhf(in.c);
  const float dc = *dcp + dh * in.go * (1.f - tc * tc);
  T* dg = static_cast<T*>(a.dgates) + row * 4 * H + j;
  dg[0] = from_f<T>(dc * in.gg * in.gi * (1.f - in.gi));
  dg[H] = from_f<T>(dc * in.cprev * in.gf * (1.f - in.gf));
  dg[2 * H] = from_f<T>(dc * in.gi * (1.f - in.gg * in.gg));
  dg[3 * H] = from_f<T>(dh * tc * in.go * (1.f - in.go));
  *dcp = dc * in.gf;
  if (PROJ) a.h_pre[row * H + j] = in.go * tc;
}

template <typename T, bool PROJ>
__global__ void __launch_bounds__(kThreads, 1) backward_kernel(const BackwardArgs a, const BwdPlan p) {
  extern __shared__ __align__(16) unsigned char smem[];
  unsigned* flags_a = a.flags;
  unsigned* flags_b = a.flags + gridDim.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sync = a.tuning & 3;
  const bool per_warp = (a.tuning & 4) != 0;
  const int64_t H = a.H, P = a.P, H4 = 4 * a.H;
  const int j0 = blockIdx.x * p.U;
  const int nu = static_cast<int>(max64(0, min64(p.U, H - j0)));
  const int q0 = PROJ ? blockIdx.x * p.Q : j0;
  const int nq = PROJ ? static_cast<int>(max64(0, min64(p.Q, P - q0))) : nu;
  const int Up = static_cast<int>(round_up(p.U, 4));

  T* WT = reinterpret_cast<T*>(smem);                  // [Qm][ldk]: row q = W_hh[:, q0+q]
  T* WrT = WT + static_cast<int64_t>(p.Qm) * p.ldk;    // [Up][Kp]: row u = W_hr[:, j0+u]
  unsigned char* tile = reinterpret_cast<unsigned char*>(WrT + (PROJ ? Up * p.Kp : 0));
  float* red = reinterpret_cast<float*>(tile + p.tile_bytes);   // [ksplit][Qm][BT]
  float* dcs = red + p.red_floats;                               // [max_bs][U]
  float* dhs = reinterpret_cast<float*>(reinterpret_cast<unsigned char*>(dcs) + p.state_bytes);
  const T* dgates = static_cast<const T*>(a.dgates);

  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* w_hr = static_cast<const T*>(a.w_hr);
  const T* grad_y = static_cast<const T*>(a.grad_y);
  const T* grad_hn = static_cast<const T*>(a.grad_hn);
  const T* grad_cn = static_cast<const T*>(a.grad_cn);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* y = static_cast<const T*>(a.y);
  T* h_prev = static_cast<T*>(a.h_prev);
  T* dh0 = static_cast<T*>(a.dh0);
  T* dc0 = static_cast<T*>(a.dc0);

  // Transposed weight slices: strided reads, once per launch.
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(p.Qm) * p.ldk; i += kThreads) {
    const int64_t q = i / p.ldk, k = i % p.ldk;
    WT[i] = (q < nq && k < H4) ? w_hh[k * P + q0 + q] : T();
  }
  if (PROJ) {
    for (int64_t i = threadIdx.x; i < static_cast<int64_t>(Up) * p.Kp; i += kThreads) {
      const int64_t u = i / p.Kp, k = i % p.Kp;
      WrT[i] = (u < nu && k < P) ? w_hr[k * H + j0 + u] : T();
    }
  }
  for (int64_t i = threadIdx.x; i < a.max_bs * p.U; i += kThreads) {
    const int64_t b = i / p.U;
    const int u = static_cast<int>(i % p.U);
    dcs[i] = u < nu ? to_f(grad_cn[b * H + j0 + u]) : 0.f;
  }
  // Rows that never run: their gradients pass straight through.
  for (int64_t i = threadIdx.x; i < (a.B - a.max_bs) * nu; i += kThreads) {
    const int64_t b = a.max_bs + i / nu, j = j0 + i % nu;
    dc0[b * H + j] = grad_cn[b * H + j];
  }
  for (int64_t i = threadIdx.x; i < (a.B - a.max_bs) * nq; i += kThreads) {
    const int64_t b = a.max_bs + i / nq, q = q0 + i % nq;
    dh0[b * P + q] = grad_hn[b * P + q];
  }
  __syncthreads();

  const Steps st{a.T, a.B, a.offsets, !a.reverse};
  for (int64_t s = 0; s <= a.T; ++s) {
    const int64_t bs = st.bs(s), pbs = st.bs(s - 1), fbs = st.bs(s + 1);
    const int64_t off = s < a.T ? st.off(s) : 0;
    const int64_t poff = s > 0 ? st.off(s - 1) : 0;
    const int64_t foff = fbs > 0 ? st.off(s + 1) : 0;
    const int64_t nrows = max64(bs, pbs);
    const unsigned epoch = static_cast<unsigned>(s);

    // Without a projection, thread i's first (row, unit) of phase B is i: load what it reads
    // from the forward before waiting.
    CellIn pre{};
    const bool prefetched = !PROJ && s < a.T && static_cast<int64_t>(threadIdx.x) < bs * nu;
    if (prefetched) pre = load_cell<T>(a, st, s, j0 + threadIdx.x % nu, threadIdx.x / nu);
    wait_epoch(flags_b, epoch, sync);

    // Phase A: dh of this block's columns.
    T* At = reinterpret_cast<T*>(tile);
    for (int64_t b0 = 0; b0 < nrows; b0 += p.BT) {
      const int nb = static_cast<int>(min64(p.BT, nrows - b0));
      if (b0 > 0) __syncthreads();
      stage_tile(At, p.ldk, p.BT, static_cast<int>(H4), [&](int r) -> const T* {
        const int64_t b = b0 + r;
        return (r < nb && b < pbs) ? dgates + (poff + b) * H4 : nullptr;
      }, per_warp);
      __syncthreads();
      const int nsplit = tile_products<T>(WT, p.ldk, p.Qm, (nq + 3) / 4, At, p.ldk, p.K4, nb, p.BT,
                                          red, lane, warp);
      __syncthreads();
      for (int i = threadIdx.x; i < nq * nb; i += kThreads) {
        const int q = i % nq, r = i / nq;
        float v = 0.f;
        for (int ks = 0; ks < nsplit; ++ks) v += red[static_cast<int64_t>(ks) * p.Qm * p.BT + q * p.BT + r];
        const int64_t b = b0 + r, qq = q0 + q;
        const float rec = b < pbs ? v : to_f(grad_hn[b * P + qq]);
        if (b < bs) {
          const int64_t row = off + b;
          const float dh = rec + to_f(grad_y[row * P + qq]);
          if (PROJ) {
            a.dh_out[row * P + qq] = dh;
          } else {
            dhs[b * p.U + q] = dh;
          }
          h_prev[row * P + qq] = b < fbs ? y[(foff + b) * P + qq] : h0[b * P + qq];
        } else {
          dh0[b * P + qq] = from_f<T>(rec);
        }
      }
    }
    if (s == a.T) break;

    // Phase B: the cell gradient of this block's units.
    if (PROJ) {
      signal_epoch(flags_a, epoch + 1, sync);
      wait_epoch(flags_a, epoch + 1, sync);
      float* Af = reinterpret_cast<float*>(tile);
      const int ngu = (nu + 3) / 4;
      for (int64_t b0 = 0; b0 < bs; b0 += p.BT) {
        const int nb = static_cast<int>(min64(p.BT, bs - b0));
        if (b0 > 0) __syncthreads();
        stage_tile(Af, p.Kp, p.BT, static_cast<int>(P), [&](int r) -> const float* {
          return r < nb ? a.dh_out + (off + b0 + r) * P : nullptr;
        }, per_warp);
        __syncthreads();
        const int ngroups = (nb + 3) / 4;
        for (int item = warp; item < ngu * ngroups; item += kWarps) {
          const int grp = item % ngu, ag = item / ngu;
          float acc[16];
#pragma unroll
          for (int i = 0; i < 16; ++i) acc[i] = 0.f;
          dot4x4(WrT + static_cast<int64_t>(grp) * 4 * p.Kp, p.Kp,
                 Af + static_cast<int64_t>(ag) * 4 * p.Kp, p.Kp, p.Kp, lane, acc);
          const float v = reduce16(acc, lane);
          const int idx = (lane >> 1) & 15;
          const int u = grp * 4 + (idx >> 2), a_row = ag * 4 + (idx & 3);
          if ((lane & 1) == 0 && u < nu && a_row < nb) {
            const int64_t b = b0 + a_row;
            cell_grad<T, PROJ>(a, off + b, j0 + u, dcs + b * p.U + u, v,
                            load_cell<T>(a, st, s, j0 + u, b));
          }
        }
      }
    } else {
      __syncthreads();
      for (int64_t i = threadIdx.x; i < bs * nu; i += kThreads) {
        const int64_t b = i / nu;
        const int u = static_cast<int>(i % nu);
        const CellIn in = (prefetched && i == threadIdx.x) ? pre : load_cell<T>(a, st, s, j0 + u, b);
        cell_grad<T, PROJ>(a, off + b, j0 + u, dcs + b * p.U + u, dhs[b * p.U + u], in);
      }
    }
    signal_epoch(flags_b, epoch + 1, sync);
  }
  __syncthreads();

  for (int64_t i = threadIdx.x; i < a.max_bs * p.U; i += kThreads) {
    const int64_t b = i / p.U;
    const int u = static_cast<int>(i % p.U);
    if (u < nu) dc0[b * H + j0 + u] = from_f<T>(dcs[i]);
  }
}

template <typename T, bool PROJ>
BwdPlan make_plan(const BackwardArgs& a, int64_t max_batch) {
  BwdPlan p;
  const DeviceInfo d = device_info();
  if (d.sms == 0 || a.max_bs > max_batch || a.H <= 0 || a.T <= 0) return p;
  const int64_t sz = sizeof(T);
  p.U = static_cast<int>(std::max<int64_t>((a.H + d.sms - 1) / d.sms, std::max(1, a.min_units)));
  const int64_t grid = (a.H + p.U - 1) / p.U;
  p.Q = PROJ ? static_cast<int>((a.P + grid - 1) / grid) : p.U;
  p.K4 = static_cast<int>(round_up(4 * a.H, kChunk));
  p.Kp = static_cast<int>(round_up(a.P, kChunk));
  p.ldk = p.K4 + (kMma<T> ? 8 : 0);
  p.Qm = static_cast<int>(round_up(p.Q, kMma<T> ? 16 : 4));
  p.state_bytes = round_up(a.max_bs * p.U * 4, 16);
  const int step = kMma<T> ? 8 : 4;
  const int64_t fixed = p.Qm * p.ldk * sz + (PROJ ? round_up(p.U, 4) * p.Kp * sz : 0) +
                        2 * p.state_bytes;
  for (int bt = static_cast<int>(std::min<int64_t>(32, round_up(a.max_bs, step))); bt >= step;
       bt -= step) {
    const int64_t tile = round_up(std::max<int64_t>(bt * p.ldk * sz, PROJ ? bt * p.Kp * 4 : 0), 16);
    const int64_t red = (kMma<T> ? std::max(128, p.Qm) : p.Qm) * static_cast<int64_t>(bt);
    if (fixed + tile + red * 4 <= d.smem_optin) {
      p.BT = bt;
      p.tile_bytes = tile;
      p.red_floats = red;
      p.smem = fixed + tile + red * 4;
      break;
    }
  }
  if (p.BT == 0) return p;
  if (!fits_cooperative(reinterpret_cast<const void*>(backward_kernel<T, PROJ>),
                        static_cast<int>(grid), static_cast<size_t>(p.smem))) {
    return p;
  }
  p.grid = static_cast<int>(grid);
  return p;
}

template <typename T, bool PROJ>
int launch(const BackwardArgs& a, cudaStream_t stream) {
  const BwdPlan p = make_plan<T, PROJ>(a, INT64_MAX);
  if (p.grid == 0) return static_cast<int>(cudaErrorInvalidConfiguration);
  BackwardArgs args = a;
  BwdPlan plan = p;
  void* params[] = {&args, &plan};
  return static_cast<int>(cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(backward_kernel<T, PROJ>), dim3(p.grid), dim3(kThreads),
      params, static_cast<size_t>(p.smem), stream));
}

template <typename T>
int plan_grid(const BackwardArgs& a, int64_t max_batch) {
  return a.w_hr ? make_plan<T, true>(a, max_batch).grid : make_plan<T, false>(a, max_batch).grid;
}

template <typename T>
int launch_any(const BackwardArgs& a, cudaStream_t stream) {
  return a.w_hr ? launch<T, true>(a, stream) : launch<T, false>(a, stream);
}

}  // namespace

int backward_persistent_plan(const BackwardArgs& a, Scalar s, int64_t max_batch) {
  switch (s) {
    case Scalar::kFloat32: return plan_grid<float>(a, max_batch);
    case Scalar::kFloat16: return plan_grid<__half>(a, max_batch);
    case Scalar::kBFloat16: return plan_grid<__nv_bfloat16>(a, max_batch);
    default: return 0;
  }
}

int backward_persistent(const BackwardArgs& a, Scalar s, cudaStream_t stream) {
  switch (s) {
    case Scalar::kFloat32: return launch_any<float>(a, stream);
    case Scalar::kFloat16: return launch_any<__half>(a, stream);
    case Scalar::kBFloat16: return launch_any<__nv_bfloat16>(a, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace cuda
}  // namespace lstm_fused
