"""More files made by others: each kind of bad input ends in one SpikecError naming the file.

- a corrupt .npz (--inputs, --calib): zipfile's and zlib's exceptions become SpikecErrors,
  when the archive is opened and when a member is read;
- a manifest that disagrees with its own `family` (position ids, the graphs' declared
  inputs) is refused when it is read, naming manifest.json and the field;
- errors about a .sbin's manifest or processor files name the .sbin, not the temporary
  folder they were extracted to;
- the .sbin header's reserved bytes must be zero (header_crc32 does not cover them);
- a key given twice in one JSON object (manifest.json, data.jsonl, a hardware
  configuration, a checkpoint's config.json) is refused, naming the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikec.errors import SpikecError
from spikec.isa.container import SbinFile, SectionKind, write_sbin
from spikec.package import SbinModel
from spikec.schema import open_npz, parse_json


def _tiny_graph() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          [numpy_helper.from_array(np.ones((4, 4), np.float32), "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _sbin(tmp_path: Path, manifest: dict, files: dict[str, bytes] | None = None, name: str = "m.sbin") -> Path:
    manifest = {"graphs": {"model": {"file": "graph/model"}}, **manifest}
    sections = [("manifest", SectionKind.MANIFEST, json.dumps(manifest).encode()),
                ("graph/model", SectionKind.ONNX, _tiny_graph().SerializeToString())]
    sections += [(n, SectionKind.FILE, data) for n, data in (files or {}).items()]
    return write_sbin(tmp_path / name, sections)


# ---------------------------------------------------------------- 1. corrupt .npz


def _corrupt_member(tmp_path: Path) -> Path:
    """A zip archive whose member's bytes were changed: opens, but its CRC fails on read."""
    good = tmp_path / "good.npz"
    np.savez(good, x=np.arange(64, dtype=np.float32).reshape(16, 4))
    data = bytearray(good.read_bytes())
    data[data.index(b"\x93NUMPY") + 200] ^= 0xFF
    bad = tmp_path / "n_crc.npz"
    bad.write_bytes(bytes(data))
    return bad


def test_open_npz_turns_a_corrupt_archive_into_one_error(tmp_path):
    bad = tmp_path / "n_bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(SpikecError, match=r"--inputs .*n_bad\.npz: not a readable \.npz"):
        open_npz(bad, where=f"--inputs {bad}")
    with open_npz(_corrupt_member(tmp_path), where="--inputs n_crc.npz") as data:
        assert data.files == ["x"] and "x" in data
        with pytest.raises(SpikecError, match=r"--inputs n_crc\.npz: array 'x' cannot be read"):
            data["x"]


def test_calibration_npz_that_is_corrupt_names_the_file(tmp_path):
    from spikec.calibration import load_npz

    bad = tmp_path / "n_bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(SpikecError, match=r"--calib .*n_bad\.npz: not a readable"):
        load_npz(bad, ["x"])
    with pytest.raises(SpikecError, match=r"--calib .*n_crc\.npz: array 'x' cannot be read"):
        load_npz(_corrupt_member(tmp_path), ["x"])


@pytest.mark.parametrize("content", [b"PK\x03\x04garbage", None])
def test_run_inputs_that_are_corrupt_end_in_one_line(run_cli, tmp_path, content):
    model = _sbin(tmp_path, {})
    if content is None:
        bad = _corrupt_member(tmp_path)
    else:
        bad = tmp_path / "n_bad.npz"
        bad.write_bytes(content)
    r = run_cli("run", str(model), "--inputs", str(bad), "-o", str(tmp_path / "o.npz"))
    assert r.code != 0 and f"--inputs {bad}" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "o.npz").exists()


# ---------------------------------------------------------------- 2. a manifest that disagrees with its family


