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
    # continuing from that checkpoint (--init-from, --start-step): the run picks up at step 3
    # of the same 5-step layout, scores the loaded weights first, and records the run it continued
    out2 = tmp_path / "m2"
    cont = cmd[:cmd.index("--out")] + ["--out", str(out2)] + cmd[cmd.index("--out") + 2:] + [
        "--init-from", str(out), "--start-step", "3"]
    r = subprocess.run(cont, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report2 = json.loads((out2 / "training_report.json").read_text())
    assert [h["step"] for h in report2["history"]] == [3, 4, 5]
    assert report2["continued_from"]["command"] == report["command"]
    # a checkpoint of other sizes is refused with one line naming the file
    bad = cont + ["--text-hidden", "32"]
    r = subprocess.run(bad, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode != 0 and "--init-from" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("extra, message", [
    (["--start-step", "3"], "--start-step needs --init-from"),
    (["--init-from", "x", "--start-step", "9", "--steps", "5"], "must lie in 0..4"),
])
def test_continuation_arguments_are_checked(extra, message):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_scenetext_model.py"), *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and message in r.stderr


def test_init_from_a_folder_without_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_scenetext_model.py"), "--out", str(tmp_path / "o"),
                        "--init-from", str(tmp_path), "--start-step", "1", "--steps", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "not a checkpoint written by this script" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o").exists()
