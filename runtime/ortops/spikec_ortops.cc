// spikec's ONNX Runtime custom ops (domain "spikec.ortops", version 1).
//
// SpikeEncodeMatMulNBits: one token's TC-LIF SpikeEncode and one spiking matrix product
// over 4-bit weight codes packed in the .sbin's TENSOR_INT4 layout, in one kernel. It is
// the one-token graph's product group (spikec/ort_lowering.py: _one_token_nbits_fn, an
// encoder, the sentinel layout, MatMulNBits and the scale Muls: about 15 nodes around each
// product) as one node, computing the same bits:
//
//   inputs  0 x      float32 [1, ..., 1, K]   the token (one token only)
//           1 q_tok  float32 scalar           its largest code Q = 2^T - 1 (T <= 7)
//           2 s_tok  float32 scalar, optional its static scale; absent: dynamic, max|x| / Q
//           3 w      uint8 [N, ceil(K / 127), 64]  spikec/int4.py's layout: u = w + 8, two per
//                    byte (even k low nibble), 127 codes and one zero-weight slot per block
//           4 s_w    float32, N elements      per-column weight scale
//           5 bias   float32, N elements, optional
//   output  0 y      float32 [1, ..., 1, N]
//
// Numerics (shared/design/SEMANTICS.md sections 1 and 3; spikec.reference.encode_tokens and
// spiking_matmul), in the order of the ONNX function it replaces:
//   s1 = max|x| / Q, or 1.0 where that is not > 0 (dynamic), or s_tok (static)
//   s  = s1, or NaN (the reference's quiet NaN) for a token holding NaN or +-inf (or s_tok NaN)
//   q_k = clamp(rint(x_k / s1), -Q, Q)          round half to even (the FPU's default mode)
//   acc_n = sum_k q_k * w_kn                    int32, exact (|acc| < 2^31 by the compiler's bound)
//   y_n = (float32(acc_n) * s) * s_w[n] (+ bias[n])   three float32 roundings, in this order
// Compiled with -ffp-contract=off: no fused multiply-add may merge two of those roundings.
// A bad token (s NaN) gives acc = 0 and so a NaN row, as the reference's code 0 and scale NaN.
//
// ScaleRowsColumns: the spiking product's dequantizing tail in one pass, for prefill's
// products on com.microsoft MatMulIntegerToFloat (whose output, with both scales 1.0, is
// float32(acc) exactly; spikec/ort_lowering.py: _scaled_product):
//
//   inputs  0 a      float32 [..., T, M]    float32(acc)
//           1 s_x    float32, T elements (one per row of a) or 1
//           2 s_w    float32, M elements
//           3 bias   float32, M elements, optional
//   output  0 y      float32 [..., T, M]    y = (a * s_x) * s_w (+ bias), three roundings in order
//
// The stock graph takes two or three elementwise passes over the product for this (Mul,
// Mul, Add), each a read and a write of memory at prefill's sizes (256 x 151936 logits:
// 16-17 ms a pass on two threads); this is one.
//
// SpikeEncodeU8: the TC-LIF encoder of prefill's products, their uint8 codes in one read
// of x for the scale and one for the codes (spikec/ort_lowering.py: _encode_u8_fn, about
// fifteen nodes and passes):
//
//   inputs  0 x      float32 [..., T, K]
//           1 s_tok  float32, T elements     per-token static scale (read only when static)
//           2 q_tok  float32, T elements     per-token largest code Q = 2^T - 1
//           3 a_zp   uint8 scalar            the codes' offset (>= every Q, <= 127)
//   attribute dynamic (int, 1: s1 = max|x| / Q, 1.0 where that is not > 0; 0: s1 = s_tok)
//   outputs 0 q      uint8 [..., T, K]       a_zp + clamp(rint(x / s1), -Q, Q); a_zp on a bad row
//           1 s      float32 [..., T, 1]     s1; NaN on a bad row
// A bad row holds NaN or +-inf (or has a NaN static scale): spikec.reference.encode_tokens'
// non-finite rule (code 0, scale NaN). x / s1 is one IEEE division, rint rounds half to
// even (vroundps / nearbyint), as QuantizeLinear and the reference.
//
// SpikeEncodeMatMulNBits' product reads the packed bytes where they lie (the .sbin's
// mapped section), 4 bits a weight; columns are split over onnxruntime's intra-op threads
// (KernelContext::ParallelFor), as are the other two ops' rows.
// On x86-64 with AVX2, vpmaddubsw multiplies the unsigned nibbles u (0..15) by the signed
// codes (|q| <= 127): a pair's sum is at most 2 * 15 * 127 = 3810 and two pairs' 7620, far
// from int16 saturation; vpmaddwd widens to int32. sum_k q_k * u_kn - 8 * sum_k q_k removes
// the zero point exactly. Elsewhere a plain loop computes the same integers.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SPIKEC_X86 1
#endif

