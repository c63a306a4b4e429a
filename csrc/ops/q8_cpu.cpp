// CPU implementations of the int8 ops (schemas.cpp): q8_pack, q8_linear, q8_forward. Checks,
// allocation and threads here; the kernels in kernels/cpu/q8*.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include "cpu/q8.h"
#include "ops/common.h"

namespace lstm_fused {
namespace {

namespace q8 = cpu::q8;

// A packed weight as the ops take it: [packed, scale, colsum, shape] (q8_pack's outputs; shape is
// int64 [units, K], the weight's own sizes, which the packed layout rounds up), checked against
// the K and units its caller expects (units -1: any; gates 0: as many as the weight holds).
q8::Weight weight_of(at::TensorList w, const char* name, int64_t K, int gates, int64_t units) {
  TORCH_CHECK(w.size() == 4, "lstm_fused: ", name, " must be [packed, scale, colsum, shape] (q8_pack's outputs), got ",
              w.size(), " tensors");
  const at::Tensor &packed = w[0], &scale = w[1], &colsum = w[2], &shape = w[3];
  for (const at::Tensor* t : {&packed, &scale, &colsum, &shape})
    TORCH_CHECK(t->device().is_cpu(), "lstm_fused: the int8 ops run on the CPU; ", name, " is on ", t->device());
  TORCH_CHECK(shape.scalar_type() == at::kLong && shape.dim() == 1 && shape.size(0) == 2,
              "lstm_fused: ", name, "'s shape must be int64 [units, K], got ", shape.scalar_type(), " ", shape.sizes());
  const at::Tensor sc = shape.contiguous();
  const int64_t w_units = sc.const_data_ptr<int64_t>()[0], w_K = sc.const_data_ptr<int64_t>()[1];
  TORCH_CHECK(w_K == K, "lstm_fused: ", name, " was packed for inputs of size ", w_K, ", got ", K);
  TORCH_CHECK(units < 0 || w_units == units, "lstm_fused: ", name, " holds ", w_units, " units a gate, expected ",
              units);
  TORCH_CHECK(K >= 1 && K <= q8::kMaxK && w_units >= 1, "lstm_fused: int8 weights take K in [1, ", q8::kMaxK,
              "] and at least one unit, got K = ", K, " and ", w_units, " units");
  q8::Weight out;
  out.K = K;
  out.Kp = q8::padded_k(K);
  out.nblk = q8::blocks_of(w_units);
  if (gates == 0) {
    TORCH_CHECK(packed.dim() == 4 && packed.size(0) % out.nblk == 0 && packed.size(0) > 0, "lstm_fused: ", name,
                " must hold a whole number of gates of ", out.nblk, " blocks, got ", packed.sizes());
    gates = static_cast<int>(packed.size(0) / out.nblk);
  }
  out.gates = gates;
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() &&
                  packed.sizes().equals({out.nblk * gates, out.Kp / q8::kGroup, q8::kBlock, q8::kGroup}),
              "lstm_fused: ", name, " must be a contiguous int8 [", out.nblk * gates, ", ", out.Kp / q8::kGroup,
              ", 16, 4] packed weight, got ", packed.scalar_type(), " ", packed.sizes());
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.size(0) == out.cols() &&
                  scale.is_contiguous(),
              "lstm_fused: ", name, "'s scale must be a contiguous float32 [", out.cols(), "], got ",
              scale.scalar_type(), " ", scale.sizes());
  TORCH_CHECK(colsum.scalar_type() == at::kInt && colsum.dim() == 1 && colsum.size(0) == out.cols() &&
                  colsum.is_contiguous(),
              "lstm_fused: ", name, "'s colsum must be a contiguous int32 [", out.cols(), "], got ",
              colsum.scalar_type(), " ", colsum.sizes());
  out.w = packed.const_data_ptr<int8_t>();
  out.scale = scale.const_data_ptr<float>();
  out.colsum = colsum.const_data_ptr<int32_t>();
  return out;
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "lstm_fused: the int8 ops run on the CPU; ", name, " is on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "lstm_fused: the int8 ops take float32 ", name, ", got ",
              t.scalar_type());
}

const float* bias_ptr(const c10::optional<at::Tensor>& b, const char* name, int64_t size, at::Tensor& keep) {
  if (!b) return nullptr;
  check_float(*b, name);
  TORCH_CHECK(b->dim() == 1 && b->size(0) == size, "lstm_fused: ", name, " must be [", size, "], got ",
              b->sizes());
  keep = b->contiguous();
  return keep.const_data_ptr<float>();
}

