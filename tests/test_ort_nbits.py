"""The one-token MatMulNBits product of the ORT lowering (fused mode, 4-bit weights):
bit-identical to spikec.reference, including worst-case codes, and actually taken."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from spikec import ir as spir
from spikec import ops as sops
from spikec import reference as R
from spikec.ort_lowering import NBITS_BLOCK, lower_for_ort, nbits_blocks, nbits_exact, nbits_pack


def _graph(K: int, widths=(10,), bias=(True,), timesteps=(4, 3), seed=0, wbits=4, w_extreme=True,
           act_scale="dynamic") -> ir.Model:
    """x [B, S, K] -> one SpikeEncode -> SpikeMatMul per width (Q/K/V-like, sharing the code).
    Static scales: clip 2.5 for modality 0 and 0.75 for 1 at every T."""
    rng = np.random.default_rng(seed)
    qw = R.qmax(wbits)
    inits, nodes, outputs = [], [], []
    static = {} if act_scale == "dynamic" else {"act_clip": [2.5] * sops.CLIP_T + [0.75] * sops.CLIP_T}
    nodes.append(helper.make_node("SpikeEncode", ["x", "modality"], ["q", "s_x"], domain="spikec", name="enc",
                                  timesteps=list(timesteps), neuron="tc-lif", act_scale=act_scale, **static))
    for i, (m, has_bias) in enumerate(zip(widths, bias)):
        w_q = rng.integers(-qw, qw + 1, (K, m)).astype(np.int8)
        if w_extreme:  # columns at the code bounds: the largest sums
            w_q[:, 0] = qw
            if m > 1:
                w_q[:, 1] = -qw
        s_w = (rng.random(m) * 0.1 + 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w_q, f"W{i}"), numpy_helper.from_array(s_w, f"s_w{i}")]
        ins = ["q", "s_x", "modality", f"W{i}", f"s_w{i}"]
        if has_bias:
            inits.append(numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        nodes.append(helper.make_node("SpikeMatMul", ins, [f"y{i}"], domain="spikec", name=f"mm{i}",
                                      timesteps=list(timesteps), neuron="tc-lif", wbits=wbits))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["b", "s", m]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K]),
              helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec", 1)])
    model.ir_version = 10
    return ir.from_proto(model)


def _feeds(K: int, s: int, seed=1, worst=False):
    rng = np.random.default_rng(seed)
    if worst:  # every code at +-(2**T - 1): each row is +-1
        x = np.where(rng.random((1, s, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    else:
        x = (rng.standard_normal((1, s, K)) * 1.3).astype(np.float32)
    mod = rng.integers(0, 2, (1, s)).astype(np.int64)
    return {"x": x, "modality": mod}


def _run(model: ir.Model, feeds) -> list[np.ndarray]:
    sess = ort.InferenceSession(spir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _calls(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph if n.op_type.startswith("SpikeMatMul_tclif_nbits")]


@pytest.mark.parametrize("K", [24, NBITS_BLOCK - 1, NBITS_BLOCK, 2 * (NBITS_BLOCK - 1) + 1, 1536, 8960])
@pytest.mark.parametrize("timesteps", [(4, 3), (7, 2), (1, 1)])
def test_one_token_product_matches_reference(K, timesteps):
    for worst in (False, True):
        for s in (1, 3):  # one token: MatMulNBits; more: MatMulInteger
            feeds = _feeds(K, s, seed=K + s, worst=worst)
            model = _graph(K, widths=(7,), timesteps=timesteps)
            want = sops.run_reference(_graph(K, widths=(7,), timesteps=timesteps), feeds)
            stats = lower_for_ort(model, "fused")
            taken = nbits_exact(K, 2 ** max(timesteps) - 1, 7)  # K=8960 at T=7: MatMulInteger
            assert bool(_calls(model)) == taken and (stats.layers["mm0"].get("one_token") == "MatMulNBits") == taken
            for got, ref in zip(_run(model, feeds), want):
                np.testing.assert_array_equal(got, ref, err_msg=f"K={K} T={timesteps} s={s} worst={worst}")


def test_products_sharing_a_code_are_one_call():
    K, widths, bias = 300, (48, 8, 8), (True, True, False)
    model = _graph(K, widths, bias)
    lower_for_ort(model, "fused")
    assert len(_calls(model)) == 1
    for s in (1, 5):
        feeds = _feeds(K, s, seed=s)
        want = sops.run_reference(_graph(K, widths, bias), feeds)
        exact = _graph(K, widths, bias)
        lower_for_ort(exact, "exact")
        for got, ex, ref in zip(_run(model, feeds), _run(exact, feeds), want):
            np.testing.assert_array_equal(got, ref)
            np.testing.assert_array_equal(got, ex)


def test_one_token_path_is_taken():
    """Spoiling the MatMulNBits weights changes one-token outputs only."""
    K = 200
    good, bad = _graph(K), _graph(K)
    lower_for_ort(good, "fused")
    lower_for_ort(bad, "fused")
    packed = next(v for name, v in bad.graph.initializers.items() if name.startswith("mm0.nbits_b"))
    packed.const_value = ir.Tensor(np.full(packed.const_value.numpy().shape, 0x99, np.uint8), name=packed.name)
    one, many = _feeds(K, 1), _feeds(K, 4)
    assert not np.array_equal(_run(good, one)[0], _run(bad, one)[0])
    np.testing.assert_array_equal(_run(good, many)[0], _run(bad, many)[0])


def test_not_taken_where_not_exact_or_not_4_bit():
    assert nbits_exact(8960, 15, 7) and nbits_exact(1536, 127, 7) and not nbits_exact(8960, 127, 7)
    assert not nbits_exact(1536, 255, 7)  # codes above the sentinel: T = 8
    assert not nbits_exact(1536, 15, 8)  # not a 4-bit code
    assert not nbits_exact(200_000, 127, 7)  # sums could leave float32's exact integers
    for kw in (dict(wbits=8, w_extreme=False), dict(timesteps=(8, 3))):
        model = _graph(64, **kw)
        lower_for_ort(model, "fused")
        assert not _calls(model)
    model = _graph(64)
    lower_for_ort(model, "fused", nbits=False)
    assert not _calls(model)
    assert not any(n.op_type == "MatMulNBits" for f in model.functions.values() for n in f.graph.all_nodes())


def test_pack_layout():
    """u = w + 8, low nibble first, block - 1 codes then the zero-weight sentinel per block."""
    rng = np.random.default_rng(0)
    K, N, block = 300, 5, NBITS_BLOCK
    w = rng.integers(-7, 8, (K, N)).astype(np.int8)
    b, s = nbits_pack(w, block)
    blocks = nbits_blocks(K, block)
    assert b.shape == (N, blocks, block // 2) and s.shape == (N * blocks,) and (s == 1).all()
    u = np.stack([b & 15, b >> 4], axis=-1).reshape(N, blocks, block).astype(np.int64) - 8
    assert (u[:, :, -1] == 0).all()
    codes = u[:, :, :-1].reshape(N, -1)
    np.testing.assert_array_equal(codes[:, :K], w.T)
    assert (codes[:, K:] == 0).all()


def _packed(model: ir.Model) -> ir.Model:
    """The same graph with its weights as a .sbin's TENSOR_INT4 sections present them."""
    from spikec import int4

    for v in model.graph.initializers.values():
        a = v.const_value.numpy()
        if v.name.startswith("W"):
            v.const_value = int4.PackedInt4Tensor(ir.Tensor(int4.pack(a)), a.shape[0], name=v.name)
    return model


