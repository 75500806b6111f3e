"""The evaluation harness over the three kinds of model: checkpoint, export folder, .sbin."""

from __future__ import annotations

import json

import pytest

from isa_graphs import compiled_isa
from spike_graphs import exported
from spikec.errors import SpikecError
from spikec.evaluate import evaluate, load_items
from spikec.frontend.export import sample_image


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i, (w, h) in enumerate([(64, 48), (40, 40), (32, 50)]):
        sample_image(w, h).save(tmp_path / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "prompt": "What is in the image?", "answer": "x", "type": "t"})
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_eval_counts_exact_matches_per_type(data_dir, tmp_path):
    folder = exported("tiny-llava")
    onnx_run = evaluate(folder, data_dir, max_new_tokens=3)
    assert onnx_run.total == 3 and len(onnx_run.predictions) == 3
    assert onnx_run.by_type == {"t": [onnx_run.correct, 3]}
    # an exact-match answer: use the model's own prediction as the reference answer
    rows = [json.loads(line) for line in (data_dir / "data.jsonl").read_text().splitlines()]
    rows[0]["answer"] = onnx_run.predictions[0]
    (data_dir / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    again = evaluate(folder, data_dir, max_new_tokens=3)
    assert again.correct >= 1 and again.to_dict()["accuracy"] == again.correct / 3


def test_bad_data_folders(tmp_path):
    with pytest.raises(SpikecError, match="no data.jsonl"):
        load_items(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"image": "missing.png", "prompt": "p", "answer": "a"}\n')
    with pytest.raises(SpikecError, match="data.jsonl:1: image 'missing.png' not found"):
        load_items(tmp_path)
    (tmp_path / "data.jsonl").write_text('{"image": "../x.png", "prompt": 3, "answer": "a"}\n')
    with pytest.raises(SpikecError, match="field 'prompt'"):
        load_items(tmp_path)
    sample_image().save(tmp_path / "ok.png")
    (tmp_path / "data.jsonl").write_text('{"image": "ok.png", "prompt": "p", "answer": "a"}\n')
    with pytest.raises(SpikecError, match="not a .sbin, an export folder"):
        evaluate(tmp_path, tmp_path)  # a folder that is no model
    with pytest.raises(SpikecError, match="nothing: no such file or folder"):
        evaluate(tmp_path / "nothing", tmp_path)


def test_eval_on_the_fpga_target_gives_the_ort_targets_answers(data_dir, run_cli):
    sbin = compiled_isa(3, 4)
    ort = evaluate(sbin, data_dir, max_new_tokens=3, limit=2)
    fpga = evaluate(sbin, data_dir, max_new_tokens=3, limit=2, target="fpga")
    assert fpga.predictions == ort.predictions and "sbin/fpga/fused/sim" in fpga.model
    r = run_cli("eval", sbin, "--data", str(data_dir), "--target", "fpga", "--limit", "1", "--max-new-tokens", "2")
    assert r.code == 0 and "(sbin/fpga/fused/sim)" in r.out and "/1 = " in r.out
    with pytest.raises(SpikecError, match="--target fpga runs a compiled .sbin"):
        evaluate(exported("tiny-llava"), data_dir, target="fpga")
    r = run_cli("eval", str(exported("tiny-llava")), "--data", str(data_dir), "--device", "rtl")
    assert r.code == 1 and "--device rtl applies to --target fpga only" in r.err
    r = run_cli("eval", str(data_dir / "nosuch.sbin"), "--data", str(data_dir), "--target", "fpga")
    assert r.code == 1 and "nosuch.sbin: no such file or folder" in r.err