namespace {

constexpr int64_t kBlockBytes = 64;     // 128 nibbles: 127 codes and the zero-weight slot
constexpr int64_t kCodesPerBlock = 127;
constexpr int32_t kZeroNibble = 8;      // u = w + 8
constexpr float kMaxQ = 127.0f;         // codes must fit int8 (T <= 7)
// Below this many weight bytes a product runs on the calling thread: waking a second one
// costs more (tens of microseconds with spinning off) than reading 256 KiB.
constexpr int64_t kParallelBytes = 256 * 1024;
constexpr int64_t kTaskBytes = 256 * 1024;  // bytes of work per ParallelFor piece
constexpr int64_t kPrefetchBytes = 1024;
// Outputs above this size are written with non-temporal stores (ScaleRowsColumns): they
// do not fit the cache anyway (32 MiB of L3 on the machine measured).
constexpr int64_t kStreamBytes = 32 << 20;

// One token's codes de-interleaved to the packed layout: qe[b * 64 + j] is the code at
// block position 2j (low nibble of byte j), qo[...] at 2j + 1 (high nibble); zero at the
// zero-weight slot and past K.
struct TokenCodes {
  std::vector<int8_t> qe, qo;
  int32_t sum = 0;  // sum_k q_k, for the zero point
  float s = 0.0f;   // the product's scale (NaN for a bad token)
};

// spikec.reference.encode_tokens for one token, as _encoder_nodes(scaled_only=True).
void Encode(const float* x, int64_t K, int64_t blocks, float q, const float* s_static, TokenCodes* out) {
  bool bad = false;
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k) {
    const float a = std::fabs(x[k]);
    bad |= !(a <= std::numeric_limits<float>::max());  // NaN or inf
    amax = a > amax ? a : amax;
  }
  float s1;
  if (s_static == nullptr) {
    const float s0 = amax / q;
    s1 = s0 > 0.0f ? s0 : 1.0f;
  } else {
    s1 = *s_static;
  }
  // A bad token's scale is the reference's quiet NaN (0x7fc00000), whichever NaN or inf
  // the row held (the stock graph's s1 + sum(x * 0) carries a payload that depends on the
  // order its sum meets them: NaN payloads are not part of the contract).
  out->s = bad || std::isnan(s1) ? std::numeric_limits<float>::quiet_NaN() : s1;
  out->qe.assign(static_cast<size_t>(blocks * kBlockBytes), 0);
  out->qo.assign(static_cast<size_t>(blocks * kBlockBytes), 0);
  out->sum = 0;
  if (std::isnan(out->s)) return;  // every output is NaN whatever the codes: leave them 0
  for (int64_t k = 0; k < K; ++k) {
    float r = std::nearbyint(x[k] / s1);
    r = r < -q ? -q : (r > q ? q : r);
    const int8_t c = static_cast<int8_t>(r);
    const int64_t b = k / kCodesPerBlock, p = k % kCodesPerBlock;
    (p % 2 == 0 ? out->qe : out->qo)[static_cast<size_t>(b * kBlockBytes + p / 2)] = c;
    out->sum += c;
  }
}

