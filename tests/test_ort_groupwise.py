"""Group-wise weight scales on the ORT target: every lowering mode equals spikec.reference
bit for bit (np.array_equal), one group [1, M] lowers and computes as per-channel [M], the
per-channel lowering has no group nodes, and MatMulNBits is not taken for group-wise weights.

Group-wise s_w [n_groups, M] (spikec.reference.dequantize_acc): one int32 accumulator per
group of G = K / n_groups input rows, t_g = (float32(acc_g) * s_x) * s_w[g], y = t_0 (+ bias),
then y + t_g in ascending g.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikec import ir as spir
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.ort_lowering import MODES, U8S8_LIMIT, lower_for_ort
from spikec.testing.integer_gemms import u8s8_pair_bounds

M = 12


def _graph(K, n_groups, *, op="SpikeMatMul", bias=True, timesteps=(4, 3), act_scale="dynamic", rank=3, wbits=4,
           seed=0, per_channel=False, neuron="tc-lif") -> ir.Model:
    """x [b, s, K] (rank 3) or [n, K] (rank 2) -> SpikeEncode -> SpikeMatMul (or one QuantLinear)
    with weights W_q [K, M] and scales s_w [n_groups, M] ([M] when per_channel)."""
    rng = np.random.default_rng(seed)
    qw = R.qmax(wbits)
    w_q = rng.integers(-qw, qw + 1, (K, M)).astype(np.int8)
    w_q[:, 0] = qw  # extreme columns: the largest group sums
    w_q[:, 1] = -qw
    # scales spread over decades, so the groups' terms differ in magnitude and rounding
    s_w = (rng.random((n_groups, M)) * 10.0 ** rng.integers(-4, 1, (n_groups, M))).astype(np.float32) + 1e-6
    if per_channel:
        s_w = s_w[0]
    inits = [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(s_w, "s_w")]
    extra = []
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal(M) * 4).astype(np.float32), "b"))
        extra = ["b"]
    lead = ["b", "s"] if rank == 3 else ["n"]
    mod_in = helper.make_tensor_value_info("modality", TensorProto.INT64, lead)
    attrs = {"timesteps": list(timesteps), "neuron": neuron}
    enc = dict(attrs, act_scale=act_scale)
    if act_scale == "static":
        clip = np.full((2, sops.CLIP_T), np.nan, np.float32)
        clip[0, :], clip[1, :] = 2.5, 40.0
        enc["act_clip"] = clip.ravel().tolist()
    if op == "SpikeMatMul":
        nodes = [helper.make_node("SpikeEncode", ["x", "modality"], ["q", "s_x"], domain="spikec", name="enc", **enc),
                 helper.make_node("SpikeMatMul", ["q", "s_x", "modality", "W_q", "s_w"] + extra, ["y"],
                                  domain="spikec", name="mm", wbits=wbits, **attrs)]
    else:
        nodes = [helper.make_node("QuantLinear", ["x", "modality", "W_q", "s_w"] + extra, ["y"], domain="spikec",
                                  name="mm", wbits=wbits, **enc)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, lead + [K]), mod_in],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, lead + [M])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec", 1)])
    model.ir_version = 10
    return ir.from_proto(model)


def _feeds(K, rank=3, seed=1, b=2, s=5):
    """Random activations with ties for the rounding, large and tiny magnitudes, a zero row."""
    rng = np.random.default_rng(seed)
    lead = (b, s) if rank == 3 else (b * s,)
    x = (rng.standard_normal(lead + (K,)) * rng.uniform(0.5, 3.0, K)).astype(np.float32)
    flat = x.reshape(-1, K)
    flat[0, :4] = [0.5, -1.5, 2.5, -3.5]  # ties at a unit scale
    flat[0, 4] = 15.0  # max |x| = 15: T=4 codes are x itself, so the ties stay ties
    rows = flat.shape[0]
    if rows > 1:
        flat[1] *= 1e4  # large magnitudes
    if rows > 2:
        flat[2, ::7] = 3e4  # outlier channels
    if rows > 3:
        flat[3] *= 1e-3
    if rows > 4:
        flat[4] = 0.0  # an all-zero token: scale 1.0, codes 0
    mod = rng.integers(0, 2, lead).astype(np.int64)
    return {"x": x, "modality": mod}


def _run(model: ir.Model, feeds) -> np.ndarray:
    sess = ort.InferenceSession(spir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["y"], {k: v for k, v in feeds.items() if k in names})[0]


def _fakequant_ok(G, timesteps, wbits):
    return G * (2 ** max(timesteps) - 1) * R.qmax(wbits) < 2**24


def _check_all_modes(K, n_groups, feeds, **kw):
    want = sops.run_reference(_graph(K, n_groups, **kw), feeds)[0]
    G = K // n_groups
    for mode in MODES:
        for nbits in ((True, False) if mode == "fused" else (False,)):
            model = _graph(K, n_groups, **kw)
            if mode == "fakequant" and not _fakequant_ok(G, kw.get("timesteps", (4, 3)), kw.get("wbits", 4)):
                with pytest.raises(SpikecError, match="fakequant mode is exact only below 2\\*\\*24"):
                    lower_for_ort(model, mode)
                continue
            stats = lower_for_ort(model, mode, nbits=nbits)
            assert not sops.spikec_nodes(model)
            if n_groups > 1:
                if mode != "fakequant":  # (fakequant records no layer table)
                    assert stats.layers["mm"]["group_size"] == G
                # never the MatMulNBits path for group-wise scales (its sum over K is one accumulator)
                assert "one_token" not in stats.layers.get("mm", {})
                assert not any(n.op_type.startswith("SpikeMatMul_tclif_nbits") for n in model.graph)
            if mode != "fakequant" and not nbits:  # every integer GEMM within int16 pairs (digit_bits)
                bounds = u8s8_pair_bounds(spir.to_proto(model), feeds)
                assert bounds and all(2 * a * b <= U8S8_LIMIT for _, a, b in bounds), bounds
            got = _run(model, feeds)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got, want), f"{mode} nbits={nbits} K={K} n={n_groups} {kw}: " \
                                              f"{int((got != want).sum())} elements differ"
    return want


# (K, G): G in {32, 64, 128 where K allows, K (one group)}
SHAPES = [(64, 32), (64, 64), (96, 32), (256, 32), (256, 64), (256, 128), (256, 256)]


@pytest.mark.parametrize("K,G", SHAPES, ids=[f"K{k}-G{g}" for k, g in SHAPES])
@pytest.mark.parametrize("op", ["SpikeMatMul", "QuantLinear"])
def test_groupwise_matches_reference_every_mode(K, G, op):
    rng_cases = [dict(timesteps=(4, 3), bias=True), dict(timesteps=(7, 2), bias=False, rank=2),
                 dict(timesteps=(7, 9), wbits=8)]  # 8-bit weights: 6-bit digits (digit_bits)
    if K == 256 or op == "QuantLinear":
        rng_cases = rng_cases[:1] if G != 32 else rng_cases
    for i, kw in enumerate(rng_cases):
        feeds = _feeds(K, rank=kw.get("rank", 3), seed=K + G + i)
        _check_all_modes(K, K // G, feeds, op=op, **kw)


@pytest.mark.parametrize("kw", [
    dict(timesteps=(8, 5)),  # fused: two 7-bit digit groups (Horner), exact: 8 planes
    dict(timesteps=(16, 1), wbits=8),  # the widest codes; fakequant refused (2**24 bound)
    dict(timesteps=(3, 6), act_scale="static", bias=False),
    dict(timesteps=(1, 2), wbits=8, rank=2),
], ids=["T8-5", "T16-1-w8", "static", "T1-2-rank2"])
def test_groupwise_timesteps_and_scales(kw):
    K, G = 128, 32
    _check_all_modes(K, K // G, _feeds(K, rank=kw.get("rank", 3), seed=7), **kw)


@pytest.mark.parametrize("rank", [3, 2])
def test_groupwise_no_tokens(rank):
    """No tokens (x [2, 0, K], or [0, K]): an empty y in every mode, as the reference."""
    K, n_groups = 64, 2
    lead = (2, 0) if rank == 3 else (0,)
    feeds = {"x": np.zeros(lead + (K,), np.float32), "modality": np.zeros(lead, np.int64)}
    want = sops.run_reference(_graph(K, n_groups, rank=rank), feeds)[0]
    assert want.shape[:-1] == lead
    for mode in MODES:
        model = _graph(K, n_groups, rank=rank)
        lower_for_ort(model, mode)
        assert _run(model, feeds).shape == want.shape, mode


@pytest.mark.parametrize("s", [1, 3])
def test_one_token_w4_groupwise_is_exact_without_matmulnbits(s):
    """Decode (one token) with 4-bit weights: the per-channel case would take MatMulNBits;
    group-wise falls back to the exact MatMulInteger path (and still equals the reference)."""
    K, G = 256, 128
    feeds = _feeds(K, seed=11, b=1, s=s)
    want = sops.run_reference(_graph(K, K // G), feeds)[0]
    model = _graph(K, K // G)
    stats = lower_for_ort(model, "fused", nbits=True)
    assert "one_token" not in stats.layers["mm"]
    assert np.array_equal(_run(model, feeds), want)
    per_channel = _graph(K, 1, per_channel=True)  # the same graph per channel does take it
    assert lower_for_ort(per_channel, "fused", nbits=True).layers["mm"].get("one_token") == "MatMulNBits"


def _lowered_signature(model: ir.Model):
    """The lowered graph's nodes (op types, domains) and every function body (op types, names)."""
    nodes = [(n.domain, n.op_type) for n in model.graph]
    funcs = {str(k): [(n.op_type, tuple(str(i.name) for i in n.inputs if i is not None))
                      for n in f] for k, f in model.functions.items()}
    return nodes, funcs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("op", ["SpikeMatMul", "QuantLinear"])