@pytest.mark.parametrize("K", [24, NBITS_BLOCK, 2 * (NBITS_BLOCK - 1) + 1, 1536, 8960])
@pytest.mark.parametrize("timesteps", [(4, 3), (7, 2)])
def test_every_token_on_packed_weights_matches_reference(K, timesteps):
    """Weights used in place (lower_for_ort(in_place=True)): MatMulNBits for any number of
    tokens, over the packed bytes themselves, bit for bit the reference's; no int8 weight left."""
    widths, bias = (7, 3), (True, False)
    taken = nbits_exact(K, 2 ** max(timesteps) - 1, 7)
    for worst in (False, True):
        for s in (1, 3, 17):
            feeds = _feeds(K, s, seed=K + s, worst=worst)
            want = sops.run_reference(_graph(K, widths, bias, timesteps=timesteps), feeds)
            model = _packed(_graph(K, widths, bias, timesteps=timesteps))
            stats = lower_for_ort(model, "fused", in_place=True)
            assert bool(_calls(model)) == taken
            assert (stats.layers["mm0"].get("tokens") == "MatMulNBits") == taken
            if taken:
                assert not any(n.startswith("W") for n in model.graph.initializers)  # no int8 copy
            for got, ref in zip(_run(model, feeds), want):
                np.testing.assert_array_equal(got, ref, err_msg=f"K={K} T={timesteps} s={s} worst={worst}")


def test_no_tokens_on_every_token_and_one_token_paths():
    """A batch with no tokens ([1, 0, K]) gives empty outputs on the every-token MatMulNBits
    path and on the one-token If's other branch, as the reference does."""
    K, widths, bias = 300, (7, 3), (True, False)
    feeds = {"x": np.zeros((1, 0, K), np.float32), "modality": np.zeros((1, 0), np.int64)}
    want = sops.run_reference(_graph(K, widths, bias), feeds)
    for in_place in (True, False):
        model = _packed(_graph(K, widths, bias))
        lower_for_ort(model, "fused", in_place=in_place)
        assert _calls(model)
        for got, ref in zip(_run(model, feeds), want):
            assert got.shape == ref.shape == (1, 0, got.shape[-1])


