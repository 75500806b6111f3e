"""rotate: QuaRot-style orthogonal rotation of the residual stream, folded into the weights.

QuaRot (Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS
2024, section 4) multiplies the residual stream of a pre-norm transformer by an
orthogonal matrix Q. RMSNorm without its scale is rotation invariant (||x Q|| = ||x||), so
with each norm's gamma folded into the linears that read the norm, the float model's
function is unchanged when

    every linear reading the stream (after a norm)    W' = Q^T diag(gamma) W   (gamma := 1)
    every linear writing into the stream (o_proj,     W' = W Q,  bias' = bias Q
      down_proj, the vision projector's last layer)
    the token embedding table                          E' = E Q

(weights in the x @ W form [K, M]). The rotated stream has no channel that carries most of
the energy (Hadamard rotations spread outliers over all channels), which is what makes
4-bit weights and low-timestep activation codes of the linears' inputs accurate.

Q = diag(s) H / sqrt(n), a randomized Hadamard matrix (QuaRot's choice): H is a Hadamard
matrix of order n built as H_m (x) H_{2^k} (Sylvester for 2^k; Paley's construction I for
m = p + 1, p a prime = 3 mod 4: 12, 20, 44, 140, 224, ...) and s a seeded random sign
vector; when no such factorisation of n exists (Qwen2-VL-7B's 18944 is one), Q is a
seeded random orthogonal matrix (QR of a Gaussian matrix, as SpinQuant's initialisation).
Deterministic: the same n always gives the same Q, so each graph of an export, compiled
on its own, applies the same rotation.

Which graph is which is read from its structure (the pass runs on every graph of an
export with the same options):
- a graph with a float input that feeds an RMSNorm is a language model: the stream is that
  input, the residual Adds after it, and every norm reading them;
- a graph whose output is a Gather of a constant table is the token embedding;
- a graph whose output is made by a linear layer (MatMul or Gemm with a constant weight,
  possibly through a bias Add) is the vision encoder + projector.
Anything else, or a stream value read by another op, is refused with the node's name:
a partial rotation would change the model's function.

Also QuaRot's online Hadamard before each down projection (`_online_hadamard`; off with
`--no-online-hadamard`), and, with --spike-attention, the online rotation of the attention
products (`_rotate_attention`: Q and K by the head dimension's Hadamard matrix, so that
Q K^T is unchanged; V by it and the output back), which spreads the outlier channels of
the keys before their per-tensor 8-bit code (QuaRot section 4, "attention"). These are
float ops on every target; on the accelerator the key's transpose then runs on the host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from spikec import ir as spir
from spikec import ops
from spikec.errors import SpikecError
from spikec.isa.fields import VecFunc
from spikec.passes.generic import FLOAT_ANALYSES
from spikec.passes.lower_vec import match_functions
from spikec.passes.options import ContextPass
from spikec.passes.quantize import const_array

log = logging.getLogger(__name__)

ROTATION_SEED = 0x5EED  # with n: the seed of Q's signs (or of the random orthogonal fallback)
ROW_BLOCK = 16384  # rows of an embedding table rotated at a time (bounded float64 scratch)


# ---------------------------------------------------------------- the matrices


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def paley_hadamard(p: int) -> np.ndarray:
    """Paley's construction I: a Hadamard matrix int8 [p + 1, p + 1] for a prime p = 3 mod 4
    (H = I + S, S the skew conference matrix from the Legendre symbol mod p; R. E. A. C.
    Paley, "On orthogonal matrices", J. Math. Phys. 12, 1933). Raises ValueError otherwise."""
    if not (_is_prime(p) and p % 4 == 3):
        raise ValueError(f"Paley I needs a prime p = 3 mod 4, got {p}")
    squares = {(i * i) % p for i in range(1, p)}
    chi = np.array([0] + [1 if i in squares else -1 for i in range(1, p)], dtype=np.int64)
    idx = np.arange(p)
    jac = chi[(idx[None, :] - idx[:, None]) % p]  # Q[i, j] = chi(j - i), antisymmetric
    s = np.zeros((p + 1, p + 1), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return (np.eye(p + 1, dtype=np.int64) + s).astype(np.int8)


MAX_FACTOR = 128  # the largest Kronecker factor of an online Hadamard (a [128, 128] constant)


def _sylvester(order: int) -> np.ndarray:
    h = np.array([[1]], np.int8)
    while h.shape[0] < order:
        h = np.block([[h, h], [h, -h]]).astype(np.int8)
    return h


def hadamard_factors(n: int) -> list[np.ndarray] | None:
    """Hadamard matrices int8 whose Kronecker product (in order) is one of order n: the base
    of order m (1, 2, or p + 1 for a prime p = 3 mod 4, by Paley I) for the largest 2^k with
    n = m 2^k, then Sylvester matrices of order at most MAX_FACTOR for 2^k; None when n has
    no such form."""
    if n < 1:
        return None
    k = (n & -n).bit_length() - 1
    for j in range(k, -1, -1):
        m = n >> j
        if m in (1, 2):
            base = _sylvester(m)
        elif m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            base = paley_hadamard(m - 1)
        else:
            continue
        factors = [base] if m > 1 else []
        step = MAX_FACTOR.bit_length() - 1
        for e in range(j, 0, -step):
            factors.append(_sylvester(2 ** min(e, step)))
        return factors or [_sylvester(1)]
    return None


def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix int8 [n, n] (entries +-1, H H^T = n I): the Kronecker product of
    `hadamard_factors(n)`; None when n has no such form."""
    factors = hadamard_factors(n)
    if factors is None:
        return None
    h = np.array([[1]], np.int64)
    for f in factors:
        h = np.kron(h, f.astype(np.int64))
    return h.astype(np.int8)


