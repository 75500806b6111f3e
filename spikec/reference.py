"""Numeric reference: the executable form of SEMANTICS.md sections 1-3, and of the
vector-unit numerics (norms, softmax, SiLU, GELU, RoPE; docs/isa.md section 4) that every
target uses where SEMANTICS.md section 5 leaves the choice to the project.

Every other target (ONNX Runtime graphs, the instruction-set simulator, the RTL) is
checked bit for bit against this module, so it is plain numpy that spells out every
rounding, every integer width and every float32 operation order.

Codes. A b-bit symmetric code has Qb = 2**(b-1) - 1 and
    q = clamp(rint(float32(x) / float32(s)), -Qb, +Qb)      rint: half to even,
one float32 division then rounding, as ONNX QuantizeLinear does, so imported QDQ
graphs agree bit for bit. Scales are max|.| / Qb in float32, per tensor, per token
(last axis) or per output channel of a [K, N] MatMul weight (column j). A slice that
is all zero gets scale 1.0 (ZERO_RANGE_SCALE): a zero scale would divide by zero, and
1.0 codes it as 0. The same fallback serves a static scale whose calibrated clip is 0
(a layer silent on the calibration data): `static_scale` is the one definition every
target uses (spikec.ops, spikec/ort_lowering.py, passes/lower_isa.py, the report).

Non-finite activations (SEMANTICS.md is silent; this project's rule, docs/passes.md
"Non-finite activations"). A token whose activation row x[..., i, :] entering a spiking
product holds NaN, +inf or -inf -- with a dynamic or a static scale -- is encoded as
code 0 on every element (no spikes) with scale NaN, so its whole output row
y[..., i, :] = (float32(acc) * NaN) * s_w + bias is NaN; the other tokens are
unaffected. The right operand of an attention product has one per-tensor scale: a
non-finite value anywhere in it gives code 0 everywhere and scale NaN, so the whole
product is NaN. `encode_tokens` / `encode_tensor` implement the rule; `quantize` itself
still refuses NaN (it is the raw code of one value, also used for weights).

TC-LIF. T timesteps carry |q| <= 2**T - 1 (b = T + 1 bits) as ternary int8 planes,
MSB first, plane t weighted 2**(T-1-t): q = sum_t 2**(T-1-t) * S_t.
Rate IF. b bits take 2**b - 1 binary uint8 planes of the offset code
c = q + 2**(b-1); the offset is folded into the accumulator as
-2**(b-1) * sum_k W_q[k, j].

Spiking product. acc <- 2*acc + S_t @ W_q (Horner, MSB first) in int32 numpy
arithmetic, which wraps as hardware would; check_overflow rejects
K * (2**T - 1) * Qw > 2**31 - 1, so it never wraps and equals q @ W_q exactly.
A token with T_i < T_max has zero planes at the top (it starts later).

Float32 order of operations for a linear layer (fixed; every target matches it):
    q   = quantize(x, s_x, 2**T_i - 1)          per-token code width
    acc = spike_matmul(q, W_q, T)               int32, exact
    y   = (float32(acc) * s_x) * s_w[None, :]   two float32 multiplies, in this order
    y   = y + bias                              float32, only when bias is given
float32(acc) rounds half to even once |acc| > 2**24; that rounding is part of the
contract, not an error.
"""

from __future__ import annotations

import numpy as np

from spikec.errors import SpikecError

INT32_MAX = 2**31 - 1
MAX_CODE_T = INT32_MAX.bit_length()  # 31: codes |q| <= 2**T - 1 fit int32, the functions' bound
MAX_T = 16  # the largest timesteps spikec compiles (codes of up to 17 bits; static clip tables)
ZERO_RANGE_SCALE = np.float32(1.0)  # the scale of an all-zero range (dynamic row or static clip 0)


# ---------------------------------------------------------------- validation helpers


def _fail(op: str, where: str, msg: str) -> SpikecError:
    return SpikecError(f"{op}{f' at {where}' if where else ''}: {msg}")


