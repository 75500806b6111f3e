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
// SpikeMatMulIntegerToFloat: a spiking product of prefill (any token count), the integer
// GEMM and the contract's two roundings in one kernel, for products by a constant weight
// (spikec/ort_lowering.py: _scaled_product, which on stock operators is a
// com.microsoft.MatMulIntegerToFloat giving float32(acc) and two or three elementwise passes):
//
//   inputs  0 a      uint8 [..., T, K]      the codes q plus a_zp (spikec.ort_lowering.code_offset)
//           1 b      int8 [K, N]            the weight codes; a constant initializer (packed once
//                                           per session; else packed per call)
//           2 a_zp   uint8 scalar
//           3 s_x    float32, T elements (one per row of a) or 1
//           4 s_w    float32, N elements
//           5 bias   float32, N elements, optional
//   output  0 y      float32 [..., T, N]    y = (float32(acc) * s_x) * s_w (+ bias), where
//                                           acc = sum_k (a_k - a_zp) * b_kn in int32
//
// The integer sum is exact whatever the codes (int32 arithmetic modulo 2^32, as
// MatMulInteger's). Speed comes from the codes being narrow: TC-LIF codes of T <= 4 steps
// with their offset are 0..30, so vpmaddubsw's int16 pair sums can be added up in int16 over
// several k-steps before being widened to int32 once, where an 8-bit activation GEMM
// (MLAS' AVX2 U8S8 kernel) widens after every vpmaddubsw. How long a window stays exact is
// decided per panel of 16 columns from the weights (the largest sum of |w| any int16 lane
// meets in a window of 1, 2, ..., 64 k-steps, computed when packing) and per call from the
// largest code: a_max * bound <= 32767. A panel where even one step could saturate (codes
// above 128) takes a plain loop. Rows are tiled 6 at a time (a hand-written AVX2 micro-kernel:
// GCC spilled the intrinsics version's twelve accumulators), columns 16 at a time, and the
// panels are split over onnxruntime's threads; outputs over 32 MiB are written with
// non-temporal stores, bypassing the cache.
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
// (KernelContext::ParallelFor), as are SpikeEncodeU8's rows and SpikeMatMulIntegerToFloat's
// panels.
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
#include <memory>
#include <new>
#include <cstdlib>
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
// Outputs above this size are written with non-temporal stores (SpikeMatMulIntegerToFloat):
// they do not fit the cache anyway (32 MiB of L3 on the machine measured).
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

// ------------------------------------------------------------ SpikeMatMulIntegerToFloat

constexpr int64_t kPanel = 16;          // columns per packed weight panel: two vectors of 8
constexpr int64_t kTileRows = 6;        // rows per micro-kernel tile (12 int16 accumulators)
constexpr int64_t kChunkSteps = 256;    // k-steps (4 k each) per cache chunk: 16 KiB of a panel
constexpr int64_t kBlockTiles = 48;     // tiles per row block at most: 288 rows x 1 KiB a chunk, in L2
constexpr int kWindowLevels = 7;        // accumulation windows of 1, 2, 4, ..., 64 k-steps
constexpr int64_t kInt16Max = 32767;

// Memory aligned to 64 bytes (the packed layouts are read with aligned 32-byte loads).
template <typename T>
struct AlignedArray {
  explicit AlignedArray(size_t n) : data(static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64))) {
    if (data == nullptr) throw std::bad_alloc();
  }
  ~AlignedArray() { std::free(data); }
  AlignedArray(const AlignedArray&) = delete;
  AlignedArray& operator=(const AlignedArray&) = delete;
  T* data;
};

