"""rotate (QuaRot's residual-stream rotation): the matrices are orthogonal Hadamard ones, and
the rotated graphs compute the original function, rotated, to float rounding."""

from __future__ import annotations

import numpy as np
import pytest

from spikec.errors import SpikecError
from spikec.passes.rotate import hadamard, paley_hadamard, rotation_matrix, with_rotation


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 32, 44, 96, 128, 140, 224, 1536])
def test_hadamard_orders(n):
    h = hadamard(n).astype(np.int64)
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1, 1}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))


def test_hadamard_of_published_widths():
    """Qwen2-VL-2B (1536, 8960), 7B hidden (3584) have one; 7B's 18944 falls back."""
    for n in (1536, 8960, 3584):
        assert hadamard(n) is not None, n
    assert hadamard(18944) is None and hadamard(6) is None
    q, kind = rotation_matrix(18944 // 64)  # same factorisation problem at a testable size
    assert kind == "random-orthogonal"
    np.testing.assert_allclose(q @ q.T, np.eye(q.shape[0]), atol=1e-12)


def test_paley_refuses_other_primes():
    with pytest.raises(ValueError):
        paley_hadamard(13)  # 13 = 1 mod 4


@pytest.mark.parametrize("n", [32, 96, 140])
def test_rotation_is_orthogonal_and_deterministic(n):
    q, kind = rotation_matrix(n)
    assert kind == "hadamard"
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-12)
    np.testing.assert_array_equal(q, rotation_matrix(n)[0])
    # a rotation spreads a one-channel outlier over every channel
    x = np.zeros(n)
    x[3] = 100.0
    assert np.abs(x @ q).max() == pytest.approx(100.0 / np.sqrt(n))


@pytest.mark.parametrize("n", [32, 96, 1000, 1280])  # 1000: no Hadamard here, the random orthogonal fallback
def test_mean_preserving_rotation_commutes_with_layernorm(n):
    """Q 1 = 1, so LayerNorm (unit scale, zero shift) of x Q is LayerNorm(x) Q: what lets
    the vision encoder's LayerNorms stay as exported when its stream is rotated."""
    from spikec.passes.rotate import mean_preserving_rotation

    q, kind = mean_preserving_rotation(n)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-10)
    np.testing.assert_allclose(q @ np.ones(n), np.ones(n), atol=1e-10)
    np.testing.assert_array_equal(q, mean_preserving_rotation(n)[0])
    x = np.random.default_rng(0).standard_normal((4, n)) * 3 + 5
    x[:, 7] += 200.0  # an outlier channel, as a ViT's residual stream has

    def ln(v):
        c = v - v.mean(-1, keepdims=True)
        return c / np.sqrt((c * c).mean(-1, keepdims=True) + 1e-6)

    np.testing.assert_allclose(ln(x @ q), ln(x) @ q, atol=1e-9)
    assert np.abs(ln(x) @ q).max() < 0.5 * np.abs(ln(x)).max()  # the outlier is spread
    assert kind.endswith("+householder")


def test_with_rotation_places_the_pass_before_quantizing():
    names = ("fold-constants", "shape-inference", "vector-numerics", "quantize", "spike-rewrite")
    assert with_rotation(names) == ("fold-constants", "shape-inference", "rotate", "vector-numerics", "quantize",
                                    "spike-rewrite")
    assert with_rotation(with_rotation(names)) == with_rotation(names)


# ---------------------------------------------------------------- whole exports

import functools  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from spikec.compiler import compile_path  # noqa: E402
from spikec.frontend.export import export, sample_image  # noqa: E402
from spikec.frontend.tiny import build_tiny  # noqa: E402
from spikec.passes import GENERIC_PIPELINE  # noqa: E402
from spikec.passes.options import SpikeOptions  # noqa: E402
from spikec.runtime.model import load  # noqa: E402

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-llava", "tiny-internvl", "tiny-idefics3"]


@functools.lru_cache(maxsize=None)
def _export(name: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"spikec-rotate-{name}-"))
    torch.manual_seed(0)
    model, processor = build_tiny(name)
    model.save_pretrained(root / "ckpt")
    processor.save_pretrained(root / "ckpt")
    export(str(root / "ckpt"), root / "export")
    return root


