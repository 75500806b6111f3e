"""The ORT lowering of spikec ops: fused == exact == the numpy reference, bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikec import ir as spir
from spikec import ops as sops
from spikec import reference as R
from spikec.ort_lowering import STATS_PREFIX, lower_for_ort

K, M = 24, 10


def _linear_graph(*, neuron="tc-lif", act_scale="dynamic", timesteps=(4, 3), modality_input=True, bias=True, seed=0,
                  opset=18):
    """x [B, S, K] -> SpikeEncode -> SpikeMatMul -> y [B, S, M]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, M)).astype(np.float32)
    s_w = R.scale_per_channel(w, 8)
    w_q = R.quantize(w, s_w, 127).astype(np.int8)
    inits = [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(s_w, "s_w")]
    mm_inputs = ["q", "s_x", "modality" if modality_input else "", "W_q", "s_w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "b"))
        mm_inputs.append("b")
    common = {"timesteps": list(timesteps), "neuron": neuron}
    enc_attrs = dict(common, act_scale=act_scale)
    if act_scale == "static":
        clip = np.full((2, sops.CLIP_T), np.nan, np.float32)
        clip[0, :] = 2.5
        clip[1, :] = 1.75
        enc_attrs["act_clip"] = clip.ravel().tolist()
    if not modality_input:
        enc_attrs["modality_id"] = 1
        common = dict(common, modality_id=1)
    if neuron == "if":
        inits.append(numpy_helper.from_array(sops.if_offset_table(w_q, timesteps), "accb"))
        while len(mm_inputs) < 6:
            mm_inputs.append("")
        mm_inputs.append("accb")
    nodes = [
        helper.make_node("SpikeEncode", ["x", "modality" if modality_input else ""], ["q", "s_x"], domain="spikec", name="enc", **enc_attrs),
        helper.make_node("SpikeMatMul", mm_inputs, ["y"], domain="spikec", name="mm", wbits=8, **common),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])]
    if modality_input:
        inputs.append(helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"]))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", M])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("spikec", 1)])
    model.ir_version = 10
    return ir.from_proto(model)


def _feeds(seed=1, b=2, s=7):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((b, s, K)) * 1.3).astype(np.float32)
    x[0, 0, :3] = [0.5, -1.5, 2.5]  # ties for the rounding
    mod = rng.integers(0, 2, (b, s)).astype(np.int64)
    return {"x": x, "modality": mod}


def _run_ort(model: ir.Model, feeds):
    proto = spir.to_proto(model)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return dict(zip([o.name for o in sess.get_outputs()], outs))