// sum_k q_k * u_kn for columns [n0, n1).
void DotColumnsScalar(const uint8_t* w, int64_t blocks, const int8_t* qe, const int8_t* qo, int64_t n0, int64_t n1,
                      int32_t* acc) {
  const int64_t bytes = blocks * kBlockBytes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* col = w + n * bytes;
    int32_t a = 0;
    for (int64_t j = 0; j < bytes; ++j) a += (col[j] & 0x0F) * qe[j] + (col[j] >> 4) * qo[j];
    acc[n] = a;
  }
}

#ifdef SPIKEC_X86
__attribute__((target("avx2"))) inline __m256i DotBlockAvx2(const uint8_t* col, const int8_t* qe, const int8_t* qo,
                                                             __m256i acc) {
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int h = 0; h < 2; ++h) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 32 * h));
    const __m256i lo = _mm256_and_si256(v, mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qe + 32 * h));
    const __m256i o = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qo + 32 * h));
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, e), _mm256_maddubs_epi16(hi, o));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
  }
  return acc;
}

__attribute__((target("avx2"))) inline int32_t HorizontalSum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

// One column at a time: each column's bytes follow the last one's, so the product reads
// one sequential stream (measured, LM head 151936 x 1536, one thread: 16 ms, against 38 ms
// reading four columns side by side), with a software prefetch 16 lines ahead (14.7 ms;
// MLAS' MatMulNBits 18.4 ms on its prepacked copy).
__attribute__((target("avx2"))) void DotColumnsAvx2(const uint8_t* w, int64_t blocks, const int8_t* qe,
                                                     const int8_t* qo, int64_t n0, int64_t n1, int32_t* acc) {
  const int64_t bytes = blocks * kBlockBytes;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* c = w + n * bytes;
    __m256i a = _mm256_setzero_si256();
    for (int64_t j = 0; j < bytes; j += kBlockBytes) {
      _mm_prefetch(reinterpret_cast<const char*>(c + j + kPrefetchBytes), _MM_HINT_T0);
      a = DotBlockAvx2(c + j, qe + j, qo + j, a);
    }
    acc[n] = HorizontalSum(a);
  }
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");
#endif

struct ProductTask {
  const uint8_t* w;
  int64_t blocks, N;
  const TokenCodes* codes;
  const float* s_w;
  const float* bias;
  float* y;
  int32_t* acc;
};

void RunColumns(const ProductTask& t, int64_t n0, int64_t n1) {
  if (!std::isnan(t.codes->s)) {
#ifdef SPIKEC_X86
    if (kHasAvx2) {
      DotColumnsAvx2(t.w, t.blocks, t.codes->qe.data(), t.codes->qo.data(), n0, n1, t.acc);
    } else {
      DotColumnsScalar(t.w, t.blocks, t.codes->qe.data(), t.codes->qo.data(), n0, n1, t.acc);
    }
#else
    DotColumnsScalar(t.w, t.blocks, t.codes->qe.data(), t.codes->qo.data(), n0, n1, t.acc);
#endif
  } else {
    std::fill(t.acc + n0, t.acc + n1, 0);  // codes (and their sum) 0: acc 0, y NaN through s
  }
  const int32_t zero_point = kZeroNibble * t.codes->sum;
  const float s = t.codes->s;
  for (int64_t n = n0; n < n1; ++n) {
    float v = static_cast<float>(t.acc[n] - zero_point) * s;
    v = v * t.s_w[n];
    if (t.bias != nullptr) v = v + t.bias[n];
    t.y[n] = v;
  }
}

