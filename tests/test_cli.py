"""The command line: help, version, errors as one line with a non-zero exit."""

from __future__ import annotations

import onnx

from graphs import messy_linear
from spikec import __version__


def test_version_and_help(run_cli):
    r = run_cli("--version")
    assert r.code == 0 and __version__ in r.out
    r = run_cli("--help")
    assert r.code == 0 and "compile" in r.out and "inspect" in r.out and "--verbose" in r.out


def test_only_working_commands_are_registered(run_cli):
    from spikec.cli import COMMANDS, cli

    import click

    ctx = click.Context(cli)
    for name in COMMANDS:
        assert cli.get_command(ctx, name) is not None, name


def test_missing_file_is_one_line_error(run_cli, tmp_path):
    r = run_cli("compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert r.code != 0
    assert r.err.strip().startswith("error: ") and "nope.onnx" in r.err and "no such file" in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "out.onnx").exists()


def test_non_onnx_and_truncated_files(run_cli, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello, I am not a model")
    r = run_cli("inspect", str(junk))
    assert r.code != 0 and "error: " in r.err and "junk.onnx" in r.err and "Traceback" not in r.err
    data = messy_linear().SerializeToString()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[:-7])
    r = run_cli("compile", str(trunc), "-o", str(tmp_path / "o.onnx"))
    assert r.code != 0 and "trunc.onnx" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "o.onnx").exists()


def test_external_data_outside_folder(run_cli, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save(messy_linear(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    onnx.save(proto, str(path))
    r = run_cli("compile", str(path), "-o", str(tmp_path / "o.onnx"))
    assert r.code != 0 and "escapes its folder" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "o.onnx").exists()


def test_verbose_shows_traceback(run_cli, tmp_path):
    import pytest

    from spikec.errors import SpikecError

    with pytest.raises(SpikecError):
        from spikec import cli

        cli.main(["-v", "inspect", str(tmp_path / "nope.onnx")])


def test_compile_and_inspect_commands(run_cli, tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(messy_linear(), str(src))
    generic = "fold-constants,eliminate-identity,eliminate-dead-nodes,topological-sort,shape-inference"
    r = run_cli("compile", str(src), "-o", str(tmp_path / "out.onnx"), "--passes", generic, "--dump-ir", str(tmp_path / "d"), "--report", str(tmp_path / "r.json"))
    assert r.code == 0, r.err
    assert "fold-constants" in r.out and (tmp_path / "r.json").exists() and (tmp_path / "d" / "report.json").exists()
    r = run_cli("inspect", str(tmp_path / "out.onnx"))
    assert r.code == 0 and "MatMul" in r.out and "parameters: 36" in r.out
    r = run_cli("compile", str(src), "-o", str(tmp_path / "out.onnx"), "--passes", "fold-constants,no-such-pass")
    assert r.code != 0 and "unknown pass 'no-such-pass'" in r.err


def test_budget_without_calib_refused_before_passes(run_cli, tmp_path, tiny_mlp):
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "m.sbin"), "--budget", "3")
    assert r.code == 1 and "--budget" in r.err and "--calib" in r.err
    assert "[1/" not in r.out + r.err and not (tmp_path / "m.sbin").exists()  # no pass ran


def test_single_graph_sbin_runs_tensors_and_refuses_generation(run_cli, tmp_path, tiny_mlp):
    """A .sbin compiled from one model.onnx holds one graph and no processor: --inputs runs
    it; generation (run, eval, the Python API) is one clear error, not a temporary path."""
    import numpy as np
    import pytest

    import spikec
    from spikec.errors import SpikecError

    sbin = tmp_path / "m.sbin"
    assert run_cli("-q", "compile", str(tiny_mlp), "-o", str(sbin)).code == 0
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 32), np.float32))
    r = run_cli("run", str(sbin), "--inputs", str(tmp_path / "in.npz"))
    assert r.code == 0 and "float32 [1, 3, 32]" in r.out, r.err
    # inputs that do not fit the graph: onnxruntime's refusal, with the file, graph and inputs named
    np.savez(tmp_path / "short.npz", x=np.zeros((1, 3, 31), np.float32))
    r = run_cli("run", str(sbin), "--inputs", str(tmp_path / "short.npz"))
    assert r.code == 1 and "Traceback" not in r.err and f"{sbin}: graph" in r.err, r.err
    assert f"cannot run on --inputs {tmp_path / 'short.npz'}" in r.err, r.err
    # a file that is not an .npz: said so (numpy's own message spoke of pickled data)
    (tmp_path / "bad.npz").write_text("garbage")
    r = run_cli("run", str(sbin), "--inputs", str(tmp_path / "bad.npz"))
    assert r.code == 1 and "not an .npz file" in r.err and "pickle" not in r.err, r.err
    for args in (("--prompt", "hi"), ("--image", str(tmp_path / "in.npz"), "--prompt", "hi")):
        r = run_cli("run", str(sbin), *args)
        assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert f"{sbin}: holds a single graph (model)" in r.err and "--inputs" in r.err and "spikec-sbin-" not in r.err
    with spikec.load(sbin) as model, pytest.raises(SpikecError, match="single graph"):
        model.generate(None, "hi")