def _prefill(path: Path):
    with load(path, target="ort") as model:
        g = model.generator()
        po = g.prepare([sample_image()], ["describe the image"])
        embeds, mask, pos, modality, _ = g.prefill_inputs(po)
        logits, _ = g.lm(embeds, mask, pos, modality, g.empty_past(embeds.shape[0]))
        ids = g.generate_ids(po, 6, stop_at_eos=False)
    return embeds, logits, ids


@pytest.mark.parametrize("name", FAMILIES)
def test_rotated_export_computes_the_same_function(name):
    """Every graph rotated (embedding table, vision projector, LM readers and writers, norms
    folded): prompt embeddings are the original ones times Q, logits and tokens unchanged."""
    root = _export(name)
    plain, rotated = root / "plain.sbin", root / "rotated.sbin"
    compile_path(root / "export", plain, pipeline=list(GENERIC_PIPELINE))
    report = compile_path(root / "export", rotated, pipeline=list(GENERIC_PIPELINE) + ["rotate"])
    done = {role: extra["rotate"]["graph"] for role, extra in report.extra["graphs"].items()}
    e0, l0, t0 = _prefill(plain)
    e1, l1, t1 = _prefill(rotated)
    q, _ = rotation_matrix(e0.shape[-1])
    np.testing.assert_allclose(e1, e0.astype(np.float64) @ q, rtol=0, atol=1e-5 * np.abs(e0).max())
    np.testing.assert_allclose(l1, l0, rtol=0, atol=1e-4 * np.abs(l0).max())
    np.testing.assert_array_equal(t1, t0)
    assert sorted(done.values()) == ["language model", "token embedding", "vision projector"]
    lm = report.extra["graphs"]["lm"]["rotate"]
    assert lm["online_hadamard"] == 2 and lm["norms_folded"] == 5  # 2 layers: 2 down_proj; 2 x 2 + final norm
    encoder = report.extra["graphs"]["vision"]["rotate"]["encoder"]
    if name in ("tiny-qwen2-vl", "tiny-qwen2.5-vl"):  # pre-norm blocks on a patch-embedding stream: rotated
        # 2 blocks: patch embedding + 2 x (attention out, MLP down) write; 2 x 2 norms + the merger's read
        assert encoder["writers"] == 5 and encoder["norms_folded"] == 5 and encoder["online_hadamard"] == 4, encoder
        assert encoder["projector_online_hadamard"] is True
    else:  # CLIP's, InternViT's and SigLIP's embeddings add a position table: left as they are, with the reason
        assert "not by a patch-embedding Conv or a linear layer (embeddings that add a position table" \
            in encoder["skipped"], encoder


