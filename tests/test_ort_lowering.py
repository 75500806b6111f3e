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
from spikec.errors import SpikecError
from spikec.ort_lowering import STATS_PREFIX, U8S8_LIMIT, digit_bits, lower_for_ort
from spikec.testing.integer_gemms import u8s8_pair_bounds

K, M = 24, 10


def _linear_graph(*, neuron="tc-lif", act_scale="dynamic", timesteps=(4, 3), modality_input=True, bias=True, seed=0,
                  opset=18, w_q=None, wbits=8):
    """x [B, S, K] -> SpikeEncode -> SpikeMatMul -> y [B, S, M]; w_q: the int8 weight codes [K, M]
    (default: random normal weights quantized to wbits)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, M)).astype(np.float32)
    if w_q is None:
        s_w = R.scale_per_channel(w, wbits)
        w_q = R.quantize(w, s_w, R.qmax(wbits)).astype(np.int8)
    else:
        s_w = np.full(M, 0.01, np.float32)
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
        helper.make_node("SpikeMatMul", mm_inputs, ["y"], domain="spikec", name="mm", wbits=wbits, **common),
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
    """Fused TC-LIF codes of one digit group (T <= 6, or T = 7 by weights |w| <= 64: digit_bits)
    encode straight to uint8 q + code_offset (QuantizeLinear, then the
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
    for timesteps, wbits in (((4, 3), 8), ((7, 1), 4)):
        # no bias: the subnormal rows' outputs are subnormal too, and show their codes
        case = dict(act_scale=act_scale, timesteps=timesteps, opset=opset, bias=False, wbits=wbits)
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


@pytest.mark.parametrize("timesteps,offset,wbits", [((4, 3), 15, 8), ((6, 2), 63, 8), ((7, 1), 127, 4), ((1, 1), 1, 8)])
def test_uint8_codes_are_offset_by_their_largest_code(timesteps, offset, wbits):
    """Fused TC-LIF codes reach MatMulIntegerToFloat as q + (2**T_max - 1), not q + 128: two
    adjacent products of such codes by int8 weights then fit int16 (for 8-bit weights while
    T_max <= 6, for |w| <= 64 at 7: digit_bits), so MLAS' vpmaddubsw path on CPUs without VNNI
    cannot saturate (code_offset); and still equal the reference on both encoders' paths (with
    and without the uint8 encoder)."""
    from spikec.ort_lowering import code_offset

    assert code_offset(max(timesteps)) == offset
    assert 2 * (2 * offset) * R.qmax(wbits) <= U8S8_LIMIT
    feeds = _feeds()
    for act_scale in ("dynamic", "static"):
        case = dict(timesteps=timesteps, act_scale=act_scale, wbits=wbits)
        expected = sops.run_reference(_linear_graph(**case), feeds)[0]
        model = _linear_graph(**case)
        lower_for_ort(model, "fused")
        zps = [v.const_value.numpy() for name, v in model.graph.initializers.items() if ".a_zp" in name]
        assert zps and all(z.dtype == np.uint8 and z.shape == () and int(z) == offset for z in zps), zps
        np.testing.assert_array_equal(_run_ort(model, feeds)["y"], expected)


def test_digit_bits_keep_two_products_within_int16():
    """digit_bits: the widest digit whose offset codes (up to 2 (2**b - 1)) times int8 weights
    |w| <= w_max, two at a time, stay within int16; 7 bits for 4-bit weights."""
    for w_max in range(129):
        b = digit_bits(w_max)
        assert 2 * (2 * (2**b - 1)) * w_max <= U8S8_LIMIT
        assert b == 7 or 2 * (2 * (2**(b + 1) - 1)) * w_max > U8S8_LIMIT
    assert digit_bits(7) == 7 and digit_bits(64) == 7 and digit_bits(65) == 6 and digit_bits(127) == 6


def _extreme_case(wbits):
    """Weights at +-qmax(wbits) in every column and activations whose codes are all +-Q or
    random: the largest uint8 x int8 pairs a product can meet."""
    qw = R.qmax(wbits)
    w_q = np.full((K, M), qw, np.int8)
    w_q[:, 1::2] = -qw
    w_q[::3, 2] = -qw
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 7, K)) * 2).astype(np.float32)
    x[0, :3] = 1.0  # every code +Q
    x[1, :3] = -1.0  # every code -Q
    x[0, 3, ::2] = -1.0
    x[0, 3, 1::2] = 1.0
    mod = np.zeros((2, 7), np.int64)
    mod[:, 5:] = 1
    return w_q, {"x": x, "modality": mod}


