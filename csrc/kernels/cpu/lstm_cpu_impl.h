// The CPU recurrent loops, written once and compiled once per instruction set: each
// lstm_cpu_<isa>.cpp defines LSTM_ISA (the namespace) and LSTM_VEC_BYTES (vector register width),
// sets `#pragma GCC target`, and includes this file. Plain C++ over GCC vector types and
// fixed-size register tiles, which the compiler maps onto that target's registers, so one source
// serves all; the one exception is the AVX512-BF16 tile (LSTM_BF16_DOT, AVX-512 copy only),
// whose dot-product instruction has no portable spelling.
//
// Only to be included by lstm_cpu_<isa>.cpp, after cpu/lstm_cpu_isa.h: the standard headers must
// be parsed before the target pragma, never under it.
#include "cpu/lstm_cpu.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// Everything below lives in this namespace (not in a shared header) so that each instruction set
// gets its own copy: one inline function compiled for two targets would break ODR and the linker
// could hand the AVX-512 copy to the baseline path.

// Vector registers through GCC's vector extensions: one source, any target width.
typedef float vfloat __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef double vdouble __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef int32_t vint __attribute__((vector_size(LSTM_VEC_BYTES)));
template <typename acc_t> struct VecOf;
template <> struct VecOf<float> { using type = vfloat; };
template <> struct VecOf<double> { using type = vdouble; };

template <typename V, typename T>
inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename T>
inline void storeu(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(bf16_t v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename scalar_t> scalar_t from_acc(float v);
template <typename scalar_t> scalar_t from_acc(double v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
template <> inline bf16_t from_acc<bf16_t>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

// bf16 <-> float on whole vectors (a shift each way; rounding to nearest even, NaN kept quiet),
// so that bf16 loads and stores vectorize like the float ones.
typedef uint32_t vuint __attribute__((vector_size(LSTM_VEC_BYTES)));
typedef uint16_t vhalfword __attribute__((vector_size(LSTM_VEC_BYTES / 2)));
inline vfloat widen_bf16(const bf16_t* p) {
  vhalfword h;
  std::memcpy(&h, p, sizeof h);
  return (vfloat)(__builtin_convertvector(h, vuint) << 16);
}
inline vhalfword narrow_bf16(vfloat v) {
  const vuint u = (vuint)v;
  const vuint rounded = u + (((u >> 16) & 1u) + 0x7fffu);
  const vuint quiet = u | 0x400000u;
  const vuint r = (u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded;
  return __builtin_convertvector(r >> 16, vhalfword);
}

#if LSTM_VEC_BYTES == 64
// AVX-512 has single instructions for two steps of the portable exp (after #else): rounding
// to an integer (vrndscaleps) and scaling by 2^n (vscalefps); and a 14-bit reciprocal estimate
// (vrcp14ps) that one Newton step brings to about 1 ulp, in place of a division. exp(v) for v in
// [-87, 87] (the callers clamp): the same Cody-Waite reduction; e^r = 1 + r + r^2 q(r) with q of
// degree 4 (a minimax fit, within 1.1 ulp on |r| <= ln2/2 in float arithmetic, as the degree-5 q
// of the portable version). The clamps keep NaN (vmaxps/vminps return the second operand when
// either is NaN) and leave sigmoid(-87) = 1.6e-38 and tanh(9) = 1 in float.
inline __m512 exp_in_range(__m512 v) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vfloat r = (vfloat)_mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f),
                                            _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v));
  vfloat q = vfloat{} + 1.381461275741458e-3f;
  q = q * r + 8.368710055947304e-3f;
  q = q * r + 4.166838899254799e-2f;
  q = q * r + 1.666652113199234e-1f;
  q = q * r + 4.999999403953552e-1f;
  return _mm512_scalef_ps((__m512)(q * (r * r) + r + 1.0f), n);
}
inline vfloat recip_v(vfloat d) {  // d in [1, 2^126]
  const vfloat r = (vfloat)_mm512_maskz_rcp14_ps(0xffff, (__m512)d);
  return r * (2.0f - d * r);
}
inline vfloat sigmoid_v(vfloat x) {
  const __m512 v = _mm512_min_ps(_mm512_set1_ps(87.0f), _mm512_max_ps(_mm512_set1_ps(-87.0f), (__m512)x));
  return recip_v(1.0f + (vfloat)exp_in_range(_mm512_sub_ps(_mm512_setzero_ps(), v)));
}
inline vfloat tanh_v(vfloat x) {
  const vint sign = (vint)x & int32_t(0x80000000);
  const __m512 ax = _mm512_min_ps(_mm512_set1_ps(9.0f), (__m512)((vint)x ^ sign));
  const vfloat e = (vfloat)exp_in_range(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ax));
  return (vfloat)((vint)((1.0f - e) * recip_v(1.0f + e)) | sign);
}
#else
// exp for float vectors in plain arithmetic (libm's does not vectorize without -ffast-math):
// Cody-Waite range reduction and a degree-6 polynomial, within about 2 ulp; NaN stays NaN
// (every comparison with NaN is false, so the clamps pass it through).
inline vfloat exp_v(vfloat x) {
  const vfloat lo = vfloat{} - 87.33654f, hi = vfloat{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vfloat magic = vfloat{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const vfloat n = (x * 1.44269504088896341f + magic) - magic;
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat q = vfloat{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const vfloat e = q * r * r + r + 1.0f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  return e * (vfloat)bits;  // a GCC vector cast between equal sizes reinterprets the bits
}
inline vfloat sigmoid_v(vfloat x) { return 1.0f / (1.0f + exp_v(-x)); }
inline vfloat tanh_v(vfloat x) {
  const vfloat ax = x < 0.0f ? -x : x;
  const vfloat e = exp_v(-2.0f * ax);
  const vfloat r = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -r : r;
}
#endif
// float64 is the accuracy path: libm per lane.
inline vdouble sigmoid_v(vdouble x) {
  for (int l = 0; l < static_cast<int>(sizeof(vdouble) / sizeof(double)); ++l) x[l] = 1.0 / (1.0 + std::exp(-x[l]));
  return x;
}
inline vdouble tanh_v(vdouble x) {
  for (int l = 0; l < static_cast<int>(sizeof(vdouble) / sizeof(double)); ++l) x[l] = std::tanh(x[l]);
  return x;
}

// U: acc_t lanes of one vector register; hidden units are packed in blocks of U.
// MR: batch rows of one register tile (the bf16 and projection tiles and the backward's; the
// forward's gate tiles take FR); NR = 4U columns (the four gates of one unit block).
// GV: weight vectors per k of one tile's pass, so MR x GV accumulators: 4 x 4 (all four gates at
// once) in AVX-512's 32 registers, 6 x 2 (two passes of two gates) in the 16 of AVX2 and SSE.
// Each weight vector loaded feeds MR FMAs. AVX2 had 2 x 4 before: at full FMA rate that read 32
// bytes per cycle from L2, all of Zen 3's L2-to-L1 width; 6 x 2 reads 11 and took 0.73-0.80x of
// the time at B = 3..128 (1 thread, I = H = 256..512).
// FR: the most rows of the forward's gate tiles (gate_tile, for_gate_tiles). AVX-512 takes up to
// 6 rows x 4 gate vectors there (24 accumulators: each weight vector feeds 6 FMAs, 21 bytes per
// cycle from L2 at full rate where 4 x 4 read 32), in balanced tiles so that no tile of one or
// two rows is left; 16 registers keep 6 x 2 in tiles of 6 and the rows left.
template <typename acc_t>
struct Tiling {
  static constexpr int U = LSTM_VEC_BYTES / sizeof(acc_t);
  static constexpr int MR = LSTM_VEC_BYTES >= 64 ? 4 : 6;
  static constexpr int GV = LSTM_VEC_BYTES >= 64 ? 4 : 2;
  static constexpr int FR = 6;
  static constexpr int NR = 4 * U;
};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// n uninitialized elements on a cache-line boundary: malloc puts a large block 16 bytes past a
// page boundary, where every vector load of a packed weight straddled two lines; and a
// zero-filled std::vector cost the caller a serial memset of the whole buffer.
template <typename T>
using Buffer = std::unique_ptr<T[], void (*)(void*)>;
template <typename T>
Buffer<T> aligned_buffer(int64_t n) {
  if (n == 0) return Buffer<T>(nullptr, std::free);
  void* ptr = std::aligned_alloc(64, static_cast<size_t>(round_up(n * static_cast<int64_t>(sizeof(T)), 64)));
  if (!ptr) throw std::bad_alloc();
  return Buffer<T>(static_cast<T*>(ptr), std::free);
}

// n elements of slot's storage, which outlives the call (PackedWeights); (re)allocated, and so
// not ready, when its size differs from n's.
template <typename T>
T* kept_buffer(PackedWeights::Slot& slot, int64_t n) {
  const int64_t bytes = round_up(n * static_cast<int64_t>(sizeof(T)), 64);
  if (slot.bytes != bytes) {
    std::free(slot.data);
    slot = PackedWeights::Slot{};
    slot.data = std::aligned_alloc(64, static_cast<size_t>(bytes));
    if (!slot.data) throw std::bad_alloc();
    slot.bytes = bytes;
  }
  return static_cast<T*>(slot.data);
}

// Splits [0, n) into nt nearly equal contiguous parts and returns part tid as [*begin, *end).
inline void split_range(int64_t n, int tid, int nt, int64_t* begin, int64_t* end) {
  *begin = n * tid / nt;
  *end = n * (tid + 1) / nt;
}

// The first n lanes of p (n <= U), zeros after.
template <typename V, typename acc_t>
inline V load_n(const acc_t* p, int n) {
  constexpr int U = sizeof(V) / sizeof(acc_t);
  if (n == U) return loadu<V>(p);
  acc_t tmp[U] = {};
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  return loadu<V>(tmp);
}
// The first n lanes of p in any of our dtypes (bf16 widens), zeros after.
template <typename V, typename T>
inline V load_any_n(const T* p, int n) {
  using acc_t = std::remove_reference_t<decltype(V{}[0])>;
  if constexpr (std::is_same_v<T, acc_t>) {
    return load_n<V>(p, n);
  } else {
    if (n == static_cast<int>(sizeof(V) / sizeof(acc_t))) return widen_bf16(p);
    acc_t tmp[sizeof(V) / sizeof(acc_t)] = {};
    for (int i = 0; i < n; ++i) tmp[i] = to_acc(p[i]);
    return loadu<V>(tmp);
  }
}
// Stores the first n lanes of v to p, converting to scalar_t.
template <typename scalar_t, typename V>
inline void store_n(scalar_t* p, V v, int n) {
  using acc_t = std::remove_reference_t<decltype(v[0])>;
  constexpr int U = sizeof(V) / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (n == U) return storeu(p, v);
  } else if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    const vhalfword h = narrow_bf16(v);
    if (n == U) return std::memcpy(p, &h, sizeof h), void();  // a vector store, not a call
    return std::memcpy(p, &h, n * sizeof(bf16_t)), void();
  }
  for (int i = 0; i < n; ++i) p[i] = from_acc<scalar_t>(v[i]);
}

// a in every lane (a - 0 folds away exactly, signed zeros included, leaving one broadcast).
template <typename V, typename acc_t>
inline V splat(acc_t a) {
  return a - V{};
}

// acc[r][v] += sum_k a[r][k] * b[k][v*U : v*U+U] for r < MR, v < NV: a register tile of MR rows
// by NV vectors. Rows of A come as pointers so the caller can map tile rows onto any rows (a
// partial tile repeats its last row; those results are dropped). b is packed, row stride ldb.
// Down: k from K - 1 down to 0 (the same sums, added in the other order). GS < NV: b's vectors
// come in groups of GS, group g at b + g * gstride (pack_gate_weight's gate groups).
// The k loop unrolled by 4 (the same sums in the same order): its counter, pointer updates and
// branch once per four k. Against no unrolling, in one process (a switch read per call, calls
// alternated), T = 100, I = H = 256 unless said: B32 2 threads 0.92-0.94x of the time, 1 thread
// 0.97-1.02x; packed B32 0.95x; proj 0.94x; training 0.93-0.96x; B4 0.93x; AVX2 (6 x 2 tiles)
// 0.91-0.92x; batch 1 1.0x. Unrolled by 2: about half of that.
template <int MR, int NV, bool Down = false, int GS = NV, typename acc_t, typename V>
inline void mac_tile(int64_t K, const acc_t* const (&a)[MR], const acc_t* b, int64_t ldb, V (&acc)[MR][NV],
                     int64_t gstride = 0) {
  constexpr int U = sizeof(V) / sizeof(acc_t);
#pragma GCC unroll 4
  for (int64_t i = 0; i < K; ++i) {
    const int64_t k = Down ? K - 1 - i : i;
    V bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = loadu<V>(b + (v / GS) * gstride + k * ldb + (v % GS) * U);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V av = splat<V>(a[r][k]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += av * bv[v];
    }
  }
}

// f(std::integral_constant<int, m>{}) for a run-time m in 1..M: register tiles of exactly the rows
// there are (a short tile that repeated its last row did up to 4x the work: the whole backward
// product at batch 1).
template <int M, typename F>
inline void with_rows(int m, F&& f) {
  if constexpr (M > 1) {
    if (m < M) return with_rows<M - 1>(m, f);
  }
  f(std::integral_constant<int, M>{});
}

// f(r0, m) for the register tiles over rows [0, rows): tiles of M rows, the last one of the rows
// left (m as in with_rows).
template <int M, typename F>
inline void for_row_tiles(int64_t rows, F&& f) {
  for (int64_t r0 = 0; r0 < rows; r0 += M)
    with_rows<M>(static_cast<int>(std::min<int64_t>(M, rows - r0)), [&](auto m) { f(r0, m); });
}

// f(r0, m) over rows [0, rows) in the fewest tiles of at most M rows, sizes within one of each
// other, the larger first: 32 rows as 6 6 5 5 5 5 rather than five of 6 and one of 2 (a tile of
// one or two rows reads a weight vector for every one or two FMAs). Larger first, a tile's m rows
// of prefetch (gate_tile) cover the next tile.
template <int M, typename F>
inline void for_balanced_tiles(int64_t rows, F&& f) {
  const int64_t n = (rows + M - 1) / M;
  for (int64_t i = 0, r0 = 0; i < n; ++i) {
    const int m = static_cast<int>((rows - r0 + n - i - 1) / (n - i));
    with_rows<M>(m, [&](auto mm) { f(r0, mm); });
    r0 += m;
  }
}

// The forward's gate tiles over rows [0, rows), f(r0, m) as for_row_tiles: balanced tiles of up
// to FR rows with all four gates per pass (AVX-512), else tiles of FR and the rows left (with two
// gates per pass, balanced tiles lost: 8 rows as 4 + 4 took 1.15-1.18x the time of 6 + 2 on an
// AVX2 Zen 3, a 4 x 2 tile having 8 accumulator chains to 6 x 2's 12).
template <typename acc_t, typename F>
inline void for_gate_tiles(int64_t rows, F&& f) {
  using Tl = Tiling<acc_t>;
  if constexpr (Tl::GV == 4) {
    for_balanced_tiles<Tl::FR>(rows, f);
  } else {
    for_row_tiles<Tl::FR>(rows, f);
  }
}

// The projection's products, U columns per block: for cb in [c0, c1),
// acc[r] = sum_k arows[r][k] * w[k][cb U .. cb U + U) (row stride ldw), then store(r, cb, acc[r]).
// With 16 registers the blocks go GV at a time (M x GV accumulators: each W_hr vector loaded
// feeds M FMAs on 12 chains instead of 6); AVX-512 takes them one at a time, as measured there.
template <int M, typename acc_t, typename F>
inline void column_blocks(int64_t K, const acc_t* const (&arows)[M], const acc_t* w, int64_t ldw, int64_t c0,
                          int64_t c1, F&& store) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U, NB = LSTM_VEC_BYTES >= 64 ? 1 : Tiling<acc_t>::GV;
  int64_t cb = c0;
  const auto blocks = [&](auto nb) {
    constexpr int N = decltype(nb)::value;
    V acc[M][N];
    for (int r = 0; r < M; ++r)
      for (int v = 0; v < N; ++v) acc[r][v] = V{};
    mac_tile<M, N>(K, arows, w + cb * U, ldw, acc);
    for (int v = 0; v < N; ++v)
      for (int r = 0; r < M; ++r) store(r, cb + v, acc[r][v]);
  };
  for (; cb + NB <= c1; cb += NB) blocks(std::integral_constant<int, NB>{});
  for (; cb < c1; ++cb) blocks(std::integral_constant<int, 1>{});
}

