"""The operands of every integer GEMM a lowered model runs on onnxruntime, for tests.

onnxruntime's uint8 x int8 GEMM (MLAS, behind MatMulInteger and com.microsoft
MatMulIntegerToFloat) is exact on CPUs with VNNI, AMX or ARM dot products, but on x86 CPUs
with AVX2 only it adds two adjacent products into int16 with saturation (vpmaddubsw). A test
run on a VNNI machine cannot see that; `u8s8_pair_bounds` gives, CPU-independently, the
worst pair sum 2 * max(A) * max|B| of each such GEMM in one run of the model, which
spikec.ort_lowering keeps within int16 (U8S8_LIMIT, digit_bits).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

INTEGER_GEMMS = ("MatMulInteger", "MatMulIntegerToFloat")


def u8s8_pair_bounds(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[tuple[str, int, int]]:
    """[(node name, max A, max |B|)] for every integer GEMM with uint8 A and int8 B of `proto`
    (model-local functions inlined; GEMMs inside If branches are not seen), from one
    onnxruntime run on `feeds`. A GEMM that got no rows gives max A = 0."""
    proto = onnx.inliner.inline_local_functions(proto)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    gemms = [n for n in graph.node if n.op_type in INTEGER_GEMMS]
    known = {o.name for o in graph.output}
    wanted: list[str] = []
    for node in gemms:
        for name, dtype in ((node.input[0], TensorProto.UINT8), (node.input[1], TensorProto.INT8)):
            if name not in inits and name not in known and name not in wanted:
                wanted.append(name)
                graph.output.append(helper.make_tensor_value_info(name, dtype, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    values = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in inputs})))
    out = []
    for node in gemms:
        a, b = (numpy_helper.to_array(inits[v]) if v in inits else values[v] for v in node.input[:2])
        if a.dtype != np.uint8 or b.dtype != np.int8:
            continue
        a_max = int(a.max()) if a.size else 0
        b_max = max(abs(int(b.max())), abs(int(b.min()))) if b.size else 0
        out.append((node.name, a_max, b_max))
    return out
