"""Importing published int4 checkpoints (issue 16 item 3): spikec/frontend/quantized.py.

Per format, on tiny models of two families (tiny-llava, tiny-qwen2-vl):
- compressed-tensors `pack-quantized` (symmetric and asymmetric): the fixture is made by
  the library itself (ModelCompressor, saved with save_pretrained); the reference is
  transformers' own loader of that folder (the compressed-tensors quantizer, decompressing
  on the first forward in float32);
- GPTQ (v1 and v2 zero points, with and without act-order) and AWQ GEMM: fixtures written
  to the published layouts by the packers below (written from the formats' descriptions,
  not from spikec's code), checked against a dequantization computed here from the
  packer's own integers;
and for each: the exported float graph (ORT) gives the reference's logits within float
rounding; the compiled graph's QuantLinear codes and scales are the checkpoint's exactly;
the spiking graph (default pipeline) equals the fake-quantized one bit for bit on the
reference evaluator. Malformed configs and tensors are refused with SpikecErrors naming
the file and the field or tensor.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"

import torch  # noqa: E402

from spikec import ops  # noqa: E402
from spikec import ir as spir  # noqa: E402
from spikec.compiler import compile_folder  # noqa: E402
from spikec.errors import SpikecError  # noqa: E402
from spikec.frontend.export import export, sample_image  # noqa: E402
from spikec.frontend.generate import OrtGenerator  # noqa: E402
from spikec.frontend.tiny import build_tiny  # noqa: E402
from spikec.passes import GENERIC_PIPELINE  # noqa: E402
from spikec.passes.options import SpikeOptions  # noqa: E402

G = 16  # group size: divides every K of the tiny models (32, 64, 128)
# the language model's linear layers (the vision towers stay float in the GPTQ/AWQ fixtures)
LM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOL = 1e-4  # of the logits' range: float rounding (ORT vs torch)


# ---------------------------------------------------------------- fixtures: compressed-tensors


def make_ct(name: str, out, symmetric: bool, dtype=torch.bfloat16):
    """A compressed-tensors pack-quantized checkpoint made by the library: a `dtype` model (its
    scales in that dtype), every Linear but lm_head int4 group-wise (min-max scales; codes
    -8..7, zero points -8..7)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)

    model, proc = build_tiny(name)
    model = model.to(dtype)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=G)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                            ignore=["lm_head"])
    apply_quantization_config(model, qc)
    for _, m in model.named_modules():
        if not hasattr(m, "weight_scale"):
            continue
        w = m.weight.data.float()
        M, K = w.shape
        wg = w.reshape(M, K // G, G)
        if symmetric:
            m.weight_scale.data = (wg.abs().amax(-1) / 7.5).clamp(min=1e-4).to(m.weight_scale.dtype)
        else:
            lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
            s = ((hi - lo) / 15).clamp(min=1e-4).to(m.weight_scale.dtype)
            m.weight_scale.data = s
            m.weight_zero_point.data = (-8 - torch.round(lo / s.float())).clamp(-8, 7).to(m.weight_zero_point.dtype)
    comp = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp.compress_model(model)
        model.save_pretrained(out)
    comp.update_config(str(out))
    proc.save_pretrained(out)
    return out


def ct_reference(folder, dequantize: bool):
    """transformers' own model of a compressed-tensors folder, in float32. dequantize=False:
    compressed load, decompressed (compressed-tensors' decompress_model) in float32 on the
    first forward: W = float32(q - z) * float32(s), exact. dequantize=True decompresses at
    load in the scales' stored dtype (a bf16 checkpoint's W rounded to bf16), so it is used
    for float32 checkpoints only; transformers 5.24's compressed load refuses asymmetric
    schemes (its shape check expects the unpacked weight_zero_point)."""
    from transformers import AutoModelForImageTextToText, CompressedTensorsConfig

    model = AutoModelForImageTextToText.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager",
        quantization_config=CompressedTensorsConfig(dequantize=dequantize))
    return model.eval()


