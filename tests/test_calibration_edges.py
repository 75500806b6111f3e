"""Static calibration edge cases: a layer silent on the calibration data (clip 0: warned,
one fallback scale on every target) and a modality with no calibration token (refused)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from spike_graphs import as_model, mixed_feeds, mixed_lm, run_passes
from spikec import ir as spir
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.ort_lowering import lower_for_ort


def test_static_scale_is_the_one_fallback():
    s = R.static_scale(np.array([0.0, 1.5, np.nan, 1e-45, 3.0], np.float32), np.array([3, 3, 3, 3, 1]))
    assert s[0] == 1.0 and s[1] == np.float32(1.5) / np.float32(7) and np.isnan(s[2]) and s[3] == 1.0 and s[4] == 3.0
    assert R.ZERO_RANGE_SCALE == 1.0 and R.scale_per_token(np.zeros((1, 4)), 4)[0, 0] == R.ZERO_RANGE_SCALE


def _silent_feeds():
    """mixed_lm feeds where layer l0a's input is zero for the text tokens (silent there)."""
    feeds = mixed_feeds(n=2)
    for f in feeds:
        f["x"][:, 6:, :] = 0.0  # text tokens: zero embeddings -> the first norm's output is 0
    return feeds


def test_silent_layer_is_warned_and_reported(caplog):
    model = as_model(mixed_lm())
    with caplog.at_level(logging.WARNING, logger="spikec.passes.quantize"):
        ctx = run_passes(model, ["quantize"], _silent_feeds(), calib="npz", act_scale="static")
    rows = {r["name"]: r for r in ctx.results["quantize"]["layers"]}
    assert rows["l0a.up"]["clip"]["text"] == 0.0 and rows["l0a.up"]["silent"] == {"modalities": ["text"], "fallback_scale": 1.0}
    assert "silent" not in rows["l1m.up"]
    assert {"name": "l0a.up", "modality": "text"} in ctx.results["quantize"]["silent"]
    msgs = [r.getMessage() for r in caplog.records]
    assert any("layer 'l0a.up' is silent on the calibration data for text tokens" in m and "falls back to 1" in m for m in msgs)


def test_silent_layer_fallback_same_on_reference_and_ort():
    model = as_model(mixed_lm())
    run_passes(model, ["quantize", "spike-rewrite"], _silent_feeds(), calib="npz", act_scale="static")
    enc = next(n for n in sops.spikec_nodes(model, sops.SPIKE_ENCODE) if n.name.startswith("l0a.up"))
    assert (sops.clip_table(enc, 2)[0] == 0).all()
    proto = spir.to_proto(model)
    feeds = mixed_feeds(n=1, seed=7)[0]  # ordinary inputs: the silent layer now sees nonzero text tokens
    x_enc = {"x": feeds["x"], "modality": feeds["modality"]}
    s_ref = sops.run_reference(proto, x_enc, outputs=[enc.outputs[1].name])[0]
    text = feeds["modality"] == 0
    assert (s_ref[text] == 1.0).all()  # the fallback, not 0 and not NaN
    ref = sops.run_reference(proto, feeds)[0]
    for mode in ("fused", "exact", "fakequant"):
        m = ir.from_proto(proto)
        lower_for_ort(m, mode)
        sess = ort.InferenceSession(spir.to_proto(m).SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(sess.run(["logits"], feeds)[0], ref, err_msg=mode)


@pytest.mark.parametrize("missing", ["text", "vision"])
def test_uncalibrated_modality_refused_at_compile(missing):
    feeds = mixed_feeds(n=2)
    for f in feeds:
        f["modality"][:] = 1 if missing == "text" else 0
    with pytest.raises(SpikecError, match=rf"quantize: layer 'l0a.up': the calibration data has no '{missing}' tokens.*"
                                          rf"--act-scale dynamic"):
        run_passes(as_model(mixed_lm()), ["quantize"], feeds, calib="npz", act_scale="static")
    # dynamic scales need no calibration tokens at all
    run_passes(as_model(mixed_lm()), ["quantize"], feeds, calib="npz", act_scale="dynamic")


def test_constant_modality_graph_needs_only_its_own():
    """A graph without a modality input (the vision encoder) carries one modality: the other's NaN is fine."""
    from test_nonfinite import _feeds, _float_linear

    model = _float_linear(False)
    ctx = run_passes(model, ["shape-inference", "quantize"], [_feeds(0, False)], calib="npz", act_scale="static")
    assert ctx.results["quantize"]["layers"][0]["clip"]["vision"] is None


def test_nonfinite_calibration_activation_refused():
    feeds = mixed_feeds(n=2)
    feeds[1]["x"][0, 2, 3] = np.nan
    with pytest.raises(SpikecError, match=r"quantize: layer 'l0a.up': its input '.*' holds NaN or inf on calibration feed 1"):
        run_passes(as_model(mixed_lm()), ["quantize"], feeds, calib="npz", act_scale="static")