def _frontend_manifest(family: str = "llava", mrope: bool = False, layers: int = 1) -> dict:
    """A manifest as `spikec export` writes it for `family` (graph files not needed)."""
    from spikec.frontend import manifest as mf

    rank3 = [3, "batch", "seq"] if mrope else ["batch", "seq"]
    lm_inputs = [{"name": "inputs_embeds", "dtype": "float32", "shape": ["batch", "seq", 8]},
                 {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total"]},
                 {"name": "position_ids", "dtype": "int64", "shape": rank3},
                 {"name": "modality", "dtype": "int64", "shape": ["batch", "seq"]}]
    lm_inputs += [{"name": n, "dtype": "float32", "shape": ["batch", 1, "past", 4]} for n in mf.past_names(layers)]
    return {
        "format": "spikec-frontend", "version": 1, "family": family,
        "position_ids": {"kind": "mrope" if mrope else "1d", "shape": rank3},
        "lm": {"num_layers": layers, "num_kv_heads": 1, "head_dim": 4, "hidden_size": 8, "vocab_size": 49},
        "graphs": {
            "vision": {"file": "vision.onnx", "role": "vision",
                       "inputs": [{"name": n, "dtype": "float32", "shape": ["n"]} for n in mf.VISION_INPUTS[family]]},
            "embed": {"file": "embed.onnx", "role": "embed",
                      "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]},
            "lm": {"file": "lm.onnx", "role": "lm", "inputs": lm_inputs},
        },
    }


@pytest.mark.parametrize("family", ["llava", "internvl", "idefics3", "qwen2_vl", "qwen2_5_vl"])
def test_consistent_manifests_of_every_family_pass(family):
    from spikec.frontend import manifest as mf

    m = _frontend_manifest(family, mrope=family in mf.MROPE_FAMILIES, layers=2)
    assert mf.check_manifest(m, where="manifest.json", sbin=True) is m


def _edit(m: dict, change: str) -> dict:
    if change == "family":
        m["family"] = "qwen2_vl"  # the tester's case: a llava export relabelled
    elif change == "kind":
        m["position_ids"]["kind"] = "mrope"
    elif change == "shape":
        m["position_ids"]["shape"] = [3, "batch", "seq"]
    elif change == "vision":
        m["graphs"]["vision"]["inputs"] = []
    elif change == "embed":
        m["graphs"]["embed"]["inputs"][0]["name"] = "ids"
    elif change == "lm":
        m["graphs"]["lm"]["inputs"][2]["shape"] = [3, "batch", "seq"]
    elif change == "layers":
        m["lm"]["num_layers"] = 3
    return m


@pytest.mark.parametrize("change, message", [
    ("family", r"field 'position_ids\.kind' = '1d' does not match field 'family' = 'qwen2_vl'"),
    ("kind", r"field 'position_ids\.kind' = 'mrope' does not match field 'family' = 'llava'"),
    ("shape", r"field 'position_ids\.shape' has rank 3; family 'llava'"),
    ("vision", r"field 'graphs\.vision\.inputs' lacks 'pixel_values'"),
    ("embed", r"field 'graphs\.embed\.inputs' lacks 'input_ids'"),
    ("lm", r"field 'graphs\.lm\.inputs' declares 'position_ids' of rank 3; family 'llava' feeds rank 2"),
    ("layers", r"field 'lm\.num_layers' = 3 implies KV-cache inputs .*past_key_values\.1\.key"),
])
def test_a_manifest_that_disagrees_with_its_family_is_refused(tmp_path, change, message):
    from spikec.frontend import manifest as mf

    with pytest.raises(SpikecError, match=r"^manifest\.json: " + message):
        mf.check_manifest(_edit(_frontend_manifest(), change), where="manifest.json", sbin=True)
    # the same through a .sbin: refused when it is opened, naming the file and section
    path = _sbin(tmp_path, _edit(_frontend_manifest(), change))
    with pytest.raises(SpikecError, match=r"m\.sbin: section 'manifest': " + message):
        SbinModel(path)


def test_a_relabelled_export_is_refused_by_compile(run_cli, tmp_path):
    """The tester's case on an export folder: family qwen2_vl on llava graphs."""
    folder = tmp_path / "exp"
    folder.mkdir()
    m = _edit(_frontend_manifest(), "family")
    m["processor"] = None
    for entry in m["graphs"].values():
        onnx.save(_tiny_graph(), str(folder / entry["file"]))
    (folder / "manifest.json").write_text(json.dumps(m))
    r = run_cli("compile", str(folder), "-o", str(tmp_path / "x.sbin"))
    assert r.code != 0 and "Traceback" not in r.err, r.err
    assert f"{folder / 'manifest.json'}: field 'position_ids.kind'" in r.err, r.err
    assert not (tmp_path / "x.sbin").exists()


def test_the_family_table_agrees_with_the_adapters():
    """frontend.manifest keeps, without torch, what each adapter feeds: the two must agree."""
    from spikec.frontend import manifest as mf
    from spikec.frontend.adapters import ADAPTERS

    assert sorted(mf.VISION_INPUTS) == sorted(a.family for a in ADAPTERS)
    for a in ADAPTERS:
        assert (a.family in mf.MROPE_FAMILIES) == a.mrope, a.family
        # the vision graph's inputs are exactly the ones export gives dynamic shapes
        assert set(a.vision_dynamic_shapes({})) == set(mf.VISION_INPUTS[a.family]), a.family


# ---------------------------------------------------------------- 3. .sbin errors name the .sbin


def _generating_manifest(**fields) -> dict:
    m = {"format": "spikec-frontend", "version": 1, "family": "llava", "processor": "processor",
         "modality": {"text": 0, "vision": 1}, "merge": {"image_token_id": 5},
         "lm": {"num_layers": 1, "num_kv_heads": 1, "head_dim": 4, "vocab_size": 49}}
    m.update(fields)
    return m


@pytest.mark.parametrize("fields, files, message", [
    ({"merge": {"image_token_id": 999}}, {"files/config.json": b"{}"},
     r"m\.sbin: manifest\.json: field 'merge\.image_token_id' = 999 is outside the vocabulary"),
    ({}, {"files/config.json": b"{}"}, r"m\.sbin \(files/\): cannot load the processor"),
])
def test_sbin_manifest_and_processor_errors_name_the_sbin(tmp_path, fields, files, message):
    import spikec

    path = _sbin(tmp_path, _generating_manifest(**fields), files)
    with spikec.load(path) as model:
        with pytest.raises(SpikecError, match=message) as info:
            model.generate(None, "hi")
    assert str(path) in str(info.value)
    assert "spikec-sbin-" not in str(info.value), info.value


def test_public_name_maps_every_extracted_path_to_its_section(tmp_path):
    path = _sbin(tmp_path, {"processor": "processor"}, {"files/config.json": b"{}", "files/sub/tok.json": b"[]"})
    with SbinModel(path) as m:
        root = m.folder()
        text = (f"{root / 'manifest.json'}: field 'x'; {root / 'processor' / 'sub' / 'tok.json'}: bad; "
                f"{root / 'processor'}: cannot load")
        assert m.public_name(text) == (f"{path}: manifest.json: field 'x'; {path} (files/sub/tok.json): bad; "
                                       f"{path} (files/): cannot load")
        with pytest.raises(SpikecError, match="^" + str(path)):
            with m.naming_files():
                raise SpikecError(f"{root / 'manifest.json'}: field 'y' is wrong")


# ---------------------------------------------------------------- 4. the header's reserved bytes


@pytest.mark.parametrize("offset", [52, 57, 63])
def test_sbin_header_reserved_bytes_must_be_zero(tmp_path, offset):
    path = _sbin(tmp_path, {})
    SbinFile(path).close()  # as written: accepted
    data = bytearray(path.read_bytes())
    data[offset] = 0xAA
    path.write_bytes(bytes(data))  # header_crc32 does not cover these bytes: still matches
    with pytest.raises(SpikecError, match=rf"^{path}: header field 'reserved' \(bytes 52-63\) must be zero"):
        SbinFile(path)


def test_sbin_docs_say_what_the_header_crc_covers_and_that_padding_is_ignored():
    text = (Path(__file__).resolve().parents[1] / "docs" / "sbin.md").read_text()
    assert "it covers bytes 0-47 only" in text and "readers ignore the padding" in text


# ---------------------------------------------------------------- 5. duplicate JSON keys


@pytest.mark.parametrize("text, key", [
    ('{"a": 1, "a": 2}', "'a'"),
    ('{"lm": {"num_layers": 2, "num_layers": 3}}', "'num_layers'"),
    ('[{"x": 1}, {"y": 1, "y": 1}]', "'y'"),
])
def test_parse_json_refuses_a_key_given_twice(text, key):
    with pytest.raises(SpikecError, match=rf"^f\.json: key {key} appears twice in one object"):
        parse_json(text, where="f.json")
    assert parse_json('{"a": 1, "b": {"a": 2}}', where="f.json") == {"a": 1, "b": {"a": 2}}  # other objects: fine


def test_manifest_with_a_key_given_twice_is_refused(tmp_path):
    from spikec.frontend import manifest as mf

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"graphs": {"lm": {"file": "lm.onnx"}}, "family": "llava", '
                                          '"family": "qwen2_vl"}')
    with pytest.raises(SpikecError, match=r"manifest\.json: key 'family' appears twice"):
        mf.load_json(folder)


def test_data_jsonl_row_with_a_key_given_twice_is_refused(tmp_path):
    from spikec.calibration import image_prompt_pairs

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "data.jsonl").write_text('{"image": "a.png", "prompt": "x", "prompt": "y"}\n')
    with pytest.raises(SpikecError, match=r"data\.jsonl: line 1: key 'prompt' appears twice"):
        image_prompt_pairs(tmp_path)


