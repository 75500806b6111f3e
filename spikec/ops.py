"""The spikec op domain: op names, attribute schema, invariants and a reference executor.

Every spiking op lives in the ONNX domain `spikec` (opset version 1). The ops come in
two forms, both defined here once:

Quantized form (after the `quantize` / `import-qdq` passes), the fake-quantized ANN:

    spikec::QuantLinear(x, modality?, W_q, s_w, bias?) -> y
        x [..., N, K] float; modality int64 [...] (optional, see below); W_q int8 [K, M]
        (int4 codes are stored in int8, |W_q| <= 7); s_w float32 [M] (per output channel) or
        [n_groups, M] (group-wise: group g covers rows g*K/n_groups .. (g+1)*K/n_groups - 1,
        one int32 accumulator each; tc-lif only); bias float32 [M].
        y = spikec.reference.fake_quant_linear(x, s_x, W_q, s_w, bias, T_tokens)
    spikec::QuantMatMul(a, b, modality?) -> y            (attention: both operands activations)
        a spikes (per-token dynamic scale, T_i + 1 bits), b is an integer code of `bbits`
        bits with one dynamic per-tensor scale: y = fake_quant_linear(a, s_a, q_b, s_b, ...).

Spiking form (after `spike-rewrite`):

    spikec::SpikeEncode(x, modality?) -> (q int32, s_x float32 [..., N, 1])
        the neuron's input code: q = quantize(x, s_x, 2**T_i - 1) with the same scale rule
        as QuantLinear; `neuron` says how the code becomes spikes (tc-lif: T_i ternary
        planes; if: 2**(T_i+1) - 1 binary planes of the offset code).
    spikec::SpikeCode(b) -> (q_b int32, s_b float32 [])  the integer code of an attention
        product's right operand (per-tensor dynamic scale, `bits` bits).
    spikec::SpikeMatMul(q, s_x, modality?, W_q, s_w, bias?, acc_bias?) -> y
        acc = the bit-serial spiking product (spikec.reference.spike_matmul for tc-lif;
        rate-IF planes summed plus the int32 offset fold `acc_bias[m(i)]` for if),
        y = spikec.reference.dequantize_acc(acc, s_x, s_w, bias): (float32(acc) * s_x) * s_w
        (+ bias); group-wise, the groups' terms added in ascending order after the first.

Per-modality attributes are lists indexed by modality id; the names are in the model's
metadata `spikec.modalities` (JSON list, default ["text", "vision"]), so a third
modality (audio) is one more list entry. A node whose graph has a per-token `modality`
input takes it as its optional second input; a graph without one (the vision encoder:
every token is vision) sets the node attribute `modality_id` to the constant id instead.

Static activation scales. `act_clip` is a table [n_modalities, CLIP_T] (row-major floats):
the clipping range for modality m at T timesteps is act_clip[m, T-1] and the scale is
s_m = float32(clip) / float32(2**T - 1) (spikec.reference.static_scale: a clip of 0, a layer
silent on the calibration data, gives the fallback scale 1.0, as an all-zero row does with
a dynamic scale). Max and percentile calibration give the same clip for every T; MSE
calibration gives one per T. A modality that calibration never saw has NaN clips: the
quantize pass refuses that for every modality the graph can carry, and the reference (and
the fpga target) refuse a token of such a modality at run time. Dynamic scales:
s_i = max_k |x_ik| / (2**T_i - 1) (spikec.reference.scale_per_token with T_i + 1 bits).

Non-finite activations: a token whose input row holds NaN or +-inf is encoded as code 0
with scale NaN, so its output row is NaN (spikec.reference.encode_tokens; docs/passes.md).

`run_reference(model, feeds)` runs any graph (standard ops and spikec ops) on
onnx.reference.ReferenceEvaluator; the spikec kernels call spikec.reference.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from spikec import int4
from spikec import ir as spir
from spikec import reference as R
from spikec import vector
from spikec.errors import SpikecError

DOMAIN = "spikec"
VERSION = 1
DEFAULT_MODALITIES = ("text", "vision")
# the LM's `modality` input values of those modalities (an export's manifest "modality"
# table). Append new modalities (e.g. "audio": 2); never renumber.
MODALITY_IDS = {name: i for i, name in enumerate(DEFAULT_MODALITIES)}
MODALITIES_KEY = "spikec.modalities"
MAX_T = R.MAX_T  # the largest timesteps the compiler accepts (one definition: spikec.reference)
CLIP_T = MAX_T  # static clip tables cover every compilable T = 1..CLIP_T
NEURONS = ("tc-lif", "if")
ACT_SCALES = ("static", "dynamic")

QUANT_LINEAR = "QuantLinear"
QUANT_MATMUL = "QuantMatMul"
SPIKE_ENCODE = "SpikeEncode"
SPIKE_CODE = "SpikeCode"
SPIKE_MATMUL = "SpikeMatMul"
OP_TYPES = (QUANT_LINEAR, QUANT_MATMUL, SPIKE_ENCODE, SPIKE_CODE, SPIKE_MATMUL)
# Ops that carry `timesteps` (and whose T the msts pass sets).
TIMED_OPS = (QUANT_LINEAR, QUANT_MATMUL, SPIKE_ENCODE, SPIKE_MATMUL)


# ---------------------------------------------------------------- model-level helpers


def modalities(model: ir.Model) -> list[str]:
    """The model's modality names (metadata MODALITIES_KEY, a JSON list of strings; the
    defaults when absent). SpikecError when the metadata is not such a list."""
    return list(_modality_names(model.metadata_props.get(MODALITIES_KEY)))


def _modality_names(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return tuple(DEFAULT_MODALITIES)
    from spikec.schema import parse_json

    names = parse_json(raw, where=f"graph metadata '{MODALITIES_KEY}'")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise SpikecError(f"graph metadata '{MODALITIES_KEY}': expected a non-empty JSON list of names, got {raw[:80]!r}")
    return tuple(names)


def set_modalities(model: ir.Model, names: Sequence[str]) -> None:
    model.metadata_props[MODALITIES_KEY] = json.dumps(list(names))


def ensure_opset(model: ir.Model) -> None:
    model.opset_imports[DOMAIN] = VERSION
    if MODALITIES_KEY not in model.metadata_props:
        set_modalities(model, DEFAULT_MODALITIES)


def is_spikec(node: ir.Node, *op_types: str) -> bool:
    return node.domain == DOMAIN and (not op_types or node.op_type in op_types)


def spikec_nodes(model: ir.Model, *op_types: str) -> list[ir.Node]:
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if is_spikec(n, *op_types)]


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    a = node.attributes.get(name)
    return default if a is None else a.value


def get_timesteps(node: ir.Node) -> list[int]:
    """T per modality of a spikec node (its `timesteps` ints); SpikecError when the attribute
    is of another kind (a graph from a file may hold anything)."""
    value = attr(node, "timesteps", [])
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, (int, np.integer)) for t in value):
        raise SpikecError(f"node '{node.name}': attribute 'timesteps' must be a list of ints, got {type(value).__name__}")
    return [int(t) for t in value]


def set_timesteps(node: ir.Node, timesteps: Sequence[int], model: ir.Model | None = None) -> None:
    """Set a node's per-modality T; refresh what depends on it (the rate-IF offset fold)."""
    node.attributes["timesteps"] = ir.AttrInt64s("timesteps", [int(t) for t in timesteps])
    if is_spikec(node, SPIKE_MATMUL) and attr(node, "neuron") == "if" and len(node.inputs) > 6 and node.inputs[6] is not None:
        w = node.inputs[3].const_value.numpy()
        fold = if_offset_table(w, timesteps, attr(node, "act_zero_point", 0) if attr(node, "act_unsigned") else None)
        node.inputs[6].const_value = ir.Tensor(fold, name=node.inputs[6].name)


