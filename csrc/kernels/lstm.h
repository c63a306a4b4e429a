// lstm_fused kernel core: the parameter structs shared by the CPU and CUDA kernels.
//
// No torch in here (or in anything under csrc/kernels/): the adapters in csrc/ops/ turn tensors
// into these structs, and these headers compile with plain g++ and nvcc.
//
// One call runs one layer in one direction over the whole sequence. Notation:
//   T  timesteps            B  batch (rows of h0/c0)     H  hidden size
//   P  output size of a step (proj_size if a projection is used, else H)
//   N  rows of the sequence: T*B when dense, sum(batch_sizes) when packed
// Row layout (dense and packed alike): the rows of step t are rows off(t) .. off(t)+bs(t)-1 of
// every [N, ...] buffer, where bs(t) = batch_sizes ? batch_sizes[t] : B and off(t) = sum of bs(s)
// for s < t. Row off(t)+b belongs to sequence b. batch_sizes is non-increasing, bs(0) <= B.
// A sequence that is not active at step t keeps its state; sequences b >= bs(0) never run and
// their h_n/c_n are h0/c0 (their dh0/dc0 are grad_hn/grad_cn).
// Gate order i, f, g, o (as torch.nn.LSTM). Every matrix is row-major and contiguous.
// The CPU's GRU (cpu::gru_forward / gru_backward) takes the same structs with three gates r, z, n
// (as torch.nn.GRU), so 4H reads 3H below; the fields it reads differently are marked GRU.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace lstm_fused {

// Bit-compatible with c10::BFloat16 / __nv_bfloat16 (the adapters reinterpret_cast to it).
struct bf16_t {
  uint16_t bits;
};

// Returns the number of rows at step t (bs(t) above).
inline int64_t step_rows(const int64_t* batch_sizes, int64_t B, int64_t t) {
  return batch_sizes ? batch_sizes[t] : B;
}

// CPU only: the recurrent weights as the forward packs them, kept from one call to the next over
// the same weights and sizes (the adapter's time chunks), so that they are packed once. The kernel
// allocates a slot (64-byte aligned) and fills it on the first call that packs that weight, and
// reads it as it is on later calls; it frees itself. Not for calls that run at the same time.
struct PackedWeights {
  struct Slot {
    void* data = nullptr;
    int64_t bytes = 0;
    bool ready = false;  // data holds the pack
  };
  Slot w_hh;  // W_hh for the register tiles (the small-batch path reads it in place)
  Slot w_hr;  // W_hr^T with a projection
  PackedWeights() = default;
  PackedWeights(const PackedWeights&) = delete;
  PackedWeights& operator=(const PackedWeights&) = delete;
  ~PackedWeights() {
    std::free(w_hh.data);
    std::free(w_hr.data);
  }
};

// scalar_t: the tensor dtype (double, float, bf16_t); acc_t: what the kernel computes in
// (double for double, float otherwise).
template <typename scalar_t, typename acc_t>
struct ForwardParams {
  int64_t T = 0, B = 0, H = 0, P = 0;
  const int64_t* batch_sizes = nullptr;  // [T] host memory, or nullptr when dense
  bool reverse = false;                  // run t = T-1 .. 0 (each sequence from its own last step)
  int num_threads = 1;                   // CPU only: threads that split the hidden units

