// The forward recurrence in one thread-block cluster (sm_90): for half types, no projection, and
// small problems (units per block x batch rows <= 128, or both <= 16: B <= 16 at H <= 256), W_hh
// spread over the shared memory of C = 16 (or 8) blocks. The grid-wide kernel
// (forward_persistent.cu) pays a grid barrier through L2 and an L2 round trip for h every step
// (about 4 µs on an H100, half of it the barrier); inside a cluster, h travels through distributed
// shared memory (measured ~2.7 µs per step at B=8, H=128: docs/performance.md).
//
// Block `rank` owns hidden units j0 = rank*U .. j0+U-1 (U a multiple of 8; blocks past H own
// none and sit out the steps) with their 4 gate rows of W_hh in shared memory. Every block
// keeps the whole h_{t-1} of the active rows in a local buffer (two, by step parity; both start
// as h0, so a row that starts late in reverse order still finds its h0 there). Per step:
//   gates of its units = W_hh[rows] h_{t-1} (tile_mma) + input projection + biases; cell update
//   (c in shared memory); h to y/h_n and to a local staging row; then the block copies its U
//   columns of h into the other parity buffer of every block of the cluster with st.async, whose
//   bytes count on that buffer's mbarrier in the receiving block; the next step waits for the
//   phase in which all senders' bytes arrived. No fence and no cluster barrier per step: a
//   cluster barrier's release waited for the step's global stores (tuning bit 9 keeps that
//   exchange, DSMEM stores + barrier, for comparisons).
// A block writes into another block's buffer at step s+1 (the buffer that block read at step s)
// only after it received that block's h of step s, which that block sent after reading it.
#include "common.cuh"