def kron_rows(factors: list[np.ndarray], w: np.ndarray) -> np.ndarray:
    """(F_1 (x) ... (x) F_r)^T @ w for w [n, ...] (n = the factors' orders multiplied), in
    float64 without forming the [n, n] product: each factor acts on its own axis of w
    reshaped [f_1, ..., f_r, ...]. Also the online transform's definition: x @ H = this of x^T."""
    orders = [f.shape[0] for f in factors]
    rest = w.shape[1:]
    a = np.asarray(w, dtype=np.float64).reshape(orders + list(rest))
    for axis, f in enumerate(factors):
        a = np.moveaxis(np.tensordot(f.astype(np.float64).T, a, axes=([1], [axis])), 0, axis)
    return a.reshape(w.shape)


def rotation_matrix(n: int) -> tuple[np.ndarray, str]:
    """(Q float64 [n, n] orthogonal, kind): the randomized Hadamard diag(s) H / sqrt(n), or,
    when no Hadamard matrix of order n is built by `hadamard`, a random orthogonal matrix
    (QR of a standard Gaussian, signs fixed by R's diagonal). Seeded by (ROTATION_SEED, n)."""
    rng = np.random.default_rng([ROTATION_SEED, n])
    h = hadamard(n)
    if h is not None:
        s = rng.choice([-1.0, 1.0], size=n)
        return s[:, None] * h.astype(np.float64) / np.sqrt(n), "hadamard"
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :], "random-orthogonal"


# ---------------------------------------------------------------- the graph


@dataclass
class Linear:
    """A linear layer applying a constant weight: W [K, M] in x @ W form (Gemm's alpha and
    transB folded), and its bias [M] (a following Add, or Gemm's C), if any."""

    node: ir.Node
    w: np.ndarray
    bias_value: ir.Value | None
    bias: np.ndarray | None
    out: ir.Value  # after the bias


def _uses(v: ir.Value) -> list[ir.Node]:
    return [u.node for u in v.uses()]