def ct_codes(folder):
    """module (checkpoint key prefix) -> (codes [K, M], scales float32 [n, M]) unpacked here:
    nibble i of word j of row m is element 8j + i, stored + 8; zero points packed along M."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for key in f.keys():
            if not key.endswith(".weight_packed"):
                continue
            mod = key[: -len(".weight_packed")]
            words = f.get_tensor(key).numpy().view(np.uint32)
            q = np.stack([(words >> (4 * i)) & 15 for i in range(8)], -1).reshape(words.shape[0], -1)
            q = q.astype(np.int16) - 8
            s = f.get_tensor(mod + ".weight_scale").float().numpy()
            if mod + ".weight_zero_point" in f.keys():
                zw = f.get_tensor(mod + ".weight_zero_point").numpy().view(np.uint32)  # [M/8, n]
                z = np.stack([(zw >> (4 * i)) & 15 for i in range(8)], 1).reshape(-1, zw.shape[1]).astype(np.int16) - 8
                q = q - np.repeat(z, G, axis=1)
            out[mod] = (q.T, s.T)
    return out


# ---------------------------------------------------------------- fixtures: GPTQ and AWQ packers


def _quantize_groups(w: np.ndarray, g_idx: np.ndarray, n: int, symmetric: bool):
    """w float32 [K, M] -> (q uint 0..15 [K, M], z 0..15 [n, M], scales fp16 [n, M]) by group."""
    K, M = w.shape
    scales = np.zeros((n, M), np.float16)
    zeros = np.zeros((n, M), np.int64)
    for g in range(n):
        rows = w[g_idx == g]
        if symmetric:
            s = (np.abs(rows).max(0) * 2 / 15).astype(np.float16)
            z = np.full(M, 8)
        else:
            lo, hi = np.minimum(rows.min(0), 0), np.maximum(rows.max(0), 0)
            s = ((hi - lo) / 15).astype(np.float16)
            s = np.maximum(s, np.float16(1e-3))
            z = np.clip(np.round(-lo / s.astype(np.float32)), 0, 15).astype(np.int64)
        scales[g], zeros[g] = np.maximum(s, np.float16(1e-3)), z
    q = np.clip(np.round(w / scales[g_idx].astype(np.float32)) + zeros[g_idx], 0, 15).astype(np.int64)
    return q, zeros, scales


def _pack_rows(v: np.ndarray) -> np.ndarray:
    """[R, C] of 0..15 -> int32 [R/8, C]: element 8i + j in bits 4j..4j+3 of word i (GPTQ qweight)."""
    r, c = v.shape
    v = v.reshape(r // 8, 8, c).astype(np.uint32)
    return sum(v[:, j] << np.uint32(4 * j) for j in range(8)).astype(np.uint32).view(np.int32)


def _pack_cols(v: np.ndarray, order=tuple(range(8))) -> np.ndarray:
    """[R, C] of 0..15 -> int32 [R, C/8]: nibble i of word c holds column 8c + order[i]
    (GPTQ qzeros: order 0..7; AWQ: [0, 2, 4, 6, 1, 3, 5, 7])."""
    r, c = v.shape
    v = v.reshape(r, c // 8, 8).astype(np.uint32)
    return sum(v[:, :, order[i]] << np.uint32(4 * i) for i in range(8)).astype(np.uint32).view(np.int32)


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def make_packed(name: str, out, fmt: str, *, symmetric=False, act_order=False, seed=0):
    """A GPTQ ("gptq" v1 / "gptq_v2") or AWQ ("awq") checkpoint of a tiny model: fp16, the
    language model's linear layers int4 (group size G). Returns (folder, float32 reference
    model holding the dequantization computed here, {checkpoint module: (codes [K, M] in the
    order the graph reads the rows, scales float32 [n, M])})."""
    from safetensors.torch import load_file, save_file

    model, proc = build_tiny(name)
    model = model.to(torch.float16)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    ref = model.to(torch.float32).eval()
    sd = load_file(str(out / "model.safetensors"))
    rng = np.random.default_rng(seed)
    expected = {}
    params = dict(ref.named_parameters())
    for key in list(sd):
        parts = key.split(".")
        if not (key.endswith(".weight") and parts[-2] in LM_LINEARS and "layers" in parts and "visual" not in key
                and "vision" not in key):
            continue
        mod = key[: -len(".weight")]
        w = sd.pop(key).float().numpy().T.copy()  # [K, M]
        K, M = w.shape
        n = K // G
        if act_order:
            g_idx = np.empty(K, np.int64)
            g_idx[rng.permutation(K)] = np.arange(K) // G
        else:
            g_idx = np.arange(K) // G
        q, z, s = _quantize_groups(w, g_idx, n, symmetric)
        codes = q - z[g_idx]
        deq = codes.astype(np.float32) * s[g_idx].astype(np.float32)  # the reference's weight, [K, M]
        fqn = next(f for f in params if f.endswith(".".join(parts[-5:])) and params[f].shape == (M, K)
                   and _same_layer(f, key))
        params[fqn].data = torch.from_numpy(np.ascontiguousarray(deq.T))
        perm = np.argsort(g_idx, kind="stable")
        expected[fqn[: -len(".weight")]] = (codes[perm], s.astype(np.float32))
        if fmt == "awq":
            sd[mod + ".qweight"] = torch.from_numpy(_pack_cols(q, AWQ_ORDER))
            sd[mod + ".qzeros"] = torch.from_numpy(_pack_cols(z, AWQ_ORDER))
        else:
            sd[mod + ".qweight"] = torch.from_numpy(_pack_rows(q))
            sd[mod + ".qzeros"] = torch.from_numpy(_pack_cols(z - 1 if fmt == "gptq" else z))
            sd[mod + ".g_idx"] = torch.from_numpy(g_idx.astype(np.int32))
        sd[mod + ".scales"] = torch.from_numpy(s)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    if fmt == "awq":
        cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": G, "version": "gemm",
                                      "zero_point": True}
    else:
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": G, "desc_act": act_order,
                                      "sym": symmetric, "checkpoint_format": fmt}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out, ref, expected


def _same_layer(fqn: str, key: str) -> bool:
    """A model parameter name and a checkpoint key name the same layer (layer index and path tail)."""
    a, b = fqn.split("."), key.split(".")
    vision = lambda n: "vision" in n or "visual" in n  # noqa: E731
    return a[-4:] == b[-4:] and vision(fqn) == vision(key)


# ---------------------------------------------------------------- helpers


def _export(src, tmp_path):
    out = tmp_path / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(str(src), out)
    return out


def _feeds(gen):
    po = gen.prepare([sample_image(40, 56)], ["What digit is this?"])
    embeds, mask, pos, modality, _ = gen.prefill_inputs(po)
    return po, embeds, mask, pos, modality


def _ort_vs_torch(outdir, ref):
    gen = OrtGenerator(outdir)
    po, embeds, mask, pos, modality = _feeds(gen)
    logits, _ = gen.lm(embeds, mask, pos, modality, gen.empty_past(embeds.shape[0]))
    with torch.no_grad():
        if hasattr(ref.model, "rope_deltas"):
            ref.model.rope_deltas = None
        want = ref(**po).logits.numpy()
    diff = float(np.abs(logits - want).max())
    scale = float(np.abs(want).max())
    assert diff <= TOL * scale, f"logits differ by {diff:.3g} (range {scale:.3g})"
    return gen, (embeds, mask, pos, modality)


def _lm_feeds(gen, inputs, manifest):
    embeds, mask, pos, modality = inputs
    feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, "modality": modality}
    for name, past in zip([n for n in manifest["graphs"]["lm"]["inputs"] if n["name"].startswith("past")],
                          gen.empty_past(embeds.shape[0])):
        feeds[name["name"]] = past
    return feeds


def _compile_and_check(outdir, tmp_path, gen, inputs, expected=None, check_spiking=True):
    """Compile to QuantLinear and to spiking; imported codes/scales equal `expected` (module ->
    (codes, scales)) exactly; spiking == fake-quantized bit for bit. Returns the quantize report."""
    fq_dir, sp_dir = tmp_path / "fq", tmp_path / "sp"
    opts = SpikeOptions(act_scale="dynamic")
    report = compile_folder(outdir, fq_dir, pipeline=GENERIC_PIPELINE + ("quantize",), options=opts)
    q = report.extra["graphs"]["lm"]["quantize"]
    rows = {r["name"]: r for r in q["layers"]}
    fq = spir.load_model(fq_dir / "lm.onnx")
    nodes = {n.name: n for n in ops.spikec_nodes(fq, ops.QUANT_LINEAR)}
    imported = [r for r in rows.values() if str(r.get("weight_method", "")).startswith("imported:")]
    assert imported and q["imported"]["layers"] == len(imported)
    for module, (codes, scales) in (expected or {}).items():
        if module not in nodes:
            continue
        node = nodes[module]
        w_q, s_w = node.inputs[2].const_value.numpy(), node.inputs[3].const_value.numpy()
        assert np.array_equal(w_q, codes), module
        assert np.array_equal(s_w.reshape(-1, s_w.shape[-1]), scales), module
        assert rows[module]["group_size"] == G and rows[module]["wbits"] == (4 if np.abs(codes).max() <= 7 else 8)
    if expected:
        assert sum(m in nodes for m in expected) == len(imported)
    if not check_spiking:
        return q
    compile_folder(outdir, sp_dir, options=opts)
    sp = spir.load_model(sp_dir / "lm.onnx")
    assert not ops.spikec_nodes(sp, ops.QUANT_LINEAR)
    manifest = json.loads((outdir / "manifest.json").read_text())
    feeds = _lm_feeds(gen, inputs, manifest)
    a, b = ops.run_reference(fq, feeds)[0], ops.run_reference(sp, feeds)[0]
    assert np.isfinite(a).all() and np.array_equal(a, b)
    return q


# ---------------------------------------------------------------- compressed-tensors


@pytest.mark.parametrize("name,symmetric", [("tiny-llava", True), ("tiny-qwen2-vl", False),
                                            pytest.param("tiny-llava", False, marks=pytest.mark.slow),
                                            pytest.param("tiny-qwen2-vl", True, marks=pytest.mark.slow)])
def test_compressed_tensors_pack_quantized(tmp_path, name, symmetric):
    # symmetric: bf16 scales, transformers' compressed load; asymmetric: float32 scales,
    # transformers' dequantize-at-load path (see ct_reference)
    ckpt = make_ct(name, tmp_path / "ckpt", symmetric, torch.bfloat16 if symmetric else torch.float32)
    outdir = _export(ckpt, tmp_path)
    m = json.loads((outdir / "manifest.json").read_text())
    assert m["quantization"]["format"] == "compressed-tensors:pack-quantized"
    assert set(m["quantization"]["graphs"]) == {"vision", "lm"}
    gen, inputs = _ort_vs_torch(outdir, ct_reference(ckpt, dequantize=not symmetric))
    # the checkpoint's codes and scales of the language model's layers, by the model's names
    expected = {"model.language_model." + key[key.index("layers."):]: v for key, v in ct_codes(ckpt).items()
                if "layers." in key and "vision" not in key and "visual" not in key}
    assert len(expected) == 14
    q = _compile_and_check(outdir, tmp_path, gen, inputs, expected)
    assert all(r["weight_method"] == "imported:compressed-tensors:pack-quantized"
               for r in q["layers"] if r["name"] != "lm_head" and r["kind"] == "linear")


# ---------------------------------------------------------------- GPTQ and AWQ


@pytest.mark.parametrize("name,fmt,symmetric,act_order", [
    ("tiny-llava", "gptq", True, False),
    ("tiny-qwen2-vl", "gptq_v2", False, True),
    pytest.param("tiny-llava", "gptq", False, True, marks=pytest.mark.slow),
    pytest.param("tiny-qwen2-vl", "gptq", True, False, marks=pytest.mark.slow),
    pytest.param("tiny-llava", "gptq_v2", False, False, marks=pytest.mark.slow),
])
def test_gptq(tmp_path, name, fmt, symmetric, act_order):
    ckpt, ref, expected = make_packed(name, tmp_path / "ckpt", fmt, symmetric=symmetric, act_order=act_order)
    outdir = _export(ckpt, tmp_path)
    gen, inputs = _ort_vs_torch(outdir, ref)
    import onnx_ir as ir

    lm = ir.load(outdir / "lm.onnx")
    gathers = [n for n in lm.graph if n.op_type == "Gather" and n.name.endswith(".act_order")]
    assert len(gathers) == (7 * 2 if act_order else 0)
    q = _compile_and_check(outdir, tmp_path, gen, inputs, expected)
    assert {r["weight_method"] for r in q["layers"] if r["name"] in expected} == {f"imported:{fmt}"}
    if act_order:  # the float model `spikec eval` loads (not streamed): the same dequantized weights
        from spikec.frontend.loading import load

        loaded = load(str(ckpt))
        got = dict(loaded.model.named_parameters())
        for fqn, p in ref.named_parameters():
            assert torch.equal(got[fqn], p), fqn


@pytest.mark.parametrize("name", ["tiny-llava", pytest.param("tiny-qwen2-vl", marks=pytest.mark.slow)])
def test_awq_gemm(tmp_path, name):
    ckpt, ref, expected = make_packed(name, tmp_path / "ckpt", "awq")
    outdir = _export(ckpt, tmp_path)
    gen, inputs = _ort_vs_torch(outdir, ref)
    _compile_and_check(outdir, tmp_path, gen, inputs, expected)


# ---------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def gptq_ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gptq") / "ckpt"
    make_packed("tiny-llava", folder, "gptq_v2", act_order=True)
    return folder


def _variant(src, dst, *, config=None, tensors=None):
    """A copy of checkpoint `src` with quantization_config fields replaced (`config`: dict,
    None values delete) and tensors replaced (`tensors`: {key suffix: fn(tensor) -> tensor})."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        qc = cfg["quantization_config"] if not isinstance(config, str) else None
        if isinstance(config, str):
            cfg["quantization_config"] = config
        else:
            for k, v in config.items():
                if v is None:
                    qc.pop(k, None)
                else:
                    qc[k] = v
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors:
        sd = load_file(str(dst / "model.safetensors"))
        for suffix, fn in tensors.items():
            key = next(k for k in sorted(sd) if k.endswith(suffix))
            new = fn(sd[key]) if fn is not None else None
            if new is None:
                del sd[key]
            else:
                sd[key] = new
        save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _set_nibble(t, value):
    t = t.clone()
    a = t.numpy().view(np.uint32)
    a[0, 0] = (a[0, 0] & ~np.uint32(0xF)) | np.uint32(value)
    return t


