"""quantize: weights per output channel, static/dynamic activation scales, SmoothQuant,
coverage report, and the user errors of the quantize options."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spike_graphs import as_model, export_feeds, exported, mixed_feeds, mixed_lm, run_passes, save
from spikec import ops
from spikec import reference as R
from spikec.ir import load_model as load_inlined
from spikec.errors import SpikecError
from spikec.passes.options import SpikeOptions


def _ql(model, name):
    return next(n for n in model.graph if n.name == name and n.op_type == "QuantLinear")


@pytest.mark.parametrize("wbits", [8, 4])
def test_weights_per_output_channel_round_to_nearest(wbits):
    proto = mixed_lm()
    w = next(np.frombuffer(t.raw_data, np.float32).reshape(t.dims) for t in proto.graph.initializer if t.name == "l0a.w1")
    model = as_model(proto)
    run_passes(model, ["quantize"], None, act_scale="dynamic", wbits=wbits)
    node = _ql(model, "l0a.up")
    w_q, s_w = node.inputs[2].const_value.numpy(), node.inputs[3].const_value.numpy()
    assert w_q.dtype == np.int8 and np.abs(w_q).max() == R.qmax(wbits)
    assert np.array_equal(s_w, R.scale_per_channel(w, wbits))
    assert np.array_equal(w_q, R.quantize(w, s_w, R.qmax(wbits)))
    assert node.inputs[4] is not None  # the bias Add was fused
    assert "MatMul" not in {n.op_type for n in model.graph}


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_static_clips_per_modality(method):
    feeds = mixed_feeds(2)
    model = as_model(mixed_lm())
    run_passes(model, ["quantize"], feeds, calib="npz", calib_method=method, percentile=99.0)
    clip = ops.clip_table(_ql(model, "l0a.up"), 2)  # [text, vision] x T
    # the first norm's input is x itself: vision tokens carry the outliers
    assert clip[1, 3] > clip[0, 3] > 0
    if method == "max":
        assert np.all(clip[:, 0:1] == clip)
    if method == "mse":
        assert clip[1, 0] < clip[1, 7]  # fewer levels clip harder


def test_dynamic_needs_no_calibration_static_does():
    with pytest.raises(SpikecError, match="--act-scale static: .*--calib PATH"):
        SpikeOptions(act_scale="static").validate()
    model = as_model(mixed_lm())
    with pytest.raises(SpikecError, match="--act-scale static: no calibration data"):
        run_passes(model, ["quantize"], None, act_scale="static", calib="x.npz")


@pytest.mark.parametrize("flag, kw", [("--tt 0", dict(tt=0)), ("--tv 0", dict(tv=0)), ("--wbits 3", dict(wbits=3)),
                                      ("--neuron lif", dict(neuron="lif")), ("--smooth 1.5", dict(smooth=1.5))])
def test_bad_options_name_the_option(flag, kw):
    with pytest.raises(SpikecError, match=flag.split()[0]):
        SpikeOptions(**kw).validate()


def test_smoothquant_folds_into_norms_without_new_ops():
    feeds = mixed_feeds(2)
    plain, smooth = as_model(mixed_lm()), as_model(mixed_lm())
    run_passes(plain, ["quantize"], feeds, calib="npz", tt=4, tv=4)
    ctx = run_passes(smooth, ["quantize"], feeds, calib="npz", tt=4, tv=4, smooth=0.5)
    assert len(list(smooth.graph)) == len(list(plain.graph))
    rows = {r["name"]: r.get("smooth") for r in ctx.results["quantize"]["layers"]}
    assert rows["l0a.up"]["smoothed"] and "l0a.norm.weight" in rows["l0a.up"]["folded_into"]
    assert not rows["l0a.down"]["smoothed"] and "Relu" in rows["l0a.down"]["reason"]
    ref = [ops.run_reference(ctx.float_model, f)[0] for f in feeds]
    err = lambda m: np.mean([np.mean((ops.run_reference(m, f)[0] - r) ** 2) for f, r in zip(feeds, ref)])
    # smoothing moves the vision outliers into the weights: less error at the same T
    assert err(smooth) < err(plain)


def test_exported_coverage_and_float_report():
    """Every linear layer of vision encoder + projector + LM is covered; the rest is reported."""
    feeds = export_feeds("tiny-llava")
    vision = load_inlined(exported("tiny-llava") / "vision.onnx")
    ctx = run_passes(vision, ["quantize"], feeds["vision"], calib="folder")
    q = ctx.results["quantize"]
    assert len(q["layers"]) == 8  # q, k, v, o, fc1, fc2 of the used layer + 2 projector linears
    reasons = {f["op"]: f["reason"] for f in q["float"]}
    assert "convolution" in reasons["Conv"] and "attention" in reasons["MatMul"]
    assert all(r["clip"]["vision"] > 0 and r["clip"]["text"] is None for r in q["layers"])
    lm = load_inlined(exported("tiny-llava") / "lm.onnx")
    ctx = run_passes(lm, ["quantize"], feeds["lm"], calib="folder")
    assert len(ctx.results["quantize"]["layers"]) == 15  # 2 x 7 + lm_head
    assert all(r["clip"]["vision"] and r["clip"]["text"] for r in ctx.results["quantize"]["layers"])


def test_cli_single_onnx_with_npz_calibration(run_cli, tmp_path):
    src = save(mixed_lm(), tmp_path / "m.onnx")
    feeds = mixed_feeds(2)
    np.savez(tmp_path / "calib.npz", **{f"{i}/{k}": v for i, f in enumerate(feeds) for k, v in f.items()})
    out = tmp_path / "out.onnx"
    r = run_cli("compile", str(src), "-o", str(out), "--calib", str(tmp_path / "calib.npz"), "--calib-method", "mse",
                "--wbits", "4", "--report", str(tmp_path / "r.json"), "--dump-ir", str(tmp_path / "d"))
    assert r.code == 0, r.err
    report = json.loads((tmp_path / "r.json").read_text())
    names = [p["name"] for p in report["passes"]]
    assert names[-6:] == ["quantize", "spike-rewrite", "eliminate-common-subexpressions", "med", "msts", "lower-ort"]
    rows = report["extra"]["layers"]
    assert len(rows) == 9 and all(r["timesteps"] == {"text": 4, "vision": 3} and r["wbits"] == 4 for r in rows)
    assert all(r["act_scales"]["vision"] > 0 for r in rows) and rows[0]["med"] is not None
    assert (tmp_path / "out.med.json").is_file() and (tmp_path / "out.med.png").stat().st_size > 1000
    assert (tmp_path / "d" / "06-quantize.txt").read_text().count("spikec.QuantLinear") >= 9 or \
        "QuantLinear" in (tmp_path / "d" / "06-quantize.txt").read_text()
    r = run_cli("compile", str(src), "-o", str(out), "--act-scale", "static")
    assert r.code != 0 and "--act-scale static" in r.err and "--calib" in r.err
    r = run_cli("compile", str(src), "-o", str(out), "--tt", "0")
    assert r.code != 0 and "--tt 0" in r.err