// The barrier between steps. libgomp's costs microseconds on a small machine (it wakes waiters
// through the kernel); this one spins on one cache line, which is what a step of a few
// microseconds needs. OpenMP guarantees the team's threads run at once, so spinning cannot
// deadlock; past a bound it yields, for machines with more threads than cores.
class SpinBarrier {
 public:
  void reset(int n) { n_ = n; }
  void wait() {
    const int gen = gen_.load(std::memory_order_relaxed);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> gen_{0};
  int n_ = 1;
};

// Runs body(tid, nt) on a team of nt_req threads sharing bar, or inline for one thread: an
// OpenMP region of one thread still costs a fraction of a microsecond in libgomp (a futex call
// among them), a tenth of a one-step streaming call.
template <typename F>
void run_team(int nt_req, SpinBarrier& bar, F&& body) {
  if (nt_req == 1) {
    bar.reset(1);
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nt_req)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
#pragma omp single
    bar.reset(nt);
    body(tid, nt);
  }
}

// Row index helpers for the packed/dense row layout of lstm.h.
struct Steps {  // row index helpers, see lstm.h
  std::vector<int64_t> off;  // off[t]: first row of step t; off[T] = N
  const int64_t* batch_sizes;
  int64_t T, B;
  Steps(const int64_t* bs, int64_t T_, int64_t B_) : off(T_ + 1), batch_sizes(bs), T(T_), B(B_) {
    off[0] = 0;
    for (int64_t t = 0; t < T; ++t) off[t + 1] = off[t] + rows(t);
  }
  int64_t rows(int64_t t) const { return step_rows(batch_sizes, B, t); }
  // The step a row's state came from, in the order the forward ran; -1: from h0/c0.
  int64_t prev(int64_t t, int64_t b, bool reverse) const {
    if (!reverse) return t > 0 ? t - 1 : -1;
    return (t + 1 < T && b < rows(t + 1)) ? t + 1 : -1;
  }
  // Whether step t is the last one the forward runs for sequence b.
  bool last(int64_t t, int64_t b, bool reverse) const {
    if (reverse) return t == 0;
    return t + 1 == T || b >= rows(t + 1);
  }
};

// What the forward's threads share: sizes, packed weights and state buffers.
template <typename acc_t>
struct ForwardCtx {
  int64_t H, P, G, Hp;
  bool proj;
  const Steps* steps;
  // Packed by pack_gate_weight in gate groups of Tiling::GV: [nblk][4 / GV][K][GV][U] (the
  // lookahead's W_ih in groups of Lookahead::RV; AVX-512, where GV = 4).
  const acc_t* wp;  // W_hh^T, K = P
  const acc_t* wi;  // W_ih^T, K = I, when the tiles take the input, else nullptr
  acc_t* ring;      // batch 1 with wi: [2][Lookahead::S][nblk][4][U], x W_ih^T of two chunks
  acc_t* cst;       // [B, Hp] cell state
  acc_t* hpre;      // [B, Hp] o * tanh(c) before the projection
};

// The cell update of one row and one block of U units, on registers: pre-activations in, c and
// h out (h to hnext/y, or to hpre before a projection), activations saved when training. Returns
// h (before any projection).
template <typename scalar_t, typename acc_t, typename V>
__attribute__((always_inline)) inline V cell_update(const ForwardParams<scalar_t, acc_t>& p,
                                                     const ForwardCtx<acc_t>& x, const V (&pre)[4], int64_t b,
                                                     int64_t row, int64_t j0, int nu, int64_t t, acc_t* hnext) {
  const int64_t H = x.H, P = x.P;
  const V i = sigmoid_v(pre[0]), f = sigmoid_v(pre[1]), g = tanh_v(pre[2]), o = sigmoid_v(pre[3]);
  // Lanes past nu are padding: zero pre-activations and cell state, which stay finite.
  acc_t* cs = x.cst + b * x.Hp + j0;
  const V c = f * loadu<V>(cs) + i * g;
  storeu(cs, c);
  const V h = o * tanh_v(c);
  if (p.save) {
    acc_t* grow = p.gates + row * x.G + j0;
    store_n(grow, i, nu);
    store_n(grow + H, f, nu);
    store_n(grow + 2 * H, g, nu);
    store_n(grow + 3 * H, o, nu);
    store_n(p.cells + row * H + j0, c, nu);
  }
  const bool last = x.steps->last(t, b, p.reverse);
  if (x.proj) {
    storeu(x.hpre + b * x.Hp + j0, h);
  } else {
    store_n(hnext + b * P + j0, h, nu);
    store_n(p.y + row * P + j0, h, nu);
    if (last) store_n(p.h_n + b * P + j0, h, nu);
  }
  if (last) store_n(p.c_n + b * H + j0, c, nu);
  return h;
}

