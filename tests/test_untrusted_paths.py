"""File-system escapes: every path read from a file stays inside its folder.

Variants of each kind (absolute, `..`, nested `..`, symlinks out, NUL bytes, long names,
Windows forms) through every reader: spikec.paths itself, export-folder manifests
(compile, pack, generate), .sbin manifests and FILE sections (processor extraction),
.sbin graphs with external data, data.jsonl images (eval, calibration) and a sharded
checkpoint's index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikec.errors import SpikecError
from spikec.isa.container import SectionKind, write_sbin
from spikec.package import SbinModel
from spikec.paths import check_name, check_relative, files_inside, resolve_inside

ESCAPES = [
    ("/etc/passwd", "absolute"),
    ("../x", "escapes"),
    ("a/../../x", "escapes"),
    ("a/b/../../../x", "escapes"),
    ("..", "escapes"),
    ("x\x00y", "NUL"),
    ("..\\x", "Windows"),
    ("C:/x", "Windows"),
    ("a/" + "n" * 300, "over 255"),
    ("a/" * 2100, "over 4096"),
    ("", "non-empty"),
    (".", "folder itself"),
]


@pytest.mark.parametrize("value, message", ESCAPES)
def test_resolve_inside_refuses_every_escape(tmp_path, value, message):
    with pytest.raises(SpikecError, match=message) as info:
        resolve_inside(tmp_path, value, where="file.json: field 'x'")
    assert str(info.value).startswith("file.json: field 'x'")


@pytest.mark.parametrize("value", [None, 3, ["a"], {"a": 1}])
def test_non_string_paths_are_refused(tmp_path, value):
    with pytest.raises(SpikecError, match="non-empty relative path string"):
        resolve_inside(tmp_path, value, where="f")


def test_symlinks_out_are_refused_and_in_are_kept(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "inner").write_text("i")
    (root / "out_file").symlink_to(outside / "secret")
    (root / "out_dir").symlink_to(outside)
    (root / "in_link").symlink_to(root / "inner")
    for value in ("out_file", "out_dir/secret", "out_dir"):
        with pytest.raises(SpikecError, match="symlink"):
            resolve_inside(root, value, where="f")
    assert resolve_inside(root, "in_link", where="f") == (root / "inner").resolve()
    assert resolve_inside(root, "sub/new.onnx", where="f") == root.resolve() / "sub" / "new.onnx"
    with pytest.raises(SpikecError, match="(out_file|out_dir).*symlink"):
        files_inside(root, where="f")


def test_names_are_single_components():
    assert check_name("lm", where="f") == "lm"
    for bad in ("a/b", "./a", "..", "../x", "a\x00"):
        with pytest.raises(SpikecError):
            check_name(bad, where="f")
    assert str(check_relative("a/./b", where="f")) == "a/b"


# ---------------------------------------------------------------- export-folder manifests


def _tiny_graph(path: Path) -> None:
    w = np.ones((4, 4), np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _export_folder(tmp_path: Path, **fields) -> Path:
    folder = tmp_path / "exp"
    folder.mkdir()
    _tiny_graph(folder / "lm.onnx")
    (folder / "processor").mkdir()
    (folder / "processor" / "config.json").write_text("{}")
    manifest = {"format": "spikec-frontend", "version": 1, "family": "llava", "processor": "processor",
                "graphs": {"lm": {"file": "lm.onnx", "role": "lm"}}}
    for key, value in fields.items():
        if key == "file":
            manifest["graphs"]["lm"]["file"] = value
        elif key == "role":
            manifest["graphs"] = {value: manifest["graphs"]["lm"]}
        else:
            manifest[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir(exist_ok=True)
    _tiny_graph(out / "victim.onnx")
    (out / "credentials.txt").write_text("private")
    return out


def _snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("field, value_of, message", [
    ("file", lambda out: str(out / "victim.onnx"), "graphs.lm.file.*absolute"),
    ("file", lambda out: "../outside/victim.onnx", "graphs.lm.file.*escapes"),
    ("file", lambda out: "sub/../../outside/victim.onnx", "graphs.lm.file.*escapes"),
    ("role", lambda out: "../outside/x", "graph role"),
    ("role", lambda out: "a/b", "graph role"),
    ("processor", lambda out: "../outside", "'processor'.*escapes"),
    ("processor", lambda out: str(out), "'processor'.*absolute"),
    ("processor", lambda out: ["processor"], "'processor'"),
])
@pytest.mark.parametrize("output", ["out", "m.sbin"])
def test_compile_refuses_manifest_paths_out_of_the_folder(run_cli, tmp_path, field, value_of, message, output):
    outside = _outside(tmp_path)
    folder = _export_folder(tmp_path, **{field: value_of(outside)})
    before = _snapshot(outside)
    r = run_cli("compile", str(folder), "-o", str(tmp_path / output))
    assert r.code != 0 and "Traceback" not in r.err
    assert "manifest.json" in r.err
    assert any(part in r.err for part in message.split(".*")), r.err
    assert _snapshot(outside) == before
    assert not (tmp_path / output).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "outside"]  # nothing left behind


@pytest.mark.parametrize("what", ["graph", "processor", "processor_file"])
def test_symlinks_in_an_export_folder_do_not_lead_out(run_cli, tmp_path, what):
    outside = _outside(tmp_path)
    folder = _export_folder(tmp_path)
    if what == "graph":
        (folder / "lm.onnx").unlink()
        (folder / "lm.onnx").symlink_to(outside / "victim.onnx")
    elif what == "processor":
        import shutil

        shutil.rmtree(folder / "processor")
        (folder / "processor").symlink_to(outside)
    else:
        (folder / "processor" / "tokenizer.json").symlink_to(outside / "credentials.txt")
    before = _snapshot(outside)
    r = run_cli("compile", str(folder), "-o", str(tmp_path / "m.sbin"))
    assert r.code != 0 and "symlink" in r.err and "Traceback" not in r.err, r.err
    assert _snapshot(outside) == before and not (tmp_path / "m.sbin").exists()


@pytest.mark.parametrize("link", ["vision.onnx", "vision.onnx.data"])
@pytest.mark.parametrize("calib", [False, True])
def test_symlinks_out_are_refused_before_any_work(run_cli, tmp_path, link, calib):
    """A graph file or its external data leading out of an export folder (a symlink) is
    refused when the folder is read: before calibration and before any graph compiles
    (the language model compiles first, the vision graph after it), and before
    onnxruntime opens it (whose own refusal was a traceback)."""
    import shutil

    from spike_graphs import calib_folder, exported

    folder = tmp_path / "exp"
    shutil.copytree(exported("tiny-llava"), folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(folder / link, outside / link)
    (folder / link).symlink_to(outside / link)
    extra = ("--calib", str(calib_folder()), "--calib-samples", "1") if calib else ()
    r = run_cli("compile", str(folder), "-o", str(tmp_path / "m.sbin"), *extra)
    assert r.code == 1 and "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert f"'{link}' escapes its folder" in r.err and "symlink" in r.err, r.err
    assert "[1/" not in r.out + r.err and "calibration" not in r.out + r.err  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "outside"]


def test_pack_and_generate_use_the_same_checks(tmp_path):
    from spikec.frontend.generate import create_sessions
    from spikec.package import pack_folder

    outside = _outside(tmp_path)
    folder = _export_folder(tmp_path, file="../outside/victim.onnx")
    with pytest.raises(SpikecError, match="escapes"):
        pack_folder(folder, tmp_path / "x.sbin")
    with pytest.raises(SpikecError, match="escapes"):
        create_sessions(folder)
    assert not (tmp_path / "x.sbin").exists() and (outside / "victim.onnx").is_file()


# ---------------------------------------------------------------- .sbin files


def _sbin(tmp_path: Path, manifest: dict, files: dict[str, bytes], graph: onnx.ModelProto | None = None,
          name: str = "m.sbin") -> Path:
    if graph is None:
        _tiny_graph(tmp_path / "g.onnx")
        graph = onnx.load(str(tmp_path / "g.onnx"))
    manifest = {"graphs": {"model": {"file": "graph/model"}}, **manifest}
    sections = [("manifest", SectionKind.MANIFEST, json.dumps(manifest).encode()),
                ("graph/model", SectionKind.ONNX, graph.SerializeToString())]
    sections += [(n, SectionKind.FILE, data) for n, data in files.items()]
    return write_sbin(tmp_path / name, sections)


@pytest.mark.parametrize("processor", ["/ABS", "../escape", "../../etc", "a/../../b", None, 7])
def test_sbin_processor_field_never_chooses_where_files_go(tmp_path, processor):
    target = tmp_path / "target"
    target.mkdir()
    if processor == "/ABS":
        processor = str(target)
    path = _sbin(tmp_path, {"processor": processor}, {"files/config.json": b"{}", "files/sub/tok.json": b"[]"})
    before = sorted(tmp_path.rglob("*"))
    with SbinModel(path) as m:
        root = m.folder()
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
            "manifest.json", "processor", "processor/config.json", "processor/sub", "processor/sub/tok.json"]
        assert json.loads((root / "manifest.json").read_text())["processor"] == "processor"
        assert not root.is_relative_to(tmp_path)
        assert oct(root.stat().st_mode & 0o777) == "0o700"  # private
    assert not root.exists()  # removed on close
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("name, message", [
    ("files/../../evil", "escapes"),
    ("files//abs/evil", "absolute"),
    ("files/a/../../evil", "escapes"),
    ("files/a\\..\\evil", "Windows"),
    ("other/evil", "not under"),
    ("files/" + "x" * 300, "over 255"),
])
def test_sbin_file_sections_stay_in_the_private_folder(tmp_path, name, message):
    path = _sbin(tmp_path, {"processor": "processor"}, {name: b"evil"})
    with SbinModel(path) as m:
        with pytest.raises(SpikecError, match=message) as info:
            m.folder()
    assert str(path) in str(info.value)
    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_sbin_file_sections_that_collide_are_refused(tmp_path):
    path = _sbin(tmp_path, {}, {"files/a": b"1", "files/a/b": b"2"})
    with SbinModel(path) as m, pytest.raises(SpikecError, match="collides"):
        m.folder()


@pytest.mark.parametrize("location", ["ABS", "../secret.bin", "secret.bin", "sub/../secret.bin", "x\x00y"])
@pytest.mark.parametrize("where", ["initializer", "attribute"])
def test_sbin_graphs_with_external_data_are_refused(run_cli, tmp_path, monkeypatch, location, where):
    secret = np.arange(16, dtype=np.float32)
    (tmp_path / "secret.bin").write_bytes(secret.tobytes())
    monkeypatch.chdir(tmp_path)  # a relative location would resolve against the current directory
    if location == "ABS":
        location = str(tmp_path / "secret.bin")
    ext = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    for k, v in {"location": location, "offset": "0", "length": "64"}.items():
        e = ext.external_data.add()
        e.key, e.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    if where == "initializer":
        nodes, inits = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [ext]
    else:
        nodes = [helper.make_node("Constant", [], ["W"], value=ext, name="c"),
                 helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
        inits = []
    graph = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = _sbin(tmp_path, {}, {}, graph)
    np.savez(tmp_path / "x.npz", x=np.ones((1, 4), np.float32))
    for args in (["inspect", str(path)], ["run", str(path), "--inputs", str(tmp_path / "x.npz"), "-o",
                                          str(tmp_path / "y.npz")]):
        r = run_cli(*args)
        assert r.code != 0 and "external data" in r.err and "'W'" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "y.npz").exists()


# ---------------------------------------------------------------- data folders and checkpoints


@pytest.mark.parametrize("image", ["/etc/hostname", "../outside/img.png", "a/../../outside/img.png"])
def test_data_jsonl_images_stay_inside(tmp_path, image):
    from spikec.calibration import image_prompt_pairs
    from spikec.datasets import load_eval_folder
    from spikec.evaluate import load_items

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "img.png").write_bytes(b"x")
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.jsonl").write_text(json.dumps({"image": image, "prompt": "p", "answer": "a"}) + "\n")
    for read in (image_prompt_pairs, load_items, load_eval_folder):
        with pytest.raises(SpikecError, match="field 'image'"):
            read(data)


@pytest.mark.parametrize("shard", ["/etc/hostname", "../outside.safetensors", "a/../../outside.safetensors"])
def test_checkpoint_shard_index_stays_inside(run_cli, tmp_path, shard):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (ckpt / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {}, "vision_config": {}}))
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    r = run_cli("export", str(ckpt), "-o", str(tmp_path / "out"))
    assert r.code != 0 and "weight_map shard" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_every_manifest_reader_goes_through_one_function():
    """No module joins a manifest's `file` or `processor` to a folder by hand."""
    root = Path(__file__).resolve().parents[1]
    offenders = []
    for sub in ("spikec", "passes", "runtime", "isa"):
        for py in (root / sub).rglob("*.py"):
            text = py.read_text()
            for pattern in ('/ g["file"]', '/ entry["file"]', '/ manifest["processor"]',
                            '/ self.manifest["processor"]', "manifest.json\").read_text"):
                if pattern in text:
                    offenders.append(f"{py.relative_to(root)}: {pattern}")
    assert offenders == []