// An int8 weight [K, N] in the micro-kernel's layout, made once per kernel (the weight is a
// constant initializer) or per call. Panel p holds columns 16p .. 16p + 15; k-step s of it is
// 64 bytes: for vector v (columns 8v .. 8v + 7) and column c, the four weights k = 4s .. 4s + 3
// (zero past K and N), so that one vpmaddubsw against a row's four broadcast codes gives two
// int16 pair sums per column.
struct PackedWeights {
  PackedWeights(const int8_t* w, int64_t K_, int64_t N_)
      : K(K_), N(N_), steps((K_ + 3) / 4), panels((N_ + kPanel - 1) / kPanel),
        bytes(static_cast<size_t>(std::max<int64_t>(1, steps * panels * 64))),
        col_sum(static_cast<size_t>(panels * kPanel), 0),
        window_bound(static_cast<size_t>(panels * kWindowLevels), 0) {
    int8_t* out = bytes.data;
    std::vector<int32_t> lane(static_cast<size_t>(steps * 32));  // |w| pair sums per step and lane
    for (int64_t p = 0; p < panels; ++p) {
      std::fill(lane.begin(), lane.end(), 0);
      for (int64_t s = 0; s < steps; ++s) {
        for (int64_t c = 0; c < kPanel; ++c) {
          const int64_t n = p * kPanel + c;
          for (int64_t j = 0; j < 4; ++j) {
            const int64_t k = 4 * s + j;
            const int8_t v = (k < K && n < N) ? w[k * N + n] : 0;
            out[(p * steps + s) * 64 + (c / 8) * 32 + (c % 8) * 4 + j] = v;
            col_sum[static_cast<size_t>(n)] += v;
            // int16 lane (c, j / 2) of vpmaddubsw's result sums k = 4s + 2 (j / 2) and the next
            lane[static_cast<size_t>(s * 32 + c * 2 + j / 2)] += std::abs(static_cast<int32_t>(v));
          }
        }
      }
      // window_bound[level]: the largest sum of |w| pair sums any int16 lane sees over an
      // aligned window of 2^level k-steps, so a_max * bound <= 32767 keeps every int16 partial
      // sum exact (and each vpmaddubsw pair below saturation) for codes 0 <= a <= a_max.
      std::vector<int64_t> win(lane.begin(), lane.end());
      int64_t len = steps;
      for (int level = 0; level < kWindowLevels; ++level) {
        int64_t best = 0;
        for (int64_t i = 0; i < len * 32; ++i) best = std::max(best, win[static_cast<size_t>(i)]);
        window_bound[static_cast<size_t>(p * kWindowLevels + level)] = best;
        const int64_t next = (len + 1) / 2;
        for (int64_t s = 0; s < next; ++s) {
          for (int64_t l = 0; l < 32; ++l) {
            const int64_t a = win[static_cast<size_t>(2 * s * 32 + l)];
            const int64_t b = 2 * s + 1 < len ? win[static_cast<size_t>((2 * s + 1) * 32 + l)] : 0;
            win[static_cast<size_t>(s * 32 + l)] = a + b;
          }
        }
        len = next;
      }
    }
  }
  // The longest window (k-steps) over which panel p's int16 sums stay exact for codes <= a_max;
  // 0 where even one k-step could saturate (then the panel takes the plain loop).
  int64_t Window(int64_t p, int32_t a_max) const {
    int64_t steps_ok = 0;
    for (int level = 0; level < kWindowLevels; ++level) {
      if (static_cast<int64_t>(a_max) * window_bound[static_cast<size_t>(p * kWindowLevels + level)] > kInt16Max) break;
      steps_ok = int64_t{1} << level;
    }
    return steps_ok;
  }
  const int64_t K, N, steps, panels;
  AlignedArray<int8_t> bytes;
  std::vector<int32_t> col_sum;      // sum_k w_kn per column (0 past N), for the zero point
  std::vector<int64_t> window_bound;
};

struct GemmTask {
  const PackedWeights* w;
  const int32_t* a_packed;  // [tiles][steps][6]: four uint8 codes of a row per int32
  int64_t rows, tiles;
  int32_t a_max;
  uint8_t zp;
  const float* s_x;  // per row, or nullptr (then s_x_scalar)
  float s_x_scalar;
  const float* s_w;
  const float* bias;
  float* y;
  bool stream;
};

struct PackRowsTask {
  const uint8_t* a;
  int64_t rows, K, steps;
  int32_t* out;
  int32_t* tile_max;  // per tile: its largest code
};

void PackRowTiles(const PackRowsTask& t, int64_t t0, int64_t t1) {
  for (int64_t tile = t0; tile < t1; ++tile) {
    uint8_t amax = 0;
    int32_t* out = t.out + tile * t.steps * kTileRows;
    for (int64_t r = 0; r < kTileRows; ++r) {
      const int64_t m = tile * kTileRows + r;
      const uint8_t* a = m < t.rows ? t.a + m * t.K : nullptr;
      for (int64_t s = 0; s < t.steps; ++s) {
        uint8_t q[4] = {0, 0, 0, 0};
        if (a != nullptr) {
          for (int64_t j = 0; j < 4 && 4 * s + j < t.K; ++j) {
            q[j] = a[4 * s + j];
            amax = std::max(amax, q[j]);
          }
        }
        std::memcpy(out + s * kTileRows + r, q, 4);
      }
    }
    t.tile_max[tile] = amax;
  }
}