def if_offset_table(w_q: np.ndarray, timesteps: Sequence[int], zero_point: int | None = None) -> np.ndarray:
    """int32 [n_modalities, M]: the rate-IF offset fold for codes of T_m + 1 bits
    (or, for an imported unsigned code with zero point z, -z * sum_k W_q[k, j] for every modality)."""
    if zero_point is not None:
        fold = -int(zero_point) * np.asarray(w_q).astype(np.int64).sum(axis=-2)
        if np.abs(fold).max(initial=0) > R.INT32_MAX:
            raise SpikecError("rate-IF offset fold does not fit int32")
        return np.stack([fold] * len(timesteps)).astype(np.int32)
    return np.stack([R.rate_if_bias_fold(w_q, int(t) + 1) for t in timesteps]).astype(np.int32)


def clip_table(node: ir.Node, n_mod: int) -> np.ndarray:
    clip = np.asarray(attr(node, "act_clip", []), dtype=np.float32)
    if clip.size != n_mod * CLIP_T:
        raise SpikecError(f"node '{node.name}': act_clip has {clip.size} entries, expected {n_mod} x {CLIP_T}")
    return clip.reshape(n_mod, CLIP_T)


# ---------------------------------------------------------------- shared kernels


def token_modality(mod: np.ndarray | None, const: int, lead: tuple, where: str) -> np.ndarray:
    """Modality id per token, shaped like the activation's leading dims `lead` [..., N].

    The LM's modality input is [batch, seq]; a linear layer sees [batch, seq, K], an
    attention product [batch, heads, seq, K] (heads broadcast), a flattened graph
    [batch * seq, K] (reshaped)."""
    if mod is None:
        if const < 0:
            raise SpikecError(f"node '{where}': no modality input and no modality attribute")
        return np.full(lead, const, dtype=np.int64)
    mod = np.asarray(mod).astype(np.int64)
    if mod.shape == tuple(lead):
        return mod
    if len(lead) == mod.ndim + 1 and mod.ndim >= 1 and (mod.shape[0], *mod.shape[1:]) == (lead[0], *lead[2:]):
        return np.broadcast_to(mod[:, None], lead)
    if mod.size == int(np.prod(lead)):
        return mod.reshape(lead)
    try:
        return np.broadcast_to(mod, lead)
    except ValueError:
        raise SpikecError(f"node '{where}': modality {mod.shape} does not match the tokens {tuple(lead)}") from None


