"""spike-rewrite: spiking graphs compute exactly what the fake-quantized (QuantLinear) graph
computes, on hand-built graphs and on tiny exported models of two architectures; the
verifier's invariants reject bad spiking ops by node name."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from spike_graphs import as_model, export_feeds, exported, mixed_feeds, mixed_lm, run_passes
from spikec import ir as spir
from spikec import ops
from spikec import reference as R
from spikec.ir import load_model as load_inlined
from spikec.errors import SpikecError


def _hist(model):
    return spir.op_histogram(model)


@pytest.mark.parametrize("neuron", ["tc-lif", "if"])
@pytest.mark.parametrize("act_scale", ["static", "dynamic"])
def test_spiking_equals_fake_quant_bit_exact(neuron, act_scale):
    feeds = mixed_feeds(2)
    calib = "npz" if act_scale == "static" else None
    quant = as_model(mixed_lm())
    run_passes(quant, ["quantize"], feeds, act_scale=act_scale, calib=calib, neuron=neuron)
    spike = as_model(mixed_lm())
    run_passes(spike, ["quantize", "spike-rewrite"], feeds, act_scale=act_scale, calib=calib, neuron=neuron)
    h = _hist(spike)
    assert h["spikec::SpikeEncode"] == h["spikec::SpikeMatMul"] == 9 and "spikec::QuantLinear" not in h
    assert "MatMul" not in h
    spir.verify(spike)
    for f in feeds + mixed_feeds(1, seed=7):  # calibration data and unseen data
        yq = ops.run_reference(quant, f)[0]
        ys = ops.run_reference(spike, f)[0]
        assert np.array_equal(yq, ys)


def test_tiny_mlp_spiking_matches_reference_layer(tiny_mlp):
    """One layer by hand through spikec.reference: the graph's numerics are the reference's."""
    model = spir.load_model(tiny_mlp)
    x = np.random.default_rng(0).standard_normal((2, 3, 32)).astype(np.float32)
    run_passes(model, ["quantize", "spike-rewrite"], [{"x": x}], act_scale="dynamic", tt=5)
    mm = next(n for n in model.graph if n.op_type == "SpikeMatMul")
    w_q, s_w = mm.inputs[3].const_value.numpy(), mm.inputs[4].const_value.numpy()
    assert w_q.dtype == np.int8 and np.abs(w_q).max() <= 127
    sess = ops.evaluator(model)
    x_in = mm.inputs[0].producer().inputs[0].name
    got_x, got_y = sess.run([x_in, mm.outputs[0].name], {"x": x})
    s_x = R.scale_per_token(got_x, 6)
    bias = mm.inputs[5].const_value.numpy() if mm.inputs[5] is not None else None
    want = R.spiking_linear(got_x, s_x, w_q, s_w, bias, 5)
    assert np.array_equal(got_y, want)


@pytest.mark.parametrize("family", ["tiny-llava", "tiny-qwen2-vl"])
def test_exported_models_spike_bit_exact(family):
    """vision and lm graphs of two architectures: quantize (static, from image+prompt pairs)
    + spike-rewrite (with --spike-attention on the LM) == the QuantLinear form, bit for bit."""
    folder = exported(family)
    feeds = export_feeds(family)
    for role, attention in (("vision", False), ("lm", True)):
        quant = load_inlined(folder / f"{role}.onnx")
        spike = load_inlined(folder / f"{role}.onnx")
        opts = dict(calib="folder", spike_attention=attention)
        run_passes(quant, ["quantize"], feeds[role], **opts)
        ctx = run_passes(spike, ["quantize", "spike-rewrite"], feeds[role], **opts)
        covered = [r["name"] for r in ctx.results["quantize"]["layers"]]
        assert len(covered) >= 8, role
        h = _hist(spike)
        assert h.get("MatMul", 0) == 0 if attention else True
        spir.verify(spike)
        for f in feeds[role]:
            a, b = ops.run_reference(quant, f)[0], ops.run_reference(spike, f)[0]
            assert np.array_equal(a, b), role


def test_rate_if_kernel_equals_reference():
    rng = np.random.default_rng(3)
    w = rng.integers(-127, 128, (12, 5)).astype(np.int8)
    q = rng.integers(-15, 16, (4, 12)).astype(np.int32)
    T = np.full(4, 4)
    acc = ops.rate_if_accumulate(q, w, T, ops.if_offset_table(w, [4, 3]), np.zeros(4, np.int64), "t")
    assert np.array_equal(acc, R.rate_if_matmul(q, w, 5))
    assert np.array_equal(acc, R.integer_matmul(q, w))


def _spiking_model(**kw):
    model = as_model(mixed_lm(**kw))
    run_passes(model, ["quantize", "spike-rewrite"], None, act_scale="dynamic")
    return model


def test_invariant_rejects_T_zero_naming_the_node():
    model = _spiking_model()
    node = next(n for n in model.graph if n.op_type == "SpikeMatMul")
    node.attributes["timesteps"] = ir.AttrInt64s("timesteps", [0, 3])
    with pytest.raises(SpikecError, match=f"node '{node.name}'.*timesteps must be 1..16; got T=0 for text"):
        spir.verify(model)


def test_invariant_rejects_weight_codes_out_of_range():
    model = _spiking_model()
    node = next(n for n in model.graph if n.op_type == "SpikeMatMul")
    w = node.inputs[3].const_value.numpy().copy()
    node.attributes["wbits"] = ir.AttrInt64("wbits", 4)
    with pytest.raises(SpikecError, match=f"node '{node.name}'.*exceed \\+-7 for wbits=4"):
        spir.verify(model)
    assert np.abs(w).max() > 7


def test_invariant_int32_overflow_guard():
    model = _spiking_model(big_k=300)
    node = next(n for n in model.graph if n.op_type == "SpikeMatMul" and n.name == "l0a.down")
    spir.verify(model)
    node.attributes["timesteps"] = ir.AttrInt64s("timesteps", [16, 16])
    with pytest.raises(SpikecError, match=f"node '{node.name}'.*int32 accumulator can overflow"):
        spir.verify(model)


def test_quantize_rejects_overflowing_shape_naming_node():
    model = as_model(mixed_lm(big_k=300))
    with pytest.raises(SpikecError, match="l0a.down.*int32 accumulator can overflow: K=300"):
        run_passes(model, ["quantize"], None, act_scale="dynamic", tt=16, tv=16)


def test_rate_if_cannot_spike_attention():
    model = load_inlined(exported("tiny-llava") / "lm.onnx")
    with pytest.raises(SpikecError, match="node 'node_matmul'.*--neuron if cannot spike an attention product"):
        run_passes(model, ["quantize", "spike-rewrite"], None, act_scale="dynamic", neuron="if", spike_attention=True)