def _codes(a, op: str, where: str, name: str = "q") -> np.ndarray:
    """Integer codes as int64, so validation arithmetic itself cannot wrap."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise _fail(op, where, f"{name} must hold integer codes, got dtype {a.dtype}")
    return a.astype(np.int64)


def _int_param(v, lo: int, hi: int, op: str, where: str, name: str) -> np.ndarray:
    """An int (or int array) parameter such as T or bits, checked to lie in [lo, hi]."""
    a = np.asarray(v)
    if a.dtype.kind not in "iu" or (a.size and (a.min() < lo or a.max() > hi)):
        raise _fail(op, where, f"{name} must be integers in {lo}..{hi}, got {v!r}")
    return a.astype(np.int64)


def _token_T(T_tokens, tokens: tuple, op: str, where: str) -> np.ndarray:
    """Per-token timesteps broadcast to the token shape [..., N]; a scalar broadcasts."""
    T = _int_param(T_tokens, 1, MAX_CODE_T, op, where, "T_tokens")
    try:
        return np.broadcast_to(T, tokens)
    except ValueError:
        raise _fail(op, where, f"T_tokens {T.shape} does not match tokens {tokens}") from None


def _check_range(q: np.ndarray, bound, op: str, where: str, what: str) -> None:
    bound = np.broadcast_to(bound, q.shape)
    bad = np.abs(q) > bound
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise _fail(op, where, f"code {q[i]} at index {i} exceeds +-{bound[i]} ({what})")


def _check_matmul(q: np.ndarray, w: np.ndarray, op: str, where: str) -> None:
    if q.ndim < 2 or w.ndim < 2 or q.shape[-1] != w.shape[-2]:
        raise _fail(op, where, f"cannot multiply q {q.shape} by w_q {w.shape}")
    try:
        np.broadcast_shapes(q.shape[:-2], w.shape[:-2])
    except ValueError:
        raise _fail(op, where, f"batch dims of q {q.shape} and w_q {w.shape} differ") from None
    if w.size and np.abs(w).max() > INT32_MAX:
        raise _fail(op, where, "w_q codes do not fit int32")


def _amax(a: np.ndarray) -> int:
    return int(np.abs(a).max()) if a.size else 0


# ---------------------------------------------------------------- codes and scales


def qmax(bits: int) -> int:
    """Largest symmetric b-bit code, 2**(bits-1) - 1."""
    return int(2 ** (int(_int_param(bits, 2, 32, "qmax", "", "bits")) - 1) - 1)


def _qmax_of(bits, op: str, where: str):
    """qmax for an int or an array of per-token bits (int64 array, exact)."""
    b = _int_param(bits, 2, 32, op, where, "bits")
    return (np.int64(1) << (b - 1)) - 1


def quantize(x, scale, qmax, where: str = "") -> np.ndarray:
    """q = clamp(rint(x / scale), -qmax, +qmax) as int32; scale and qmax broadcast."""
    op = "quantize"
    x = np.asarray(x, dtype=np.float32)  # ORT QuantizeLinear takes float32 input
    s = np.asarray(scale, dtype=np.float32)
    qm = _int_param(qmax, 0, INT32_MAX, op, where, "qmax")
    try:
        out_shape = np.broadcast_shapes(x.shape, s.shape, qm.shape)
    except ValueError:
        out_shape = None
    if out_shape != x.shape:
        raise _fail(op, where, f"scale {s.shape} / qmax {qm.shape} do not broadcast to x {x.shape}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise _fail(op, where, "scale must be finite and > 0")
    if np.isnan(x).any():
        raise _fail(op, where, "x contains NaN")  # +-inf saturate, as in ORT
    r = np.rint(x / s)  # float32 / float32, then half-to-even: exactly QuantizeLinear
    # Clamp in float64, where every int32 bound is exact (float32 cannot hold 2**31 - 1).
    return np.clip(r.astype(np.float64), -qm, qm).astype(np.int32)


def absmax_int(a) -> int:
    """max |a| of an integer array as a Python int (0 when empty), without a widened copy:
    a 2B model's int8 head would need 1.9 GB as int64. |-128| is 128, not int8's -128."""
    a = np.asarray(a)
    if a.size == 0:
        return 0
    return max(abs(int(a.max())), abs(int(a.min())))


def encode_tokens(x, s_x, qmax, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Activation codes under the non-finite rule: (q int32 [..., N, K], s float32).

    x [..., N, K]; s_x a scalar or per token [..., N, 1] (static or dynamic); qmax an int
    or per token [..., N, 1]. A token whose row of x holds NaN/+-inf, or whose scale is
    NaN, gets q = 0 on its whole row and s = NaN (returned as [..., N, 1]; a scalar s_x
    stays a scalar when every token is finite); every other token is
    quantize(x, s_x, qmax). Raises SpikecError (via quantize) for a scale that is
    +-inf, zero or negative, or shapes that do not broadcast.
    """
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(s_x, dtype=np.float32)
    if x.ndim < 1:
        raise _fail("encode_tokens", where, "x must have a last (feature) axis")
    bad = nonfinite_tokens(x)
    if s.ndim == x.ndim and s.shape[-1] == 1:
        bad = bad | np.isnan(s[..., 0])
    elif s.ndim == 0 and np.isnan(s):
        bad = np.ones_like(bad)
    if not bad.any():
        return quantize(x, s, qmax, where), s
    s_tok = np.broadcast_to(s, x.shape[:-1] + (1,)) if s.ndim in (0, x.ndim) else s
    keep_s = np.where(bad[..., None], np.float32(1.0), s_tok).astype(np.float32)
    q = quantize(np.where(bad[..., None], np.float32(0.0), x), keep_s, qmax, where)
    return q, np.where(bad[..., None], np.float32(np.nan), s_tok).astype(np.float32)