int64_t Elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Runs `Run(task, i0, i1)` over [0, n), `bytes_per_item` bytes of work per item: on the
// calling thread when the work is under kParallelBytes (waking a thread costs more), else
// in pieces of about kTaskBytes over onnxruntime's intra-op threads.
template <typename Task, void (*Run)(const Task&, int64_t, int64_t)>
void SplitOverThreads(const Ort::KernelContext& ctx, const Task& task, int64_t n, int64_t bytes_per_item) {
  struct Pieces {
    const Task* task;
    int64_t n, per_piece;
    static void RunPiece(void* data, size_t i) {
      const auto& p = *static_cast<const Pieces*>(data);
      const int64_t i0 = static_cast<int64_t>(i) * p.per_piece;
      Run(*p.task, i0, std::min(p.n, i0 + p.per_piece));
    }
  };
  const int64_t bytes = std::max<int64_t>(1, bytes_per_item);
  Pieces pieces{&task, n, std::max<int64_t>(1, kTaskBytes / bytes)};
  const int64_t count = (n + pieces.per_piece - 1) / pieces.per_piece;
  if (n * bytes < kParallelBytes || count < 2) {
    Run(task, 0, n);
  } else {
    ctx.ParallelFor(Pieces::RunPiece, static_cast<size_t>(count), 0, &pieces);
  }
}

// A bad input, reported by onnxruntime as "<op>: <what>".
[[noreturn]] void Fail(const char* op, const std::string& what) {
  ORT_CXX_API_THROW(std::string(op) + ": " + what, ORT_INVALID_ARGUMENT);
}

struct SpikeEncodeMatMulNBitsKernel {
  static constexpr const char* kOp = "SpikeEncodeMatMulNBits";

  SpikeEncodeMatMulNBitsKernel(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/) {}

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto x = ctx.GetInput(0);
    const auto q_in = ctx.GetInput(1);
    const auto s_in = ctx.GetInput(2);
    const auto w_in = ctx.GetInput(3);
    const auto sw_in = ctx.GetInput(4);
    const size_t n_inputs = ctx.GetInputCount();  // a missing last optional input may be absent
    const Ort::ConstValue bias_in = n_inputs > 5 ? ctx.GetInput(5) : Ort::ConstValue{nullptr};

    std::vector<int64_t> x_shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (x_shape.empty()) Fail(kOp, "x has no feature axis");
    const int64_t K = x_shape.back();
    if (K < 1 || Elements(x_shape) != K) Fail(kOp, "x must be one token [1, ..., 1, K]");
    if (q_in.GetTensorTypeAndShapeInfo().GetElementCount() != 1) Fail(kOp, "q_tok must be a scalar");
    const float q = *q_in.GetTensorData<float>();
    if (!(q >= 1.0f && q <= kMaxQ && q == std::nearbyint(q))) Fail(kOp, "q_tok must be an integer in 1..127");
    const float* s_static = nullptr;
    if (s_in != nullptr) {
      if (s_in.GetTensorTypeAndShapeInfo().GetElementCount() != 1) Fail(kOp, "s_tok must be a scalar");
      s_static = s_in.GetTensorData<float>();
    }
    const std::vector<int64_t> w_shape = w_in.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t blocks = (K + kCodesPerBlock - 1) / kCodesPerBlock;
    if (w_shape.size() != 3 || w_shape[1] != blocks || w_shape[2] != kBlockBytes) {
      Fail(kOp, "w must be uint8 [N, ceil(K / 127), 64] for K = " + std::to_string(K));
    }
    const int64_t N = w_shape[0];
    if (sw_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(N)) {
      Fail(kOp, "s_w must have N = " + std::to_string(N) + " elements");
    }
    const float* bias = nullptr;
    if (bias_in != nullptr) {
      if (bias_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(N)) {
        Fail(kOp, "bias must have N = " + std::to_string(N) + " elements");
      }
      bias = bias_in.GetTensorData<float>();
    }

