"""quantize: every linear layer (MatMul/Gemm over a constant weight) becomes spikec::QuantLinear.

What it does, in order:
1. find the linear layers: MatMul(x, W) or Gemm(x, W, C) with W a constant (initializer,
   Constant node, or a Transpose of one: the transpose is folded), and a following
   Add of a constant [N] vector fused as the bias. Attention products (both operands
   activations) become spikec::QuantMatMul with --spike-attention, else stay float.
   Everything else matrix-like (Conv patch embeddings, Gemm with transA, ...) stays
   float; the report lists each with the reason.
2. SmoothQuant (--smooth ALPHA): per input channel j, s_j = max|X_j|^a / max|W_j|^(1-a)
   over calibration data; W <- diag(s) W and X <- X / s, where X / s is folded into the
   producer of X so the graph gains no op: the weight of a norm (Mul by a constant
   vector, LayerNormalization scale and bias), or the output columns of a preceding
   linear layer feeding X through Mul (the SwiGLU up-projection) or directly. Layers
   whose input has another producer are not smoothed (reported).
3. weights: the codes and scales of a quantized checkpoint where the graph carries them
   (spikec/imported_weights.py: `imported_weights`, checked against the float weight bit
   for bit; docs/frontend.md), else per output channel symmetric, round to nearest (spikec.reference), or GPTQ
   (--weight-method gptq, passes/gptq.py: the same per-channel scales, codes chosen to
   minimise the layer's output error on the calibration inputs; H per layer input from
   the float graph on ORT, `_weights`).
   Activations come from the float-activations analysis (passes/analyses.py): the float
   graph as the clean-up passes left it, run once on ORT for every pass of the compile.
4. activations: static per-modality clip tables from calibration (max, percentile,
   mse), or dynamic per-token scales; see spikec.ops for the semantics. A modality the
   graph can carry with no calibration token is refused (naming layer and modality); a
   layer silent on the calibration data (clip 0) is warned about and gets the fallback
   scale of spikec.reference.static_scale (1.0).
Weights (and fused biases) holding NaN or inf are refused, naming node and initializer.

The QuantLinear keeps the MatMul's node name, so reports, MED and the float model line up.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from spikec import calibration as C
from spikec import ir as spir
from spikec import ops
from spikec import reference as R
from spikec import vector
from spikec.errors import SpikecError
from spikec.passes import gptq
from spikec.passes.analyses import FLOAT_MODEL
from spikec.passes.generic import first_nonfinite, nonfinite_message
from spikec.passes.manager import register_property
from spikec.passes.options import CompileContext, ContextPass

log = logging.getLogger(__name__)

MODALITY_INPUT = "modality"
# Model metadata naming who quantized the graph: absent for spikec's quantize, "qdq" for a
# model quantized by another tool and imported (passes/import_qdq.py).
SOURCE_KEY = "spikec.source"
FLOAT_MATRIX_OPS = ("Conv", "ConvTranspose", "Einsum", "MatMulInteger", "QLinearMatMul", "Gemm", "MatMul")


@dataclasses.dataclass
class Linear:
    node: ir.Node  # the MatMul / Gemm
    x: ir.Value
    w: np.ndarray  # float32 [K, N]
    bias: np.ndarray | None
    out: ir.Value  # the value the QuantLinear replaces (the bias Add's output when fused)
    old_nodes: list[ir.Node]


def const_array(v: ir.Value | None) -> np.ndarray | None:
    """The value as a constant array: an initializer, a Constant node, or Transpose of one."""
    if v is None:
        return None
    if v.const_value is not None:
        return v.const_value.numpy()
    p = v.producer()
    if p is None:
        return None
    if p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
        a = p.attributes.get("value")
        return None if a is None else a.value.numpy()
    if p.op_type == "Transpose" and p.domain in ("", "ai.onnx"):
        inner = const_array(p.inputs[0])
        if inner is None:
            return None
        perm = ops.attr(p, "perm")
        return np.transpose(inner, perm) if perm is not None else inner.T
    return None


def _const_source_name(v: ir.Value) -> str:
    """The name of the constant behind a weight operand (through a folded Transpose)."""
    p = v.producer()
    if v.const_value is None and p is not None and p.op_type == "Transpose" and p.inputs:
        return _const_source_name(p.inputs[0])
    return v.name or "?"


def check_finite_weights(linears: list[Linear]) -> None:
    """Every linear layer's float weight (and fused bias) is finite: SpikecError naming the
    node and the weight's initializer otherwise (chunked: see passes.generic.first_nonfinite)."""
    for lin in linears:
        w_name = _const_source_name(lin.node.inputs[1])
        for what, array in ((f"weight '{w_name}'", lin.w), ("bias", lin.bias)):
            found = None if array is None else first_nonfinite(array)
            if found is not None:
                raise SpikecError("quantize: " + nonfinite_message(f"node '{lin.node.name}': {what}", found))