SATURATION_CASES = [
    (dict(timesteps=(4, 3)), 8), (dict(timesteps=(6, 6)), 8), (dict(timesteps=(7, 7)), 8),
    (dict(timesteps=(7, 3)), 4), (dict(timesteps=(8, 8)), 8), (dict(timesteps=(12, 3)), 8),
    (dict(timesteps=(16, 2)), 8), (dict(timesteps=(13, 5)), 4), (dict(timesteps=(7, 7), act_scale="static"), 8),
    (dict(neuron="if", timesteps=(6, 6)), 8), (dict(neuron="if", timesteps=(7, 9), act_scale="static"), 8),
]


# exact rate IF beyond T = 6 sums 2**(T+1) - 1 binary planes: the fused cases cover those
SATURATION_RUNS = [(c, b, mode) for mode in ("fused", "exact") for c, b in SATURATION_CASES
                   if not (mode == "exact" and c.get("neuron") == "if" and max(c["timesteps"]) > 6)]


@pytest.mark.parametrize("case,wbits,mode", SATURATION_RUNS, ids=[f"{m}-{c}-W{b}" for c, b, m in SATURATION_RUNS])
def test_integer_gemms_stay_below_int16_saturation(case, wbits, mode):
    """Every uint8 x int8 GEMM of the lowering keeps 2 * max(A) * max|B| within int16, seen on
    one run whatever this CPU is (on x86 without VNNI, MLAS' vpmaddubsw saturates beyond:
    T >= 7 codes by 8-bit weights gave wrong sums on an AVX2 EPYC before digit_bits), and
    the result equals the reference on codes and weights at their extremes."""
    w_q, feeds = _extreme_case(wbits)
    expected = sops.run_reference(_linear_graph(**case, w_q=w_q, wbits=wbits), feeds)[0]
    model = _linear_graph(**case, w_q=w_q, wbits=wbits)
    lower_for_ort(model, mode, nbits=False)  # MatMulNBits' If would hide its many-token branch's GEMM
    bounds = u8s8_pair_bounds(spir.to_proto(model), feeds)
    assert bounds, "no integer GEMM"
    assert all(2 * a * b <= U8S8_LIMIT for _, a, b in bounds), bounds
    np.testing.assert_array_equal(_run_ort(model, feeds)["y"], expected)


@pytest.mark.parametrize("enc_T,mm_T", [((7, 4), (4, 4)), ((7, 4), (5, 4)), ((6, 3), (4, 3)), ((4, 4), (4, 4))])
def test_codes_of_a_wider_encoder_stay_below_int16_saturation(enc_T, mm_T):
    """An encoder whose largest T is above its 8-bit product's gives that product codes offset
    by code_offset of the encoder's T (found by a helper's random-graph trial: encoder T (7, 4)
    read by a product of T (4, 4) gave codes up to 254 to a product bounded for 30, off by
    up to 255 on an AVX2 EPYC even for the tokens whose T agree). Tokens of the modality
    whose T agree (the others are refused by the reference) equal the reference, and every
    uint8 x int8 GEMM keeps the int16 bound."""
    w_q, feeds = _extreme_case(8)
    feeds["modality"][:] = 1  # the modality whose T the encoder and the product share

    def graph():
        model = _linear_graph(timesteps=enc_T, w_q=w_q, wbits=8)
        mm = next(n for n in model.graph if n.name == "mm")
        mm.attributes["timesteps"] = ir.AttrInt64s("timesteps", list(mm_T))
        return model

    expected = sops.run_reference(graph(), feeds)[0]
    model = graph()
    lower_for_ort(model, "fused", nbits=False)
    bounds = u8s8_pair_bounds(spir.to_proto(model), feeds)
    assert bounds and all(2 * a * b <= U8S8_LIMIT for _, a, b in bounds), bounds
    np.testing.assert_array_equal(_run_ort(model, feeds)["y"], expected)


