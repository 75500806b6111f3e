"""Lowering the vector-unit work to the accelerator (docs/isa.md section 9, "Vector kernels").

A *vector kernel* is one VEC function over the last axis of its operands that replaces
a pattern of host ops computing the same function with the ISA's float32 numerics
(docs/isa.md sections 3-4). Patterns, matched on a graph's top level in this order (a
node belongs to at most one pattern; intermediate results must have no other reader):

  RMSNORM    spikec.vec::RMSNorm(x, gamma, eps)      the vector-numerics pass makes these
  LAYERNORM  spikec.vec::LayerNorm(x, gamma, beta, eps)  of the exported patterns that
  SOFTMAX    spikec.vec::Softmax(x)                   `match_functions` finds: Pow/Mul ->
  SILU       spikec.vec::SiLU(x)                      ReduceMean -> Add -> Sqrt -> Reciprocal
                                                      -> Mul|Div (-> Mul gamma); LayerNormalization
                                                      (last axis, stash_type 1, constant
                                                      scale/bias); Softmax (last axis, opset
                                                      >= 13); Mul(x, Sigmoid(x))
  ROPE       Add(Mul(x, cos), Mul(Concat(Neg(x[..., h:]), x[..., :h]), sin)) where cos and
             sin are Cos/Sin(Concat(f, f)) (rotate-half tables whose halves are equal, so
             the ISA's [n, L/2] tables are their first halves)
  host-only  an Erf, Tanh or Sigmoid left over (erf GELU, quick GELU, ...) claims its
             elementwise neighbours, which stay on the host with it (no round trips for
             the pieces of a function the unit does not have)
  ADD, MUL   Add/Mul of two float activations of one shape (residual adds, SwiGLU gate)
  SCALE, ADD_ROW, MUL_ROW
             Mul by a scalar constant; Add/Mul by a constant row [L] (or scalar)

Numerics: every kernel is bit-identical to the host's op: ADD, MUL, SCALE, ADD_ROW,
MUL_ROW and ROPE are single IEEE operations, and the spikec.vec functions are defined as
the VEC functions' numerics (spikec/vector.py). The erf GELU is not the ISA's tanh GELU and
stays on the host.

A kernel's descriptor (JSON, in `isa/kernels` under `vec_kernels`) names the host nodes
it replaces, its operand tensors, the output, `len` (None when the row length is only
known at run time: then `max_len` bounds it) and the DRAM offsets of its constants in the
weights image (`vec_const`: gamma, gamma|beta or the row, loaded into VEC; `scl_const`:
eps or the scale, loaded into SCL). `build_vec_program` makes a call's instruction
stream: rows in chunks that fit two VEC slots, LOAD -> VEC -> STORE, double-buffered.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from spikec import ops as sops
from spikec import vector
from spikec.isa.descriptors import VecKernel
from spikec.isa.fields import VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.isa.tiling import TILE_ALIGN, TilingError, max_len, plan_vec

HOST_ONLY = {"Erf": "erf (GELU in the erf form; the ISA's GELU is the tanh form)",
             "Tanh": "tanh has no VEC function", "Sigmoid": "sigmoid outside SiLU (e.g. quick GELU) has no VEC function"}


# ---------------------------------------------------------------- graph helpers


def _const(v: ir.Value | None) -> np.ndarray | None:
    if v is None:
        return None
    t = v.const_value if v.const_value is not None else ir.convenience.get_const_tensor(v)
    return None if t is None else np.asarray(t.numpy())


def _dims(v: ir.Value | None) -> tuple | None:
    """The value's shape as ints and dim names, or None if unknown anywhere."""
    if v is None or v.shape is None:
        return None
    out = []
    for d in v.shape:
        d = d if isinstance(d, int) else d.value
        if d is None:
            return None
        out.append(d)
    return tuple(out)


def _last_len(v: ir.Value) -> int | None:
    d = _dims(v)
    return d[-1] if d and isinstance(d[-1], int) else None


def _is_act(v: ir.Value | None) -> bool:
    """A float32 activation (not a constant)."""
    return v is not None and v.dtype == ir.DataType.FLOAT and _const(v) is None