def test_int8_weights_in_place_get_no_4_bit_copy():
    """In place, int8-stored weights (a 2.0 .sbin) stay on MatMulInteger: packing them would
    be a copy the model's memory budget does not have."""
    model = _graph(300)
    lower_for_ort(model, "fused", in_place=True)
    assert not _calls(model)


# ---------------------------------------------------------------- one-token graphs (decode steps)


def _one_token_feeds(K: int, case: str, mod: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((1, 1, K)) * 1.3).astype(np.float32)
    if case == "worst":  # every dynamic code at +-(2**T - 1)
        x = np.where(rng.random((1, 1, K)) < 0.5, -1.0, 1.0).astype(np.float32)
    elif case == "ties":  # x / s exactly k + 1/2 for the dynamic scale 8 / 15 (T = 4) and static 2.5 / 15
        x = ((rng.integers(-15, 15, (1, 1, K)) + 0.5) * (2.5 / 15)).astype(np.float32)
    elif case in ("nan", "inf", "-inf"):
        x[0, 0, K // 2] = float(case)
    elif case == "zero":
        x[:] = 0.0
    return {"x": x, "modality": np.full((1, 1), mod, np.int64)}


def _functions_ops(model: ir.Model) -> set[str]:
    return {n.op_type for f in model.functions.values() for n in f.graph.all_nodes()}


@pytest.mark.parametrize("K", [24, NBITS_BLOCK - 1, 2 * (NBITS_BLOCK - 1), 1536, 8960])
@pytest.mark.parametrize("timesteps", [(4, 3), (6, 2), (1, 1)])
@pytest.mark.parametrize("act_scale", ["dynamic", "static"])
def test_one_token_graph_matches_reference(K, timesteps, act_scale):
    """lower_for_ort(one_token=True): the encoder and its MatMulNBits products are one call,
    no If and no int8 weight are left, and one token gives the reference's bits (codes at
    their bounds, ties, zero rows, NaN and +-inf rows; both modalities)."""
    widths, bias = (7, 3), (True, False)
    for case in ("random", "worst", "ties", "zero", "nan", "inf", "-inf"):
        for mod in (0, 1):
            feeds = _one_token_feeds(K, case, mod, seed=K)
            want = sops.run_reference(_graph(K, widths, bias, timesteps=timesteps, act_scale=act_scale), feeds)
            model = _graph(K, widths, bias, timesteps=timesteps, act_scale=act_scale)
            stats = lower_for_ort(model, "fused", one_token=True)
            assert stats.one_token_dims == ("b", "s")
            ops = [n.op_type for n in model.graph]  # the token's scalars (Reshape, Gather), then the call
            assert ops[-1] == (f"SpikeEncodeMatMul_tclif_nbits{NBITS_BLOCK}_"
                               f"{act_scale[:3] if act_scale == 'dynamic' else act_scale}_K{K}_7b_3_r3")
            assert ops[:-1] == ["Reshape"] + ["Gather"] * (2 if act_scale == "dynamic" else 3)
            assert "If" not in _functions_ops(model) and not any(n.startswith("W") for n in model.graph.initializers)
            assert [list(v.shape) for v in model.graph.inputs] == [[1, 1, K], [1, 1]]
            for got, ref in zip(_run(model, feeds), want):
                np.testing.assert_array_equal(got, ref, err_msg=f"K={K} T={timesteps} {act_scale} {case} mod={mod}")


def _chain(K: int, act_scale: str, timesteps=((4, 3), (4, 3))) -> ir.Model:
    """x [B, S, K] -> SpikeEncode -> SpikeMatMul [K, K] -> SpikeEncode -> SpikeMatMul [K, 8]:
    two one-token groups (two layers' worth) of the given timesteps."""
    rng = np.random.default_rng(3)
    static = {} if act_scale == "dynamic" else {"act_clip": [2.5] * sops.CLIP_T + [0.75] * sops.CLIP_T}
    nodes, inits, src = [], [], "x"
    for i, (T, m) in enumerate(zip(timesteps, (K, 8))):
        nodes += [helper.make_node("SpikeEncode", [src, "modality"], [f"q{i}", f"s{i}"], domain="spikec", name=f"enc{i}",
                                   timesteps=list(T), neuron="tc-lif", act_scale=act_scale, **static),
                  helper.make_node("SpikeMatMul", [f"q{i}", f"s{i}", "modality", f"W{i}", f"s_w{i}"], [f"y{i}"],
                                   domain="spikec", name=f"mm{i}", timesteps=list(T), neuron="tc-lif", wbits=4)]
        inits += [numpy_helper.from_array(rng.integers(-7, 8, (K, m)).astype(np.int8), f"W{i}"),
                  numpy_helper.from_array((rng.random(m) * 0.1 + 0.01).astype(np.float32), f"s_w{i}")]
        src = f"y{i}"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K]),
              helper.make_tensor_value_info("modality", TensorProto.INT64, ["b", "s"])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs,
                                                [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["b", "s", 8])],
                                                inits),
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("spikec", 1)])
    model.ir_version = 10
    return ir.from_proto(model)