  // gates: [N, 4H] read: x_t W_ih^T (the input projection, done by the adapter; not read when x
  //        is set, below); bias added here.
  //        When save is true it is overwritten with the activated gates (sigmoid i, f, o;
  //        tanh g) that the backward reads; otherwise its contents are left undefined.
  acc_t* gates = nullptr;
  const acc_t* bias = nullptr;     // [4H] read: b_ih + b_hh, or nullptr without biases
  // GRU (CPU): no bias; b_ih and b_hh (below) are read on every path. Saved, gates holds r, z, n
  // and cells h W_hn^T + b_hn.
  // bf16 inference on CPUs with AVX512-BF16 (see cpu::bf16_tiles_used): the input projection as
  // the GEMM left it, [N, 4H] in bf16, read in place of gates (then nullptr; save is false).
  const scalar_t* gates_lp = nullptr;
  // CPU only, T == 1: gates already hold h0 W_hh^T too (the adapter ran it as a GEMM), so the
  // kernel neither packs W_hh nor multiplies by it.
  bool recurrent_in_gates = false;
  const scalar_t* w_hh = nullptr;  // [4H, P] read
  const scalar_t* w_hr = nullptr;  // [P, H] read, or nullptr when P == H without projection
  PackedWeights* kept = nullptr;   // CPU only: packs kept across calls, or nullptr (packed per call)
  // CPU: h0 may be h_n and c0 c_n (read whole before any state is written; rows the call does
  // not run keep their values): the adapter's time chunks carry the state in them.
  const scalar_t* h0 = nullptr;    // [B, P] read
  const scalar_t* c0 = nullptr;    // [B, H] read
  scalar_t* y = nullptr;           // [N, P] written: h of every row
  scalar_t* h_n = nullptr;         // [B, P] written
  scalar_t* c_n = nullptr;         // [B, H] written
  acc_t* cells = nullptr;          // [N, H] written when save: c of every row (else unused)
  bool save = false;

  // The input projection fused into the recurrence (CPU only): when x is set every step computes
  // x_t W_ih^T itself and gates is not read (nullptr, or with save the [N, 4H] buffer the
  // activations go to). Two cases: small-batch inference on the small-batch path (one step of a
  // stream costs less than a separate GEMM call), which adds b_ih + b_hh; and fp32/fp64 on the
  // register tiles (cpu::tiles_take_input; at batch 1 a chunk of steps ahead), which add bias.
  const scalar_t* x = nullptr;     // [N, I] read
  const scalar_t* w_ih = nullptr;  // [4H, I] read
  const scalar_t* b_ih = nullptr;  // [4H] read, or nullptr (small-batch path only; a GRU: always)
  const scalar_t* b_hh = nullptr;  // [4H] read, or nullptr (small-batch path only; a GRU: always)
  int64_t I = 0;
};

template <typename scalar_t, typename acc_t>
struct BackwardParams {
  int64_t T = 0, B = 0, H = 0, P = 0;
  const int64_t* batch_sizes = nullptr;  // as in ForwardParams
  bool reverse = false;
  int num_threads = 1;

  const scalar_t* grad_y = nullptr;   // [N, P] read: dL/dy
  const scalar_t* grad_hn = nullptr;  // [B, P] read
  const scalar_t* grad_cn = nullptr;  // [B, H] read
  const scalar_t* w_hh = nullptr;     // [4H, P] read
  const scalar_t* w_hr = nullptr;     // [P, H] read, or nullptr
  const scalar_t* h0 = nullptr;       // [B, P] read
  const scalar_t* c0 = nullptr;       // [B, H] read
  const scalar_t* y = nullptr;        // [N, P] read: forward output
  const acc_t* gates = nullptr;       // [N, 4H] read: activated gates saved by the forward
  const acc_t* cells = nullptr;       // [N, H] read: cell states saved by the forward

  acc_t* dgates = nullptr;  // [N, 4H] written: dL/d(pre-activation gates); may alias nothing
  // GRU (CPU): dgates is the recurrent side (dr, dz, d(h W_hn^T + b_hn)), dgates_x [N, 3H] the
  // input side (dr, dz, dn); no c0, grad_cn or dc0.
  acc_t* dgates_x = nullptr;
  acc_t* h_prev = nullptr;  // [N, P] written: the h_{t-1} each row's step read (for dW_hh)
  acc_t* dh_out = nullptr;  // [N, P] written when w_hr: dL/d(projected h) per row (for dW_hr)
  acc_t* h_pre = nullptr;   // [N, H] written when w_hr: o * tanh(c) per row (for dW_hr)
  scalar_t* dh0 = nullptr;  // [B, P] written
  scalar_t* dc0 = nullptr;  // [B, H] written
};

}  // namespace lstm_fused