def check_static_clips(clips: dict[str, np.ndarray], names: list[str], carried: list[int]) -> list[dict]:
    """Refuse a modality with no calibration tokens; list the layers silent on the calibration data.

    `carried` are the modality ids the graph can carry (every modality for a graph with a
    per-token `modality` input, else its constant one). A NaN clip row for one of them means
    the calibration data had no token of it: SpikecError naming the modality and the layer.
    A clip of 0 (all-zero activations: a silent layer) is warned about, naming the layer;
    its static scale is the fallback spikec.reference.static_scale gives (1.0). Returns
    [{"name", "modality"}] of the silent pairs."""
    silent = []
    for layer, clip in clips.items():
        for m in carried:
            if np.isnan(clip[m]).all():
                raise SpikecError(
                    f"quantize: layer '{layer}': the calibration data has no '{names[m]}' tokens, so there is no "
                    f"static scale for modality '{names[m]}', which this graph's modality input can carry; "
                    f"calibrate with {names[m]} tokens (e.g. image+prompt pairs) or use --act-scale dynamic")
            if not np.any(clip[m] > 0):
                silent.append({"name": layer, "modality": names[m]})
                log.warning("quantize: layer '%s' is silent on the calibration data for %s tokens (all-zero "
                            "activations, clip 0): its static scale falls back to %g (spikec.reference.static_scale), "
                            "so nonzero inputs at run time are coded on that scale; calibrate with data that "
                            "exercises it or use --act-scale dynamic", layer, names[m], float(R.ZERO_RANGE_SCALE))
    return silent


def graph_modality_input(model: ir.Model) -> ir.Value | None:
    for v in model.graph.inputs:
        if v.name == MODALITY_INPUT:
            return v
    return None