    std::vector<int64_t> y_shape = x_shape;
    y_shape.back() = N;
    auto y = ctx.GetOutput(0, y_shape);
    if (N == 0) return;

    // Per call, not per kernel: onnxruntime may run one session from several threads at once.
    TokenCodes codes;
    Encode(x.GetTensorData<float>(), K, blocks, q, s_static, &codes);
    std::vector<int32_t> acc(static_cast<size_t>(N));
    ProductTask task{w_in.GetTensorData<uint8_t>(), blocks, N, &codes, sw_in.GetTensorData<float>(), bias,
                     y.GetTensorMutableData<float>(), acc.data()};
    SplitOverThreads<ProductTask, RunColumns>(ctx, task, N, blocks * kBlockBytes);
  }
};

struct EncodeTask {
  const float* x;
  const float* s_tok;
  const float* q_tok;
  uint8_t zp;
  bool dynamic;
  uint8_t* q;
  float* s;
  int64_t K;
};

#ifdef SPIKEC_X86
// a_zp + clamp(rint(x / s1), -Q, Q) for one row, eight at a time: vdivps and vroundps are
// the scalar loop's IEEE division and round-half-to-even.
__attribute__((target("avx2"))) int64_t QuantizeRowAvx2(const float* x, int64_t K, float s1, float Q, uint8_t zp,
                                                         uint8_t* q) {
  const __m256 vs = _mm256_set1_ps(s1), hi = _mm256_set1_ps(Q), lo = _mm256_set1_ps(-Q);
  const __m256i vzp = _mm256_set1_epi32(zp);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    const __m256i c = _mm256_add_epi32(_mm256_cvttps_epi32(r), vzp);  // 0 .. 254
    const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packus_epi16(c16, c16));
  }
  return k;
}
#endif

void EncodeRows(const EncodeTask& t, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = t.x + r * t.K;
    uint8_t* q = t.q + r * t.K;
    bool bad = false;
    float amax = 0.0f;
    for (int64_t k = 0; k < t.K; ++k) {
      const float a = std::fabs(x[k]);
      bad |= !(a <= std::numeric_limits<float>::max());  // NaN or inf
      amax = a > amax ? a : amax;
    }
    const float Q = t.q_tok[r];
    float s1;
    if (t.dynamic) {
      const float s0 = amax / Q;
      s1 = s0 > 0.0f ? s0 : 1.0f;
    } else {
      s1 = t.s_tok[r];
      bad |= std::isnan(s1);
    }
    if (bad) {
      std::memset(q, t.zp, static_cast<size_t>(t.K));
      t.s[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    t.s[r] = s1;
    int64_t k = 0;
#ifdef SPIKEC_X86
    if (kHasAvx2) k = QuantizeRowAvx2(x, t.K, s1, Q, t.zp, q);
#endif
    for (; k < t.K; ++k) {
      float v = std::nearbyint(x[k] / s1);
      v = v < -Q ? -Q : (v > Q ? Q : v);
      q[k] = static_cast<uint8_t>(static_cast<int32_t>(v) + t.zp);
    }
  }
}

struct SpikeEncodeU8Kernel {
  static constexpr const char* kOp = "SpikeEncodeU8";

  SpikeEncodeU8Kernel(const OrtApi& /*api*/, const OrtKernelInfo* info) {
    dynamic_ = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("dynamic") != 0;
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto x = ctx.GetInput(0);
    const auto s_in = ctx.GetInput(1);
    const auto q_in = ctx.GetInput(2);
    const auto zp_in = ctx.GetInput(3);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) Fail(kOp, "x must have a last (feature) axis");
    const int64_t K = shape.back();
    const int64_t rows = Elements(std::vector<int64_t>(shape.begin(), shape.end() - 1));
    if (q_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(rows) ||
        (!dynamic_ && s_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(rows))) {
      Fail(kOp, "s_tok and q_tok must have one element per token (" + std::to_string(rows) + ")");
    }
    if (zp_in.GetTensorTypeAndShapeInfo().GetElementCount() != 1) Fail(kOp, "a_zp must be a scalar");
    const uint8_t zp = *zp_in.GetTensorData<uint8_t>();
    const float* q_tok = q_in.GetTensorData<float>();
    for (int64_t r = 0; r < rows; ++r) {
      if (!(q_tok[r] >= 0.0f && q_tok[r] <= static_cast<float>(zp) && q_tok[r] == std::nearbyint(q_tok[r]))) {
        Fail(kOp, "q_tok must hold integers in 0..a_zp (" + std::to_string(zp) + ")");
      }
    }
    std::vector<int64_t> s_shape(shape.begin(), shape.end());
    s_shape.back() = 1;
    auto q = ctx.GetOutput(0, shape);
    auto s = ctx.GetOutput(1, s_shape);
    if (rows == 0) return;
    EncodeTask task{x.GetTensorData<float>(), dynamic_ ? nullptr : s_in.GetTensorData<float>(), q_tok, zp, dynamic_,
                    q.GetTensorMutableData<uint8_t>(), s.GetTensorMutableData<float>(), K};
    SplitOverThreads<EncodeTask, EncodeRows>(ctx, task, rows, K * 4);
  }

 private:
  bool dynamic_;
};