def _linear(node: ir.Node) -> Linear | None:
    """`node` as a Linear, or None (not a MatMul/Gemm with a constant 2-D right operand)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
        return None
    w = const_array(node.inputs[1])
    if w is None or w.ndim != 2 or const_array(node.inputs[0]) is not None:
        return None
    out = node.outputs[0]
    if node.op_type == "Gemm":
        if ops.attr(node, "transA", 0):
            return None
        w = (w.T if ops.attr(node, "transB", 0) else w) * np.float32(ops.attr(node, "alpha", 1.0))
        c = node.inputs[2] if len(node.inputs) > 2 else None
        b = const_array(c)
        if c is not None and (b is None or b.size != w.shape[1]):
            return None
        bias = None if b is None else b.reshape(-1) * np.float32(ops.attr(node, "beta", 1.0))
        return Linear(node, w, c, bias, out)
    users = _uses(out)
    if len(users) == 1 and users[0].op_type == "Add" and users[0].domain in ("", "ai.onnx"):
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        b = const_array(other)
        if b is not None and b.size == w.shape[1] and b.shape[-1:] == (w.shape[1],):
            return Linear(node, w, other, b.reshape(-1), add.outputs[0])
    return Linear(node, w, None, None, out)


def _last_dim(v: ir.Value):
    return v.shape[-1] if v.shape is not None and len(v.shape) else None


def _moves_whole_rows(p: ir.Node, v: ir.Value) -> bool:
    """`p` (the producer of `v`) only moves whole rows of its data input (the last axis kept
    as it is), so a rotation of the rows commutes with it: a Reshape keeping the last
    axis, a Gather along another axis, a GatherND picking whole rows (Qwen2.5-VL's window
    reordering of the merger's output)."""
    if p.domain not in ("", "ai.onnx") or not p.inputs or p.inputs[0] is None or len(_uses(p.inputs[0])) != 1:
        return False
    data = p.inputs[0]
    rank = len(data.shape) if data.shape is not None else None
    if p.op_type == "Reshape":
        return isinstance(_last_dim(v), int) and _last_dim(data) == _last_dim(v)
    if p.op_type == "Gather" and rank:
        axis = int(ops.attr(p, "axis", 0))
        return (axis % rank) != rank - 1
    if p.op_type == "GatherND" and rank and int(ops.attr(p, "batch_dims", 0)) == 0:
        k = _last_dim(p.inputs[1]) if len(p.inputs) > 1 and p.inputs[1] is not None else None
        return isinstance(k, int) and k < rank
    return False


def _writer(v: ir.Value) -> Linear:
    """The linear layer whose output (after its bias) is `v`, through a bias Add, and through
    ops that only move whole rows (`_moves_whole_rows`: a row stays a row, so the rotation
    commutes)."""
    p = v.producer()
    while p is not None and _moves_whole_rows(p, v):
        v = p.inputs[0]
        p = v.producer()
    if p is not None and p.op_type == "Add":
        for x in p.inputs:
            q = x.producer() if x is not None else None
            lin = _linear(q) if q is not None else None
            if lin is not None and lin.out is v:
                return lin
    lin = _linear(p) if p is not None else None
    if lin is None or lin.out is not v:
        raise SpikecError(f"rotate: '{v.name}' is written to the residual stream but is not a linear layer's output "
                          f"(made by {p.op_type if p is not None else 'a graph input'} "
                          f"'{p.name if p is not None else v.name}')")
    return lin


class _Rewriter:
    """Replaces constants: in place when the initializer has one user, else a new one."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph, self.n = graph, 0

    def set_input(self, node: ir.Node, index: int, array: np.ndarray) -> None:
        old = node.inputs[index]
        array = np.ascontiguousarray(array, dtype=np.float32)
        if old is not None and old.is_initializer() and len(old.uses()) == 1 and old.name:
            old.const_value = spir.new_tensor(array, old.name)
            old.shape = ir.Shape(array.shape)
            return
        self.n += 1
        name = f"{old.name if old is not None and old.name else node.name}.rotated.{self.n}"
        v = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape),
                     const_value=spir.new_tensor(array, name))
        self.graph.register_initializer(v)
        node.replace_input_with(index, v)

    def constant(self, name: str, array: np.ndarray) -> ir.Value:
        """A new initializer (int64 dims or float32 factors of the online Hadamard)."""
        v = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape),
                     const_value=ir.Tensor(array, name=name))
        self.graph.register_initializer(v)
        return v

    def set_weight(self, lin: Linear, w: np.ndarray) -> None:
        """Store x @ W form `w` [K, M] back in the node's own layout (Gemm: alpha 1, transB kept)."""
        if lin.node.op_type == "Gemm":
            if ops.attr(lin.node, "alpha", 1.0) != 1.0:
                lin.node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
            w = w.T if ops.attr(lin.node, "transB", 0) else w
        self.set_input(lin.node, 1, w)

    def set_bias(self, lin: Linear, b: np.ndarray) -> None:
        if lin.node.op_type == "Gemm":
            if ops.attr(lin.node, "beta", 1.0) != 1.0:
                lin.node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
            self.set_input(lin.node, 2, b)
            return
        add = lin.out.producer()
        self.set_input(add, list(add.inputs).index(lin.bias_value), b.reshape(const_array(lin.bias_value).shape))


def _rotate_out(lin: Linear, q: np.ndarray, rw: _Rewriter) -> None:
    """A linear writing the stream: W' = W Q, bias' = bias Q (float64, then float32)."""
    rw.set_weight(lin, lin.w.astype(np.float64) @ q)
    if lin.bias is not None:
        rw.set_bias(lin, lin.bias.astype(np.float64) @ q)


def _rotate_in(lin: Linear, q: np.ndarray, gamma: np.ndarray | None, rw: _Rewriter) -> None:
    """A linear reading a norm of the stream: W' = Q^T diag(gamma) W."""
    w = lin.w.astype(np.float64)
    if gamma is not None:
        w = gamma.astype(np.float64)[:, None] * w
    rw.set_weight(lin, q.T @ w)


# ---------------------------------------------------------------- per kind of graph


def _is_gated_mlp_output(lin: Linear) -> bool:
    """A down projection: its input is a product (act(gate(x)) * up(x)), not attention."""
    p = lin.node.inputs[0].producer()
    return p is not None and p.op_type == "Mul"


def _online_hadamard(model: ir.Model, lin: Linear, rw: _Rewriter, signs: bool = False) -> bool:
    """QuaRot's online Hadamard before a down projection: its input u becomes u @ H (H of
    order I, unnormalised, +-1 entries) and W' = H^T W / I, so u' @ W' = u @ W. u @ H is
    computed as one MatMul per Kronecker factor F (`hadamard_factors`): u reshaped
    [-1, P, f, S] and multiplied on the left by F^T [f, f] (a constant left operand, so it
    stays a float op: quantize takes only x @ W products), then reshaped back. With
    `signs`, u is first multiplied by a seeded random sign vector s (a Mul; W' = H^T
    diag(s) W / I): a randomized Hadamard, for inputs with a mean far from zero (a GELU's
    output is nearly non-negative), whose mean a plain H, with a constant column, would
    gather into one channel: the vision merger's 384-wide GELU output lost about a third of
    what the rotation gains without it (docs/passes.md, rotate). False (and
    nothing changed) when I has no Hadamard matrix here."""
    u = lin.node.inputs[0]
    n = lin.w.shape[0]
    factors = hadamard_factors(n)
    if factors is None or n == 1:
        return False
    graph, base = model.graph, f"{lin.node.name}.online_hadamard"
    shape = ir.node("Shape", [u], name=f"{base}.shape")
    nodes, x, before = [shape], u, 1
    if signs:
        sv = np.random.default_rng([ROTATION_SEED, n, 1]).choice([-1.0, 1.0], size=n)
        flip = ir.node("Mul", [u, rw.constant(f"{base}.signs", sv.astype(np.float32))], name=f"{base}.signs.mul")
        flip.outputs[0].type, flip.outputs[0].shape = u.type, u.shape
        nodes.append(flip)
        x = flip.outputs[0]
    orders = [f.shape[0] for f in factors]
    for i, f in enumerate(factors):
        after = n // (before * orders[i])
        dims = rw.constant(f"{base}.dims{i}", np.array([-1, before, orders[i], after], np.int64))
        r = ir.node("Reshape", [x, dims], name=f"{base}.reshape{i}")
        ft = rw.constant(f"{base}.factor{i}", f.T.astype(np.float32))
        mm = ir.node("MatMul", [ft, r.outputs[0]], name=f"{base}.factor{i}.matmul")
        nodes += [r, mm]
        for v in (r.outputs[0], mm.outputs[0]):  # typed, so the passes after this one see ranks
            v.type, v.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([None, before, orders[i], after])
        x, before = mm.outputs[0], before * orders[i]
    back = ir.node("Reshape", [x, shape.outputs[0]], name=f"{base}.reshape_back")
    nodes.append(back)
    shape.outputs[0].type = ir.TensorType(ir.DataType.INT64)
    shape.outputs[0].shape = ir.Shape([len(u.shape)]) if u.shape is not None else None
    back.outputs[0].type, back.outputs[0].shape = u.type, u.shape
    for k in nodes:
        for o in k.outputs:
            o.name = f"{k.name}.out"
    graph.insert_before(lin.node, nodes)
    lin.node.replace_input_with(0, back.outputs[0])
    w = lin.w.astype(np.float64) * (sv[:, None] if signs else 1.0)  # diag(s) W: x * s is exact
    lin.w = kron_rows(factors, w) / n  # H^T (diag(s)) W / I, float64: _rotate_out rotates and stores it
    return True


def _typed(v: ir.Value, like: ir.Value, shape) -> None:
    v.type, v.shape = like.type, (ir.Shape(list(shape)) if shape is not None else None)


def _times_constant(x: ir.Value, h: np.ndarray, base: str, rw: _Rewriter) -> tuple[list[ir.Node], ir.Value]:
    """Nodes computing x @ h for x [..., a, n] of known rank and h [n, n] float32, as
    Transpose -> MatMul(h^T, .) -> Transpose: a constant *left* operand, so the product stays
    a float op (quantize takes only x @ W products as linear layers)."""
    r = len(x.shape)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    swapped = list(x.shape)[:-2] + [x.shape[-1], x.shape[-2]]
    t1 = ir.node("Transpose", [x], attributes={"perm": perm}, name=f"{base}.transpose_in")
    ht = rw.constant(f"{base}.hadamard_t", np.ascontiguousarray(h.T, dtype=np.float32))
    mm = ir.node("MatMul", [ht, t1.outputs[0]], name=f"{base}.matmul")
    t2 = ir.node("Transpose", [mm.outputs[0]], attributes={"perm": perm}, name=f"{base}.transpose_out")
    _typed(t1.outputs[0], x, swapped)
    _typed(mm.outputs[0], x, swapped)
    _typed(t2.outputs[0], x, x.shape)
    nodes = [t1, mm, t2]
    for k in nodes:
        k.outputs[0].name = f"{k.name}.out"
    return nodes, t2.outputs[0]


def _static(d) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) else None