def _only_use(v: ir.Value, op_type: str | None = None) -> ir.Node | None:
    """The single node reading v (v not a graph output), if it has that op type."""
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    node = uses[0][0]
    return node if node.domain == "" and (op_type is None or node.op_type == op_type) else None


def _op(v: ir.Value | None, *op_types: str) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.domain == "" and p.op_type in op_types else None


def _is_last_axis(axis, rank: int | None) -> bool:
    return axis is not None and rank is not None and int(axis) in (-1, rank - 1)


def _scalar(v: ir.Value | None) -> float | None:
    c = _const(v)
    return float(c.reshape(())) if c is not None and c.size == 1 else None


def _other(node: ir.Node, v: ir.Value) -> ir.Value | None:
    """The other input of a binary node one of whose inputs is v."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is v else a if b is v else None


# ---------------------------------------------------------------- patterns


@dataclass
class VecMatch:
    func: VecFunc
    nodes: list[ir.Node]  # the host nodes replaced; the last one produces the output (its first)
    inputs: list[ir.Value]  # activation operands in the ISA's order (x, y1 | cos, sin)
    L: int | None
    row: np.ndarray | None = None  # VEC constant (gamma, gamma|beta, the row)
    scalar: float | None = None  # SCL constant (eps, the scale)


def _rmsnorm(rm: ir.Node) -> VecMatch | None:
    sq = _op(rm.inputs[0], "Pow", "Mul")
    if sq is None or _only_use(sq.outputs[0]) is not rm:
        return None
    x = sq.inputs[0]
    if not _is_act(x) or not (sq.op_type == "Pow" and _scalar(sq.inputs[1]) == 2.0
                                or sq.op_type == "Mul" and sq.inputs[1] is x):
        return None
    L, dims = _last_len(x), _dims(x)
    axes = _const(rm.inputs[1]) if len(rm.inputs) > 1 else sops.attr(rm, "axes")
    if L is None or axes is None or len(np.ravel(axes)) != 1 or not _is_last_axis(np.ravel(axes)[0], len(dims)) \
            or not sops.attr(rm, "keepdims", 1):
        return None
    add = _only_use(rm.outputs[0], "Add")
    eps = _scalar(_other(add, rm.outputs[0])) if add is not None else None
    sqrt = _only_use(add.outputs[0], "Sqrt") if eps is not None else None
    if sqrt is None:
        return None
    nodes = [sq, rm, add, sqrt]
    rec = _only_use(sqrt.outputs[0])
    if rec is not None and rec.op_type == "Reciprocal":
        mul = _only_use(rec.outputs[0], "Mul")
        if mul is None or _other(mul, rec.outputs[0]) is not x:
            return None
        nodes += [rec, mul]
    elif rec is not None and rec.op_type == "Div" and rec.inputs[0] is x and rec.inputs[1] is sqrt.outputs[0]:
        nodes.append(rec)  # x / sqrt(.) rounds once where x * (1 / sqrt(.)) rounds twice
    else:
        return None
    gamma = np.ones(L, np.float32)  # x * 1 is exact
    g = _only_use(nodes[-1].outputs[0], "Mul")
    gc = _const(_other(g, nodes[-1].outputs[0])) if g is not None else None
    if gc is not None and gc.dtype == np.float32 and gc.shape == (L,):
        gamma = gc
        nodes.append(g)
    return VecMatch(VecFunc.RMSNORM, nodes, [x], L, row=gamma, scalar=eps)


def _layernorm(ln: ir.Node) -> VecMatch | None:
    x = ln.inputs[0]
    L, dims = _last_len(x), _dims(x)
    scale = _const(ln.inputs[1])
    bias = _const(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2] is not None else np.zeros(L or 0, np.float32)
    if not _is_act(x) or L is None or not _is_last_axis(sops.attr(ln, "axis", -1), len(dims)) \
            or sops.attr(ln, "stash_type", 1) != 1 \
            or any(o is not None and (o.uses() or o.is_graph_output()) for o in ln.outputs[1:]):
        return None
    if scale is None or bias is None or scale.shape != (L,) or bias.shape != (L,):
        return None
    row = np.concatenate([scale, bias]).astype(np.float32)
    return VecMatch(VecFunc.LAYERNORM, [ln], [x], L, row=row, scalar=float(np.float32(sops.attr(ln, "epsilon", 1e-5))))


def _softmax(sm: ir.Node, opset: int) -> VecMatch | None:
    x = sm.inputs[0]
    dims = _dims(x)
    if opset < 13 or not _is_act(x) or dims is None or not _is_last_axis(sops.attr(sm, "axis", -1), len(dims)):
        return None
    return VecMatch(VecFunc.SOFTMAX, [sm], [x], _last_len(x))


def _silu(sig: ir.Node) -> VecMatch | None:
    x = sig.inputs[0]
    mul = _only_use(sig.outputs[0], "Mul")
    if mul is None or _other(mul, sig.outputs[0]) is not x or not _is_act(x) or _dims(x) is None:
        return None
    return VecMatch(VecFunc.SILU, [sig, mul], [x], _last_len(x))


def _half_table(v: ir.Value, op_type: str, L: int) -> bool:
    """v is Unsqueeze*(Cos|Sin(Concat(f, f) on the last axis)) with last dim L."""
    p = v.producer()
    while p is not None and p.domain == "" and p.op_type == "Unsqueeze":
        p = p.inputs[0].producer()
    if p is None or p.domain != "" or p.op_type != op_type or _last_len(v) != L:
        return False
    cat = _op(p.inputs[0], "Concat")
    return (cat is not None and len(cat.inputs) == 2 and cat.inputs[0] is cat.inputs[1]
            and _is_last_axis(sops.attr(cat, "axis"), len(_dims(cat.outputs[0]) or ())))


def _slice_of(s: ir.Node | None, x: ir.Value, lo: int, hi: int, rank: int) -> bool:
    """s is Slice(x)[..., lo:hi] on the last axis (hi: the row length or beyond)."""
    if s is None or s.op_type != "Slice" or s.inputs[0] is not x or len(s.inputs) < 4:
        return False
    st, en, ax = (_const(s.inputs[i]) for i in (1, 2, 3))
    step = _const(s.inputs[4]) if len(s.inputs) > 4 and s.inputs[4] is not None else np.ones(1)
    if any(c is None or c.size != 1 for c in (st, en, ax, step)) or not _is_last_axis(ax.item(), rank):
        return False
    return step.item() == 1 and st.item() == lo and (en.item() == hi or (en.item() >= hi and hi == 2 * lo))


def _rope(add: ir.Node) -> VecMatch | None:
    muls = [_op(v, "Mul") for v in add.inputs]
    if None in muls or any(_only_use(m.outputs[0]) is not add for m in muls):
        return None
    for m_cos, m_sin in (muls, muls[::-1]):
        for x, cos in (m_cos.inputs, m_cos.inputs[::-1]):
            L, dims = _last_len(x), _dims(x)
            if not _is_act(x) or L is None or L % 2 or not _half_table(cos, "Cos", L):
                continue
            for cat_v, sin in (m_sin.inputs, m_sin.inputs[::-1]):
                cat = _op(cat_v, "Concat")
                if cat is None or len(cat.inputs) != 2 or _only_use(cat_v) is not m_sin \
                        or not _is_last_axis(sops.attr(cat, "axis"), len(dims)) or not _half_table(sin, "Sin", L):
                    continue
                neg, s1 = _op(cat.inputs[0], "Neg"), cat.inputs[1].producer()
                s2 = neg.inputs[0].producer() if neg is not None else None
                h = L // 2
                if _slice_of(s1, x, 0, h, len(dims)) and _slice_of(s2, x, h, L, len(dims)) \
                        and _only_use(neg.outputs[0]) is cat and _only_use(s1.outputs[0]) is cat \
                        and _only_use(s2.outputs[0]) is neg:
                    return VecMatch(VecFunc.ROPE, [m_cos, s1, s2, neg, cat, m_sin, add], [x, cos, sin], L)
    return None


def _host_only(node: ir.Node) -> list[ir.Node]:
    """An unsupported elementwise function and the elementwise ops around it that only
    serve it: the producer of its input when that scales a single activation by a constant
    and nothing else reads it, and the chain of single readers Add/Mul/Div/Sub up to the
    one that takes that activation back (e.g. erf GELU: Div, Erf, Add, Mul, Mul)."""
    nodes = [node]
    root = node.inputs[0]
    p = _op(root, "Mul", "Div", "Add", "Sub")
    if p is not None and _only_use(root) is node and len(p.inputs) == 2:
        x = p.inputs[0] if _const(p.inputs[1]) is not None else p.inputs[1] if _const(p.inputs[0]) is not None else None
        if _is_act(x):
            nodes.insert(0, p)
            root = x
    v = node.outputs[0]
    while (c := _only_use(v)) is not None and c.op_type in ("Add", "Mul", "Div", "Sub") and len(c.inputs) == 2:
        other = _other(c, v)
        nodes.append(c)
        if other is root or _const(other) is None:
            break
        v = c.outputs[0]
    return nodes


def _elementwise(node: ir.Node) -> VecMatch | None:
    a, b = node.inputs[0], node.inputs[1]
    out = _dims(node.outputs[0])
    if node.outputs[0].dtype != ir.DataType.FLOAT or out is None:
        return None
    func = {"Add": VecFunc.ADD, "Mul": VecFunc.MUL}[node.op_type]
    if _is_act(a) and _is_act(b):
        if _dims(a) == _dims(b) == out:
            return VecMatch(func, [node], [a, b], _last_len(a))
        return None
    x, c = (a, _const(b)) if _is_act(a) else (b, _const(a))
    L = _last_len(x)
    if not _is_act(x) or c is None or c.dtype != np.float32 or _dims(x) != out:
        return None
    if c.size == 1 and func == VecFunc.MUL:
        return VecMatch(VecFunc.SCALE, [node], [x], L, scalar=float(c.reshape(())))
    if L is not None and (c.size == 1 or (c.shape[-1:] == (L,) and c.size == L and c.ndim <= len(out))):
        row = np.broadcast_to(c.reshape(-1), (L,)).astype(np.float32)
        return VecMatch(VecFunc.ADD_ROW if func == VecFunc.ADD else VecFunc.MUL_ROW, [node], [x], L, row=row)
    return None


def match_functions(model: ir.Model) -> list[VecMatch]:
    """The exported patterns of RMSNORM, LAYERNORM, SOFTMAX and SILU on a graph's top level
    (the vector-numerics pass turns each into a spikec.vec function call), in graph order;
    a node belongs to at most one, and every node of a match has a unique name."""
    opset = model.opset_imports.get("", 0)
    count = collections.Counter(n.name for n in model.graph)
    taken: set[int] = set()
    matches: list[VecMatch] = []
    for n in list(model.graph):
        if n.domain != "":
            continue
        m = (_rmsnorm(n) if n.op_type == "ReduceMean" else _layernorm(n) if n.op_type == "LayerNormalization"
             else _softmax(n, opset) if n.op_type == "Softmax" else _silu(n) if n.op_type == "Sigmoid" else None)
        if m is None or any(id(k) in taken or not k.name or count[k.name] != 1 for k in m.nodes):
            continue
        taken.update(id(k) for k in m.nodes)
        matches.append(m)
    return matches


VEC_FUNCS = {vector.RMSNORM: VecFunc.RMSNORM, vector.LAYERNORM: VecFunc.LAYERNORM,
             vector.SOFTMAX: VecFunc.SOFTMAX, vector.SILU: VecFunc.SILU}


def _vec_function(node: ir.Node) -> VecMatch | None:
    """A spikec.vec call (put there by the vector-numerics pass): its constants from its inputs."""
    func = VEC_FUNCS.get(node.op_type)
    if func is None or len(node.inputs) != vector.n_inputs(node.op_type) or not _is_act(node.inputs[0]):
        return None
    x = node.inputs[0]
    consts = [_const(v) for v in node.inputs[1:]]
    if any(c is None or c.dtype != np.float32 for c in consts):
        return None
    L = _last_len(x)
    if func in (VecFunc.RMSNORM, VecFunc.LAYERNORM):
        rows, eps = consts[:-1], consts[-1]
        if L is None or eps.size != 1 or any(r.shape != (L,) for r in rows):
            return None
        return VecMatch(func, [node], [x], L, row=np.concatenate(rows).astype(np.float32), scalar=float(eps.reshape(())))
    return VecMatch(func, [node], [x], L)


def match_graph(model: ir.Model) -> tuple[list[VecMatch], dict[str, str]]:
    """The vector kernels of a graph (top level), in graph order, and the host-only claims
    (the Erf/Tanh/Sigmoid node's name -> reason)."""
    nodes = [n for n in model.graph if n.domain == ""]
    count = collections.Counter(n.name for n in model.graph)
    unique = {name for name, c in count.items() if name and c == 1}
    taken: set[int] = set()
    matches: list[VecMatch] = []
    host: dict[str, str] = {}

    def claim(m: VecMatch | None) -> None:
        if m is None or any(id(n) in taken or n.name not in unique for n in m.nodes):
            return
        taken.update(id(n) for n in m.nodes)
        matches.append(m)

    for n in model.graph:
        if n.domain == vector.DOMAIN:
            claim(_vec_function(n))
    for n in nodes:
        if n.op_type == "Add":
            claim(_rope(n))
    for n in nodes:
        if n.op_type in HOST_ONLY and id(n) not in taken:
            group = [m for m in _host_only(n) if id(m) not in taken]
            taken.update(id(m) for m in group)
            host[n.name] = f"{HOST_ONLY[n.op_type]}: {len(group)} ops stay on the host ({', '.join(m.op_type for m in group)})"
    for n in nodes:
        if n.op_type in ("Add", "Mul") and id(n) not in taken:
            claim(_elementwise(n))
    order = {id(n): i for i, n in enumerate(model.graph)}
    matches.sort(key=lambda m: order[id(m.nodes[-1])])
    return matches, host


# ---------------------------------------------------------------- kernels and the weights image


def lower_graph(model: ir.Model, role: str, cfg: HwConfig, image: bytearray,
                first_index: int) -> tuple[list[VecKernel], dict[str, str]]:
    """Vector-kernel descriptors for a graph (constants appended to `image`, 64-byte aligned),
    and the host patterns / refused matches (node name -> reason)."""
    matches, not_lowered = match_graph(model)
    kernels = []
    for m in matches:
        try:
            top = _row_limit(cfg, m)
        except TilingError as exc:
            not_lowered[m.nodes[-1].name] = f"{m.func.name}: {exc}"
            continue
        vec_const = scl_const = None
        if m.row is not None:
            image += bytes(-len(image) % TILE_ALIGN)
            vec_const = len(image)
            image += np.ascontiguousarray(m.row, "<f4").tobytes()
        if m.scalar is not None:
            image += bytes(-len(image) % TILE_ALIGN)
            scl_const = len(image)
            image += np.asarray([m.scalar], "<f4").tobytes()
        kernels.append(VecKernel(
            index=first_index + len(kernels), graph=role, func=m.func, node=m.nodes[-1].name,
            nodes=tuple(n.name for n in m.nodes), inputs=tuple(v.name for v in m.inputs),
            output=m.nodes[-1].outputs[0].name, length=m.L, max_len=top, vec_const=vec_const,
            vec_const_len=int(m.row.size) if m.row is not None else 0, scl_const=scl_const))
    image += bytes(-len(image) % TILE_ALIGN)
    return kernels, not_lowered


def _row_limit(cfg: HwConfig, m: VecMatch) -> int:
    """The longest row of the match's kernel: its fixed length (when plan_vec takes it) or, for
    rows known only at run time, the longest VEC holds. Raises TilingError."""
    if m.L is not None:
        plan_vec(cfg, m.func, m.L)
        return m.L
    top = max_len(cfg, m.func)
    if top < 1:
        raise TilingError("no row fits VEC")
    return top


__all__ = ["VEC_FUNCS", "VecMatch", "lower_graph", "match_functions", "match_graph"]