def _token_T(timesteps: Sequence[int], mods: np.ndarray, names: Sequence[str], where: str) -> np.ndarray:
    T = np.asarray(timesteps, dtype=np.int64)
    if mods.size and (mods.min() < 0 or mods.max() >= len(T)):
        bad = int(mods[(mods < 0) | (mods >= len(T))].flat[0])
        raise SpikecError(f"node '{where}': modality id {bad} has no timesteps (modalities: {list(names)})")
    return T[mods]


def activation_scale(x, mods, T_tok, node_attrs: dict, names: Sequence[str], where: str) -> np.ndarray:
    """Per-token float32 scale [..., N, 1] of an activation, by the node's act_scale rule."""
    if node_attrs.get("act_scale", "dynamic") == "dynamic":
        return R.scale_per_token(x, T_tok + 1)
    clip = np.asarray(node_attrs["act_clip"], dtype=np.float32).reshape(len(names), CLIP_T)
    if T_tok.size and T_tok.max() > CLIP_T:
        raise SpikecError(f"node '{where}': static scales are tabulated up to T={CLIP_T}, got T={int(T_tok.max())}")
    c = clip[mods, np.clip(T_tok, 1, CLIP_T) - 1]
    if np.isnan(c).any():
        m = int(mods[np.isnan(c)].flat[0])
        raise SpikecError(
            f"node '{where}': no static scale for modality '{names[m]}': the calibration data had no "
            f"{names[m]} tokens at this layer; calibrate with such tokens or use --act-scale dynamic"
        )
    return R.static_scale(c, T_tok)[..., None]  # clip 0 (silent layer): the fallback 1.0


dequantize_acc = R.dequantize_acc  # one definition: spikec.reference


def rate_if_accumulate(q, w_q, T_tok, acc_bias, mods, where: str) -> np.ndarray:
    """Rate-IF product int32 [..., N, M]: per token, the spike count c = q + 2**(b_i - 1) of
    its b_i = T_i + 1 bit code through W_q (spikec.reference.rate_if_accumulate), plus the
    folded offset acc_bias[m(i)] (the integer bias input of the rewritten op)."""
    q = np.asarray(q).astype(np.int64)
    w = np.asarray(w_q)
    acc = np.zeros(q.shape[:-1] + (w.shape[-1],), dtype=np.int32)
    for Ti in np.unique(T_tok):
        rows = T_tok == Ti
        c = R.rate_if_offset_code(q[rows], int(Ti) + 1, where)
        R.check_overflow(q.shape[-1], int(Ti) + 1, int(np.abs(w).max(initial=0)), where)
        acc[rows] = R.rate_if_accumulate(c, w) + np.asarray(acc_bias, dtype=np.int32)[mods[rows]]
    return acc


