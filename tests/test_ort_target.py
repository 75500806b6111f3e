"""The ONNX Runtime target: compile an export folder to .sbin, run it, generate.

- fused == exact bit for bit, and the exact mode's spike counts are real;
- every spiking product on ORT equals the numpy reference given the same inputs;
- at T = 8 for both modalities, generation equals the fake-quantized model's tokens
  (float MatMul over the same codes: an independent formulation), on two architectures;
- the CLI: generation, raw tensors, stats, and clear errors.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
import pytest

from spike_graphs import exported, lm_feeds
from spikec import ops as sops
from spikec import reference as R
from spikec.compiler import compile_path
from spikec.frontend.export import sample_image
from spikec.passes.options import SpikeOptions
from spikec.runtime.model import load
from spikec.ort_lowering import lower_for_ort

ARCHS = ["tiny-llava", "tiny-qwen2-vl"]


@functools.cache
def compiled(name: str, tv: int = 3, tt: int = 4, tensor_bytes: int | None = None, wbits: int = 8) -> str:
    """A compiled .sbin; `tensor_bytes` lowers spikec.ir.BIG_TENSOR_BYTES so that the tiny
    model's weights are spilled while compiling and stored as mapped TENSOR sections."""
    import tempfile
    from pathlib import Path

    from spikec import ir as spir

    out = Path(tempfile.mkdtemp(prefix="spikec-test-sbin-")) / f"{name}-{tv}-{tt}-{tensor_bytes}-w{wbits}.sbin"
    with pytest.MonkeyPatch.context() as mp:
        if tensor_bytes is not None:
            mp.setattr(spir, "BIG_TENSOR_BYTES", tensor_bytes)
        compile_path(exported(name), out, options=SpikeOptions(tv=tv, tt=tt, wbits=wbits).validate())
    return str(out)




@pytest.mark.parametrize("name", ARCHS)
def test_fused_and_exact_are_bit_identical(name):
    path = compiled(name)
    with load(path, mode="fused") as fused, load(path, mode="exact") as exact:
        feeds = lm_feeds(fused)
        assert (feeds["modality"] == 1).any() and (feeds["modality"] == 0).any()
        for role, sub in (("lm", feeds),):
            a, b = fused.run(sub, graph=role), exact.run(sub, graph=role)
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        stats = exact.stats()
    s = stats["summary"]
    assert s["spikes"] > 0 and 0 < s["spike_rate"] < 1
    assert s["effective_timesteps_by_modality"] == {"text": 4.0, "vision": 3.0}
    n_text, n_vis = int((feeds["modality"] == 0).sum()), int((feeds["modality"] == 1).sum())
    assert s["effective_timesteps"] == pytest.approx((4 * n_text + 3 * n_vis) / (n_text + n_vis))


@pytest.mark.parametrize("tensor_bytes", [None, 1024], ids=["inline-weights", "mapped-weights"])
def test_every_spiking_product_on_ort_equals_the_reference(tensor_bytes):
    """Capture each SpikeEncode input and SpikeMatMul output on ORT; recompute with spikec.reference.
    With mapped weights the products read int8 codes from the .sbin's TENSOR sections."""
    path = compiled("tiny-llava", tensor_bytes=tensor_bytes)
    with load(path) as m:
        feeds = lm_feeds(m)
        model = m.sbin.model("lm")
        if tensor_bytes is not None:
            assert any(not v.const_value.numpy().flags.writeable for v in model.graph.initializers.values()
                       if v.const_value is not None and v.const_value.nbytes >= tensor_bytes)
    pairs = []
    for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
        enc = mm.inputs[0].producer()
        if enc is None or enc.op_type != sops.SPIKE_ENCODE or mm.inputs[3].const_value is None:
            continue
        pairs.append((enc, mm, enc.inputs[0].name, mm.outputs[0].name))
        for v in (enc.inputs[0], mm.outputs[0]):
            if v not in model.graph.outputs:
                model.graph.outputs.append(v)
    assert len(pairs) >= 7 * 2  # every linear layer of the 2-layer LM
    infos = [(enc, mm, x, y, mm.inputs[3].const_value.numpy(), mm.inputs[4].const_value.numpy(),
              mm.inputs[5].const_value.numpy() if len(mm.inputs) > 5 and mm.inputs[5] is not None else None,
              sops.get_timesteps(mm)) for enc, mm, x, y in pairs]
    lower_for_ort(model, "fused")
    import onnxruntime as ort

    from spikec import ir as spir

    sess = spir.ort_session(model)  # mapped weights reach onnxruntime as views
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))
    mod = feeds["modality"]
    for enc, mm, x, y, w_q, s_w, bias, T in infos:
        xv = outs[x]
        T_tok = np.asarray(T)[mod]
        s_x = R.scale_per_token(xv, T_tok + 1)  # the default (dynamic) activation scales
        want = R.spiking_linear(xv, s_x, w_q, s_w, bias, T_tok, where=mm.name)
        np.testing.assert_array_equal(outs[y], want, err_msg=mm.name)