// One register tile of the forward: MR rows (r0..) by one block of U units, all four gates; the
// matrix products on the packed W_ih^T (when the tiles take the input) and W_hh^T, GV gates per
// pass, then the cell update on the registers.
template <int MR, typename scalar_t, typename acc_t>
inline void gate_tile(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                      int64_t r0, int64_t row0, int64_t t, const acc_t* hcur, acc_t* hnext) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  const acc_t* arows[MR];
  V bias[4];
  for (int g = 0; g < 4; ++g) bias[g] = p.bias ? load_n<V>(p.bias + g * x.H + j0, nu) : V{};
  V acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    arows[r] = hcur + (r0 + r) * x.P;
    if (x.wi) {
      for (int g = 0; g < 4; ++g) acc[r][g] = bias[g];
      continue;
    }
    const acc_t* xg = p.gates + (row0 + r0 + r) * x.G + j0;
    for (int g = 0; g < 4; ++g) acc[r][g] = load_n<V>(xg + g * x.H, nu) + bias[g];
    // The next row tile's input projection (a cold [N, 4H] buffer): fetch it during this tile's
    // k loop. A prefetch past the last row is harmless.
    const acc_t* xn = xg + MR * x.G;
    for (int g = 0; g < 4; ++g) __builtin_prefetch(xn + g * x.H);
  }
  // Gates per pass: the packed groups (GS) one at a time, except that a tile of one or two rows
  // takes all four at once: two accumulators per pass would leave FMAs waiting on their latency.
  constexpr int GS = Tiling<acc_t>::GV, GV = MR <= 2 ? 4 : GS;
  for (int g0 = 0; g0 < 4; g0 += GV) {
    V part[MR][GV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < GV; ++v) part[r][v] = acc[r][g0 + v];
    if constexpr (std::is_same_v<scalar_t, acc_t>) {  // the adapter passes x only in acc_t
      if (x.wi) {
        const acc_t* xrows[MR];
        for (int r = 0; r < MR; ++r) xrows[r] = p.x + (row0 + r0 + r) * p.I;
        mac_tile<MR, GV, false, GS>(p.I, xrows, x.wi + (blk * 4 + g0) * p.I * U, GS * U, part, GS * p.I * U);
      }
    }
    if (!p.recurrent_in_gates)
      mac_tile<MR, GV, false, GS>(x.P, arows, x.wp + (blk * 4 + g0) * x.P * U, GS * U, part, GS * x.P * U);
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < GV; ++v) acc[r][g0 + v] = part[r][v];
  }
  for (int r = 0; r < MR; ++r) cell_update(p, x, acc[r], r0 + r, row0 + r0 + r, j0, nu, t, hnext);
}

// Batch 1 with the input on the tiles: x_t W_ih^T alone would be one FMA per W_ih vector read
// from L2, as h_{t-1} W_hh^T is, where a GEMM over the sequence reuses each weight vector across
// rows (but is one more pass, ~30% of the call at H = 128). The lookahead does the GEMM's work
// during the recurrence: while a chunk of S steps runs, each step adds one piece of the next
// chunk's projection (RV of a block's four gate vectors over 1/KQ of I, for all S rows: S FMAs per
// weight vector), in slices alternating with slices of the W_hh product, so that the piece's
// FMAs can run while the core waits on L2 for W_hh (they do in part: at I = H = 128 the pieces
// add about 0.6 us to a 1.7 us step on 2 threads, where the GEMM's share was 0.7 us). Each
// block's pieces belong to the thread owning the block (no synchronization); the ring holds two
// chunks: the current one and the next.
struct Lookahead {
  static constexpr int S = 8, RV = 2, KQ = S * RV / 4;
};

// One k of a piece: pacc[i][v] += xt[k][i] * wi[k][v] for the S rows and RV gate vectors (wi: a
// block's gate pair, packed with gv = RV).
template <typename V, typename acc_t>
inline void lookahead_k(V (&pacc)[Lookahead::S][Lookahead::RV], const acc_t* wi, const acc_t* xt, int64_t k) {
  constexpr int U = Tiling<acc_t>::U, RV = Lookahead::RV, S = Lookahead::S;
  V bv[RV];
#pragma GCC unroll 8
  for (int v = 0; v < RV; ++v) bv[v] = loadu<V>(wi + k * RV * U + v * U);
#pragma GCC unroll 8
  for (int i = 0; i < S; ++i) {
    const V av = splat<V>(xt[k * S + i]);
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) pacc[i][v] += av * bv[v];
  }
}

// A piece's S rows by RV vectors to the ring (dst: its first vector in the chunk's slot).
template <typename V, typename acc_t>
inline void lookahead_store(acc_t* dst, int64_t nblk, const V (&pacc)[Lookahead::S][Lookahead::RV]) {
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR;
#pragma GCC unroll 8
  for (int i = 0; i < Lookahead::S; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < Lookahead::RV; ++v) storeu(dst + i * nblk * NR + v * U, pacc[i][v]);
}

// One step of unit block blk at batch 1 (visiting step s, time t, row row0): W_hh product and cell
// update as gate_tile<1>, with the input projection from the ring, and a piece of the next chunk's
// from xt (that chunk's x rows, transposed: xt[k][i] for k < I, i < S). down: the W_hh product's k
// in reverse (see the step loop).
template <typename scalar_t, typename acc_t>
inline void lookahead_tile(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                           int64_t s, int64_t row0, int64_t t, const acc_t* xt, const acc_t* hcur, acc_t* hnext,
                           bool down) {
  using V = typename VecOf<acc_t>::type;
  using L = Lookahead;
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR, RV = L::RV, S = L::S;
  const int64_t nblk = x.Hp / U, c = s / S, r = s % S, j0 = blk * U, I = p.I, P = x.P;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  const acc_t* cur = x.ring + ((c & 1) * S + r) * nblk * NR + blk * NR;
  V acc[1][4];
  for (int g = 0; g < 4; ++g)
    acc[0][g] = loadu<V>(cur + g * U) + (p.bias ? load_n<V>(p.bias + g * x.H + j0, nu) : V{});
  // This step's piece of chunk c + 1: gate vectors [half * RV, half * RV + RV), k in [ka, kb).
  const bool ahead = (c + 1) * S < p.T;
  const int half = static_cast<int>(r % (4 / RV)), kq = static_cast<int>(r / (4 / RV));
  const int64_t ka = ahead ? kq * I / L::KQ : 0, kb = ahead ? (kq + 1) * I / L::KQ : 0;
  acc_t* nxt = x.ring + ((c + 1) & 1) * S * nblk * NR + blk * NR + half * RV * U;
  V pacc[S][RV];
#pragma GCC unroll 8
  for (int i = 0; i < S; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) pacc[i][v] = kq == 0 ? V{} : loadu<V>(nxt + i * nblk * NR + v * U);
  const acc_t* wi = x.wi + blk * I * NR + half * I * RV * U;
  const acc_t* wh = x.wp + blk * P * NR;
  // One k of the piece per slice of the W_hh product: finer slices overlapped better (a slice of
  // P/8 k: 1.0x of the GEMM's time, P/32: 0.91x, one piece k: 0.90x).
  const int64_t ns = std::max<int64_t>(1, kb - ka), q = P / ns, extra = P % ns;
  for (int64_t i = 0; i < ns; ++i) {
    const int64_t sl = down ? ns - 1 - i : i, h0 = sl * q + std::min(sl, extra), len = q + (sl < extra);
    const acc_t* hrow[1] = {hcur + h0};
    if (down) {
      mac_tile<1, 4, true>(len, hrow, wh + h0 * NR, NR, acc);
    } else {
      mac_tile<1, 4>(len, hrow, wh + h0 * NR, NR, acc);
    }
    if (i < kb - ka) lookahead_k(pacc, wi, xt, ka + i);
  }
  if (ahead) lookahead_store(nxt, nblk, pacc);
  cell_update(p, x, acc[0], 0, row0, j0, nu, t, hnext);
}

// xt[k][i] = row i of chunk c of the visiting order (steps past the end repeat the last; dropped).
template <typename scalar_t, typename acc_t>
inline void lookahead_rows(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t c,
                           acc_t* xt) {
  constexpr int S = Lookahead::S;
  for (int i = 0; i < S; ++i) {
    const int64_t v = std::min(c * S + i, p.T - 1), t = p.reverse ? p.T - 1 - v : v;
    const scalar_t* row = p.x + x.steps->off[t] * p.I;
    for (int64_t k = 0; k < p.I; ++k) xt[k * S + i] = to_acc(row[k]);
  }
}

// Chunk 0 of the lookahead ring for block blk, whole (before the first step), from its xt.
template <typename acc_t>
inline void lookahead_first(const ForwardCtx<acc_t>& x, int64_t I, int64_t blk, const acc_t* xt) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR, RV = Lookahead::RV;
  for (int half = 0; half < 4 / RV; ++half) {
    V pacc[Lookahead::S][RV] = {};
    const acc_t* wi = x.wi + blk * I * NR + half * I * RV * U;
    for (int64_t k = 0; k < I; ++k) lookahead_k(pacc, wi, xt, k);
    lookahead_store(x.ring + blk * NR + half * RV * U, x.Hp / U, pacc);
  }
}

// U lanes of a weight row in acc_t (bf16 widens by a shift).
template <typename V, typename scalar_t>
inline V load_w(const scalar_t* w) {
  if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    return widen_bf16(w);
  } else {
    return loadu<V>(w);
  }
}