def rate_if_accumulate_offset(q, w_q, T_tok, acc_bias, mods, zero_point: int, where: str) -> np.ndarray:
    """Rate IF on an imported offset code c = q + z in [0, 2**(T+1) - 1] through W_q
    (spikec.reference.rate_if_accumulate), plus acc_bias[m] = -z * sum_k W_q[k, j]."""
    bits = int(T_tok.max()) + 1 if T_tok.size else 1
    # the planes [t < c], t < 2**bits - 1, count c clipped to [0, 2**bits - 1]
    c = np.clip(np.asarray(q).astype(np.int64) + zero_point, 0, 2**bits - 1)
    w = np.asarray(w_q)
    R.check_overflow(c.shape[-1], bits, int(np.abs(w).max(initial=0)), where)
    return R.rate_if_accumulate(c, w) + np.asarray(acc_bias, dtype=np.int32)[mods]


# ---------------------------------------------------------------- onnx.reference kernels


class _SpikecOp(OpRun):
    op_domain = DOMAIN
    modality_names: Sequence[str] = DEFAULT_MODALITIES

    def _attrs(self, **kw) -> dict:
        return {k: v for k, v in kw.items() if v is not None}

    def _mods(self, mod, const, lead):
        return token_modality(mod, -1 if const is None else int(const), lead, self.onnx_node.name)


