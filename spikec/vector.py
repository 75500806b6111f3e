"""The vector unit's float32 functions as ONNX functions: one numeric for every target.

RMSNorm, LayerNorm, softmax and SiLU feed spike encoders, whose dynamic scales and
rounding turn a last-bit difference into a different code (and then a different
token), so these functions are not left to each runtime's own kernels. The
vector-numerics pass (passes/vector_numerics.py) replaces the exported patterns by calls
`spikec.vec::RMSNorm(x, gamma, eps)`, `LayerNorm(x, gamma, beta, eps)`, `Softmax(x)` and
`SiLU(x)` (over the last axis; gamma, beta float32 [L], eps a float32 scalar), defined
here as model-local ONNX functions in stock ops. onnxruntime inlines them; the reference
evaluator runs `spikec.reference.vec_*` for them (the same bits, faster); the fpga target
lowers them to the vector unit, which the simulator and the RTL compute with the same
`vec_*` definitions.

`spikec.reference.vec_*` defines RMSNorm, LayerNorm, softmax and SiLU with a fixed
operation order: row sums over 16 lanes taken in order, then the lanes added left to
right; exp by Cephes' reduction and polynomial; `1 / sqrt(.)` as two roundings. The
bodies below spell out exactly those operations, so onnxruntime computes the same bits
as the reference, the simulator and the RTL (tested on adversarial rows in
tests/test_vec_numerics.py). Why each piece is exact:

- every Add, Sub, Mul, Div and Sqrt is one correctly rounded IEEE binary32 operation in
  onnxruntime's CPU kernels (no fused multiply-add across ONNX nodes);
- the 16-lane sum: the row is padded with one leading chunk of +0.0 (the lanes' initial
  value) and trailing zeros to a multiple of 16, viewed as [rows, chunks, 16], and
  CumSum runs along the chunks: onnxruntime's CumSum adds slice c to the running slice
  c - 1, one slice after the other, which is lane l's sequence of additions; the last
  slice is the 16 lanes, then added left to right;
- exp's `k = rint(x log2 e)` as `(v + 1.5 * 2**23) - 1.5 * 2**23` (exact round half to
  even for |v| < 2**22), and `y * 2**k` with one rounding (C's ldexp): `k = 2 kh + a`,
  `kh = floor(k / 2)`, `a` in {0, 1}: `(y * 2**a) * 2**kh` is exact (y is near 1, |kh| <=
  75 keeps it normal) and the last multiply by `2**kh` rounds once; `2**kh` from Pow is a
  power of two, exact in any libm (tested over the whole range);
- NaN: Clip keeps a NaN (tested), so exp, and with it the whole row of a softmax (its sum
  meets the NaN), comes out NaN as in the reference; a NaN's payload is not specified.
  ReduceMax skips NaN in onnxruntime, which cannot matter: the NaN row is NaN anyway.
- Speed: only Add, Sub, Mul, Div and Sqrt touch every element besides one Clip and one
  Pow per exp (onnxruntime vectorises the former; its Round, Floor, Cast, Gather and Where
  are scalar loops, several times slower, so the bodies avoid them);
  benchmarks/vec_benchmark.py measures the cost against onnxruntime's own kernels.
A row length known only at run time (a softmax over past + new keys) is handled: the
padding is computed from the shape. Graph optimizations that rewrite float arithmetic
(onnxruntime's DivMulFusion turns `x * (1 / s)` into `x / s`) are disabled in every
session spikec makes (spikec.ir.FLOAT_REWRITING_OPTIMIZERS).

A .sbin is untrusted: a graph may hold only these functions, byte-equal to the
definitions below (`check_functions`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnx.reference.op_run import OpRun

from spikec import reference as R
from spikec.errors import SpikecError

LANES = R.REDUCE_LANES
RINT_MAGIC = 1.5 * 2.0**23  # v + RINT_MAGIC - RINT_MAGIC = rint(v) for |v| < 2**22
DOMAIN = "spikec.vec"
VERSION = 1
OPSET = 18  # the standard opset the bodies use
RMSNORM, LAYERNORM, SOFTMAX, SILU = "RMSNorm", "LayerNorm", "Softmax", "SiLU"
OPS = (RMSNORM, LAYERNORM, SOFTMAX, SILU)


class _Body:
    """A function body under construction: nodes with unique value names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0

    def name(self, tag: str) -> str:
        self._n += 1
        return f"{tag}_{self._n}"

    def op(self, op_type: str, inputs: list[str], tag: str | None = None, n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(tag or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=np.float32, tag: str = "c") -> str:
        out = self.name(tag)
        self.nodes.append(helper.make_node("Constant", [], [out],
                                           value=onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), out)))
        return out

    def row_sum(self, x: str) -> str:
        """`reference.vec_sum` over the last axis of x, kept as [..., 1]."""
        shape = self.op("Shape", [x])
        length = self.op("Shape", [x], start=-1)
        rows2d = self.op("Reshape", [x, self.op("Concat", [self.const([-1], np.int64), length], axis=0)])
        lanes = self.const([LANES], np.int64)
        back = self.op("Mod", [self.op("Sub", [lanes, self.op("Mod", [length, lanes])]), lanes])
        pads = self.op("Concat", [self.const([0, LANES, 0], np.int64), back], axis=0)
        padded = self.op("Pad", [rows2d, pads, self.const(0.0)])
        chunks = self.op("Reshape", [padded, self.const([0, -1, LANES], np.int64)])
        running = self.op("CumSum", [chunks, self.const(1, np.int64)])
        last = self.op("Gather", [running, self.const(-1, np.int64)], axis=1)  # [rows, 16]: the lanes
        parts = self.op("Split", [last, self.const([1] * LANES, np.int64)], n_out=LANES, axis=1)
        total = parts[0]
        for p in parts[1:]:
            total = self.op("Add", [total, p])
        keep = self.op("Concat", [self.op("Slice", [shape, self.const([0], np.int64), self.const([-1], np.int64)]),
                                  self.const([1], np.int64)], axis=0)
        return self.op("Reshape", [total, keep])

    def mean(self, x: str) -> str:
        """row_sum(x) / float32(len), as [..., 1]."""
        length = self.op("Cast", [self.op("Shape", [x], start=-1)], to=onnx.TensorProto.FLOAT)
        return self.op("Div", [self.row_sum(x), length])

    def rint(self, v: str) -> str:
        """Round half to even for |v| < 2**22, with two additions: v + 1.5 * 2**23 lands where
        the float32 spacing is 1, so that addition rounds v to an integer (ties to even), and
        the subtraction is exact. (Round gives the same; onnxruntime's Round, like its Floor,
        Cast and Gather, is a slow scalar loop, its Add a vectorised one.)"""
        return self.op("Sub", [self.op("Add", [v, self.const(RINT_MAGIC)]), self.const(RINT_MAGIC)])

    def exp(self, x: str) -> str:
        """`reference.vec_exp`, elementwise. NaN in, NaN out: Clip keeps NaN (checked by the
        tests), and every later operation propagates it (its payload is not specified)."""
        xc = self.op("Clip", [x, self.const(R.EXP_CLAMP[0]), self.const(R.EXP_CLAMP[1])])
        k = self.rint(self.op("Mul", [xc, self.const(R.EXP_LOG2E)]))  # |k| <= 150
        r = self.op("Sub", [self.op("Sub", [xc, self.op("Mul", [k, self.const(R.EXP_LN2_HI)])]),
                            self.op("Mul", [k, self.const(R.EXP_LN2_LO)])])
        z = self.op("Mul", [r, r])
        p = self.op("Add", [self.op("Mul", [self.const(R.EXP_POLY[0]), r]), self.const(R.EXP_POLY[1])])
        for c in R.EXP_POLY[2:]:
            p = self.op("Add", [self.op("Mul", [p, r]), self.const(c)])
        y = self.op("Add", [self.op("Add", [self.op("Mul", [p, z]), r]), self.const(1.0)])
        # ldexp(y, k) with one rounding: k = 2 kh + a, kh = floor(k / 2) (rint of k/2 - 1/4),
        # a in {0, 1}; y * 2**a and then * 2**kh are exact (y is near 1, |kh| <= 75), the
        # last multiply by 2**kh rounds once. 2**kh by Pow is exact (a power of two).
        kh = self.rint(self.op("Sub", [self.op("Mul", [k, self.const(0.5)]), self.const(0.25)]))
        scale_a = self.op("Sub", [self.op("Add", [k, self.const(1.0)]), self.op("Add", [kh, kh])])  # 2**a: 1 or 2
        p2 = self.op("Pow", [self.const(2.0), kh])
        return self.op("Mul", [self.op("Mul", [self.op("Mul", [y, scale_a]), p2]), p2])

    def rsqrt(self, v: str) -> str:
        return self.op("Div", [self.const(1.0), self.op("Sqrt", [v])])