def _rotate_attention(model: ir.Model, rw: _Rewriter) -> dict:
    """QuaRot's rotation of the attention products (an activation x activation MatMul A @ B,
    quantized with --spike-attention), online and exact in real arithmetic, with the
    orthonormal Hadamard matrix Hn = H / sqrt(n) of the product's static head dimension:
    - the contraction is static (Q @ K^T, k = head_dim): A' = A Hn, B' = Hn^T B, so
      A' B' = A B; both operands are spread (K's outlier channels, QuaRot's reason);
    - else the output is static (P @ V, n = head_dim): B' = B Hn, Y = (A B') Hn^T.
    A product with no static dimension of a Hadamard order is left as it is (reported)."""
    from spikec.passes.quantize import find_linears

    done, skipped = [], []
    for node in find_linears(model)[1]:
        a, b = node.inputs[0], node.inputs[1]
        if a.shape is None or b.shape is None or len(a.shape) < 2 or len(b.shape) < 2:
            skipped.append({"name": node.name, "reason": "operand ranks not known"})
            continue
        k, n = _static(b.shape[-2]), _static(b.shape[-1])
        base = f"{node.name}.attention_hadamard"
        if k and k > 1 and hadamard(k) is not None:
            hn = hadamard(k).astype(np.float64) / np.sqrt(k)
            a_nodes, a2 = _times_constant(a, hn, f"{base}.left", rw)
            ht = rw.constant(f"{base}.right.hadamard_t", np.ascontiguousarray(hn.T, dtype=np.float32))
            mm = ir.node("MatMul", [ht, b], name=f"{base}.right.matmul")
            _typed(mm.outputs[0], b, b.shape)
            mm.outputs[0].name = f"{mm.name}.out"
            model.graph.insert_before(node, a_nodes + [mm])
            node.replace_input_with(0, a2)
            node.replace_input_with(1, mm.outputs[0])
            done.append({"name": node.name, "rotated": "contraction", "n": k})
        elif n and n > 1 and hadamard(n) is not None:
            y = node.outputs[0]
            if y.is_graph_output() or y.shape is None:
                skipped.append({"name": node.name, "reason": "output is a graph output or of unknown rank"})
                continue
            hn = hadamard(n).astype(np.float64) / np.sqrt(n)
            b_nodes, b2 = _times_constant(b, hn, f"{base}.right", rw)
            model.graph.insert_before(node, b_nodes)
            node.replace_input_with(1, b2)
            users = [(u.node, u.idx) for u in y.uses()]
            y_nodes, y2 = _times_constant(y, hn.T, f"{base}.out", rw)
            model.graph.insert_after(node, y_nodes)
            for user, idx in users:
                user.replace_input_with(idx, y2)
            done.append({"name": node.name, "rotated": "output", "n": n})
        else:
            skipped.append({"name": node.name, "reason": "no static head dimension with a Hadamard matrix"})
    return {"products": len(done), "rotated": done, "skipped": skipped}