// Below this many steps a small batch reads W_hh in place rather than packing it; from
// kPackMinStepsSmall steps when W_hh is at most kPackSmallBytes (in acc_t). Packed against in
// place (with one sum vector per gate, fold_rows) at T = 5..15, B = 1..4: H <= 128 0.47-0.83x of
// the time (B = 2 0.9-1.0x), H = 256 1.02-1.24x; at T = 16, H = 256..512 0.98-1.13x.
constexpr int64_t kPackMinSteps = 16;
constexpr int64_t kPackMinStepsSmall = 5;
constexpr int64_t kPackSmallBytes = int64_t{256} << 10;

// Small batches over few steps read W_hh in place (gemv_block, up to 4 rows at a time) instead
// of packing it; so does a single step of up to 32 rows: packing W_hh cost several times the step
// (B=8, T=1, H=1024: 15.1 ms packed, 2.2 ms in place), and the later groups of 4 rows find the
// block's slice of W_hh in L2.
constexpr int64_t kGemvRows = 4;
bool small_batch_path(int64_t T, int64_t B, int64_t H, int64_t P, int64_t acc_bytes) {
  const int64_t min_steps = 4 * H * P * acc_bytes <= kPackSmallBytes ? kPackMinStepsSmall : kPackMinSteps;
  return (B <= 4 && T < min_steps) || (B <= 32 && T == 1);
}

// The tiles take the input projection (x_t W_ih^T beside h_{t-1} W_hh^T, no GEMM over the
// sequence) when the first step fills its register tiles (from 4 rows: a tile of one or two
// rows does one or two FMAs per weight vector, bound by reading W_ih from L2 where a GEMM would
// not be) and both weights stay in L3 (32 MB of them at H = 1024 came from memory every step:
// 1.14-1.4x slower). Measured against the GEMM on a Zen 4 (1 MB of L2 per core): 0.90-0.97x of
// the time at B >= 4, H <= 512. On a Xeon with AMX (2 MB of L2 per core; T = 32-128, in one process, calls
// alternated) what counts is a thread's share of the weights, streamed from L3 every step once it
// leaves L2: 1 MB shares won at B = 4..32 (I = H = 256 on 2 threads 0.91-0.95x), 1.5-2 MB lost
// below 64 rows (I = 512 H = 256 B8 1.20x, B16 1.06x, B32 1.02x; I = H = 256 on 1 thread B8
// 1.32x, B32 1.07x), 4 MB more so (I = H = 512 B8 1.40x, B32 1.11x on 2 threads), while 64 rows
// and more carry 4 MB shares (B64 0.98x, B128 0.88x on 2 threads and 1). Hence shares of
// kTileInputShareBytes at any batch that fills the tiles, kTileInputWeightBytes from 64 rows.
constexpr int64_t kTileInputWeightBytes = int64_t{8} << 20;
constexpr int64_t kTileInputShareBytes = int64_t{1} << 20;
constexpr int64_t kTileInputManyRows = 64;
// Batch 1 takes it through the lookahead (lookahead_tile; AVX-512 has the registers for its 16
// accumulators) up to 512 KB of weights, where W_hh and W_ih stay in L2 beside each other.
// Against the GEMM (1 thread / 2 threads): I = H = 128 0.87x / 0.93x of the time at T = 256,
// 0.89x-0.90x at T = 16-64; H = 64 and 32 0.74-0.94x; H = 256 (2 MB) 0.92x / 0.99x at T = 256 but
// 1.06-1.24x at T <= 128 (packing W_ih costs more than the GEMM's share); H = 512 1.02x / 1.08x.
constexpr int64_t kLookaheadWeightBytes = int64_t{512} << 10;
// With 16 registers (6-row tiles, two passes of two gates; measured on an AVX2 Zen 3 with 512 KB
// of L2, 1 thread, the tiles' extra time against a GEMM over the sequence at ~57 GFLOP/s):
// I = H = 256 (2 MB) B = 4..10 +1.6..4.5 ms against 4-8 ms, B = 3 +2.8 against 3; I = 512, H = 256
// (3 MB) B = 8 +12.5 against ~15, B = 32 +39 against ~59; I = H = 512 (8 MB) B = 4 +18 against
// ~10, B = 8 +39 against ~19, B = 32 +81 against ~75. Hence from 4 rows, up to 4 MB.
constexpr int64_t kTileInputWeightBytes16 = int64_t{4} << 20;
bool tiles_take_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, int64_t acc_bytes, int threads) {
  const int64_t weight_bytes = (I + P) * 4 * H * acc_bytes;
  if (small_batch_path(T, B, H, P, acc_bytes)) return false;
  // From 4 rows the gate tiles have at least 3 rows each (for_gate_tiles). On AVX-512, with tiles
  // of 4 and the rows left, B = 5 and 6 ran a last tile of 1 or 2 rows and kept the GEMM; with the
  // balanced tiles the input on them took 0.80-0.95x of the time there (I = H = 128 and 256).
  const bool full_tiles = B >= 4;
  if constexpr (LSTM_VEC_BYTES < 64) return full_tiles && weight_bytes <= kTileInputWeightBytes16;
  const bool fits = weight_bytes <= kTileInputShareBytes * std::max(threads, 1) ||
                    (B >= kTileInputManyRows && weight_bytes <= kTileInputWeightBytes);
  const bool lookahead = B == 1 && weight_bytes <= kLookaheadWeightBytes;
  return (full_tiles && fits) || lookahead;
}

// Whether the AMX tiles take the input projection (the dispatcher asks only where they run: bf16
// with Isa::kAmx): a batch of at least one whole row tile, and the bf16 weights (W_ih and W_hh,
// read every step) at most kTileInputWeightBytes. Against oneDNN's bf16 GEMM first (AMX too), 2
// threads, T = 100, I = H = 256: B128 0.77x of the time, B32 0.88x, B8 1.05x, B4 1.23x; B32 I=H=512
// (4 MB) 0.98x, I=H=1024 (16 MB) 1.01x.
constexpr int64_t kAmxInputMinRows = 16;
bool amx_takes_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool proj) {
  return !proj && B >= kAmxInputMinRows && !small_batch_path(T, B, H, P, sizeof(float)) &&
         (I + P) * 4 * H * 2 <= kTileInputWeightBytes;
}

// One round of an in-register transpose of U x U: for rows a = r[i] and b = r[i + S] (i & S == 0),
// swap a's lanes with bit S set and b's lanes with it clear (the off-diagonal S x S blocks).
template <int S, typename V, size_t... L>
inline void swap_blocks(V& a, V& b, std::index_sequence<L...>) {
  constexpr int N = sizeof...(L);
  const V lo = __builtin_shufflevector(a, b, ((L & S) == 0 ? L : N + L - S)...);
  const V hi = __builtin_shufflevector(a, b, ((L & S) == 0 ? L + S : N + L)...);
  a = lo;
  b = hi;
}
template <int S, typename V, int N>
inline void transpose_rounds(V (&r)[N]) {
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i)
    if ((i & S) == 0) swap_blocks<S>(r[i], r[i + S], std::make_index_sequence<N>{});
  if constexpr (S > 1) transpose_rounds<S / 2>(r);
}

// dst[j * ldd + i] = src[i * lds + j] for j < n, with i < m from src and zeros for m <= i < U
// (m, n <= U): a whole tile of acc_t through registers (U loads, U log2 U shuffles, U stores,
// where element by element it was U^2 loads and stores: batch 1, T = 16, I = H = 128 took 0.78x of
// the time on 1 thread, 0.91x on 2), anything else element by element.
template <typename scalar_t, typename acc_t>
inline void transpose_tile(const scalar_t* src, int64_t lds, acc_t* dst, int64_t ldd, int m, int n) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (m == U && n == U) {
      V r[U];
#pragma GCC unroll 16
      for (int i = 0; i < U; ++i) r[i] = loadu<V>(src + i * lds);
      transpose_rounds<U / 2>(r);
#pragma GCC unroll 16
      for (int j = 0; j < U; ++j) storeu(dst + j * ldd, r[j]);
      return;
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) dst[j * ldd + i] = to_acc(src[i * lds + j]);
    for (int i = m; i < U; ++i) dst[j * ldd + i] = acc_t(0);
  }
}

// One round of fold_rows: lane l of the result takes, from a (l < U / 2) or b (l >= U / 2), block
// (l mod U / 2) / S (blocks of 2S lanes, the partial sums of one row each) and adds its halves.
template <int S, typename V, size_t... L>
inline V fold_pair(V a, V b, std::index_sequence<L...>) {
  constexpr int N = sizeof...(L), M = N / 2;
  return __builtin_shufflevector(a, b, ((L < M ? 0 : N) + (L % M) / S * 2 * S + L % S)...) +
         __builtin_shufflevector(a, b, ((L < M ? 0 : N) + (L % M) / S * 2 * S + L % S + S)...);
}
// Folds N vectors, each holding the partial sums of U / (2S) rows in blocks of 2S lanes, into one
// holding all N U / (2S) rows in order, in blocks of 2S / N lanes: from r[u] = the U lanes of row
// u (S = U / 2, N = U), lane u of the result is the sum of r[u]. log2(N) rounds, N - 1 pairs of
// two shuffles and an add, where a sum per vector took 2 log2(U) + 1 ops and a scalar store.
template <int U, int S, typename V, int N>
inline V fold_rows(const V (&r)[N]) {
  if constexpr (N == 1) {
    return r[0];
  } else {
    V h[N / 2];
#pragma GCC unroll 16
    for (int i = 0; i < N / 2; ++i) h[i] = fold_pair<S>(r[2 * i], r[2 * i + 1], std::make_index_sequence<U>{});
    return fold_rows<U, S / 2>(h);
  }
}