BAD = [
    ({"bits": 8}, "config.json: quantization_config: field 'bits' is 8"),
    ({"bits": "4"}, "field 'bits' has the wrong type"),
    ({"quant_method": "bitsandbytes"}, "quant_method 'bitsandbytes' is not supported"),
    ({"group_size": 0}, "field 'group_size' is 0"),
    ({"group_size": 64}, "group size of 16, but quantization_config.group_size is 64"),
    ({"checkpoint_format": "marlin"}, "field 'checkpoint_format' is 'marlin'"),
    ("not an object", "quantization_config: must be an object"),
]


@pytest.mark.parametrize("config,message", BAD)
def test_refuses_malformed_configs(gptq_ckpt, tmp_path, config, message):
    bad = _variant(gptq_ckpt, tmp_path / "bad", config=config)
    with pytest.raises(SpikecError, match=message.replace("(", r"\(").replace("[", r"\[")):
        export(str(bad), tmp_path / "out")
    assert not (tmp_path / "out").exists()


BAD_TENSORS = [
    ("q_proj.qweight", lambda t: t[:-1].clone(), "tensor .*q_proj.qweight has shape"),
    ("q_proj.qweight", lambda t: t.to(torch.int64), "q_proj.qweight has dtype I64"),
    ("q_proj.qzeros", None, "tensor qzeros is missing"),
    ("q_proj.scales", lambda t: t * 0, "holds a scale <= 0"),
    ("q_proj.scales", lambda t: t * float("nan"), "holds NaN or inf"),
    ("q_proj.g_idx", lambda t: t.clamp(max=0), "group 0 has 32 rows, not 16"),
    ("q_proj.g_idx", lambda t: t + 5, "group indices must lie in 0..1"),
]