def encode_tensor(b, bits, where: str = "") -> tuple[np.ndarray, np.float32]:
    """Per-tensor dynamic code of an attention product's right operand: (q int32, s float32 []).

    s = max|b| / Qb (scale_per_tensor), q = quantize(b, s, Qb). Under the non-finite rule a
    NaN/+-inf anywhere in b gives q = 0 everywhere and s = NaN (the whole product is NaN).
    """
    b = np.asarray(b, dtype=np.float32)
    if b.size and not np.isfinite(b).all():
        return np.zeros(b.shape, np.int32), np.float32(np.nan)
    s = scale_per_tensor(b, bits)
    return quantize(b, s, qmax(bits), where), s


def dequantize(q, scale) -> np.ndarray:
    """float32(q) * float32(scale)."""
    return np.asarray(q).astype(np.float32) * np.asarray(scale, dtype=np.float32)


def _scale(amax: np.ndarray, q_max, op: str) -> np.ndarray:
    if not np.all(np.isfinite(amax)):
        raise SpikecError(f"{op}: input contains inf or NaN")
    s = amax.astype(np.float32) / np.asarray(q_max).astype(np.float32)
    # An all-zero (or denormal, where s underflows) slice gets 1.0: it codes as 0.
    return np.where(s > 0, s, ZERO_RANGE_SCALE).astype(np.float32)


def static_scale(clip, T) -> np.ndarray:
    """float32 static activation scale from a calibrated clip at T timesteps:
    s = float32(clip) / float32(2**T - 1), elementwise over broadcast clip and T.

    The one definition of the fallback for a layer silent on the calibration data:
    clip 0 (or a quotient that underflows to 0; a positive subnormal one is kept) gives
    ZERO_RANGE_SCALE = 1.0, as an all-zero row
    does with a dynamic scale (the compiler warns, naming the layer). A NaN clip (no
    calibration token of that modality) stays NaN; callers refuse it.
    """
    c = np.asarray(clip, dtype=np.float32)
    T = np.asarray(T, dtype=np.int64)
    s = (c / ((np.int64(1) << T) - 1).astype(np.float32)).astype(np.float32)
    return np.where(np.isnan(s) | (s > 0), s, ZERO_RANGE_SCALE).astype(np.float32)


def nonfinite_tokens(x) -> np.ndarray:
    """bool [...]: True for each row (last axis) of x that holds NaN, +inf or -inf."""
    x = np.asarray(x, dtype=np.float32)
    return ~np.isfinite(x).all(axis=-1)


