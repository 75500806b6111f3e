#!/usr/bin/env python
"""What one exact numeric costs on onnxruntime: spikec.vec functions against ORT's own ops.

    .venv/bin/python benchmarks/vec_benchmark.py [--hidden 1536] [--ffn 8960] [--heads 12] [--keys 256]

For each function at Qwen2-VL-2B widths, a decode row (1 token) and a prefill block (256
tokens): the median time of the spikec.vec function (spikec/vector.py: fixed 16-lane sums,
Cephes exp, in a session made like the ORT target's) and of the exported pattern on
onnxruntime with its default optimizations (ReduceMean/Pow/Sqrt..., which ORT fuses into
SimplifiedLayerNormalization; LayerNormalization; Softmax; x * Sigmoid(x)), printed as a
ratio, next to the time of one int8 MatMulInteger of the layer's widest product for scale.
Times are medians of repeated runs in one process (the machine is shared: compare ratios).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from spikec import ir as spir
from spikec import vector


def _timed(run, reps: int) -> float:
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _model(nodes, inputs, inits, functions=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    imports = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(vector.DOMAIN, vector.VERSION)] if functions else [])
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _vec(op: str, L: int) -> onnx.ModelProto:
    names = list(vector.function(op).input)
    inits = []
    if "gamma" in names:
        inits.append(onnx.numpy_helper.from_array(np.ones(L, np.float32), "gamma"))
    if "beta" in names:
        inits.append(onnx.numpy_helper.from_array(np.zeros(L, np.float32), "beta"))
    if "eps" in names:
        inits.append(onnx.numpy_helper.from_array(np.array(1e-6, np.float32), "eps"))
    return _model([helper.make_node(op, names, ["y"], domain=vector.DOMAIN)], ["x"], inits, [vector.function(op)])


def _exported(op: str, L: int) -> onnx.ModelProto:
    c = onnx.numpy_helper.from_array
    if op == vector.RMSNORM:
        nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]), helper.make_node("ReduceMean", ["sq", "ax"], ["ms"]),
                 helper.make_node("Add", ["ms", "eps"], ["v"]), helper.make_node("Sqrt", ["v"], ["r"]),
                 helper.make_node("Reciprocal", ["r"], ["ir"]), helper.make_node("Mul", ["x", "ir"], ["n"]),
                 helper.make_node("Mul", ["n", "gamma"], ["y"])]
        inits = [c(np.array(2.0, np.float32), "two"), c(np.array([-1], np.int64), "ax"),
                 c(np.array(1e-6, np.float32), "eps"), c(np.ones(L, np.float32), "gamma")]
        return _model(nodes, ["x"], inits)
    if op == vector.LAYERNORM:
        return _model([helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], axis=-1)], ["x"],
                      [c(np.ones(L, np.float32), "gamma"), c(np.zeros(L, np.float32), "beta")])
    if op == vector.SOFTMAX:
        return _model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], ["x"], [])
    return _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], ["x"], [])


def _matmul_integer(K: int, N: int, rows: int):
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, None)
    m = helper.make_model(helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "za"], ["y"])], "g", [a],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        initializer=[onnx.numpy_helper.from_array(np.random.default_rng(0).integers(-127, 128, (K, N)).astype(np.int8), "w"),
                     onnx.numpy_helper.from_array(np.array(128, np.uint8), "za")]),
        opset_imports=[helper.make_opsetid("", 18)])
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (rows, K)).astype(np.uint8)
    return lambda: s.run(None, {"a": x})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--ffn", type=int, default=8960)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--keys", type=int, default=256)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}; widths hidden {a.hidden}, ffn {a.ffn}, {a.heads} heads, {a.keys} keys")
    print(f"{'function':10} {'shape':>18} {'spikec.vec ms':>14} {'ORT own ms':>11} {'ratio':>6}")
    cases = [(vector.RMSNORM, a.hidden), (vector.LAYERNORM, a.hidden), (vector.SILU, a.ffn), (vector.SOFTMAX, a.keys)]
    for op, L in cases:
        for rows in (1, 256):
            shape = (a.heads, rows, L) if op == vector.SOFTMAX else (rows, L)
            x = rng.standard_normal(shape).astype(np.float32)
            mine = spir.ort_session(ir.from_proto(_vec(op, L)))
            theirs = ort.InferenceSession(_exported(op, L).SerializeToString(), providers=["CPUExecutionProvider"])
            t_mine = _timed(lambda: mine.run(None, {"x": x}), a.reps)
            t_theirs = _timed(lambda: theirs.run(None, {"x": x}), a.reps)
            print(f"{op:10} {str(shape):>18} {t_mine * 1e3:14.3f} {t_theirs * 1e3:11.3f} {t_mine / t_theirs:6.2f}")
    for rows in (1, 256):
        t = _timed(_matmul_integer(a.hidden, a.ffn, rows), max(5, a.reps // 5))
        print(f"for scale: one int8 MatMulInteger [{rows}, {a.hidden}] x [{a.hidden}, {a.ffn}]: {t * 1e3:.3f} ms "
              "(a layer has three of this size, plus four attention projections)")


if __name__ == "__main__":
    main()