@pytest.mark.parametrize("suffix,fn,message", BAD_TENSORS)
def test_refuses_malformed_tensors(gptq_ckpt, tmp_path, suffix, fn, message):
    bad = _variant(gptq_ckpt, tmp_path / "bad", tensors={suffix: fn})
    with pytest.raises(SpikecError, match=message):
        export(str(bad), tmp_path / "out")


def test_refuses_gptq_v1_zero_point_16(gptq_ckpt, tmp_path):
    bad = _variant(gptq_ckpt, tmp_path / "bad", config={"checkpoint_format": "gptq"},
                   tensors={"q_proj.qzeros": lambda t: _set_nibble(t, 15)})
    with pytest.raises(SpikecError, match="stored zero point of 15 in the gptq .v1. format"):
        export(str(bad), tmp_path / "out")


def test_refuses_compressed_tensors_config_errors(tmp_path):
    base = make_ct("tiny-llava", tmp_path / "ct", True)
    cases = [
        (lambda qc: qc["config_groups"]["group_0"]["weights"].update(num_bits=8), "field 'num_bits' is 8"),
        (lambda qc: qc.update(format="float-quantized") or qc["config_groups"]["group_0"].pop("format"),
         "field 'format' is 'float-quantized'"),
        (lambda qc: qc["config_groups"]["group_0"].update(input_activations={"num_bits": 8}),
         "field 'input_activations' is set"),
        (lambda qc: qc["config_groups"]["group_0"]["weights"].update(strategy="block"), "field 'strategy' is 'block'"),
    ]
    for i, (edit, message) in enumerate(cases):
        bad = tmp_path / f"bad{i}"
        import shutil

        shutil.copytree(base, bad)
        cfg = json.loads((bad / "config.json").read_text())
        edit(cfg["quantization_config"])
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(SpikecError, match=message):
            export(str(bad), tmp_path / f"out{i}")


