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


def run_ort(model_path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)