def test_one_group_equals_per_channel(mode, op):
    """s_w [1, M] lowers to the per-channel nodes and gives the per-channel bits; the
    per-channel lowering has no group nodes (no Split, Transpose, group view)."""
    K = 96
    feeds = _feeds(K, seed=5)
    one, per = _graph(K, 1, op=op), _graph(K, 1, op=op, per_channel=True)
    assert np.array_equal(sops.run_reference(one, feeds)[0], sops.run_reference(per, feeds)[0])
    stats_one, stats_per = lower_for_ort(one, mode), lower_for_ort(per, mode)
    assert _lowered_signature(one) == _lowered_signature(per)
    assert "group_size" not in stats_one.layers.get("mm", {}) and "group_size" not in stats_per.layers.get("mm", {})
    for f in per.functions.values():
        assert not {"Split", "Transpose"} & {n.op_type for n in f}
    assert not any(".groups" in name for name in per.graph.initializers)
    assert np.array_equal(_run(one, feeds), _run(per, feeds))


def test_group_order_is_ascending_adds_and_weights_are_one_copy():
    """The lowered function adds the groups with one Add each, in ascending order (no
    ReduceSum), and the weight is one [n_groups, G, M] view of the original bytes."""
    K, G = 256, 32
    model = _graph(K, K // G)
    w = model.graph.initializers["W_q"].const_value.numpy()
    model.graph.initializers["W_q"].const_value = ir.Tensor(w, name="W_q")  # numpy-backed, as a .sbin's
    lower_for_ort(model, "fused")
    assert "W_q" not in model.graph.initializers  # read only through its view: dropped
    views = [v for name, v in model.graph.initializers.items() if ".groups" in name]
    assert len(views) == 1 and views[0].const_value.shape == (K // G, G, M)
    assert np.shares_memory(views[0].const_value.numpy(), w)  # a view, not a copy
    assert np.array_equal(views[0].const_value.numpy().reshape(K, M), w)
    (fn,) = [f for f in model.functions.values() if str(f.name).startswith("SpikeMatMul_tclif")]
    body = list(fn)
    assert "ReduceSum" not in {n.op_type for n in body}
    adds = [n for n in body if n.op_type == "Add" and any(str(o.name).startswith("g_y_") for o in n.outputs)]
    assert [str(n.outputs[0].name) for n in adds] == [f"g_y_{g}" for g in range(K // G)]  # bias, then g = 1..7
    assert str(adds[0].inputs[0].name) == "g_t_0" and str(adds[0].inputs[1].name) == "bias"
    for g in range(1, K // G):
        assert [str(i.name) for i in adds[g].inputs] == [f"g_y_{g - 1}", f"g_t_{g}"]


def test_external_weights_keep_their_file_reference(tmp_path):
    """A weight stored in a file (as a .sbin's TENSOR section) is viewed as [n, G, M] by a
    second reference to the same bytes, not a copy; onnxruntime maps it and computes the
    reference's bits."""
    K, G = 128, 64
    feeds = _feeds(K, seed=3)
    want = sops.run_reference(_graph(K, K // G), feeds)[0]
    model = _graph(K, K // G)
    value = model.graph.initializers["W_q"]
    arr = value.const_value.numpy()
    (tmp_path / "w.bin").write_bytes(b"\0" * 64 + arr.tobytes())
    value.const_value = ir.ExternalTensor("w.bin", 64, arr.nbytes, ir.DataType.INT8, shape=ir.Shape(arr.shape),
                                          name="W_q", base_dir=str(tmp_path))
    lower_for_ort(model, "fused")
    (view,) = [v.const_value for name, v in model.graph.initializers.items() if ".groups" in name]
    assert isinstance(view, ir.ExternalTensor)
    assert (view.location, view.offset, view.length) == ("w.bin", 64, arr.nbytes)
    sess = spir.ort_session(model)
    assert np.array_equal(sess.run(["y"], feeds)[0], want)


def test_rate_if_groupwise_is_refused():
    model = _graph(64, 2, neuron="if")
    with pytest.raises(SpikecError, match="group-wise weight scales need the tc-lif neuron"):
        lower_for_ort(model, "fused")


def test_compiled_groupwise_model_matches_reference_every_mode():
    """A small LM compiled with --group-size 32 (W4 RTN, quantize + spike-rewrite, exact vector
    numerics): every lowering mode gives the reference's logits bit for bit (K = 64 and 96:
    2 and 3 groups)."""
    from spike_graphs import as_model, mixed_feeds, mixed_lm, run_passes

    hidden, ffn = 64, 96
    feeds = mixed_feeds(2, hidden=hidden)

    def compiled():
        model = as_model(mixed_lm(hidden=hidden, ffn=ffn, vocab=40))
        # the norms as the vector unit's exact functions, so the whole graph is bit-defined
        run_passes(model, ["quantize", "spike-rewrite", "shape-inference", "vector-numerics"], feeds, wbits=4,
                   group_size=32, act_scale="dynamic")
        return model

    ref = compiled()
    assert any(np.ndim(n.inputs[4].const_value.numpy()) == 2 for n in sops.spikec_nodes(ref, sops.SPIKE_MATMUL))
    wants = [sops.run_reference(ref, f)[0] for f in feeds]
    for mode in MODES:
        model = compiled()
        lower_for_ort(model, mode)
        sess = spir.ort_session(model)  # as the ORT target runs it
        for f, want in zip(feeds, wants):
            got = sess.run(["logits"], f)[0]
            assert np.array_equal(got, want), f"{mode}: {int((got != want).sum())} logits differ"
