"""spikec's onnxruntime custom ops (runtime/ortops/, lower_for_ort(ortops=True)): the stock
graph's bits in fewer nodes and passes, on one and two threads, and clear errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_ort_nbits import _feeds, _graph, _one_token_feeds, _run

from spikec import ir as spir
from spikec import ops as sops
from spikec.ort_lowering import NBITS_BLOCK, lower_for_ort, nbits_blocks


# ------------------------------------------------ SpikeEncodeMatMulNBits (W4, one token)


def _run_ortops(model: ir.Model, feeds_list, library: str, threads: int = 1) -> list[list[np.ndarray]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.register_custom_ops_library(library)
    sess = ort.InferenceSession(spir.to_proto(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [sess.run(None, feeds) for feeds in feeds_list]


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, the sign of zero included; NaN where the other is NaN, whatever its
    payload (the stock graph's depends on the order a sum meets NaNs and infs; NaN payloads
    are not part of the contract, and the ops give the reference's quiet NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = np.isnan(a)
    return np.array_equal(nan, np.isnan(b)) and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))


@pytest.mark.parametrize("K", [24, NBITS_BLOCK - 1, 2 * (NBITS_BLOCK - 1), 1536, 8960])
@pytest.mark.parametrize("timesteps", [(4, 3), (6, 2), (1, 1)])
@pytest.mark.parametrize("act_scale", ["dynamic", "static"])
def test_ortops_one_token_graph_matches_reference_and_stock(K, timesteps, act_scale, ortops_library):
    """lower_for_ort(one_token=True, ortops=True): one spikec.ortops.SpikeEncodeMatMulNBits
    node per product, no If, no MatMulNBits and no int8 weight left; one token gives the
    reference's numbers and the stock one-token graph's bits, NaN rows included (codes at
    their bounds, ties, zero, NaN and +-inf rows; both modalities)."""
    widths, bias = (7, 3), (True, False)

    def graph():
        return _graph(K, widths, bias, timesteps=timesteps, act_scale=act_scale)

    model, stock = graph(), graph()
    stats = lower_for_ort(model, "fused", one_token=True, ortops=True)
    lower_for_ort(stock, "fused", one_token=True)
    assert stats.one_token_dims == ("b", "s")
    ops = [n.op_type for n in model.graph]
    assert ops == ["Reshape"] + ["Gather"] * (1 if act_scale == "dynamic" else 2) + ["SpikeEncodeMatMulNBits"] * 2
    assert model.opset_imports["spikec.ortops"] == 1 and not model.functions
    assert not any(n.startswith("W") for n in model.graph.initializers)
    assert stats.layers["mm0"]["tokens"] == "one (spikec.ortops.SpikeEncodeMatMulNBits)"
    feeds = [_one_token_feeds(K, case, mod, seed=K) for case in ("random", "worst", "ties", "zero", "nan", "inf", "-inf")
             for mod in (0, 1)]
    got = _run_ortops(model, feeds, ortops_library)
    want = [_run(stock, f) for f in feeds]
    for f, g, w in zip(feeds, got, want):
        ref = sops.run_reference(graph(), f)
        for a, b, r in zip(g, w, ref):
            assert _same_bits(a, b), (K, timesteps, act_scale)
            np.testing.assert_array_equal(a, r)


def test_ortops_threads_and_column_split(ortops_library):
    """A product big enough to be split over onnxruntime's threads (over 256 KiB of packed
    weights) gives the same bits on one and two threads, and the reference's, on random
    tokens, worst-case codes and weight columns at +-7."""
    K, widths, bias = 1536, (700, 5), (True, True)
    model, ref = _graph(K, widths, bias), _graph(K, widths, bias)
    lower_for_ort(model, "fused", one_token=True, ortops=True)
    feeds = [_one_token_feeds(K, case, mod, seed=seed) for case in ("random", "worst") for mod in (0, 1)
             for seed in range(2)]
    one, two = _run_ortops(model, feeds, ortops_library, 1), _run_ortops(model, feeds, ortops_library, 2)
    for f, a, b in zip(feeds, one, two):
        for x, y, r in zip(a, b, sops.run_reference(ref, f)):
            assert _same_bits(x, y)
            np.testing.assert_array_equal(x, r)


def test_ortops_refuses_what_it_cannot_compute(ortops_library):
    """onnxruntime reports the kernel's own checks by name: more than one token, weights of
    another K, a largest code beyond int8."""
    K, N = 300, 4
    blocks = nbits_blocks(K)
    w = np.full((N, blocks, 64), 0x88, np.uint8)

    def session(x_shape, w_arr, q):
        inits = [numpy_helper.from_array(w_arr, "w"), numpy_helper.from_array(np.ones(N, np.float32), "sw"),
                 numpy_helper.from_array(np.float32(q), "q")]
        node = helper.make_node("SpikeEncodeMatMulNBits", ["x", "q", "", "w", "sw"], ["y"], domain="spikec.ortops")
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec.ortops", 1)])
        m.ir_version = 10
        opts = ort.SessionOptions()
        opts.register_custom_ops_library(ortops_library)
        s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return s.run(None, {"x": np.ones(x_shape, np.float32)})[0]

    y = session((1, K), w, 15.0)  # codes 15 (max|x| / 15 = 1/15) by weight 0: zeros
    assert y.shape == (1, N) and not y.any()
    for x_shape, w_arr, q, what in (((2, K), w, 15.0, "one token"), ((1, K), w[:, :-1], 15.0, "w must be uint8"),
                                    ((1, K), w, 255.0, "q_tok")):
        with pytest.raises(Exception, match=f"SpikeEncodeMatMulNBits: .*{what}"):
            session(x_shape, w_arr, q)


# ---------------------------------------------- SpikeMatMulIntegerToFloat (any token count)


def _tail_ops(model: ir.Model) -> set[str]:
    return {n.op_type for f in model.functions.values() for n in f.graph.all_nodes() if n.domain == "spikec.ortops"}


@pytest.mark.parametrize("wbits", [8, 4])
@pytest.mark.parametrize("act_scale", ["dynamic", "static"])
def test_ortops_tail_matches_reference_and_stock(wbits, act_scale, ortops_library):
    """lower_for_ort(ortops=True), any token count (nbits off: every product on
    MatMulIntegerToFloat): the encoder is one SpikeEncodeU8 node, each product with its scales
    and bias one SpikeMatMulIntegerToFloat, and the outputs are the stock graph's bits and the
    reference's numbers, on random rows, codes at their bounds, ties, NaN and +-inf rows,
    zero rows, rows of K = 300 (not a multiple of 8) and widths that are not either."""
    K, widths, bias = 300, (13, 8, 1), (True, False, True)

    def graph():
        return _graph(K, widths, bias, wbits=wbits, act_scale=act_scale)

    model, stock = graph(), graph()
    lower_for_ort(model, "fused", nbits=False, ortops=True)
    lower_for_ort(stock, "fused", nbits=False)
    assert _tail_ops(model) == {"SpikeMatMulIntegerToFloat"} and not _tail_ops(stock)
    assert [n.op_type for n in model.graph if n.domain == "spikec.ortops"] == ["SpikeEncodeU8"]
    feeds = []
    for seed, tokens in ((0, 1), (1, 5), (2, 37)):
        f = _feeds(K, tokens, seed=seed)
        f["x"][0, tokens // 2, 3] = np.nan if seed == 1 else np.inf  # one bad row among good ones
        feeds += [f, _feeds(K, tokens, seed=seed, worst=True)]
    zero = _feeds(K, 4)
    zero["x"][:] = 0.0
    ties = _feeds(K, 6, seed=4)  # x / s at k + 1/2 for the static scale 2.5 / 15 (T = 4)
    ties["x"] = ((np.random.default_rng(4).integers(-15, 15, (1, 6, K)) + 0.5) * (2.5 / 15)).astype(np.float32)
    ties["modality"][:] = 0
    feeds += [zero, ties]
    for threads in (1, 2):
        for f, got in zip(feeds, _run_ortops(model, feeds, ortops_library, threads)):
            for a, b, r in zip(got, _run(stock, f), sops.run_reference(graph(), f)):
                assert _same_bits(a, b), (wbits, act_scale, threads)
                np.testing.assert_array_equal(a, r)


def _spike_matmul(ortops_library, a, w, zp, s_x, s_w, bias=None, threads=2, constant=True):
    """One SpikeMatMulIntegerToFloat node: a uint8 [..., K], w int8 [K, N] (an initializer, or a
    graph input with constant=False), zp uint8."""
    names = ["a", "w", "zp", "sx", "sw"] + (["b"] if bias is not None else [])
    node = helper.make_node("SpikeMatMulIntegerToFloat", names, ["y"], domain="spikec.ortops")
    vals = {"a": a, "w": w, "zp": np.uint8(zp), "sx": s_x, "sw": s_w, "b": bias}
    inits = [numpy_helper.from_array(np.asarray(vals[n]), n) for n in names[1:] if constant or n != "w"]
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(vals[n]).dtype), None)
              for n in names if n == "a" or (n == "w" and not constant)]
    g = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec.ortops", 1)])
    m.ir_version = 10
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.register_custom_ops_library(ortops_library)
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": a} if constant else {"a": a, "w": w})[0]


def _spike_matmul_want(a, w, zp, s_x, s_w, bias=None):
    """The contract in numpy: acc = (a - zp) @ w exactly (int64, here below 2^31), then
    (float32(acc) * s_x) * s_w (+ bias), each a float32 rounding."""
    acc = (a.astype(np.int64) - int(zp)) @ w.astype(np.int64)
    y = (acc.astype(np.float32) * s_x) * s_w
    return y + bias if bias is not None else y


@pytest.mark.parametrize("case", ["spike-codes", "worst-weights", "wide-codes", "ragged", "not-constant", "large"])
def test_spike_matmul_integer_to_float_is_exact(case, ortops_library):
    """SpikeMatMulIntegerToFloat's int16 windows (runtime/ortops/: a panel's window is the
    longest whose int16 sums cannot overflow for the call's largest code) give exactly
    (a - zp) @ w, then the contract's roundings, on one and two threads:
    - spike codes (TC-LIF T = 4 with offset 15: 0..30) by normal-like int8 weights (long windows)
    - the same codes by weights all +-127 (window of 4 k-steps: every lane at its bound)
    - codes up to 255 by +-127 (vpmaddubsw would saturate: the plain loop)
    - K, N and the row count off the layouts' multiples (4, 16, 6), a zero-point of 0
    - a weight that is a graph input (packed per call)
    - an output over 32 MiB (non-temporal stores), rows starting off 32-byte boundaries"""
    rng = np.random.default_rng(11)
    rows, K, N, zp, amax = 37, 300, 40, 15, 30
    if case == "ragged":
        rows, K, N, zp, amax = 7, 301, 33, 0, 60
    if case == "large":
        rows, K, N = 61, 64, 140_001
    a = rng.integers(0, amax + 1, (1, rows, K)).astype(np.uint8)
    if case == "wide-codes":
        zp, a = 128, rng.integers(0, 256, (1, rows, K)).astype(np.uint8)
    a[0, 0, :] = amax if case != "wide-codes" else 255  # a row of codes at their bound
    if case in ("worst-weights", "wide-codes"):
        w = np.where(rng.random((K, N)) < 0.5, -127, 127).astype(np.int8)
    else:
        w = np.clip(np.rint(rng.standard_normal((K, N)) * 30), -127, 127).astype(np.int8)
        w[:, 0] = 127  # a column at the bound
    s_x = (rng.random((1, rows, 1)) * 1e-2).astype(np.float32)
    s_w = (rng.random(N) * 0.05).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if case != "ragged" else None
    want = _spike_matmul_want(a, w, zp, s_x, s_w, bias)
    for threads in (1, 2):
        got = _spike_matmul(ortops_library, a, w, zp, s_x, s_w, bias, threads, constant=case != "not-constant")
        assert got.shape == want.shape
        assert _same_bits(got, want), (case, threads)


def test_spike_matmul_integer_to_float_refuses_bad_shapes(ortops_library):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 31, (1, 3, 8)).astype(np.uint8)
    w = rng.integers(-127, 128, (8, 5)).astype(np.int8)
    s_x, s_w = np.ones((1, 3, 1), np.float32), np.ones(5, np.float32)
    y = _spike_matmul(ortops_library, a[:, :0], w, 15, s_x[:, :0], s_w)  # no rows
    assert y.shape == (1, 0, 5)
    for args, what in (((a[..., :7], w, 15, s_x, s_w), "a must be uint8"),
                       ((a, w, 15, s_x, s_w[:4]), "s_w must have N"),
                       ((a, w, 15, np.ones((1, 2, 1), np.float32), s_w), "s_x must have one element per row"),
                       ((a, w, 15, s_x, s_w, np.ones(3, np.float32)), "bias must have N")):
        with pytest.raises(Exception, match=f"SpikeMatMulIntegerToFloat: {what}"):
            _spike_matmul(ortops_library, *args)


def test_ortops_encoder_static_tables_with_zero_subnormal_and_huge_clips(ortops_library):
    """Static scales from clips of 0 (scale 1.0), a subnormal one (codes clamped) and one near
    the float32 maximum (codes 0): SpikeEncodeU8 and SpikeMatMulIntegerToFloat give the stock graph's
    bits and the reference's numbers. (NaN and inf clips are refused before: no calibrated
    scale, a scale that is not finite.)"""
    K, widths, bias = 40, (9,), (True,)
    for clips in ((0.0, 0.75), (1e-44, 3e38)):
        def graph():
            model = _graph(K, widths, bias, wbits=8, act_scale="static")
            enc = next(n for n in model.graph if n.name == "enc")
            table = [float(clips[0])] * sops.CLIP_T + [float(clips[1])] * sops.CLIP_T
            enc.attributes["act_clip"] = ir.AttrFloat32s("act_clip", table)
            return model

        model, stock = graph(), graph()
        lower_for_ort(model, "fused", nbits=False, ortops=True)
        lower_for_ort(stock, "fused", nbits=False)
        feeds = [_feeds(K, 7, seed=seed) for seed in range(3)]
        for f, got in zip(feeds, _run_ortops(model, feeds, ortops_library)):
            for a, b, r in zip(got, _run(stock, f), sops.run_reference(graph(), f)):
                assert _same_bits(a, b), clips
                np.testing.assert_array_equal(a, r)


def test_ortops_bad_tokens_give_the_references_nan(ortops_library):
    """A one-token row holding NaN and inf, or a negative NaN (inf - inf's) anywhere, is the
    reference's quiet NaN (0x7fc00000) in every column, as is a bad row of the tail op;
    found by a randomized trial, where the stock graph's NaN payload followed its sum's
    order."""
    K = 130
    model = _graph(K, (5,), (True,))
    lower_for_ort(model, "fused", one_token=True, ortops=True)
    feeds = []
    for k in (0, 4, 123, 129):
        f = _one_token_feeds(K, "random", 1)
        f["x"][0, 0, k] = np.nan
        f["x"][0, 0, (k + 1) % K] = np.inf
        g = _one_token_feeds(K, "random", 0)
        g["x"].view(np.uint32)[0, 0, k] = 0xFFC00000  # -NaN
        feeds += [f, g]
    for f, (y,) in zip(feeds, _run_ortops(model, feeds, ortops_library)):
        want = sops.run_reference(_graph(K, (5,), (True,)), f)[0]
        assert (y.view(np.uint32) == 0x7FC00000).all() and (want.view(np.uint32) == 0x7FC00000).all()


def test_ortops_tail_of_a_zero_width_product(ortops_library):
    """A product of no output columns (a [K, 0] weight) gives an empty [.., T, 0] result on
    the ops' graph as on the stock one (found by a randomized trial: the tail op counted
    rows from the product's size)."""
    K = 20
    model, stock = _graph(K, (0, 3), (True, False), wbits=8, w_extreme=False), \
        _graph(K, (0, 3), (True, False), wbits=8, w_extreme=False)
    lower_for_ort(model, "fused", nbits=False, ortops=True)
    lower_for_ort(stock, "fused", nbits=False)
    f = _feeds(K, 3)
    for a, b in zip(_run_ortops(model, [f], ortops_library)[0], _run(stock, f)):
        assert _same_bits(a, b)
    assert _run(stock, f)[0].shape == (1, 3, 0)


def test_ortops_on_a_compiled_model_with_spiking_attention(ortops_library, monkeypatch, tmp_path):
    """A compiled tiny LLaVA whose attention products spike too (--spike-attention: the
    right operand an activation's per-tensor code, its s_w one scalar): the ops take only the
    weight products (found by CI: the tail op before SpikeMatMulIntegerToFloat was given an
    attention product's scalar s_w), and the language model's prefill and decode-step outputs with the library equal
    those without it (SPIKEC_ORTOPS=0) and exact mode's spike planes, bit for bit. W4: its
    prefill takes SpikeEncodeU8 and SpikeMatMulIntegerToFloat, its decode steps SpikeEncodeMatMulNBits."""
    wbits = 4
    from spike_graphs import exported, lm_feeds

    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.model import load

    path = tmp_path / "att.sbin"
    compile_path(exported("tiny-llava"), path, options=SpikeOptions(wbits=wbits, spike_attention=True).validate())
    with load(path, mode="fused") as fused:
        lm = fused.sessions["lm"]
        feeds = lm_feeds(fused)
        got = lm.run(None, feeds)
        step = _decode_step(lm, feeds)
        got_step = lm.run(None, step)
    monkeypatch.setenv("SPIKEC_ORTOPS", "0")
    with load(path, mode="fused") as stock, load(path, mode="exact") as exact:
        for mode_outputs in (stock.sessions["lm"], exact.sessions["lm"]):
            for a, b in zip(got, mode_outputs.run(None, feeds)):
                assert _same_bits(a, b)
            for a, b in zip(got_step, mode_outputs.run(None, step)):
                assert _same_bits(a, b)


def _decode_step(lm, feeds: dict) -> dict:
    """The last token of `feeds` as a decode step after the others (its KV cache from them)."""
    n = feeds["modality"].shape[1]
    head = {k: (v[..., : n - 1] if k == "position_ids" else v[:, : n - 1]) if k in
            ("inputs_embeds", "position_ids", "modality", "attention_mask") else v for k, v in feeds.items()}
    past = lm.run(None, head)[1:]
    step = {k: (v[..., n - 1:] if k == "position_ids" else v[:, n - 1:]) for k, v in feeds.items()
            if k in ("inputs_embeds", "position_ids", "modality")}
    step["attention_mask"] = feeds["attention_mask"]
    step.update(zip([k for k in feeds if k.startswith("past_key_values.")], past))
    return step