def test_hwconfig_and_config_json_with_a_key_given_twice_are_refused(run_cli, tmp_path):
    from spikec.isa.hwconfig import HwConfig

    with pytest.raises(SpikecError, match=r"hw\.json: key 'a' appears twice"):
        HwConfig.from_json('{"a": 1, "a": 2}', "hw.json")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llava", "model_type": "qwen2_vl"}')
    r = run_cli("export", str(ckpt), "-o", str(tmp_path / "out"))
    assert r.code != 0 and "Traceback" not in r.err, r.err
    assert f"{ckpt / 'config.json'}: key 'model_type' appears twice" in r.err, r.err


def test_pack_refuses_a_processor_json_with_a_key_given_twice(tmp_path):
    """Refused when compiling, as opening the .sbin would refuse it, not at the first run."""
    from spikec.package import pack_folder

    folder = tmp_path / "exp"
    (folder / "processor").mkdir(parents=True)
    onnx.save(_tiny_graph(), str(folder / "lm.onnx"))
    (folder / "processor" / "tokenizer.json").write_text('{"model": {}, "model": {}}')
    (folder / "manifest.json").write_text(json.dumps({"processor": "processor",
                                                      "graphs": {"lm": {"file": "lm.onnx", "role": "lm"}}}))
    with pytest.raises(SpikecError, match=r"tokenizer\.json: key 'model' appears twice"):
        pack_folder(folder, tmp_path / "x.sbin")
    assert not (tmp_path / "x.sbin").exists()