CASES = [
    dict(),
    dict(act_scale="static"),
    dict(timesteps=(8, 8)),
    dict(timesteps=(16, 2)),
    dict(modality_input=False, timesteps=(4, 3)),
    dict(bias=False),
    dict(neuron="if", timesteps=(4, 3)),
    dict(neuron="if", timesteps=(7, 9), act_scale="static"),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_lowered_matches_reference_bit_exact(case):
    feeds = _feeds()
    expected = sops.run_reference(_linear_graph(**case), feeds)[0]
    results = {}
    for mode in ("fused", "exact", "fakequant"):
        if mode == "exact" and case.get("neuron") == "if" and max(case.get("timesteps", (4, 3))) > 7:
            continue  # 2**10 - 1 binary planes: covered by the fused path; exact IF is for small T
        model = _linear_graph(**case)
        if mode == "fakequant" and K * (2 ** max(case.get("timesteps", (4, 3))) - 1) * 127 >= 2**24:
            from spikec.errors import SpikecError

            with pytest.raises(SpikecError, match="fakequant mode is exact only below 2\\*\\*24"):
                lower_for_ort(model, mode)
            continue
        lower_for_ort(model, mode)
        assert not sops.spikec_nodes(model)
        results[mode] = _run_ort(model, feeds)
        np.testing.assert_array_equal(results[mode]["y"], expected, err_msg=mode)
    if "exact" in results:
        np.testing.assert_array_equal(results["exact"]["y"], results["fused"]["y"])


def _hard_rows(x: np.ndarray, scale_hint: float) -> np.ndarray:
    """x [2, 7, K] with rows that test every rule of the uint8 encoder (_encode_u8_fn)."""
    x = x.copy()
    x[0, 1, :] = 0.0  # all zero: scale 1.0, codes 0
    x[0, 2, 5] = np.nan  # non-finite rows: codes 0, scale NaN, output row NaN
    x[0, 3, 0] = np.inf
    x[0, 4, 9] = -np.inf
    # subnormal: max|x| / Q rounds to a subnormal scale so coarse that x / s passes Q (the
    # clamp): 22 / 15 -> s = 1 ulp for a text token (T = 4), 10 / 7 -> 1 ulp at T = 3
    tiny = np.float32(2.0**-149)
    x[0, 5, :] = tiny * np.linspace(-22, 22, K).round().astype(np.float32)
    x[1, 2, :] = tiny * np.linspace(-10, 10, K).round().astype(np.float32)
    x[0, 6, :] = np.float32(3e38) * np.sign(x[0, 6, :])  # sum |x| overflows to inf, not NaN
    x[1, 0, :] = x[1, 0, :] * 40 * scale_hint  # static: far beyond the calibrated clip (the clamp)
    # ties and their neighbours at this row's dynamic scale: k + 0.5 times s
    row = x[1, 1]
    s = np.float32(np.abs(row).max() / np.float32(15))
    row[1:9] = (np.arange(-4, 4, dtype=np.float32) + np.float32(0.5)) * s
    row[9:17] = np.nextafter(row[1:9], np.float32(np.inf))
    return x


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("act_scale", ["dynamic", "static"])
def test_uint8_encoder_matches_reference_on_hard_rows(opset, act_scale):
    """Fused TC-LIF with T <= 7 encodes straight to uint8 q + 128 (QuantizeLinear, then the
    clamp and the non-finite rule on the uint8 codes; per-axis at opset 18, one block per
    token at 21): equal to the reference on ties, non-finite, all-zero and subnormal rows,
    rows whose sum |x| overflows, and (static) values far beyond the clip."""
    feeds = _feeds()
    feeds["x"] = _hard_rows(feeds["x"], 2.5)
    feeds["modality"][1, 1] = feeds["modality"][0, 5] = 0  # the tie row and a subnormal row: Q = 15
    feeds["modality"][1, 2] = 1  # the other subnormal row: Q = 7
    x = feeds["x"]
    for row, q_max in (((0, 5), 15), ((1, 2), 7)):  # the clamp is exercised
        s = np.float32(np.abs(x[row]).max() / np.float32(q_max))
        assert np.abs(np.rint(x[row] / s)).max() > q_max
    for timesteps in ((4, 3), (7, 1)):
        # no bias: the subnormal rows' outputs are subnormal too, and show their codes
        case = dict(act_scale=act_scale, timesteps=timesteps, opset=opset, bias=False)
        expected = sops.run_reference(_linear_graph(**case), feeds)[0]
        model = _linear_graph(**case)
        lower_for_ort(model, "fused")
        encoders = [name for (_, name, _) in model.functions]
        assert any(n.startswith("Encode") and "U8" in n for n in encoders), encoders
        assert any(n.endswith(f"_K{K}") for n in encoders) == (opset >= 21), encoders
        got = _run_ort(model, feeds)["y"]
        assert np.isnan(got).any() and np.isnan(expected).any()
        np.testing.assert_array_equal(got, expected)


EMPTY_CASES = [dict(), dict(act_scale="static"), dict(timesteps=(8, 3)), dict(neuron="if"), dict(opset=21)]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=[str(c) for c in EMPTY_CASES])
@pytest.mark.parametrize("shape", [(2, 0), (0, 4)])
def test_no_tokens_gives_an_empty_product(case, shape):
    """A batch with no tokens (x [2, 0, K] or [0, 4, K]) gives an empty y in every mode, as the
    reference does: every Reshape to a shape read at run time keeps its zeros (allowzero)."""
    feeds = {"x": np.zeros(shape + (K,), np.float32), "modality": np.zeros(shape, np.int64)}
    expected = sops.run_reference(_linear_graph(**case), feeds)[0]
    assert expected.shape == shape + (M,)
    for mode in ("fused", "exact", "fakequant"):
        model = _linear_graph(**case)
        lower_for_ort(model, mode)
        assert _run_ort(model, feeds)["y"].shape == shape + (M,), mode