// s[r][b] += w_r * rows[b] in lanes over K elements, for NW weight rows w_r = w + min(r, nw - 1) *
// ldw (rows past nw repeat the last: the caller drops their lanes) and NB rows at once; w and rows
// in any of our dtypes. Each k loads NW + NB vectors for NW NB products.
template <int NW, int NB, typename V, typename wt_t, typename rt_t>
inline void dot_rows(const wt_t* w, int64_t ldw, int nw, const rt_t* const (&rows)[NB], int64_t K, V (&s)[NW][NB]) {
  constexpr int U = sizeof(V) / sizeof(s[0][0][0]);
  const wt_t* wr[NW];
  for (int r = 0; r < NW; ++r) wr[r] = w + std::min(r, nw - 1) * ldw;
  int64_t k = 0;
  for (; k + U <= K; k += U) {
    V rv[NB];
#pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) rv[b] = load_w<V>(rows[b] + k);
#pragma GCC unroll 16
    for (int r = 0; r < NW; ++r) {
      const V wv = load_w<V>(wr[r] + k);
#pragma GCC unroll 16
      for (int b = 0; b < NB; ++b) s[r][b] += wv * rv[b];
    }
  }
  if (k < K) {  // the last K mod U elements, zeros after
    const int n = static_cast<int>(K - k);
    V rv[NB];
    for (int b = 0; b < NB; ++b) rv[b] = load_any_n<V>(rows[b] + k, n);
    for (int r = 0; r < NW; ++r) {
      const V wv = load_any_n<V>(wr[r] + k, n);
      for (int b = 0; b < NB; ++b) s[r][b] += wv * rv[b];
    }
  }
}

// The first n lanes of v, zeros after.
template <typename V>
inline V first_lanes(V v, int n) {
  constexpr int U = sizeof(V) / sizeof(v[0]);
  for (int i = n; i < U; ++i) v[i] = 0;
  return v;
}

// The small-batch path (NB <= 4 rows): dot products along the rows of W_hh as it lies in memory,
// so nothing is packed per call (for a few steps at batch 1 the packing would cost more than
// the steps). With p.x set, the input projection is done here too. One block of U units, all
// four gates, then the same cell update. The U sums of a gate's dot products come out of
// fold_rows as one vector; against a lane sum and a scalar store per dot product (with 4 / NB
// weight rows per pass): B4 T8 H128 0.83x of the time, B32 T1 H1024 0.76x, B8 T1 H128 0.93x,
// batch 1 0.93-0.99x (2 threads; 1 thread alike).
template <int NB, typename scalar_t, typename acc_t>
inline void gemv_block(const ForwardParams<scalar_t, acc_t>& p, const ForwardCtx<acc_t>& x, int64_t blk,
                       int64_t row0, int64_t r0, int64_t t, const acc_t* hcur, acc_t* hnext) {
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tiling<acc_t>::U;
  const int64_t H = x.H, P = x.P, j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, H - j0));
  // NW weight rows by NB rows per pass (16 accumulators with AVX-512); each pass's sums folded
  // to one vector of NW blocks, whose U / NW vectors the last rounds fold to the U units' sums.
  constexpr int NW = NB == 1 ? U : NB == 2 ? U / 2 : U / 4 > 0 ? U / 4 : 1;
  const acc_t* hrows[NB];
  const scalar_t* xrows[NB];
  for (int b = 0; b < NB; ++b) {
    hrows[b] = hcur + (r0 + b) * P;
    xrows[b] = p.x ? p.x + (row0 + r0 + b) * p.I : nullptr;
  }
  V pre[NB][4];
  for (int g = 0; g < 4; ++g) {
    const int64_t wrow = g * H + j0;
    V part[NB][U / NW];
    for (int u0 = 0; u0 < U; u0 += NW) {
      V s[NW][NB] = {};
      const int nw = nu - u0;
      if (nw <= 0) {  // all padding
        for (int b = 0; b < NB; ++b) part[b][u0 / NW] = V{};
        continue;
      }
      dot_rows(p.w_hh + (wrow + u0) * P, P, nw, hrows, P, s);
      if (p.x) dot_rows(p.w_ih + (wrow + u0) * p.I, p.I, nw, xrows, p.I, s);
      for (int b = 0; b < NB; ++b) {
        V col[NW];
        for (int r = 0; r < NW; ++r) col[r] = s[r][b];
        part[b][u0 / NW] = fold_rows<U, U / 2>(col);
      }
    }
    V bias{};
    if (p.x) {
      if (p.b_ih) bias += load_any_n<V>(p.b_ih + wrow, nu);
      if (p.b_hh) bias += load_any_n<V>(p.b_hh + wrow, nu);
    } else if (p.bias) {
      bias = load_n<V>(p.bias + wrow, nu);
    }
    for (int b = 0; b < NB; ++b) {
      const V add = p.x ? bias : load_n<V>(p.gates + (row0 + r0 + b) * x.G + wrow, nu) + bias;
      pre[b][g] = first_lanes(fold_rows<U, U / NW / 2>(part[b]) + add, nu);
    }
  }
  for (int b = 0; b < NB; ++b) cell_update(p, x, pre[b], r0 + b, row0 + r0 + b, j0, nu, t, hnext);
}

#ifdef LSTM_BF16_DOT
// bfloat16 through AVX512-BF16 (vdpbf16ps): W_hh^T packed in bf16 pairs along k
// (wpb[blk][k/2][4U] as 32-bit pairs) and h_{t-1} rounded to bf16 (as torch.nn.LSTM keeps it in
// bf16), accumulating in fp32: twice the products per instruction of the fp32 tile and half the
// bytes of W_hh. Compiled only for AVX-512; taken only where the CPU has AVX512-BF16.
bool cpu_has_bf16_dot() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

