"""Hand-built ONNX graphs for tests that need exact control over the nodes."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def messy_linear(seed: int = 0) -> onnx.ModelProto:
    """y = (Identity(x) @ (W * 2)) + b, with a dead branch: one of each thing the generic passes clean.

    - `W * 2` has only constant inputs (fold-constants),
    - `Identity` sits between x and the MatMul (eliminate-identity),
    - `Neg(x) -> unused` feeds nothing (eliminate-dead-nodes).
    """
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="id0"),
        helper.make_node("Mul", ["W", "two"], ["W2"], name="scale_w"),
        helper.make_node("MatMul", ["x_id", "W2"], ["xw"], name="mm"),
        helper.make_node("Add", ["xw", "b"], ["y"], name="bias"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "messy_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[w, b, two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def run_ort(model_path, feeds: dict, *, optimized: bool = True) -> list[np.ndarray]:
    """The model's outputs on onnxruntime's CPU provider. optimized=False turns graph
    optimizations off: a QDQ model then runs as its ONNX meaning (DequantizeLinear, float
    MatMul), not fused into MLAS' int8 GEMMs, which on x86 CPUs without VNNI add two products
    into int16 with saturation (spikec.ort_lowering.digit_bits)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
