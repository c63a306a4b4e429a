// CPU kernels: the fused recurrent loops of one layer and direction (see ../lstm.h for the params).
//
// The caller has already run the input projection (params.gates holds x W_ih^T; the biases are
// added here), except where the kernel does it too: a few steps of small-batch inference, and
// fp32/fp64 batches that fill the register tiles or, at batch 1, small weights
// (tiles_take_input).
// Each function packs the recurrent weights once per call (small batches over few steps read
// them in place), then owns the whole timestep loop: num_threads threads split the hidden units
// (each thread computes all four gates of its units, so the cell update needs no exchange) and
// meet at one barrier per step (two with a projection; the backward two or three).
// The implementation is compiled once per instruction set (AVX-512, AVX2, baseline) and the
// widest the running CPU supports is picked at run time.
#pragma once

#include "lstm.h"

namespace lstm_fused {
namespace cpu {

template <typename scalar_t, typename acc_t>
void lstm_forward(const ForwardParams<scalar_t, acc_t>& params);

// Writes dgates, h_prev (and dh_out, h_pre with a projection), dh0 and dc0; the weight and input
// gradients are GEMMs over those buffers that the caller runs after this returns.
template <typename scalar_t, typename acc_t>
void lstm_backward(const BackwardParams<scalar_t, acc_t>& params);

// The same loops for a GRU (gate order r, z, n; the params' GRU layout is in gru_cell.h): the
// small-batch path (which takes the input projection too when ForwardParams::x is set) and the
// register tiles (which do not: the caller runs it); dgates_x receives the input side's gradients.
template <typename scalar_t, typename acc_t>
void gru_forward(const ForwardParams<scalar_t, acc_t>& params);
template <typename scalar_t, typename acc_t>
void gru_backward(const BackwardParams<scalar_t, acc_t>& params);

// Whether lstm_forward<bf16_t> runs its AVX512-BF16 tiles for these sizes (those read
// ForwardParams::gates_lp when it is set).
bool bf16_tiles_used(int64_t T, int64_t B, int64_t H, int64_t P, bool proj);

// Whether lstm_forward reads W_hh in place for these sizes (small batches over few steps, one
// step of up to 32 rows) rather than packing it (acc_bytes: the size of acc_t).
bool small_batch_path(int64_t T, int64_t B, int64_t H, int64_t P, int64_t acc_bytes);

// Whether lstm_forward's register tiles can take the input projection for these sizes (fp32 and
// fp64, acc_bytes the size of acc_t; threads: ForwardParams::num_threads): then the caller passes
// ForwardParams::x and no gates.
bool tiles_take_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, int64_t acc_bytes, int threads);

// Whether lstm_forward<bf16_t> runs AMX tiles for these sizes and they take the input projection
// too: then the caller passes ForwardParams::x (and w_ih, bias) and no gates, as tiles_take_input.
bool amx_takes_input(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool proj);

// Whether oneDNN's bf16 GEMM runs below the fp32 rate on this CPU, so that a bf16 input projection
// is faster as an fp32 sgemm on widened operands: Intel CPUs without usable AMX, where one
// vdpbf16ps a cycle (32 products) at best matches two fp32 FMAs (32 products). Measured on a Xeon
// (family 6 model 207) whose VM hides AMX: oneDNN's bf16 GEMM 164 GFLOP/s against 330 for fp32
// on 2 cores; on AMD's Zen 4 bf16 ran at 2.2x the fp32 rate (418 against 190), with AMX ~6x.
// From the hardware, not LSTM_FUSED_CPU_ISA (which caps this package's kernels, not oneDNN's).
bool bf16_gemm_below_fp32();

// "amx", "avx512", "avx2" or "baseline": the code path lstm_forward/lstm_backward take on this CPU.
const char* isa_name();

}  // namespace cpu
}  // namespace lstm_fused
