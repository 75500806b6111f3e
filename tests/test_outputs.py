"""Outputs never destroy what they were not given: `-o` is checked before any work
(spikec/atomic.py: check_output). A folder is replaced only when spikec wrote it; an
output that equals or holds an input, the current folder, a folder named as a file (or
the reverse), or a path under a file is refused with one line naming the option. SIGTERM
removes temporary outputs like Ctrl-C. Deeply nested JSON in any file spikec reads is a
clear error, not a RecursionError."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spikec.atomic import check_output, is_spikec_folder
from spikec.errors import SpikecError


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_into_its_checkpoint_is_refused(run_cli, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llava"}')
    before = _tree(ckpt)
    for out in (ckpt, tmp_path):  # the input itself, and a folder holding it
        r = run_cli("export", str(ckpt), "-o", str(out))
        assert r.code == 1 and "error: -o" in r.err and "Traceback" not in r.err, r.err
    assert _tree(ckpt) == before


def test_compile_output_checked_before_work(run_cli, tmp_path, tiny_mlp):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "dir.sbin").mkdir()
    cases = [
        (keep, "not one spikec wrote"),  # an existing folder spikec did not write
        (afile / "x.sbin", "is a file"),
        (tmp_path / "dir.sbin", "is a folder"),
        (Path(tiny_mlp).parent, "would replace the input"),
    ]
    for out, msg in cases:
        r = run_cli("compile", str(tiny_mlp), "-o", str(out))
        assert r.code == 1 and msg in r.err and "Traceback" not in r.err, (out, r.err)
    assert (keep / "notes.txt").read_text() == "precious" and Path(tiny_mlp).is_file()


def test_current_folder_and_replaceable_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpikecError, match="current folder"):
        check_output(".", is_dir=True)
    with pytest.raises(SpikecError, match="current folder"):
        check_output("..", is_dir=True)
    earlier = tmp_path / "export"
    earlier.mkdir()
    (earlier / "manifest.json").write_text("{}")
    check_output(earlier, is_dir=True, replaceable=is_spikec_folder)  # an earlier output: replaced
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", is_dir=True)  # an empty folder holds nothing to lose
    check_output(tmp_path / "new" / "deeper", is_dir=True)  # created


@pytest.mark.parametrize("where", ["config", "data"])
def test_deeply_nested_json_is_an_error(tmp_path, where):
    deep = "[" * 100000 + "]" * 100000
    if where == "config":
        from spikec.frontend.loading import load

        (tmp_path / "config.json").write_text(deep)
        with pytest.raises(SpikecError, match="nested too deeply"):
            load(str(tmp_path))
    else:
        from spikec.evaluate import load_items

        (tmp_path / "data.jsonl").write_text(deep + "\n")
        with pytest.raises(SpikecError, match="nested too deeply"):
            load_items(tmp_path)


def test_sigterm_removes_the_temporary_output(tmp_path):
    """`spikec export` killed with SIGTERM while it writes: exit 130, nothing left."""
    out = tmp_path / "out"
    exe = Path(sys.executable).with_name("spikec")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "spikec"]
    proc = subprocess.Popen([*cmd, "export", "tiny-llava", "-o", str(out)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.tmp-*")):
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"export ended (rc {proc.returncode}) before its temporary folder was seen")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-500:]
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]