template <int MR>
__attribute__((target("avx512bf16"))) void gate_tile_bf16(
    const ForwardParams<bf16_t, float>& p, const ForwardCtx<float>& x, const uint32_t* wpb, int64_t P2,
    int64_t blk, int64_t r0, int64_t row0, int64_t t, const uint32_t* hbcur, float* hnext, uint16_t* hbnext) {
  constexpr int U = 16;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  vfloat bias[4];
  for (int g = 0; g < 4; ++g) bias[g] = p.bias ? load_n<vfloat>(p.bias + g * x.H + j0, nu) : vfloat{};
  vfloat acc[MR][4];
  for (int r = 0; r < MR; ++r) {
    if (p.gates_lp) {
      const bf16_t* xg = p.gates_lp + (row0 + r0 + r) * x.G + j0;
      for (int g = 0; g < 4; ++g) acc[r][g] = load_any_n<vfloat>(xg + g * x.H, nu) + bias[g];
      // The next row tile's projection, from a buffer too large for cache (as in gate_tile).
      for (int g = 0; g < 4; ++g) __builtin_prefetch(xg + MR * x.G + g * x.H);
    } else {
      const float* xg = p.gates + (row0 + r0 + r) * x.G + j0;
      for (int g = 0; g < 4; ++g) acc[r][g] = load_n<vfloat>(xg + g * x.H, nu) + bias[g];
      for (int g = 0; g < 4; ++g) __builtin_prefetch(xg + MR * x.G + g * x.H);
    }
  }
  const uint32_t* w = wpb + blk * P2 * 4 * U;
  for (int64_t k2 = 0; k2 < P2; ++k2) {
    __m512bh wv[4];
    for (int v = 0; v < 4; ++v) wv[v] = (__m512bh)_mm512_loadu_si512(w + k2 * 4 * U + v * U);
    for (int r = 0; r < MR; ++r) {
      const __m512bh hv = (__m512bh)_mm512_set1_epi32(static_cast<int>(hbcur[(r0 + r) * P2 + k2]));
      for (int v = 0; v < 4; ++v) acc[r][v] = (vfloat)_mm512_dpbf16_ps((__m512)acc[r][v], hv, wv[v]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    const int64_t b = r0 + r;
    const vfloat h = cell_update(p, x, acc[r], b, row0 + b, j0, nu, t, hnext);
    store_n(reinterpret_cast<bf16_t*>(hbnext) + b * 2 * P2 + j0, h, nu);
  }
}

// bfloat16 through AMX (Sapphire Rapids and later; the dispatcher's Isa::kAmx): tdpbf16ps takes a
// 16 x 32 tile of h_{t-1} (bf16) against a 32 x 16 tile of W_hh^T into 16 x 16 fp32 sums, 8192
// products per instruction where vdpbf16ps does 32. The weight tiles (a gate's 16 units of 16
// k-pairs, 1 KB) come from pack_weight_amx; h rows (and, with the input on the tiles, the step's
// x rows copied into xs) have a stride of P2s (I2s) pairs, K rounded up to 32 with zeros past it,
// and there are B rounded up to 16 of them (rows past B, and rows idle at a step, computed and
// dropped). amx_begin configures a thread's eight tiles, amx_end releases them.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) inline void amx_begin() {
  alignas(64) AmxConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  // GCC's _tile_loadconfig does not tell the compiler that it reads all 64 bytes (it dropped the
  // stores above without this).
  __asm__ volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
}

__attribute__((target("amx-tile"))) inline void amx_end() { _tile_release(); }

// The products of one unit block for row tiles r0 and (NT == 2) r0 + 16, into sums[tile][gate]:
// h_{t-1} against W_hh^T, then (wib) x_t against W_ih^T. One row tile: tiles 0-3 take its four
// gates, 4 the h / x rows, 5 and 6 the weights. Two: two passes of two gates, tiles 0-1 and 2-3
// the two row tiles' sums, 4-5 their rows, 6-7 the weights, so each weight tile loaded (from L2:
// a thread's share of the packs is 512 KB at I = H = 256) serves both row tiles.
template <int NT>
__attribute__((target("amx-tile,amx-bf16"))) inline void amx_products(const uint32_t* w, int64_t K2, const uint16_t* a) {
  const int64_t lda = 4 * K2;       // bytes per row of a
  const int64_t pass = K2 * 2 * 16;  // uint32 per gate pair (pack_weight_amx)
  if constexpr (NT == 1) {
    for (int64_t k2 = 0; k2 < K2; k2 += 16) {
      const uint32_t* wk = w + k2 * 2 * 16;
      _tile_loadd(4, a + 2 * k2, lda);
      _tile_loadd(5, wk, 64);
      _tile_dpbf16ps(0, 4, 5);
      _tile_loadd(6, wk + 256, 64);
      _tile_dpbf16ps(1, 4, 6);
      _tile_loadd(5, wk + pass, 64);
      _tile_dpbf16ps(2, 4, 5);
      _tile_loadd(6, wk + pass + 256, 64);
      _tile_dpbf16ps(3, 4, 6);
    }
  } else {
    const uint16_t* a1 = a + 16 * 2 * K2;
    for (int64_t k2 = 0; k2 < K2; k2 += 16) {
      const uint32_t* wk = w + k2 * 2 * 16;
      _tile_loadd(4, a + 2 * k2, lda);
      _tile_loadd(5, a1 + 2 * k2, lda);
      _tile_loadd(6, wk, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
      _tile_loadd(7, wk + 256, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
}

template <int NT>
__attribute__((target("amx-tile,amx-bf16"))) void gate_tile_amx(
    const ForwardParams<bf16_t, float>& p, const ForwardCtx<float>& x, const uint32_t* wpb, int64_t P2s,
    const uint32_t* wib, const uint16_t* xs, int64_t I2s, int64_t blk, int64_t r0, int nrows, int64_t row0,
    int64_t t, const uint16_t* hbcur, float* hnext, uint16_t* hbnext) {
  constexpr int U = 16, NR = 4 * U;
  const int64_t j0 = blk * U;
  const int nu = static_cast<int>(std::min<int64_t>(U, x.H - j0));
  alignas(64) float sums[NT][4][16][U];
  const uint32_t* wh = wpb + blk * P2s * NR;
  const uint32_t* wi = wib ? wib + blk * I2s * NR : nullptr;
  if constexpr (NT == 1) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    amx_products<1>(wh, P2s, hbcur + r0 * 2 * P2s);
    if (wi) amx_products<1>(wi, I2s, xs + r0 * 2 * I2s);
    _tile_stored(0, sums[0][0], 4 * U);
    _tile_stored(1, sums[0][1], 4 * U);
    _tile_stored(2, sums[0][2], 4 * U);
    _tile_stored(3, sums[0][3], 4 * U);
  } else {
    for (int g0 = 0; g0 < 4; g0 += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      amx_products<2>(wh + g0 / 2 * P2s * 2 * U, P2s, hbcur + r0 * 2 * P2s);
      if (wi) amx_products<2>(wi + g0 / 2 * I2s * 2 * U, I2s, xs + r0 * 2 * I2s);
      _tile_stored(0, sums[0][g0], 4 * U);
      _tile_stored(1, sums[0][g0 + 1], 4 * U);
      _tile_stored(2, sums[1][g0], 4 * U);
      _tile_stored(3, sums[1][g0 + 1], 4 * U);
    }
  }
  vfloat bias[4];
  for (int g = 0; g < 4; ++g) bias[g] = p.bias ? load_n<vfloat>(p.bias + g * x.H + j0, nu) : vfloat{};
  for (int r = 0; r < nrows; ++r) {
    const int64_t b = r0 + r;
    vfloat pre[4];
    for (int g = 0; g < 4; ++g) {
      const vfloat in = wib ? vfloat{}
                        : p.gates_lp ? load_any_n<vfloat>(p.gates_lp + (row0 + b) * x.G + g * x.H + j0, nu)
                                     : load_n<vfloat>(p.gates + (row0 + b) * x.G + g * x.H + j0, nu);
      pre[g] = loadu<vfloat>(sums[r / 16][g][r % 16]) + in + bias[g];
    }
    const vfloat h = cell_update(p, x, pre, b, row0 + b, j0, nu, t, hnext);
    store_n(reinterpret_cast<bf16_t*>(hbnext) + b * 2 * P2s + j0, h, nu);
  }
}
#endif

// The transpose of a gate weight ([4H, K]: W_hh, K = P, or W_ih, K = I) for unit blocks
// [b0, b1), the four gates of a block of U units side by side: wp[blk][k][gate][u] (lanes past H
// zero), so that a block's k loop streams through contiguous memory. For each k the U units of a
// block are one cache line while their U rows of W are read in step. With gv < 4 the gates go in
// groups of gv, each group's k loop contiguous: wp[blk][gate / gv][k][gate % gv][u] (the
// lookahead reads Lookahead::RV gates at a time).
template <typename scalar_t, typename acc_t>
void pack_gate_weight(const scalar_t* w_g, int64_t H, int64_t K, int64_t b0, int64_t b1, acc_t* wp,
                      int gv = 4) {
  constexpr int U = Tiling<acc_t>::U, NR = Tiling<acc_t>::NR;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < 4; ++g) {
      const scalar_t* w = w_g + (g * H + blk * U) * K;
      acc_t* out = wp + blk * K * NR + (g / gv) * K * gv * U + (g % gv) * U;
      const int64_t ld = gv * U;
      for (int64_t k0 = 0; k0 < K; k0 += U)
        transpose_tile(w + k0, K, out + k0 * ld, ld, nu, static_cast<int>(std::min<int64_t>(U, K - k0)));
    }
  }
}

// W_hr^T for output columns [c0, c1) (multiples of U): wr[k][c] = w_hr[c][k], k < H, row stride
// Pp = the padded P (columns past P zero).
template <typename scalar_t, typename acc_t>
void pack_w_hr(const scalar_t* w_hr, int64_t H, int64_t P, int64_t c0, int64_t c1, acc_t* wr) {
  constexpr int U = Tiling<acc_t>::U;
  const int64_t Pp = round_up(P, U);
  for (int64_t c = c0; c < c1; c += U)
    for (int64_t k0 = 0; k0 < H; k0 += U)
      transpose_tile(w_hr + c * H + k0, H, wr + k0 * Pp + c, Pp, static_cast<int>(std::min<int64_t>(U, P - c)),
                     static_cast<int>(std::min<int64_t>(U, H - k0)));
}

#ifdef LSTM_BF16_DOT
// W_hh^T for unit blocks [b0, b1) in bf16 pairs along k for vdpbf16ps:
// wpb[blk][k/2][gate][u] holds (W[k][u], W[k+1][u]); padding (units past H, k = P when P is odd)
// is zero.
inline void pack_w_hh_bf16(const bf16_t* w_hh, int64_t H, int64_t P, int64_t b0, int64_t b1, uint32_t* wpb) {
  constexpr int U = 16, NR = 4 * U;
  const int64_t P2 = (P + 1) / 2;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < 4; ++g) {
      const bf16_t* w = w_hh + (g * H + blk * U) * P;
      uint32_t* out = wpb + blk * P2 * NR + g * U;
      for (int64_t k2 = 0; k2 < P2; ++k2)
        for (int u = 0; u < U; ++u) {
          const uint32_t lo = u < nu ? w[u * P + 2 * k2].bits : 0u;
          const uint32_t hi = u < nu && 2 * k2 + 1 < P ? w[u * P + 2 * k2 + 1].bits : 0u;
          out[k2 * NR + u] = lo | (hi << 16);
        }
    }
  }
}
// A gate weight ([4H, K]: W_hh, K = P, or W_ih, K = I) for gate_tile_amx, unit blocks [b0, b1):
// each weight tile (16 k-pairs x 16 units of one gate, 1 KB) contiguous, in the order the tiles
// read them: out[blk][gate / 2][K2 / 16][gate % 2][16 pairs][16 units], K2 pairs per block (a
// multiple of 16; padding zero). So a pass streams through memory, not every fourth line.
inline void pack_weight_amx(const bf16_t* w_g, int64_t H, int64_t K, int64_t K2, int64_t b0, int64_t b1,
                            uint32_t* out) {
  constexpr int U = 16;
  const int64_t kt_n = K2 / 16;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int nu = static_cast<int>(std::min<int64_t>(U, H - blk * U));
    for (int g = 0; g < 4; ++g) {
      const bf16_t* w = w_g + (g * H + blk * U) * K;
      for (int64_t kt = 0; kt < kt_n; ++kt) {
        uint32_t* o = out + blk * K2 * 4 * U + ((g / 2) * kt_n + kt) * 2 * 16 * U + (g % 2) * 16 * U;
        for (int kr = 0; kr < 16; ++kr) {
          const int64_t k = 2 * (kt * 16 + kr);
          for (int u = 0; u < U; ++u) {
            const uint32_t lo = u < nu && k < K ? w[u * K + k].bits : 0u;
            const uint32_t hi = u < nu && k + 1 < K ? w[u * K + k + 1].bits : 0u;
            o[kr * U + u] = lo | (hi << 16);
          }
        }
      }
    }
  }
}
#endif