// Threads for an int8 call: one where a step is too small to split across a team (a barrier costs
// about a microsecond, the int8 products of 2^17 pairs about as much on one core).
int q8_threads(int64_t T, int64_t rows, int64_t cols, int64_t K) {
  const int64_t per_step = std::max<int64_t>(rows, 1) * cols * K;
  if (at::in_parallel_region()) return 1;
  return (per_step < (int64_t{1} << 17) || T * per_step < (int64_t{1} << 19)) ? 1 : at::get_num_threads();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> q8_pack_cpu(const at::Tensor& w, int64_t gates) {
  check_float(w, "weights");
  TORCH_CHECK(gates >= 1 && w.dim() == 2 && w.size(0) % gates == 0, "lstm_fused: q8_pack takes a [gates * units, K] "
              "weight, got ", w.sizes(), " with ", gates, " gates");
  const int64_t units = w.size(0) / gates, K = w.size(1);
  TORCH_CHECK(K >= 1 && K <= q8::kMaxK && units >= 1, "lstm_fused: int8 weights take K in [1, ", q8::kMaxK,
              "] and at least one unit, got K = ", K, " and ", units, " units");
  const int64_t nblk = q8::blocks_of(units), Kp = q8::padded_k(K), cols = nblk * gates * q8::kBlock;
  at::Tensor packed = at::empty({nblk * gates, Kp / q8::kGroup, q8::kBlock, q8::kGroup}, w.options().dtype(at::kChar));
  at::Tensor scale = at::empty({cols}, w.options());
  at::Tensor colsum = at::empty({cols}, w.options().dtype(at::kInt));
  const at::Tensor wc = w.contiguous();
  q8::pack_weight(wc.const_data_ptr<float>(), units, static_cast<int>(gates), K, packed.mutable_data_ptr<int8_t>(),
                  scale.mutable_data_ptr<float>(), colsum.mutable_data_ptr<int32_t>());
  at::Tensor shape = at::empty({2}, w.options().dtype(at::kLong));
  shape.mutable_data_ptr<int64_t>()[0] = units;
  shape.mutable_data_ptr<int64_t>()[1] = K;
  return {packed, scale, colsum, shape};
}

at::Tensor q8_linear_cpu(const at::Tensor& x, at::TensorList w, const c10::optional<at::Tensor>& bias) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() >= 1, "lstm_fused: q8_linear's x must have at least one dimension");
  const q8::Weight W = weight_of(w, "w", x.size(-1), 0, -1);
  at::Tensor keep;
  const float* b = bias_ptr(bias, "bias", W.cols(), keep);
  const at::Tensor xc = x.contiguous();
  const int64_t N = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = W.cols();
  at::Tensor out = at::empty(sizes, x.options());
  if (N > 0) q8::linear(xc.const_data_ptr<float>(), N, W, b, out.mutable_data_ptr<float>(), q8_threads(1, N, W.cols(), W.Kp));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> q8_forward_cpu(
    const at::Tensor& x, at::TensorList w_ih, at::TensorList w_hh, at::TensorList w_hr,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& bias_hn, const at::Tensor& h0,
    const c10::optional<at::Tensor>& c0, const c10::optional<at::Tensor>& batch_sizes, bool reverse) {
  LSTM_FUSED_NO_AUTOCAST;
  check_float(x, "x");
  check_float(h0, "h0");
  const bool gru = !c0.has_value();
  const int gates = gru ? 3 : 4;
  const bool packed = batch_sizes.has_value();
  TORCH_CHECK(x.dim() == (packed ? 2 : 3), "lstm_fused: x must be ", packed ? "[N, I] (packed rows)" : "[T, B, I]",
              ", got shape ", x.sizes());
  TORCH_CHECK(h0.dim() == 2, "lstm_fused: h0 must be [B, P], got ", h0.sizes());
  const int64_t B = h0.size(0), P = h0.size(1), I = x.size(-1);
  const int64_t H = gru ? P : c0->size(-1);
  if (!gru) {
    check_float(*c0, "c0");
    TORCH_CHECK(c0->dim() == 2 && c0->size(0) == B, "lstm_fused: c0 must be [B, H] with h0's B = ", B, ", got ",
                c0->sizes());
  }
  const bool proj = !w_hr.empty();
  TORCH_CHECK(!(gru && proj), "lstm_fused: a GRU has no projection");
  TORCH_CHECK(proj || P == H, "lstm_fused: h0 has ", P, " columns and c0 ", H, ", which needs w_hr");
  q8::LayerParams p;
  p.w_ih = weight_of(w_ih, "w_ih", I, gates, H);
  p.w_hh = weight_of(w_hh, "w_hh", P, gates, H);
  p.proj = proj;
  if (proj) p.w_hr = weight_of(w_hr, "w_hr", H, 1, P);
  at::Tensor bias_keep, bias_hn_keep;
  p.bias = bias_ptr(bias, "bias", p.w_ih.cols(), bias_keep);
  p.bias_hn = gru ? bias_ptr(bias_hn, "bias_hn", p.w_hh.nblk * q8::kBlock, bias_hn_keep) : nullptr;
  int64_t T, N;
  at::Tensor bs;
  if (packed) {
    bs = batch_sizes->contiguous();
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1,
                "lstm_fused: batch_sizes must be a 1-D int64 CPU tensor");
    T = bs.size(0);
    N = x.size(0);
    const int64_t* v = bs.const_data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t t = 0; t < T; ++t) {
      TORCH_CHECK(v[t] > 0 && v[t] <= (t ? v[t - 1] : B),
                  "lstm_fused: batch_sizes must be positive, non-increasing and at most the batch size of h0, got ",
                  bs);
      total += v[t];
    }
    TORCH_CHECK(total == N, "lstm_fused: batch_sizes sum to ", total, " but x has ", N, " rows");
  } else {
    T = x.size(0);
    TORCH_CHECK(x.size(1) == B, "lstm_fused: x has batch ", x.size(1), " but h0 has ", B);
    N = T * B;
  }
  const at::Tensor xc = x.contiguous(), h0c = h0.contiguous();
  const at::Tensor c0c = gru ? at::Tensor() : c0->contiguous();
  at::Tensor y = at::empty(output_sizes(x, P), x.options());
  at::Tensor h_n = at::empty({B, P}, x.options());
  at::Tensor c_n = gru ? at::empty({0}, x.options()) : at::empty({B, H}, x.options());
  // The loop takes the input projection from 32 rows a step, or from 4 (a step's register tiles
  // full) with a team. Measured on a Zen 4 (AVX512-VNNI), T = 50-100, I = H, in the loop against
  // before it (alternating processes, medians): 1 thread B4 H256 1.07x of the time, B8 H256 1.07x,
  // B8 H512 1.01x, B16 H256 1.02x, B32 H256 0.95x; 2 threads B4 H256 0.60x (the product over the
  // sequence split by rows, the loop's share of a step small), B8 H512 0.97x, B32 H256 0.95x, B64
  // H512 0.93x. Below 4 rows a tile would read W_ih for a row or two.
  const int threads = q8_threads(T, N / std::max<int64_t>(T, 1), p.w_hh.cols(), p.w_hh.Kp);
  const int64_t rows = N / std::max<int64_t>(T, 1);
  const bool fuse_input = rows >= 32 || (rows >= 4 && threads > 1);
  at::Tensor gbuf, xq, xs, xz;
  p.fuse_input = fuse_input;
  if (fuse_input) {
    xq = empty_reused({N, p.w_ih.Kp}, x.options().dtype(at::kByte));
    xs = at::empty({N}, x.options());
    xz = at::empty({N}, x.options().dtype(at::kInt));
    p.xq = xq.mutable_data_ptr<uint8_t>();
    p.xs = xs.mutable_data_ptr<float>();
    p.xz = xz.mutable_data_ptr<int32_t>();
  } else {
    gbuf = empty_reused({std::max<int64_t>(N, 1), p.w_ih.cols()}, x.options());
    p.gates = gbuf.mutable_data_ptr<float>();
  }
  p.T = T;
  p.B = B;
  p.I = I;
  p.H = H;
  p.P = P;
  p.batch_sizes = packed ? bs.const_data_ptr<int64_t>() : nullptr;
  p.reverse = reverse;
  p.gru = gru;
  p.x = xc.const_data_ptr<float>();
  p.h0 = h0c.const_data_ptr<float>();
  p.c0 = gru ? nullptr : c0c.const_data_ptr<float>();
  p.y = y.mutable_data_ptr<float>();
  p.h_n = h_n.mutable_data_ptr<float>();
  p.c_n = gru ? nullptr : c_n.mutable_data_ptr<float>();
  p.num_threads = threads;
  if (B > 0) q8::layer_forward(p);
  return {y, h_n, c_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("q8_pack", &q8_pack_cpu);
  m.impl("q8_linear", &q8_linear_cpu);
  m.impl("q8_forward", &q8_forward_cpu);
}

}  // namespace lstm_fused
