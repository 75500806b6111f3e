"""Graphs and data for the tests of the spiking passes (quantize ... msts, import-qdq).

`mixed_lm` is a hand-built pre-norm transformer-shaped model with a per-token
`modality` input: layers of two residual sub-blocks (norm -> linear -> relu -> linear),
a final norm and a `logits` head. `mixed_feeds` makes calibration feeds where vision
tokens have a few large outlier channels and text tokens do not, so the two modalities
quantize very differently (what MSTS must notice).

`exported(name)` exports a tiny front-end model once per test process.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from spikec import ir as spir
from spikec.passes import GENERIC_PIPELINE, PassManager
from spikec.passes.options import CompileContext, SpikeOptions


def _rms(nodes, inits, x, name, dim, rng):
    g = numpy_helper.from_array((1 + 0.1 * rng.standard_normal(dim)).astype(np.float32), f"{name}.g")
    inits.append(g)
    nodes += [
        helper.make_node("Mul", [x, x], [f"{name}.sq"], name=f"{name}.sq"),
        helper.make_node("ReduceMean", [f"{name}.sq", "axes"], [f"{name}.ms"], name=f"{name}.mean", keepdims=1),
        helper.make_node("Add", [f"{name}.ms", "eps"], [f"{name}.mse"], name=f"{name}.eps"),
        helper.make_node("Sqrt", [f"{name}.mse"], [f"{name}.rms"], name=f"{name}.sqrt"),
        helper.make_node("Div", [x, f"{name}.rms"], [f"{name}.n"], name=f"{name}.div"),
        helper.make_node("Mul", [f"{name}.n", f"{name}.g"], [f"{name}.out"], name=f"{name}.weight"),
    ]
    return f"{name}.out"


def mixed_lm(seed: int = 0, hidden: int = 16, ffn: int = 32, vocab: int = 24, layers: int = 2,
             big_k: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], [numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
                        numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    h = "x"
    for l in range(layers):
        for sub in ("a", "m"):
            name = f"l{l}{sub}"
            n = _rms(nodes, inits, h, f"{name}.norm", hidden, rng)
            inner = big_k if (big_k and l == 0 and sub == "a") else ffn
            w1 = (rng.standard_normal((hidden, inner)) / np.sqrt(hidden)).astype(np.float32)
            w2 = (rng.standard_normal((inner, hidden)) / np.sqrt(inner)).astype(np.float32)
            b1 = (0.1 * rng.standard_normal(inner)).astype(np.float32)
            inits += [numpy_helper.from_array(w1, f"{name}.w1"), numpy_helper.from_array(w2, f"{name}.w2"),
                      numpy_helper.from_array(b1, f"{name}.b1")]
            nodes += [
                helper.make_node("MatMul", [n, f"{name}.w1"], [f"{name}.u"], name=f"{name}.up"),
                helper.make_node("Add", [f"{name}.u", f"{name}.b1"], [f"{name}.ub"], name=f"{name}.up_bias"),
                helper.make_node("Relu", [f"{name}.ub"], [f"{name}.r"], name=f"{name}.relu"),
                helper.make_node("MatMul", [f"{name}.r", f"{name}.w2"], [f"{name}.d"], name=f"{name}.down"),
                helper.make_node("Add", [h, f"{name}.d"], [f"{name}.h"], name=f"{name}.residual"),
            ]
            h = f"{name}.h"
    n = _rms(nodes, inits, h, "final.norm", hidden, rng)
    inits.append(numpy_helper.from_array((rng.standard_normal((hidden, vocab)) * 2 / np.sqrt(hidden)).astype(np.float32),
                                         "head.w"))
    nodes.append(helper.make_node("MatMul", [n, "head.w"], ["logits"], name="head"))
    graph = helper.make_graph(
        nodes, "mixed_lm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden]),
         helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", vocab])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def mixed_feeds(n: int = 3, seed: int = 1, hidden: int = 16, batch: int = 2, seq: int = 10,
                outlier: float = 12.0) -> list[dict]:
    """Vision tokens first (6 of 10), then text; vision tokens carry outlier channels."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        mod = np.zeros((batch, seq), np.int64)
        mod[:, :6] = 1
        x = rng.standard_normal((batch, seq, hidden)).astype(np.float32)
        x[:, :6, :3] *= outlier  # vision outliers
        feeds.append({"x": x, "modality": mod})
    return feeds


def as_model(proto: onnx.ModelProto, clean: bool = True) -> ir.Model:
    model = ir.from_proto(proto)
    if clean:
        from spikec.compiler import build_pipeline

        PassManager(build_pipeline(GENERIC_PIPELINE)).run(model)
    return model


def run_passes(model: ir.Model, names, feeds=None, **opts) -> CompileContext:
    from spikec.compiler import build_pipeline

    ctx = CompileContext(SpikeOptions(**opts), feeds=feeds)
    PassManager(build_pipeline(names, ctx)).run(model)
    return ctx


def save(proto_or_model, path: Path) -> Path:
    if isinstance(proto_or_model, onnx.ModelProto):
        onnx.save(proto_or_model, str(path))
    else:
        spir.save_model(proto_or_model, path)
    return path


@functools.cache
def exported(name: str) -> Path:
    """A tiny front-end export folder (vision.onnx, embed.onnx, lm.onnx, manifest.json), made once."""
    from spikec.frontend.export import export

    out = Path(tempfile.mkdtemp(prefix="spikec-test-export-")) / name
    export(name, out)
    return out


@functools.cache
def calib_folder() -> Path:
    """Two image+prompt pairs in the front end's data.jsonl layout."""
    import json

    from spikec.frontend.export import sample_image

    d = Path(tempfile.mkdtemp(prefix="spikec-test-calib-"))
    (d / "images").mkdir()
    rows = []
    for i, (w, h, p) in enumerate([(64, 48, "What is in the image?"), (40, 40, "Describe the colours.")]):
        sample_image(w, h).save(d / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "prompt": p})
    (d / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


@functools.cache
def export_feeds(name: str) -> dict:
    from spikec.calibration import export_folder_feeds

    return export_folder_feeds(exported(name), calib_folder(), 2)


def lm_feeds(model, prompt: str = "What is in the image?") -> dict:
    """Prefill feeds of a compiled model's LM graph (spikec.load(...)): the sample image and
    `prompt` through the model's own processor and vision graph, an empty KV cache."""
    from spikec.frontend.export import sample_image

    gen = model.generator()
    proc = gen.prepare([sample_image()], [prompt])
    embeds, mask, pos, modality, _ = gen.prefill_inputs(proc)
    feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, "modality": modality}
    feeds.update(zip([f"past_key_values.{i}.{kv}" for i in range(gen.n_layers) for kv in ("key", "value")],
                     gen.empty_past(embeds.shape[0])))
    return feeds
