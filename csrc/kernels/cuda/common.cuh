// Device helpers shared by the CUDA kernels: dtype conversion, 4-wide shared-memory loads, the
// 4x4 warp dot-product tile and its reduction, step/row indexing, row staging.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "lstm_cuda.h"

namespace lstm_fused {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of the persistent kernels
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 128;    // k per warp iteration (32 lanes x 4); K is padded to it

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_f(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Four consecutive elements from shared memory as floats (p aligned to 4 elements).
__device__ __forceinline__ float4 load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 load4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// b_ih[k] + b_hh[k] in fp32, either absent: the forward kernels add the gate biases to the input
// projection themselves (the adapter's GEMM has no bias: one op per call instead of up to five).
template <typename T>
__device__ __forceinline__ float gate_bias(const ForwardArgs& a, int64_t k) {
  float v = 0.f;
  if (a.b_ih != nullptr) v += to_f(static_cast<const T*>(a.b_ih)[k]);
  if (a.b_hh != nullptr) v += to_f(static_cast<const T*>(a.b_hh)[k]);
  return v;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// acc[w*4 + a] += sum over k of W[w][k] * A[a][k] for the 4 W rows and 4 A rows given, k in
// [0, K) with K a multiple of kChunk; lane l covers k = 4l..4l+3 of each chunk.
template <typename WT, typename AT>
__device__ __forceinline__ void dot4x4(const WT* __restrict__ W, int ldw,
                                       const AT* __restrict__ A, int lda, int K, int lane,
                                       float acc[16]) {
#pragma unroll 2
  for (int k = lane * 4; k < K; k += kChunk) {
    float4 w[4], x[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) w[r] = load4(W + r * ldw + k);
#pragma unroll
    for (int r = 0; r < 4; ++r) x[r] = load4(A + r * lda + k);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        float s = acc[r * 4 + a];
        s = fmaf(w[r].x, x[a].x, s);
        s = fmaf(w[r].y, x[a].y, s);
        s = fmaf(w[r].z, x[a].z, s);
        s = fmaf(w[r].w, x[a].w, s);
        acc[r * 4 + a] = s;
      }
    }
  }
}

// Tensor cores: D = A B + D for one m16n8k16 tile, A (16x16) and B (16x8) in 16-bit, fp32 D.
// A is row-major in shared memory (lda elements per row), loaded once into the fragment `af` by
// mma_load_a; B is given as its transpose Bt (8 rows of k, ldb per row); both at their tile
// origin and k offset; lane roles as in the PTX ISA.
template <typename T>
__device__ __forceinline__ void mma_load_a(const T* A, int lda, int lane, uint32_t af[4]) {
  const int gid = lane >> 2, tig = lane & 3;
  af[0] = *reinterpret_cast<const uint32_t*>(A + gid * lda + tig * 2);
  af[1] = *reinterpret_cast<const uint32_t*>(A + (gid + 8) * lda + tig * 2);
  af[2] = *reinterpret_cast<const uint32_t*>(A + gid * lda + 8 + tig * 2);
  af[3] = *reinterpret_cast<const uint32_t*>(A + (gid + 8) * lda + 8 + tig * 2);
}

template <typename T>
__device__ __forceinline__ void mma_16x8x16(const uint32_t af[4], const T* Bt, int ldb, int lane,
                                            float d[4]) {
  const int gid = lane >> 2, tig = lane & 3;
  const uint32_t b0 = *reinterpret_cast<const uint32_t*>(Bt + gid * ldb + tig * 2);
  const uint32_t b1 = *reinterpret_cast<const uint32_t*>(Bt + gid * ldb + 8 + tig * 2);
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(af[0]), "r"(af[1]), "r"(af[2]), "r"(af[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(af[0]), "r"(af[1]), "r"(af[2]), "r"(af[3]), "r"(b0), "r"(b1));
  }
}

// Half types multiply on the tensor cores (fp32 accumulation); float32 uses FFMA.
template <typename T> constexpr bool kMma = !std::is_same<T, float>::value;

// How tile_mma splits a W tile of Mpad rows (a multiple of 16) and K columns (a multiple of 16)
// over the warps: mt 16-row tiles times ksplit K-slices of `slice` 16-wide steps. Fixed for a
// launch, so the persistent kernels can compute it once, outside the time loop.
struct MmaSplit {
  int mt, ks16, ksplit, slice;
};
__device__ __forceinline__ MmaSplit mma_split(int Mpad, int K) {
  MmaSplit sp;
  sp.mt = Mpad / 16;
  sp.ks16 = K / 16;
  sp.ksplit = max(1, min(kWarps / sp.mt, sp.ks16));
  sp.slice = (sp.ks16 + sp.ksplit - 1) / sp.ksplit;
  return sp;
}

// red[ks][m][r] = the K-slice ks of sum_k W[m][k] * A[r][k] on the tensor cores, for r < nb <= 32.
// A warp takes one 16-row W tile and one K-slice for all (<= 4) 8-row tiles of A: each W fragment
// is loaded once for all of them, and the 4 accumulators are independent chains.
template <typename T>
__device__ __forceinline__ void tile_mma(const MmaSplit& sp, const T* W, int ldw, int Mpad,
                                         const T* A, int lda, int nb, int BT, float* red, int lane,
                                         int warp) {
  const int nt = (nb + 7) / 8;
  const int gid = lane >> 2, tig = lane & 3;
  for (int task = warp; task < sp.mt * sp.ksplit; task += kWarps) {
    const int mi = task % sp.mt, ks = task / sp.mt;
    float d[4][4];
#pragma unroll
    for (int n = 0; n < 4; ++n) d[n][0] = d[n][1] = d[n][2] = d[n][3] = 0.f;
    const int kend = min(sp.ks16, (ks + 1) * sp.slice);
    const T* Wm = W + static_cast<int64_t>(mi) * 16 * ldw;
    for (int k = ks * sp.slice; k < kend; ++k) {
      uint32_t af[4];
      mma_load_a(Wm + k * 16, ldw, lane, af);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        if (n < nt) mma_16x8x16<T>(af, A + static_cast<int64_t>(n) * 8 * lda + k * 16, lda, lane, d[n]);
      }
    }
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if (n < nt) {
        float* r = red + static_cast<int64_t>(ks) * Mpad * BT + (mi * 16 + gid) * BT + n * 8 + tig * 2;
        r[0] = d[n][0];
        r[1] = d[n][1];
        r[8 * BT] = d[n][2];
        r[8 * BT + 1] = d[n][3];
      }
    }
  }
}

