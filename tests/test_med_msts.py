"""med and msts: MED per layer from the float model; timesteps chosen under a budget beat
uniform timesteps at the same budget; the export-folder compile end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spike_graphs import as_model, calib_folder, exported, mixed_feeds, mixed_lm, run_passes
from spikec import calibration as C
from spikec import ops
from spikec.errors import SpikecError
from spikec.passes.med import write_artifacts


def test_med_matches_its_definition(tmp_path):
    feeds = mixed_feeds(2)
    model = as_model(mixed_lm())
    ctx = run_passes(model, ["quantize", "spike-rewrite", "med"], feeds, calib="npz")
    med = ctx.results["med"]
    assert med["num_layers"] == 2 and len(med["layers"]) == 2
    row = med["layers"][1]
    assert (row["from"], row["to"]) == ("l0m.h", "l1m.h")
    # recompute e[1, m] from the float model by hand
    got = C.run_ort(ctx.float_model, feeds, ["l0m.h", "l1m.h"])
    e = {}
    for m, name in ((0, "text"), (1, "vision")):
        d = []
        for f, a in zip(feeds, got):
            h0, h1 = a["l0m.h"].reshape(-1, 16).astype(np.float64), a["l1m.h"].reshape(-1, 16).astype(np.float64)
            cos = (h0 * h1).sum(1) / np.linalg.norm(h0, axis=1) / np.linalg.norm(h1, axis=1)
            d.append((1 - cos)[f["modality"].reshape(-1) == m])
        e[name] = np.concatenate(d).mean()
    assert row["e"]["text"] == pytest.approx(e["text"]) and row["e"]["vision"] == pytest.approx(e["vision"])
    assert row["med"] == pytest.approx(abs(e["vision"] - e["text"]) / (e["vision"] + e["text"]))
    layers = {n.name: ops.attr(n, "layer") for n in model.graph if n.domain == "spikec"}
    assert layers["l0a.up"] == 0 and layers["l1m.down"] == 1 and layers["head"] == 2
    files = write_artifacts(med, tmp_path / "m")
    assert json.loads(files[0].read_text())["layers"][1]["med"] == row["med"] and files[1].suffix == ".png"


def test_msts_budget_beats_uniform_with_unequal_timesteps():
    feeds = mixed_feeds(3)
    model = as_model(mixed_lm())
    ctx = run_passes(model, ["quantize", "spike-rewrite", "med", "msts"], feeds, calib="npz", budget=4.0)
    r = ctx.results["msts"]
    assert r["timesteps"]["vision"] != r["timesteps"]["text"]
    assert r["budget_used"] <= 4.0 + 1e-9 and r["uniform"]["budget_used"] <= 4.0 + 1e-9
    assert r["error"] <= r["uniform"]["error"]
    assert r["error"] < 0.9 * r["uniform"]["error"]  # a clear win, not a tie
    # the chosen T are in the graph, and the measured error is what the graph gives
    table = {p["layer"]: p["timesteps"] for p in r["per_layer"]}
    for n in model.graph:
        if n.op_type in ("SpikeEncode", "SpikeMatMul"):
            assert ops.get_timesteps(n) == [table[ops.attr(n, "layer")]["text"], table[ops.attr(n, "layer")]["vision"]]
    print("msts", r["timesteps"], r["error"], "uniform", r["uniform"])


def test_msts_explicit_and_errors():
    feeds = mixed_feeds(1)
    model = as_model(mixed_lm())
    ctx = run_passes(model, ["quantize", "msts"], feeds, calib="npz", tv=2, tt=6)
    assert {tuple(ops.get_timesteps(n)) for n in model.graph if n.domain == "spikec"} == {(6, 2)}
    assert ctx.results["msts"]["budget_used"] == pytest.approx((6 * 4 + 2 * 6) / 10)
    with pytest.raises(SpikecError, match="--budget: .*--calib"):
        run_passes(as_model(mixed_lm()), ["quantize", "msts"], None, act_scale="dynamic", budget=3.5)
    with pytest.raises(SpikecError, match="--budget: give either"):
        run_passes(as_model(mixed_lm()), ["quantize", "msts"], feeds, calib="npz", budget=3, tv=3, tt=3)


def test_cli_compiles_export_folder(run_cli, tmp_path):
    src = exported("tiny-llava")
    out = tmp_path / "out"
    r = run_cli("compile", str(src), "-o", str(out), "--calib", str(calib_folder()), "--budget", "3.5",
                "--report", str(tmp_path / "r.json"), "--calib-samples", "2")
    assert r.code == 0, r.err
    assert {p.name for p in out.iterdir()} >= {"vision.onnx", "lm.onnx", "embed.onnx", "manifest.json", "processor",
                                              "report.json", "lm.med.json", "lm.med.png"}
    report = json.loads((tmp_path / "r.json").read_text())
    lm = report["extra"]["graphs"]["lm"]
    assert lm["msts"]["error"] <= lm["msts"]["uniform"]["error"]
    assert any(r["med"] is not None for r in lm["layers"])
    vision = report["extra"]["graphs"]["vision"]
    assert {r["timesteps"]["vision"] for r in vision["layers"]} == {lm["msts"]["timesteps"]["vision"]}
    assert "model.language_model.layers.1.mlp.down_proj" in r.out  # layers named by module path
    chosen = lm["msts"]["timesteps"]  # the summary line reads as text, not as a Python dict
    line = next(ln for ln in r.out.splitlines() if ln.startswith("lm: msts: "))
    assert f"T text {chosen['text']}, vision {chosen['vision']};" in line and "{" not in line and "'" not in line, line


def test_msts_measures_large_graphs_on_the_ort_lowering(monkeypatch):
    """Above REFERENCE_MAX_BYTES of weights the search measures its error on the ORT target's
    fused lowering instead of the numpy reference evaluator (which inlines every weight):
    the same bits by the numeric contract, so the same errors and the same choice."""
    from spikec.passes import msts

    feeds = mixed_feeds(3)
    runs = []
    for limit in (msts.REFERENCE_MAX_BYTES, 0):
        monkeypatch.setattr(msts, "REFERENCE_MAX_BYTES", limit)
        model = as_model(mixed_lm(big_k=64))
        ctx = run_passes(model, ["quantize", "spike-rewrite", "med", "msts"], feeds, calib="npz", budget=4.0)
        runs.append(ctx.results["msts"])
    assert runs[0]["timesteps"] == runs[1]["timesteps"]
    assert runs[0]["error"] == runs[1]["error"] and runs[0]["uniform"]["error"] == runs[1]["uniform"]["error"]