// acc[r][c] += sum over k-steps [s0, s0 + n) of row r's four codes . column c's four weights,
// the plain loop (CPUs without AVX2; panels whose int16 window would be empty).
void TileScalar(const int32_t* a, const int8_t* b, int64_t n, int32_t* acc) {
  for (int64_t s = 0; s < n; ++s) {
    for (int64_t r = 0; r < kTileRows; ++r) {
      uint8_t q[4];
      std::memcpy(q, a + s * kTileRows + r, 4);
      for (int64_t c = 0; c < kPanel; ++c) {
        const int8_t* wc = b + s * 64 + (c / 8) * 32 + (c % 8) * 4;
        int32_t sum = 0;
        for (int j = 0; j < 4; ++j) sum += static_cast<int32_t>(q[j]) * wc[j];
        acc[r * kPanel + c] += sum;
      }
    }
  }
}

#ifdef SPIKEC_X86
alignas(32) const int16_t kOnes16[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

// The micro-kernel: a 6 x 16 tile over n k-steps (n <= the panel's window), in int16
// (vpmaddubsw: uint8 codes x int8 weights, two products a lane; vpaddw), then widened once
// (vpmaddwd by ones) and added to the int32 tile. Accumulating in int16 over the window,
// where MLAS widens after every vpmaddubsw, is what low-bit spike codes buy: about a third
// fewer vector instructions per multiply-add. Registers: ymm0-11 the tile, ymm12-13 the
// weights of the step, ymm14 a row's broadcast codes, ymm15 a product.
#define SPIKEC_ROW(r, c0, c1)                          \
  "vpbroadcastd " #r "*4(%[pa]), %%ymm14\n\t"          \
  "vpmaddubsw %%ymm12, %%ymm14, %%ymm15\n\t"           \
  "vpaddw %%ymm15, %%" #c0 ", %%" #c0 "\n\t"           \
  "vpmaddubsw %%ymm13, %%ymm14, %%ymm15\n\t"           \
  "vpaddw %%ymm15, %%" #c1 ", %%" #c1 "\n\t"
#define SPIKEC_WIDEN(c, off)                           \
  "vpmaddwd %%" #c ", %%ymm15, %%ymm14\n\t"            \
  "vpaddd " #off "(%[acc]), %%ymm14, %%ymm14\n\t"      \
  "vmovdqa %%ymm14, " #off "(%[acc])\n\t"
__attribute__((target("avx2"))) void TileAvx2(const int32_t* a, const int8_t* b, int64_t n, int32_t* acc) {
  if (n <= 0) return;
  asm volatile(
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vpxor %%xmm2, %%xmm2, %%xmm2\n\t"
      "vpxor %%xmm3, %%xmm3, %%xmm3\n\t"
      "vpxor %%xmm4, %%xmm4, %%xmm4\n\t"
      "vpxor %%xmm5, %%xmm5, %%xmm5\n\t"
      "vpxor %%xmm6, %%xmm6, %%xmm6\n\t"
      "vpxor %%xmm7, %%xmm7, %%xmm7\n\t"
      "vpxor %%xmm8, %%xmm8, %%xmm8\n\t"
      "vpxor %%xmm9, %%xmm9, %%xmm9\n\t"
      "vpxor %%xmm10, %%xmm10, %%xmm10\n\t"
      "vpxor %%xmm11, %%xmm11, %%xmm11\n\t"
      "1:\n\t"
      "vmovdqa (%[pb]), %%ymm12\n\t"
      "vmovdqa 32(%[pb]), %%ymm13\n\t"
      SPIKEC_ROW(0, ymm0, ymm1) SPIKEC_ROW(1, ymm2, ymm3) SPIKEC_ROW(2, ymm4, ymm5)
      SPIKEC_ROW(3, ymm6, ymm7) SPIKEC_ROW(4, ymm8, ymm9) SPIKEC_ROW(5, ymm10, ymm11)
      "add $24, %[pa]\n\t"
      "add $64, %[pb]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vmovdqa (%[ones]), %%ymm15\n\t"
      SPIKEC_WIDEN(ymm0, 0) SPIKEC_WIDEN(ymm1, 32) SPIKEC_WIDEN(ymm2, 64) SPIKEC_WIDEN(ymm3, 96)
      SPIKEC_WIDEN(ymm4, 128) SPIKEC_WIDEN(ymm5, 160) SPIKEC_WIDEN(ymm6, 192) SPIKEC_WIDEN(ymm7, 224)
      SPIKEC_WIDEN(ymm8, 256) SPIKEC_WIDEN(ymm9, 288) SPIKEC_WIDEN(ymm10, 320) SPIKEC_WIDEN(ymm11, 352)
      "vzeroupper\n\t"
      : [pa] "+r"(a), [pb] "+r"(b), [n] "+r"(n)
      : [acc] "r"(acc), [ones] "r"(kOnes16)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
        "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
}
// A tile whose only row is its first (a decode step's one token): the weights' bytes, not
// the arithmetic, bound it, so each product is widened at once (vpmaddubsw, vpmaddwd, vpaddd
// into int32) and a call takes any number of k-steps. Exact while one vpmaddubsw pair cannot
// saturate (a window of at least one step).
__attribute__((target("avx2"))) void TileOneRowAvx2(const int32_t* a, const int8_t* b, int64_t n, int32_t* acc) {
  if (n <= 0) return;
  asm volatile(
      "vpxor %%xmm0, %%xmm0, %%xmm0\n\t"
      "vpxor %%xmm1, %%xmm1, %%xmm1\n\t"
      "vmovdqa (%[ones]), %%ymm15\n\t"
      "1:\n\t"
      "prefetcht0 1024(%[pb])\n\t"
      "vpbroadcastd (%[pa]), %%ymm14\n\t"
      "vpmaddubsw (%[pb]), %%ymm14, %%ymm12\n\t"
      "vpmaddubsw 32(%[pb]), %%ymm14, %%ymm13\n\t"
      "vpmaddwd %%ymm15, %%ymm12, %%ymm12\n\t"
      "vpmaddwd %%ymm15, %%ymm13, %%ymm13\n\t"
      "vpaddd %%ymm12, %%ymm0, %%ymm0\n\t"
      "vpaddd %%ymm13, %%ymm1, %%ymm1\n\t"
      "add $24, %[pa]\n\t"
      "add $64, %[pb]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vpaddd (%[acc]), %%ymm0, %%ymm0\n\t"
      "vmovdqa %%ymm0, (%[acc])\n\t"
      "vpaddd 32(%[acc]), %%ymm1, %%ymm1\n\t"
      "vmovdqa %%ymm1, 32(%[acc])\n\t"
      "vzeroupper\n\t"
      : [pa] "+r"(a), [pb] "+r"(b), [n] "+r"(n)
      : [acc] "r"(acc), [ones] "r"(kOnes16)
      : "xmm0", "xmm1", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
}
#undef SPIKEC_ROW
#undef SPIKEC_WIDEN

// y for one row and 16 columns: (float32(acc - zp * colsum) * s_x) * s_w (+ bias), eight at a
// time (vcvtdq2ps rounds to nearest even as the scalar conversion; vmulps, vaddps).
__attribute__((target("avx2"))) void StoreRowAvx2(const int32_t* acc, const int32_t* col_sum, int32_t zp, float sx,
                                                  const float* s_w, const float* bias, float* y, bool stream) {
  const __m256i vzp = _mm256_set1_epi32(zp);
  const __m256 vsx = _mm256_set1_ps(sx);
  for (int v = 0; v < 2; ++v) {
    const __m256i a = _mm256_sub_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(acc + 8 * v)),
                                       _mm256_mullo_epi32(vzp, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col_sum + 8 * v))));
    __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(a), vsx);
    r = _mm256_mul_ps(r, _mm256_loadu_ps(s_w + 8 * v));
    if (bias != nullptr) r = _mm256_add_ps(r, _mm256_loadu_ps(bias + 8 * v));
    if (stream) {
      _mm256_stream_ps(y + 8 * v, r);
    } else {
      _mm256_storeu_ps(y + 8 * v, r);
    }
  }
}