def test_options_that_do_nothing_are_named(caplog):
    """Options given that have no effect with the others are warned about by name (not
    refused: a script may pass them for every run of a sweep)."""
    from spikec.passes.options import SpikeOptions

    cases = {
        "--gptq-act-order": dict(gptq_act_order=True),
        "--no-online-hadamard": dict(online_hadamard=False),
        "--calib-method": dict(calib_method="mse"),
        "--calib-samples": dict(calib_samples=2),
        "--percentile": dict(percentile=50.0),
        "--no-per-layer": dict(per_layer=False),
    }
    for flag, kw in cases.items():
        assert any(flag in m for m in SpikeOptions(**kw).ignored()), flag
    assert SpikeOptions().ignored() == []
    assert SpikeOptions(calib="c", calib_method="percentile", percentile=50.0, budget=3.0, per_layer=False).ignored() == []


def test_wrong_kind_of_input_and_empty_pass_list(run_cli, tmp_path, tiny_mlp):
    sbin = tmp_path / "m.sbin"
    assert run_cli("-q", "compile", str(tiny_mlp), "-o", str(sbin)).code == 0
    r = run_cli("compile", str(sbin), "-o", str(tmp_path / "x.sbin"))
    assert r.code == 1 and "is a compiled .sbin, not a model to compile" in r.err, r.err
    (tmp_path / "junk.bin").write_bytes(b"\x00\x01garbage" * 10)
    r = run_cli("inspect", str(tmp_path / "junk.bin"))
    assert r.code == 1 and "not a valid ONNX model" in r.err and "nor a .sbin" in r.err, r.err
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "y.onnx"), "--passes", " , ")
    assert r.code == 1 and "--passes: the list is empty" in r.err, r.err
    assert not (tmp_path / "x.sbin").exists() and not (tmp_path / "y.onnx").exists()


def _closed_stdout(monkeypatch):
    """Make every print to stdout fail as a pipe closed by its reader does (`| head`)."""
    import errno

    import click

    real = click.echo

    def echo(message=None, file=None, nl=True, err=False, color=None):
        if not err:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        return real(message, file=file, nl=nl, err=err, color=color)

    monkeypatch.setattr(click, "echo", echo)


def test_files_are_written_before_a_closed_stdout_ends_the_command(run_cli, tmp_path, tiny_mlp, monkeypatch):
    """`spikec run ... -o out.npz --stats-json s.json | head`: the files the user asked for
    are the product; the first print to a closed pipe ends the command (click exits 1), so
    they are written before anything is printed (eval --json lost its file this way)."""
    import json as _json

    import numpy as np

    import spikec.evaluate
    from spikec.evaluate import EvalResult

    sbin = tmp_path / "m.sbin"
    assert run_cli("-q", "compile", str(tiny_mlp), "-o", str(sbin)).code == 0
    np.savez(tmp_path / "in.npz", x=np.zeros((1, 3, 32), np.float32))
    _closed_stdout(monkeypatch)
    r = run_cli("run", str(sbin), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    assert r.code == 1 and (tmp_path / "out.npz").is_file(), r.err
    fixed = EvalResult(model="m", data="d", total=1, correct=1, by_type={"t": [1, 1]}, predictions=["x"],
                       metric_sums={"t": {"exact_match": 1.0, "anls": 1.0, "vqa_accuracy": 1.0}})
    monkeypatch.setattr(spikec.evaluate, "evaluate", lambda *a, **k: fixed)
    r = run_cli("eval", str(tmp_path), "--data", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert r.code == 1 and _json.loads((tmp_path / "r.json").read_text())["predictions"] == ["x"], r.err