def test_seven_bit_codes_by_8bit_weights_take_two_digit_groups():
    """T = 7 codes stay one uint8 product (and the uint8 encoder) by 4-bit weights, and become
    two 6-bit digit groups by weights beyond |w| = 64."""
    for wbits, one_group in ((4, True), (7, True), (8, False)):
        w_q, _ = _extreme_case(wbits)
        model = _linear_graph(timesteps=(7, 7), w_q=w_q, wbits=wbits)
        stats = lower_for_ort(model, "fused")
        names = [name for (_, name, _) in model.functions]
        assert any("U8" in n for n in names) == one_group, (wbits, names)
        assert stats.layers["mm"].get("digit_bits") == (None if one_group else 6), stats.layers


def _unsigned_graph(op, zero_point, T, w_q):
    """Imported uint8 activations (import-qdq with --neuron if): static scale, zero point z,
    codes c - z of c in [0, 2**(T+1) - 1]; one QuantLinear, or SpikeEncode + SpikeMatMul."""
    clip = np.full((2, sops.CLIP_T), 2.0, np.float32).ravel().tolist()
    attrs = dict(timesteps=[T, T], neuron="if", act_zero_point=zero_point, act_unsigned=1)
    inits = [numpy_helper.from_array(w_q, "W_q"), numpy_helper.from_array(np.full(M, 0.01, np.float32), "s_w")]
    if op == "QuantLinear":
        nodes = [helper.make_node("QuantLinear", ["x", "modality", "W_q", "s_w"], ["y"], domain="spikec", name="mm",
                                  wbits=8, act_scale="static", act_clip=clip, **attrs)]
    else:
        fold = (-zero_point * w_q.astype(np.int64).sum(axis=0)).astype(np.int32)
        inits.append(numpy_helper.from_array(np.stack([fold, fold]), "accb"))
        nodes = [helper.make_node("SpikeEncode", ["x", "modality"], ["q", "s_x"], domain="spikec", name="enc",
                                  act_scale="static", act_clip=clip, **attrs),
                 helper.make_node("SpikeMatMul", ["q", "s_x", "modality", "W_q", "s_w", "", "accb"], ["y"],
                                  domain="spikec", name="mm", wbits=8, **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K]),
                                           helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", M])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec", 1)])
    model.ir_version = 10
    return ir.from_proto(model)


@pytest.mark.parametrize("op", ["QuantLinear", "SpikeEncode"])
@pytest.mark.parametrize("zero_point,T", [(0, 7), (128, 7), (37, 7), (255, 7), (3, 3)])
def test_imported_zero_point_matches_reference(op, zero_point, T):
    """Imported uint8 activations keep their zero point on onnxruntime: codes clamped to
    [-z, 2**(T+1) - 1 - z] (not +-Q), the rate-IF count c = q + z, the fold -z sum W; every
    mode equal to the reference (the lowering ignored the zero point before: a zero point of
    128 turned -12.8 into -12.7), every integer GEMM within int16 pairs."""
    w_q, feeds = _extreme_case(8)
    rng = np.random.default_rng(zero_point + T)
    x = feeds["x"] * 2
    x[1, 4] = rng.uniform(-1e3, 1e3, K)  # far beyond the clip both ways
    x[1, 5, 3] = np.nan
    x[1, 6] = np.round(rng.uniform(-4, 4, K) * 64) / 64  # ties at the scale 2 / 127
    feeds["x"] = x.astype(np.float32)
    expected = sops.run_reference(_unsigned_graph(op, zero_point, T, w_q), feeds)[0]
    assert np.isnan(expected[1, 5]).all() and np.isfinite(expected[0]).all()
    for mode in ("fused", "exact", "fakequant"):
        model = _unsigned_graph(op, zero_point, T, w_q)
        lower_for_ort(model, mode)
        if mode != "fakequant":
            bounds = u8s8_pair_bounds(spir.to_proto(model), feeds)
            assert bounds and all(2 * a * b <= U8S8_LIMIT for _, a, b in bounds), bounds
        np.testing.assert_array_equal(_run_ort(model, feeds)["y"], expected, err_msg=mode)


def test_zero_point_without_rate_if_is_refused():
    model = _unsigned_graph("QuantLinear", 128, 7, _extreme_case(8)[0])
    next(iter(model.graph)).attributes["neuron"] = ir.AttrString("neuron", "tc-lif")
    with pytest.raises(SpikecError, match="node 'mm': an imported zero point .* needs the rate-IF neuron"):
        lower_for_ort(model, "fused")


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
