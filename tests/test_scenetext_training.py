"""The scene-text model's training script, end to end on a tiny configuration (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_training_script_end_to_end(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_scenetext_model.py"), "--out", str(out), "--steps", "5",
           "--page-steps", "1", "--easy-steps", "1", "--small-steps", "1",  # every curriculum stage once, full twice
           "--batch-size", "2", "--eval-every", "1", "--val-items", "5", "--test-items", "5", "--log-every", "1",
           "--vision-hidden", "32", "--vision-layers", "1", "--text-hidden", "64", "--text-layers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "FLOAT ACCURACY" in r.stdout and "reload check" in r.stdout
    report = json.loads((out / "training_report.json").read_text())
    assert report["selected_step"] in (1, 2, 3, 4, 5) and report["test_greedy"]["n"] == 5
    assert (out / "chat_template.jinja").is_file() and (out / "tokenizer.json").is_file()