#endif

void RunPanels(const GemmTask& t, int64_t p0, int64_t p1) {
  const PackedWeights& w = *t.w;
  // Row blocks of equal size: each block reads the panels' weights once more (a 256-token
  // prefill is one block)
  const int64_t blocks = (t.tiles + kBlockTiles - 1) / kBlockTiles;
  const int64_t block_tiles = (t.tiles + blocks - 1) / blocks;
  AlignedArray<int32_t> acc(static_cast<size_t>(block_tiles * kTileRows * kPanel));
  bool streamed = false;
  for (int64_t t0 = 0; t0 < t.tiles; t0 += block_tiles) {
    const int64_t t1 = std::min(t.tiles, t0 + block_tiles);
    for (int64_t p = p0; p < p1; ++p) {
      const int8_t* b = w.bytes.data + p * w.steps * 64;
      std::memset(acc.data, 0, static_cast<size_t>((t1 - t0) * kTileRows * kPanel) * sizeof(int32_t));
      int64_t window = w.Window(p, t.a_max);
#ifdef SPIKEC_X86
      const bool fast = kHasAvx2 && window > 0;
#else
      const bool fast = false;
#endif
      if (!fast) window = kChunkSteps;
      for (int64_t s0 = 0; s0 < w.steps; s0 += kChunkSteps) {
        const int64_t s1 = std::min(w.steps, s0 + kChunkSteps);
        for (int64_t tile = t0; tile < t1; ++tile) {
          const int32_t* a = t.a_packed + tile * w.steps * kTileRows;
          int32_t* acc_tile = acc.data + (tile - t0) * kTileRows * kPanel;
#ifdef SPIKEC_X86
          if (fast && t.rows - tile * kTileRows == 1) {
            TileOneRowAvx2(a + s0 * kTileRows, b + s0 * 64, s1 - s0, acc_tile);
            continue;
          }
#endif
          for (int64_t s = s0; s < s1; s += window) {
            const int64_t n = std::min(window, s1 - s);
#ifdef SPIKEC_X86
            if (fast) {
              TileAvx2(a + s * kTileRows, b + s * 64, n, acc_tile);
              continue;
            }
#endif
            TileScalar(a + s * kTileRows, b + s * 64, n, acc_tile);
          }
        }
      }
      const int64_t n0 = p * kPanel, cols = std::min(kPanel, w.N - n0);
      for (int64_t m = t0 * kTileRows; m < std::min(t.rows, t1 * kTileRows); ++m) {
        const int32_t* row = acc.data + (m - t0 * kTileRows) * kPanel;
        const float sx = t.s_x != nullptr ? t.s_x[m] : t.s_x_scalar;
        float* y = t.y + m * w.N + n0;
        const float* bias = t.bias != nullptr ? t.bias + n0 : nullptr;
#ifdef SPIKEC_X86
        if (kHasAvx2 && cols == kPanel) {
          const bool stream = t.stream && (reinterpret_cast<uintptr_t>(y) & 31) == 0;
          StoreRowAvx2(row, w.col_sum.data() + n0, t.zp, sx, t.s_w + n0, bias, y, stream);
          streamed |= stream;
          continue;
        }
#endif
        for (int64_t c = 0; c < cols; ++c) {
          // int32 arithmetic modulo 2^32, as MatMulInteger's accumulator
          const auto a = static_cast<int32_t>(static_cast<uint32_t>(row[c]) -
                                              static_cast<uint32_t>(t.zp) * static_cast<uint32_t>(w.col_sum[static_cast<size_t>(n0 + c)]));
          float v = static_cast<float>(a) * sx;
          v = v * t.s_w[n0 + c];
          y[c] = bias != nullptr ? v + bias[c] : v;
        }
      }
    }
  }
#ifdef SPIKEC_X86
  if (streamed) _mm_sfence();
#endif
}