@pytest.mark.parametrize("name", ARCHS)
def test_generation_at_T8_equals_fake_quantized_tokens(name):
    path = compiled(name, 8, 8)
    image = sample_image()
    with load(path, mode="fused") as spiking, load(path, mode="fakequant") as fake:
        ids_s = spiking.generator().generate_ids(spiking.generator().prepare([image], ["What is in the image?"]), 8)
        ids_f = fake.generator().generate_ids(fake.generator().prepare([image], ["What is in the image?"]), 8)
    assert ids_s.shape == (1, 8)
    np.testing.assert_array_equal(ids_s, ids_f)


@pytest.mark.parametrize("name, ortops", [("tiny-llava", True), ("tiny-qwen2-vl", True), ("tiny-llava", False)],
                         ids=["tiny-llava-ortops", "tiny-qwen2-vl-ortops", "tiny-llava-stock"])
def test_w4_decode_steps_take_the_one_token_graph(name, ortops, request, monkeypatch):
    """W4, fused: the language model's one-token calls go to its one-token graph
    (runtime/ort_target.py StatsSession, lower_for_ort(one_token=True)): on spikec's custom
    op where its library is built (runtime/ortops/), on stock operators with SPIKEC_ORTOPS=0;
    multi-token calls to the main graph; and a decode step's logits and KV cache equal the
    exact mode's spike planes bit for bit."""
    if ortops:
        request.getfixturevalue("ortops_library")
    else:
        monkeypatch.setenv("SPIKEC_ORTOPS", "0")
    path = compiled(name, wbits=4)
    with load(path, mode="fused") as fused, load(path, mode="exact") as exact:
        lm = fused.sessions["lm"]
        assert lm.one_token_session is not None and exact.sessions["lm"].one_token_session is None
        paths = {info["one_token"] for info in lm.layers.values() if "one_token" in info}
        assert paths == {"spikec.ortops.SpikeEncodeMatMulNBits" if ortops else "MatMulNBits"}, paths
        feeds = lm_feeds(fused)
        n = feeds["modality"].shape[1]
        head = {k: (v[..., : n - 1] if k == "position_ids" else v[:, : n - 1]) if k in
                ("inputs_embeds", "position_ids", "modality", "attention_mask") else v for k, v in feeds.items()}
        assert lm.session_for(head) is lm.session
        past = exact.sessions["lm"].run(None, head)[1:]
        step = {k: (v[..., n - 1:] if k == "position_ids" else v[:, n - 1:]) for k, v in feeds.items()
                if k in ("inputs_embeds", "position_ids", "modality")}
        step["attention_mask"] = feeds["attention_mask"]
        step.update(zip([k for k in feeds if k.startswith("past_key_values.")], past))
        assert lm.session_for(step) is lm.one_token_session
        got, want = lm.run(None, step), exact.sessions["lm"].run(None, step)
        assert len(got) == len(want) > 1
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


def test_sbin_is_deterministic(tmp_path):
    a, b = tmp_path / "a.sbin", tmp_path / "b.sbin"
    opts = SpikeOptions(tv=3, tt=4).validate()
    compile_path(exported("tiny-llava"), a, options=opts)
    compile_path(exported("tiny-llava"), b, options=opts)
    assert a.read_bytes() == b.read_bytes()


def test_run_cli_generation_inputs_and_errors(run_cli, tmp_path):
    path = compiled("tiny-llava")
    img = tmp_path / "img.png"
    sample_image().save(img)
    r = run_cli("run", path, "--image", str(img), "--prompt", "What is in the image?", "--max-new-tokens", "3", "--stats")
    assert r.code == 0, r.err
    assert "effective timesteps per token" in r.out and "SOPs" in r.out
    with load(path) as m:
        feeds = lm_feeds(m)
    np.savez(tmp_path / "in.npz", **feeds)
    r = run_cli("run", path, "--inputs", str(tmp_path / "in.npz"), "--graph", "lm", "-o", str(tmp_path / "out.npz"))
    assert r.code == 0, r.err
    with np.load(tmp_path / "out.npz") as out, load(path) as m:
        np.testing.assert_array_equal(out["logits"], m.run(feeds, graph="lm")["logits"])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = run_cli("run", path, "--image", str(bad), "--prompt", "x")
    assert r.code != 0 and "not an image" in r.err and "Traceback" not in r.err
    r = run_cli("run", path, "--inputs", str(tmp_path / "in.npz"))
    assert r.code != 0 and "--graph" in r.err
    for bad_id in (-1, 2):  # onnxruntime's Gather would take -1 as the last modality, silently
        feeds_bad = dict(feeds, modality=np.where(np.arange(feeds["modality"].shape[1]) == 3, bad_id,
                                                  feeds["modality"]).astype(np.int64))
        np.savez(tmp_path / "bad_mod.npz", **feeds_bad)
        r = run_cli("run", path, "--inputs", str(tmp_path / "bad_mod.npz"), "--graph", "lm", "-o", str(tmp_path / "o.npz"))
        assert r.code != 0 and f"input 'modality' holds modality id {bad_id}" in r.err and "Traceback" not in r.err
        assert not (tmp_path / "o.npz").exists()
    r = run_cli("run", str(tmp_path / "in.npz"), "--inputs", str(tmp_path / "in.npz"))
    assert r.code != 0 and "bad magic" in r.err
    r = run_cli("inspect", path)
    assert r.code == 0 and '"vision": 3' in r.out and "SpikeMatMul" in r.out