def _rmsnorm(b: _Body) -> str:
    r = b.rsqrt(b.op("Add", [b.mean(b.op("Mul", ["x", "x"])), "eps"]))
    return b.op("Mul", [b.op("Mul", ["x", r]), "gamma"], tag="y")


def _layernorm(b: _Body) -> str:
    d = b.op("Sub", ["x", b.mean("x")])
    r = b.rsqrt(b.op("Add", [b.mean(b.op("Mul", [d, d])), "eps"]))
    return b.op("Add", [b.op("Mul", [b.op("Mul", [d, r]), "gamma"]), "beta"], tag="y")


def _softmax(b: _Body) -> str:
    m = b.op("ReduceMax", ["x", b.const([-1], np.int64)], keepdims=1)  # (a NaN in the row: the row is NaN anyway)
    e = b.exp(b.op("Sub", ["x", m]))
    return b.op("Div", [e, b.row_sum(e)], tag="y")


def _silu(b: _Body) -> str:
    return b.op("Div", ["x", b.op("Add", [b.const(1.0), b.exp(b.op("Neg", ["x"]))])], tag="y")


_BODIES = {  # op type: (function inputs, body builder, reference)
    RMSNORM: (["x", "gamma", "eps"], _rmsnorm, R.vec_rmsnorm),
    LAYERNORM: (["x", "gamma", "beta", "eps"], _layernorm, R.vec_layernorm),
    SOFTMAX: (["x"], _softmax, R.vec_softmax),
    SILU: (["x"], _silu, R.vec_silu),
}
_CACHE: dict[str, bytes] = {}


