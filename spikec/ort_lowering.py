"""Spiking ops on stock onnxruntime: lower the `spikec` domain to model-local functions.

Every spikec node becomes a call to a function in the domain `spikec.ort` whose body
uses only standard ONNX ops; onnxruntime inlines model-local functions when it
builds a session, so users need no native library. (PyOp custom ops from
onnxruntime-extensions would also work, but cross into Python on every call.) With
`ortops=True` three steps of the fused mode take spikec's own C++ custom ops instead
(domain `spikec.ortops`, runtime/ortops/; the runtime asks for them where their library
loads): the same bits in fewer passes and nodes (ORTOPS_* below).
Per-node constants -- T, scales and code widths per modality, the rate-IF offset
fold -- become small initializers passed as function inputs, so one function body
serves every node of a variant and the graph stays readable in Netron.

Two modes, bit-identical to each other and to `spikec.reference`:

- fused (default): a spiking product is computed as integer products. onnxruntime's
  MatMulInteger takes uint8 activations with a zero point and int8 weights, so a
  TC-LIF code |q| <= 2**b - 1 is one integer product of q + a_zp as uint8 with zero
  point a_zp = 2**T_max - 1 (code_offset). Wider codes (T up to 16) are split into b-bit
  digit groups, q = sum_j 2^(b j) d_j, and accumulated Horner-style in int32 -- the same
  bit-serial identity as the spike planes, b planes at a time. b (digit_bits) is 7, or 6
  where the weights reach |w| > 64: on x86 CPUs without VNNI (AVX2, e.g. AMD EPYC before
  Zen 4) MLAS multiplies uint8 by int8 with vpmaddubsw, which sums two products into int16
  with saturation, so every product here keeps 2 * max(a) * max|w| <= 32767 (U8S8_LIMIT;
  uint8 codes up to 2 (2**b - 1)). Three speed-ups keep every bit:
  * one-token products (decode) with 4-bit weight codes run on com.microsoft MatMulNBits
    over the integer codes (_nbits_matmul_fn): weights stored as u = w + 8 (zero point 8,
    block scales 1.0) and one sentinel activation 127 per 128-block, so the int8
    activation quantization of accuracy_level 4 has scale exactly 1.0 and keeps the codes;
    every block and partial sum is then an integer below 2**24 (nbits_exact), exact in
    float32. It reads half of MatMulInteger's bytes: a .sbin's packed 4-bit sections
    (spikec/int4.py), in place. An If on the token count picks it; products sharing a code
    (Q/K/V, gate/up) are one call. With in_place (a model too large for copies of its
    weights) packed products run on it for every token count, and no int8 form is made.
  * a code of one digit group is one com.microsoft MatMulIntegerToFloat with both scales 1.0
    (_scaled_product): its epilogue gives float32(acc) exactly while the tile is in cache,
    then `* s_x` and `* s_w` in the reference's order. Where every use of an encoder's
    codes is such a product, the encoder writes them as uint8 q + a_zp with one
    QuantizeLinear per token (_encode_u8_fn), a third of the int32 encoder's passes over x.
  * wider codes and rate IF: float32(acc) * s_x is one DequantizeLinear per row of the
    product (_scale_rows) in place of a Cast and a Mul: the same rounding, one pass fewer.
- exact: the spike planes themselves. For TC-LIF, plane t of a code is
  sign(q) * bit_(T_max-1-t)(|q|) (zero planes at the top for tokens with fewer steps),
  accumulated as acc <- 2 acc + S_t @ W; for rate IF, plane t is [c > t] of the offset
  code c. Each spiking op also outputs its spike count per modality, which the
  runtime turns into spike rates and synaptic operations.

A third mode, fakequant, is the ANN baseline the spiking model is compared with: the
same codes and scales, but the product is a float32 MatMul of the codes (what
"fake quantization" means in ANN quantization). It equals the integer product only
while every partial sum is an integer below 2**24, which the lowering checks per node
(K * (2**T - 1) * Qw < 2**24); it exists to test the other two against an independent
formulation and for the accuracy table, not for speed.

Numerics follow SEMANTICS.md and the reference's float32 order:
q = clip(round_half_even(x / s), -Q, Q) with one float32 division; the scale is the
per-modality static value (precomputed in float32 exactly as the reference does) or
the dynamic per-token max|x| / Q; y = (float32(acc) * s_x) * s_w (+ bias).

Group-wise weight scales (s_w [n_groups, M], tc-lif only; spikec.reference.dequantize_acc):
the weight is viewed as [n_groups, G, M] (a second initializer over the same bytes, no
copy; grouped_weight) and the codes as [n_groups, P, G], so each mode's integer product
(MatMulInteger per digit group or spike plane, or fakequant's float32 MatMul, exact per
group below 2**24) is one batched call giving every group's own accumulator; then
t_g = (float32(acc_g) * s_x) * s_w[g] and y = t_0 (+ bias), y = y + t_g in ascending g, one
Add each (_group_tail; never ReduceSum). MatMulNBits sums all of K into one accumulator,
so group-wise products never take it. One group, s_w [1, M], lowers exactly as [M].

Non-finite activations (docs/passes.md): a token whose input row holds NaN or +-inf is
encoded as code 0 with scale NaN, so its output row is NaN, in every mode, exactly as
spikec.reference.encode_tokens; the encoders detect such rows with IsNaN(ReduceSum(x * 0))
(exact: 0 * x is NaN only for NaN and +-inf, and a sum meeting a NaN is NaN), never with
ReduceMax or Max, which do not propagate NaN in onnxruntime. The one-token graph's encoder,
whose codes only products multiplied by its scale read, makes only the scale NaN
(_encoder_nodes, scaled_only): the output row is the same NaN row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from spikec import int4
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError

log = logging.getLogger(__name__)

DOMAIN = "spikec.ort"
VERSION = 1
STATS_PREFIX = "spikec.spikes/"
DIGIT_BITS = 7  # the widest digit: |d| <= 127, so d + offset fits uint8
U8S8_LIMIT = 2**15 - 1  # int16: where vpmaddubsw saturates the sum of two uint8 x int8 products


def digit_bits(w_max: int) -> int:
    """The widest signed digit b (|d| <= 2**b - 1, offset to uint8 d + 2**b - 1 <= 2 (2**b - 1))
    whose products by int8 weights |w| <= w_max are exact on every MLAS kernel: 7 while
    w_max <= 64, else 6 (4 * 63 * 128 = 32256 <= U8S8_LIMIT for any int8 weight).

    Why: on x86 CPUs without VNNI (AVX2 only), MLAS' uint8 x int8 GEMM (MatMulInteger,
    MatMulIntegerToFloat) multiplies with vpmaddubsw, which adds two adjacent products into
    int16 with saturation; onnxruntime's quantization docs name it ("reduce_range" on such
    CPUs). Measured with onnxruntime 1.32.0 on an AMD EPYC with AVX2: 255 x 127 twice gives
    32767, not 64770. A uint8 activation a <= a_max is safe iff 2 a_max w_max <= U8S8_LIMIT.
    VNNI (vpdpbusd), AMX and ARM accumulate in int32 and need none of this; the lowering does
    not ask which CPU it runs on, so a .sbin gives the same graph and the same bits on every
    machine."""
    return DIGIT_BITS if 4 * (2**DIGIT_BITS - 1) * w_max <= U8S8_LIMIT else DIGIT_BITS - 1


def code_offset(t_max: int) -> int:
    """The offset that makes TC-LIF codes |q| <= 2**t_max - 1 (t_max <= 7) uint8 activations of
    MatMulInteger(ToFloat): 2**t_max - 1, the least that makes them non-negative, rather than
    128: codes up to 2 (2**t_max - 1), so that the products stay below int16 saturation on
    CPUs without VNNI (digit_bits; t_max <= 6 is safe for any int8 weight,
    2 * 126 * 128 = 32256)."""
    if not 1 <= t_max <= DIGIT_BITS:
        raise ValueError(f"code_offset: t_max {t_max} outside 1..{DIGIT_BITS}")
    return 2**t_max - 1
MODES = ("fused", "exact", "fakequant")


# ---------------------------------------------------------------- function bodies


def _fn(name: str, inputs: list[str], outputs: list[str], nodes: list[onnx.NodeProto], opset: int) -> onnx.FunctionProto:
    return helper.make_function(
        DOMAIN, name, inputs, outputs, nodes, opset_imports=[helper.make_opsetid("", opset)]
    )


def _c(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _nonfinite_nodes(src: str, axes: list[int] | None, extra_bad: str | None = None,
                     test: bool = True) -> list[onnx.NodeProto]:
    """Nodes computing `bad` (bool, keepdims over `axes`; all axes when None): True where the
    reduced slice of `src` holds NaN or +-inf (or where `extra_bad` is True). Without `test`,
    only `nf_sum` (float32): NaN there, +-0 elsewhere.

    0 * x is +-0 for a finite x and NaN for NaN and +-inf, and a sum that meets a NaN is NaN
    in every order, so IsNaN(ReduceSum(x * 0)) is exact. (ReduceMax and Max do not
    propagate NaN in onnxruntime, so the max|x| of the dynamic scale cannot tell.)"""
    n = [
        _c("nf_zero", 0.0),
        helper.make_node("Mul", [src, "nf_zero"], ["nf_z"]),
    ]
    if axes is None:
        n.append(helper.make_node("ReduceSum", ["nf_z"], ["nf_sum"], keepdims=0))
    else:
        n += [_c("nf_axes", axes, np.int64), helper.make_node("ReduceSum", ["nf_z", "nf_axes"], ["nf_sum"], keepdims=1)]
    if not test:
        return n
    n.append(helper.make_node("IsNaN", ["nf_sum"], ["bad0" if extra_bad else "bad"]))
    if extra_bad:
        n += [helper.make_node("IsNaN", [extra_bad], ["bad1"]), helper.make_node("Or", ["bad0", "bad1"], ["bad"])]
    return n


def _encode_fn(name: str, dynamic: bool, opset: int, u8: bool = False, K: int | None = None,
               offset: bool = False) -> onnx.FunctionProto:
    """(x, s_tok, q_tok) -> (q int32, s float32 [..., N, 1]); with u8 (x, s_tok, q_tok, a_zp) ->
    (uint8 q + a_zp, s): _encode_u8_fn; with offset (x, s_tok, q_tok, lo_tok, hi_tok) -> (q, s):
    codes clamped to [lo_tok, hi_tok] instead of +-q_tok (an imported zero point z:
    [-z, 2**(T+1) - 1 - z], spikec.ops.offset_code).

    s_tok / q_tok are the per-token static scale and largest code (float32, [..., N, 1]);
    for dynamic scales s_tok is unused and the scale is max|x| / Q per token.
    Non-finite rule (spikec.reference.encode_tokens): a token whose row of x holds NaN or
    +-inf (or, static, whose scale is NaN) gets code 0 on its whole row and scale NaN.
    u8 (codes |q| <= 127 feeding MatMulIntegerToFloat): see _encode_u8_fn."""
    if u8:
        return _encode_u8_fn(name, dynamic, opset, K)
    n = _encoder_nodes(dynamic, [-1], ("lo_tok", "hi_tok") if offset else None, "r2")
    n.append(helper.make_node("Cast", ["r2"], ["q"], to=TensorProto.INT32))
    return _fn(name, ["x", "s_tok", "q_tok"] + (["lo_tok", "hi_tok"] if offset else []), ["q", "s"], n, opset)


def _encoder_nodes(dynamic: bool, axes: list[int] | None, clamp: tuple[str, str] | None,
                   codes: str, scaled_only: bool = False) -> list[onnx.NodeProto]:
    """spikec.reference.encode_tokens as nodes over x (float32), q_tok (the largest code per
    token) and, static, s_tok: the scale `s` (max|x| / q_tok, 1.0 where that is 0, or s_tok;
    NaN for a bad token) and float32 codes `codes` = clip(round(x / s), -q_tok, q_tok), or
    clipped to `clamp` = (lo, hi) (an imported zero point's range), 0 on a bad token's row.
    axes: the token's features ([-1], keepdims); None reduces every axis to scalars (one token:
    then q_tok, s_tok and the `clamp` bounds are rank-0 scalars too, and the clamp is one Clip).

    scaled_only: for codes whose every use is a product multiplied by `s` (_one_token_nbits_fn),
    a bad token's codes are left as they come, in 3 nodes fewer (5 static). Its output row
    is NaN all the same, as the reference's (code 0, scale NaN): float32(acc) * NaN is NaN
    whatever acc is (MatMulNBits turns NaN or inf codes into some int8, no fault). So no
    Where picks code 0 and a divisor of 1.0: s = s1 + sum(x * 0), that sum NaN for exactly
    a bad token (_nonfinite_nodes; with a static scale, s_tok NaN makes s NaN too) and +-0
    otherwise, and s1 + (+-0) = s1 for every s1 >= 0 (IEEE 754: x + (+-0) = x for x != 0,
    +0 + (+-0) = +0)."""
    n = _nonfinite_nodes("x", axes, None if dynamic or scaled_only else "s_tok", test=not scaled_only)
    n += [_c("zero", 0.0), _c("one", 1.0), _c("nan", np.nan)]
    if dynamic:
        n.append(helper.make_node("Abs", ["x"], ["ax"]))
        if axes is None:
            n.append(helper.make_node("ReduceMax", ["ax"], ["amax"], keepdims=0))
        else:
            n += [_c("axes", axes, np.int64), helper.make_node("ReduceMax", ["ax", "axes"], ["amax"], keepdims=1)]
        n += [
            helper.make_node("Div", ["amax", "q_tok"], ["s0"]),
            helper.make_node("Greater", ["s0", "zero"], ["pos"]),
            helper.make_node("Where", ["pos", "s0", "one"], ["s1"]),
        ]
    else:
        n += [helper.make_node("Identity", ["s_tok"], ["s1"])]
    if scaled_only:
        n += [helper.make_node("Add", ["s1", "nf_sum"], ["s"]),  # NaN for a bad token, else s1
              helper.make_node("Div", ["x", "s1"], ["xs"])]
    else:
        n += [
            helper.make_node("Where", ["bad", "one", "s1"], ["sd"]),  # the divisor: 1.0 for a bad token
            helper.make_node("Where", ["bad", "nan", "s1"], ["s"]),
            helper.make_node("Where", ["bad", "zero", "x"], ["xc"]),  # its row codes as 0
            helper.make_node("Div", ["xc", "sd"], ["xs"]),
        ]
    n.append(helper.make_node("Round", ["xs"], ["r"]))  # half to even, as QuantizeLinear
    if clamp and axes is None:  # scalar bounds (onnxruntime's Clip takes no other)
        n.append(helper.make_node("Clip", ["r", clamp[0], clamp[1]], [codes]))
    elif clamp:
        n += [helper.make_node("Max", ["r", clamp[0]], ["r1"]), helper.make_node("Min", ["r1", clamp[1]], [codes])]
    else:
        n += [helper.make_node("Neg", ["q_tok"], ["nq"]),
              helper.make_node("Max", ["r", "nq"], ["r1"]),
              helper.make_node("Min", ["r1", "q_tok"], [codes])]
    return n


def _encode_u8_fn(name: str, dynamic: bool, opset: int, K: int | None = None) -> onnx.FunctionProto:
    """(x, s_tok, q_tok, a_zp) -> (q + a_zp as uint8, s float32 [..., N, 1]): _encode_fn's codes,
    offset by a_zp (uint8 scalar, code_offset) for MatMulIntegerToFloat's uint8 activations,
    in a third of _encode_fn's passes over x.

    The codes are one QuantizeLinear per token (scale s, zero point a_zp: saturate(rint(x / s)
    + a_zp) with one float32 division and round half to even, as the reference; tests check
    ties), then the reference's clamp to +-q_tok on the uint8 codes, to 0 (a_zp) on
    non-finite rows. K (x's last axis, when known and opset >= 21) makes it one
    block-quantized QuantizeLinear (block_size K, scale [..., N, 1] as it is); without K,
    x is flattened to [P, K] for a per-axis one (4 nodes more). The scale writes one tensor
    of x's size, |x|, and reduces it twice: a row holds a NaN iff sum |x| is NaN (a sum of
    non-negative terms has no inf - inf: it overflows to inf, never to NaN) and a +-inf
    without a NaN iff max|x| is inf (ReduceMax may drop a NaN in onnxruntime, which only
    such a row, caught already, has). ReduceSum is about 5x faster than ReduceSumSquare or
    ReduceL1 here (0.11 against 0.6 ms for 256 x 8960 on 2 threads)."""
    n = [
        _c("axes", [-1], np.int64),
        helper.make_node("Abs", ["x"], ["ax"]),
        helper.make_node("ReduceMax", ["ax", "axes"], ["amax"], keepdims=1),
        helper.make_node("ReduceSum", ["ax", "axes"], ["asum"], keepdims=1),
        helper.make_node("IsNaN", ["asum"], ["has_nan"]),
        helper.make_node("IsInf", ["amax"], ["has_inf"]),
        helper.make_node("Or", ["has_nan", "has_inf"], ["bad_x" if not dynamic else "bad"]),
        _c("zero", 0.0), _c("one", 1.0), _c("nan", np.nan),
    ]
    if dynamic:
        n += [
            helper.make_node("Div", ["amax", "q_tok"], ["s0"]),
            helper.make_node("Greater", ["s0", "zero"], ["pos"]),
            helper.make_node("Where", ["pos", "s0", "one"], ["s1"]),
        ]
    else:
        n += [
            helper.make_node("IsNaN", ["s_tok"], ["bad_s"]),
            helper.make_node("Or", ["bad_x", "bad_s"], ["bad"]),
            helper.make_node("Identity", ["s_tok"], ["s1"]),
        ]
    n += [
        helper.make_node("Where", ["bad", "one", "s1"], ["sd"]),  # the divisor: 1.0 for a bad token
        helper.make_node("Where", ["bad", "nan", "s1"], ["s"]),
        _c("one_i", [1], np.int64),
        helper.make_node("Reshape", ["a_zp", "one_i"], ["zp1"]),
    ]
    if K is not None:  # one block of K per token: the scale [..., N, 1] as it is
        n += [helper.make_node("Shape", ["sd"], ["sd_shape"]),
              helper.make_node("Expand", ["zp1", "sd_shape"], ["zp"]),
              helper.make_node("QuantizeLinear", ["x", "sd", "zp"], ["u"], axis=-1, block_size=K)]
    else:  # per axis over x as [P, K]
        n += [helper.make_node("Shape", ["x"], ["x_shape"]),
              helper.make_node("Flatten", ["x"], ["x2d"], axis=-1),
              _c("m1", [-1], np.int64),
              helper.make_node("Reshape", ["sd", "m1"], ["sd1"]),
              helper.make_node("Shape", ["sd1"], ["rows"]),
              helper.make_node("Expand", ["zp1", "rows"], ["zp"]),
              helper.make_node("QuantizeLinear", ["x2d", "sd1", "zp"], ["u2d"], axis=0),
              helper.make_node("Reshape", ["u2d", "x_shape"], ["u"], allowzero=1)]  # no tokens: [.., 0, K]
    n += [
        # the reference's clamp to +-q_tok (q_tok <= a_zp) on the offset codes; a non-finite
        # row is clamped to [a_zp, a_zp], code 0, whatever QuantizeLinear made of it
        helper.make_node("Cast", ["a_zp"], ["zpf"], to=TensorProto.FLOAT),
        helper.make_node("Where", ["bad", "zero", "q_tok"], ["q_lim"]),
        helper.make_node("Sub", ["zpf", "q_lim"], ["lo_f"]),
        helper.make_node("Add", ["zpf", "q_lim"], ["hi_f"]),
        helper.make_node("Cast", ["lo_f"], ["lo"], to=TensorProto.UINT8),
        helper.make_node("Cast", ["hi_f"], ["hi"], to=TensorProto.UINT8),
        helper.make_node("Max", ["u", "lo"], ["u_lo"]),
        helper.make_node("Min", ["u_lo", "hi"], ["q"]),
    ]
    return _fn(name, ["x", "s_tok", "q_tok", "a_zp"], ["q", "s"], n, opset)


def _code_fn(name: str, opset: int) -> onnx.FunctionProto:
    """(b, q_max) -> (q_b int32, s_b float32 []): per-tensor dynamic code of an attention operand.
    A NaN or +-inf anywhere in b: q_b = 0 everywhere and s_b = NaN (spikec.reference.encode_tensor)."""
    n = _nonfinite_nodes("b", None) + [
        helper.make_node("Abs", ["b"], ["ab"]),
        helper.make_node("ReduceMax", ["ab"], ["amax"], keepdims=0),
        helper.make_node("Div", ["amax", "q_max"], ["s0"]),
        _c("zero", 0.0),
        _c("one", 1.0),
        _c("nan", np.nan),
        helper.make_node("Greater", ["s0", "zero"], ["pos"]),
        helper.make_node("Where", ["pos", "s0", "one"], ["s1"]),
        helper.make_node("Where", ["bad", "one", "s1"], ["sd"]),
        helper.make_node("Where", ["bad", "nan", "s1"], ["s"]),
        helper.make_node("Where", ["bad", "zero", "b"], ["bc"]),
        helper.make_node("Div", ["bc", "sd"], ["bs"]),
        helper.make_node("Round", ["bs"], ["r"]),
        helper.make_node("Neg", ["q_max"], ["nq"]),
        helper.make_node("Max", ["r", "nq"], ["r1"]),
        helper.make_node("Min", ["r1", "q_max"], ["r2"]),
        helper.make_node("Cast", ["r2"], ["q"], to=TensorProto.INT32),
    ]
    return _fn(name, ["b", "q_max"], ["q", "s"], n, opset)


def _offset_codes(n: list, a: str, offset: int | str, tag: str, u8: bool = False) -> tuple[str, str]:
    """(the uint8 activations a + offset, their zero point) for int32 codes a with
    0 <= a + offset <= 255; offset an int, or the name of a uint8 scalar (a function input,
    "a_zp"); u8: a already holds them (an encoder's uint8 codes, _encode_u8_fn)."""
    if isinstance(offset, str):
        zp = offset
    else:
        zp = f"{tag}_zp"
        n.append(_c(zp, offset, np.uint8))
    if u8:
        return a, zp
    n += [
        helper.make_node("Cast", [zp], [f"{tag}_off"], to=TensorProto.INT32),
        helper.make_node("Add", [a, f"{tag}_off"], [f"{tag}_u32"]),
        helper.make_node("Cast", [f"{tag}_u32"], [f"{tag}_u8"], to=TensorProto.UINT8),
    ]
    return f"{tag}_u8", zp


def _mmi(n: list, a: str, w8: str, out: str, offset: int | str, tag: str, groups: tuple[int, int] | None = None,
         u8: bool = False) -> None:
    """out = int32 (a @ w) for int32 codes a with 0 <= a + offset <= 255, via MatMulInteger
    (u8: a is already the uint8 a + offset; _offset_codes).

    groups = (n_groups, G): w8 is the weight viewed as [n_groups, G, M] and out the int32
    accumulators of the groups, [n_groups, P, M] over the P = prod(lead) tokens of a
    (_group_rows)."""
    src, zp = _offset_codes(n, a, offset, tag, u8)
    if groups:
        src = _group_rows(n, src, groups, tag)
    n.append(helper.make_node("MatMulInteger", [src, w8, zp], [out]))


def _scaled_product(n: list, a: str, w8: str, s_w: str, out: str, tag: str, u8: bool = False,
                    offset: int | str = "a_zp", ortops_bias: str | None | bool = False) -> None:
    """out = (float32(q @ w) * s_x) * s_w for TC-LIF codes |q| <= 127 (int32 q, or with u8 the
    uint8 q + offset), s_x [..., N, 1] the function input "s_x", w8 int8 [K, M], s_w [M];
    offset (default: the function input "a_zp") as in _offset_codes (see CODE_OFFSET).

    One com.microsoft MatMulIntegerToFloat with both scales 1.0 gives float32(acc) from its
    epilogue, while the tile is in cache: MLAS converts the int32 sum and multiplies by
    a_scale * b_scale = 1.0, which is exact (the zero point is subtracted in int32), so the
    product is the same as MatMulInteger's and one pass over it fewer than a
    MatMulInteger followed by a DequantizeLinear. Then the reference's two roundings.

    ortops_bias (not False): the whole product, its two roundings and the bias (its name, or
    None for none) as one spikec.ortops.SpikeMatMulIntegerToFloat node (runtime/ortops/: the
    session must register the library; w8 must be a constant [K, M] and s_x have one element
    per row): no pass over the product after it, and an integer GEMM that accumulates the
    low-bit codes in int16; `out` then includes the bias."""
    src, zp = _offset_codes(n, a, offset, tag, u8)
    if ortops_bias is not False:
        n.append(helper.make_node(ORTOPS_MATMUL, [src, w8, zp, "s_x", s_w] + ([ortops_bias] if ortops_bias else []),
                                  [out], domain=ORTOPS_DOMAIN))
        return
    n += [
        _c(f"{tag}_one", 1.0),
        helper.make_node("MatMulIntegerToFloat", [src, w8, f"{tag}_one", f"{tag}_one", zp], [f"{tag}_accf"],
                         domain="com.microsoft"),
    ]
    n += [
        helper.make_node("Mul", [f"{tag}_accf", "s_x"], [f"{tag}_y0"]),  # float32(acc) * s_x
        helper.make_node("Mul", [f"{tag}_y0", s_w], [out]),  # ... * s_w
    ]


def _group_rows(n: list, a: str, groups: tuple[int, int], tag: str) -> str:
    """a [..., N, K] -> [n_groups, P, G] (P tokens): group g's columns g*G .. (g+1)*G - 1 as
    batch g, to multiply by the weight viewed as [n_groups, G, M] (one batched product, one
    int32 accumulator per group)."""
    n_groups, G = groups
    n += [
        _c(f"{tag}_gshape", [-1, n_groups, G], np.int64),
        helper.make_node("Reshape", [a, f"{tag}_gshape"], [f"{tag}_g3"]),
        helper.make_node("Transpose", [f"{tag}_g3"], [f"{tag}_gt"], perm=[1, 0, 2]),
    ]
    return f"{tag}_gt"


def _group_tail(n: list, acc: str, n_groups: int, with_bias: bool, is_float: bool = False) -> None:
    """y [..., N, M] from the groups' accumulators acc [n_groups, P, M] (int32; float32 holding
    exact integers when is_float), in spikec.reference.dequantize_acc's order:
    t_g = (float32(acc_g) * s_x) * s_w[g] (s_x [..., N, 1] or scalar, s_w [n_groups, M]),
    y = t_0 (+ bias), then y = y + t_g for g = 1 .. n_groups - 1, one Add each in ascending
    g (never ReduceSum, whose order onnxruntime does not fix)."""
    n += [
        helper.make_node("Shape", ["q"], ["gq_shape"]),
        _c("g_zero1", [0], np.int64),
        _c("g_m1", [-1], np.int64),
        helper.make_node("Slice", ["gq_shape", "g_zero1", "g_m1"], ["g_lead"]),  # [..., N]
        _c("g_one1", [1], np.int64),
        _c("g_end", [2**62], np.int64),
        helper.make_node("Concat", ["g_lead", "g_one1"], ["g_sx_shape"], axis=0),
        helper.make_node("Expand", ["s_x", "g_sx_shape"], ["g_sx_e"]),  # s_x per token [..., N, 1]
        _c("g_col", [-1, 1], np.int64),
        helper.make_node("Reshape", ["g_sx_e", "g_col"], ["g_sx"]),  # [P, 1]
    ]
    if not is_float:
        n.append(helper.make_node("Cast", [acc], [f"{acc}_f"], to=TensorProto.FLOAT))
        acc = f"{acc}_f"
    n += [
        helper.make_node("Mul", [acc, "g_sx"], ["g_t0"]),  # float32(acc_g) * s_x
        helper.make_node("Unsqueeze", ["s_w", "g_one1"], ["g_sw"]),  # [n_groups, 1, M]
        helper.make_node("Mul", ["g_t0", "g_sw"], ["g_t"]),  # ... * s_w[g]
    ]
    parts = [f"g_t_{g}" for g in range(n_groups)]
    if n_groups > 1:
        n.append(helper.make_node("Split", ["g_t"], parts, axis=0, num_outputs=n_groups))
    else:
        n.append(helper.make_node("Identity", ["g_t"], parts))
    y = parts[0]
    if with_bias:
        n.append(helper.make_node("Add", [y, "bias"], ["g_y_0"]))
        y = "g_y_0"
    for g in range(1, n_groups):
        n.append(helper.make_node("Add", [y, parts[g]], [f"g_y_{g}"]))
        y = f"g_y_{g}"
    # [..., N, M], M from s_w [n_groups, M]: with no tokens, lead holds a 0 that must stay
    # (allowzero), and allowzero takes no -1 beside it
    n += [helper.make_node("Shape", ["s_w"], ["g_sw_shape"]),
          helper.make_node("Slice", ["g_sw_shape", "g_m1", "g_end"], ["g_m"]),
          helper.make_node("Concat", ["g_lead", "g_m"], ["g_y_shape"], axis=0),
          helper.make_node("Reshape", [y, "g_y_shape"], ["y"], allowzero=1)]


def _matmul_fn(name: str, neuron: str, mode: str, planes: int, opset: int, with_bias: bool,
               dql: bool = False, groups: tuple[int, int] | None = None, u8: bool = False,
               bits: int = DIGIT_BITS, ortops: bool = False) -> onnx.FunctionProto:
    """(q, s_x, w, s_w, [bias], off_tok, accb_tok, onehot) -> (y, [spikes]).

    tc-lif fused: `planes` is the number of `bits`-bit digit groups (digit_bits); exact: the number of
    spike planes T_max. rate IF: off_tok is the per-token offset 2**(b_i-1) and accb_tok
    the folded int32 offset per token; fused splits c into digit groups, exact
    sums `planes` = 2**b_max - 1 binary planes.

    groups = (n_groups, G) (tc-lif, group-wise s_w [n_groups, M]): w is the weight viewed as
    [n_groups, G, M]; every integer product is one batched MatMulInteger giving the groups'
    own int32 accumulators [n_groups, P, M] (the same digit / plane steps, exact in int32),
    then _group_tail's float32 order.

    Fused TC-LIF with one digit group takes one more input, a_zp (uint8 scalar): the offset of
    its uint8 codes (code_offset); u8: q already holds them (an encoder's, _encode_u8_fn);
    ortops: the product with its scales and bias is one spikec.ortops.SpikeMatMulIntegerToFloat
    node (_scaled_product)."""
    n: list[onnx.NodeProto] = [helper.make_node("Cast", ["w"], ["w8"], to=TensorProto.INT8)]
    inputs = ["q", "s_x", "w", "s_w"] + (["bias"] if with_bias else []) + ["off_tok", "accb_tok", "onehot"]
    if mode == "fused" and planes == 1 and neuron != "if":
        inputs.append("a_zp")
    outputs = ["y"]
    if mode == "fused" and planes == 1 and neuron != "if" and not groups:
        # one MatMulIntegerToFloat and the two scales (_scaled_product)
        if ortops:
            _scaled_product(n, "q", "w8", "s_w", "y", "g0", u8, ortops_bias="bias" if with_bias else None)
        else:
            _scaled_product(n, "q", "w8", "s_w", "y1" if with_bias else "y", "g0", u8)
            if with_bias:
                n.append(helper.make_node("Add", ["y1", "bias"], ["y"]))
        fp = _fn(name, inputs, outputs, n, opset)
        fp.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        if ortops:
            fp.opset_import.append(helper.make_opsetid(ORTOPS_DOMAIN, ORTOPS_VERSION))
        return fp
    _code_magnitude(n, neuron, mode, planes)
    if mode == "fused" and planes == 1:
        # |code| fits one 7-bit group: one MatMulInteger (rate IF, or group-wise: one batched
        # call), no digit split
        if neuron == "if":
            _mmi(n, "code", "w8", "acc0", 0, "g0", groups)
        else:
            _mmi(n, "q", "w8", "acc0", "a_zp", "g0", groups, u8)
        n.append(helper.make_node("Identity", ["acc0"], ["acc_s"]))
    elif mode == "fused":
        _digit_products(n, neuron, planes, groups, bits)
    else:
        outputs.append("spikes")
        _spike_plane_products(n, neuron, planes, groups)
        _spikes_per_modality(n, f"tot{planes - 1}")
    if neuron == "if":
        n.append(helper.make_node("Add", ["acc_s", "accb_tok"], ["acc"]))
    else:
        n.append(helper.make_node("Identity", ["acc_s"], ["acc"]))
    if groups:  # group-wise s_w [n_groups, M]: acc is [n_groups, P, M], one accumulator per group
        _group_tail(n, "acc", groups[0], with_bias)
        return _fn(name, inputs, outputs, n, opset)
    _scale_rows(n, "acc", "y0", dql)
    n.append(helper.make_node("Mul", ["y0", "s_w"], ["y1" if with_bias else "y"]))
    if with_bias:
        n.append(helper.make_node("Add", ["y1", "bias"], ["y"]))
    return _fn(name, inputs, outputs, n, opset)


def _code_magnitude(n: list, neuron: str, mode: str, planes: int) -> None:
    """What the products split into digits or planes: rate IF's offset code c = q + 2**(b-1) >= 0
    (`code`, and `mag` = c); TC-LIF's |q| (`mag`) and sign(q) (`sgn`), unless one fused
    MatMulInteger takes q itself."""
    if neuron == "if":
        n.append(helper.make_node("Add", ["q", "off_tok"], ["code"]))  # c = q + 2**(b-1) >= 0
        n.append(helper.make_node("Identity", ["code"], ["mag"]))
    elif mode == "exact" or planes > 1:
        n.append(helper.make_node("Abs", ["q"], ["mag"]))
        n.append(helper.make_node("Sign", ["q"], ["sgn"]))


def _digit_products(n: list, neuron: str, planes: int, groups: tuple[int, int] | None,
                    bits: int = DIGIT_BITS) -> None:
    """fused, codes wider than one digit: acc_s = sum_j B^j (d_j @ W), B = 2**bits, over the
    `planes` digit groups d_j of `mag` (signed by `sgn` for TC-LIF, offset by B - 1 to uint8,
    so at most 2 (B - 1): digit_bits), Horner-style, most significant first:
    acc <- B acc + d_j @ W (int32, exact). Rate IF's digits are >= 0 (offset 0, at most 127)."""
    base = 2**bits
    for j in reversed(range(planes)):
        n += [_c(f"m{j}", base, np.int32)]
        src = "mag"
        if j > 0:  # the lowest group needs no shift
            n += [_c(f"div{j}", base**j, np.int32), helper.make_node("Div", ["mag", f"div{j}"], [f"sh{j}"])]
            src = f"sh{j}"
        if j < planes - 1:  # the highest group is already < B
            n.append(helper.make_node("Mod", [src, f"m{j}"], [f"dig{j}"]))
        else:
            n.append(helper.make_node("Identity", [src], [f"dig{j}"]))
        if neuron == "if":
            _mmi(n, f"dig{j}", "w8", f"p{j}", 0, f"g{j}", groups)
        else:
            n.append(helper.make_node("Mul", ["sgn", f"dig{j}"], [f"sd{j}"]))
            _mmi(n, f"sd{j}", "w8", f"p{j}", base - 1, f"g{j}", groups)
        if j == planes - 1:
            n.append(helper.make_node("Identity", [f"p{j}"], [f"acc{j}"]))
        else:
            n += [
                helper.make_node("Mul", [f"acc{j + 1}", f"m{j}"], [f"sc{j}"]),
                helper.make_node("Add", [f"sc{j}", f"p{j}"], [f"acc{j}"]),
            ]
    n.append(helper.make_node("Identity", ["acc0"], ["acc_s"]))


def _spike_plane_products(n: list, neuron: str, planes: int, groups: tuple[int, int] | None) -> None:
    """exact: the spike planes S_t themselves, one MatMulInteger each, accumulated into acc_s
    (TC-LIF: acc <- 2 acc + S_t @ W, MSB first; rate IF: acc <- acc + S_t @ W), with the
    spikes each token fires summed over the planes into tot{planes - 1} ([..., N])."""
    n += [_c("two", 2, np.int32), _c("one_i", 1, np.int32), _c("axes_k", [-1], np.int64)]
    for t in range(planes):
        if neuron == "if":
            # plane t of a rate-coded offset code: 1 while t < c
            n += [
                _c(f"t{t}", t, np.int32),
                helper.make_node("Greater", ["mag", f"t{t}"], [f"b{t}"]),
                helper.make_node("Cast", [f"b{t}"], [f"s{t}"], to=TensorProto.INT32),
            ]
            _mmi(n, f"s{t}", "w8", f"p{t}", 0, f"g{t}", groups)
        else:
            # plane t (MSB first) of T_max: sign(q) * bit_(T_max-1-t)(|q|), offset by 1 to
            # uint8 0..2 (far below int16 saturation, digit_bits)
            n += [
                _c(f"d{t}", 2 ** (planes - 1 - t), np.int32),
                helper.make_node("Div", ["mag", f"d{t}"], [f"sh{t}"]),
                helper.make_node("Mod", [f"sh{t}", "two"], [f"bit{t}"]),
                helper.make_node("Mul", ["sgn", f"bit{t}"], [f"s{t}"]),
            ]
            _mmi(n, f"s{t}", "w8", f"p{t}", 1, f"g{t}", groups)
        # spikes fired by this plane, per token: sum_k |S_t|
        n += [
            helper.make_node("Abs", [f"s{t}"], [f"as{t}"]),
            helper.make_node("ReduceSum", [f"as{t}", "axes_k"], [f"cnt{t}"], keepdims=0),
        ]
        if t == 0:
            n.append(helper.make_node("Identity", [f"p{t}"], [f"acc{t}"]))
            n.append(helper.make_node("Identity", [f"cnt{t}"], [f"tot{t}"]))
        else:
            if neuron == "if":
                n.append(helper.make_node("Add", [f"acc{t - 1}", f"p{t}"], [f"acc{t}"]))
            else:
                n.append(helper.make_node("Mul", [f"acc{t - 1}", "two"], [f"dbl{t}"]))
                n.append(helper.make_node("Add", [f"dbl{t}", f"p{t}"], [f"acc{t}"]))
            n.append(helper.make_node("Add", [f"tot{t - 1}", f"cnt{t}"], [f"tot{t}"]))
    n.append(helper.make_node("Identity", [f"acc{planes - 1}"], ["acc_s"]))


def _spikes_per_modality(n: list, tot: str) -> None:
    """spikes [2, modalities] = [spikes fired, tokens] per modality: the token counts tot
    [..., N] dotted with the one-hot modality [..., N, M] over every leading axis."""
    n += [
        helper.make_node("Cast", [tot], ["tot_f"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["tot_f", "axes_k"], ["tot_u"]),
        helper.make_node("Mul", ["tot_u", "onehot"], ["per_mod"]),
        helper.make_node("Shape", ["onehot"], ["oh_shape"]),
        helper.make_node("Size", ["oh_shape"], ["oh_rank"]),
        _c("one64", 1, np.int64),
        helper.make_node("Sub", ["oh_rank", "one64"], ["lead_rank"]),
        _c("zero64", 0, np.int64),
        helper.make_node("Range", ["zero64", "lead_rank", "one64"], ["lead_axes"]),
        helper.make_node("ReduceSum", ["per_mod", "lead_axes"], ["spk"], keepdims=0),
        helper.make_node("ReduceSum", ["onehot", "lead_axes"], ["tok"], keepdims=0),
        _c("axis0", [0], np.int64),
        helper.make_node("Unsqueeze", ["spk", "axis0"], ["spk_u"]),
        helper.make_node("Unsqueeze", ["tok", "axis0"], ["tok_u"]),
        helper.make_node("Concat", ["spk_u", "tok_u"], ["spikes"], axis=0),
    ]


def _scale_rows(n: list, acc: str, out: str, dql: bool) -> None:
    """out = float32(acc) * s_x, one rounding per element, for an int32 acc [..., N, M].

    dql: one DequantizeLinear (int32 -> float32(acc) * scale, zero point 0) per row of the
    flattened [P, M] product, with s_x [..., N, 1] of acc's leading shape as P row scales:
    the same two roundings in one pass over the product instead of a Cast and a Mul (the
    dequantizing tail of a 151936-wide LM head is several % of a prefill). Needs s_x with
    acc's leading shape (the encoder's per-token scale; checked by the lowering)."""
    if not dql:
        n += [helper.make_node("Cast", [acc], [f"{acc}_f"], to=TensorProto.FLOAT),
              helper.make_node("Mul", [f"{acc}_f", "s_x"], [out])]
        return
    n += [
        helper.make_node("Shape", [acc], [f"{acc}_shape"]),
        helper.make_node("Flatten", [acc], [f"{acc}_2d"], axis=-1),
        _c(f"{acc}_m1", [-1], np.int64),
        helper.make_node("Reshape", ["s_x", f"{acc}_m1"], [f"{acc}_sx1"]),
        helper.make_node("DequantizeLinear", [f"{acc}_2d", f"{acc}_sx1"], [f"{acc}_y2d"], axis=0),
        helper.make_node("Reshape", [f"{acc}_y2d", f"{acc}_shape"], [out], allowzero=1),  # keeps a 0 axis
    ]


ROW_DEQUANTIZE = True  # fused: float32(acc) * s_x as one DequantizeLinear (_scale_rows)
NBITS_BLOCK = int4.BLOCK  # MatMulNBits block length along K: 127 codes and the sentinel
NBITS_SENTINEL = 127  # the sentinel activation: every block's max |a| is exactly 127
# spikec's own ONNX Runtime custom ops (runtime/ortops/spikec_ortops.cc), used only where the
# runtime has the library: lower_for_ort(one_token=True, ortops=True).
ORTOPS_DOMAIN = "spikec.ortops"
ORTOPS_VERSION = 1
ORTOPS_ENCODE_MATMUL = "SpikeEncodeMatMulNBits"
ORTOPS_MATMUL = "SpikeMatMulIntegerToFloat"
ORTOPS_ENCODE_U8 = "SpikeEncodeU8"


nbits_blocks = int4.blocks  # blocks of the sentinel layout: block - 1 codes and the sentinel each


def nbits_exact(K: int, q_max: int, w_absmax: int, block: int = NBITS_BLOCK) -> bool:
    """Whether the sentinel MatMulNBits product of K codes |q| <= q_max by 4-bit weight codes
    is exact. Every block holds an element of |a| = 127, so MLAS' int8 activation scale is
    127 / 127 = 1.0 and the activations stay the integer codes; weights are stored unsigned
    (u = w + 8, zero point 8, block scale 1.0). Every block sum and every partial sum is an
    integer; bounding each term by the unsigned weight 15 (whichever way MLAS folds the zero
    point) and requiring the total below 2**24 makes every float32 step exact."""
    if q_max > NBITS_SENTINEL or w_absmax > 7 or K < 1:
        return False
    blocks = nbits_blocks(K, block)
    return blocks * ((block - 1) * q_max + NBITS_SENTINEL) * 15 < 2**24


def nbits_pack(w: np.ndarray, block: int = NBITS_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """int8 weight codes [K, N] in -7..7 -> (B uint8 [N, blocks, block // 2], scales float32 [N * blocks]):
    MatMulNBits' 4-bit layout of u = w + 8 with a zero-weight slot (u = 8) closing every
    block of block - 1 codes (spikec/int4.py, the .sbin's own TENSOR_INT4 layout), and
    block scales 1.0."""
    if block != int4.BLOCK:
        raise ValueError(f"nbits_pack: block {block}; the packed layout's block is {int4.BLOCK}")
    return int4.pack(np.asarray(w)), nbits_scales(w.shape[1], w.shape[0])


def nbits_scales(N: int, K: int) -> np.ndarray:
    """MatMulNBits' block scales for the sentinel layout: all 1.0, float32 [N * blocks]."""
    return np.ones(N * nbits_blocks(K), np.float32)


def _sentinel_layout(n: list, src: str, rank: int, K: int, block: int, lead: list[int]) -> None:
    """src (float32 codes [..., K], rank `rank`) -> nb_a [*lead, blocks * block]: each block
    block - 1 codes then the sentinel 127, zero codes past K. Two Pads and two Reshapes:
    row copies, where a Gather by index copies element by element (about 90 us for one
    token of K = 8960 on 2 threads, 35 ms of a 256-token prefill at 2B widths, 2 layers)."""
    blocks, data = nbits_blocks(K, block), block - 1
    if blocks * data != K:  # zero codes up to whole blocks
        n += [_c("nb_pads", [0] * (2 * rank - 1) + [blocks * data - K], np.int64),
              helper.make_node("Pad", [src, "nb_pads"], ["nb_padded"])]
        src = "nb_padded"
    n += [_c("nb_blocks", [-1, blocks, data], np.int64),
          helper.make_node("Reshape", [src, "nb_blocks"], ["nb_rows"]),
          _c("nb_close", [0, 0, 0, 0, 0, 1], np.int64),
          _c("nb_sentinel", float(NBITS_SENTINEL)),
          helper.make_node("Pad", ["nb_rows", "nb_close", "nb_sentinel"], ["nb_closed"]),
          _c("nb_shape", list(lead) + [blocks * block], np.int64),
          helper.make_node("Reshape", ["nb_closed", "nb_shape"], ["nb_a"])]


def _nbits_activation(n: list, K: int, block: int, every_token: bool, u8: bool = False) -> None:
    """q -> nb_a: the codes as float32 rows [rows, blocks * block] in the sentinel layout
    (_sentinel_layout); u8: q is uint8 q + a_zp (a_zp a uint8 scalar input)."""
    if u8:  # (q + a_zp) - a_zp, exact in float32
        n += [helper.make_node("Cast", ["q"], ["nb_uf"], to=TensorProto.FLOAT),
              helper.make_node("Cast", ["a_zp"], ["nb_zpf"], to=TensorProto.FLOAT),
              helper.make_node("Sub", ["nb_uf", "nb_zpf"], ["nb_qf"])]
    else:
        n.append(helper.make_node("Cast", ["q"], ["nb_qf"], to=TensorProto.FLOAT))
    rows = -1 if every_token else 1
    n += [_c("nb_row", [rows, K], np.int64),
          helper.make_node("Reshape", ["nb_qf", "nb_row"], ["nb_q2"])]
    _sentinel_layout(n, "nb_q2", 2, K, block, [rows])


def _nbits_products(n: list, K: int, parts: list[tuple[int, bool]], rank: int, block: int, every_token: bool,
                    outputs: list[str]) -> None:
    """nb_a -> outputs[i] = (float32(acc_i) * s_x) * s_w_i: one MatMulNBits per part over its
    own packed weights nb_b{i} (each a TENSOR_INT4 section where the .sbin has one)."""
    blocks = nbits_blocks(K, block)
    n += [_c("nb_sx_shape", [-1 if every_token else 1, 1], np.int64),
          helper.make_node("Reshape", ["s_x", "nb_sx_shape"], ["nb_sx"])]
    if every_token:  # the product's leading axes: q's
        n += [helper.make_node("Shape", ["q"], ["nb_lead"], end=-1)]
    for i, (m, _) in enumerate(parts):
        n += [helper.make_node("MatMulNBits", ["nb_a", f"nb_b{i}", f"nb_s{i}"], [f"nb_acc{i}"], domain="com.microsoft",
                               K=blocks * block, N=m, bits=4, block_size=block, accuracy_level=4),
              helper.make_node("Mul", [f"nb_acc{i}", "nb_sx"], [f"nb_y0_{i}"])]
        if every_token:
            n += [_c(f"nb_m{i}", [m], np.int64),
                  helper.make_node("Concat", ["nb_lead", f"nb_m{i}"], [f"nb_shape{i}"], axis=0)]
        else:  # one token: leading axes 1
            n += [_c(f"nb_shape{i}", [1] * (rank - 1) + [m], np.int64)]
        n += [helper.make_node("Reshape", [f"nb_y0_{i}", f"nb_shape{i}"], [f"nb_r{i}"], allowzero=1),
              helper.make_node("Mul", [f"nb_r{i}", f"s_w{i}"], [outputs[i]])]


def _nbits_matmul_fn(name: str, opset: int, K: int, parts: list[tuple[int, bool]], rank: int,
                     block: int = NBITS_BLOCK, every_token: bool = False, u8: bool = False,
                     one_token: bool = False) -> onnx.FunctionProto:
    """(q, s_x, then per part [w_i,] s_w_i, [bias_i], nb_b_i, nb_s_i) -> y_i: TC-LIF products
    of one code q (|q| <= 127, rank `rank`) by 4-bit weight codes, parts = [(M_i, has bias)]
    (Q/K/V, or gate/up, share their code: one call, one MatMulNBits each).

    One token (decode): com.microsoft MatMulNBits over the codes in the sentinel layout
    (spikec/int4.py; exact, see nbits_exact), which reads half the bytes of MatMulInteger's
    int8 weights; more tokens: the fused mode's MatMulIntegerToFloat per part over w_i
    (_scaled_product). Both give
    float32(acc) * s_x exactly, then the reference's scale order; one If picks the path.
    every_token: MatMulNBits for any number of tokens and no w_i (weights used only where
    they lie packed in the .sbin: no int8 copy). one_token: the one-token path alone, no If and
    no w_i (a graph lowered for one token; more tokens fail in its Reshape). a_zp (uint8
    scalar input): the offset of the uint8 codes (code_offset); u8: q already holds them (an
    encoder's)."""
    if every_token or one_token:
        n: list[onnx.NodeProto] = []
        _nbits_activation(n, K, block, every_token, u8)
        _nbits_products(n, K, parts, rank, block, every_token, [f"y1_{i}" for i in range(len(parts))])
    else:
        # Each branch ends in the Mul by s_w, a compute op: an If output that aliases another
        # tensor (a Reshape's) would be copied, a pass over a prefill's product.
        then_nodes: list[onnx.NodeProto] = []
        _nbits_activation(then_nodes, K, block, False, u8)
        then_out = [f"nb_y1_{i}" for i in range(len(parts))]
        _nbits_products(then_nodes, K, parts, rank, block, False, then_out)
        else_nodes: list[onnx.NodeProto] = []
        a, zp = _offset_codes(else_nodes, "q", "a_zp", "g", u8)
        for i in range(len(parts)):
            _scaled_product(else_nodes, a, f"w{i}", f"s_w{i}", f"mm_y1_{i}", f"g{i}", True, zp)

        def outs(names):
            return [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in names]
        then_g = helper.make_graph(then_nodes, "nbits", [], outs(then_out))
        else_g = helper.make_graph(else_nodes, "mmi", [], outs([f"mm_y1_{i}" for i in range(len(parts))]))
        n = [
            helper.make_node("Size", ["q"], ["size"]),
            _c("k", K, np.int64),
            helper.make_node("Equal", ["size", "k"], ["one_token"]),
            helper.make_node("If", ["one_token"], [f"y1_{i}" for i in range(len(parts))], then_branch=then_g,
                             else_branch=else_g),
        ]
    inputs, outputs = ["q", "s_x", "a_zp"], []
    for i, (m, with_bias) in enumerate(parts):
        inputs += ([] if every_token or one_token else [f"w{i}"]) + [f"s_w{i}"] + ([f"bias{i}"] if with_bias else [])
        inputs += [f"nb_b{i}", f"nb_s{i}"]
        outputs.append(f"y{i}")
        if with_bias:
            n.append(helper.make_node("Add", [f"y1_{i}", f"bias{i}"], [f"y{i}"]))
        else:
            n.append(helper.make_node("Identity", [f"y1_{i}"], [f"y{i}"]))
    fp = _fn(name, inputs, outputs, n, opset)
    fp.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fp


def _one_token_nbits_fn(name: str, opset: int, K: int, parts: list[tuple[int, bool]], rank: int, dynamic: bool,
                        block: int = NBITS_BLOCK) -> onnx.FunctionProto:
    """(x, q_tok, nq_tok, [s_tok], then per part s_w_i, [bias_i], nb_b_i, nb_s_i) -> y_i: one
    token's TC-LIF SpikeEncode and the MatMulNBits products of its code in one call, for a
    graph lowered for one token (lower_for_ort(one_token=True), a decode step).

    x float32 [1, ..., 1, K] (rank `rank`); q_tok, nq_tok, s_tok float32 scalars (rank 0): the
    token's largest code 2**T - 1, its negation, and (static scales only) its scale, gathered
    by its modality outside, once per graph for every group of the same table
    (_Lowerer.token_scalar). The same numbers as _encode_fn followed by _nbits_matmul_fn's
    products (spikec.reference.encode_tokens, then (float32(acc) * s) * s_w_i (+ bias_i)), in
    fewer and cheaper nodes: the non-finite test and the scale are scalars, the clamp is one
    Clip, the codes stay float32 (no int32 or uint8 form, no casts), a bad token's codes are
    left as they come (_encoder_nodes' scaled_only), and the sentinel layout is
    _sentinel_layout's."""
    blocks = nbits_blocks(K, block)
    # one token: the non-finite test, the scale and the bounds are scalars; s broadcasts over acc
    n = _encoder_nodes(dynamic, None, ("nq_tok", "q_tok"), "codes", scaled_only=True)
    _sentinel_layout(n, "codes", rank, K, block, [1] * (rank - 1))
    inputs, outputs = ["x", "q_tok", "nq_tok"] + ([] if dynamic else ["s_tok"]), []
    for i, (m, with_bias) in enumerate(parts):
        y = f"y{i}"
        n += [helper.make_node("MatMulNBits", ["nb_a", f"nb_b{i}", f"nb_s{i}"], [f"acc{i}"], domain="com.microsoft",
                               K=blocks * block, N=m, bits=4, block_size=block, accuracy_level=4),
              helper.make_node("Mul", [f"acc{i}", "s"], [f"t{i}"]),
              helper.make_node("Mul", [f"t{i}", f"s_w{i}"], [f"u{i}" if with_bias else y])]
        if with_bias:
            n.append(helper.make_node("Add", [f"u{i}", f"bias{i}"], [y]))
        inputs += [f"s_w{i}"] + ([f"bias{i}"] if with_bias else []) + [f"nb_b{i}", f"nb_s{i}"]
        outputs.append(y)
    fp = _fn(name, inputs, outputs, n, opset)
    fp.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fp


def _fakequant_fn(name: str, opset: int, with_bias: bool, groups: tuple[int, int] | None = None) -> onnx.FunctionProto:
    """(q, s_x, w, s_w, [bias]) -> y: float32 MatMul of integer codes, then the reference's scale order.

    groups = (n_groups, G): w viewed as [n_groups, G, M], one batched MatMul giving each
    group's (exact, integer) sum [n_groups, P, M], then _group_tail's order."""
    n = [
        helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
    ]
    if groups:
        src = _group_rows(n, "qf", groups, "fq")
        n.append(helper.make_node("MatMul", [src, "wf"], ["accf"]))
        _group_tail(n, "accf", groups[0], with_bias, is_float=True)
        return _fn(name, ["q", "s_x", "w", "s_w"] + (["bias"] if with_bias else []), ["y"], n, opset)
    n += [
        helper.make_node("MatMul", ["qf", "wf"], ["accf"]),
        helper.make_node("Mul", ["accf", "s_x"], ["y0"]),
        helper.make_node("Mul", ["y0", "s_w"], ["y1" if with_bias else "y"]),
    ]
    if with_bias:
        n.append(helper.make_node("Add", ["y1", "bias"], ["y"]))
    return _fn(name, ["q", "s_x", "w", "s_w"] + (["bias"] if with_bias else []), ["y"], n, opset)


# ---------------------------------------------------------------- the lowering


def _rank(v: ir.Value) -> int | None:
    """A value's rank; a spike code has its encoder input's rank (custom ops have no shape inference)."""
    if v.shape is not None:
        return len(v.shape)
    producer = v.producer()
    if producer is not None and producer.domain in (sops.DOMAIN, DOMAIN) and producer.inputs:
        return _rank(producer.inputs[0])
    return None


@dataclass
class LoweringStats:
    """What the lowering did: node count, the exact mode's stats outputs (int64 [2, n_mod]:
    spikes, tokens per modality) and per spiking product K, M, T per modality, neuron."""

    nodes: int = 0
    stats_outputs: tuple[str, ...] = ()
    layers: dict | None = None
    # the graph inputs' symbolic axes whose sizes are all 1 exactly when a call is one token
    # (batch 1, a decode step): where the one-token MatMulNBits products run. Set where some
    # product takes that path and every such axis is named on a graph input; None otherwise.
    one_token_dims: tuple[str, ...] | None = None
    # graph inputs read as per-token modality ids, and the model's modality names: ids
    # outside 0..len - 1 must be refused before a run (Gather would wrap -1 silently)
    modality_inputs: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()


class _Lowerer:
    def __init__(self, model: ir.Model, mode: str, nbits: bool = True, in_place: bool = False,
                 one_token: bool = False, ortops: bool = False, weight_copies: bool = True) -> None:
        if mode not in MODES:
            raise SpikecError(f"--mode: '{mode}' is not one of {', '.join(MODES)}")
        if one_token and (mode != "fused" or not nbits or in_place):
            raise SpikecError("a one-token lowering is fused mode's, with nbits on and weights not in place")
        self.model, self.mode, self.nbits, self.in_place, self.one_token = model, mode, nbits, in_place, one_token
        self.ortops = ortops and mode == "fused"
        self.weight_copies = weight_copies  # may an op hold a packed copy of a weight (lower_for_ort)
        self.graph = model.graph
        self.names = sops.modalities(model)
        self.opset = max(model.opset_imports.get("", 18), 18)
        self.functions: dict[str, onnx.FunctionProto] = {}
        self.stats: list[str] = []
        self.layers: dict[str, dict] = {}
        self._n = 0
        self._views: dict[tuple, ir.Value] = {}  # (weight, groups) -> its [n_groups, G, M] view
        self._viewed: list[ir.Value] = []  # weights given a group view (dropped at the end if unused)
        self._u8_codes: dict[int, ir.Value] = {}  # encoder outputs holding uint8 codes -> their a_zp
        self._w_bounds: dict[int, int] = {}  # id(node) -> weight_bound(node)
        self._absorbed: dict[int, ir.Node] = {}  # one_token: id(group's first product) -> its encoder
        self._token_scalars: dict = {}  # one_token: id(mod) -> (mod, its scalar id); (table bytes, id(mod)) -> table[mod]
        self._modality_inputs: list[str] = []  # graph inputs read as modality ids

    # -- helpers -------------------------------------------------------------
    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        self._n += 1
        name = f"{base}.{self._n}"
        v = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                     const_value=ir.Tensor(array, name=name))
        self.graph.register_initializer(v)
        return v

    def _insert(self, before: ir.Node, op: str, inputs, n_out: int = 1, domain: str = "", **attrs) -> list[ir.Value]:
        """Create a helper node for the spikec node being lowered (placed by _replace)."""
        node = ir.node(op, inputs, attributes=attrs, domain=domain, num_outputs=n_out)
        self._pending.append(node)
        return list(node.outputs)

    def _modality(self, node: ir.Node, x: ir.Value, mod_index: int) -> ir.Value:
        """The per-token modality tensor of a node: its input, or a constant of x's token shape."""
        mod = node.inputs[mod_index] if len(node.inputs) > mod_index else None
        if mod is not None:
            if mod.is_graph_input() and mod.name not in self._modality_inputs:
                self._modality_inputs.append(mod.name)
            return mod
        const = sops.attr(node, "modality_id")
        if const is None:
            raise SpikecError(f"node '{node.name}': no modality input and no modality attribute")
        shape = self._insert(node, "Shape", [x], end=-1)[0]
        fill = ir.Tensor(np.array([int(const)], dtype=np.int64))
        mod = self._insert(node, "ConstantOfShape", [shape], value=fill)[0]
        rank = _rank(x)
        if rank is not None:  # the token shape: x's without its last axis
            mod.type, mod.shape = ir.TensorType(ir.DataType.INT64), ir.Shape([None] * (rank - 1))
        return mod

    def _per_token(self, node: ir.Node, table: np.ndarray, mod: ir.Value, x: ir.Value, tag: str) -> ir.Value:
        """Gather a per-modality table by token and unsqueeze to x's rank ([..., N, 1] or [..., N, M])."""
        tv = self._const(f"{node.name}.{tag}", table)
        g = self._insert(node, "Gather", [tv, mod], axis=0)[0]
        x_rank, m_rank = _rank(x), _rank(mod)
        if x_rank is None or m_rank is None:
            raise SpikecError(f"node '{node.name}': ranks of its input and modality must be known (run shape inference)")
        extra = table.ndim - 1  # a [n_mod, M] table gathers to [..., N, M]
        if m_rank == x_rank - 1:
            axes = [] if extra else [-1]
        elif m_rank == x_rank - 2:  # attention [B, H, N, K] vs modality [B, N]: heads broadcast
            axes = [1] if extra else [1, m_rank + 1]
        else:
            raise SpikecError(f"node '{node.name}': modality rank {m_rank} does not fit activations of rank {x_rank}")
        if not axes:
            return g
        return self._insert(node, "Unsqueeze", [g, self._const("axes", np.array(axes, np.int64))])[0]

    def _function(self, name: str, build) -> str:
        if name not in self.functions:
            self.functions[name] = build()
        return name

    # -- ops -----------------------------------------------------------------
    def timesteps(self, node: ir.Node) -> np.ndarray:
        return np.asarray(sops.get_timesteps(node), dtype=np.int64)

    def static_scales(self, node: ir.Node, T: np.ndarray) -> np.ndarray:
        """float32 [n_mod]: clip(m, T_m) / (2**T_m - 1), the reference's float32 rule."""
        if sops.attr(node, "act_scale", "dynamic") != "static":
            return np.ones(len(T), np.float32)
        clip = sops.clip_table(node, len(self.names))
        c = clip[np.arange(len(T)), np.clip(T, 1, sops.CLIP_T) - 1].astype(np.float32)
        # R.static_scale: clip 0 (silent layer) -> the fallback 1.0. A modality calibration
        # never saw keeps NaN (the compiler refuses such tables; a graph made elsewhere
        # gives NaN rows for its tokens here, where the reference raises).
        return R.static_scale(c, T)

    def encode(self, node: ir.Node, x: ir.Value, mod: ir.Value, T: np.ndarray, u8: bool = False) -> list[ir.Value]:
        """(q, s) for x; u8: q as uint8 q + code_offset(T_max) (_encode_u8_fn), for consumers that take it
        (codes_u8)."""
        dynamic = sops.attr(node, "act_scale", "dynamic") == "dynamic"
        s_tok = self._per_token(node, self.static_scales(node, T), mod, x, "scale")
        q_tok = self._per_token(node, ((np.int64(1) << T) - 1).astype(np.float32), mod, x, "qmax")
        # block-quantized QuantizeLinear (one block of K per token) is opset 21's
        K = x.shape[-1] if u8 and self.opset >= 21 and x.shape is not None and len(x.shape) else None
        K = K if isinstance(K, int) else None
        z = self.imported_zero_point(node)
        if z is not None:  # an imported zero point: codes c - z of c in [0, 2**(T+1) - 1] (ops.offset_code)
            lo = self._per_token(node, np.full(len(T), -z, np.float32), mod, x, "codemin")
            hi = self._per_token(node, ((np.int64(2) << T) - 1 - z).astype(np.float32), mod, x, "codemax")
            fname = ("EncodeDynamic" if dynamic else "EncodeStatic") + "Offset"
            fname = self._function(fname, lambda: _encode_fn(fname, dynamic, self.opset, offset=True))
            return self._insert(node, fname, [x, s_tok, q_tok, lo, hi], n_out=2, domain=DOMAIN)
        if u8 and self.ortops and _rank(mod) == _rank(x) - 1:  # one spikec.ortops node; its tables: one per token
            zp = self._zero_point(node, int(T.max()))
            outs = self._insert(node, ORTOPS_ENCODE_U8, [x, s_tok, q_tok, zp], n_out=2, domain=ORTOPS_DOMAIN,
                                dynamic=int(dynamic))
            outs[0].producer().name = f"{node.name}/{ORTOPS_ENCODE_U8}"
            if x.shape is not None:  # what the products' lowering reads (_rank), as a function call's outputs
                outs[0].type, outs[0].shape = ir.TensorType(ir.DataType.UINT8), ir.Shape(list(x.shape))
                outs[1].type, outs[1].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(list(x.shape)[:-1] + [1])
            self._u8_codes[id(outs[0])] = zp
            return outs
        fname = ("EncodeDynamic" if dynamic else "EncodeStatic") + ("U8" if u8 else "") + (f"_K{K}" if K else "")
        fname = self._function(fname, lambda: _encode_fn(fname, dynamic, self.opset, u8, K))
        if not u8:
            return self._insert(node, fname, [x, s_tok, q_tok], n_out=2, domain=DOMAIN)
        zp = self._zero_point(node, int(T.max()))
        outs = self._insert(node, fname, [x, s_tok, q_tok, zp], n_out=2, domain=DOMAIN)
        self._u8_codes[id(outs[0])] = zp
        return outs

    @staticmethod
    def imported_zero_point(node: ir.Node) -> int | None:
        """The imported activation zero point z of an act_unsigned node (import-qdq, rate IF),
        else None."""
        if not sops.attr(node, "act_unsigned"):
            return None
        if sops.attr(node, "neuron") != "if":
            raise SpikecError(f"node '{node.name}': an imported zero point (act_unsigned) needs the rate-IF neuron")
        return int(sops.attr(node, "act_zero_point", 0) or 0)

    def _zero_point(self, node: ir.Node, t_max: int) -> ir.Value:
        """uint8 scalar: code_offset(t_max), the offset of node's uint8 codes."""
        return self._const(f"{node.name}.a_zp", np.array(code_offset(t_max), np.uint8))

    def weight_bound(self, node: ir.Node) -> int:
        """max |w| over the integer weights of SpikeMatMul / QuantLinear `node`: 7 for packed
        4-bit codes (checked when the .sbin was read), max |w| of other constant weights (one
        pass over them), else qmax of the op's bbits / wbits (a computed operand's codes are
        clamped to it by their encoder), else 128 (any int8)."""
        if id(node) in self._w_bounds:
            return self._w_bounds[id(node)]
        w = node.inputs[sops.w_val_index(node)] if len(node.inputs) > sops.w_val_index(node) else None
        t = w.const_value if w is not None else None
        bits = sops.attr(node, "bbits", sops.attr(node, "wbits"))
        if isinstance(t, int4.PackedInt4Tensor):
            bound = int4.CODE_MAX
        elif t is not None:
            bound = R.absmax_int(t.numpy())
        else:
            bound = R.qmax(int(bits)) if bits is not None else 128
        self._w_bounds[id(node)] = bound
        return bound

    def code_digit_bits(self, node: ir.Node, t_max: int) -> int:
        """The digit width of TC-LIF node's fused products (digit_bits): the weights are only
        looked at where it matters, codes wider than 6 bits (T_max >= 7)."""
        return DIGIT_BITS if t_max < DIGIT_BITS else digit_bits(self.weight_bound(node))

    def _u8_product(self, node: ir.Node, t_codes: int = 0) -> bool:
        """Whether SpikeMatMul `node` takes its codes as uint8 (q + code_offset): fused TC-LIF with
        codes of one digit group (T <= 6, or T = 7 by weights |w| <= 64: code_digit_bits).
        t_codes: the largest T of the encoder whose codes it would take, whose offset
        code_offset(t_codes) they then carry: the int16 bound holds for that offset, not
        only for the product's own T (an encoder of T 7 read by a product of T 4 by 8-bit
        weights gave codes up to 254 to a product bounded for 30)."""
        if self.mode != "fused" or (sops.attr(node, "neuron", "tc-lif") or "tc-lif") != "tc-lif":
            return False
        t_max = max(int(self.timesteps(node).max()), t_codes)
        return t_max <= self.code_digit_bits(node, t_max)

    def codes_u8(self, node: ir.Node, T: np.ndarray) -> bool:
        """Whether SpikeEncode `node` can give its codes as uint8 (q + code_offset) (_encode_u8_fn): T <= 7
        and every use of them is the code input of a SpikeMatMul that takes them so (_u8_product)."""
        q = node.outputs[0]
        if self.mode != "fused" or int(T.max()) > DIGIT_BITS or q.is_graph_output() or not q.uses():
            return False
        return all(user.domain == sops.DOMAIN and user.op_type == sops.SPIKE_MATMUL and idx == 0
                   and self._u8_product(user, int(T.max())) for user, idx in q.uses())

    def weight_groups(self, node: ir.Node, w: ir.Value, s_w: ir.Value, neuron: str) -> tuple[int, int] | None:
        """(n_groups, G) for group-wise weight scales s_w [n_groups, M], n_groups > 1; None for
        per-channel scales [M] and for one group [1, M], which lowers exactly as [M] (s_w [1, M]
        broadcasts over [..., N, M] as [M] does: the same nodes and the same bits)."""
        shape = s_w.const_value.shape if s_w.const_value is not None else s_w.shape
        if shape is None or len(shape) != 2:
            return None
        if neuron != "tc-lif":
            raise SpikecError(f"node '{node.name}': group-wise weight scales need the tc-lif neuron "
                              f"(the rate-IF offset fold is per output channel)")
        wshape = w.const_value.shape if w.const_value is not None else w.shape
        K = wshape[-2] if wshape is not None and len(wshape) == 2 else None
        if not isinstance(shape[0], int) or not isinstance(K, int):
            raise SpikecError(f"node '{node.name}': group-wise weight scales need a [K, M] weight and s_w "
                              f"[n_groups, M] of known shapes")
        G = R.weight_group_size(K, shape, f"node '{node.name}'")
        return None if int(shape[0]) == 1 else (int(shape[0]), G)

    def grouped_weight(self, node: ir.Node, w: ir.Value, groups: tuple[int, int]) -> ir.Value:
        """w [K, M] viewed as [n_groups, G, M], no copy: a constant weight becomes a second
        initializer over the same bytes (the same external-data reference into the .sbin, or a
        numpy view); the original is dropped at the end when nothing else reads it."""
        n_groups, G = groups
        t = w.const_value
        if t is None:  # a computed weight: a Reshape (a view in onnxruntime)
            shape = self._const(f"{node.name}.gshape", np.array([n_groups, G, -1], np.int64))
            return self._insert(node, "Reshape", [w, shape])[0]
        key = (id(w), groups)
        if key in self._views:
            return self._views[key]
        shape3 = ir.Shape([n_groups, G, int(t.shape[-1])])
        self._n += 1
        name = f"{w.name}.groups{n_groups}.{self._n}"
        if isinstance(t, ir.ExternalTensor):
            view = ir.ExternalTensor(t.location, t.offset, t.length, t.dtype, shape=shape3, name=name,
                                     base_dir=t.base_dir)
        else:
            view = ir.Tensor(t.numpy().reshape(tuple(shape3)), dtype=t.dtype, name=name)
        v = ir.Value(name=name, type=ir.TensorType(t.dtype), shape=shape3, const_value=view)
        self.graph.register_initializer(v)
        self._views[key] = v
        self._viewed.append(w)
        return v

    def matmul(self, node: ir.Node, q: ir.Value, s_x: ir.Value, mod: ir.Value, w: ir.Value, s_w: ir.Value,
               bias: ir.Value | None, T: np.ndarray) -> ir.Value:
        neuron = sops.attr(node, "neuron", "tc-lif") or "tc-lif"
        t_max = int(T.max())
        groups = self.weight_groups(node, w, s_w, neuron)
        w_in = self.grouped_weight(node, w, groups) if groups else w
        gtag = f"_g{groups[0]}x{groups[1]}" if groups else ""
        if self.mode == "fakequant":
            K = w.shape[-2] if w.shape is not None and len(w.shape) >= 2 else None
            if isinstance(K, int) and w.const_value is not None:
                rows = groups[1] if groups else K  # each group's sum is separate
                bound = rows * (2**t_max - 1) * R.absmax_int(w.const_value.numpy())
                if bound >= 2**24:
                    raise SpikecError(f"node '{node.name}': fakequant mode is exact only below 2**24 "
                                      f"(K={rows}, T={t_max}: bound {bound}); use fused or exact")
            name = f"SpikeMatMul_fakequant{gtag}{'_bias' if bias is not None else ''}"
            fn = self._function(name, lambda: _fakequant_fn(name, self.opset, bias is not None, groups))
            return self._insert(node, fn, [q, s_x, w_in, s_w] + ([bias] if bias is not None else []),
                                domain=DOMAIN)[0]
        bits = DIGIT_BITS  # rate IF's digits are >= 0, offset 0: at most 127 (digit_bits)
        if neuron == "if":
            b_tok = T + 1
            b_max = int(b_tok.max())
            planes = (2**b_max - 1) if self.mode == "exact" else -(-b_max // DIGIT_BITS)
            if w.const_value is None:
                raise SpikecError(f"node '{node.name}': rate-IF needs constant weights for its offset fold")
            z = self.imported_zero_point(node)
            if z is None:  # c = q + 2**(b-1), folded back by -2**(b-1) sum_k W
                off = (np.int64(1) << (b_tok - 1)).astype(np.int32)
                accb = np.stack([R.rate_if_bias_fold(w.const_value.numpy(), int(b)) for b in b_tok]).astype(np.int32)
            else:  # an imported zero point: c = q + z in [0, 2**b - 1], folded back by -z sum_k W
                off = np.full(len(T), z, np.int32)
                fold = -z * w.const_value.numpy().astype(np.int64).sum(axis=-2)
                if np.abs(fold).max(initial=0) > R.INT32_MAX:
                    raise SpikecError(f"node '{node.name}': the zero point's folded bias does not fit int32")
                accb = np.stack([fold.astype(np.int32)] * len(T))
        else:
            bits = self.code_digit_bits(node, t_max)
            planes = t_max if self.mode == "exact" else -(-t_max // bits)
            off = np.zeros(len(T), np.int32)
            accb = np.zeros((len(T), 1), np.int32)
        u8 = id(q) in self._u8_codes
        zp = None
        if self.mode == "fused" and planes == 1 and neuron != "if":  # the codes' offset (code_offset)
            zp = self._u8_codes[id(q)] if u8 else self._zero_point(node, t_max)
        # the encoder's per-token scale has the product's leading shape: one DequantizeLinear
        # scales the int32 product by it (see _scale_rows)
        producer = s_x.producer()
        dql = (ROW_DEQUANTIZE and self.mode == "fused" and producer is not None and producer.domain == DOMAIN
               and producer.op_type.startswith("Encode") and w.shape is not None and len(w.shape) == 2
               and not groups and (neuron == "if" or planes > 1))  # else _scaled_product's epilogue
        off_tok = self._per_token(node, off, mod, q, "offset")
        accb_tok = self._per_token(node, accb, mod, q, "accbias")
        onehot = self._per_token(node, np.eye(len(self.names), dtype=np.int64), mod, q, "onehot")
        dtag = f"x{bits}b" if bits != DIGIT_BITS and self.mode == "fused" and planes > 1 else ""
        # SpikeMatMulIntegerToFloat takes one s_w per column of a constant [K, M] weight (not an attention
        # product's per-tensor scale of an activation operand) and one s_x per row
        tail_op = (self.ortops and self.weight_copies and self.mode == "fused" and planes == 1 and neuron != "if"
                   and not groups
                   and w.const_value is not None and w.shape is not None and len(w.shape) == 2
                   and s_w.const_value is not None and s_w.const_value.size == w.shape[1]
                   and _rank(s_x) == _rank(q))
        name = (f"SpikeMatMul_{neuron.replace('-', '')}_{self.mode}_{planes}{dtag}{'_dql' if dql else ''}{gtag}"
                f"{'_u8' if u8 else ''}{'_bias' if bias is not None else ''}{'_ortops' if tail_op else ''}")
        fn = self._function(name, lambda: _matmul_fn(name, neuron, self.mode, planes, self.opset, bias is not None,
                                                     dql, groups, u8, bits, tail_op))
        inputs = [q, s_x, w_in, s_w] + ([bias] if bias is not None else []) + [off_tok, accb_tok, onehot]
        inputs += [zp] if zp is not None else []
        outs = self._insert(node, fn, inputs, n_out=2 if self.mode == "exact" else 1, domain=DOMAIN)
        if self.mode == "exact":
            stat = outs[1]
            stat.name = f"{STATS_PREFIX}{node.name}"
            stat.type, stat.shape = ir.TensorType(ir.DataType.INT64), ir.Shape([2, len(self.names)])
            self._stat_outputs.append(stat)
        shape = w.shape
        self.layers[node.name] = {
            "K": int(shape[-2]) if shape is not None and isinstance(shape[-2], int) else None,
            "M": int(shape[-1]) if shape is not None and isinstance(shape[-1], int) else None,
            "timesteps": [int(t) for t in T], "neuron": neuron, "weights": w.const_value is not None,
        }
        if self.mode == "fused" and planes > 1:
            self.layers[node.name]["digit_bits"] = bits
        if groups:
            self.layers[node.name]["group_size"] = groups[1]
        if tail_op:
            self.layers[node.name]["tokens"] = f"any ({ORTOPS_DOMAIN}.{ORTOPS_MATMUL})"
        return outs[0]

    def nbits_key(self, node: ir.Node) -> tuple | None:
        """A key shared by the one-token MatMulNBits products that can run as one (same code,
        scale, T and K), or None where a SpikeMatMul does not qualify: fused mode, TC-LIF,
        codes |q| <= 127, constant int8 [K, M] weights of 4-bit codes, constant scales and
        bias, and a product nbits_exact proves exact."""
        if not self.nbits or self.mode != "fused" or node.op_type != sops.SPIKE_MATMUL:
            return None
        if (sops.attr(node, "neuron", "tc-lif") or "tc-lif") != "tc-lif" or int(sops.attr(node, "wbits", 8) or 8) > 4:
            return None
        if len(node.inputs) < 5:
            return None
        q, s_x, w, s_w = node.inputs[0], node.inputs[1], node.inputs[3], node.inputs[4]
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        T = self.timesteps(node)
        rank = _rank(q) if q is not None else None
        if (q is None or s_x is None or rank is None or rank < 2 or _rank(s_x) not in (None, rank)
                or w is None or w.const_value is None or w.shape is None or len(w.shape) != 2
                or s_w is None or s_w.const_value is None or (bias is not None and bias.const_value is None)):
            return None
        if len(s_w.const_value.shape) == 2 and s_w.const_value.shape[0] != 1:
            return None  # group-wise scales: the exact path (its groups' sums are separate)
        K, M = w.shape
        packed = isinstance(w.const_value, int4.PackedInt4Tensor)
        if self.in_place and not packed:
            return None  # a 4-bit copy of int8-stored weights would cost memory the model does not have
        if packed:  # codes -7..7, checked when the .sbin was read; no need to unpack them here
            dtype, absmax = np.dtype(np.int8), int4.CODE_MAX
        else:
            codes = w.const_value.numpy()
            dtype, absmax = codes.dtype, R.absmax_int(codes)
        if (not (isinstance(K, int) and isinstance(M, int)) or dtype != np.int8
                or not nbits_exact(K, 2 ** int(T.max()) - 1, absmax, NBITS_BLOCK)):
            return None
        # every token on MatMulNBits when weights are used in place: the group must be all packed
        return (id(q), id(s_x), tuple(int(t) for t in T), K, packed and self.in_place)

    def absorbable_encoder(self, nodes: list[ir.Node]) -> ir.Node | None:
        """The SpikeEncode whose code the products of `nodes` (one nbits_key) take, where
        nothing else reads its outputs and its T is theirs (so nbits_key's bound holds for its
        codes): one_token lowers the two as one call (_one_token_nbits_fn). None otherwise."""
        q, s_x = nodes[0].inputs[0], nodes[0].inputs[1]
        enc = q.producer()
        if (enc is None or enc.domain != sops.DOMAIN or enc.op_type != sops.SPIKE_ENCODE or s_x.producer() is not enc
                or (sops.attr(enc, "neuron", "tc-lif") or "tc-lif") != "tc-lif" or sops.attr(enc, "act_unsigned")
                or not np.array_equal(self.timesteps(enc), self.timesteps(nodes[0])) or _rank(enc.inputs[0]) != _rank(q)):
            return None
        members = {id(n) for n in nodes}
        for index, v in enumerate(enc.outputs[:2]):
            if v.is_graph_output() or any(id(user) not in members or i != index for user, i in v.uses()):
                return None
        return enc if len(enc.outputs) == 2 else None

    @staticmethod
    def token_dims(q: ir.Value) -> list[str] | None:
        """The names of q's token axes (all but the last) that must be 1 for one token; None
        where one is unnamed or a fixed size other than 1. A code without a shape has its
        encoder input's token axes (as _rank)."""
        producer = q.producer()
        if q.shape is None and producer is not None and producer.domain in (sops.DOMAIN, DOMAIN) and producer.inputs:
            return _Lowerer.token_dims(producer.inputs[0])
        if q.shape is None:
            return None
        names = []
        for d in list(q.shape)[:-1]:
            if isinstance(d, int):
                if d != 1:
                    return None
            elif isinstance(d, ir.SymbolicDim) and d.value:
                names.append(d.value)
            else:
                return None
        return names

    def one_token_group(self, nodes: list[ir.Node], enc: ir.Node) -> list[ir.Value]:
        """The encoder `enc` and the products of `nodes` as one _one_token_nbits_fn call."""
        first = nodes[0]
        x = enc.inputs[0]
        T = self.timesteps(enc)
        K, rank = int(first.inputs[3].shape[0]), _rank(x)
        dynamic = sops.attr(enc, "act_scale", "dynamic") == "dynamic"
        mod = self._modality(enc, x, 1)
        q_tab = ((np.int64(1) << T) - 1).astype(np.float32)
        q_tok = self.token_scalar(first, f"{enc.name}.qmax", q_tab, mod)
        s_tok = None if dynamic else self.token_scalar(first, f"{enc.name}.scale", self.static_scales(enc, T), mod)
        if self.ortops:
            return self.ortops_group(nodes, x, q_tok, s_tok, K, T)
        inputs = [x, q_tok, self.token_scalar(first, f"{enc.name}.qmax_neg", -q_tab, mod)]
        if not dynamic:
            inputs.append(s_tok)
        parts = []
        for node in nodes:
            w, s_w = node.inputs[3], node.inputs[4]
            bias = node.inputs[5] if len(node.inputs) > 5 else None
            M = int(w.shape[1])
            parts.append((M, bias is not None))
            inputs += [s_w] + ([bias] if bias is not None else [])
            inputs += [self._packed(node.name, w), self._const(f"{node.name}.nbits_s", nbits_scales(M, K))]
            self._viewed.append(w)  # its int8 form is not used: dropped at the end
            self.layers[node.name] = {"K": K, "M": M, "timesteps": [int(t) for t in T], "neuron": "tc-lif",
                                      "weights": True, "one_token": "MatMulNBits", "tokens": "one (MatMulNBits)"}
        sig = "_".join(f"{m}{'b' if has_b else ''}" for m, has_b in parts)
        name = f"SpikeEncodeMatMul_tclif_nbits{NBITS_BLOCK}_{'dyn' if dynamic else 'static'}_K{K}_{sig}_r{rank}"
        fn = self._function(name, lambda: _one_token_nbits_fn(name, self.opset, K, parts, rank, dynamic))
        return self._insert(first, fn, inputs, n_out=len(nodes), domain=DOMAIN)

    def ortops_group(self, nodes: list[ir.Node], x: ir.Value, q_tok: ir.Value, s_tok: ir.Value | None, K: int,
                     T: np.ndarray) -> list[ir.Value]:
        """one_token_group on the spikec.ortops custom op: one SpikeEncodeMatMulNBits node per
        product (x, q_tok, s_tok, packed weights, s_w, bias; runtime/ortops/spikec_ortops.cc),
        each encoding the token itself (K floats: cheaper than a node between them)."""
        outputs = []
        for node in nodes:
            w, s_w = node.inputs[3], node.inputs[4]
            bias = node.inputs[5] if len(node.inputs) > 5 else None
            inputs = [x, q_tok, s_tok, self._packed(node.name, w), s_w] + ([bias] if bias is not None else [])
            y = self._insert(node, ORTOPS_ENCODE_MATMUL, inputs, domain=ORTOPS_DOMAIN)[0]
            y.producer().name = f"{node.name}/{ORTOPS_ENCODE_MATMUL}"
            outputs.append(y)
            self._viewed.append(w)  # its int8 form is not used: dropped at the end
            self.layers[node.name] = {"K": K, "M": int(w.shape[1]), "timesteps": [int(t) for t in T],
                                      "neuron": "tc-lif", "weights": True,
                                      "one_token": f"{ORTOPS_DOMAIN}.{ORTOPS_ENCODE_MATMUL}",
                                      "tokens": f"one ({ORTOPS_DOMAIN}.{ORTOPS_ENCODE_MATMUL})"}
        return outputs

    def token_scalar(self, before: ir.Node, base: str, table: np.ndarray, mod: ir.Value) -> ir.Value:
        """table[m] (float32 [n_mod] by modality) for the one token of a one-token graph, as a
        rank-0 scalar: a Gather by its modality made a scalar (mod holds one id), made once
        per graph for each table and modality value (every layer's encoders of the same T
        share their largest code)."""
        if id(mod) not in self._token_scalars:  # (mod, its scalar id); mod kept, so its id is not reused
            shape = self._const(f"{base}.scalar_shape", np.zeros(0, np.int64))
            self._token_scalars[id(mod)] = (mod, self._insert(before, "Reshape", [mod, shape])[0])
        key = (table.tobytes(), id(mod))
        if key not in self._token_scalars:
            scalar_mod = self._token_scalars[id(mod)][1]
            self._token_scalars[key] = self._insert(before, "Gather", [self._const(base, table), scalar_mod], axis=0)[0]
        return self._token_scalars[key]

    def nbits_group(self, nodes: list[ir.Node], every_token: bool) -> list[ir.Value]:
        """One call for the products of `nodes` (one nbits_key): MatMulNBits per product for
        one token, MatMulIntegerToFloat per product otherwise
        (one_token: MatMulNBits alone, with their encoder where absorbable_encoder allows)."""
        first = nodes[0]
        if id(first) in self._absorbed:
            return self.one_token_group(nodes, self._absorbed[id(first)])
        q, s_x = first.inputs[0], first.inputs[1]
        K = int(first.inputs[3].shape[0])
        T = self.timesteps(first)
        rank = _rank(q)
        u8 = id(q) in self._u8_codes
        block = NBITS_BLOCK
        parts, inputs = [], [q, s_x, self._u8_codes[id(q)] if u8 else self._zero_point(first, int(T.max()))]
        for node in nodes:
            w, s_w = node.inputs[3], node.inputs[4]
            bias = node.inputs[5] if len(node.inputs) > 5 else None
            M = int(w.shape[1])
            parts.append((M, bias is not None))
            inputs += ([] if every_token or self.one_token else [w]) + [s_w] + ([bias] if bias is not None else [])
            inputs += [self._packed(node.name, w), self._const(f"{node.name}.nbits_s", nbits_scales(M, K))]
            if every_token or self.one_token:
                self._viewed.append(w)  # its int8 form is not used: dropped at the end
            tokens = "MatMulNBits" if every_token else "one (MatMulNBits)" if self.one_token else "MatMulIntegerToFloat"
            self.layers[node.name] = {"K": K, "M": M, "timesteps": [int(t) for t in T], "neuron": "tc-lif",
                                      "weights": True, "one_token": "MatMulNBits", "tokens": tokens}
        sig = "_".join(f"{m}{'b' if has_b else ''}" for m, has_b in parts)
        tag = "_all" if every_token else "_one" if self.one_token else ""
        name = f"SpikeMatMul_tclif_nbits{block}_K{K}_{sig}_r{rank}{'_u8' if u8 else ''}{tag}"
        fn = self._function(name, lambda: _nbits_matmul_fn(name, self.opset, K, parts, rank, block, every_token, u8,
                                                           self.one_token))
        return self._insert(first, fn, inputs, n_out=len(nodes), domain=DOMAIN)

    def _packed(self, base: str, w: ir.Value) -> ir.Value:
        """The packed 4-bit form of weight `w` (spikec/int4.py): the .sbin's own TENSOR_INT4
        bytes where it came from one (mapped in place, not copied), else packed now."""
        t = w.const_value
        if isinstance(t, int4.PackedInt4Tensor):
            self._n += 1
            name = f"{base}.nbits_b.{self._n}"
            v = ir.Value(name=name, type=ir.TensorType(ir.DataType.UINT8), shape=ir.Shape(t.packed.shape),
                         const_value=t.packed)
            self.graph.register_initializer(v)
            return v
        return self._const(f"{base}.nbits_b", int4.pack(t.numpy()))

    def code(self, node: ir.Node) -> list[ir.Value]:
        bits = int(sops.attr(node, "bits", 8))
        qv = self._const(f"{node.name}.qmax", np.array(R.qmax(bits), np.float32))
        fname = self._function("Code", lambda: _code_fn("Code", self.opset))
        return self._insert(node, fname, [node.inputs[0], qv], n_out=2, domain=DOMAIN)

    def lower(self, node: ir.Node) -> list[ir.Value]:
        """New values replacing `node`'s outputs, built from helper nodes in self._pending."""
        op = node.op_type
        if op == sops.SPIKE_ENCODE:
            x = node.inputs[0]
            T = self.timesteps(node)
            return self.encode(node, x, self._modality(node, x, 1), T, self.codes_u8(node, T))
        if op == sops.SPIKE_MATMUL:
            q, s_x = node.inputs[0], node.inputs[1]
            mod = self._modality(node, q, 2)
            bias = node.inputs[5] if len(node.inputs) > 5 else None
            return [self.matmul(node, q, s_x, mod, node.inputs[3], node.inputs[4], bias, self.timesteps(node))]
        if op == sops.SPIKE_CODE:
            return self.code(node)
        if op == sops.QUANT_LINEAR:
            # The fake-quantized form runs too: encode + fused product, the same numbers.
            x = node.inputs[0]
            mod = self._modality(node, x, 1)
            T = self.timesteps(node)
            q, s = self.encode(node, x, mod, T, self._u8_product(node))
            q.shape = x.shape
            bias = node.inputs[4] if len(node.inputs) > 4 else None
            return [self.matmul(node, q, s, mod, node.inputs[2], node.inputs[3], bias, T)]
        raise SpikecError(f"node '{node.name}': {sops.DOMAIN}::{op} has no onnxruntime lowering")

    def run(self) -> LoweringStats:
        count = 0
        groups: dict[tuple, list[ir.Node]] = {}
        for node in self.graph:
            key = self.nbits_key(node) if node.domain == sops.DOMAIN else None
            if key is not None:
                groups.setdefault(key, []).append(node)
        first = {id(g[0]): (g, key[-1]) for key, g in groups.items()}  # key[-1]: every token on MatMulNBits
        followers = {id(n) for g in groups.values() for n in g[1:]}
        one_token_groups = [g for key, g in groups.items() if not key[-1]]
        one_token_dims = self.one_token_dims(one_token_groups)
        if self.one_token:
            if not one_token_groups:
                raise SpikecError("no product of this graph runs on MatMulNBits for one token (TC-LIF codes by 4-bit "
                                  "weights within nbits_exact): nothing to lower for one token")
            if one_token_dims is None:
                raise SpikecError("the token axes of its one-token products are not all named axes of the graph inputs "
                                  "(a fixed size, an unnamed axis or no shape): a one-token call could not be told apart")
            for g in groups.values():
                enc = self.absorbable_encoder(g)
                if enc is not None:
                    self._absorbed[id(g[0])] = enc
            self.pin_token_dims(one_token_dims)
        absorbed = {id(enc) for enc in self._absorbed.values()}
        for node in list(self.graph):
            if node.domain != sops.DOMAIN or id(node) in followers or id(node) in absorbed:
                continue
            count += 1
            self._pending, self._stat_outputs = [], []
            group, every_token = first.get(id(node), (None, False))
            new_values = self.nbits_group(group, every_token) if group else self.lower(node)
            calls = [n for n in self._pending if n.domain == DOMAIN]
            for i, n in enumerate(calls):
                # keep the layer's name on its call, for dumps and stats; a QuantLinear's
                # encoder call (before its product) gets its own, as node names must be unique
                n.name = node.name if i == len(calls) - 1 else f"{node.name}/{n.op_type}"
            ir.convenience.replace_nodes_and_values(
                self.graph, node, [node], self._pending, list(node.outputs), new_values[:1] if group else new_values
            )
            for v in new_values:  # the replacement took the int32 codes' type
                if id(v) in self._u8_codes:
                    v.type = ir.TensorType(ir.DataType.UINT8)
            for other, value in zip(group[1:] if group else [], new_values[1:]):
                count += 1  # its product is an output of the group's call
                ir.convenience.replace_nodes_and_values(self.graph, other, [other], [], list(other.outputs), [value])
            for stat in self._stat_outputs:
                self.graph.outputs.append(stat)
                self.stats.append(stat.name)
            enc = self._absorbed.get(id(node))
            if enc is not None:  # its outputs' only readers were just replaced
                self.graph.remove(enc, safe=True)
                count += 1
        for w in self._viewed:  # weights now read only through their group views: one copy
            if (not w.uses() and not w.is_graph_output() and not w.is_graph_input()
                    and self.graph.initializers.get(w.name) is w):
                self.graph.initializers.pop(w.name)
        self.model.opset_imports[DOMAIN] = VERSION
        self.model.opset_imports.pop(sops.DOMAIN, None)
        if any(o.domain == "com.microsoft" for fp in self.functions.values() for o in fp.opset_import):
            self.model.opset_imports.setdefault("com.microsoft", 1)
        if self.ortops and (any(n.domain == ORTOPS_DOMAIN for n in self.graph)
                            or any(o.domain == ORTOPS_DOMAIN for fp in self.functions.values() for o in fp.opset_import)):
            self.model.opset_imports[ORTOPS_DOMAIN] = ORTOPS_VERSION
        for fp in self.functions.values():
            f = ir.serde.deserialize_function(fp)
            self.model.functions[f.identifier()] = f
        return LoweringStats(count, tuple(self.stats), self.layers, one_token_dims, tuple(self._modality_inputs),
                             tuple(self.names))

    def one_token_dims(self, groups: list[list[ir.Node]]) -> tuple[str, ...] | None:
        """LoweringStats.one_token_dims for the one-token-capable product groups."""
        if not groups:
            return None
        names: list[str] = []
        for g in groups:
            dims = self.token_dims(g[0].inputs[0])
            if dims is None:
                return None
            names += [d for d in dims if d not in names]
        on_inputs = {d.value for v in self.graph.inputs if v.shape is not None
                     for d in v.shape if isinstance(d, ir.SymbolicDim)}
        return tuple(names) if names and set(names) <= on_inputs else None

    def pin_token_dims(self, dims: tuple[str, ...]) -> None:
        """Graph inputs' token axes `dims` become 1: onnxruntime then refuses a call of more
        tokens (this lowering's products take one) and folds the shapes that follow."""
        for v in self.graph.inputs:
            if v.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value in dims for d in v.shape):
                v.shape = ir.Shape([1 if isinstance(d, ir.SymbolicDim) and d.value in dims else d for d in v.shape])


def lower_for_ort(model: ir.Model, mode: str = "fused", nbits: bool = True, in_place: bool = False,
                  one_token: bool = False, ortops: bool = False, weight_copies: bool = True) -> LoweringStats:
    """Rewrite every spikec node of `model` in place into spikec.ort function calls.

    nbits (fused mode): one-token products with 4-bit weights and codes |q| <= 127 run on
    MatMulNBits where that is exact (nbits_exact); False keeps the integer products
    (MatMulIntegerToFloat, or MatMulInteger for digit groups, rate IF and group-wise scales)
    everywhere.
    in_place (for models whose weights must stay where they lie in the .sbin): products
    whose weights are packed 4-bit codes (int4.PackedInt4Tensor) run on MatMulNBits for
    every token count, so their int8 form is never made; int8-stored weights keep the
    integer products (no 4-bit copy is made of them).
    one_token (fused, nbits): a graph only ever run on one token (batch 1: a decode step).
    Its one-token products take MatMulNBits without the If on the token count and their
    int8 weights are left out; an encoder read only by such a product group is lowered
    with it as one call (_one_token_nbits_fn); the token axes (LoweringStats.one_token_dims)
    of the graph inputs become 1, so onnxruntime refuses more tokens. Raises SpikecError
    where no product takes that path (one_token_dims would be None). The same bits as
    the default lowering run on one token.
    ortops (fused mode; the session must then register runtime/ortops/'s library): spikec's
    own onnxruntime custom ops, the same bits in fewer passes and nodes. With one_token,
    each such encoder and product group becomes one spikec.ortops.SpikeEncodeMatMulNBits
    node per product (instead of about fifteen nodes); every product on
    MatMulIntegerToFloat by a constant weight is, with its scales and bias, one
    spikec.ortops.SpikeMatMulIntegerToFloat node (no pass over the product after the
    GEMM, where the stock graph takes two or three), and an encoder giving such
    products uint8 codes is one spikec.ortops.SpikeEncodeU8 node (two reads of x).
    weight_copies=False (ortops): no op that holds a copy of a weight, as
    SpikeMatMulIntegerToFloat holds each weight packed for its kernel (the runtime's
    "in-place" weight policy, where nothing may be copied: those products stay on
    MatMulIntegerToFloat, which then reads the weight where it lies)."""
    return _Lowerer(model, mode, nbits, in_place, one_token, ortops, weight_copies).run()
