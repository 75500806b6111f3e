"""Small ONNX graphs, one per vector-unit pattern passes/lower_vec.py recognises (the op
forms of the exported models: torch's RMSNorm, SiLU, rotate-half rotary embeddings,
LayerNormalization, Softmax, residual adds), plus the erf GELU that must stay on the host.
Each builder returns (proto, feeds(rng, rows)) for tests/test_fpga_vec.py."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _model(nodes, inputs, inits, out_shape) -> onnx.ModelProto:
    for i, n in enumerate(nodes):
        n.name = f"{n.op_type.lower()}_{i}"
    graph = helper.make_graph(nodes, "vec", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info("y", F, out_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _c(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def rmsnorm(L=48, div=False):
    """Llama's RMSNorm as exported: Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul (or Div)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]),
             helper.make_node("Sqrt", ["mse"], ["rms"])]
    if div:
        nodes.append(helper.make_node("Div", ["x", "rms"], ["n"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["rms"], ["r"]), helper.make_node("Mul", ["x", "r"], ["n"])]
    nodes.append(helper.make_node("Mul", ["gamma", "n"], ["y"]))
    inits = [_c("two", 2.0), _c("axes", [-1], np.int64), _c("eps", 1e-6), _c("gamma", 1 + 0.1 * rng.standard_normal(L))]
    return _model(nodes, [("x", ["b", "s", L])], inits, ["b", "s", L]), lambda r, n: {"x": _act(r, (1, n, L))}


def layernorm(L=40):
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "bias"], ["y"], axis=-1, epsilon=1e-5)]
    inits = [_c("g", 1 + 0.1 * rng.standard_normal(L)), _c("bias", 0.1 * rng.standard_normal(L))]
    return _model(nodes, [("x", ["i", "t", L])], inits, ["i", "t", L]), lambda r, n: {"x": _act(r, (1, n, L)) + 0.5}


def softmax(L=37):
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1)]
    return _model(nodes, [("x", ["b", 4, "s", "total"])], [], ["b", 4, "s", "total"]), \
        lambda r, n: {"x": 3 * _act(r, (1, 4, n, L))}


def silu(L=64):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    return _model(nodes, [("x", ["b", "s", L])], [], ["b", "s", L]), lambda r, n: {"x": 3 * _act(r, (1, n, L))}


def rope(L=16, heads=4):
    """Hugging Face rotate-half: x*cos + cat(-x2, x1)*sin, tables Cos/Sin(cat(f, f)) as exported."""
    h = L // 2
    nodes = [helper.make_node("Concat", ["f", "f"], ["emb"], axis=-1),
             helper.make_node("Cos", ["emb"], ["cos0"]), helper.make_node("Sin", ["emb"], ["sin0"]),
             helper.make_node("Unsqueeze", ["cos0", "one"], ["cos"]), helper.make_node("Unsqueeze", ["sin0", "one"], ["sin"]),
             helper.make_node("Mul", ["x", "cos"], ["xc"]),
             helper.make_node("Slice", ["x", "zero", "half", "m1", "one"], ["x1"]),
             helper.make_node("Slice", ["x", "half", "big", "m1", "one"], ["x2"]),
             helper.make_node("Neg", ["x2"], ["nx2"]),
             helper.make_node("Concat", ["nx2", "x1"], ["rot"], axis=-1),
             helper.make_node("Mul", ["rot", "sin"], ["rs"]),
             helper.make_node("Add", ["xc", "rs"], ["y"])]
    inits = [_c("one", [1], np.int64), _c("zero", [0], np.int64), _c("half", [h], np.int64),
             _c("big", [2**63 - 1], np.int64), _c("m1", [-1], np.int64)]
    inv = (1.0 / 10000 ** (np.arange(h) / h)).astype(np.float32)

    def feeds(r, n):
        pos = np.arange(n, dtype=np.float32)[None, :, None] + 3
        return {"x": _act(r, (1, heads, n, L)), "f": (pos * inv).astype(np.float32)}

    return _model(nodes, [("x", ["b", heads, "s", L]), ("f", ["b", "s", h])], inits, ["b", heads, "s", L]), feeds


def binary(op="Add", L=32, const=None):
    """Add/Mul of two activations, or of an activation and a constant (scalar or row)."""
    if const is None:
        nodes = [helper.make_node(op, ["x", "x2"], ["y"])]
        return _model(nodes, [("x", ["b", "s", L]), ("x2", ["b", "s", L])], [], ["b", "s", L]), \
            lambda r, n: {"x": _act(r, (1, n, L)), "x2": _act(r, (1, n, L))}
    c = np.float32(0.125) if const == "scalar" else (1 + np.random.default_rng(5).standard_normal(L)).astype(np.float32)
    nodes = [helper.make_node(op, ["x", "c"], ["y"])]
    return _model(nodes, [("x", ["b", "s", L])], [_c("c", c)], ["b", "s", L]), lambda r, n: {"x": _act(r, (1, n, L))}


def erf_gelu(L=32):
    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["half", "e1"], ["e2"]),
             helper.make_node("Mul", ["x", "e2"], ["y"])]
    inits = [_c("sqrt2", np.sqrt(2.0)), _c("one", 1.0), _c("half", 0.5)]
    return _model(nodes, [("x", ["b", "s", L])], inits, ["b", "s", L]), lambda r, n: {"x": _act(r, (1, n, L))}


def _act(rng, shape):
    """Activations with a few outlier channels, as real hidden states have."""
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., :2] *= 8
    return x