def test_checkpoint_index_with_a_key_twice_is_refused(run_cli, tmp_path):
    """The shard index goes through schema.parse_json like every other JSON spikec reads:
    two entries for one tensor (which shard would transformers take?) are refused."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "a.safetensors").write_bytes(b"x")
    (ckpt / "config.json").write_text('{"model_type": "llava", "text_config": {}, "vision_config": {}}')
    (ckpt / "model.safetensors.index.json").write_text(
        '{"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}}')
    r = run_cli("export", str(ckpt), "-o", str(tmp_path / "out"))
    assert r.code == 1 and "model.safetensors.index.json" in r.err and "appears twice" in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_calibration_rows_take_string_prompts_as_eval_does(tmp_path):
    import json

    from spikec.calibration import image_prompt_pairs
    from spikec.errors import SpikecError

    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "a.png", "prompt": 5}) + "\n")
    with pytest.raises(SpikecError, match="line 1: field 'prompt' must be a string"):
        image_prompt_pairs(tmp_path)


def test_a_huge_number_is_named_without_pythons_advice():
    from spikec.errors import SpikecError
    from spikec.schema import parse_json

    with pytest.raises(SpikecError, match="m.json: not valid JSON") as info:
        parse_json('{"a": ' + "9" * 5000 + "}", where="m.json")
    assert "digits" in str(info.value) and "set_int_max_str_digits" not in str(info.value)


@pytest.mark.parametrize("t, ok", [(16, True), (17, False), (64, False), (0, False)])
def test_manifest_timesteps_are_those_the_compiler_accepts(t, ok):
    """A manifest's timesteps are bounded by what `spikec compile` accepts (reference.MAX_T),
    not by a looser reader bound: a T the compiler could not have written is refused."""
    from spikec.frontend import manifest as mf
    from spikec.reference import MAX_T

    assert mf.MAX_TIMESTEPS == MAX_T
    m = _frontend_manifest()
    m["timesteps"] = {"lm": {"vision": 3, "text": t}}
    if ok:
        mf.check_manifest(m, where="manifest.json", sbin=True)
    else:
        with pytest.raises(SpikecError, match=r"field 'timesteps\.lm\.text' must be in 1\.\.16"):
            mf.check_manifest(m, where="manifest.json", sbin=True)


def test_generation_length_range_is_one_for_every_command(run_cli):
    """run, eval and report take the same --max-new-tokens range, the manifest's bound."""
    from spikec.commands import MAX_NEW_TOKENS
    from spikec.frontend import manifest as mf

    assert MAX_NEW_TOKENS == mf.MAX_NEW_TOKENS
    for command in ("run", "eval", "report"):
        r = run_cli(command, "--max-new-tokens", str(MAX_NEW_TOKENS + 1), "x.sbin")
        assert r.code == 2 and f"1<=x<={MAX_NEW_TOKENS}" in r.err, (command, r.err)