def scale_per_tensor(x, bits) -> np.float32:
    """One float32 scale: max|x| / Qb."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        raise SpikecError("scale_per_tensor: empty tensor")
    q_max = _qmax_of(bits, "scale_per_tensor", "")
    return np.float32(_scale(np.abs(x).max(), q_max, "scale_per_tensor"))


def scale_per_token(x, bits) -> np.ndarray:
    """float32 [..., N, 1]: max over the last axis / Qb. bits: int, or per token [..., N].

    A row holding NaN or +-inf gets scale NaN (the non-finite rule in the module doc)."""
    x = np.asarray(x, dtype=np.float32)
    q_max = _qmax_of(bits, "scale_per_token", "")
    bad = nonfinite_tokens(x)[..., None]
    amax = np.where(bad, np.float32(0.0), np.abs(x).max(axis=-1, keepdims=True, initial=0.0))
    s = _scale(amax, q_max[..., None], "scale_per_token")
    return np.where(bad, np.float32(np.nan), s).astype(np.float32)


def scale_per_channel(w, bits) -> np.ndarray:
    """float32 [..., N] for a MatMul weight [..., K, N]: s_w[j] = max_k |W[k, j]| / Q."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim < 2:
        raise SpikecError(f"scale_per_channel: weight must be [K, N], got shape {w.shape}")
    q_max = _qmax_of(bits, "scale_per_channel", "")
    return _scale(np.abs(w).max(axis=-2), q_max, "scale_per_channel")


# ---------------------------------------------------------------- spike encodings


def tclif_encode(q, T: int, where: str = "") -> np.ndarray:
    """Ternary TC-LIF planes int8 [T, *q.shape], MSB first: sum_t 2**(T-1-t) * planes[t] == q."""
    op = "tclif_encode"
    q = _codes(q, op, where)
    T = int(_int_param(T, 1, MAX_CODE_T, op, where, "T"))
    _check_range(q, 2**T - 1, op, where, f"2**T - 1 for T={T}")
    shift = np.arange(T - 1, -1, -1).reshape((T,) + (1,) * q.ndim)  # bit T-1-t at step t
    digits = (np.abs(q)[None] >> shift) & 1  # binary digits of |q|, MSB first
    return (np.sign(q)[None] * digits).astype(np.int8)