struct SpikeEncodeU8Op : Ort::CustomOpBase<SpikeEncodeU8Op, SpikeEncodeU8Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new SpikeEncodeU8Kernel(api, info); }
  const char* GetName() const { return "SpikeEncodeU8"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
};

struct ScaleTask {
  const float* a;
  const float* s_x;  // per row, or nullptr (then s_x_scalar)
  float s_x_scalar;
  const float* s_w;
  const float* bias;
  float* y;
  int64_t M;
  bool stream;  // non-temporal stores: the output is larger than the last-level cache
};

#ifdef SPIKEC_X86
// The same three roundings, eight columns at a time (vmulps, vaddps: IEEE single precision,
// as the scalar loop), with non-temporal stores: an output larger than the cache is not
// read into it before being written (256 x 151936 logits on two threads: 16.4 ms, against
// 24.7 ms with ordinary stores and 36-41 ms for the stock graph's two Muls).
__attribute__((target("avx2"))) void ScaleRowsStreamAvx2(const ScaleTask& t, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float sx = t.s_x != nullptr ? t.s_x[r] : t.s_x_scalar;
    const __m256 vsx = _mm256_set1_ps(sx);
    const float* a = t.a + r * t.M;
    float* y = t.y + r * t.M;
    int64_t c = 0;
    for (; c < t.M && (reinterpret_cast<uintptr_t>(y + c) & 31) != 0; ++c) {  // to a 32-byte boundary
      float v = a[c] * sx;
      v = v * t.s_w[c];
      y[c] = t.bias != nullptr ? v + t.bias[c] : v;
    }
    for (; c + 8 <= t.M; c += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(a + c), vsx);
      v = _mm256_mul_ps(v, _mm256_loadu_ps(t.s_w + c));
      if (t.bias != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(t.bias + c));
      _mm256_stream_ps(y + c, v);
    }
    for (; c < t.M; ++c) {
      float v = a[c] * sx;
      v = v * t.s_w[c];
      y[c] = t.bias != nullptr ? v + t.bias[c] : v;
    }
  }
  _mm_sfence();
}
#endif