def _single_consumer(v: ir.Value) -> ir.Node | None:
    users = {id(u.node): u.node for u in v.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


def _is_graph_output(model: ir.Model, v: ir.Value) -> bool:
    return any(o is v for o in model.graph.outputs)


def bias_of(model: ir.Model, out: ir.Value, n: int) -> tuple[np.ndarray | None, ir.Node | None]:
    """A following Add of a constant [N] vector (either operand order)."""
    if _is_graph_output(model, out):
        return None, None
    add = _single_consumer(out)
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None, None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    b = const_array(other)
    if b is None or b.size != n or b.shape[-1:] != (n,):
        return None, None
    return b.reshape(n).astype(np.float32), add


def find_linears(model: ir.Model) -> tuple[list[Linear], list[ir.Node], list[dict]]:
    """(linear layers, attention products, [{name, op, reason}] left in float)."""
    linears, attention, floats = [], [], []
    for node in list(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in FLOAT_MATRIX_OPS:
            continue
        where = {"name": node.name, "op": node.op_type}
        if node.op_type in ("Conv", "ConvTranspose"):
            floats.append({**where, "reason": "convolution (e.g. a patch embedding) is not a MatMul/Gemm linear layer"})
            continue
        if node.op_type in ("Einsum", "MatMulInteger", "QLinearMatMul"):
            floats.append({**where, "reason": f"{node.op_type} is not rewritten (export MatMul/Gemm instead)"})
            continue
        a, b = node.inputs[0], node.inputs[1]
        w = const_array(b)
        if node.op_type == "MatMul":
            if w is None:
                if const_array(a) is None:
                    attention.append(node)
                else:
                    floats.append({**where, "reason": "constant left operand (weight @ activation)"})
                continue
            if w.ndim != 2:
                floats.append({**where, "reason": f"weight of rank {w.ndim} (only [K, N] weights are linear layers)"})
                continue
            w = w.astype(np.float32, copy=False)  # a memory-mapped weight stays mapped
            bias, add = bias_of(model, node.outputs[0], w.shape[1])
            old = [node] + ([add] if add is not None else [])
            out = add.outputs[0] if add is not None else node.outputs[0]
            linears.append(Linear(node, a, w, bias, out, old))
            continue
        # Gemm: Y = alpha * A' @ B' + beta * C
        if ops.attr(node, "transA", 0):
            floats.append({**where, "reason": "Gemm with transA=1"})
            continue
        if w is None or w.ndim != 2:
            floats.append({**where, "reason": "Gemm whose B is not a constant 2-D weight"})
            continue
        w = (w.T if ops.attr(node, "transB", 0) else w).astype(np.float32, copy=False)
        alpha = np.float32(ops.attr(node, "alpha", 1.0))
        w = w * alpha if alpha != 1 else w
        bias = None
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = const_array(node.inputs[2])
            if c is None or c.size != w.shape[1]:
                floats.append({**where, "reason": "Gemm whose C is not a constant [N] bias"})
                continue
            bias = (c.reshape(-1) * np.float32(ops.attr(node, "beta", 1.0))).astype(np.float32)
        linears.append(Linear(node, a, w, bias, node.outputs[0], [node]))
    return linears, attention, floats


# ---------------------------------------------------------------- SmoothQuant


def _smooth_target(x: ir.Value, group: list[Linear], by_out: dict[int, Linear]):
    """Where X / s can be folded: ('norm', node), ('layernorm', node), ('linear', Linear) or ('', why)."""
    consumers = {id(u.node) for u in x.uses()}
    if consumers != {id(g.node) for g in group}:
        return "", "its input also feeds ops other than linear layers"
    if id(x) in by_out:  # directly the output of another linear layer
        return "linear", by_out[id(x)]
    p = x.producer()
    if p is None:
        return "", "its input is a graph input"
    k = group[0].w.shape[0]
    if p.op_type == "LayerNormalization" and p.inputs[1] is not None and p.inputs[1].const_value is not None \
            and len(p.inputs[1].uses()) == 1:
        return "layernorm", p
    if p.domain == vector.DOMAIN and p.op_type in (vector.RMSNORM, vector.LAYERNORM) \
            and p.inputs[1].const_value is not None and len(p.inputs[1].uses()) == 1:
        return "vecnorm", p  # gamma (and beta) of a spikec.vec norm
    if p.op_type == "Mul":
        for i in (0, 1):
            v = p.inputs[i]
            c = v.const_value
            if c is not None and c.numpy().ndim >= 1 and c.numpy().shape[-1] == k and len(v.uses()) == 1:
                return "norm", p
        for i in (0, 1):  # SwiGLU: act(gate) * up, with up a linear layer used only here
            up = by_out.get(id(p.inputs[i]))
            if up is not None and len(p.inputs[i].uses()) == 1 and p.inputs[1 - i] is not p.inputs[i]:
                return "linear", up
    return "", f"its input comes from {p.op_type} '{p.name}', which is neither a norm weight nor a linear layer"


def smooth(linears: list[Linear], fetch, alpha: float) -> tuple[dict, list[dict]]:
    """Apply SmoothQuant in place (weights in `linears`, the producers' constants in the model).

    `fetch(names)` gives the float model's values `names` on each calibration feed (a list
    of {name: array}). Returns ({activation name: s}, notes): the smoothed activation is X / s."""
    groups: dict[int, list[Linear]] = {}
    for lin in linears:
        groups.setdefault(id(lin.x), []).append(lin)
    by_out = {id(lin.out): lin for lin in linears}
    if not groups:
        return {}, []
    acts = fetch([g[0].x.name for g in groups.values()])
    scales, notes = {}, []
    for group in groups.values():
        x = group[0].x
        kind, target = _smooth_target(x, group, by_out)
        names = [g.node.name for g in group]
        if not kind:
            notes.extend({"name": n, "smoothed": False, "reason": target} for n in names)
            continue
        xmax = np.max([np.abs(a[x.name]).reshape(-1, a[x.name].shape[-1]).max(axis=0) for a in acts], axis=0)
        wmax = np.max([np.abs(g.w).max(axis=1) for g in group], axis=0)
        s = (np.power(np.maximum(xmax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1 - alpha)).astype(np.float32)
        s = np.where(np.isfinite(s) & (s > 0), s, np.float32(1.0)).astype(np.float32)
        for g in group:
            g.w = (g.w * s[:, None]).astype(np.float32)
        if kind == "linear":
            target.w = (target.w / s[None, :]).astype(np.float32)
            if target.bias is not None:
                target.bias = (target.bias / s).astype(np.float32)
            where = f"linear '{target.node.name}'"
        else:
            idx = ((1, 2) if kind == "layernorm" or (kind == "vecnorm" and target.op_type == vector.LAYERNORM)
                   else (1,) if kind == "vecnorm" else tuple(i for i in (0, 1) if target.inputs[i].const_value is not None)[:1])
            for i in idx:
                v = target.inputs[i] if len(target.inputs) > i else None
                if v is not None and v.const_value is not None:
                    v.const_value = spir.new_tensor((v.const_value.numpy() / s).astype(np.float32), v.name)
            where = f"{target.op_type} '{target.name}'"
        scales[x.name] = s
        notes.extend({"name": n, "smoothed": True, "folded_into": where} for n in names)
    return scales, notes


# ---------------------------------------------------------------- the pass


# Columns of a weight quantized at once: about 2**24 elements (64 MiB of float32), so the
# float64 temporaries of the reference's rounding stay small even for a 150k-row LM head.
WEIGHT_BLOCK_ELEMENTS = 1 << 24


def quantize_weight(w: np.ndarray, wbits: int, where: str, group_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric RTN of a weight float32 [K, N] (may be memory-mapped): (codes int8 [K, N],
    scales float32 [N] per output channel, or [K / group_size, N] per group of `group_size`
    input rows when group_size > 0 (spikec.reference.weight_group_size: group g is rows
    g*G .. (g+1)*G - 1; each group's scale is spikec.reference's scale_per_channel of its
    rows). Exactly spikec.reference's scale_per_channel and quantize, one block of columns
    at a time (each column is independent). SpikecError unless group_size divides K."""
    K, N = w.shape
    G = K if not group_size else int(group_size)
    if K % G:
        raise SpikecError(f"{where}: --group-size {G} does not divide the layer's K = {K}")
    cols = max(1, WEIGHT_BLOCK_ELEMENTS // max(K, 1))
    w_q = np.empty((K, N), np.int8)
    s_w = np.empty((K // G, N), np.float32)
    for j in range(0, N, cols):
        for g, k in enumerate(range(0, K, G)):
            block = w[k:k + G, j:j + cols]
            s = R.scale_per_channel(block, wbits)
            w_q[k:k + G, j:j + cols] = R.quantize(block, s, R.qmax(wbits), where)
            s_w[g, j:j + cols] = s
    return w_q, (s_w if group_size else s_w[0])


def layer_group_size(K: int, group_size: int) -> int:
    """The group size a layer of K input rows gets for --group-size: 0 (per output channel)
    when none is asked for, when it does not divide K (that layer falls back to per-channel
    scales; the quantize report's row says so) or when it is K (one group is the per-channel
    numeric, stored as such)."""
    return group_size if group_size and K % group_size == 0 and K != group_size else 0


def gptq_hessians(fetch, linears: list[Linear], smooth_s: dict) -> gptq.Hessians:
    """The GPTQ Hessians of the layers' inputs; `fetch(names)` gives the float model's values
    on each calibration feed, asked for on demand (a bounded chunk of layer inputs at a
    time; see gptq.Hessians)."""
    return gptq.Hessians(fetch, [(lin.x.name, int(lin.w.shape[0])) for lin in linears], smooth_s)


def imported_weights(model: ir.Model, opts):
    """The codes and scales a graph exported from a published int4 checkpoint carries
    (spikec/imported_weights.py), or None. Options that would re-derive those layers' codes
    or change their float weight are refused: --weight-method gptq, --group-size, --smooth,
    --rotate (the imported codes are the checkpoint's; other layers of such a graph, e.g. an
    unquantized LM head, follow --wbits with RTN)."""
    from spikec.imported_weights import imported_weights as side_file

    imported = side_file(model)
    if imported is None:
        return None
    for flag, on in (("--weight-method gptq", opts.weight_method == "gptq"), ("--group-size", bool(opts.group_size)),
                     ("--smooth", opts.smooth is not None), ("--rotate", opts.rotate)):
        if on:
            raise SpikecError(f"quantize: {flag}: this graph holds the integer codes and scales of a quantized "
                              f"checkpoint ({imported.format}, imported as stored); {flag} would change them. "
                              f"Compile without {flag} (or export the float checkpoint instead)")
    return imported


def _imported(lin: Linear, imported, opts) -> tuple[np.ndarray, np.ndarray, dict]:
    """The checkpoint's codes and scales of one layer, checked against the graph's float weight
    (codes * scales, as the export computed it, must equal it bit for bit)."""
    from spikec.imported_weights import dequantize

    name = lin.node.name
    codes, scales = imported.get(name)
    if codes.shape != lin.w.shape or lin.bias is not None and lin.bias.shape != (codes.shape[1],):
        raise SpikecError(f"quantize: layer '{name}': imported codes {list(codes.shape)} do not fit its weight "
                          f"{list(lin.w.shape)} ({imported.path})")
    K, n = codes.shape[0], scales.shape[0]
    rows = max(K // n, (WEIGHT_BLOCK_ELEMENTS // max(codes.shape[1], 1)) // (K // n) * (K // n))
    for k in range(0, K, rows):  # bounded: a block of rows at a time
        want = dequantize(codes[k:k + rows], scales[k // (K // n):(k + rows) // (K // n)])
        if not np.array_equal(want.view(np.uint32), np.asarray(lin.w[k:k + rows], np.float32).view(np.uint32)):
            raise SpikecError(f"quantize: layer '{name}': the graph's weight is not the imported codes times their "
                              f"scales (was the graph changed after export?); {imported.path}")
    if n > 1 and opts.neuron == "if":
        raise SpikecError(f"quantize: layer '{name}': imported group-wise scales with --neuron if: the rate-IF offset "
                          f"fold is per output channel; use the tc-lif neuron")
    wbits = 4 if int(np.abs(codes.astype(np.int16)).max(initial=0)) <= R.qmax(4) else 8
    return codes, (scales if n > 1 else scales[0]), {
        "weight_method": f"imported:{imported.format}", "group_size": K // n if n > 1 else 0, "_wbits": wbits}


def _weights(lin: Linear, opts, hessians: gptq.Hessians | None, imported=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(codes int8 [K, N], s_w float32 [N], report fields) of one layer: RTN, or GPTQ with its
    proxy loss trace((W - W_q)^T H (W - W_q)) against RTN's on the same H, or the codes and
    scales imported from a quantized checkpoint (`_imported`; "_wbits" is then the layer's
    own weight width: 4 when every |code| <= 7, else 8)."""
    if imported is not None and lin.node.name in imported:
        return _imported(lin, imported, opts)
    G = layer_group_size(int(lin.w.shape[0]), opts.group_size)
    group = {"group_size": G} if opts.group_size else {}
    if hessians is None:
        w_q, s_w = quantize_weight(lin.w, opts.wbits, lin.node.name, G)
        return w_q, s_w, {"weight_method": "rtn", **group}
    hess = hessians.get(lin.x.name)
    H = hess.value()
    w_q, s_w = gptq.gptq_quantize(lin.w, H, opts.wbits, opts.gptq_damp, opts.gptq_act_order, where=lin.node.name,
                                  group_size=G)
    rtn_q, rtn_s = quantize_weight(lin.w, opts.wbits, lin.node.name, G)
    loss, rtn_loss = gptq.proxy_loss(lin.w, w_q, s_w, H), gptq.proxy_loss(lin.w, rtn_q, rtn_s, H)
    hessians.done(lin.x.name)
    log.info("quantize: %s: gptq loss %.6g (rtn %.6g)", lin.node.name, loss, rtn_loss)
    return w_q, s_w, {"weight_method": "gptq", **group, "gptq": {
        "loss": loss, "rtn_loss": rtn_loss, "damp": opts.gptq_damp, "act_order": opts.gptq_act_order,
        "tokens": hess.n, "hessian": np.dtype(hess.dtype).name, "codes_changed": int(np.count_nonzero(w_q != rtn_q))}}


def initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    base, k = name, 1
    while name in graph.initializers:
        name, k = f"{base}_{k}", k + 1
    v = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                 const_value=spir.new_tensor(array, name))
    graph.register_initializer(v)
    return v


def replace_node(model: ir.Model, old_nodes: list[ir.Node], old_out: ir.Value, new: ir.Node) -> None:
    new_out = new.outputs[0]
    new_out.shape, new_out.type = old_out.shape, old_out.type
    ir.convenience.replace_nodes_and_values(model.graph, old_nodes[-1], old_nodes, [new], [old_out], [new_out])


def drop_unused_initializers(model: ir.Model, values) -> None:
    """Remove the replaced weights: unused initializers, and the Constant/Transpose nodes
    that produced a folded weight once nothing reads them."""
    stack = [v for v in values if v is not None]
    while stack:
        v = stack.pop()
        if v.uses() or _is_graph_output(model, v):
            continue
        if v.name in model.graph.initializers:
            model.graph.initializers.pop(v.name)
            continue
        p = v.producer()
        if p is not None and p.op_type in ("Constant", "Transpose") and p.graph is model.graph \
                and not any(o.uses() or _is_graph_output(model, o) for o in p.outputs):
            inputs = list(p.inputs)
            model.graph.remove(p, safe=True)
            stack.extend(i for i in inputs if i is not None)


def modality_of_graph(model: ir.Model, ctx: CompileContext) -> tuple[ir.Value | None, int]:
    names = ops.modalities(model)
    mod_in = graph_modality_input(model)
    if mod_in is not None:
        return mod_in, -1
    if ctx.graph_modality is not None:
        return None, ctx.graph_modality
    guess = "vision" if any(v.name == "pixel_values" for v in model.graph.inputs) else "text"
    return None, names.index(guess) if guess in names else 0


def _dequantized_integer(v: ir.Value | None) -> bool:
    """v = DequantizeLinear(an integer constant): a weight quantized by another tool."""
    p = v.producer() if v is not None else None
    if p is None or p.op_type != "DequantizeLinear" or p.domain not in ("", "ai.onnx", "com.microsoft"):
        return False
    a = const_array(p.inputs[0])
    return a is not None and a.dtype.kind in "iu"


@register_property("quantized", "no float linear layer is left that the quantizer would take: for spikec's "
                                "quantize, no MatMul/Gemm over a constant 2-D weight (find_linears); for an "
                                "imported QDQ model, no MatMul/Gemm over a DequantizeLinear of an integer weight")
def check_quantized(model: ir.Model) -> None:
    """Raises SpikecError naming the first float product left (see the property's doc)."""
    if model.metadata_props.get(SOURCE_KEY) == "qdq":
        for node in model.graph:
            if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx") and len(node.inputs) > 1 \
                    and _dequantized_integer(node.inputs[1]):
                raise SpikecError(f"node '{node.name}' ({node.op_type}) still reads the quantized weight "
                                  f"'{node.inputs[1].name}' in float")
        return
    linears, _, _ = find_linears(model)
    if linears:
        lin = linears[0]
        raise SpikecError(f"node '{lin.node.name}' ({lin.node.op_type}) is a linear layer over the constant weight "
                          f"'{_const_source_name(lin.node.inputs[1])}' left in float")


@dataclasses.dataclass
class _ActivationPlan:
    """How one graph's activations are encoded, the same for every layer: the modality input
    (or the graph's constant modality), T per modality, static or dynamic scales, and with
    static scales the clip tables and the layers silent on the calibration data."""

    names: list[str]
    mod_in: ir.Value | None
    const_mod: int
    T: list[int]
    static: bool
    clips: dict[str, np.ndarray]
    silent: list[dict]

    def linear_attrs(self, name: str, wbits: int) -> list:
        """The attributes of layer `name`'s QuantLinear."""
        attrs = [ir.AttrInt64("wbits", wbits), ir.AttrInt64s("timesteps", self.T),
                 ir.AttrString("act_scale", "static" if self.static else "dynamic")]
        if self.static:
            attrs.append(ir.AttrFloat32s("act_clip", [float(c) for c in self.clips[name].reshape(-1)]))
        if self.mod_in is None:
            attrs.append(ir.AttrInt64("modality_id", self.const_mod))
        return attrs

    def linear_row(self, lin: Linear, wbits: int, weight_note: dict) -> dict:
        """A linear layer's report row: shape, widths, weight method, and with static scales
        the clip at each modality's T (and the fallback scale where the layer was silent)."""
        name, w = lin.node.name, lin.w
        row = {"name": name, "kind": "linear", "K": int(w.shape[0]), "N": int(w.shape[1]),
               "wbits": wbits, "act_scale": "static" if self.static else "dynamic", "bias": lin.bias is not None,
               **weight_note}
        if self.static:
            row["clip"] = {self.names[m]: _num(self.clips[name][m, self.T[m] - 1]) for m in range(len(self.names))}
            quiet = [r["modality"] for r in self.silent if r["name"] == name]
            if quiet:  # clip 0: the static scale is the fallback of spikec.reference.static_scale
                row["silent"] = {"modalities": quiet, "fallback_scale": float(R.ZERO_RANGE_SCALE)}
        return row


def _clip_table(lin: Linear, acts: list[dict], s, n_modalities: int, const_mod: int, method: str,
                percentile: float) -> np.ndarray:
    """One layer's static clip table [modalities, T_max] over its input X / s on every
    calibration feed, the tokens split by modality. Raises SpikecError when the input holds
    NaN or inf on a feed."""
    rows = [[] for _ in range(n_modalities)]
    for i, a in enumerate(acts):
        x = (a[lin.x.name] / s).astype(np.float32)
        if not np.isfinite(x).all():
            raise SpikecError(
                f"quantize: layer '{lin.node.name}': its input '{lin.x.name}' holds NaN or inf on "
                f"calibration feed {i} (the float model overflows or reads non-finite inputs there)")
        per = C.tokens_by_modality(x, a.get(MODALITY_INPUT), const_mod, n_modalities, lin.node.name)
        for m, r in enumerate(per):
            rows[m].append(r)
    return np.stack([C.clip_row(np.concatenate(r) if r else np.zeros((0, 1), np.float32), method, percentile)
                     for r in rows])


def _group_wise_summary(group_size: int, layers: list[dict]) -> int:
    """The number of linear layers that took --group-size scales (imported ones aside); one
    warning names the layers that keep per-channel scales, rather than a line per layer."""
    rows = [r for r in layers if r["kind"] == "linear" and not str(r.get("weight_method")).startswith("imported:")]
    kept = [r for r in rows if not r.get("group_size")]
    if kept:
        log.warning("quantize: --group-size %d: %d of %d linear layers keep per-channel scales (the size "
                    "does not divide their K, or equals it), e.g. %s (K = %d)", group_size, len(kept),
                    len(rows), kept[0]["name"], kept[0]["K"])
    return len(rows) - len(kept)


def _imported_summary(imported, layers: list[dict]) -> dict:
    """The imported checkpoint's file and format, the layers whose codes came from it (their
    rows say so), and its modules that are no linear layer of this graph (warned about)."""
    taken = {r["name"] for r in layers if str(r.get("weight_method", "")).startswith("imported:")}
    unused = [m for m in imported.modules() if m not in taken]
    if unused:
        log.warning("quantize: %d imported layers of %s are not linear layers of this graph (e.g. %s); "
                    "their codes are not used", len(unused), imported.path.name, unused[0])
    return {"format": imported.format, "file": imported.path.name, "layers": len(taken), "unused": unused}


class Quantize(ContextPass):
    """Weights per output channel or per group of input rows (int8/int4), activations static per
    modality or dynamic per token."""

    name = "quantize"
    guarantees = ("quantized",)
    # the layer map and the float model stay valid: residual Adds and value names are kept
    invalidates = ("shapes-inferred",)

    def float_values(self, model: ir.Model) -> list[str]:
        """Every linear layer's input (static scales, SmoothQuant) and the modality input."""
        opts = self.ctx.options
        if not self.ctx.feeds or not (opts.static or opts.smooth is not None):
            return []  # GPTQ alone streams its layer inputs (gptq.Hessians) instead of holding them
        names = [lin.x.name for lin in find_linears(model)[0]]
        return names + ([MODALITY_INPUT] if graph_modality_input(model) is not None else [])

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.ctx.options.validate()
        # The float graph as the clean-up passes left it: taken before anything changes, as
        # the reference for med and msts (kept once `quantized` holds: passes/analyses.py).
        self.ctx.analyses.get(FLOAT_MODEL, model)
        ops.ensure_opset(model)
        names = ops.modalities(model)
        mod_in, const_mod = modality_of_graph(model, self.ctx)
        T = opts.timesteps(names)
        linears, attention, floats = find_linears(model)
        check_finite_weights(linears)
        imported = imported_weights(model, opts)  # a graph exported from a quantized checkpoint
        static = opts.static
        if static and linears and not self.ctx.feeds:
            raise SpikecError("--act-scale static: no calibration data for this graph; pass --calib PATH "
                              "or use --act-scale dynamic")
        smooth_notes, smooth_s = [], {}
        if opts.smooth is not None:
            self.ctx.require_feeds("quantize (--smooth)")
            smooth_s, smooth_notes = smooth(linears, lambda names: self.ctx.analyses.activations(model, names),
                                            opts.smooth)
        clips = {}
        if static and linears:
            clips = self._static_clips(model, linears, len(names), mod_in, const_mod, smooth_s, opts)
        hessians = None
        if opts.weight_method == "gptq" and linears:
            self.ctx.require_feeds("quantize (--weight-method gptq)")
            hessians = gptq_hessians(lambda names: self.ctx.analyses.activations(model, names, keep=False),
                                     linears, smooth_s)
        silent = []
        if static and linears:
            carried = list(range(len(names))) if mod_in is not None else [const_mod]
            silent = check_static_clips(clips, names, carried)
        plan = _ActivationPlan(names, mod_in, const_mod, T, static, clips, silent)
        layers = []
        from spikec.progress import track

        for lin in track(linears, "quantize", "layer", leave=False, delay=1.0):  # a bar on a terminal, if > 1 s
            layers.append(self._quantize_linear(model, lin, plan, _weights(lin, opts, hessians, imported), opts.wbits))
        for node in attention:
            if not opts.spike_attention:
                floats.append({"name": node.name, "op": "MatMul",
                               "reason": "attention product (activation x activation); --spike-attention converts it"})
                continue
            layers.append(self._spike_attention(model, node, plan))
        for note in smooth_notes:
            next((r for r in layers if r["name"] == note["name"]), {})["smooth"] = note
        self._report(opts, plan, layers, floats, imported, hessians, bool(linears))
        log.info("quantize: %d linear, %d attention, %d left float", len(linears), len(layers) - len(linears), len(floats))
        return ir.passes.PassResult(model, bool(layers))

    def _static_clips(self, model: ir.Model, linears: list[Linear], n_modalities: int, mod_in: ir.Value | None,
                      const_mod: int, smooth_s: dict, opts) -> dict[str, np.ndarray]:
        """{layer name: clip table [modalities, T_max]} from the float graph's activations on the
        calibration feeds. A smoothed layer sees X / s (its producer was rescaled), so its
        table is measured on X / s."""
        acts = self.ctx.analyses.activations(model, [lin.x.name for lin in linears] +
                                             ([MODALITY_INPUT] if mod_in is not None else []))
        return {lin.node.name: _clip_table(lin, acts, smooth_s.get(lin.x.name, np.float32(1.0)), n_modalities,
                                           const_mod, opts.calib_method, opts.percentile) for lin in linears}

    def _quantize_linear(self, model: ir.Model, lin: Linear, plan: _ActivationPlan, weights: tuple, wbits: int) -> dict:
        """Replace one linear layer by a QuantLinear over `weights` (`_weights`'s codes, scales and
        report fields; `wbits` unless the fields carry the layer's own width); its report row."""
        w = lin.w
        w_q, s_w, weight_note = weights
        wbits = weight_note.pop("_wbits", wbits)
        base = lin.node.name or lin.out.name
        inputs = [lin.x, plan.mod_in, initializer(model.graph, f"{base}.W_q", w_q),
                  initializer(model.graph, f"{base}.s_w", s_w)]
        if lin.bias is not None:
            inputs.append(initializer(model.graph, f"{base}.bias", lin.bias))
        old_inputs = [v for n in lin.old_nodes for v in n.inputs]
        new = ir.Node(ops.DOMAIN, ops.QUANT_LINEAR, inputs, plan.linear_attrs(lin.node.name, wbits), name=lin.node.name,
                      num_outputs=1)
        self._guard(new, w.shape[0], plan.T, wbits)
        replace_node(model, lin.old_nodes, lin.out, new)
        drop_unused_initializers(model, old_inputs)
        return plan.linear_row(lin, wbits, weight_note)

    def _spike_attention(self, model: ir.Model, node: ir.Node, plan: _ActivationPlan) -> dict:
        """Replace an attention product (both operands activations) by a QuantMatMul; its report row.
        The overflow guard runs only where the graph gives the inner size K."""
        a, b = node.inputs[0], node.inputs[1]
        attrs = [ir.AttrInt64s("timesteps", plan.T), ir.AttrInt64("bbits", 8)]
        if plan.mod_in is None:
            attrs.append(ir.AttrInt64("modality_id", plan.const_mod))
        new = ir.Node(ops.DOMAIN, ops.QUANT_MATMUL, [a, b, plan.mod_in], attrs, name=node.name, num_outputs=1)
        k = a.shape[-1] if a.shape is not None and len(a.shape) else None
        if isinstance(k, int):
            self._guard(new, k, plan.T, 8)
        replace_node(model, [node], node.outputs[0], new)
        return {"name": node.name, "kind": "attention", "K": k if isinstance(k, int) else None,
                "wbits": 8, "act_scale": "dynamic"}

    def _report(self, opts, plan: _ActivationPlan, layers: list[dict], floats: list[dict], imported,
                hessians: gptq.Hessians | None, any_linear: bool) -> None:
        """The pass's results: the options, a row per layer, and the summaries of group-wise
        scales, imported codes and GPTQ losses where they apply."""
        static = plan.static
        report = self.ctx.results["quantize"] = {
            "wbits": opts.wbits, "act_scale": "static" if static else "dynamic",
            "calib_method": opts.calib_method if static else None, "smooth_alpha": opts.smooth,
            "timesteps": dict(zip(plan.names, plan.T)), "layers": layers, "float": floats,
            "silent": plan.silent, "weight_method": opts.weight_method, "group_size": opts.group_size,
        }
        if opts.group_size and any_linear:
            report["group_wise_layers"] = _group_wise_summary(opts.group_size, layers)
        if imported is not None:
            report["imported"] = _imported_summary(imported, layers)
        if hessians is not None:
            rows = [r["gptq"] for r in layers if "gptq" in r]
            report["gptq"] = {
                "damp": opts.gptq_damp, "act_order": opts.gptq_act_order,
                "loss": sum(r["loss"] for r in rows), "rtn_loss": sum(r["rtn_loss"] for r in rows)}

    @staticmethod
    def _guard(node: ir.Node, K: int, T, wbits: int) -> None:
        try:
            ops.check_overflow_now(node, K, T, wbits)
        except SpikecError as exc:
            raise SpikecError(f"quantize: {exc}") from None


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x
