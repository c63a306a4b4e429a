// lstm_fused CUDA kernel core: parameter structs and launchers (no torch in here).
//
// One call runs one layer in one direction over the whole sequence, with the notation and the row
// layout of ../lstm.h (T, B, H, P, N; rows of step t are off(t) .. off(t)+bs(t)-1). The adapter
// (csrc/ops/lstm_cuda.cpp) does the GEMMs over all rows (input projection before, weight
// gradients after) through ATen; these kernels run the recurrence.
//
// Processing order: the forward visits t = 0..T-1 (t = T-1..0 when reverse), the backward the
// opposite. Since batch_sizes is non-increasing, the active rows of every step are a prefix
// 0..bs(t)-1 of the batch; a row keeps its state while it is inactive, so h_n/c_n (dh0/dc0) hold
// each row's state after its own last visited step.
//
// Types: `scalar` is the tensor dtype (float, half, bfloat16); every `float*` below is in the
// accumulation dtype (float32). The fallback pointwise kernels also take double (scalar == acc).
// All matrices are row-major and contiguous. Nothing here allocates or synchronizes: every
// launcher only enqueues work on `stream`, so it can be captured in a CUDA graph.
#pragma once

#include <cstdint>

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace lstm_fused {
namespace cuda {

enum class Scalar : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// offsets: [T+1] int64 in device memory, off(t) = offsets[t], bs(t) = offsets[t+1] - offsets[t];
// nullptr for dense input (off(t) = t*B, bs(t) = B).
struct ForwardArgs {
  int64_t T = 0, B = 0, H = 0, P = 0;
  const int64_t* offsets = nullptr;
  int64_t max_bs = 0;  // bs of the longest step (batch_sizes[0], or B when dense)
  bool reverse = false;
  bool save = false;

  float* gates = nullptr;       // [N, 4H] read: x W_ih^T (the kernels add b_ih + b_hh); written
                                //   when save: the activated gates (sigmoid i, f, tanh g, sigmoid o)
  const void* b_ih = nullptr;   // [4H] scalar, read, or nullptr (no bias)
  const void* b_hh = nullptr;   // [4H] scalar, read, or nullptr
  float* cells = nullptr;       // [N, H] written when save: c of every row
  const void* w_hh = nullptr;   // [4H, P] scalar, read
  const void* w_hr = nullptr;   // [P, H] scalar, read; nullptr without projection (P == H)
  const void* h0 = nullptr;     // [B, P] scalar, read
  const void* c0 = nullptr;     // [B, H] scalar, read
  void* y = nullptr;            // [N, P] scalar, written: h of every row
  void* h_n = nullptr;          // [B, P] scalar, written
  void* c_n = nullptr;          // [B, H] scalar, written
  float* h_pre = nullptr;       // [2, B, H] workspace when w_hr: o * tanh(c), by step parity
  unsigned* flags = nullptr;    // [2 * grid] workspace, zeroed before the launch (persistent only)
  int tuning = 6;               // bits 0-1 step sync (0 release/acquire flags, 1 fenced flags,
                                //   2 grid.sync), bit 2 per-warp staging, bit 3 no prefetch,
                                //   bit 8 (adapter) no cluster kernel, bit 9 cluster kernel's h
                                //   exchange by DSMEM stores + cluster barrier (default: st.async
                                //   + mbarriers), bit 10 cluster kernel at any units x rows
  int min_units = 1;            // hidden units per block at least (fewer, fuller blocks)
};

struct BackwardArgs {
  int64_t T = 0, B = 0, H = 0, P = 0;
  const int64_t* offsets = nullptr;
  int64_t max_bs = 0;
  bool reverse = false;

  const void* grad_y = nullptr;   // [N, P] scalar, read
  const void* grad_hn = nullptr;  // [B, P] scalar, read
  const void* grad_cn = nullptr;  // [B, H] scalar, read
  const void* w_hh = nullptr;     // [4H, P] scalar, read
  const void* w_hr = nullptr;     // [P, H] scalar, read, or nullptr
  const void* h0 = nullptr;       // [B, P] scalar, read
  const void* c0 = nullptr;       // [B, H] scalar, read
  const void* y = nullptr;        // [N, P] scalar, read: the forward output
  const float* gates = nullptr;   // [N, 4H] read: activated gates saved by the forward
  const float* cells = nullptr;   // [N, H] read: cells saved by the forward

  void* dgates = nullptr;    // [N, 4H] written: dL/d(gate pre-activations), in the input dtype
                             //   (the half types exchange it between blocks at half the bytes and
                             //   feed it to the tensor cores; the weight GEMMs take it in that
                             //   dtype anyway)
  void* h_prev = nullptr;    // [N, P] scalar, written: the h_{t-1} each row's step read
  float* dh_out = nullptr;   // [N, P] written when w_hr: dL/d(projected h) of every row
  float* h_pre = nullptr;    // [N, H] written when w_hr: o * tanh(c) of every row
  void* dh0 = nullptr;       // [B, P] scalar, written
  void* dc0 = nullptr;       // [B, H] scalar, written
  unsigned* flags = nullptr;  // [2 * grid] workspace, zeroed before the launch (persistent only)
  int tuning = 4;             // as ForwardArgs::tuning
  int min_units = 1;          // as ForwardArgs::min_units
};

// Persistent cooperative kernels: one launch runs the whole time loop; each block keeps its slice
// of W_hh (and W_hr) in shared memory for all T steps and owns whole hidden units (forward: the 4
// gate rows of its units; backward: the W_hh columns of its units), with one grid-wide barrier per
// step (two with a projection). float32 and the half types (float64 takes the fallback).
//
// *_persistent_plan says whether the persistent kernel can run this problem on the current device
// (shared memory, co-residency, max_bs <= max_batch); returns 0 when it cannot, else the grid
// size.
int forward_persistent_plan(const ForwardArgs& a, Scalar s, int64_t max_batch);
int backward_persistent_plan(const BackwardArgs& a, Scalar s, int64_t max_batch);
// Return the cudaError_t of the launch (0 on success).
int forward_persistent(const ForwardArgs& a, Scalar s, cudaStream_t stream);

// The forward in one thread-block cluster of 16 (or 8) blocks on sm_90: half types, no
// projection, small problems (max_bs padded to 8, times H/16 padded to 8, at most 128, or both at
// most 16: B <= 16 at H <= 256), W_hh spread over the cluster's shared memory; h moves between the
// blocks through distributed shared memory (st.async + mbarriers). ForwardArgs::flags, h_pre and
// min_units are not used, of `tuning` only bits 9 and 10. forward_cluster_plan returns the
// cluster size, 0 where this kernel cannot run the problem on the current device.
int forward_cluster_plan(const ForwardArgs& a, Scalar s);
int forward_cluster(const ForwardArgs& a, Scalar s, cudaStream_t stream);
int backward_persistent(const BackwardArgs& a, Scalar s, cudaStream_t stream);

// Fallback, one step at a time: the adapter runs the recurrent GEMM of each step through ATen and
// these fused pointwise kernels do the rest. `step` describes one visited timestep.
struct StepRows {
  int64_t off = 0;       // first row of this step
  int64_t bs = 0;        // active rows of this step
  int64_t pred_off = 0;  // first row of the forward-order predecessor step
  int64_t pred_bs = 0;   // its active rows (0 when there is none: rows start from h0/c0)
  bool last_of_rows = false;  // unused by the kernels (kept for symmetry with the persistent path)
};

// Forward step: for rows b < bs, units j < H:
//   pre = gates[off+b] + rec[b] (rec: [bs, 4H] scalar, h_{t-1} W_hh^T from the adapter's GEMM)
//   c = f*c_state[b] + i*g, h = o*tanh(c); c_state[b] = c;
//   h goes to h_pre_out[b*H + j] (scalar) when `proj`, else to y[off+b] and h_state[b].
//   When save: gates[off+b] = activated gates, cells[off+b] = c.
struct FallbackForwardStep {
  int64_t H = 0, P = 0;
  StepRows step;
  bool save = false, proj = false;
  void* gates = nullptr;        // [N, 4H] acc
  const void* rec = nullptr;    // [bs, 4H] scalar
  void* cells = nullptr;        // [N, H] acc
  void* c_state = nullptr;      // [B, H] acc
  void* h_state = nullptr;      // [B, P] scalar
  void* y = nullptr;            // [N, P] scalar
  void* h_pre_out = nullptr;    // [B, H] scalar when proj
};
int fallback_forward_step(const FallbackForwardStep& a, Scalar s, cudaStream_t stream);

// Backward step: for rows b < bs, units j < H:
//   dh = dh_in[b*ld_dh_in + j] + (grad_y ? grad_y[off+b, j] : 0)
//   from the saved gates/cells (c_prev: cells[pred_off+b] or c0[b]) computes
//   dgates[off+b] and dc_state[b] (dc_state: [B, H] acc, in: dc_t, out: dc_{t-1});
//   h_pre[off+b, j] = o*tanh(c) when h_pre; h_prev[off+b, p] for p < P (y of the predecessor
//   row, or h0).
struct FallbackBackwardStep {
  int64_t H = 0, P = 0;
  StepRows step;
  const void* dh_in = nullptr;   // acc
  int64_t ld_dh_in = 0;
  const void* grad_y = nullptr;  // [N, P] scalar or nullptr
  const void* gates = nullptr;   // [N, 4H] acc
  const void* cells = nullptr;   // [N, H] acc
  const void* c0 = nullptr;      // [B, H] scalar
  const void* h0 = nullptr;      // [B, P] scalar
  const void* y = nullptr;       // [N, P] scalar
  void* dc_state = nullptr;      // [B, H] acc
  void* dgates = nullptr;        // [N, 4H] acc
  void* h_pre = nullptr;         // [N, H] acc or nullptr
  void* h_prev = nullptr;        // [N, P] scalar
};
int fallback_backward_step(const FallbackBackwardStep& a, Scalar s, cudaStream_t stream);

}  // namespace cuda
}  // namespace lstm_fused