def function(op_type: str) -> onnx.FunctionProto:
    """The function `spikec.vec::op_type` over the last axis of a float32 x of any rank,
    bit-identical to spikec.reference.vec_*. Raises KeyError for an op type not in OPS."""
    if op_type not in _CACHE:
        inputs, build, _ = _BODIES[op_type]
        body = _Body()
        y = build(body)
        body.nodes.append(helper.make_node("Identity", [y], ["y"]))
        fn = helper.make_function(DOMAIN, op_type, inputs, ["y"], body.nodes,
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        _CACHE[op_type] = fn.SerializeToString(deterministic=True)
    fn = onnx.FunctionProto()
    fn.ParseFromString(_CACHE[op_type])
    return fn


def n_inputs(op_type: str) -> int:
    return len(_BODIES[op_type][0])


def check_functions(proto: onnx.ModelProto, where: str) -> None:
    """Refuse model-local functions other than spikec.vec's own, byte for byte (a .sbin is
    untrusted: a function body is code onnxruntime would run). Raises SpikecError."""
    for fn in proto.functions:
        name = f"{fn.domain[:40]}::{fn.name[:40]}"
        if fn.domain != DOMAIN or fn.name not in OPS:
            raise SpikecError(f"{where}: model-local function '{name}' is not one spikec defines "
                              f"({', '.join(f'{DOMAIN}::{o}' for o in OPS)})")
        canonical = function(fn.name)
        if fn.SerializeToString(deterministic=True) != canonical.SerializeToString(deterministic=True):
            raise SpikecError(f"{where}: function '{name}' differs from this spikec's definition of it (a file "
                              f"compiled by another spikec version: compile it again; or a changed file)")


def add_functions(model, op_types) -> None:
    """Put the definitions of `op_types` into an onnx_ir model and import the domain."""
    import onnx_ir as ir

    for op in op_types:
        f = ir.serde.deserialize_function(function(op))
        model.functions[f.identifier()] = f
    model.opset_imports[DOMAIN] = VERSION
    model.opset_imports.setdefault("", OPSET)


class _VecRun(OpRun):
    """onnx.reference kernel: rows [-1, L] through spikec.reference.vec_* (the function
    body gives the same bits, interpreted op by op)."""

    op_domain = DOMAIN
    op_type = ""

    def _run(self, x, *rows, **_schema_defaults):
        # OpRun looks up an ONNX schema by class name: the standard Softmax's gives `axis`
        x = np.asarray(x, np.float32)
        flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        args = [np.asarray(r, np.float32) for r in rows]
        if len(args) > 1:  # the norms: (gamma[, beta], eps)
            args[-1] = np.float32(args[-1].reshape(()))
        return (_BODIES[type(self).__name__][2](flat, *args).reshape(x.shape),)


REFERENCE_KERNELS = [type(op, (_VecRun,), {"op_type": op}) for op in OPS]

__all__ = ["DOMAIN", "OPS", "REFERENCE_KERNELS", "add_functions", "check_functions", "function", "n_inputs"]