namespace lstm_fused {
namespace cuda {
namespace {

constexpr int64_t kMaxItems = 128;  // U * BT at most, or U and BT both <= 16: see make_plan

struct ClusterPlan {
  int C = 0;     // blocks in the cluster (the whole grid)
  int U = 0;     // units per block, a multiple of 8
  int Kp = 0;    // H padded to 16 (the MMA's K)
  int ldw = 0;   // row stride (elements) of the W_hh slice and of the h buffers
  int Mpad = 0;  // rows of the W_hh slice: 4U, padded to 16
  int BT = 0;    // rows of each h buffer: max_bs padded to 8 (<= 32)
  int64_t off_buf = 0, off_red = 0, off_hs = 0, off_cs = 0, off_bar = 0, smem = 0;  // bytes
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The h exchange without a cluster barrier: each block's two h buffers have an mbarrier each;
// senders write with st.async, which counts the bytes on the receiver's mbarrier, and the receiver
// waits for the phase in which all bytes of the step arrived.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ uint32_t cluster_addr(uint32_t local, int rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(local), "r"(rank));
  return r;
}
__device__ __forceinline__ void bar_init(uint32_t bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar) : "memory");
}
// One arrival (the phase's only one) that also announces the bytes the phase waits for.
__device__ __forceinline__ void bar_arm(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        " selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}
__device__ __forceinline__ void store_async16(uint32_t remote, uint4 v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];"
               ::"r"(remote), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w), "r"(remote_bar)
               : "memory");
}
#endif

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    forward_cluster_kernel(const ForwardArgs a, const ClusterPlan p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int tid = static_cast<int>(threadIdx.x);
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t H = a.H, H4 = 4 * a.H;  // P == H: no projection here
  const int j0 = rank * p.U;
  const int nu = static_cast<int>(max64(0, min64(p.U, H - j0)));

  T* Wh = reinterpret_cast<T*>(smem);                      // [Mpad][ldw], row u*4+g
  T* buf = reinterpret_cast<T*>(smem + p.off_buf);         // [2][BT][ldw]: h by step parity
  float* red = reinterpret_cast<float*>(smem + p.off_red);  // [ksplit][Mpad][BT]
  T* hs = reinterpret_cast<T*>(smem + p.off_hs);           // [BT][U]: this block's new h
  float* cs = reinterpret_cast<float*>(smem + p.off_cs);   // [BT][U]: c
  const int64_t buf_elems = static_cast<int64_t>(p.BT) * p.ldw;

  const T* w_hh = static_cast<const T*>(a.w_hh);
  const T* h0 = static_cast<const T*>(a.h0);
  const T* c0 = static_cast<const T*>(a.c0);
  T* y = static_cast<T*>(a.y);
  T* h_n = static_cast<T*>(a.h_n);
  T* c_n = static_cast<T*>(a.c_n);

  for (int r = warp; r < p.Mpad; r += kWarps) {
    const int u = r >> 2, g = r & 3;
    const T* src = u < nu ? w_hh + (g * H + j0 + u) * H : nullptr;
    stage_row(Wh + static_cast<int64_t>(r) * p.ldw, src, static_cast<int>(H), p.ldw, lane);
  }
  for (int r = warp; r < 2 * p.BT; r += kWarps) {
    const int b = r % p.BT;
    stage_row(buf + static_cast<int64_t>(r) * p.ldw, b < a.max_bs ? h0 + b * H : nullptr,
              static_cast<int>(H), p.ldw, lane);
  }
  for (int i = tid; i < p.BT * p.U; i += kThreads) {
    const int b = i / p.U, u = i % p.U;
    cs[i] = (u < nu && b < a.max_bs) ? to_f(c0[b * H + j0 + u]) : 0.f;
    hs[i] = T();  // columns past nu stay zero: they land in the K padding of every buffer
  }
  // Rows that never run keep h0/c0.
  for (int64_t i = tid; i < (a.B - a.max_bs) * nu; i += kThreads) {
    const int64_t b = a.max_bs + i / nu, j = j0 + i % nu;
    c_n[b * H + j] = c0[b * H + j];
    h_n[b * H + j] = h0[b * H + j];
  }
  // The gate biases of this thread's first (row, unit) item, the same unit every step.
  float bias_first[4] = {0.f, 0.f, 0.f, 0.f};
  if (nu > 0) {
#pragma unroll
    for (int g = 0; g < 4; ++g) bias_first[g] = gate_bias<T>(a, g * H + j0 + tid % nu);
  }
  const MmaSplit sp = mma_split(p.Mpad, p.Kp);
  const int vecs = p.U / 8;  // 16-byte vectors per row of this block's columns
  const Steps st{a.T, a.B, a.offsets, a.reverse};
  const bool tx = (a.tuning & 512) == 0;
  const uint32_t bar0 = smem_addr(smem + p.off_bar);  // [2] mbarriers: buffer 0, buffer 1
  // Bytes that reach every block's other buffer at the end of step s: each block owning units
  // sends U columns of the rows active now and next step.
  const int64_t senders = min64(p.C, (H + p.U - 1) / p.U);
  auto step_bytes = [&](int64_t s) {
    return static_cast<uint32_t>(senders * min64(st.bs(s), st.bs(s + 1)) * vecs * 16);
  };
  // Blocks past H own no units: they never read h, so with st.async nothing is sent to them and
  // they skip the steps (nobody waits for them either; with the cluster barrier they must join
  // every step's barrier).
  const bool idle = tx && nu == 0;
  if (tx && !idle && tid == 0) {
    bar_init(bar0);
    bar_init(bar0 + 8);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    // The data of step 1 (sent at step 0) lands in buffer 1, that of step 2 in buffer 0.
    if (a.T > 1) bar_arm(bar0 + 8, step_bytes(0));
    if (a.T > 2) bar_arm(bar0, step_bytes(1));
  }
  // No block may write into another's buffers before that block has initialized them.
  cluster.sync();

  for (int64_t s = 0; s < (idle ? 0 : a.T); ++s) {
    const int64_t off = st.off(s), bs = st.bs(s), nbs = st.bs(s + 1);
    const bool last_step = s == a.T - 1;
    const T* hin = buf + (s & 1) * buf_elems;
    T* hout = buf + ((s + 1) & 1) * buf_elems;
    if (tx && s > 0) {
      // Buffer s&1 takes the data of steps s, s+2, ...: this is its ((s-1)/2)-th phase.
      const uint32_t bar = bar0 + 8 * static_cast<uint32_t>(s & 1);
      bar_wait(bar, static_cast<uint32_t>(((s - 1) >> 1) & 1));
      // Re-armed for step s+2 only after the wait: its bytes are sent at step s+1 by blocks that
      // first need this block's h of step s, which it sends after this re-arm: none arrive early.
      if (tid == 0 && s + 2 < a.T) bar_arm(bar, step_bytes(s + 1));
    }

    // The input projection of this thread's first (row, unit), loaded before the products.
    float pre[4] = {0.f, 0.f, 0.f, 0.f};
    if (nu > 0 && tid < nu * bs) {
      const float* gr = a.gates + (off + tid / nu) * H4 + j0 + tid % nu;
#pragma unroll
      for (int g = 0; g < 4; ++g) pre[g] = gr[g * H] + bias_first[g];
    }
    if (nu > 0) tile_mma<T>(sp, Wh, p.ldw, p.Mpad, hin, p.ldw, static_cast<int>(bs), p.BT, red, lane, warp);
    __syncthreads();
    for (int i = tid; i < nu * bs; i += kThreads) {
      const int u = i % nu, r = i / nu;
      const int64_t j = j0 + u, row = off + r;
      float* gr = a.gates + row * H4 + j;
      float x[4];
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        x[g] = i == tid ? pre[g] : gr[g * H] + gate_bias<T>(a, g * H + j);
        for (int ks = 0; ks < sp.ksplit; ++ks) {
          x[g] += red[static_cast<int64_t>(ks) * p.Mpad * p.BT + (u * 4 + g) * p.BT + r];
        }
      }
      const float gi = act_sigmoid<T>(x[0]), gf = act_sigmoid<T>(x[1]);
      const float gg = act_tanh<T>(x[2]), go = act_sigmoid<T>(x[3]);
      float* cp = cs + r * p.U + u;
      const float c = gf * *cp + gi * gg;
      *cp = c;
      const T hv = from_f<T>(go * act_tanh<T>(c));
      if (a.save) {
        gr[0] = gi;
        gr[H] = gf;
        gr[2 * H] = gg;
        gr[3 * H] = go;
        a.cells[row * H + j] = c;
      }
      y[row * H + j] = hv;
      if (last_step || r >= nbs) h_n[r * H + j] = hv;
      hs[r * p.U + u] = hv;
    }
    if (last_step) break;
    __syncthreads();
    // Rows active now and next step: h goes to every block's other buffer.
    const int send_rows = nu > 0 ? static_cast<int>(min64(bs, nbs)) : 0;
    const int per_rank = send_rows * vecs;
    if (tx) {
      const uint32_t bar = bar0 + 8 * static_cast<uint32_t>((s + 1) & 1);
      for (int i = tid; i < static_cast<int>(senders) * per_rank; i += kThreads) {
        const int dst_rank = i / per_rank, rem = i - dst_rank * per_rank;
        const int r = rem / vecs, v = rem - r * vecs;
        const uint4 val = reinterpret_cast<const uint4*>(hs + r * p.U)[v];
        const uint32_t local = smem_addr(hout + static_cast<int64_t>(r) * p.ldw + j0 + v * 8);
        store_async16(cluster_addr(local, dst_rank), val, cluster_addr(bar, dst_rank));
      }
      continue;
    }
    for (int i = tid; i < p.C * per_rank; i += kThreads) {
      const int dst_rank = i / per_rank, rem = i - dst_rank * per_rank;
      const int r = rem / vecs, v = rem - r * vecs;
      const uint4 val = reinterpret_cast<const uint4*>(hs + r * p.U)[v];
      T* remote = cluster.map_shared_rank(hout, dst_rank);
      reinterpret_cast<uint4*>(remote + static_cast<int64_t>(r) * p.ldw + j0)[v] = val;
    }
    cluster.sync();
  }

  __syncthreads();
  for (int i = tid; i < a.max_bs * p.U; i += kThreads) {
    const int b = i / p.U, u = i % p.U;
    if (u < nu) c_n[b * H + j0 + u] = from_f<T>(cs[i]);
  }
  // Keep this block's shared memory alive until no other block can still write into it.
  cluster.sync();