__device__ __forceinline__ float reduce16(float v[16], int lane);

// The products of one staged tile: red[ks][m][r] = sum over the K-slice ks of W[m][k] * A[r][k]
// for W rows m < Mpad (shared, stride ldw) and tile rows r < BT (shared, stride lda), K padded
// (kChunk for FFMA, 16 for MMA, zeros past the data). FFMA: one K-slice, warps take groups of 4
// W rows (mgroups of them) x 4 tile rows. MMA: tile_mma (nb <= 32).
// Returns the number of K-slices to sum. The caller synchronizes before and after.
template <typename T>
__device__ __forceinline__ int tile_products(const T* W, int ldw, int Mpad, int mgroups,
                                             const T* A, int lda, int K, int nb, int BT,
                                             float* red, int lane, int warp) {
  if constexpr (kMma<T>) {
    const MmaSplit sp = mma_split(Mpad, K);
    tile_mma<T>(sp, W, ldw, Mpad, A, lda, nb, BT, red, lane, warp);
    return sp.ksplit;
  } else {
    const int ngroups = (nb + 3) / 4;
    for (int item = warp; item < mgroups * ngroups; item += kWarps) {
      const int mg = item % mgroups, ag = item / mgroups;
      float acc[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) acc[i] = 0.f;
      dot4x4(W + static_cast<int64_t>(mg) * 4 * ldw, ldw, A + static_cast<int64_t>(ag) * 4 * lda,
             lda, K, lane, acc);
      const float v = reduce16(acc, lane);
      const int idx = (lane >> 1) & 15;
      if ((lane & 1) == 0) red[(mg * 4 + (idx >> 2)) * BT + ag * 4 + (idx & 3)] = v;
    }
    return 1;
  }
}

// Sums each of the 16 values over the warp; lane l ends with the total of index (l >> 1) & 15
// (a transpose-reduce: 15 shuffles instead of 80).
__device__ __forceinline__ float reduce16(float v[16], int lane) {
  constexpr unsigned kFull = 0xffffffffu;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const bool up = lane & 16;
    const float send = up ? v[i] : v[i + 8];
    const float keep = up ? v[i + 8] : v[i];
    v[i] = keep + __shfl_xor_sync(kFull, send, 16);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bool up = lane & 8;
    const float send = up ? v[i] : v[i + 4];
    const float keep = up ? v[i + 4] : v[i];
    v[i] = keep + __shfl_xor_sync(kFull, send, 8);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const bool up = lane & 4;
    const float send = up ? v[i] : v[i + 2];
    const float keep = up ? v[i + 2] : v[i];
    v[i] = keep + __shfl_xor_sync(kFull, send, 4);
  }
  {
    const bool up = lane & 2;
    const float send = up ? v[0] : v[1];
    const float keep = up ? v[1] : v[0];
    v[0] = keep + __shfl_xor_sync(kFull, send, 2);
  }
  return v[0] + __shfl_xor_sync(kFull, v[0], 1);
}

