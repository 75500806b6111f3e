"""import-qdq: models quantized by onnxruntime.quantization.quantize_static (QDQ format)
become spikec ops whose outputs match ORT's own run of the QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs import run_ort
from spike_graphs import as_model, mixed_feeds, mixed_lm, run_passes, save
from spikec import ir as spir
from spikec import ops
from spikec.compiler import compile_onnx
from spikec.errors import SpikecError
from spikec.passes.options import SpikeOptions


def _quantize_static(src, dst, feeds, symmetric=True, per_channel=True, **extra):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, **extra})
    return dst


@pytest.fixture(scope="module")
def clean_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("qdq")
    return save(as_model(mixed_lm()), d / "float.onnx")


def _import(path, neuron="tc-lif", rewrite=True):
    model = spir.load_model(path)
    names = ["import-qdq", "fold-constants", "eliminate-dead-nodes", "topological-sort"] + (["spike-rewrite"] if rewrite else [])
    ctx = run_passes(model, names, None, neuron=neuron)
    return model, ctx


def _max_diff(model, qdq_path, feeds):
    diffs, scale = [], []
    for f in feeds:
        ref = run_ort(qdq_path, f, optimized=False)[0]  # the QDQ meaning, not a CPU's int8 kernel
        got = ops.run_reference(model, f)[0]
        diffs.append(np.abs(got - ref).max())
        scale.append(np.abs(ref).max())
    return max(diffs), max(scale)


def test_quantize_static_symmetric_per_channel_matches_ort(clean_lm, tmp_path):
    feeds = mixed_feeds(4, outlier=1.0)
    qdq = _quantize_static(clean_lm, tmp_path / "qdq.onnx", feeds)
    model, ctx = _import(qdq)
    h = spir.op_histogram(model)
    assert h["spikec::SpikeMatMul"] == 9 and "MatMul" not in h
    assert all(r["timesteps"] == 7 and r["wbits"] == 8 for r in ctx.results["import-qdq"]["layers"])
    spir.verify(model)
    test = [{"x": (0.8 * f["x"]).astype(np.float32), "modality": f["modality"]} for f in feeds[:2]]
    diff, scale = _max_diff(model, qdq, test)
    print("QDQ import max |diff| vs ORT:", diff, "of", scale)
    assert diff <= 1e-4 * scale
    # the spiking form equals the imported QuantLinear form bit for bit
    quant, _ = _import(qdq, rewrite=False)
    for f in test:
        assert np.array_equal(ops.run_reference(quant, f)[0], ops.run_reference(model, f)[0])


def test_zero_points_need_rate_if(clean_lm, tmp_path):
    feeds = mixed_feeds(3, outlier=1.0)
    qdq = _quantize_static(clean_lm, tmp_path / "u8.onnx", feeds, symmetric=False)
    with pytest.raises(SpikecError, match="activation '.*' is an unsigned code .*--neuron if"):
        _import(qdq, neuron="tc-lif")
    model, _ = _import(qdq, neuron="if")
    spir.verify(model)
    assert any(ops.attr(n, "act_unsigned") for n in model.graph if n.op_type == "SpikeMatMul")
    test = [{"x": (0.8 * f["x"]).astype(np.float32), "modality": f["modality"]} for f in feeds[:2]]
    diff, scale = _max_diff(model, qdq, test)
    print("QDQ uint8 (rate-IF offset) max |diff| vs ORT:", diff, "of", scale)
    assert diff <= 1e-4 * scale


def _gemm_model(with_conv=False):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 8)).astype(np.float32)  # Gemm transB: [N, K]
    b = rng.standard_normal(6).astype(np.float32)
    w2 = rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["h"], name="gemm", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y0"], name="mm2"),
             helper.make_node("MatMul", ["r", "W3"], ["y1"], name="mm3"),  # shares r's Q/DQ pair with mm2
             helper.make_node("Add", ["y0", "y1"], ["y"], name="sum")]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"), numpy_helper.from_array(w2, "W2"),
             numpy_helper.from_array(-w2, "W3")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])]
    if with_conv:
        inits.append(numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "CW"))
        nodes.append(helper.make_node("Conv", ["img", "CW"], ["c"], name="patch_conv"))
        inputs.append(helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 1, 6, 6]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])] + (
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)] if with_conv else [])
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outs, initializer=inits),
                          opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


def test_gemm_int32_bias_shared_qdq_and_com_microsoft(tmp_path):
    src = save(_gemm_model(), tmp_path / "g.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(4)]
    qdq = _quantize_static(src, tmp_path / "gq.onnx", feeds)
    proto = onnx.load(str(qdq))
    assert any(t.data_type == TensorProto.INT32 for t in proto.graph.initializer)  # the Gemm's int32 bias
    for n in proto.graph.node:  # the same model with Q/DQ in the com.microsoft domain
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.domain = "com.microsoft"
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    ms = tmp_path / "ms.onnx"
    onnx.save(proto, str(ms))
    for path in (qdq, ms):
        model, ctx = _import(path)
        assert {r["name"] for r in ctx.results["import-qdq"]["layers"]} == {"gemm", "mm2", "mm3"}
        assert next(r for r in ctx.results["import-qdq"]["layers"] if r["name"] == "gemm")["bias"]
        test = [{"x": (0.8 * f["x"]).astype(np.float32)} for f in feeds[:2]]
        diffs = [np.abs(ops.run_reference(model, f)[0] - run_ort(path, f, optimized=False)[0]).max() for f in test]
        assert max(diffs) < 1e-4, path.name


def test_quantized_conv_is_an_error_naming_the_node(tmp_path):
    src = save(_gemm_model(with_conv=True), tmp_path / "c.onnx")
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((4, 8)).astype(np.float32),
              "img": rng.standard_normal((1, 1, 6, 6)).astype(np.float32)} for _ in range(2)]
    qdq = _quantize_static(src, tmp_path / "cq.onnx", feeds)
    with pytest.raises(SpikecError, match="node 'patch_conv' \\(Conv\\) is inside a quantized region"):
        _import(qdq)


def test_compile_picks_the_qdq_pipeline(clean_lm, tmp_path):
    feeds = mixed_feeds(2, outlier=1.0)
    qdq = _quantize_static(clean_lm, tmp_path / "q.onnx", feeds)
    report = compile_onnx(qdq, tmp_path / "out.onnx", pipeline=None, options=SpikeOptions())
    assert [p.name for p in report.passes][0] == "import-qdq" and report.extra["msts"]["mode"] == "imported"
    out = spir.load_model(tmp_path / "out.onnx")
    assert spir.op_histogram(out)["spikec::SpikeMatMul"] == 9
