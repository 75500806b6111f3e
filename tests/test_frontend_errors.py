"""`spikec export` on bad input: one clear error naming the file or tensor, no OUTDIR."""

from __future__ import annotations

import json
import os
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