// Step flags between the blocks of one persistent launch, in place of a grid-wide barrier:
// flags[g] is the last epoch block g has completed (monotonic; the adapter zeroes the flags before
// each launch, which a CUDA graph replays as a memset). A consumer waits only for what it reads,
// with one thread polling each producer's flag, so no single counter serializes 132 atomics.
// sync: 0 = release store / acquire poll, 1 = __threadfence + volatile store / volatile poll +
// __threadfence, 2 = a cooperative-groups grid barrier at every wait (for comparison).
__device__ __forceinline__ void signal_epoch(unsigned* flags, unsigned epoch, int sync) {
  if (sync == 2) return;
  __syncthreads();  // every thread's writes of this phase precede thread 0's release
  if (threadIdx.x == 0) {
    if (sync == 0) {
      asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(flags + blockIdx.x), "r"(epoch)
                   : "memory");
    } else {
      __threadfence();
      *reinterpret_cast<volatile unsigned*>(flags + blockIdx.x) = epoch;
    }
  }
}
__device__ __forceinline__ void wait_epoch(const unsigned* flags, unsigned epoch, int sync) {
  if (sync == 2) {
    cooperative_groups::this_grid().sync();
    return;
  }
  for (unsigned i = threadIdx.x; i < gridDim.x; i += blockDim.x) {
    unsigned v;
    if (sync == 0) {
      do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(flags + i) : "memory");
      } while (v < epoch);
    } else {
      do {
        v = *reinterpret_cast<const volatile unsigned*>(flags + i);
      } while (v < epoch);
      __threadfence();
    }
  }
  __syncthreads();
}

// Activations. Half types (whose h is rounded to 11 or 8 bits anyway) use the hardware exp2 and
// reciprocal (a few ulp in fp32); float32 keeps the libdevice functions.
template <typename T>
__device__ __forceinline__ float act_sigmoid(float x) {
  if constexpr (sizeof(T) == 2) {
    return __frcp_rn(1.f + __expf(-x));
  } else {
    return 1.f / (1.f + expf(-x));
  }
}
template <typename T>
__device__ __forceinline__ float act_tanh(float x) {
  if constexpr (sizeof(T) == 2) {
    return 2.f * __frcp_rn(1.f + __expf(-2.f * x)) - 1.f;
  } else {
    return tanhf(x);
  }
}

// Row bookkeeping of one visited step.
struct Steps {
  int64_t T, B;
  const int64_t* offsets;
  bool backwards_in_time;  // visit t = T-1 .. 0

  __device__ __forceinline__ int64_t time_of(int64_t s) const {
    return backwards_in_time ? T - 1 - s : s;
  }
  __device__ __forceinline__ int64_t off(int64_t s) const {
    const int64_t t = time_of(s);
    return offsets ? offsets[t] : t * B;
  }
  // active rows of visited step s; 0 outside [0, T)
  __device__ __forceinline__ int64_t bs(int64_t s) const {
    if (s < 0 || s >= T) return 0;
    const int64_t t = time_of(s);
    return offsets ? offsets[t + 1] - offsets[t] : B;
  }
};

// Loads through L2 only: data written by other blocks of the same launch must not come from a
// stale L1 line (L1 is not coherent across SMs).
template <typename T>
__device__ __forceinline__ T ld_cg(const T* p) {
  static_assert(sizeof(T) == 2 || sizeof(T) == 4, "ld_cg: 2- or 4-byte types");
  if constexpr (sizeof(T) == 2) {
    const unsigned short u = __ldcg(reinterpret_cast<const unsigned short*>(p));
    return *reinterpret_cast<const T*>(&u);
  } else {
    const unsigned int u = __ldcg(reinterpret_cast<const unsigned int*>(p));
    return *reinterpret_cast<const T*>(&u);
  }
}

