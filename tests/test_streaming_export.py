"""Export in bounded memory (spikec.frontend.streaming) gives the float32 export's graphs.

Checkpoints saved by transformers in bf16 and fp16 (two families, built here from the
tiny configs): `spikec export` traces a model without weight values and streams the
memory-mapped tensors; the graphs must have the same ops, the same weight values bit for
bit (bf16/fp16 -> float32 is exact) and generate the same tokens as exporting a float32
load of the same checkpoint. Initializers carry the checkpoint's module paths.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from spikec.frontend.export import export_loaded, sample_image
from spikec.frontend.generate import OrtGenerator
from spikec.frontend.loading import load
from spikec.frontend.tiny import build_tiny


@pytest.fixture(scope="module", params=[("tiny-qwen2-vl", torch.bfloat16), ("tiny-llava", torch.float16)],
                ids=["qwen2-vl-bf16", "llava-fp16"])
def exports(request, tmp_path_factory):
    name, dtype = request.param
    d = tmp_path_factory.mktemp(name)
    model, processor = build_tiny(name)
    model.to(dtype).save_pretrained(d / "ckpt")
    processor.save_pretrained(d / "ckpt")
    streamed = load(str(d / "ckpt"), stream=True)
    assert streamed.weights is not None
    # the trace model's weights are never written: uninitialized float32 storage
    assert {p.dtype for p in streamed.model.parameters()} == {torch.float32}
    export_loaded(streamed, d / "stream")
    # the reference: a float32 load, exported with torch.onnx's own optimizer folding the weights
    export_loaded(load(str(d / "ckpt")), d / "float32", bind_weights=False)
    return d / "stream", d / "float32"


@pytest.mark.parametrize("role", ["vision", "embed", "lm"])
def test_same_ops_and_weight_bits(exports, role):
    a, b = (onnx.load(str(p / f"{role}.onnx")) for p in exports)
    assert Counter(n.op_type for n in a.graph.node) == Counter(n.op_type for n in b.graph.node)

    def values(m):
        return sorted((tuple(t.dims), onnx.numpy_helper.to_array(t).tobytes()) for t in m.graph.initializer)

    assert values(a) == values(b)
    big = [t.name for t in a.graph.initializer if len(t.dims) == 2 and min(t.dims) > 8]
    assert all(n.startswith("model.") or "." not in n for n in (x.name for x in a.graph.node
               if x.op_type in ("MatMul", "Gemm") and x.input[1] in big)), "linear nodes take module paths"
    # module paths such as model.language_model.layers.0.mlp.down_proj.weight, not val_N
    assert big and all(n.endswith(".weight") and not n.startswith("val_") for n in big), big


def test_same_tokens(exports):
    gens = [OrtGenerator(p) for p in exports]
    ids = [g.generate_ids(g.prepare([sample_image()], ["What is in the image?"]), 6) for g in gens]
    np.testing.assert_array_equal(ids[0], ids[1])


def test_optimize_leaves_out_only_the_quadratic_rules():
    """streaming.optimize runs onnxscript's optimizer without the rules that scan the whole
    graph per node (QUADRATIC_RULES), and puts its default rule list back afterwards. If a
    later onnxscript renames such a rule, the filter would leave it in silently: this fails."""
    from onnxscript import rewriter

    from spikec.frontend import streaming

    default = rewriter._DEFAULT_REWRITE_RULES
    names = [getattr(r, "name", None) for r in default]
    assert all(q in names for q in streaming.QUADRATIC_RULES)
    seen = []
    import onnxscript

    orig = onnxscript.optimizer.optimize_ir

    def spy(model, *a, **kw):
        seen.append([getattr(r, "name", None) for r in rewriter._DEFAULT_REWRITE_RULES])
        return orig(model, *a, **kw)

    onnxscript.optimizer.optimize_ir = spy
    try:
        import onnx_ir as ir

        x = ir.Value(name="x", shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT))
        node = ir.node("Relu", [x])
        node.outputs[0].name = "y"
        model = ir.Model(ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 18}), ir_version=10)
        streaming.optimize(model)
    finally:
        onnxscript.optimizer.optimize_ir = orig
    assert len(seen) == 1 and not set(seen[0]) & set(streaming.QUADRATIC_RULES)
    assert len(seen[0]) == len(default) - len(streaming.QUADRATIC_RULES)
    assert rewriter._DEFAULT_REWRITE_RULES is default


def test_generation_config_reaches_the_manifest(tmp_path):
    """generation_config.json's EOS list and max_new_tokens are exported, also from a model
    built from the config alone (the streaming path's trace model): a config-derived
    generation config knows one EOS and no max_new_tokens."""
    import json

    from spikec.errors import SpikecError
    from spikec.frontend import manifest as mf

    model, processor = build_tiny("tiny-llava")
    eos = int(processor.tokenizer.eos_token_id)
    model.generation_config.eos_token_id = [eos, 5]
    model.generation_config.max_new_tokens = 3
    model.to(torch.float16).save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    streamed = load(str(tmp_path / "ckpt"), stream=True)
    assert streamed.model.generation_config.eos_token_id == [eos, 5]
    export_loaded(streamed, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["eos_token_id"] == [eos, 5] and manifest["max_new_tokens"] == 3
    mf.load_json(tmp_path / "out")  # valid as written
    for bad in (0, 5000, "3", True):
        manifest["max_new_tokens"] = bad
        (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(SpikecError, match="max_new_tokens"):
            mf.load_json(tmp_path / "out")