@pytest.mark.parametrize("timesteps,offset", [((4, 3), 15), ((6, 2), 63), ((7, 1), 127), ((1, 1), 1)])
def test_uint8_codes_are_offset_by_their_largest_code(timesteps, offset):
    """Fused TC-LIF codes reach MatMulIntegerToFloat as q + (2**T_max - 1), not q + 128: two
    adjacent products of such codes by int8 weights then fit int16 while T_max <= 6, so MLAS'
    vpmaddubsw path on CPUs without VNNI cannot saturate (code_offset); and still equal the
    reference on both encoders' paths (with and without the uint8 encoder)."""
    from spikec.ort_lowering import code_offset

    assert code_offset(max(timesteps)) == offset
    if max(timesteps) <= 6:
        assert 2 * (2 * offset) * 127 <= 2**15 - 1
    feeds = _feeds()
    for act_scale in ("dynamic", "static"):
        case = dict(timesteps=timesteps, act_scale=act_scale)
        expected = sops.run_reference(_linear_graph(**case), feeds)[0]
        model = _linear_graph(**case)
        lower_for_ort(model, "fused")
        zps = [v.const_value.numpy() for name, v in model.graph.initializers.items() if ".a_zp" in name]
        assert zps and all(z.dtype == np.uint8 and z.shape == () and int(z) == offset for z in zps), zps
        np.testing.assert_array_equal(_run_ort(model, feeds)["y"], expected)


def test_uint8_codes_only_where_every_use_takes_them():
    """Codes wider than 7 bits, rate IF and the exact mode keep the int32 encoder."""
    for case, mode in ((dict(timesteps=(8, 3)), "fused"), (dict(neuron="if"), "fused"), (dict(), "exact")):
        model = _linear_graph(**case)
        lower_for_ort(model, mode)
        assert not any("U8" in name for (_, name, _) in model.functions), (case, mode)


def test_exact_mode_counts_spikes_per_modality():
    feeds = _feeds(seed=3)
    model = _linear_graph(timesteps=(5, 3))
    lower_for_ort(model, "exact")
    stats = _run_ort(model, feeds)[STATS_PREFIX + "mm"]
    spikes, tokens = stats[0], stats[1]
    assert tokens.tolist() == [int((feeds["modality"] == m).sum()) for m in (0, 1)]
    # the count the reference encoder gives: nonzero TC-LIF spikes, per modality
    enc = sops.run_reference(_linear_graph(timesteps=(5, 3)), feeds, outputs=["q"])[0]
    T_tok = np.where(feeds["modality"] == 0, 5, 3)
    want = np.zeros(2, np.int64)
    for m, T in ((0, 5), (1, 3)):
        q = enc[feeds["modality"] == m]
        want[m] = int(np.abs(R.tclif_encode(q, T)).sum()) if q.size else 0
    assert T_tok.size and np.array_equal(spikes, want)


def test_unknown_spikec_op_is_named():
    model = _linear_graph()
    next(n for n in model.graph if n.name == "mm").op_type = "SpikeWhatever"
    from spikec.errors import SpikecError

    with pytest.raises(SpikecError, match="node 'mm'.*no onnxruntime lowering"):
        lower_for_ort(model)
