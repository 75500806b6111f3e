"""Progress on long work (spikec/progress.py): a bar with an ETA on a terminal, today's
plain lines in a pipe, nothing with -q."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from spikec import progress as P

BAR_MARKS = ("%|", "\r", "\u2588")  # tqdm's percentage and bar edge, carriage return, a full block


@pytest.fixture(autouse=True)
def _not_quiet():
    P.set_quiet(False)
    yield
    P.set_quiet(False)


def test_pipe_keeps_the_lines_and_draws_no_bar(run_cli, tiny_mlp, tmp_path):
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"))
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert "[1/10] fold-constants" in lines and "[6/10] quantize" in lines and "[10/10] msts" in lines, r.err
    assert not any(m in r.out + r.err for m in BAR_MARKS), r.err
    assert "compiled" in r.out


def test_quiet_prints_only_errors(run_cli, tiny_mlp, tmp_path):
    r = run_cli("-q", "compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"))
    assert r.code == 0 and r.err == "", r.err
    assert "compiled" in r.out  # the result still prints
    r = run_cli("--quiet", "compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x.onnx"))
    assert r.code == 1 and r.err.startswith("error: ") and "nope.onnx" in r.err and r.err.count("\n") == 1, r.err
    # the flag belongs to one invocation
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"))
    assert "[1/10] fold-constants" in r.err
    # after the command as before it
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"), "-q")
    assert r.code == 0 and r.err == "" and r.out.startswith("compiled") and r.out.count("\n") == 1, r.out
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"))
    assert "[1/10] fold-constants" in r.err
    r = run_cli("compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x.onnx"), "--quiet")
    assert r.code == 1 and r.err.startswith("error: ") and r.err.count("\n") == 1, r.err


def test_adapters_off_a_terminal():
    seen = []
    with P.pass_lines(seen.append) as cb:
        cb("lm: [1/2] quantize")
        cb("calibration: running x")
    with P.stage_lines(seen.append, 5, "export") as cb:
        cb("loading tiny")
    assert seen == ["lm: [1/2] quantize", "calibration: running x", "loading tiny"]
    assert list(P.track([1, 2, 3], "x")) == [1, 2, 3]
    P.set_quiet(True)
    with P.pass_lines(seen.append) as cb:
        cb("[1/2] quantize")
    P.line("  1/1")
    assert len(seen) == 3


def _on_a_terminal(args: list[str], timeout: float = 60.0) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout to a pipe): its code and the terminal's text."""
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.Popen([sys.executable, "-m", "spikec", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.stdout.read()
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_terminal_shows_a_bar(tiny_mlp, tmp_path):
    code, tty = _on_a_terminal(["compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx")])
    assert code == 0, tty
    assert "compile: 100%|" in tty and "10/10" in tty and "pass/s" in tty, tty
    assert "[1/10] fold-constants" not in tty  # the bar replaces the lines
    code, tty = _on_a_terminal(["-q", "compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx")])
    assert code == 0 and "%|" not in tty and "fold-constants" not in tty, tty


def test_slow_generation_shows_a_token_bar(tmp_path):
    """`spikec run --target fpga` (the functional simulator: about 50 ms a token on the tiny
    model, so 64 tokens pass the bar's 1 s delay) shows a bar over the generated tokens on a
    terminal, and none with -q."""
    from test_fpga_target import compiled_isa

    from spikec.frontend.export import sample_image

    image = tmp_path / "img.png"
    sample_image().save(image)
    args = ["run", compiled_isa(3, 4), "--target", "fpga", "--image", str(image), "--prompt", "What is in the image?",
            "--max-new-tokens", "64"]
    code, tty = _on_a_terminal(args, timeout=180)
    assert code == 0, tty
    assert "generate:" in tty and "token" in tty, tty
    code, tty = _on_a_terminal(["-q", *args], timeout=180)
    assert code == 0 and "generate:" not in tty, tty