def offset_code(x, s_x, zero_point: int, T_tok: np.ndarray, where: str) -> np.ndarray:
    """Imported asymmetric activations (act_zero_point): c = saturate(rint(x / s) + z) in
    [0, 2**(T+1) - 1] (ONNX QuantizeLinear to uint8 at T = 7); returns q = c - z (int32)."""
    r, _ = R.encode_tokens(x, s_x, R.INT32_MAX // 2, where)  # a non-finite token: r = 0
    hi = ((np.int64(1) << (T_tok + 1)) - 1)[..., None]
    return (np.clip(r.astype(np.int64) + zero_point, 0, hi) - zero_point).astype(np.int32)


def nonfinite_scale(x, s_x) -> np.ndarray:
    """s_x per token [..., N, 1] with NaN for every token whose row of x is not finite
    (the scale spikec.reference.encode_tokens gives those tokens)."""
    bad = R.nonfinite_tokens(x)[..., None]
    s = np.asarray(s_x, dtype=np.float32)
    return np.where(bad, np.float32(np.nan), s).astype(np.float32) if bad.any() else s


class QuantLinear(_SpikecOp):
    def _run(self, x, modality=None, w_q=None, s_w=None, bias=None, timesteps=None, act_scale=None,
             act_clip=None, wbits=None, act_zero_point=None, act_unsigned=None, **_):
        where = self.onnx_node.name
        mods = self._mods(modality, _const_mod(self.onnx_node), x.shape[:-1])
        T = _token_T(timesteps, mods, self.modality_names, where)
        s_x = activation_scale(x, mods, T, {"act_scale": act_scale, "act_clip": act_clip}, self.modality_names, where)
        if act_unsigned:
            _per_channel_only(s_w, where, "an imported zero point (rate IF)")
            q = offset_code(x, s_x, int(act_zero_point or 0), T, where)
            R.check_overflow(x.shape[-1], int(T.max()) + 1, int(np.abs(w_q).max(initial=0)), where)
            return (dequantize_acc(R.integer_matmul(q, w_q, where), nonfinite_scale(x, s_x), s_w, bias),)
        return (R.fake_quant_linear(x, s_x, w_q, s_w, bias, T, where),)


class QuantMatMul(_SpikecOp):
    def _run(self, a, b, modality=None, timesteps=None, bbits=None, **_):
        where = self.onnx_node.name
        mods = self._mods(modality, _const_mod(self.onnx_node), a.shape[:-1])
        T = _token_T(timesteps, mods, self.modality_names, where)
        s_a = R.scale_per_token(a, T + 1)  # NaN for a non-finite token
        q_b, s_b = R.encode_tensor(b, int(bbits), where)  # NaN anywhere in b: s_b NaN
        s_bv = np.full(b.shape[-1], s_b, dtype=np.float32)
        return (R.fake_quant_linear(a, s_a, q_b, s_bv, None, T, where),)


class SpikeEncode(_SpikecOp):
    def _run(self, x, modality=None, timesteps=None, act_scale=None, act_clip=None, neuron=None,
             act_zero_point=None, act_unsigned=None, **_):
        where = self.onnx_node.name
        x = np.asarray(x, dtype=np.float32)
        mods = self._mods(modality, _const_mod(self.onnx_node), x.shape[:-1])
        T = _token_T(timesteps, mods, self.modality_names, where)
        s_x = activation_scale(x, mods, T, {"act_scale": act_scale, "act_clip": act_clip}, self.modality_names, where)
        if act_unsigned:
            return offset_code(x, s_x, int(act_zero_point or 0), T, where), nonfinite_scale(x, s_x)
        # b_i = T_i + 1 bits; a non-finite token: code 0, scale NaN
        q, s = R.encode_tokens(x, s_x, ((np.int64(1) << T) - 1)[..., None], where)
        return q.astype(np.int32), np.asarray(s, dtype=np.float32)


class SpikeCode(_SpikecOp):
    def _run(self, b, bits=None, **_):
        q_b, s_b = R.encode_tensor(b, int(bits), self.onnx_node.name)
        return q_b, np.asarray(s_b, dtype=np.float32)


class SpikeMatMul(_SpikecOp):
    def _run(self, q, s_x, modality=None, w_q=None, s_w=None, bias=None, acc_bias=None, timesteps=None,
             neuron=None, wbits=None, act_zero_point=None, act_unsigned=None, **_):
        where = self.onnx_node.name
        mods = self._mods(modality, _const_mod(self.onnx_node), q.shape[:-1])
        T = _token_T(timesteps, mods, self.modality_names, where)
        if np.ndim(s_w) == 0:  # attention: one scale for the right operand
            s_w = np.full(np.shape(w_q)[-1], s_w, dtype=np.float32)
        if neuron == "if":
            _per_channel_only(s_w, where, "the rate-IF neuron")
            if acc_bias is None:
                raise SpikecError(f"node '{where}': rate-IF SpikeMatMul needs its acc_bias (offset fold) input")
            if act_unsigned:
                acc = rate_if_accumulate_offset(q, w_q, T, acc_bias, mods, int(act_zero_point or 0), where)
            else:
                acc = rate_if_accumulate(q, w_q, T, acc_bias, mods, where)
        elif np.ndim(s_w) == 2:  # group-wise weight scales: one accumulator per group
            G = R.weight_group_size(np.shape(w_q)[-2], np.shape(s_w), where)
            acc = R.grouped(lambda qg, wg: R.spike_matmul(qg, wg, T, where), q, w_q, G)
        else:
            acc = R.spike_matmul(q, w_q, T, where)
        return (dequantize_acc(acc, s_x, s_w, bias),)


def _per_channel_only(s_w, where: str, what: str) -> None:
    # The rate-IF offset fold (-2**(b-1) * sum_k W_q[k, j]) is one int32 per output
    # channel; group-wise scales would need one per group (not implemented).
    if np.ndim(s_w) == 2:
        raise SpikecError(f"node '{where}': group-wise weight scales are not supported with {what}; "
                          f"use per-channel scales (--group-size 0) or the tc-lif neuron")


def _const_mod(node_proto: onnx.NodeProto) -> int:
    for a in node_proto.attribute:
        if a.name == "modality_id":
            return int(a.i)
    return -1


_KERNELS = {QUANT_LINEAR: QuantLinear, QUANT_MATMUL: QuantMatMul, SPIKE_ENCODE: SpikeEncode,
            SPIKE_CODE: SpikeCode, SPIKE_MATMUL: SpikeMatMul}


def _kernels(names: Sequence[str]) -> list[type]:
    """onnx.reference kernels: spikec's ops for these modalities, and spikec.vec's functions."""
    return [type(cls.__name__, (cls,), {"modality_names": tuple(names), "op_domain": DOMAIN})
            for cls in _KERNELS.values()] + list(vector.REFERENCE_KERNELS)


def evaluator(model: ir.Model | onnx.ModelProto | spir.Frozen) -> ReferenceEvaluator:
    """The numpy reference evaluator (onnx.reference + spikec's kernels) over a graph whose
    weights are inlined: for models below protobuf's 2 GiB (SpikecError above it)."""
    if isinstance(model, ir.Model):
        model = spir.freeze(model)
    if isinstance(model, spir.Frozen):
        model = model.inlined()
    proto = model
    names = DEFAULT_MODALITIES
    for p in proto.metadata_props:
        if p.key == MODALITIES_KEY:
            names = _modality_names(p.value)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        # onnx.reference implements Q/DQ from opset 19 on; 13..18 have the same meaning for
        # the 8-bit types QDQ models use, so the evaluator's copy imports opset 19.
        for imp in proto.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version < 19:
                copy = onnx.ModelProto()
                copy.CopyFrom(proto)
                for i in copy.opset_import:
                    if i.domain in ("", "ai.onnx"):
                        i.version = 19
                proto = copy
                break
    return ReferenceEvaluator(proto, new_ops=_kernels(names))


def run_reference(model: ir.Model | onnx.ModelProto | spir.Frozen, feeds: dict, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """Run any graph (standard + spikec ops) with the numpy reference kernels."""
    sess = evaluator(model)
    known = set(sess.input_names)
    return sess.run(list(outputs) if outputs else None, {k: v for k, v in feeds.items() if k in known})


# ---------------------------------------------------------------- invariants


def _code_bound_T(node: ir.Node, T: int) -> int:
    """The T of the overflow bound: rate IF sums 2**(T+1) - 1 planes of a (T+1)-bit offset code."""
    return T + 1 if attr(node, "neuron") == "if" else T


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None or v.const_value is None:
        return None
    return v.const_value.numpy()


class _WeightCodes:
    """A constant weight's shape, dtype and max |code|, without unpacking packed 4-bit
    weights (int4.PackedInt4Tensor): their codes are -7..7, checked nibble by nibble when
    the .sbin was read (int4.check_packed); unpacking every one again here took about 2.6 s
    of loading 8 text layers at Qwen2-VL-2B widths."""

    def __init__(self, tensor) -> None:
        self.tensor = tensor
        self.packed = isinstance(tensor, int4.PackedInt4Tensor)
        self.array = None if self.packed else tensor.numpy()
        self.shape = tuple(tensor.shape) if self.packed else self.array.shape
        self.dtype = np.dtype(np.int8) if self.packed else self.array.dtype

    @classmethod
    def of(cls, v: ir.Value | None) -> "_WeightCodes | None":
        return None if v is None or v.const_value is None else cls(v.const_value)

    def absmax(self) -> int:
        return int4.CODE_MAX if self.packed else R.absmax_int(self.array)


def _weight_input(node: ir.Node) -> ir.Value | None:
    if node.op_type == QUANT_LINEAR:
        return node.inputs[2] if len(node.inputs) > 2 else None
    if node.op_type == SPIKE_MATMUL:
        return node.inputs[3] if len(node.inputs) > 3 else None
    return None


def _K(node: ir.Node) -> int | None:
    w = _weight_input(node)
    if w is not None and w.shape is not None and len(w.shape) >= 2 and isinstance(w.shape[-2], int):
        return int(w.shape[-2])
    if node.op_type == QUANT_MATMUL and node.inputs[0].shape is not None:
        k = node.inputs[0].shape[-1]
        return k if isinstance(k, int) else None
    return None


@spir.register_invariant("spikec-ops")
def check_spikec_ops(model: ir.Model) -> None:
    """T >= 1 per modality, code bounds, scales, and the int32 overflow guard of every spiking op."""
    nodes = spikec_nodes(model)
    if not nodes:
        return
    if model.opset_imports.get(DOMAIN) != VERSION:
        raise SpikecError(f"model uses spikec ops but does not import opset '{DOMAIN}' version {VERSION}")
    names = modalities(model)
    for node in nodes:
        where = f"node '{node.name}' ({DOMAIN}::{node.op_type})"
        if node.op_type not in OP_TYPES:
            raise SpikecError(f"{where}: unknown spikec op (known: {', '.join(OP_TYPES)})")
        if node.op_type in TIMED_OPS:
            T = get_timesteps(node)
            if len(T) != len(names):
                raise SpikecError(f"{where}: timesteps {T} must have one entry per modality {names}")
            bad = [(names[m], t) for m, t in enumerate(T) if not 1 <= t <= MAX_T]
            if bad:
                raise SpikecError(f"{where}: timesteps must be 1..{MAX_T}; got T={bad[0][1]} for {bad[0][0]}")
            if node.op_type in (QUANT_LINEAR, SPIKE_ENCODE):
                scale = attr(node, "act_scale", "dynamic")
                if scale not in ACT_SCALES:
                    raise SpikecError(f"{where}: act_scale '{scale}' is not one of {ACT_SCALES}")
                if scale == "static":
                    clip = clip_table(node, len(names))
                    if (clip[~np.isnan(clip)] < 0).any():
                        raise SpikecError(f"{where}: act_clip has negative entries")
            if attr(node, "act_unsigned") and node.op_type != QUANT_MATMUL:
                if attr(node, "neuron", "if") != "if":
                    raise SpikecError(f"{where}: an unsigned activation code (zero point) needs the rate-IF neuron")
                if any(t != T[0] for t in T) or not 1 <= T[0] <= 7:
                    raise SpikecError(f"{where}: an imported zero point fixes the code width; timesteps {T}")
            neuron = attr(node, "neuron")
            if neuron is not None and neuron not in NEURONS:
                raise SpikecError(f"{where}: neuron '{neuron}' is not one of {NEURONS}")
        w_val = _weight_input(node)
        w = _WeightCodes.of(w_val)
        if node.op_type in (QUANT_LINEAR, SPIKE_MATMUL) and w_val is not None and (
                (w_val.shape is not None and len(w_val.shape) < 2) or (w is not None and len(w.shape) < 2)):
            shape = list(w.shape) if w is not None else list(w_val.shape)
            raise SpikecError(f"{where}: the weight must be a matrix [K, M], got shape {shape}")
        wbits = attr(node, "wbits")
        if w is not None and wbits is not None:
            qw = R.qmax(int(wbits))
            if w.dtype.kind not in "iu":
                raise SpikecError(f"{where}: W_q must hold integer codes, got {w.dtype}")
            if w.absmax() > qw:
                raise SpikecError(f"{where}: W_q codes exceed +-{qw} for wbits={wbits}")
            s_w = _const(node.inputs[w_val_index(node) + 1])
            if s_w is not None and (s_w.shape[-1:] != w.shape[-1:] or s_w.ndim > 2
                                    or not np.all(np.isfinite(s_w) & (s_w > 0))):
                raise SpikecError(f"{where}: s_w must be finite, > 0 and of shape [{w.shape[-1]}] "
                                  f"or [n_groups, {w.shape[-1]}]; got {list(s_w.shape)}")
            if s_w is not None:
                R.weight_group_size(w.shape[-2], s_w.shape, where)
                if s_w.ndim == 2 and (attr(node, "neuron") == "if" or attr(node, "act_unsigned")):
                    raise SpikecError(f"{where}: group-wise weight scales need the tc-lif neuron "
                                      f"(the rate-IF offset fold is per output channel)")
        elif node.op_type == QUANT_MATMUL or (node.op_type == SPIKE_MATMUL and w is None):
            qw = R.qmax(int(attr(node, "bbits", attr(node, "wbits", 8))))
        else:
            continue
        K = _K(node)
        x = node.inputs[0] if node.inputs else None
        k_in = x.shape[-1] if x is not None and x.shape is not None and len(x.shape) else None
        if K is not None and isinstance(k_in, int) and k_in != K and node.op_type in (QUANT_LINEAR, SPIKE_MATMUL):
            raise SpikecError(f"{where}: the weight has K = {K} input features, its input {k_in}")
        if K is not None and node.op_type in (QUANT_LINEAR, QUANT_MATMUL, SPIKE_MATMUL):
            R.check_overflow(K, _code_bound_T(node, max(get_timesteps(node))), qw, where)


def w_val_index(node: ir.Node) -> int:
    return 2 if node.op_type == QUANT_LINEAR else 3


def check_overflow_now(node: ir.Node, K: int, T: Iterable[int], wbits: int) -> None:
    R.check_overflow(K, _code_bound_T(node, max(T)), R.qmax(wbits), f"node '{node.name}'")
