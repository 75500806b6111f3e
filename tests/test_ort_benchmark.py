"""benchmarks/ort_benchmark.py: its help, the profile aggregation, and one tiny end-to-end run
(every variant: float, ORT int8 / MatMulNBits int4, spikec W8 / W4)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ort_benchmark.py"
_spec = importlib.util.spec_from_file_location("ort_benchmark", SCRIPT)
ob = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ob)


def test_help_names_every_shape_and_variant():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for word in (*ob.SHAPES, *ob.VARIANTS, "--layers", "--block-size", "--accuracy-level", "--profile",
                 "--reuse", "quantize_dynamic", "MatMulNBits"):
        assert word in out


def test_aggregate_skips_warmup_runs(tmp_path):
    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def node(ts, name, op, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0, 100), node(1, "a", "MatMulInteger", 90),  # warm-up: dropped
              run(200, 50), node(201, "a", "MatMulInteger", 30), node(231, "b", "Cast", 10),
              run(300, 70), node(301, "a", "MatMulInteger", 50), node(351, "c", "Cast", 10)]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(events))
    table = ob.aggregate(str(trace), skip_runs=1)
    assert table["MatMulInteger"] == (40.0, 1)
    assert table["Cast"] == (10.0, 2)
    assert table["(model_run)"] == (60.0, 0)


def test_feeds_fit_mrope_position_ids():
    manifest = {"lm": {"num_layers": 1, "num_kv_heads": 2, "head_dim": 4, "hidden_size": 8}}
    feeds = ob.lm_feeds(manifest, 8, 0, np.random.default_rng(0))
    assert feeds["modality"].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]

    class In:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Sess:
        def get_inputs(self):
            return [In("position_ids", [3, "batch", "seq"])]

    pos = ob.fit_feeds(feeds, Sess())["position_ids"]
    assert pos.shape == (3, 1, 8) and (pos == np.arange(8)).all()


def test_tiny_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--only", "tiny", "--seq", "16", "--repeat", "2",
                        "--profile", str(tmp_path / "prof")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "onnxruntime " in out and "2 intra-op threads" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.split()}
    for phase in ("prefill", "decode"):
        assert lines[phase].count(" ms") == len(ob.VARIANTS) and lines[phase].count("x") == len(ob.RATIOS)
    errs = [float(x) for x in lines["rel.err"].split()[1:1 + len(ob.VARIANTS)]]
    assert errs[0] == 0.0 and all(e < 0.5 for e in errs)  # every variant computes the same model
    assert "profile [tiny] spikec-w8 prefill" in out and "MatMulInteger" in out
    assert list((tmp_path / "prof").glob("tiny-ort-int4-decode*.json"))
