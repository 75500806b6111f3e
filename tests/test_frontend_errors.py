"""`spikec export` on bad input: one clear error naming the file or tensor, no OUTDIR."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
import torch

from safetensors.torch import load_file, save_file  # noqa: E402

from spikec.errors import SpikecError  # noqa: E402
from spikec.frontend.loading import load_folder  # noqa: E402


@pytest.fixture(scope="session")
def llava_folder(tmp_path_factory):
    from spikec.frontend.tiny import tiny_llava

    model, processor = tiny_llava()
    folder = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def ckpt(llava_folder, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(llava_folder, dst)
    return dst


def _fails(run_cli, src, out, *needles, extra=()):
    r = run_cli("export", str(src), "-o", str(out), *extra)
    assert r.code != 0
    assert r.err.startswith("error: ") and "Traceback" not in r.err, r.err
    for n in needles:
        assert n in r.err, r.err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]
    return r.err


def test_folder_without_config(run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _fails(run_cli, src, tmp_path / "out", "no config.json", str(src))


def test_unknown_name(run_cli, tmp_path):
    _fails(run_cli, "tiny-gpt", tmp_path / "out", "tiny-gpt", "tiny-llava")


def test_unsupported_architecture(run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    err = _fails(run_cli, src, tmp_path / "out", "unsupported architecture", "'llama'", "config.json")
    for t in ("qwen2_vl", "qwen2_5_vl", "llava", "internvl", "idefics3", "smolvlm"):
        assert t in err


def test_missing_tensor(run_cli, ckpt, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    victim = next(k for k in sd if "q_proj.weight" in k)
    del sd[victim]
    save_file(sd, ckpt / "model.safetensors", metadata={"format": "pt"})
    _fails(run_cli, ckpt, tmp_path / "out", "weights missing", "q_proj.weight")


def test_wrong_shape_tensor(run_cli, ckpt, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    victim = next(k for k in sd if "up_proj.weight" in k)
    sd[victim] = torch.zeros(3, 5)
    save_file(sd, ckpt / "model.safetensors", metadata={"format": "pt"})
    _fails(run_cli, ckpt, tmp_path / "out", "up_proj.weight", "shape", "[3, 5]")


def test_no_weights(run_cli, ckpt, tmp_path):
    (ckpt / "model.safetensors").unlink()
    _fails(run_cli, ckpt, tmp_path / "out", "no weight files")


def test_pickle_only_needs_flag(run_cli, ckpt, tmp_path):
    sd = load_file(ckpt / "model.safetensors")
    torch.save(sd, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    _fails(run_cli, ckpt, tmp_path / "out", "pickle", "--allow-pickle", "pytorch_model.bin")
    loaded = load_folder(ckpt, allow_pickle=True)  # with the flag it loads
    assert loaded.adapter.family == "llava"


def test_failure_mid_export_leaves_no_outdir(llava_folder, tmp_path, monkeypatch):
    from spikec.frontend import export as ex

    calls = []

    def boom(model, path):
        calls.append(path.name)
        if path.name == "embed.onnx":
            raise SpikecError("simulated failure")
        return real(model, path)

    real = ex._save
    monkeypatch.setattr(ex, "_save", boom)
    out = tmp_path / "out"
    with pytest.raises(SpikecError):
        ex.export(str(llava_folder), out)
    assert calls == ["vision.onnx", "embed.onnx"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_opset(run_cli, tmp_path):
    _fails(run_cli, "tiny-llava", tmp_path / "out", "--opset 23", extra=("--opset", "23"))


def test_image_token_outside_the_vocabulary(run_cli, ckpt, tmp_path):
    """An image token id no input id can equal would silently drop the image: refused."""
    import json

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["image_token_index" if "image_token_index" in cfg else "image_token_id"] = 99999
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _fails(run_cli, ckpt, tmp_path / "out", "image token id 99999 is outside the vocabulary")


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_damaged_safetensors_names_the_file(run_cli, ckpt, tmp_path, damage):
    shard = next(ckpt.glob("*.safetensors"))
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    else:  # a header length pointing past the end of the file
        shard.write_bytes((len(data) * 2).to_bytes(8, "little") + data[8:])
    _fails(run_cli, ckpt, tmp_path / "out", shard.name)


def _set_config(ckpt, field: str, value) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    *path, last = field.split(".")
    target = cfg
    for key in path:
        target = target[key]
    target[last] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field, value, message", [
    ("text_config.num_attention_heads", 0, "field 'text_config.num_attention_heads' must be in 1..4096, got 0"),
    ("text_config.num_attention_heads", -2, "field 'text_config.num_attention_heads' must be in 1..4096, got -2"),
    ("text_config.num_attention_heads", 3, "field 'text_config.hidden_size' (32) is not a multiple of field "
                                           "'text_config.num_attention_heads' (3)"),
    ("text_config.num_key_value_heads", 0, "field 'text_config.num_key_value_heads' must be in 1..4096, got 0"),
    ("text_config.num_key_value_heads", 3, "field 'text_config.num_attention_heads' (4) is not a multiple of field "
                                           "'text_config.num_key_value_heads' (3)"),
    ("text_config.hidden_size", 30, "field 'text_config.hidden_size' (30) is not a multiple"),
    ("text_config.hidden_size", 2.5, "field 'text_config.hidden_size' must be an integer, got 2.5"),
    ("text_config.hidden_size", "32", "field 'text_config.hidden_size' must be an integer, got '32'"),
    ("text_config.hidden_size", 10**9, "field 'text_config.hidden_size' must be in 1..1048576, got 1000000000"),
    ("text_config.intermediate_size", 0, "field 'text_config.intermediate_size' must be in 1..1048576, got 0"),
    ("text_config.vocab_size", 0, "field 'text_config.vocab_size' must be in 1..2147483647, got 0"),
    ("text_config.num_hidden_layers", 0, "field 'text_config.num_hidden_layers' must be in 1..1024, got 0"),
    ("text_config.num_hidden_layers", -1, "field 'text_config.num_hidden_layers' must be in 1..1024, got -1"),
    ("vision_config.num_attention_heads", 0, "field 'vision_config.num_attention_heads' must be in 1..4096, got 0"),
    ("vision_config.hidden_size", 30, "field 'vision_config.hidden_size' (30) is not a multiple"),
    ("text_config.max_position_embeddings", 0, "field 'text_config.max_position_embeddings' must be in 1..16777216, "
                                               "got 0"),
    ("text_config", None, "no 'text_config' object: transformers would build that half of the model from its defaults"),
    ("vision_config", None, "no 'vision_config' object"),
    ("text_config", [], "field 'text_config' must be an object, got list"),
])
def test_bad_sizes_in_config_name_the_field(run_cli, ckpt, tmp_path, field, value, message):
    """Sizes are checked in config.json itself, before transformers divides by them or
    allocates with them: one error naming the file and the field."""
    _set_config(ckpt, field, value)
    _fails(run_cli, ckpt, tmp_path / "out", f"{ckpt / 'config.json'}: {message}")


def test_config_sizes_of_every_layout():
    """Qwen2-VL's vision sizes (embed_dim, num_heads, depth) and configs with the text sizes
    at the top level are checked alike; null means "the default" and is let through."""
    from spikec.frontend.loading import check_config_sizes

    good = {"model_type": "qwen2_vl", "hidden_size": 1536, "num_attention_heads": 12, "num_key_value_heads": 2,
            "head_dim": None, "vision_config": {"embed_dim": 1280, "num_heads": 16, "depth": 32, "hidden_size": 1536}}
    check_config_sizes(good, where="config.json")
    for change, message in [({"num_key_value_heads": 5}, "'num_attention_heads' (12) is not a multiple of field "
                                                        "'num_key_value_heads' (5)"),
                            ({"vision_config": {"embed_dim": 1280, "num_heads": 24}},
                             "'vision_config.embed_dim' (1280) is not a multiple of field 'vision_config.num_heads'"),
                            ({"vision_config": {"depth": 0}}, "'vision_config.depth' must be in 1..1024, got 0"),
                            ({"vision_config": {"num_heads": True}}, "'vision_config.num_heads' must be an integer")]:
        with pytest.raises(SpikecError, match=re.escape(message)):
            check_config_sizes({**good, **change}, where="config.json")


def test_sub_configs_of_every_layout():
    """Qwen2-VL's published configs keep the text fields at the top level (transformers
    moves them into text_config): accepted; other families, and a Qwen2-VL with neither,
    are refused, since transformers would fill in its defaults."""
    from spikec.frontend.loading import check_sub_configs

    vision = {"embed_dim": 1280, "num_heads": 16}
    check_sub_configs({"model_type": "qwen2_vl", "hidden_size": 1536, "vision_config": vision}, where="config.json")
    check_sub_configs({"model_type": "llava", "text_config": {}, "vision_config": {}}, where="config.json")
    for raw in ({"model_type": "llava", "hidden_size": 1536, "vision_config": vision},
                {"model_type": "qwen2_vl", "vision_config": vision}):
        with pytest.raises(SpikecError, match=re.escape("config.json: no 'text_config' object")):
            check_sub_configs(raw, where="config.json")


def _no_model_built(monkeypatch):
    """Make any construction of the model with real weights fail loudly."""
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError("the model was built before the memory check")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", boom)


def test_model_larger_than_memory_is_refused_before_any_allocation(run_cli, ckpt, tmp_path, monkeypatch):
    """A config far larger than the machine (vocab_size 10^9: 64 G parameters) is refused
    with the estimate before transformers builds or loads anything."""
    _set_config(ckpt, "text_config.vocab_size", 10**9)
    _no_model_built(monkeypatch)
    err = _fails(run_cli, ckpt, tmp_path / "out", f"{ckpt / 'config.json'}: exporting this model needs about",
                 "GiB of memory", "64,000,044,640 parameters", "model.language_model.embed_tokens.weight [1000000000, 32]")
    assert "available" in err and "the model was built" not in err


def test_memory_estimate_against_what_is_available(ckpt, monkeypatch):
    """The estimate (export: two of the largest tensors in float32 plus the runtime; a float32
    load: every parameter) is compared with what the machine has, before anything is built."""
    from spikec import memory
    from spikec.frontend import loading

    monkeypatch.setattr(memory, "available_bytes", lambda: loading.RUNTIME_BYTES // 2)
    with monkeypatch.context() as m:
        _no_model_built(m)
        for stream, verb in ((True, "exporting"), (False, "loading")):
            with pytest.raises(SpikecError, match=f"config.json: {verb} this model needs about 0.5 GiB of memory"):
                load_folder(ckpt, stream=stream)
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: no check
    assert load_folder(ckpt, stream=True).weights is not None