template <typename scalar_t, typename acc_t>
void forward(const ForwardParams<scalar_t, acc_t>& p, bool amx) {
  using Tl = Tiling<acc_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tl::U, MR = Tl::MR, NR = Tl::NR;
  const int64_t T = p.T, B = p.B, H = p.H, P = p.P, G = 4 * H;
  const int64_t Hp = round_up(H, U), Pp = round_up(P, U);
  const int64_t nblk = Hp / U;
  const bool proj = p.w_hr != nullptr;
  const Steps steps(p.batch_sizes, T, B);

  // The small-batch path reads W_hh in place; the tiles read it packed (pack_gate_weight), the
  // AVX512-BF16 tiles in bf16 pairs (pack_w_hh_bf16).
  const bool gemv = small_batch_path(T, B, H, P, sizeof(acc_t));
#ifdef LSTM_BF16_DOT
  // The AVX512-BF16 path (see gate_tile_bf16): bf16 weights and h; no projection.
  bool dot = false;
  if constexpr (std::is_same_v<scalar_t, bf16_t>) dot = !gemv && !proj && cpu_has_bf16_dot();
  // The same path on AMX tiles (gate_tile_amx) where the dispatcher allows them.
  const bool amx_tiles = dot && amx;
#else
  constexpr bool dot = false, amx_tiles = false;
  (void)amx;
#endif
  const bool fp_tiles = !gemv && !dot;
  const bool pack = fp_tiles && !p.recurrent_in_gates;
  // With p.kept the packs outlive the call: a later call over the same weights reads them as the
  // first one left them (the adapter's time chunks).
  PackedWeights* const kept = p.kept;
  Buffer<acc_t> wp_own = aligned_buffer<acc_t>(pack && !kept ? P * 4 * Hp : 0);
  acc_t* const wp = !pack ? nullptr : kept ? kept_buffer<acc_t>(kept->w_hh, P * 4 * Hp) : wp_own.get();
  const bool pack_whh = pack && !(kept && kept->w_hh.ready);
  // With x set on the tile path the tiles multiply x_t by W_ih^T too (packed as W_hh is).
  const bool tile_input = fp_tiles && p.x != nullptr;
  Buffer<acc_t> wi = aligned_buffer<acc_t>(tile_input ? p.I * 4 * Hp : 0);
  Buffer<acc_t> wr_own = aligned_buffer<acc_t>(proj && !kept ? H * Pp : 0);
  acc_t* const wr = !proj ? nullptr : kept ? kept_buffer<acc_t>(kept->w_hr, H * Pp) : wr_own.get();
  const bool pack_whr = proj && !(kept && kept->w_hr.ready);
  // bf16 h (double-buffered as hbuf below) in rows of P2 pairs, HB rows: for AMX, whole tiles.
  const int64_t P2 = amx_tiles ? round_up(P, 32) / 2 : (P + 1) / 2, HB = amx_tiles ? round_up(B, 16) : B;
  Buffer<uint32_t> wpb = aligned_buffer<uint32_t>(dot ? nblk * P2 * NR : 0);
  // AMX with x set: the tiles take the input too (amx_takes_input), W_ih packed as W_hh is, and
  // each thread copies a step's rows of x into whole tiles of I2 pairs (zeros past I).
  const bool amx_input = amx_tiles && p.x != nullptr;
  const int64_t I2 = amx_input ? round_up(p.I, 32) / 2 : 0;
  Buffer<uint32_t> wib = aligned_buffer<uint32_t>(amx_input ? nblk * I2 * NR : 0);
  std::vector<uint16_t> hb(dot ? 2 * HB * 2 * P2 : 0, 0);
  if constexpr (std::is_same_v<scalar_t, bf16_t>) {
    for (int64_t b = 0; b < (dot ? B : 0); ++b)
      for (int64_t k = 0; k < P; ++k) hb[b * 2 * P2 + k] = hb[(HB + b) * 2 * P2 + k] = p.h0[b * P + k].bits;
  }
  // h is double-buffered (every thread reads all of h_{t-1} while writing its part of h_t);
  // rows not yet started keep h0 in both buffers. c belongs to the thread owning the unit.
  std::vector<acc_t> hbuf(2 * B * P), cst(B * Hp, acc_t(0)), hpre(proj ? B * Hp : 0, acc_t(0));
  for (int64_t i = 0; i < B * P; ++i) hbuf[i] = hbuf[B * P + i] = to_acc(p.h0[i]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) cst[b * Hp + j] = to_acc(p.c0[b * H + j]);
  const int64_t first_rows = T > 0 ? steps.rows(0) : 0;
  for (int64_t i = first_rows * P; i < B * P; ++i) p.h_n[i] = p.h0[i];
  for (int64_t i = first_rows * H; i < B * H; ++i) p.c_n[i] = p.c0[i];

  // Batch 1 with the input on the tiles: x W_ih^T a chunk of steps ahead (lookahead_tile). AVX-512
  // only (tiles_take_input never gives batch 1 the input with 16 registers): spelled out so that
  // the other copies do not compile the lookahead's 16-accumulator loops, dead and spilling there.
  const bool lookahead = LSTM_VEC_BYTES >= 64 && tile_input && B == 1;
  Buffer<acc_t> ring = aligned_buffer<acc_t>(lookahead ? 2 * Lookahead::S * nblk * NR : 0);
  const ForwardCtx<acc_t> ctx{H, P, G, Hp, proj, &steps, wp, wi.get(), ring.get(), cst.data(), hpre.data()};
  const int nt_req = std::max(1, std::min<int>(p.num_threads, static_cast<int>(nblk)));
  SpinBarrier bar;
  run_team(nt_req, bar, [&](int tid, int nt) {
    int64_t ub0, ub1, pb0, pb1;
    split_range(nblk, tid, nt, &ub0, &ub1);
    split_range(Pp / U, tid, nt, &pb0, &pb1);
    // Each thread packs the weights only it reads (its unit blocks, its projection columns): in
    // parallel, into its own cache, and with no barrier before the first step.
    if (pack_whh) pack_gate_weight(p.w_hh, H, P, ub0, ub1, wp, Tl::GV);
    if (tile_input) pack_gate_weight(p.w_ih, H, p.I, ub0, ub1, wi.get(), lookahead ? Lookahead::RV : Tl::GV);
    // The lookahead's x rows of the next chunk, transposed, this thread's copy.
    std::vector<acc_t> xt(lookahead ? p.I * Lookahead::S : 0);
    if (lookahead) lookahead_rows(p, ctx, 0, xt.data());
    for (int64_t blk = ub0; blk < ub1 && lookahead; ++blk) lookahead_first(ctx, p.I, blk, xt.data());
    if (pack_whr) pack_w_hr(p.w_hr, H, P, pb0 * U, pb1 * U, wr);
#ifdef LSTM_BF16_DOT
    if constexpr (std::is_same_v<scalar_t, bf16_t>) {
      if (dot && !amx_tiles) pack_w_hh_bf16(p.w_hh, H, P, ub0, ub1, wpb.get());
      if (amx_tiles) pack_weight_amx(p.w_hh, H, P, P2, ub0, ub1, wpb.get());
      if (amx_input) pack_weight_amx(p.w_ih, H, p.I, I2, ub0, ub1, wib.get());
      if (amx_tiles) amx_begin();
    }
#endif
    std::vector<uint16_t> xs(amx_input ? HB * 2 * I2 : 0, 0);
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = p.reverse ? T - 1 - s : s;
      const int64_t rows = steps.rows(t), row0 = steps.off[t];
      const acc_t* hcur = hbuf.data() + (s & 1) * B * P;
      acc_t* hnext = hbuf.data() + ((s + 1) & 1) * B * P;
      // Unit blocks outside, rows inside: a block's slice of W_hh (P x 4U) stays in L1/L2 while
      // every row tile streams past it, so W_hh is read once per step.
      for (int64_t blk = ub0; blk < ub1 && gemv; ++blk)
        for_row_tiles<kGemvRows>(rows, [&](int64_t r0, auto m) {
          gemv_block<decltype(m)::value>(p, ctx, blk, row0, r0, t, hcur, hnext);
        });
#ifdef LSTM_BF16_DOT
      if constexpr (std::is_same_v<scalar_t, bf16_t>) {
        const uint16_t* hbcur = hb.data() + (s & 1) * HB * 2 * P2;
        uint16_t* hbnext = hb.data() + ((s + 1) & 1) * HB * 2 * P2;
        for (int64_t b = 0; b < rows && amx_input; ++b)
          std::memcpy(xs.data() + b * 2 * I2, p.x + (row0 + b) * p.I, p.I * sizeof(bf16_t));
        for (int64_t blk = ub0; blk < ub1 && amx_tiles; ++blk)
          for (int64_t r0 = 0; r0 < rows; r0 += 32) {
            const int n = static_cast<int>(std::min<int64_t>(32, rows - r0));
            if (n > 16) {
              gate_tile_amx<2>(p, ctx, wpb.get(), P2, wib.get(), xs.data(), I2, blk, r0, n, row0, t, hbcur, hnext, hbnext);
            } else {
              gate_tile_amx<1>(p, ctx, wpb.get(), P2, wib.get(), xs.data(), I2, blk, r0, n, row0, t, hbcur, hnext, hbnext);
            }
          }
        for (int64_t blk = ub0; blk < ub1 && dot && !amx_tiles; ++blk)
          for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
            gate_tile_bf16<decltype(m)::value>(p, ctx, wpb.get(), P2, blk, r0, row0, t,
                                               reinterpret_cast<const uint32_t*>(hbcur), hnext, hbnext);
          });
      }
#endif
      if (lookahead && s % Lookahead::S == 0 && s + Lookahead::S < T)
        lookahead_rows(p, ctx, s / Lookahead::S + 1, xt.data());
      // Odd steps visit the blocks and each block's k in reverse, so that a step starts on the
      // W_hh lines the last one read, still in L1 (about 12 KB of them: 0.95-0.96x of the time).
      const bool down = s & 1;
      for (int64_t i = ub0; i < ub1 && lookahead && rows; ++i)
        lookahead_tile(p, ctx, down ? ub0 + ub1 - 1 - i : i, s, row0, t, xt.data(), hcur, hnext, down);
      for (int64_t blk = ub0; blk < ub1 && !gemv && !dot && !lookahead; ++blk)
        for_gate_tiles<acc_t>(rows, [&](int64_t r0, auto m) {
          gate_tile<decltype(m)::value>(p, ctx, blk, r0, row0, t, hcur, hnext);
        });
      if (proj) {
        // h_t = W_hr (o * tanh(c)): every thread needs all units, so wait for them first.
        bar.wait();
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = hpre.data() + (r0 + r) * Hp;
          column_blocks(H, arows, wr, Pp, pb0, pb1, [&](int r, int64_t pb, V h) {
            const int nc = static_cast<int>(std::min<int64_t>(U, P - pb * U));
            const int64_t b = r0 + r, row = row0 + b;
            store_n(hnext + b * P + pb * U, h, nc);
            store_n(p.y + row * P + pb * U, h, nc);
            if (steps.last(t, b, p.reverse)) store_n(p.h_n + b * P + pb * U, h, nc);
          });
        });
      }
      // Rows idle at this step need no copy across the buffers: with the forward direction they
      // have finished for good, with the reverse one they have not started and hold h0 in both.
      bar.wait();
    }
#ifdef LSTM_BF16_DOT
    if (amx_tiles) amx_end();
#endif
  });
  // Every block and column is packed now (the team covered them all, whatever its size).
  if (kept && pack) kept->w_hh.ready = true;
  if (kept && proj) kept->w_hr.ready = true;
}

constexpr int64_t kBwdPanelBytes = int64_t{512} << 10;
// Read in place, a k step of the dh product jumps a whole row of W_hh; with few row tiles the
// panel's first pass from L3 is most of its reads. Packed against in place, training, 2 threads:
// B1 T16 H1024 0.90x of the time, B8 T32 H1024 0.89x, B16 T32 H1024 0.93x, B4 T16 H512 0.96x,
// B8 / B16 T64 H512 0.97x; but B32 T32 H1024 0.975x, B32 T64 H512 1.02x, B128 T32 H512 1.02x.
// That is AVX-512 on a Zen 4. With 16 registers (AVX2 on a Zen 3) packed wins at any batch from
// kPackMinSteps steps, the in-place reads (a 4 KB stride at H = 1024, every line of a panel's
// column group in one L1 set) much slower there: backward kernel, 2 threads, B32 T32 H1024 0.54x
// of the time, B32 T64 H512 0.68x, B32 T100 H256 0.78x, B128 T32 H256 0.80x. Below kPackMinSteps
// packing costs more than it saves (B32 T1 H1024 1.8x the time, B16 T4 H512 1.4x).
constexpr int64_t kBwdPackMaxRows = 16;

