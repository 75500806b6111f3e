"""Front end parity: exported graphs on ONNX Runtime vs the torch model, per family.

Each built-in tiny model is exported once per session (the `exported` fixture);
the checks then run the graphs on ORT and compare with transformers on the same
processor inputs: prefill logits on two input shapes, three decode steps with the
KV cache, and 8 greedy tokens against `generate`.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"

import torch

from spikec.frontend.export import export_loaded, sample_image  # noqa: E402
from spikec.frontend.generate import OrtGenerator  # noqa: E402
from spikec.frontend.loading import load  # noqa: E402
from spikec.frontend.tiny import TINY  # noqa: E402
from spikec.frontend.wrappers import LMWrapper  # noqa: E402

NAMES = list(TINY)
TOL = 1e-4
TIMINGS: dict[str, float] = {}


class Exported:
    def __init__(self, loaded, outdir):
        self.loaded, self.outdir = loaded, outdir
        self.gen = OrtGenerator(outdir)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            t0 = time.time()
            loaded = load(name)
            outdir = tmp_path_factory.mktemp("export") / name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_loaded(loaded, outdir)
            TIMINGS[name] = time.time() - t0
            cache[name] = Exported(loaded, outdir)
        return cache[name]

    return get


def _shape_a(gen):
    return gen.prepare([sample_image(40, 56)], ["What digit is this?"])


def _shape_b(gen):
    # Batch of two, different image sizes and prompt lengths (padding in the batch).
    return gen.prepare([sample_image(64, 64), sample_image(56, 30)], ["Hi", "Which digit is written here?"])


@pytest.mark.parametrize("name", NAMES)
def test_manifest_and_graph_contract(exported, name):
    import onnx_ir as ir

    ex = exported(name)
    m = json.loads((ex.outdir / "manifest.json").read_text())
    assert set(m["graphs"]) == {"vision", "embed", "lm"}
    assert m["modality"] == {"text": 0, "vision": 1}
    assert (ex.outdir / m["processor"] / "tokenizer.json").is_file()
    lm_in = {io["name"]: io for io in m["graphs"]["lm"]["inputs"]}
    assert lm_in["modality"]["dtype"] == "int64" and lm_in["modality"]["shape"] == ["batch", "seq"]
    assert lm_in["past_key_values.0.key"]["shape"][2] == "past"
    model = ir.load(ex.outdir / "lm.onnx")
    ops = {n.op_type for n in model.graph}
    # Decomposed forms only: the spiking rewrites match MatMul with a weight initializer.
    assert not ops & {"Attention", "RMSNormalization", "GroupQueryAttention"}
    inits = model.graph.initializers
    weighted = [n for n in model.graph if n.op_type in ("MatMul", "Gemm") and n.inputs[1].name in inits]
    n_layers = m["lm"]["num_layers"]
    assert len(weighted) == 7 * n_layers + 1  # q k v o gate up down per layer + lm_head
    acts = [n for n in model.graph if n.op_type == "MatMul" and n.inputs[1].name not in inits]
    assert len(acts) == 2 * n_layers  # Q @ K^T and P @ V
    for f in ("vision.onnx.data", "embed.onnx.data", "lm.onnx.data"):
        assert (ex.outdir / f).is_file()


def _hf_logits(model, proc_out):
    with torch.no_grad():
        if hasattr(model.model, "rope_deltas"):
            model.model.rope_deltas = None
        return model(**proc_out).logits.numpy()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", ["a", "b"])
def test_prefill_matches_torch(exported, name, shape):
    ex = exported(name)
    gen = ex.gen
    po = _shape_a(gen) if shape == "a" else _shape_b(gen)
    embeds, mask, pos, modality, _ = gen.prefill_inputs(po)
    assert modality.sum() == (po["input_ids"].numpy() == gen.image_token_id).sum() > 0
    logits, _ = gen.lm(embeds, mask, pos, modality, gen.empty_past(embeds.shape[0]))
    ref = _hf_logits(ex.loaded.model, po)
    keep = mask.astype(bool)  # padded positions are undefined in both
    diff = float(np.abs(logits[keep] - ref[keep]).max())
    print(f"{name} prefill shape {shape} {tuple(po['input_ids'].shape)}: max abs diff {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_decode_steps_match_torch(exported, name):
    ex = exported(name)
    gen, model = ex.gen, ex.loaded.model
    wrapper = LMWrapper(ex.loaded.adapter.text_model(model), model.lm_head, gen.n_layers).eval()
    po = _shape_b(gen)
    embeds, mask, pos, modality, state = gen.prefill_inputs(po)
    b = embeds.shape[0]
    past_o = gen.empty_past(b)
    past_t = [torch.from_numpy(p) for p in past_o]
    worst = 0.0
    for step in range(4):  # prefill + 3 decode steps
        lo, past_o = gen.lm(embeds, mask, pos, modality, past_o)
        with torch.no_grad():
            out = wrapper(*(torch.from_numpy(x) for x in (embeds, mask, pos, modality)), *past_t)
        lt, past_t = out[0].numpy(), list(out[1:])
        rows = mask[:, -lo.shape[1]:].astype(bool)
        diff = float(np.abs(lo[rows] - lt[rows]).max())
        for a, t in zip(past_o, past_t):
            diff = max(diff, float(np.abs(a - t.numpy()).max()))
        worst = max(worst, diff)
        if step:
            assert lo.shape[1] == 1 and past_o[0].shape[2] == mask.shape[1]
        nxt = lo[:, -1].argmax(-1)
        mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
        pos = gen.adapter.decode_position_ids(gen.config, mask, state)
        embeds, modality = gen.embed(nxt[:, None]), np.zeros((b, 1), np.int64)
    print(f"{name} prefill + 3 decode steps: max abs diff {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_matches_transformers(exported, name):
    ex = exported(name)
    po = _shape_a(ex.gen)
    ours = ex.gen.generate_ids(po, 8, stop_at_eos=False)
    model = ex.loaded.model
    if hasattr(model.model, "rope_deltas"):
        model.model.rope_deltas = None
    with torch.no_grad():
        ref = model.generate(**po, max_new_tokens=8, do_sample=False)[:, po["input_ids"].shape[1]:].numpy()
    print(f"{name} greedy: {ours[0].tolist()} (export {TIMINGS.get(name, 0):.1f}s)")
    assert ours.tolist() == ref.tolist()
    text = ex.gen.generate(sample_image(40, 56), "What digit is this?", max_new_tokens=4)
    assert isinstance(text, str)


def _graph_signature(path):
    import onnx_ir as ir

    model = ir.load(path)
    ops = [n.op_type for n in model.graph]
    weights = sorted((tuple(v.shape), float(np.asarray(v.const_value.numpy()).astype(np.float64).sum()))
                     for v in model.graph.initializers.values() if v.const_value is not None)
    io = [(v.name, str(v.shape)) for v in list(model.graph.inputs) + list(model.graph.outputs)]
    return ops, weights, io


def _check_reload(exported, tmp_path, name):
    ex = exported(name)
    folder = tmp_path / "ckpt"
    ex.loaded.model.save_pretrained(folder)
    ex.loaded.processor.save_pretrained(folder)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_loaded(load(folder), out)
    for g in ("vision.onnx", "embed.onnx", "lm.onnx"):
        assert _graph_signature(out / g) == _graph_signature(ex.outdir / g), g
    a = json.loads((out / "manifest.json").read_text())
    b = json.loads((ex.outdir / "manifest.json").read_text())
    a.pop("source"), b.pop("source")
    assert a == b


def test_reload_from_folder_exports_same_graphs(exported, tmp_path):
    _check_reload(exported, tmp_path, "tiny-llava")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != "tiny-llava"])
def test_reload_from_folder_exports_same_graphs_all(exported, tmp_path, name):
    _check_reload(exported, tmp_path, name)


@pytest.mark.slow
def test_smolvlm_through_idefics3_adapter(tmp_path):
    from spikec.frontend.adapters import adapter_for
    from spikec.frontend.loading import Loaded
    from spikec.frontend.tiny import tiny_smolvlm

    model, processor = tiny_smolvlm()
    model.config._attn_implementation = "eager"
    loaded = Loaded(model, processor, adapter_for(model.config.model_type), "tiny-smolvlm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_loaded(loaded, tmp_path / "out")
    gen = OrtGenerator(tmp_path / "out")
    for po in (_shape_a(gen), _shape_b(gen)):
        embeds, mask, pos, modality, _ = gen.prefill_inputs(po)
        logits, _ = gen.lm(embeds, mask, pos, modality, gen.empty_past(embeds.shape[0]))
        ref = _hf_logits(model, po)
        keep = mask.astype(bool)
        assert float(np.abs(logits[keep] - ref[keep]).max()) <= TOL
    po = _shape_a(gen)
    with torch.no_grad():
        ref = model.generate(**po, max_new_tokens=8, do_sample=False)[:, po["input_ids"].shape[1]:].numpy()
    assert gen.generate_ids(po, 8, stop_at_eos=False).tolist() == ref.tolist()