def _rotate_lm(model: ir.Model, x0: ir.Value, norms: dict[int, list], rw: _Rewriter, online: bool = True) -> dict:
    n = x0.shape[-1]
    q, kind = rotation_matrix(n)
    stream, frontier = {id(x0)}, [x0]
    readers = writers = folded = online_done = 0
    while frontier:
        v = frontier.pop()
        if v.is_graph_output():
            raise SpikecError(f"rotate: the residual stream value '{v.name}' is a graph output (it would come out rotated)")
        for node in _uses(v):
            if id(node) in norms["nodes"] or node.op_type in ("Shape", "Size"):  # shapes do not change
                continue
            if node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
                other = node.inputs[1] if node.inputs[0] is v else node.inputs[0]
                if other is not None and id(other) in stream:
                    raise SpikecError(f"rotate: node '{node.name}' adds two residual-stream values")
                lin = _writer(other)
                if online and _is_gated_mlp_output(lin) and _online_hadamard(model, lin, rw):
                    online_done += 1
                _rotate_out(lin, q, rw)
                writers += 1
                out = node.outputs[0]
                if id(out) not in stream:
                    stream.add(id(out))
                    frontier.append(out)
                continue
            raise SpikecError(f"rotate: the residual stream value '{v.name}' is read by {node.op_type} node "
                              f"'{node.name}', which is neither a residual Add nor an RMSNorm")
    for m in norms["matches"]:
        if id(m.inputs[0]) not in stream:
            continue
        gamma_node = m.nodes[-1]
        g_idx = [i for i, x in enumerate(gamma_node.inputs) if const_array(x) is not None]
        gamma = m.row if g_idx else None  # a norm without a scale Mul has nothing to fold
        out = gamma_node.outputs[0]
        for node in _uses(out):
            lin = _linear(node)
            if lin is None or node.inputs[0] is not out:
                raise SpikecError(f"rotate: the norm '{gamma_node.name}' is read by {node.op_type} node '{node.name}', "
                                  "not by a linear layer")
            _rotate_in(lin, q, gamma, rw)
            readers += 1
        if gamma is not None:  # gamma is in the readers now
            idx = g_idx[0]
            rw.set_input(gamma_node, idx, np.ones_like(const_array(gamma_node.inputs[idx]), dtype=np.float32))
            folded += 1
    return {"graph": "language model", "input": x0.name, "n": int(n), "matrix": kind, "readers": readers,
            "writers": writers, "norms_folded": folded, "online_hadamard": online_done}


def mean_preserving_rotation(n: int) -> tuple[np.ndarray, str]:
    """(Q float64 [n, n] orthogonal with Q 1 = 1, kind): `rotation_matrix(n)` times the
    Householder reflection P = I - 2 u u^T / (u^T u), u = Q'^T 1 - 1, which maps Q'^T 1 back
    to 1 (both have norm sqrt(n)). A LayerNorm commutes with such a Q: the mean of x Q is
    the mean of x and (x - mean) Q has the norm of x - mean, so LayerNorm(x Q) with unit
    scale and zero bias is LayerNorm(x) Q. (SliceGPT, Ashkboos et al. ICLR 2024, instead
    makes the stream zero-mean and turns LayerNorm into RMSNorm; keeping the LayerNorm
    keeps the vector unit's numerics of the graph as exported.)"""
    q, kind = rotation_matrix(n)
    ones = np.ones(n)
    u = q.T @ ones - ones
    if float(u @ u) < 1e-24:  # Q' already keeps 1
        return q, kind
    return q - 2.0 * np.outer(q @ u, u) / float(u @ u), f"{kind}+householder"


