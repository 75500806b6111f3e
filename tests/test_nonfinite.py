"""Non-finite numbers: the one rule for NaN/inf activations (docs/passes.md, "Non-finite
activations") on the reference and the three ORT modes, and non-finite weights refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spike_graphs import run_passes
from spikec import ir as spir
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.ort_lowering import STATS_PREFIX, lower_for_ort

K, M = 24, 10
MODES = ("fused", "exact", "fakequant")


# ---------------------------------------------------------------- the reference


def test_encode_tokens_rule():
    x = np.array([[1.0, -2.0, 0.5], [np.nan, 1.0, 2.0], [3.0, np.inf, 0.0], [-np.inf, 0.0, 1.0]], np.float32)
    s = R.scale_per_token(x, 4)
    assert s[0, 0] == np.float32(2.0) / np.float32(7) and np.isnan(s[1:, 0]).all()
    q, s2 = R.encode_tokens(x, s, 7)
    assert q.dtype == np.int32 and q[1:].tolist() == [[0, 0, 0]] * 3
    assert q[0].tolist() == R.quantize(x[:1], s[:1], 7)[0].tolist()
    np.testing.assert_array_equal(s2, s)
    # static: one scalar scale; bad tokens get NaN, good ones keep it
    q, s3 = R.encode_tokens(x, np.float32(0.5), 7)
    assert s3.shape == (4, 1) and s3[0, 0] == np.float32(0.5) and np.isnan(s3[1:, 0]).all()
    assert q[0].tolist() == [2, -4, 1] and not q[1:].any()
    # all finite: unchanged, the scalar stays a scalar
    q, s4 = R.encode_tokens(x[:1], np.float32(0.5), 7)
    assert np.ndim(s4) == 0 and q.tolist() == [[2, -4, 1]]


def test_encode_tensor_rule():
    b = np.array([[1.0, -4.0], [2.0, 0.0]], np.float32)
    q, s = R.encode_tensor(b, 8)
    assert s == np.float32(4.0) / np.float32(127) and q.tolist() == [[32, -127], [64, 0]]
    for bad in (np.nan, np.inf, -np.inf):
        b2 = b.copy()
        b2[1, 1] = bad
        q, s = R.encode_tensor(b2, 8)
        assert np.isnan(s) and not q.any()


@pytest.mark.parametrize("spiking", [True, False])
def test_linear_rows_nan_others_unchanged(spiking):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    w = rng.standard_normal((K, M)).astype(np.float32)
    s_w = R.scale_per_channel(w, 8)
    w_q = R.quantize(w, s_w, 127)
    bias = rng.standard_normal(M).astype(np.float32)
    T = np.array([[4, 3, 4, 3, 4], [3, 3, 4, 4, 3]])
    fn = R.spiking_linear if spiking else R.fake_quant_linear
    clean = fn(x, R.scale_per_token(x, T + 1), w_q, s_w, bias, T)
    x[0, 1, 0], x[1, 2, K - 1], x[1, 4, K // 2] = np.nan, np.inf, -np.inf
    y = fn(x, R.scale_per_token(x, T + 1), w_q, s_w, bias, T)
    bad = np.zeros((2, 5), bool)
    bad[0, 1] = bad[1, 2] = bad[1, 4] = True
    assert np.isnan(y[bad]).all() and not np.isnan(y[~bad]).any()
    np.testing.assert_array_equal(y[~bad], clean[~bad])


# ---------------------------------------------------------------- graphs: reference == fused == exact == fakequant


def _float_linear(with_modality: bool) -> ir.Model:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((K, M)).astype(np.float32)
    b = rng.standard_normal(M).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["t"], name="fc"), helper.make_node("Add", ["t", "b"], ["y"], name="fc_bias")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])]
    if with_modality:  # an input the float graph ignores, as the exported LM's
        inputs.append(helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"]))
        nodes.append(helper.make_node("Identity", ["modality"], ["mod_out"], name="keep"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", M])]
    if with_modality:
        outputs.append(helper.make_tensor_value_info("mod_out", TensorProto.INT64, ["b", "s"]))
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


def _feeds(seed: int, with_modality: bool) -> dict:
    rng = np.random.default_rng(seed)
    f = {"x": (1.5 * rng.standard_normal((2, 7, K))).astype(np.float32)}
    if with_modality:
        f["modality"] = rng.integers(0, 2, (2, 7)).astype(np.int64)
    return f


BAD = [((0, 0, 0), np.nan), ((0, 3, K - 1), np.inf), ((1, 2, K // 2), -np.inf), ((1, 6, 5), np.nan),
       ((1, 6, 6), np.inf)]


def _run_lowered(model: ir.Model, feeds: dict, mode: str) -> dict:
    lower_for_ort(model, mode)
    sess = ort.InferenceSession(spir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: v for k, v in feeds.items() if k in names})))


@pytest.mark.parametrize("neuron", ["tc-lif", "if"])
@pytest.mark.parametrize("scale", ["dynamic", "static"])
@pytest.mark.parametrize("with_modality", [True, False])
def test_nan_inf_tokens_identical_on_every_mode(neuron, scale, with_modality):
    calib = [_feeds(s, with_modality) for s in (10, 11)]
    if with_modality:
        for f in calib:
            f["modality"][0, :3], f["modality"][1, :3] = 0, 1  # both modalities calibrated
    model = _float_linear(with_modality)
    run_passes(model, ["shape-inference", "quantize", "spike-rewrite"], calib if scale == "static" else None,
               act_scale=scale, calib="npz" if scale == "static" else None, neuron=neuron, tv=3, tt=4)
    proto = spir.to_proto(model)
    feeds = _feeds(2, with_modality)
    clean = sops.run_reference(proto, feeds)[0]
    for idx, v in BAD:
        feeds["x"][idx] = v
    ref = sops.run_reference(proto, feeds)[0]
    bad = ~np.isfinite(feeds["x"]).all(-1)
    assert bad.sum() == 4
    assert np.isnan(ref[bad]).all() and np.isfinite(ref[~bad]).all()
    np.testing.assert_array_equal(ref[~bad], clean[~bad])  # the other tokens do not change
    for mode in MODES:
        out = _run_lowered(ir.from_proto(proto), feeds, mode)
        np.testing.assert_array_equal(out["y"], ref, err_msg=mode)  # NaN positions equal, the rest bit for bit
        if mode == "exact" and neuron == "tc-lif":
            # a bad token fires no spike: its spikes are those of an all-zero row
            zero = {k: v.copy() for k, v in feeds.items()}
            zero["x"][bad] = 0.0
            stats = _run_lowered(ir.from_proto(proto), zero, "exact")
            key = next(k for k in out if k.startswith(STATS_PREFIX))
            np.testing.assert_array_equal(out[key], stats[key])


def test_whole_row_nan_and_every_token_nan():
    model = _float_linear(False)
    run_passes(model, ["shape-inference", "quantize", "spike-rewrite"], act_scale="dynamic")
    proto = spir.to_proto(model)
    feeds = _feeds(3, False)
    feeds["x"][:] = np.nan
    ref = sops.run_reference(proto, feeds)[0]
    assert np.isnan(ref).all()
    for mode in MODES:
        np.testing.assert_array_equal(_run_lowered(ir.from_proto(proto), feeds, mode)["y"], ref, err_msg=mode)


def _float_attention() -> ir.Model:
    g = helper.make_graph([helper.make_node("MatMul", ["a", "bt"], ["y"], name="qk")], "att",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5, K]),
                           helper.make_tensor_value_info("bt", TensorProto.FLOAT, [2, K, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 6])])
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("where", ["left", "right", "none"])
def test_attention_product_rule(where):
    model = _float_attention()
    run_passes(model, ["shape-inference", "quantize", "spike-rewrite"], spike_attention=True)
    proto = spir.to_proto(model)
    assert any(n.op_type == "SpikeCode" for n in proto.graph.node)
    rng = np.random.default_rng(4)
    feeds = {"a": rng.standard_normal((2, 5, K)).astype(np.float32), "bt": rng.standard_normal((2, K, 6)).astype(np.float32)}
    if where == "left":
        feeds["a"][1, 3, 2] = np.inf
    elif where == "right":
        feeds["bt"][0, 7, 1] = np.nan  # one per-tensor scale: the whole product is NaN
    ref = sops.run_reference(proto, feeds)[0]
    if where == "left":
        assert np.isnan(ref[1, 3]).all() and np.isfinite(np.delete(ref.reshape(10, 6), 8, axis=0)).all()
    elif where == "right":
        assert np.isnan(ref).all()
    else:
        assert np.isfinite(ref).all()
    for mode in MODES:
        np.testing.assert_array_equal(_run_lowered(ir.from_proto(proto), feeds, mode)["y"], ref, err_msg=mode)


# ---------------------------------------------------------------- non-finite weights


def _weights_graph(kind: str, value: float) -> ir.Model:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((K, M)).astype(np.float32)
    g_norm = np.ones(K, np.float32)
    emb = rng.standard_normal((12, K)).astype(np.float32)
    bias = rng.standard_normal(M).astype(np.float32)
    mask = np.zeros((1, M), np.float32)
    {"linear": w, "norm": g_norm, "embed": emb, "bias": bias, "mask": mask}[kind].reshape(-1)[3] = value
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed_tokens"),
             helper.make_node("Mul", ["e", "g"], ["n"], name="norm_weight"),
             helper.make_node("MatMul", ["n", "W"], ["t"], name="down_proj"),
             helper.make_node("Add", ["t", "bias"], ["u"], name="down_bias"),
             helper.make_node("Add", ["u", "mask"], ["y"], name="add_mask")]
    inits = [numpy_helper.from_array(a, n) for a, n in ((emb, "model.embed_tokens.weight"), (g_norm, "model.norm.weight"),
                                                        (w, "model.layers.0.mlp.down_proj.weight"), (bias, "model.down_proj.bias"),
                                                        (mask, "mask"))]
    for node, a in zip(nodes, ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.down_proj.weight",
                               "model.down_proj.bias", "mask")):
        node.input[0 if node.name == "embed_tokens" else 1] = a
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["s"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["s", M])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("kind,value,name", [
    ("linear", np.nan, "model.layers.0.mlp.down_proj.weight"),
    ("linear", -np.inf, "model.layers.0.mlp.down_proj.weight"),
    ("norm", np.nan, "model.norm.weight"),
    ("norm", np.inf, "model.norm.weight"),
    ("embed", np.inf, "model.embed_tokens.weight"),
    ("bias", np.nan, "model.down_proj.bias"),
    ("mask", np.nan, "mask"),
])
def test_nonfinite_weights_refused_at_compile(kind, value, name):
    kind_text = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    with pytest.raises(SpikecError, match=rf"initializer '{name}'.*holds {kind_text.replace('+', '[+]')} at index"):
        run_passes(_weights_graph(kind, value), ["fold-constants"])


def test_minus_inf_mask_allowed_and_quantize_checks_weights():
    run_passes(_weights_graph("mask", -np.inf), ["fold-constants", "shape-inference", "quantize"])  # a mask: fine
    # without fold-constants, quantize itself refuses a linear weight / bias
    with pytest.raises(SpikecError, match=r"quantize: node 'down_proj': weight 'model.layers.0.mlp.down_proj.weight' holds NaN at index \[0, 3\]"):
        run_passes(_weights_graph("linear", np.nan), ["shape-inference", "quantize"])
    with pytest.raises(SpikecError, match=r"quantize: node 'down_proj': bias holds \+inf at index \[3\]"):
        run_passes(_weights_graph("bias", np.inf), ["shape-inference", "quantize"])


def test_first_nonfinite_is_chunked(monkeypatch):
    from spikec.passes import generic

    monkeypatch.setattr(generic, "FINITE_CHUNK", 7)
    a = np.zeros((5, 9), np.float32)
    a[3, 4], a[4, 8] = np.inf, np.nan
    assert generic.first_nonfinite(a) == ((3, 4), np.inf, 2)
    index, value, count = generic.first_nonfinite(a, nan_only=True)
    assert index == (4, 8) and np.isnan(value) and count == 1
    assert generic.first_nonfinite(np.ones(20, np.float16)) is None


# ---------------------------------------------------------------- export: the checkpoint's own name


@pytest.mark.parametrize("key,index,value", [
    ("language_model.model.layers.1.self_attn.q_proj.weight", (3, 5), np.nan),
    ("language_model.model.layers.1.input_layernorm.weight", (7,), np.nan),
    ("language_model.model.embed_tokens.weight", (32, 0), np.inf),
])
def test_nonfinite_checkpoint_refused_at_export(tmp_path, key, index, value):
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from spikec.frontend.loading import load

    src = Path(__file__).resolve().parents[1] / "models" / "digits-llava"
    dst = tmp_path / "ck"
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    assert key in sd, f"the bundled checkpoint names its tensors otherwise ({key} not found): update the test"
    sd[key][index] = float(value)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SpikecError, match=rf"tensor {key} in model.safetensors \(model parameter .*\) holds NaN or inf"):
        load(dst)