// f(nv, pb) over the column blocks [pb0, pb1) of the backward's dh product, in the groups its
// register tiles take: GV blocks (GV loads feed MR x GV FMAs), then one at a time.
template <typename F>
inline void for_column_groups(int64_t pb0, int64_t pb1, F&& f) {
  constexpr int GV = Tiling<float>::GV;
  int64_t pb = pb0;
  for (; pb + GV <= pb1; pb += GV) f(std::integral_constant<int, GV>{}, pb);
  for (; pb < pb1; ++pb) f(std::integral_constant<int, 1>{}, pb);
}

// W ([rows, P]) for the column blocks [pb0, pb1) of U, in the groups of for_column_groups: the
// group of nv blocks at column c = pb U goes to out + c * rows as [rows][nv U], columns past P
// zero.
template <typename scalar_t, typename acc_t>
void pack_column_groups(const scalar_t* w, int64_t rows, int64_t P, int64_t pb0, int64_t pb1, acc_t* out) {
  constexpr int U = Tiling<acc_t>::U;
  // Row by row, so that w is read in order; group by group, each group's pass read a cache line
  // from every row of w, a stride of P elements that the prefetchers did not follow.
  for (int64_t k = 0; k < rows; ++k)
    for_column_groups(pb0, pb1, [&](auto nv, int64_t pb) {
      constexpr int W = decltype(nv)::value * U;
      acc_t* o = out + pb * U * rows + k * W;
      const int64_t c0 = pb * U, nc = std::min<int64_t>(W, P - c0);
      for (int64_t c = 0; c < nc; ++c) o[c] = to_acc(w[k * P + c0 + c]);
      for (int64_t c = nc; c < W; ++c) o[c] = acc_t(0);
    });
}

template <typename scalar_t, typename acc_t>
void backward(const BackwardParams<scalar_t, acc_t>& p) {
  using Tl = Tiling<acc_t>;
  using V = typename VecOf<acc_t>::type;
  constexpr int U = Tl::U, MR = Tl::MR;
  const int64_t T = p.T, B = p.B, H = p.H, P = p.P, G = 4 * H;
  const int64_t Hp = round_up(H, U), Pp = round_up(P, U);
  const bool proj = p.w_hr != nullptr;
  const Steps steps(p.batch_sizes, T, B);

  // W_hh ([4H, P]) for dh_{t-1} = dgates_t W_hh: read in place when it is in acc_t with no column
  // padding, unless the sequence has kPackMinSteps steps or more and (AVX-512) at most
  // kBwdPackMaxRows rows; otherwise packed by column groups (pack_column_groups), so that a
  // register tile's k loop is one contiguous stream.
  const acc_t* whp = nullptr;  // W_hh in place, or nullptr: packed into wb
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    const bool pack_rows = B <= kBwdPackMaxRows || LSTM_VEC_BYTES < 64;
    if (P == Pp && !(T >= kPackMinSteps && pack_rows)) whp = p.w_hh;
  }
  Buffer<acc_t> wb = aligned_buffer<acc_t>(whp ? 0 : G * Pp);
  // W_hr as it is ([P, H]), padded to Hp: d(o*tanh(c)) = dh W_hr.
  std::vector<acc_t> wr(proj ? P * Hp : 0, acc_t(0));
  if (proj)
    for (int64_t k = 0; k < P; ++k)
      for (int64_t c = 0; c < H; ++c) wr[k * Hp + c] = to_acc(p.w_hr[k * H + c]);

  std::vector<acc_t> dh(B * P), dc(B * H), dht(proj ? B * P : 0), dhp(proj ? B * Hp : 0);
  for (int64_t i = 0; i < B * P; ++i) dh[i] = to_acc(p.grad_hn[i]);
  for (int64_t i = 0; i < B * H; ++i) dc[i] = to_acc(p.grad_cn[i]);

  const int64_t nblk = Hp / U;
  // Rows of W_hh per panel of the dh product: about kBwdPanelBytes of W_hh (all columns), at
  // least 64 rows; one panel (the whole product) up to H = 128. From the sizes alone, not the
  // thread count, so that results do not depend on it.
  const int64_t kc = std::max<int64_t>(64, kBwdPanelBytes / static_cast<int64_t>(Pp * sizeof(acc_t)) / 16 * 16);
  const int nt_req = std::max(1, std::min<int>(p.num_threads, static_cast<int>(std::max(nblk, Pp / U))));
  SpinBarrier bar;
  run_team(nt_req, bar, [&](int tid, int nt) {
    int64_t ub0, ub1, pb0, pb1;
    split_range(nblk, tid, nt, &ub0, &ub1);
    split_range(Pp / U, tid, nt, &pb0, &pb1);
    const int64_t j_begin = ub0 * U, j_end = std::min(H, ub1 * U);
    const int64_t p_begin = pb0 * U, p_end = std::min(P, pb1 * U);
    if (!whp) pack_column_groups(p.w_hh, G, P, pb0, pb1, wb.get());
    for (int64_t s = 0; s < T; ++s) {
      const int64_t t = p.reverse ? s : T - 1 - s;
      const int64_t rows = steps.rows(t), row0 = steps.off[t];
      if (proj) {
        // dL/dh_t in full (the projection mixes every column into every unit).
        for (int64_t b = 0; b < rows; ++b)
          for (int64_t c = p_begin; c < p_end; ++c) {
            const acc_t v = to_acc(p.grad_y[(row0 + b) * P + c]) + dh[b * P + c];
            dht[b * P + c] = v;
            p.dh_out[(row0 + b) * P + c] = v;
          }
        bar.wait();
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = dht.data() + (r0 + r) * P;
          column_blocks(P, arows, wr.data(), Hp, ub0, ub1,
                        [&](int r, int64_t blk, V dh) { storeu(dhp.data() + (r0 + r) * Hp + blk * U, dh); });
        });
      }
      // The cell backward of this thread's units.
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t row = row0 + b, tp = steps.prev(t, b, p.reverse);
        const acc_t* gr = p.gates + row * G;
        const acc_t* cr = p.cells + row * H;
        acc_t* dg = p.dgates + row * G;
        const acc_t* cprev = tp >= 0 ? p.cells + (steps.off[tp] + b) * H : nullptr;
        for (int64_t j = j_begin; j < j_end; j += U) {
          const int n = static_cast<int>(std::min<int64_t>(U, j_end - j));
          const V dhv = proj ? load_n<V>(dhp.data() + b * Hp + j, n)
                             : load_any_n<V>(p.grad_y + row * P + j, n) + load_n<V>(dh.data() + b * P + j, n);
          const V i = load_n<V>(gr + j, n), f = load_n<V>(gr + H + j, n);
          const V g = load_n<V>(gr + 2 * H + j, n), o = load_n<V>(gr + 3 * H + j, n);
          const V cp = cprev ? load_n<V>(cprev + j, n) : load_any_n<V>(p.c0 + b * H + j, n);
          const V tc = tanh_v(load_n<V>(cr + j, n));
          if (proj) store_n(p.h_pre + row * H + j, o * tc, n);
          const V dct = load_n<V>(dc.data() + b * H + j, n) + dhv * o * (acc_t(1) - tc * tc);
          store_n(dc.data() + b * H + j, dct * f, n);
          store_n(dg + j, dct * g * i * (acc_t(1) - i), n);
          store_n(dg + H + j, dct * cp * f * (acc_t(1) - f), n);
          store_n(dg + 2 * H + j, dct * i * (acc_t(1) - g * g), n);
          store_n(dg + 3 * H + j, dhv * tc * o * (acc_t(1) - o), n);
        }
      }
      bar.wait();
      // dh_{t-1} = dgates_t W_hh for this thread's columns; the h each row read, for dW_hh.
      for (int64_t b = 0; b < rows; ++b) {
        const int64_t row = row0 + b, tp = steps.prev(t, b, p.reverse);
        const scalar_t* src = tp >= 0 ? p.y + (steps.off[tp] + b) * P : p.h0 + b * P;
        for (int64_t c = p_begin; c < p_end; ++c) p.h_prev[row * P + c] = to_acc(src[c]);
      }
      // In panels of kc rows of W_hh (all row tiles per panel, partial sums kept in dh), so that
      // this thread's columns of a panel stay in L2 while every row tile passes: whole, they are
      // 8 MB at H = 1024 and came from L3 once per row tile.
      for (int64_t k0 = 0; k0 < G; k0 += kc) {
        const int64_t kn = std::min(kc, G - k0);
        for_row_tiles<MR>(rows, [&](int64_t r0, auto m) {
          constexpr int M = decltype(m)::value;
          const acc_t* arows[M];
          for (int r = 0; r < M; ++r) arows[r] = p.dgates + (row0 + r0 + r) * G + k0;
          // GV column blocks per register tile where there are GV, then one at a time.
          const auto columns = [&](auto nv, int64_t pb) {
            constexpr int NV = decltype(nv)::value;
            V acc[M][NV];  // set lane by lane: a zero-initialized array became a rep stos
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) {
              const int nc = static_cast<int>(std::min<int64_t>(U, P - (pb + v) * U));
#pragma GCC unroll 4
              for (int r = 0; r < M; ++r)
                acc[r][v] = k0 > 0 ? load_n<V>(dh.data() + (r0 + r) * P + (pb + v) * U, nc) : V{};
            }
            const acc_t* w = whp ? whp + k0 * Pp + pb * U : wb.get() + pb * U * G + k0 * NV * U;
            mac_tile<M, NV>(kn, arows, w, whp ? Pp : NV * U, acc);
            for (int v = 0; v < NV; ++v) {
              const int nc = static_cast<int>(std::min<int64_t>(U, P - (pb + v) * U));
              for (int r = 0; r < M; ++r) store_n(dh.data() + (r0 + r) * P + (pb + v) * U, acc[r][v], nc);
            }
          };
          for_column_groups(pb0, pb1, columns);
        });
      }
        bar.wait();
    }
  });
  for (int64_t i = 0; i < B * P; ++i) p.dh0[i] = from_acc<scalar_t>(dh[i]);
  for (int64_t i = 0; i < B * H; ++i) p.dc0[i] = from_acc<scalar_t>(dc[i]);
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