@dataclass
class _Norm:
    """A norm reading the encoder's stream: its input, output, scale, shift (None: an
    RMSNorm, or no bias) and the node/input index of each, to reset to 1 and 0."""

    x: ir.Value
    out: ir.Value
    gamma: np.ndarray
    beta: np.ndarray | None
    gamma_at: tuple[ir.Node, int] | None
    beta_at: tuple[ir.Node, int] | None


def _encoder_norms(model: ir.Model) -> dict[int, _Norm]:
    """LayerNormalization nodes (last axis, constant scale and bias) and RMSNorm patterns,
    keyed by the id of the value they read."""
    out: dict[int, _Norm] = {}
    for m in match_functions(model):
        if m.func == VecFunc.LAYERNORM:
            ln = m.nodes[0]
            has_b = len(ln.inputs) > 2 and ln.inputs[2] is not None
            out[id(m.inputs[0])] = _Norm(m.inputs[0], ln.outputs[0], m.row[:m.L], m.row[m.L:] if has_b else None,
                                         (ln, 1), (ln, 2) if has_b else None)
        elif m.func == VecFunc.RMSNORM:
            g = m.nodes[-1]
            idx = [i for i, x in enumerate(g.inputs) if const_array(x) is not None]
            out[id(m.inputs[0])] = _Norm(m.inputs[0], g.outputs[0], m.row, None,
                                         (g, idx[0]) if g.op_type == "Mul" and idx else None, None)
    return out


def _conv_writer(v: ir.Value) -> ir.Node | None:
    """The Conv whose output channels are the rows of `v`: a patch embedding, Conv with a
    constant weight, no bias, every spatial output dimension 1, reshaped to [..., C]."""
    p = v.producer()
    if p is None or p.op_type != "Reshape" or p.domain not in ("", "ai.onnx") or _last_dim(v) is None:
        return None
    c = p.inputs[0].producer()
    y = p.inputs[0]
    if c is None or c.op_type != "Conv" or len(_uses(y)) != 1 or (len(c.inputs) > 2 and c.inputs[2] is not None):
        return None
    w = const_array(c.inputs[1]) if len(c.inputs) > 1 else None
    dims = list(y.shape) if y.shape is not None else []
    if w is None or len(dims) < 3 or dims[1] != w.shape[0] or any(d != 1 for d in dims[2:]) or w.shape[0] != _last_dim(v):
        return None
    return c


def _stream_start(v: ir.Value) -> tuple[object, ir.Value]:
    """The writer of the encoder's first stream value `v` (through ops that move whole rows):
    a Linear, or a patch-embedding Conv (`_conv_writer`)."""
    p = v.producer()
    while p is not None and _moves_whole_rows(p, v) and _conv_writer(v) is None:
        v = p.inputs[0]
        p = v.producer()
    conv = _conv_writer(v)
    return (conv, v) if conv is not None else (_writer(v), v)


class _NotRotated(Exception):
    """The encoder's structure is not the one rotated here; nothing was changed."""