void ScaleRows(const ScaleTask& t, int64_t r0, int64_t r1) {
#ifdef SPIKEC_X86
  if (kHasAvx2 && t.stream) {
    ScaleRowsStreamAvx2(t, r0, r1);
    return;
  }
#endif
  for (int64_t r = r0; r < r1; ++r) {
    const float sx = t.s_x != nullptr ? t.s_x[r] : t.s_x_scalar;
    const float* __restrict a = t.a + r * t.M;
    const float* __restrict sw = t.s_w;
    float* __restrict y = t.y + r * t.M;
    if (t.bias != nullptr) {
      const float* __restrict b = t.bias;
      for (int64_t c = 0; c < t.M; ++c) {
        float v = a[c] * sx;
        v = v * sw[c];
        y[c] = v + b[c];
      }
    } else {
      for (int64_t c = 0; c < t.M; ++c) {
        const float v = a[c] * sx;
        y[c] = v * sw[c];
      }
    }
  }
}

struct ScaleRowsColumnsKernel {
  static constexpr const char* kOp = "ScaleRowsColumns";

  ScaleRowsColumnsKernel(const OrtApi& /*api*/, const OrtKernelInfo* /*info*/) {}

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto a = ctx.GetInput(0);
    const auto sx_in = ctx.GetInput(1);
    const auto sw_in = ctx.GetInput(2);
    const Ort::ConstValue bias_in = ctx.GetInputCount() > 3 ? ctx.GetInput(3) : Ort::ConstValue{nullptr};
    const std::vector<int64_t> shape = a.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) Fail(kOp, "a must have a last (column) axis");
    const int64_t M = shape.back();
    const int64_t rows = Elements(std::vector<int64_t>(shape.begin(), shape.end() - 1));
    const size_t n_sx = sx_in.GetTensorTypeAndShapeInfo().GetElementCount();
    if (n_sx != 1 && n_sx != static_cast<size_t>(rows)) {
      Fail(kOp, "s_x must have one element per row of a (" + std::to_string(rows) + ") or one");
    }
    if (sw_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(M)) {
      Fail(kOp, "s_w must have M = " + std::to_string(M) + " elements");
    }
    const float* bias = nullptr;
    if (bias_in != nullptr) {
      if (bias_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(M)) {
        Fail(kOp, "bias must have M = " + std::to_string(M) + " elements");
      }
      bias = bias_in.GetTensorData<float>();
    }
    auto y = ctx.GetOutput(0, shape);
    if (rows == 0 || M == 0) return;
    const float* sx = sx_in.GetTensorData<float>();
    ScaleTask task{a.GetTensorData<float>(), n_sx == 1 ? nullptr : sx, sx[0], sw_in.GetTensorData<float>(),
                   bias, y.GetTensorMutableData<float>(), M, rows * M * 4 > kStreamBytes};
    SplitOverThreads<ScaleTask, ScaleRows>(ctx, task, rows, M * 4);
  }
};

struct ScaleRowsColumnsOp : Ort::CustomOpBase<ScaleRowsColumnsOp, ScaleRowsColumnsKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new ScaleRowsColumnsKernel(api, info); }
  const char* GetName() const { return "ScaleRowsColumns"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 3 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                      : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

struct SpikeEncodeMatMulNBitsOp : Ort::CustomOpBase<SpikeEncodeMatMulNBitsOp, SpikeEncodeMatMulNBitsKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const {
    return new SpikeEncodeMatMulNBitsKernel(api, info);
  }
  const char* GetName() const { return "SpikeEncodeMatMulNBits"; }
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 2 || index == 5 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
                                    : OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  // The header's API version (ORT_API_VERSION) is the oldest onnxruntime this library needs.
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) return nullptr;  // cannot even report: onnxruntime is older than the header
  Ort::InitApi(api);
  static SpikeEncodeMatMulNBitsOp encode_matmul;
  static ScaleRowsColumnsOp scale;
  static SpikeEncodeU8Op encode_u8;
  static std::mutex lock;
  static std::vector<Ort::CustomOpDomain> domains;  // alive as long as the sessions that use them
  try {
    std::lock_guard<std::mutex> guard(lock);
    Ort::CustomOpDomain domain{"spikec.ortops"};
    domain.Add(&encode_matmul);
    domain.Add(&scale);
    domain.Add(&encode_u8);
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
