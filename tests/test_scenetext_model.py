"""The second bundled model (models/scenetext-qwen2vl, docs/scenetext-model.md): a Qwen2-VL
trained by scripts/train_scenetext_model.py on the scene-text data set. Its float answers
on test items, its folder, and (slow) the whole path: export, compile at Tv/Tt = 3/4, run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spikec.datasets import scenetext as S

REPO = Path(__file__).resolve().parents[1]
# SPIKEC_SCENETEXT_MODEL: the same checks on another checkpoint of the training script (a new run)
MODEL_DIR = Path(os.environ.get("SPIKEC_SCENETEXT_MODEL", REPO / "models" / "scenetext-qwen2vl"))
FIRST = 15  # the first 15 test items: 3 of each question type (item i has type i mod 5)


def test_folder_is_a_self_contained_qwen2vl_checkpoint():
    names = {p.name for p in MODEL_DIR.iterdir()}
    for f in ("config.json", "generation_config.json", "model.safetensors", "processor_config.json",
              "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "training_report.json"):
        assert f in names, f
    assert json.loads((MODEL_DIR / "config.json").read_text())["model_type"] == "qwen2_vl"
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 25e6  # the issue: a checkpoint of about 20 MB
    report = json.loads((MODEL_DIR / "training_report.json").read_text())
    # what docs/scenetext-model.md states: the float target on the 500 test items
    assert report["test_greedy"]["n"] == 500 and report["test_greedy"]["reading"] >= 0.85


def test_float_model_reads_test_items():
    """transformers' own classes, offline, through the saved chat template: the reading
    questions among the first 100 test items (60 of them) are answered at the float target,
    85 % exact match (52 of 60 when this checkpoint was committed; items drawn by the
    generator here, from the seeds alone; about 15 s)."""
    from spikec.evaluate import predictor_for

    predict, kind, _ = predictor_for(MODEL_DIR, max_new_tokens=6)
    assert kind == "float"
    reading = [it for it in S.make_items("test", 100) if it.qtype in S.READING_TYPES]
    got = {it.index: predict(it.image(), it.prompt).strip() for it in reading}
    right = sum(got[it.index] == it.answer for it in reading)
    assert len(reading) == 60 and right >= 0.85 * len(reading), [(it.answer, got[it.index]) for it in reading]


@pytest.mark.slow
def test_spiking_model_end_to_end(tmp_path):
    """export -> compile (W8, Tv/Tt = 3/4) -> the ORT target: most answers equal the float
    model's on the first test items."""
    from spikec.compiler import compile_path
    from spikec.evaluate import agreement, evaluate
    from spikec.frontend.export import export
    from spikec.passes.options import SpikeOptions

    export(MODEL_DIR, tmp_path / "export")
    S.write_eval_folder(S.make_items("test", FIRST), tmp_path / "test")
    compile_path(tmp_path / "export", tmp_path / "m.sbin", options=SpikeOptions(tv=3, tt=4))
    flt = evaluate(tmp_path / "export", tmp_path / "test", max_new_tokens=6)
    spk = evaluate(tmp_path / "m.sbin", tmp_path / "test", mode="fused", max_new_tokens=6)
    same, total = agreement(spk.predictions, flt.predictions)
    assert total == FIRST and same >= FIRST - 4