def _rotate_encoder(model: ir.Model, rw: _Rewriter, online: bool) -> dict:
    """QuaRot inside a vision encoder of pre-norm blocks (Qwen2-VL's, Qwen2.5-VL's): the
    encoder's residual stream is rotated by Q of its width (`mean_preserving_rotation`, so
    LayerNorms commute with it), folded into the weights as in the language model: the
    patch embedding and every linear writing the stream (W Q), every linear reading a norm
    of it (Q^T diag(gamma) W, bias + beta W; a merger that reads g norm rows concatenated
    as one row, block-wise), the norms' scale 1 and bias 0; with `online`, a randomized
    online Hadamard before each linear writing the stream (attention output and MLP down
    projection). The structure is checked before anything changes: an encoder of another
    shape (CLIP's, InternViT's and SigLIP's embeddings add position tables and a class
    token) raises _NotRotated with the reason."""
    norms = _encoder_norms(model)
    order = {id(n): i for i, n in enumerate(model.graph)}
    starts = sorted((n for n in norms.values() if n.x.producer() is not None), key=lambda n: order[id(n.x.producer())])
    if not starts:
        raise _NotRotated("no norm in the encoder")
    try:
        first_writer, x0 = _stream_start(starts[0].x)
    except SpikecError:
        p = starts[0].x.producer()
        raise _NotRotated(f"its stream, read first by a norm, starts at '{starts[0].x.name}', made by {p.op_type} node "
                          f"'{p.name}', not by a patch-embedding Conv or a linear layer (embeddings that add a position "
                          "table or a class token, as CLIP's, InternViT's and SigLIP's)") from None
    n = _last_dim(x0)
    # phase 1: walk the stream; nothing changes until the whole structure is known
    stream, frontier, writers, readers_of = {id(x0)}, [x0], [], {}
    while frontier:
        v = frontier.pop()
        if v.is_graph_output():
            raise _NotRotated(f"the stream value '{v.name}' is a graph output")
        for node in _uses(v):
            if node.op_type in ("Shape", "Size"):
                continue
            norm = norms.get(id(v))
            if norm is not None and norm.out.producer() is not None and _reads(norm, node):
                continue
            out = node.outputs[0] if node.outputs else None
            if node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
                other = node.inputs[1] if node.inputs[0] is v else node.inputs[0]
                if other is None or id(other) in stream:
                    raise _NotRotated(f"node '{node.name}' adds two stream values")
                try:
                    writers.append(_writer(other))
                except SpikecError as exc:
                    raise _NotRotated(str(exc)) from None
            elif not (out is not None and _moves_whole_rows(node, out) and _last_dim(out) == n):
                raise _NotRotated(f"the stream value '{v.name}' is read by {node.op_type} node '{node.name}'")
            if id(out) not in stream:
                stream.add(id(out))
                frontier.append(out)
    for norm in norms.values():
        if id(norm.x) not in stream:
            continue
        readers = []
        for node in _uses(norm.out):
            g, lin = 1, _linear(node)
            if lin is None and node.op_type == "Reshape" and isinstance(_last_dim(node.outputs[0]), int) \
                    and _last_dim(node.outputs[0]) % n == 0 and len(_uses(node.outputs[0])) == 1:
                g, lin = _last_dim(node.outputs[0]) // n, _linear(_uses(node.outputs[0])[0])  # g rows -> one
                if lin is not None and lin.node.inputs[0] is not node.outputs[0]:
                    lin = None
            elif lin is not None and node.inputs[0] is not norm.out:
                lin = None
            if lin is None:
                raise _NotRotated(f"a norm of the stream is read by {node.op_type} node '{node.name}', not by a linear")
            if norm.beta is not None and np.any(norm.beta) and lin.bias is None:
                raise _NotRotated(f"linear '{lin.node.name}' has no bias to take its norm's shift")
            readers.append((lin, g))
        if norm.gamma_at is None and not np.all(norm.gamma == 1):
            raise _NotRotated("a norm's scale cannot be reset")
        readers_of[id(norm.x)] = (norm, readers)
    # phase 2: rewrite
    q, kind = mean_preserving_rotation(n)
    online_done = 0
    if isinstance(first_writer, Linear):
        writers.append(first_writer)
    else:
        w = const_array(first_writer.inputs[1]).astype(np.float64)
        rw.set_input(first_writer, 1, np.tensordot(q.T, w, axes=([1], [0])))  # out channel j: sum_i Q[i, j] W[i]
    for lin in writers:
        if online and _online_hadamard(model, lin, rw, signs=True):
            online_done += 1
        _rotate_out(lin, q, rw)
    n_readers = 0
    for norm, readers in readers_of.values():
        for lin, g in readers:
            w = lin.w.astype(np.float64)
            if norm.beta is not None and lin.bias is not None:
                rw.set_bias(lin, lin.bias.astype(np.float64) + np.tile(norm.beta.astype(np.float64), g) @ w)
            block = q.T @ np.diag(norm.gamma.astype(np.float64))
            rw.set_weight(lin, np.kron(np.eye(g), block) @ w)
            n_readers += 1
        if norm.gamma_at is not None:
            rw.set_input(*norm.gamma_at, np.ones(n, np.float32))
        if norm.beta_at is not None:
            rw.set_input(*norm.beta_at, np.zeros(n, np.float32))
    return {"n": int(n), "matrix": kind, "writers": len(writers) + (0 if isinstance(first_writer, Linear) else 1),
            "readers": n_readers, "norms_folded": len(readers_of), "online_hadamard": online_done}


def _reads(norm: _Norm, node: ir.Node) -> bool:
    """`node` is one of the norm's own nodes (it reads the norm's input)."""
    seen, frontier = set(), [norm.out.producer()]
    while frontier:
        k = frontier.pop()
        if k is None or id(k) in seen:
            continue
        if k is node:
            return True
        seen.add(id(k))
        frontier += [x.producer() for x in k.inputs if x is not None and x is not norm.x]
    return False


def _rotate_table(node: ir.Node, rw: _Rewriter) -> dict:
    table = const_array(node.inputs[0])
    q, kind = rotation_matrix(table.shape[1])
    out = np.empty(table.shape, dtype=np.float32)
    for r0 in range(0, table.shape[0], ROW_BLOCK):  # bounded float64 scratch on a big vocabulary
        out[r0:r0 + ROW_BLOCK] = table[r0:r0 + ROW_BLOCK].astype(np.float64) @ q
    rw.set_input(node, 0, out)
    return {"graph": "token embedding", "n": int(table.shape[1]), "matrix": kind, "table": node.name}