def test_rotated_w4_compile_runs_and_stays_exact(tmp_path):
    """--rotate with W4 GPTQ-free RTN on a spiking compile: the ORT target's fused and exact
    modes still agree bit for bit (rotation is before quantize; codes stay the contract's)."""
    out = tmp_path / "w4.sbin"
    root = _export("tiny-qwen2-vl")
    compile_path(root / "export", out, options=SpikeOptions(wbits=4, rotate=True).validate())
    with load(out, target="ort") as a, load(out, target="ort", mode="exact") as b:
        ids_a = a.generator().generate_ids(a.generator().prepare([sample_image()], ["describe"]), 4, stop_at_eos=False)
        ids_b = b.generator().generate_ids(b.generator().prepare([sample_image()], ["describe"]), 4, stop_at_eos=False)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_a_stream_read_by_another_op_is_refused():
    """A graph where the residual stream feeds something other than norms and Adds."""
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper
    from spikec.passes.rotate import rotate_graph

    n = 8
    g = np.ones(n, np.float32)
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["x", "inv"], ["xn"], name="n0"),
             helper.make_node("Mul", ["xn", "gamma"], ["y"], name="n1"),
             helper.make_node("Relu", ["x"], ["r"], name="stray")]
    for i, node in enumerate(nodes):  # the matchers want unique names
        node.name = node.name or f"k{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n]),
                               helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, n])],
                              [numpy_helper.from_array(np.float32(2), "two"),
                               numpy_helper.from_array(np.array([-1], np.int64), "axes"),
                               numpy_helper.from_array(np.float32(1e-6), "eps"), numpy_helper.from_array(g, "gamma")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    from spikec.passes import PASSES
    PASSES["shape-inference"]()(model)
    with pytest.raises(SpikecError, match="read by Relu node 'stray'"):
        rotate_graph(model)


def test_a_lone_graph_is_not_rotated(tmp_path, tiny_mlp):
    from spikec.compiler import compile_onnx
    with pytest.raises(SpikecError, match="compile the export folder"):
        compile_onnx(tiny_mlp, tmp_path / "o.onnx", pipeline=None, options=SpikeOptions(rotate=True))


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_rotation_keeps_the_function(name):
    """With --spike-attention, rotate also turns every attention product by the head
    dimension's Hadamard matrix (Q and K on the contraction; V and the output back): the
    float function is unchanged to rounding, every product of the LM is rotated."""
    root = _export(name)
    plain, rotated = root / "plain-att.sbin", root / "rotated-att.sbin"
    compile_path(root / "export", plain, pipeline=list(GENERIC_PIPELINE))
    report = compile_path(root / "export", rotated, pipeline=list(GENERIC_PIPELINE) + ["rotate"],
                          options=SpikeOptions(spike_attention=True))
    _, l0, t0 = _prefill(plain)
    _, l1, t1 = _prefill(rotated)
    np.testing.assert_allclose(l1, l0, rtol=0, atol=1e-4 * np.abs(l0).max())
    np.testing.assert_array_equal(t1, t0)
    att = report.extra["graphs"]["lm"]["rotate"]["attention"]
    assert att["products"] == 4 and not att["skipped"], att  # 2 layers x (Q K^T, P V)
    assert sorted(r["rotated"] for r in att["rotated"]) == ["contraction", "contraction", "output", "output"]


def test_attention_rotation_spiking_compile_stays_exact(tmp_path):
    """--rotate --spike-attention at W4: the rotated products are quantized and the ORT
    target's fused and exact modes agree bit for bit on the generated tokens."""
    out = tmp_path / "w4-att.sbin"
    root = _export("tiny-llava")
    report = compile_path(root / "export", out, options=SpikeOptions(wbits=4, rotate=True, spike_attention=True).validate())
    assert report.extra["graphs"]["lm"]["rotate"]["attention"]["products"] == 4
    with load(out, target="ort") as a, load(out, target="ort", mode="exact") as b:
        ids_a = a.generator().generate_ids(a.generator().prepare([sample_image()], ["describe"]), 4, stop_at_eos=False)
        ids_b = b.generator().generate_ids(b.generator().prepare([sample_image()], ["describe"]), 4, stop_at_eos=False)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_calibration_feeds_are_rotated_with_the_model():
    """The LM's calibration feeds come from the unrotated embedding and vision graphs; rotate
    turns them by the same Q, so what calibration measures on the rotated LM is what it
    measures on the original: MED (cosines between layer states, rotation invariant) is the
    same to rounding (before the fix it moved, e.g. 0.739 -> 0.998 on digits-llava)."""
    from spike_graphs import calib_folder

    root = _export("tiny-llava")
    calib = str(calib_folder())
    meds = []
    for rotate in (False, True):
        report = compile_path(root / "export", root / f"med-{rotate}.sbin",
                              options=SpikeOptions(wbits=4, rotate=rotate, calib=calib, act_scale="static").validate())
        lm = report.extra["graphs"]["lm"]
        meds.append([r["med"] for r in lm["med"]["layers"]])
        if rotate:
            assert lm["rotate"]["calibration_feeds_rotated"] == 2
    assert len(meds[0]) == 2 and all(m is not None for m in meds[0])
    np.testing.assert_allclose(meds[1], meds[0], atol=1e-4)


def test_rotated_vision_encoder_on_the_accelerator_matches_ort(tmp_path):
    """--rotate --isa on Qwen2-VL: the encoder's online Hadamards (sign Mul, Kronecker-factor
    MatMuls) are host ops between kernels on the fpga target; its greedy tokens equal the
    ORT target's (the same numerics on both)."""
    out = tmp_path / "rot-isa.sbin"
    root = _export("tiny-qwen2-vl")
    report = compile_path(root / "export", out, options=SpikeOptions(tv=3, tt=4, rotate=True).validate(), isa=True)
    assert report.extra["graphs"]["vision"]["rotate"]["encoder"]["online_hadamard"] == 4
    ids = {}
    for target in ("ort", "fpga"):
        with load(out, target=target) as m:
            g = m.generator()
            ids[target] = g.generate_ids(g.prepare([sample_image()], ["describe the image"]), 3, stop_at_eos=False)
    np.testing.assert_array_equal(ids["fpga"], ids["ort"])