#endif
}

// Whether a cluster of C blocks of `kernel` with `smem` bytes each can be scheduled on the
// current device (cached: the query costs more than a short launch).
bool fits_cluster(const void* kernel, int C, size_t smem) {
  struct Entry {
    const void* kernel;
    size_t smem;
    int C, dev;
    bool ok;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const Entry& e : cache) {
      if (e.kernel == kernel && e.smem == smem && e.C == C && e.dev == dev) return e.ok;
    }
  }
  bool ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 device_info().smem_optin) == cudaSuccess &&
            cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) ==
                cudaSuccess;
  if (ok) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(C);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    ok = cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0;
  }
  if (!ok) cudaGetLastError();
  {
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() < 256) cache.push_back(Entry{kernel, smem, C, dev, ok});
  }
  return ok;
}

int device_major() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
  return major;
}

template <typename T>
ClusterPlan make_plan(const ForwardArgs& a) {
  ClusterPlan p;
  const DeviceInfo d = device_info();
  if (d.sms == 0 || a.w_hr != nullptr || a.P != a.H || a.H <= 0 || a.T <= 0 || a.max_bs > 32 ||
      device_major() < 9) {
    return p;
  }
  const int64_t sz = sizeof(T);
  for (const int C : {16, 8}) {
    ClusterPlan q;
    q.C = C;
    q.U = static_cast<int>(round_up((a.H + C - 1) / C, 8));
    const int64_t owners = (a.H + q.U - 1) / q.U;  // blocks that own units
    q.Kp = static_cast<int>(round_up(a.H, 16));
    q.ldw = static_cast<int>(round_up(std::max<int64_t>(a.H, owners * q.U), 16) + 8);
    q.Mpad = static_cast<int>(round_up(4 * q.U, 16));
    q.BT = static_cast<int>(round_up(a.max_bs, 8));
    q.off_buf = round_up(static_cast<int64_t>(q.Mpad) * q.ldw * sz, 16);
    q.off_red = q.off_buf + round_up(2 * static_cast<int64_t>(q.BT) * q.ldw * sz, 16);
    q.off_hs = q.off_red + round_up(std::max(128, q.Mpad) * static_cast<int64_t>(q.BT) * 4, 16);
    q.off_cs = q.off_hs + round_up(static_cast<int64_t>(q.BT) * q.U * sz, 16);
    q.off_bar = round_up(q.off_cs + static_cast<int64_t>(q.BT) * q.U * 4, 16);
    q.smem = q.off_bar + 16;
    // Measured on an H100 (docs/performance.md): ahead of the grid-wide kernel while a block
    // has at most 128 (row, unit) items per step (B=8 at H=256, B=1 at H=256), or 16 units of
    // 16 rows (B=16 at H=256: 3.98 vs 5.21 ms), behind it beyond (B=8 at H=512: 5.48 vs
    // 5.09, B=32 at H=256: 7.59 vs 6.49), where the block's own chain grows and the grid kernel
    // spreads the same work over 8x more multiprocessors.
    const bool small = static_cast<int64_t>(q.U) * q.BT <= kMaxItems || (q.U <= 16 && q.BT <= 16);
    const bool any_items = (a.tuning & 1024) != 0;  // tuning bit 10: no limit (experiments)
    if (q.smem > d.smem_optin || !(small || any_items)) continue;
    if (!fits_cluster(reinterpret_cast<const void*>(forward_cluster_kernel<T>), C,
                      static_cast<size_t>(q.smem))) {
      continue;
    }
    return q;
  }
  return p;
}

template <typename T>
int launch(const ForwardArgs& a, cudaStream_t stream) {
  const ClusterPlan p = make_plan<T>(a);
  if (p.C == 0) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.C);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(p.smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = p.C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return static_cast<int>(cudaLaunchKernelEx(&cfg, forward_cluster_kernel<T>, a, p));
}

}  // namespace

int forward_cluster_plan(const ForwardArgs& a, Scalar s) {
  switch (s) {
    case Scalar::kFloat16: return make_plan<__half>(a).C;
    case Scalar::kBFloat16: return make_plan<__nv_bfloat16>(a).C;
    default: return 0;
  }
}

int forward_cluster(const ForwardArgs& a, Scalar s, cudaStream_t stream) {
  switch (s) {
    case Scalar::kFloat16: return launch<__half>(a, stream);
    case Scalar::kBFloat16: return launch<__nv_bfloat16>(a, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace cuda
}  // namespace lstm_fused