def rotate_graph(model: ir.Model, online_hadamard: bool = True, attention: bool = False) -> dict:
    """Rotate `model` in place (see the module docstring); returns what was done (the report's
    `rotate` entry). With `attention`, also the attention products (`_rotate_attention`;
    for --spike-attention). Raises SpikecError, naming the node, for a graph it cannot
    rotate whole."""
    done = _rotate_stream(model, online_hadamard)
    if attention:
        done["attention"] = _rotate_attention(model, _Rewriter(model.graph))
    return done


def _rotate_stream(model: ir.Model, online_hadamard: bool) -> dict:
    graph = model.graph
    rw = _Rewriter(graph)
    rms = [m for m in match_functions(model) if m.func == VecFunc.RMSNORM]
    norms = {"matches": rms, "nodes": {id(k) for m in rms for k in m.nodes}}
    starts = [x for x in graph.inputs if any(id(m.inputs[0]) == id(x) for m in rms)]
    if len(starts) > 1:
        raise SpikecError(f"rotate: more than one input feeds a norm ({', '.join(x.name for x in starts)})")
    if starts:
        if starts[0].shape is None or not isinstance(starts[0].shape[-1], int):
            raise SpikecError(f"rotate: the width of the residual stream input '{starts[0].name}' is not known")
        return _rotate_lm(model, starts[0], norms, rw, online=online_hadamard)
    out = graph.outputs[0] if graph.outputs else None
    p = out.producer() if out is not None else None
    if p is not None and p.op_type == "Gather" and const_array(p.inputs[0]) is not None \
            and const_array(p.inputs[0]).ndim == 2:
        return _rotate_table(p, rw)
    if out is not None:
        _writer(out)  # the projector's structure is required (SpikecError), the encoder's is not
        try:
            encoder = _rotate_encoder(model, rw, online_hadamard)
        except _NotRotated as exc:
            encoder = {"skipped": str(exc)}
            log.warning("rotate: the vision encoder is left unrotated (the projector, the embedding and the language "
                        "model are rotated): %s", exc)
        lin = _writer(out)  # read again: the encoder's rewrite may have changed its weights
        if "skipped" not in encoder:  # the projector's last linear as a down projection (QuaRot's online Hadamard)
            encoder["projector_online_hadamard"] = bool(online_hadamard and _is_gated_mlp_output(lin)
                                                        and _online_hadamard(model, lin, rw, signs=True))
        q, kind = rotation_matrix(lin.w.shape[1])
        _rotate_out(lin, q, rw)
        return {"graph": "vision projector", "n": int(lin.w.shape[1]), "matrix": kind, "writers": 1,
                "encoder": encoder}
    raise SpikecError("rotate: the graph has no output")


def rotate_feeds(feeds: list[dict], name: str, n: int) -> list[dict]:
    """The language model's calibration feeds with its residual-stream input `name`
    (float32 [..., n]) turned by the same Q as the graph: the feeds were made by the
    export's unrotated embedding and vision graphs (spikec.calibration), while the
    rotated LM reads their rotated outputs, x Q. Static clips, GPTQ's Hessians, MED and
    the MSTS search then see the inputs the rotated model will see. New dicts; the
    callers' arrays are not changed."""
    q, _ = rotation_matrix(n)
    out = []
    for feed in feeds:
        x = feed.get(name)
        if x is None or np.shape(x)[-1] != n:
            raise SpikecError(f"rotate: calibration feed has no residual-stream input '{name}' of width {n}")
        out.append({**feed, name: (np.asarray(x, np.float64) @ q).astype(np.float32)})
    return out


class Rotate(ContextPass):
    """QuaRot's residual-stream rotation folded into the weights (module docstring); run
    before quantize, on every graph of an export (spikec.compiler refuses a lone graph)."""

    name = "rotate"
    needs = ("shapes-inferred",)
    guarantees = ("rotated",)
    invalidates = FLOAT_ANALYSES  # the weights change (the function, to float rounding, does not)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.ctx.options
        done = rotate_graph(model, online_hadamard=opts.online_hadamard,
                            attention=opts.spike_attention and opts.attention_hadamard)
        if done["graph"] == "language model" and self.ctx.feeds:
            self.ctx.feeds = rotate_feeds(self.ctx.feeds, done["input"], done["n"])
            done["calibration_feeds_rotated"] = len(self.ctx.feeds)
        self.ctx.results["rotate"] = done
        log.info("rotate: %s", done)
        return ir.passes.PassResult(model, modified=True)


def with_rotation(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with rotate right before the first of vector-numerics, quantize and spike-rewrite."""
    if "rotate" in names:
        return names
    i = min([names.index(n) for n in ("vector-numerics", "quantize", "spike-rewrite") if n in names],
            default=len(names))
    return names[:i] + ("rotate",) + names[i:]


__all__ = ["ROTATION_SEED", "Rotate", "hadamard", "paley_hadamard", "rotate_graph", "rotation_matrix", "with_rotation"]