@pytest.mark.parametrize("act_scale", ["dynamic", "static"])
def test_one_token_groups_share_their_token_scalars(act_scale):
    """Two groups whose encoders have the same timesteps share one scalar modality id and
    one Gather per table of largest codes (static scales differ per encoder only in value:
    here equal, so shared too); other timesteps get their own; the reference's bits."""
    for timesteps, gathers in (((4, 3), (4, 3)), 2), (((4, 3), (6, 2)), 4):
        model, ref = _chain(32, act_scale, timesteps), _chain(32, act_scale, timesteps)
        lower_for_ort(model, "fused", one_token=True)
        ops = [n.op_type for n in model.graph]
        static = act_scale == "static"
        assert ops.count("Reshape") == 1 and ops.count("Gather") == gathers + static * (gathers // 2), ops
        for case in ("random", "nan", "zero"):
            for mod in (0, 1):
                feeds = _one_token_feeds(32, case, mod)
                np.testing.assert_array_equal(_run(model, feeds)[0], sops.run_reference(ref, feeds)[0])


def test_one_token_graph_equals_the_default_graph_on_one_token():
    """The default lowering (the If picks MatMulNBits for one token) and the one-token graph
    give the same bits, the one-token graph refuses more tokens, and the default graph's
    one_token_dims name the axes that make a call one token."""
    K, widths, bias = 1536, (48, 8, 8), (True, True, False)
    default, one = _graph(K, widths, bias), _graph(K, widths, bias)
    assert lower_for_ort(default, "fused").one_token_dims == ("b", "s")
    lower_for_ort(one, "fused", one_token=True)
    for seed in range(3):
        feeds = _feeds(K, 1, seed=seed)
        for a, b in zip(_run(default, feeds), _run(one, feeds)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(Exception, match="dimensions"):  # onnxruntime: invalid dimensions for input x
        _run(one, _feeds(K, 2))
    assert lower_for_ort(_graph(K), "fused", nbits=False).one_token_dims is None


def test_one_token_graph_keeps_a_shared_code_apart():
    """A code that a product off MatMulNBits (8-bit weights) also reads keeps its encoder;
    the 4-bit products still run one token on MatMulNBits without an If, the 8-bit one on
    MatMulIntegerToFloat, all the reference's bits."""
    K, widths, bias = 300, (7, 3), (True, False)

    def graph():
        model = _graph(K, widths, bias)
        mm1 = next(n for n in model.graph if n.name == "mm1")
        mm1.attributes["wbits"] = ir.AttrInt64("wbits", 8)
        return model

    model = graph()
    stats = lower_for_ort(model, "fused", one_token=True)
    ops = [n.op_type for n in model.graph]
    assert any(op.startswith("EncodeDynamic") for op in ops) and f"SpikeMatMul_tclif_nbits{NBITS_BLOCK}_K{K}_7b_r3_u8_one" in ops
    assert stats.layers["mm0"]["tokens"] == "one (MatMulNBits)" and "one_token" not in stats.layers["mm1"]
    assert "If" not in _functions_ops(model)
    for case in ("random", "worst", "nan"):
        feeds = _one_token_feeds(K, case, 1)
        for got, ref in zip(_run(model, feeds), sops.run_reference(graph(), feeds)):
            np.testing.assert_array_equal(got, ref, err_msg=case)


def test_one_token_graph_needs_a_one_token_product():
    """Nothing takes MatMulNBits (8-bit weights; T = 7 at K = 8960, beyond nbits_exact): a
    one-token lowering is refused before the graph is touched."""
    from spikec.errors import SpikecError

    for model in (_graph(64, wbits=8, w_extreme=False), _graph(8960, timesteps=(7, 2))):
        before = [n.op_type for n in model.graph]
        with pytest.raises(SpikecError, match="nothing to lower for one token"):
            lower_for_ort(model, "fused", one_token=True)
        assert [n.op_type for n in model.graph] == before
    unnamed = _graph(64)  # the runtime could not tell a one-token call: refused, not guessed
    unnamed.graph.inputs[0].shape = ir.Shape([None, None, 64])
    with pytest.raises(SpikecError, match="could not be told apart"):
        lower_for_ort(unnamed, "fused", one_token=True)

