"""Group-wise weight scales (issue 16 item 2): the numeric, the quantize pass, the ops' checks.

- spikec.reference.dequantize_acc's group-wise order against a scalar loop written from
  its definition (per group t_g = (float32(acc_g) * s_x) * s_w[g]; bias with the first
  group; groups added in ascending order), and one group == per-channel bits;
- the quantize pass with --group-size (RTN and GPTQ): scale shapes, per-layer fallback to
  per-channel where the size does not divide K, the report; spiking == fake-quantized ANN
  bit for bit on the reference; group-wise beats per-channel on the layer outputs;
- options and graph checks refuse what is not defined (rate IF, sizes that do not divide K).
The ORT and accelerator targets have their own tests (test_ort_groupwise.py,
test_fpga_groupwise.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spike_graphs import as_model, mixed_feeds, mixed_lm, run_passes
from spikec import ir as spir
from spikec import ops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.passes.options import SpikeOptions

HIDDEN, FFN = 64, 96  # K = 64 (2 groups of 32, 1 of 64) and 96 (3 groups of 32; 64 does not divide it)


def _slow(x, T, w, s_w, bias):
    """The group-wise layer one output at a time, each float32 operation spelled out."""
    s_x = R.scale_per_token(x, T + 1)
    q, s_x = R.encode_tokens(x, s_x, (2 ** T) - 1, "")
    K, M = w.shape
    G = K // s_w.shape[0]
    y = np.zeros(x.shape[:-1] + (M,), np.float32)
    for idx in np.ndindex(*x.shape[:-1]):
        for j in range(M):
            out = None
            for g in range(s_w.shape[0]):
                acc = sum(int(q[idx + (k,)]) * int(w[k, j]) for k in range(g * G, (g + 1) * G))
                t = np.float32(np.float32(np.float32(acc) * s_x[idx + (0,)]) * s_w[g, j])
                out = (t if bias is None else np.float32(t + bias[j])) if out is None else np.float32(out + t)
            y[idx + (j,)] = out
    return y


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_reference_group_order_equals_a_scalar_loop(groups, with_bias):
    rng = np.random.default_rng(groups)
    x = (rng.standard_normal((2, 3, 32)) * rng.uniform(0.1, 30, 32)).astype(np.float32)
    w = rng.integers(-7, 8, (32, 5)).astype(np.int8)
    s_w = (rng.random((groups, 5)) * 1e-2 + 1e-4).astype(np.float32)
    bias = (rng.standard_normal(5) * 3).astype(np.float32) if with_bias else None
    T = 4
    s_x = R.scale_per_token(x, T + 1)
    y = R.spiking_linear(x, s_x, w, s_w, bias, T)
    assert np.array_equal(y, R.fake_quant_linear(x, s_x, w, s_w, bias, T))
    assert np.array_equal(y, _slow(x, T, w, s_w, bias))
    if groups == 1:  # one group is the per-channel formula, bit for bit
        assert np.array_equal(y, R.spiking_linear(x, s_x, w, s_w[0], bias, T))


def test_reference_refuses_groups_that_do_not_divide_k():
    x = np.ones((1, 2, 30), np.float32)
    w = np.ones((30, 4), np.int8)
    with pytest.raises(SpikecError, match="n_groups dividing K=30"):
        R.spiking_linear(x, R.scale_per_token(x, 5), w, np.ones((4, 4), np.float32), None, 4)
    with pytest.raises(SpikecError, match=r"\[n_groups, 4\]"):
        R.spiking_linear(x, R.scale_per_token(x, 5), w, np.ones((2, 5), np.float32), None, 4)


def _compile(passes, group_size, method="rtn", **kw):
    feeds = mixed_feeds(2, hidden=HIDDEN)
    model = as_model(mixed_lm(hidden=HIDDEN, ffn=FFN, vocab=40))
    ctx = run_passes(model, passes, feeds, wbits=4, group_size=group_size, weight_method=method,
                     calib="npz" if method == "gptq" else None, act_scale="dynamic", **kw)
    return model, ctx, feeds


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_pass_group_wise_scales_and_spiking_equals_fake_quant(group_size, method):
    quant, ctx, feeds = _compile(["quantize"], group_size, method)
    rows = {r["name"]: r for r in ctx.results["quantize"]["layers"] if r["kind"] == "linear"}
    assert ctx.results["quantize"]["group_size"] == group_size
    for node in ops.spikec_nodes(quant, ops.QUANT_LINEAR):
        K, M = node.inputs[2].const_value.numpy().shape
        s_w = node.inputs[3].const_value.numpy()
        want = group_size if K % group_size == 0 and K > group_size else 0
        assert rows[node.name]["group_size"] == want
        assert s_w.shape == ((K // want, M) if want else (M,)), node.name
    assert any(r["group_size"] == 0 for r in rows.values()) == (FFN % group_size != 0)
    spike, _, _ = _compile(["quantize", "spike-rewrite"], group_size, method)
    spir.verify(spike)
    for f in feeds + mixed_feeds(1, seed=7, hidden=HIDDEN):
        assert np.array_equal(ops.run_reference(quant, f)[0], ops.run_reference(spike, f)[0])


def test_group_wise_scales_fit_the_float_model_better():
    """W4 RTN at groups of 32 against per channel: the logits' error to the float graph drops
    (activations at T = 10, so that the weights' error dominates)."""
    feeds = mixed_feeds(2, hidden=HIDDEN, seed=3)
    ref = as_model(mixed_lm(hidden=HIDDEN, ffn=FFN, vocab=40))
    errs = {}
    for g in (0, 32):
        model, _, _ = _compile(["quantize"], g, tv=10, tt=10)
        errs[g] = sum(float(np.mean((ops.run_reference(model, f)[0] - ops.run_reference(ref, f)[0]) ** 2))
                      for f in feeds)
    assert errs[32] < 0.9 * errs[0], errs  # measured 0.82x


def test_options_refuse_undefined_group_settings():
    with pytest.raises(SpikecError, match="--group-size 16: choose one of 0, 32, 64, 128"):
        SpikeOptions(group_size=16).validate()
    with pytest.raises(SpikecError, match="rate-IF offset fold is per output channel"):
        SpikeOptions(group_size=32, neuron="if").validate()


def test_graph_check_refuses_malformed_group_scales():
    """A graph from an untrusted file: group scales that do not divide K, or with rate IF."""
    spike, _, _ = _compile(["quantize", "spike-rewrite"], 32)
    mm = next(n for n in ops.spikec_nodes(spike, ops.SPIKE_MATMUL) if n.inputs[4].const_value.numpy().ndim == 2)
    s_w = mm.inputs[4]
    good = s_w.const_value.numpy()
    K = mm.inputs[3].const_value.numpy().shape[0]
    import onnx_ir as ir

    s_w.const_value = ir.Tensor(np.ones((K // 32 + 1, good.shape[1]), np.float32), name=s_w.name)
    s_w.shape = ir.Shape([K // 32 + 1, good.shape[1]])
    with pytest.raises(SpikecError, match="n_groups dividing K"):
        spir.verify(spike)
    s_w.const_value = ir.Tensor(good, name=s_w.name)
    s_w.shape = ir.Shape(list(good.shape))
    mm.attributes["neuron"] = ir.AttrString("neuron", "if")
    with pytest.raises(SpikecError, match="group-wise weight scales need the tc-lif neuron"):
        spir.verify(spike)


def test_fallback_layers_are_summarised_and_ignored_options_warned(caplog):
    """One warning per graph for the layers that keep per-channel scales, the count in the
    report; options that do nothing with the others are warned about once, not refused."""
    import logging

    with caplog.at_level(logging.WARNING):
        _, ctx, _ = _compile(["quantize"], 64)
    q = ctx.results["quantize"]
    kept = [r for r in q["layers"] if r["kind"] == "linear" and not r["group_size"]]
    # G = 64: K = 64 is one group (per channel), K = 96 is not divisible: every layer falls back
    assert q["group_wise_layers"] == 0 and len(kept) == 9
    summary = [r.message for r in caplog.records if "keep per-channel scales" in r.message]
    assert len(summary) == 1 and "9 of 9 linear layers" in summary[0]
    caplog.clear()
    from spikec.passes import options as O

    O._WARNED.clear()  # once per process: start from none given
    with caplog.at_level(logging.WARNING):
        opts = SpikeOptions(gptq_act_order=True, online_hadamard=False)
        opts.validate()
        opts.validate()
    msgs = [r.message for r in caplog.records]
    assert sum("without --weight-method gptq" in m for m in msgs) == 1
    assert sum("without --rotate" in m for m in msgs) == 1


def test_inspect_shows_weight_bits_and_groups(run_cli, tmp_path):
    """`spikec inspect` names each spiking layer's weight bits and scale groups (from the
    shapes, no weight read), so a compiled model says how it was quantized."""
    from spike_graphs import exported
    from spikec.compiler import compile_path

    out = tmp_path / "g.sbin"
    compile_path(exported("tiny-llava"), out, options=SpikeOptions(wbits=4, group_size=32).validate())
    r = run_cli("inspect", str(out))
    assert r.code == 0 and "W4 groups of 32" in r.out
    layers = json.loads(run_cli("inspect", str(out), "--json").out)["graphs"]["lm"]["spiking_layers"]
    assert any(row.get("group_size") == 32 and row["wbits"] == 4 for row in layers)