def tclif_neuron(q, T: int, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The neuron view of SEMANTICS.md section 2, step by step; only used to prove
    tclif_encode. Returns (planes int8 [T, ...], final membrane int32, all zero)."""
    op = "tclif_neuron"
    u = _codes(q, op, where)  # membrane u_0 = q
    T = int(_int_param(T, 1, MAX_CODE_T, op, where, "T"))
    _check_range(u, 2**T - 1, op, where, f"2**T - 1 for T={T}")
    planes = np.empty((T,) + u.shape, dtype=np.int8)
    for t in range(T):
        theta = 2 ** (T - 1 - t)
        s = np.sign(u) * (np.abs(u) >= theta)  # fire with the membrane's sign
        planes[t] = s
        u = u - s * theta  # soft reset: subtract what the spike carried
    return planes, u.astype(np.int32)


def tclif_encode_tokens(q, T_tokens, where: str = "") -> np.ndarray:
    """Planes int8 [T_max, ..., N, K] for codes q [..., N, K] with per-token T [..., N]
    (a scalar broadcasts). Token i's own T_i planes sit at the bottom; the T_max - T_i
    planes above them are zero, so the token simply starts later."""
    op = "tclif_encode_tokens"
    q = _codes(q, op, where)
    if q.ndim < 1:
        raise _fail(op, where, "q must have a last (feature) axis")
    T = _token_T(T_tokens, q.shape[:-1], op, where)
    # Checked per token here so the message names the offending token's own bound.
    _check_range(q, ((np.int64(1) << T) - 1)[..., None], op, where, "2**T_i - 1 of its token")
    T_max = int(T.max()) if T.size else 1
    planes = np.zeros((T_max,) + q.shape, dtype=np.int8)
    for Ti in np.unique(T):
        rows = T == Ti
        planes[T_max - Ti :, rows] = tclif_encode(q[rows], int(Ti), where)
    return planes


def rate_if_offset_code(q, bits: int, where: str = "", op: str = "rate_if_offset_code") -> np.ndarray:
    """The rate-IF spike count c = q + 2**(bits-1), int64 like q, of symmetric b-bit codes
    (|q| <= 2**(bits-1) - 1, else SpikecError), so c lies in [1, 2**bits - 1]."""
    q = _codes(q, op, where)
    Qb = int(_qmax_of(bits, op, where))
    _check_range(q, Qb, op, where, f"2**(bits-1) - 1 for bits={bits}")
    return q + (Qb + 1)


def rate_if_encode(q, bits: int, where: str = "") -> np.ndarray:
    """Rate-IF planes uint8 [2**bits - 1, *q.shape]: s_t = 1 for t < c = q + 2**(bits-1)."""
    c = rate_if_offset_code(q, bits, where, op="rate_if_encode")
    t = np.arange(2 ** int(bits) - 1).reshape((-1,) + (1,) * c.ndim)
    return (t < c[None]).astype(np.uint8)


def wrap_int32(a) -> np.ndarray:
    """int32 of integers `a` reduced mod 2**32 to [-2**31, 2**31): what int32 adds give."""
    return ((np.asarray(a, dtype=np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def rate_if_accumulate(c, w_q) -> np.ndarray:
    """The rate-IF accumulation int32 [..., N, M] of spike counts c [..., N, K] (c >= 0)
    through w_q [..., K, M]: the binary planes s_t = [t < c], each through W_q, summed.
    That sum is c @ W_q; it is computed exactly in int64 and reduced mod 2**32, which is
    what int32 accumulation in any plane order gives (the hardware's adders wrap; the
    compiler's check_overflow proves no wrap occurs). The one definition every target uses
    (spikec.ops, the simulator)."""
    return wrap_int32(np.asarray(c, dtype=np.int64) @ np.asarray(w_q, dtype=np.int64))


def rate_if_bias_fold(w_q, bits: int) -> np.ndarray:
    """int32 [..., N]: -2**(bits-1) * sum_k W_q[k, j], removing the rate-IF offset."""
    w = _codes(w_q, "rate_if_bias_fold", "", "w_q")
    fold = -(int(_qmax_of(bits, "rate_if_bias_fold", "")) + 1) * w.sum(axis=-2)
    if np.abs(fold).max(initial=0) > INT32_MAX:
        raise SpikecError("rate_if_bias_fold: folded bias does not fit int32")
    return fold.astype(np.int32)


# ---------------------------------------------------------------- products


def overflow_free(K: int, T: int, w_qmax: int) -> bool:
    """True when K * (2**T - 1) * w_qmax fits int32. This bounds |q @ W_q| and every
    Horner partial sum (each is a prefix of the code's bits, so no larger)."""
    return int(K) * (2 ** int(T) - 1) * int(w_qmax) <= INT32_MAX


def check_overflow(K: int, T: int, w_qmax: int, where: str = "") -> None:
    """Raise SpikecError when an int32 accumulator could overflow for this shape."""
    if not overflow_free(K, T, w_qmax):
        bound = int(K) * (2 ** int(T) - 1) * int(w_qmax)
        raise SpikecError(
            f"{where or 'matmul'}: int32 accumulator can overflow: K={K} * (2**{T} - 1) * "
            f"Qw={w_qmax} = {bound} > 2**31 - 1; lower T (--tv/--tt) or the weight bits (--wbits 4)"
        )


def horner(planes: np.ndarray, w: np.ndarray) -> np.ndarray:
    """acc <- 2*acc + S_t @ W in int32: numpy wraps silently like hardware, so the
    guard, not int64, is what keeps the result exact."""
    w32 = w.astype(np.int32)
    acc = planes[0].astype(np.int32) @ w32
    for plane in planes[1:]:
        acc = np.int32(2) * acc + plane.astype(np.int32) @ w32
    return acc


def spike_matmul(q, w_q, T_tokens, where: str = "") -> np.ndarray:
    """Bit-serial TC-LIF product int32 [..., N, M] of q [..., N, K] and w_q [..., K, M]
    with per-token timesteps T_tokens [..., N] (a scalar broadcasts). Equals q @ w_q."""
    op = "spike_matmul"
    q, w = _codes(q, op, where), _codes(w_q, op, where, "w_q")
    _check_matmul(q, w, op, where)
    planes = tclif_encode_tokens(q, T_tokens, where)
    # The data's own max |W_q| is the tightest bound that still proves no wrap; the
    # compiler applies check_overflow with the format's Qw (127 or 7) instead.
    check_overflow(q.shape[-1], planes.shape[0], _amax(w), where or op)
    return horner(planes, w)


def rate_if_matmul(q, w_q, bits: int, where: str = "") -> np.ndarray:
    """Rate-IF product int32: sum_t S_t @ W_q over 2**bits - 1 planes, plus the folded
    offset bias. Equals q @ w_q."""
    op = "rate_if_matmul"
    q, w = _codes(q, op, where), _codes(w_q, op, where, "w_q")
    _check_matmul(q, w, op, where)
    c = rate_if_offset_code(q, bits, where, op=op)
    # The plane sum is c @ W with c <= 2**bits - 1: the TC-LIF bound with T = bits.
    check_overflow(q.shape[-1], bits, _amax(w), where or op)
    return rate_if_accumulate(c, w) + np.expand_dims(rate_if_bias_fold(w, bits), -2)


def integer_matmul(q, w_q, where: str = "") -> np.ndarray:
    """Plain q @ w_q in int64, then a checked cast to int32: the fake-quantized path."""
    op = "integer_matmul"
    q, w = _codes(q, op, where), _codes(w_q, op, where, "w_q")
    _check_matmul(q, w, op, where)
    acc = q @ w
    if np.abs(acc).max(initial=0) > INT32_MAX:
        raise _fail(op, where, "result does not fit int32")
    return acc.astype(np.int32)


def weight_group_size(K: int, s_w_shape, where: str = "") -> int:
    """Rows per weight-scale group of a [K, M] weight whose scales have shape `s_w_shape`:
    K for per-output-channel scales [M]; K // n for group-wise scales [n, M], group g covering
    input rows g*G .. (g+1)*G - 1 (contiguous, as GPTQ's and AWQ's `group_size` without
    act-order; SEMANTICS.md section 3 as extended in docs/passes.md, "Group-wise weight
    scales"). SpikecError naming `where` unless n >= 1 divides K."""
    shape = tuple(int(d) for d in s_w_shape)
    if len(shape) == 1:
        return int(K)
    if len(shape) != 2 or shape[0] < 1 or int(K) % shape[0]:
        raise SpikecError(f"{where or 'weight scales'}: s_w must be [M] (per output channel) or [n_groups, M] "
                          f"with n_groups dividing K={K}; got shape {list(shape)}")
    return int(K) // shape[0]


def grouped(product, q, w, group_size: int) -> np.ndarray:
    """int32 [n_groups, ..., N, M]: `product(q_g, w_g)` of each group of `group_size`
    input rows (q [..., N, K], w [..., K, M]), in group order: the separate int32
    accumulators of a group-wise product."""
    K = np.shape(w)[-2]
    return np.stack([product(q[..., k:k + group_size], w[..., k:k + group_size, :]) for k in range(0, K, group_size)])


def dequantize_acc(acc, s_x, s_w, bias) -> np.ndarray:
    """float32 [..., N, M]: the one fixed float32 order from int32 accumulators to a layer's
    output (SEMANTICS.md section 3; every target computes exactly this).

    Per output channel (s_w [M], acc int32 [..., N, M]): y = (float32(acc) * s_x) * s_w,
    then y + bias. Group-wise (s_w [n, M], acc int32 [n, ..., N, M], one accumulator per
    group): t_g = (float32(acc[g]) * s_x) * s_w[g]; y = t_0 (+ bias), then y = y + t_g for
    g = 1 .. n-1 in ascending order. With n = 1 both are the same bits (IEEE addition is
    commutative), so the bias joins the first group, as the accelerator's DEQ adds it.
    s_x float32 scalar or [..., N, 1]; bias float32 [M] or None."""
    s_x = np.asarray(s_x, dtype=np.float32)
    s_w = np.asarray(s_w, dtype=np.float32)
    acc = np.asarray(acc)
    b = None if bias is None else np.asarray(bias, dtype=np.float32)
    if s_w.ndim < 2:
        y = (acc.astype(np.float32) * s_x) * s_w  # the fixed float32 order, left to right
        return y if b is None else y + b
    y = (acc[0].astype(np.float32) * s_x) * s_w[0]
    if b is not None:
        y = y + b
    for g in range(1, s_w.shape[0]):
        y = y + (acc[g].astype(np.float32) * s_x) * s_w[g]
    return y


def _linear(x, s_x, w_q, s_w, bias, T_tokens, where: str, op: str, spiking: bool):
    x = np.asarray(x, dtype=np.float32)
    w = _codes(w_q, op, where, "w_q")
    if x.ndim < 2:
        raise _fail(op, where, f"x must be [..., N, K], got shape {x.shape}")
    T = _token_T(T_tokens, x.shape[:-1], op, where)
    s_x = np.asarray(s_x, dtype=np.float32)
    if s_x.ndim not in (0, x.ndim) or (s_x.ndim and s_x.shape[-1] != 1):
        raise _fail(op, where, f"s_x must be a scalar or per token [..., N, 1], got {s_x.shape}")
    s_w = np.asarray(s_w, dtype=np.float32)
    if s_w.shape[-1:] != w.shape[-1:] or s_w.ndim > 2:
        raise _fail(op, where, f"s_w must be [{w.shape[-1]}] (per output channel) or [n_groups, {w.shape[-1]}], "
                    f"not {s_w.shape}")
    G = weight_group_size(w.shape[-2], s_w.shape, where or op)
    # b_i = T_i + 1 bits; a non-finite token codes as 0 with scale NaN (module doc)
    q, s_x = encode_tokens(x, s_x, ((np.int64(1) << T) - 1)[..., None], where)
    if spiking:
        product = lambda qg, wg: spike_matmul(qg, wg, T, where)  # noqa: E731
    else:
        _check_matmul(q, w, op, where)
        # Same guard as the spiking path, so both accept exactly the same inputs.
        check_overflow(x.shape[-1], int(T.max()) if T.size else 1, _amax(w), where or op)
        product = lambda qg, wg: integer_matmul(qg, wg, where)  # noqa: E731
    acc = product(q, w) if s_w.ndim < 2 else grouped(product, q, w, G)
    return dequantize_acc(acc, s_x, s_w, bias)


def spiking_linear(x, s_x, w_q, s_w, bias, T_tokens, where: str = "") -> np.ndarray:
    """float32 [..., N, M]: quantize x per token width 2**T_i - 1, spike_matmul, dequantize."""
    return _linear(x, s_x, w_q, s_w, bias, T_tokens, where, "spiking_linear", spiking=True)


def fake_quant_linear(x, s_x, w_q, s_w, bias, T_tokens, where: str = "") -> np.ndarray:
    """The same layer through integer_matmul (the fake-quantized ANN path); bit-identical
    to spiking_linear."""
    return _linear(x, s_x, w_q, s_w, bias, T_tokens, where, "fake_quant_linear", spiking=False)


# ---------------------------------------------------------------- vector-unit numerics
# The float32 functions of the vector unit (docs/isa.md section 4), defined once for every
# target: the simulator executes them, the RTL is co-simulated against them, and the
# VecRMSNorm / VecLayerNorm / VecSoftmax / VecSiLU ops of spikec.ops (the host side of the
# same functions, on the reference evaluator and, spelled out in stock ONNX ops, on ONNX
# Runtime) compute them, so a norm or softmax that feeds a quantizer gives the same codes
# on every target.
# Every operation below is one IEEE-754 binary32 operation with round-to-nearest-even
# (numpy float32 arithmetic; no fused multiply-add; subnormals kept), in exactly the
# order written. docs/isa.md states the same definitions for the RTL.

F32 = np.float32

REDUCE_LANES = 16  # sums use 16 partial sums: element j goes to lane j % 16
EXP_LOG2E = F32(1.44269504088896341)
EXP_LN2_HI = F32(0.693359375)  # 9 significant bits: k * LN2_HI is exact for |k| <= 150
EXP_LN2_LO = F32(-2.12194440e-4)
EXP_POLY = tuple(F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
EXP_CLAMP = (F32(-104.0), F32(89.0))
GELU_C0 = F32(0.7978845608028654)  # sqrt(2 / pi)
GELU_C1 = F32(0.044715)


@np.errstate(all="ignore")
def vec_sum(x: np.ndarray) -> np.ndarray:
    """Row sums of float32 [n, len]: lane l accumulates x[:, l], x[:, l+16], ... in order from
    +0.0; then the 16 lane sums are added in lane order 0..15."""
    n, length = x.shape
    chunks = -(-length // REDUCE_LANES)
    pad = np.zeros((n, chunks * REDUCE_LANES), F32)
    pad[:, :length] = x
    pad = pad.reshape(n, chunks, REDUCE_LANES)
    lanes = np.zeros((n, REDUCE_LANES), F32)
    for c in range(chunks):
        lanes = lanes + pad[:, c]
    total = lanes[:, 0]
    for lane in range(1, REDUCE_LANES):
        total = total + lanes[:, lane]
    return total


@np.errstate(all="ignore")
def vec_exp(x: np.ndarray) -> np.ndarray:
    """exp in float32 (Cephes expf's reduction and polynomial): clamp to [-104, 89];
    k = rint(x * log2e); r = (x - k*LN2_HI) - k*LN2_LO; z = r*r;
    p = Horner of EXP_POLY in r; y = ((p*z) + r) + 1; result y * 2**k with one rounding
    (ldexp). NaN propagates; -inf gives +0, +inf gives +inf."""
    x = np.asarray(x, F32)
    xc = np.clip(x, *EXP_CLAMP)
    nan = np.isnan(xc)
    xc = np.where(nan, F32(0), xc)
    k = np.rint(xc * EXP_LOG2E)
    r = (xc - k * EXP_LN2_HI) - k * EXP_LN2_LO
    z = r * r
    p = np.full_like(r, EXP_POLY[0])
    for c in EXP_POLY[1:]:
        p = p * r + c
    y = ((p * z) + r) + F32(1)
    out = np.ldexp(y, k.astype(np.int32)).astype(F32)
    return np.where(nan, x, out)


@np.errstate(all="ignore")
def vec_rsqrt(v: np.ndarray) -> np.ndarray:
    """1 / sqrt(v): IEEE square root, then IEEE division (two roundings)."""
    return F32(1) / np.sqrt(np.asarray(v, F32))


@np.errstate(all="ignore")
def vec_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=1, keepdims=True)
    e = vec_exp(x - m)
    return e / vec_sum(e)[:, None]


@np.errstate(all="ignore")
def vec_silu(x: np.ndarray) -> np.ndarray:
    return x / (F32(1) + vec_exp(-x))


@np.errstate(all="ignore")
def vec_gelu(x: np.ndarray) -> np.ndarray:
    """tanh GELU: u = c0 * (x + c1 * ((x*x)*x)); tanh(u) = 1 - 2 / (exp(u + u) + 1);
    y = (0.5 * x) * (1 + tanh(u))."""
    u = GELU_C0 * (x + GELU_C1 * ((x * x) * x))
    th = F32(1) - F32(2) / (vec_exp(u + u) + F32(1))
    return (F32(0.5) * x) * (F32(1) + th)


@np.errstate(all="ignore")
def vec_rmsnorm(x: np.ndarray, gamma: np.ndarray, eps: F32) -> np.ndarray:
    mean = vec_sum(x * x) / F32(x.shape[1])
    r = vec_rsqrt(mean + eps)
    return (x * r[:, None]) * gamma


@np.errstate(all="ignore")
def vec_layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: F32) -> np.ndarray:
    mu = vec_sum(x) / F32(x.shape[1])
    d = x - mu[:, None]
    var = vec_sum(d * d) / F32(x.shape[1])
    r = vec_rsqrt(var + eps)
    return ((d * r[:, None]) * gamma) + beta


@np.errstate(all="ignore")
def vec_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half rotary embedding (as Hugging Face's x*cos + rotate_half(x)*sin):
    y1 = (x1*c) - (x2*s), y2 = (x2*c) + (x1*s) for the halves x1, x2 of each row."""
    h = x.shape[1] // 2
    x1, x2 = x[:, :h], x[:, h:]
    return np.concatenate([(x1 * cos) - (x2 * sin), (x2 * cos) + (x1 * sin)], axis=1)
