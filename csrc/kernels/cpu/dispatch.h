// The size rules that pick a path: the small-batch path (W_hh read in place), the input projection
// on the register tiles or on AMX tiles, and the backward's packed or in-place W_hh. lstm_cpu.cpp
// and the adapter ask the same functions, so the caller and the kernel agree.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/lstm_cpu.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

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

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