@pytest.fixture(scope="module")
def gptq_export(gptq_ckpt, tmp_path_factory):
    return _export(gptq_ckpt, tmp_path_factory.mktemp("gptq-export"))


def test_compile_refuses_options_that_change_imported_codes(gptq_export, tmp_path):
    from spikec.passes.quantize import imported_weights

    outdir = gptq_export
    for kw, flag in ((dict(group_size=32), "--group-size"), (dict(rotate=True), "--rotate")):
        with pytest.raises(SpikecError, match=f"{flag}: this graph holds the integer codes"):
            compile_folder(outdir, tmp_path / "c", pipeline=GENERIC_PIPELINE + ("quantize",),
                           options=SpikeOptions(act_scale="dynamic", **kw))
    lm = spir.load_model(outdir / "lm.onnx")  # (these two need calibration data to get this far)
    for kw, flag in ((dict(smooth=0.5), "--smooth"), (dict(weight_method="gptq"), "--weight-method gptq")):
        with pytest.raises(SpikecError, match=f"quantize: {flag}: this graph holds the integer codes"):
            imported_weights(lm, SpikeOptions(**kw))
    assert imported_weights(lm, SpikeOptions()).format == "gptq_v2"


def test_compile_refuses_a_graph_whose_weight_changed(gptq_export, tmp_path):
    """The quantize pass checks codes * scales == the graph's weight bit for bit."""
    import shutil

    import onnx_ir as ir

    outdir = tmp_path / "export"
    shutil.copytree(gptq_export, outdir)
    lm = ir.load(outdir / "lm.onnx")
    name = "model.language_model.layers.0.mlp.down_proj.weight"
    w = lm.graph.initializers[name].const_value.numpy().copy()
    w[0, 0] = np.nextafter(w[0, 0], np.float32(1))
    lm.graph.initializers[name].const_value = ir.Tensor(w, name=name)
    ir.save(lm, outdir / "lm.onnx", external_data="lm.onnx.data")
    with pytest.raises(SpikecError, match="down_proj': the graph's weight is not the imported codes"):
        compile_folder(outdir, tmp_path / "c", pipeline=GENERIC_PIPELINE + ("quantize",),
                       options=SpikeOptions(act_scale="dynamic"))


def test_unpack_matches_library_helpers():
    """spikec's 4-bit unpacking equals compressed-tensors' own unpack_from_int32 (both axes)."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    from spikec.frontend.quantized import _unpack4

    rng = np.random.default_rng(1)
    v = torch.from_numpy(rng.integers(-8, 8, (24, 40)).astype(np.int8))
    assert np.array_equal(_unpack4(pack_to_int32(v, 4).numpy(), 1) - 8, v.numpy())
    assert np.array_equal(_unpack4(pack_to_int32(v, 4, packed_dim=0).numpy(), 0) - 8, v.numpy())
    u = rng.integers(0, 16, (16, 24))
    assert np.array_equal(_unpack4(_pack_rows(u), 0), u)
    assert np.array_equal(_unpack4(_pack_cols(u, AWQ_ORDER), 1, AWQ_ORDER), u)