// Copies `elems` elements of type T from global `src` (or zeros when src is null) into shared
// `dst`, then zeros dst up to `padded` elements. Called by one warp.
template <typename T>
__device__ __forceinline__ void stage_row(T* __restrict__ dst, const T* __restrict__ src,
                                          int elems, int padded, int lane) {
  constexpr int kVec = 16 / sizeof(T);
  int done = 0;
  if (src != nullptr) {
    if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
      const int nvec = elems / kVec;
      const uint4* s4 = reinterpret_cast<const uint4*>(src);
      uint4* d4 = reinterpret_cast<uint4*>(dst);
      for (int i = lane; i < nvec; i += 32) d4[i] = __ldcg(s4 + i);
      done = nvec * kVec;
    }
    for (int i = done + lane; i < elems; i += 32) dst[i] = ld_cg(src + i);
    done = elems;
  }
  for (int i = done + lane; i < padded; i += 32) dst[i] = T();
}

// Stages `rows` rows of `elems` elements (row r from row_ptr(r), zeros where it returns nullptr)
// into shared dst with row stride ldd (a multiple of 16 bytes; zeros past elems), with every
// thread's loads in flight before its first store: one L2 round trip per tile, not one per load.
template <typename T, typename RowPtr>
__device__ __forceinline__ void stage_tile(T* __restrict__ dst, int ldd, int rows, int elems,
                                           const RowPtr& row_ptr, bool per_warp) {
  if (per_warp) {  // one warp per row (for comparison)
    const int lane = threadIdx.x & 31;
    for (int r = threadIdx.x >> 5; r < rows; r += kWarps) {
      stage_row(dst + static_cast<int64_t>(r) * ldd, row_ptr(r), elems, ldd, lane);
    }
    return;
  }
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kUnroll = 8;
  const int cpr = ldd / kVec;
  const int total = rows * cpr;
  for (int base = 0; base < total; base += kThreads * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int c = base + k * kThreads + static_cast<int>(threadIdx.x);
      v[k] = make_uint4(0u, 0u, 0u, 0u);
      if (c < total) {
        const int r = c / cpr, e0 = (c - r * cpr) * kVec;
        const T* src = row_ptr(r);
        if (src != nullptr && e0 < elems) {
          if (e0 + kVec <= elems && (reinterpret_cast<uintptr_t>(src + e0) & 15) == 0) {
            v[k] = __ldcg(reinterpret_cast<const uint4*>(src + e0));
          } else {
            union {
              uint4 u;
              T e[kVec];
            } tmp;
#pragma unroll
            for (int i = 0; i < kVec; ++i) tmp.e[i] = e0 + i < elems ? ld_cg(src + e0 + i) : T();
            v[k] = tmp.u;
          }
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int c = base + k * kThreads + static_cast<int>(threadIdx.x);
      if (c < total) {
        const int r = c / cpr;
        reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * ldd)[c - r * cpr] = v[k];
      }
    }
  }
}

// The adapter's Scalar enum as a device type.
template <Scalar S> struct ScalarType;
template <> struct ScalarType<Scalar::kFloat32> { using type = float; };
template <> struct ScalarType<Scalar::kFloat16> { using type = __half; };
template <> struct ScalarType<Scalar::kBFloat16> { using type = __nv_bfloat16; };

__host__ __device__ constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ constexpr int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
__host__ __device__ constexpr int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

}  // namespace cuda
}  // namespace lstm_fused

namespace lstm_fused {
namespace cuda {

// Multiprocessors and opt-in shared memory per block of the current device (cached per device).
struct DeviceInfo {
  int sms = 0;
  int smem_optin = 0;
};
inline DeviceInfo device_info() {
  static DeviceInfo cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return DeviceInfo{};
  DeviceInfo& d = cache[dev];
  if (d.sms == 0) {
    int sms = 0, smem = 0, coop = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
    d.smem_optin = coop ? smem : 0;
    d.sms = coop ? sms : 0;
  }
  return d;
}

// Whether `grid` blocks of `kernel` with `smem` bytes can all be resident at once (the answer is
// cached: the occupancy query costs more than the launch of a short sequence).
inline bool fits_cooperative(const void* kernel, int grid, size_t smem) {
  struct Entry {
    const void* kernel;
    size_t smem;
    int dev, per_sm;
  };
  static std::mutex mu;
  static std::vector<Entry> cache;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const Entry& e : cache) {
      if (e.kernel == kernel && e.smem == smem && e.dev == dev) {
        return e.per_sm > 0 && grid <= e.per_sm * device_info().sms;
      }
    }
  }
  // Always the device maximum, so that a cached answer never meets a smaller attribute.
  if (smem > static_cast<size_t>(device_info().smem_optin) ||
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           device_info().smem_optin) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() < 256) cache.push_back(Entry{kernel, smem, dev, per_sm});
  }
  return per_sm > 0 && grid <= per_sm * device_info().sms;
}

}  // namespace cuda
}  // namespace lstm_fused
