"""benchmarks/make_checkpoint.py: published-shape checkpoints with random weights.

Each model is written once per module at its published widths with 1 text and 1 vision
layer and a small shard size (so it shards into several files), then: it loads with
AutoModelForImageTextToText with no missing/unexpected/mismatched keys and in the
requested dtype, a forward pass is finite, AutoProcessor works and puts the config's
image token in input_ids, the index covers every tensor with the right total_size, a
second run gives byte-identical files, and `spikec export` accepts the Qwen2-VL-2B
folder. The Qwen2-VL-7B case (1.4 B parameters even at 1 + 1 layers) is `slow`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_checkpoint.py"
_spec = importlib.util.spec_from_file_location("make_checkpoint", SCRIPT)
mc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_checkpoint", mc)  # dataclasses look the module up
_spec.loader.exec_module(mc)

SHARD = "200MB"
# (model, --dtype): the published dtype for each, given explicitly.
CASES = {"qwen2-vl-2b": "bf16", "llava-1.5-7b": "fp16", "qwen2-vl-7b": "bf16"}
MODELS = ["qwen2-vl-2b", "llava-1.5-7b", pytest.param("qwen2-vl-7b", marks=pytest.mark.slow)]


def _write(folder: Path, model: str) -> dict:
    return mc.write_checkpoint(folder, model, text_layers=1, vision_layers=1, dtype=CASES[model],
                               shard_size=SHARD, seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """model name -> (folder, summary), each written once per module and deleted after it
    (about 1.6 GB in all: the suite keeps its disk footprint small)."""
    cache: dict[str, tuple[Path, dict]] = {}

    def get(model: str) -> tuple[Path, dict]:
        if model not in cache:
            folder = tmp_path_factory.mktemp("ckpt") / model
            cache[model] = (folder, _write(folder, model))
        return cache[model]

    yield get
    for folder, _ in cache.values():
        shutil.rmtree(folder.parent, ignore_errors=True)


def _image():
    from PIL import Image

    return Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("model", MODELS)
def test_loads_with_no_missing_keys_in_requested_dtype(written, model):
    from transformers import AutoModelForImageTextToText

    folder, summary = written(model)
    loaded, info = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True,
                                                               output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys") and not info.get("error_msgs"), info
    want = mc.DTYPES[CASES[model]]
    assert {v.dtype for v in loaded.state_dict().values()} == {want}
    assert loaded.num_parameters() == summary["total_parameters"]
    cfg = loaded.config
    text = cfg.get_text_config()
    published = {"qwen2-vl-2b": (1536, 8960, 151936, True), "qwen2-vl-7b": (3584, 18944, 152064, False),
                 "llava-1.5-7b": (4096, 11008, 32064, False)}[model]
    assert (text.hidden_size, text.intermediate_size, text.vocab_size, cfg.tie_word_embeddings) == published
    assert text.num_hidden_layers == 1
    keys = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    # tied embeddings: no lm_head in the files, as save_pretrained does
    # (LLaVA's keys are in the llava-hf layout that save_pretrained reverts to: language_model.lm_head.weight)
    assert any(k.endswith("lm_head.weight") for k in keys) == (not cfg.tie_word_embeddings)


@pytest.mark.parametrize("model", ["qwen2-vl-2b", "llava-1.5-7b"])
def test_processor_and_forward(written, model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, _ = written(model)
    proc = AutoProcessor.from_pretrained(folder, local_files_only=True)
    cfg = json.loads((folder / "config.json").read_text())
    image_token_id = cfg.get("image_token_id", cfg.get("image_token_index"))
    assert proc.tokenizer.convert_tokens_to_ids(proc.image_token) == image_token_id
    assert len(proc.tokenizer) <= cfg["text_config"]["vocab_size"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = proc.apply_chat_template(messages, add_generation_prompt=True)
    inputs = proc(images=[_image()], text=[prompt], return_tensors="pt")
    assert int((inputs["input_ids"] == image_token_id).sum()) > 0
    model_ = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    with torch.no_grad():
        logits = model_(**inputs, logits_to_keep=1).logits
    assert torch.isfinite(logits).all() and float(logits.std()) > 0


@pytest.mark.parametrize("model", MODELS)
def test_index_covers_every_tensor(written, model):
    from safetensors import safe_open

    folder, summary = written(model)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    n = len(shards)
    assert n >= 3
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(set(index["weight_map"].values())) == shards
    seen, total = {}, 0
    for shard in shards:
        with safe_open(folder / shard, framework="pt") as f:
            assert f.metadata() == {"format": "pt"}
            for key in f.keys():
                t = f.get_slice(key)
                seen[key] = shard
                numel = int(np.prod(t.get_shape())) if t.get_shape() else 1
                total += numel * {"BF16": 2, "F16": 2, "F32": 4}[t.get_dtype()]
    assert seen == index["weight_map"]
    assert index["metadata"]["total_size"] == total == summary["total_size"]
    assert index["metadata"]["total_parameters"] == summary["total_parameters"]
    # the file itself is json.dumps(indent=2, sort_keys=True) + newline, as save_pretrained writes it
    text = (folder / "model.safetensors.index.json").read_text()
    assert text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    for name in ("config.json", "generation_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (folder / name).is_file(), name


@pytest.mark.parametrize("model", MODELS)
def test_second_run_is_byte_identical(written, model, tmp_path):
    folder, _ = written(model)
    again = tmp_path / "again"
    _write(again, model)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert any(re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", n) for n in names)
    for name in names:
        assert (folder / name).read_bytes() == (again / name).read_bytes(), name


def test_init_scales(written):
    from safetensors import safe_open

    folder, _ = written("qwen2-vl-2b")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]

    def get(key):
        with safe_open(folder / index[key], framework="pt") as f:
            return f.get_tensor(key).float()

    assert torch.equal(get("model.norm.weight"), torch.ones(1536))
    assert torch.equal(get("model.layers.0.self_attn.q_proj.bias"), torch.zeros(1536))
    w = get("model.layers.0.self_attn.q_proj.weight")
    assert abs(float(w.std()) - mc.INIT_STD) < 1e-3 and abs(float(w.mean())) < 1e-3
    # per-tensor seeds: two same-shaped tensors differ
    assert not torch.equal(get("model.layers.0.mlp.gate_proj.weight"), get("model.layers.0.mlp.up_proj.weight"))


def test_cli_refuses_non_empty_outdir(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert mc.main(["--model", "qwen2-vl-2b", "--text-layers", "1", "--vision-layers", "1", "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(SystemExit) as exc:
        mc.main(["--help"])
    assert exc.value.code == 0
    assert "qwen2-vl-7b" in capsys.readouterr().out


def test_spikec_export_accepts_the_folder(written, run_cli, tmp_path):
    folder, _ = written("qwen2-vl-2b")
    out = tmp_path / "export"
    res = run_cli("export", str(folder), "-o", str(out))
    assert res.code == 0, res.err
    manifest = json.loads((out / "manifest.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    assert manifest["family"] == "qwen2_vl"
    assert manifest["merge"]["image_token_id"] == cfg["image_token_id"]
    assert manifest["lm"]["vocab_size"] == 151936 and manifest["lm"]["hidden_size"] == 1536