struct SpikeMatMulIntegerToFloatKernel {
  static constexpr const char* kOp = "SpikeMatMulIntegerToFloat";

  SpikeMatMulIntegerToFloatKernel(const OrtApi& /*api*/, const OrtKernelInfo* info) {
    int is_constant = 0;
    const Ort::ConstValue w = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
    if (is_constant) packed_ = Pack(w);
  }

  static std::shared_ptr<const PackedWeights> Pack(const Ort::ConstValue& w) {
    const std::vector<int64_t> shape = w.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 2 || shape[0] < 0 || shape[1] < 0) Fail(kOp, "b must be int8 [K, N]");
    return std::make_shared<const PackedWeights>(w.GetTensorData<int8_t>(), shape[0], shape[1]);
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const auto a_in = ctx.GetInput(0);
    const auto zp_in = ctx.GetInput(2);
    const auto sx_in = ctx.GetInput(3);
    const auto sw_in = ctx.GetInput(4);
    const Ort::ConstValue bias_in = ctx.GetInputCount() > 5 ? ctx.GetInput(5) : Ort::ConstValue{nullptr};
    const std::shared_ptr<const PackedWeights> w = packed_ ? packed_ : Pack(ctx.GetInput(1));
    const std::vector<int64_t> shape = a_in.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != w->K) {
      Fail(kOp, "a must be uint8 [..., K] with K = " + std::to_string(w->K) + " (b's rows)");
    }
    const int64_t rows = Elements(std::vector<int64_t>(shape.begin(), shape.end() - 1));
    if (zp_in.GetTensorTypeAndShapeInfo().GetElementCount() != 1) Fail(kOp, "a_zp must be a scalar");
    const size_t n_sx = sx_in.GetTensorTypeAndShapeInfo().GetElementCount();
    if (n_sx != 1 && n_sx != static_cast<size_t>(rows)) {
      Fail(kOp, "s_x must have one element per row of a (" + std::to_string(rows) + ") or one");
    }
    if (sw_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(w->N)) {
      Fail(kOp, "s_w must have N = " + std::to_string(w->N) + " elements");
    }
    const float* bias = nullptr;
    if (bias_in != nullptr) {
      if (bias_in.GetTensorTypeAndShapeInfo().GetElementCount() != static_cast<size_t>(w->N)) {
        Fail(kOp, "bias must have N = " + std::to_string(w->N) + " elements");
      }
      bias = bias_in.GetTensorData<float>();
    }
    std::vector<int64_t> y_shape = shape;
    y_shape.back() = w->N;
    auto y = ctx.GetOutput(0, y_shape);
    if (rows == 0 || w->N == 0) return;

    const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
    AlignedArray<int32_t> a_packed(static_cast<size_t>(tiles * std::max<int64_t>(1, w->steps) * kTileRows));
    std::vector<int32_t> tile_max(static_cast<size_t>(tiles), 0);
    PackRowsTask pack{a_in.GetTensorData<uint8_t>(), rows, w->K, w->steps, a_packed.data, tile_max.data()};
    SplitOverThreads<PackRowsTask, PackRowTiles>(ctx, pack, tiles, kTileRows * w->K);
    const float* sx = sx_in.GetTensorData<float>();
    GemmTask task{w.get(), a_packed.data, rows, tiles, *std::max_element(tile_max.begin(), tile_max.end()),
                  *zp_in.GetTensorData<uint8_t>(), n_sx == 1 ? nullptr : sx, sx[0], sw_in.GetTensorData<float>(),
                  bias, y.GetTensorMutableData<float>(), rows * w->N * 4 > kStreamBytes};
    // a panel's work: its weights (steps x 64 bytes) against every row
    SplitOverThreads<GemmTask, RunPanels>(ctx, task, w->panels, w->steps * 64 * std::max<int64_t>(1, rows / 8));
  }

 private:
  std::shared_ptr<const PackedWeights> packed_;
};

struct SpikeMatMulIntegerToFloatOp : Ort::CustomOpBase<SpikeMatMulIntegerToFloatOp, SpikeMatMulIntegerToFloatKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const {
    return new SpikeMatMulIntegerToFloatKernel(api, info);
  }
  const char* GetName() const { return "SpikeMatMulIntegerToFloat"; }
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case 0:
      case 2:
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      case 1:
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      default:
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    }
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 5 ? OrtCustomOpInputOutputCharacteristic::INPUT_OUTPUT_OPTIONAL
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
  static SpikeMatMulIntegerToFloatOp matmul;
  static SpikeEncodeU8Op encode_u8;
  static std::mutex lock;
  static std::vector<Ort::CustomOpDomain> domains;  // alive as long as the sessions that use them
  try {
    std::lock_guard<std::mutex> guard(lock);
    Ort::CustomOpDomain domain{"spikec.ortops"};
    domain.Add(&encode_matmul);
    domain.Add(&matmul);
    domain.Add(&encode_u8);
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
