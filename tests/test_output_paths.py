"""Every command's output paths are checked before any work: none may replace an input
(the model, an --inputs file, an image, a file of a data or image folder) or lie where
nothing can be written; the refusal is one line naming the option, and the inputs stay."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isa_graphs import compiled_isa


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A copy of the tiny LLaVA compiled with --isa (run, disasm, report, eval all take it)."""
    import shutil

    d = tmp_path_factory.mktemp("outputs")
    shutil.copy(compiled_isa(3, 4), d / "m.sbin")
    return d / "m.sbin"


def _data_folder(root):
    from spikec.frontend.export import sample_image

    (root / "images").mkdir(parents=True)
    sample_image(32, 32).save(root / "images" / "a.png")
    (root / "data.jsonl").write_text(json.dumps({"image": "images/a.png", "prompt": "what is it?",
                                                 "answer": "x", "type": "t"}) + "\n")
    return root


def _refused(r, option, *unchanged):
    before = [p.read_bytes() for p in unchanged]
    assert r.code == 1 and r.err.startswith(f"error: {option} ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    return before


def test_outputs_never_replace_inputs(run_cli, model, tmp_path):
    data = _data_folder(tmp_path / "data")
    image = data / "images" / "a.png"
    np.savez(tmp_path / "in.npz", input_ids=np.zeros((1, 3), np.int64))
    kept = {p: p.read_bytes() for p in (model, image, data / "data.jsonl", tmp_path / "in.npz")}
    cases = [
        (["run", str(model), "--inputs", str(tmp_path / "in.npz"), "--graph", "embed", "-o", str(model)], "-o"),
        (["run", str(model), "--inputs", str(tmp_path / "in.npz"), "--graph", "embed", "-o", str(tmp_path / "in.npz")],
         "-o"),
        (["run", str(model), "--image", str(image), "--prompt", "hi", "--stats-json", str(model)], "--stats-json"),
        (["run", str(model), "--image", str(image), "--prompt", "hi", "--stats-json", str(image)], "--stats-json"),
        (["disasm", str(model), "-o", str(model)], "-o"),
        (["report", str(model), "-o", str(model)], "-o"),
        (["report", str(model), "--images", str(data / "images"), "-o", str(image)], "-o"),
        (["eval", str(model), "--data", str(data), "--limit", "1", "--json", str(model)], "--json"),
        (["eval", str(model), "--data", str(data), "--limit", "1", "--json", str(data / "data.jsonl")], "--json"),
    ]
    for args, option in cases:
        r = run_cli(*args)
        assert r.code == 1 and r.err.startswith(f"error: {option} "), (args, r.err)
        assert r.err.count("\n") == 1 and "replace" in r.err, (args, r.err)
        for p, b in kept.items():
            assert p.read_bytes() == b, (args, p)
    # a new file beside the inputs is fine
    r = run_cli("eval", str(model), "--data", str(data), "--limit", "1", "--json", str(data / "result.json"))
    assert r.code == 0 and json.loads((data / "result.json").read_text())["total"] == 1, r.err


@pytest.mark.parametrize("where", ["/proc", "/sys"])
def test_unwritable_output_folders_are_refused_before_work(run_cli, model, tmp_path, where):
    """/proc and /sys stand for a read-only folder (the tests may run as root, for whom
    chmod does not stop a write)."""
    for args, option in [
        (["disasm", str(model), "-o", f"{where}/d.s"], "-o"),
        (["report", str(model), "-o", f"{where}/r.html"], "-o"),
        (["compile", "tiny-nothing", "-o", f"{where}/x.sbin"], "-o"),
    ]:
        r = run_cli(*args)
        assert r.code != 0 and "Traceback" not in r.err and r.err.count("\n") == 1, (args, r.err)
    data = _data_folder(tmp_path / "data")
    r = run_cli("eval", str(model), "--data", str(data), "--json", f"{where}/e.json")
    assert r.code == 1 and r.err.startswith("error: --json ") and "cannot write" in r.err, r.err
    assert "exact match" not in r.out  # refused before the evaluation ran


def test_a_file_output_ending_in_a_separator_is_refused(run_cli, model, tmp_path):
    """`-o out.sbin/` names a folder: refused, on the command line (where click's Path would
    drop the slash) as in the API; compile's -o may still name a folder without a file suffix."""
    from spikec import atomic
    from spikec.errors import SpikecError

    with pytest.raises(SpikecError, match="path separator"):
        atomic.check_output(str(tmp_path / "m.sbin") + "/", is_dir=False)
    for args in (["disasm", str(model), "-o", f"{tmp_path}/d.s/"],
                 ["report", str(model), "-o", f"{tmp_path}/r.html/"],
                 ["compile", "tiny-llava", "-o", f"{tmp_path}/m.sbin/"],
                 ["compile", "tiny-llava", "-o", str(model), "--report", f"{tmp_path}/r.json/"]):
        r = run_cli(*args)
        assert r.code == 2 and "ends in a path separator" in r.err, (args, r.err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    from spikec.commands import OutputFile

    assert OutputFile(file_suffixes=(".sbin",)).convert("folder/", None, None).name == "folder"
