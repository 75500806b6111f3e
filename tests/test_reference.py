"""Contract tests for spikec.reference (SEMANTICS.md sections 1-3)."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from spikec import reference as ref
from spikec.errors import SpikecError

FAST = settings(max_examples=40, deadline=None)


def rng_codes(rng, shape, bound):
    """Uniform integer codes in [-bound, bound] (bound may broadcast per token)."""
    bound = np.broadcast_to(np.asarray(bound, dtype=np.int64), shape)
    return np.floor(rng.random(shape) * (2 * bound + 1)).astype(np.int64) - bound


# ------------------------------------------------------------------ codes and scales


def test_qmax():
    assert [ref.qmax(b) for b in (2, 4, 5, 8, 32)] == [1, 7, 15, 127, 2**31 - 1]
    for bad in (1, 0, 33, 4.0):
        with pytest.raises(SpikecError, match="bits"):
            ref.qmax(bad)


def test_quantize_rounds_half_to_even_and_clamps():
    s = np.float32(0.5)
    x = np.array([0.25, 0.75, -0.25, -0.75, 1.25, 100.0, -100.0, np.inf], np.float32)
    q = ref.quantize(x, s, 7)
    assert q.dtype == np.int32
    assert q.tolist() == [0, 2, 0, -2, 2, 7, -7, 7]


def test_quantize_per_token_scale_and_qmax():
    x = np.array([[1.0, -3.0, 2.0], [10.0, 5.0, -20.0]], np.float32)
    T = np.array([2, 4])
    s = ref.scale_per_token(x, T + 1)  # per-token bits: Qb = 3 and 15
    assert s.shape == (2, 1) and s.dtype == np.float32
    q = ref.quantize(x, s, (2**T - 1)[:, None])
    assert q.tolist() == [[1, -3, 2], [8, 4, -15]]


def test_quantize_rejects_bad_input():
    with pytest.raises(SpikecError, match="quantize at n1: scale"):
        ref.quantize([1.0], 0.0, 7, where="n1")
    with pytest.raises(SpikecError, match="NaN"):
        ref.quantize([np.nan], 1.0, 7)
    with pytest.raises(SpikecError, match="broadcast"):
        ref.quantize(np.ones((2, 3)), np.ones((3, 1)), 7)


def test_dequantize():
    y = ref.dequantize(np.array([3, -7], np.int32), np.float32(0.25))
    assert y.dtype == np.float32 and y.tolist() == [0.75, -1.75]


def test_scales_and_zero_slices():
    x = np.array([[0.0, 0.0], [1.0, -4.0]], np.float32)
    assert ref.scale_per_tensor(x, 8) == np.float32(4.0) / np.float32(127)
    assert ref.scale_per_tensor(np.zeros(3), 8) == 1.0  # all zero: scale 1, codes 0
    assert ref.scale_per_token(x, 4)[:, 0].tolist() == [1.0, np.float32(4.0) / np.float32(7)]
    w = np.array([[0.0, 2.0, -1.0], [0.0, -7.0, 0.5]], np.float32)  # [K=2, N=3]
    s_w = ref.scale_per_channel(w, 4)
    assert s_w.dtype == np.float32 and s_w.tolist() == [1.0, 1.0, np.float32(1.0) / np.float32(7)]
    q = ref.quantize(w, s_w, 7)
    assert q[:, 0].tolist() == [0, 0] and q[:, 1].tolist() == [2, -7]
    with pytest.raises(SpikecError, match="inf or NaN"):
        ref.scale_per_tensor([np.inf], 8)


# ------------------------------------------------------------------ ONNX QuantizeLinear agreement


def _ort_quantize(x, scale, axis=None):
    """Run x through a one-node QuantizeLinear model (int8, zero point 0) in ORT."""
    scale = np.asarray(scale, np.float32)
    zp = np.zeros(scale.shape, np.int8)
    attrs = {} if axis is None else {"axis": axis}
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT8, list(x.shape))],
        initializer=[numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "zp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0].astype(np.int32)


@pytest.mark.parametrize("s", [2.0**-3, 1.0, 0.3, 1.7e-3])
def test_quantize_matches_ort_per_tensor(s):
    s = np.float32(s)
    rng = np.random.default_rng(0)
    ties = (np.arange(-127, 127) + 0.5).astype(np.float32) * s  # exact .5 ties when s = 2**k
    rand = rng.uniform(-127, 127, 4096).astype(np.float32) * s
    x = np.concatenate([ties, rand, np.float32([0, 127 * s, -127 * s])])
    # Within +-127*s, x/s rounds into [-127, 127], so ORT's int8 saturation at -128
    # cannot differ from the symmetric clamp: the comparison is exact, ties included.
    assert np.array_equal(_ort_quantize(x, s), ref.quantize(x, s, 127))
    if s == np.float32(2.0**-3):  # the ties really are ties, and round to even
        assert np.all(np.abs(ties / s - np.rint(ties / s)) == 0.5)
        assert np.all(ref.quantize(ties, s, 127) % 2 == 0)
    # Out of range: ORT saturates to [-128, 127], the contract to [-127, 127]; the
    # only difference is the code -128, which a symmetric quantizer never emits, so
    # clamping ORT's output to +-127 must give the reference exactly.
    big = rng.uniform(-1000, 1000, 1024).astype(np.float32) * s
    assert np.array_equal(np.clip(_ort_quantize(big, s), -127, 127), ref.quantize(big, s, 127))


def test_quantize_matches_ort_per_channel():
    rng = np.random.default_rng(1)
    K, N = 254, 6
    s = np.float32([2.0**-4, 2.0**-1, 1.0, 0.37, 3.1e-2, 5.0])
    w = rng.uniform(-127, 127, (K, N)).astype(np.float32) * s
    w[:, :3] = (np.arange(K)[:, None] - 127 + 0.5).astype(np.float32) * s[:3]  # ties
    got = ref.quantize(w, s[None, :], 127)  # broadcast scale: column j is channel j
    assert np.array_equal(_ort_quantize(w, s, axis=1), got)


# ------------------------------------------------------------------ TC-LIF encoding


@pytest.mark.parametrize("T", range(1, 9))
def test_tclif_exhaustive(T):
    q = np.arange(-(2**T - 1), 2**T)
    planes = ref.tclif_encode(q, T)
    assert planes.dtype == np.int8 and planes.shape == (T, q.size)
    assert set(np.unique(planes)) <= {-1, 0, 1}
    assert np.all(planes * np.sign(q) >= 0)  # every spike has the code's sign
    weights = 2 ** np.arange(T - 1, -1, -1)
    assert np.array_equal(np.tensordot(weights, planes.astype(np.int64), 1), q)
    n_planes, membrane = ref.tclif_neuron(q, T)
    assert np.array_equal(n_planes, planes)
    assert not membrane.any()


def test_tclif_rejects_out_of_range():
    for T in range(1, 9):
        for bad in (2**T, -(2**T)):
            with pytest.raises(SpikecError, match="exceeds"):
                ref.tclif_encode(np.array([0, bad]), T)
            with pytest.raises(SpikecError, match="exceeds"):
                ref.tclif_neuron(np.array([bad]), T)
    for T in (0, -1, 32):
        with pytest.raises(SpikecError, match="tclif_encode at n7: T"):
            ref.tclif_encode(np.array([0]), T, where="n7")
    with pytest.raises(SpikecError, match="integer codes"):
        ref.tclif_encode(np.array([1.0]), 2)


def test_tclif_multidim_shape():
    q = np.array([[3, -2], [0, 1]])
    planes = ref.tclif_encode(q, 2)
    assert planes.shape == (2, 2, 2)
    assert planes[:, 0, 0].tolist() == [1, 1] and planes[:, 0, 1].tolist() == [-1, 0]


# ------------------------------------------------------------------ spiking product


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6), k=st.integers(1, 24), m=st.integers(1, 5),
    w_bits=st.sampled_from([4, 8]),
    batch=st.sampled_from([(), (2,), (2, 3)]),
    batched_w=st.booleans(),
)
def test_spike_matmul_equals_integer_product(seed, n, k, m, w_bits, batch, batched_w):
    rng = np.random.default_rng(seed)
    T = rng.integers(1, 9, batch + (n,))  # mixed per-token timesteps
    q = rng_codes(rng, batch + (n, k), (2**T - 1)[..., None])
    w = rng_codes(rng, (batch if batched_w else ()) + (k, m), ref.qmax(w_bits))
    got = ref.spike_matmul(q, w, T)
    assert got.dtype == np.int32
    assert np.array_equal(got, q @ w)
    assert np.array_equal(ref.integer_matmul(q, w), q @ w)


def test_spike_matmul_scalar_T_and_validation():
    q, w = np.array([[7, -7, 3]]), np.ones((3, 2), np.int8)
    assert ref.spike_matmul(q, w, 3).tolist() == [[3, 3]]
    with pytest.raises(SpikecError, match="exceeds"):
        ref.spike_matmul(q, w, 2)  # |7| needs T >= 3
    with pytest.raises(SpikecError, match="spike_matmul at mm0: cannot multiply"):
        ref.spike_matmul(q, np.ones((2, 2), np.int8), 3, where="mm0")
    with pytest.raises(SpikecError, match="T_tokens"):
        ref.spike_matmul(q, w, [3, 3])


def test_zero_plane_alignment():
    rng = np.random.default_rng(2)
    T = np.array([2, 8, 4, 1, 8])
    q = rng_codes(rng, (5, 16), (2**T - 1)[:, None])
    w = rng_codes(rng, (16, 3), 127)
    planes = ref.tclif_encode_tokens(q, T)
    assert planes.shape == (8, 5, 16)
    together = ref.spike_matmul(q, w, T)
    for i, Ti in enumerate(T):
        assert not planes[: 8 - Ti, i].any()  # zero planes at the top
        assert np.array_equal(planes[8 - Ti :, i], ref.tclif_encode(q[i], Ti))
        alone = ref.spike_matmul(q[i : i + 1], w, Ti)  # T_max = T_i here
        assert np.array_equal(together[i], alone[0])
        # And with a neighbour that raises T_max to 8: row i is unchanged.
        pair = ref.spike_matmul(np.stack([q[i], q[1]]), w, [Ti, 8])
        assert np.array_equal(pair[0], alone[0])


# ------------------------------------------------------------------ rate-coded IF


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_rate_if(bits):
    rng = np.random.default_rng(bits)
    Qb = ref.qmax(bits)
    q = np.arange(-Qb, Qb + 1)
    planes = ref.rate_if_encode(q, bits)
    assert planes.dtype == np.uint8 and planes.shape == (2**bits - 1, q.size)
    assert np.array_equal(planes.sum(0), q + 2 ** (bits - 1))  # offset code c
    assert np.all(np.diff(planes.astype(int), axis=0) <= 0)  # fires first, then silent
    # The same b-bit code takes b - 1 TC-LIF planes (3 vs 15 at b = 4).
    assert ref.tclif_encode(q, bits - 1).shape[0] == bits - 1
    x = rng_codes(rng, (4, 9), Qb)
    w = rng_codes(rng, (9, 5), 127)
    assert np.array_equal(
        ref.rate_if_bias_fold(w, bits), -(2 ** (bits - 1)) * w.sum(0)
    )
    got = ref.rate_if_matmul(x, w, bits)
    assert got.dtype == np.int32 and np.array_equal(got, x @ w)
    with pytest.raises(SpikecError, match="exceeds"):
        ref.rate_if_encode(np.array([-(Qb + 1)]), bits)  # not a symmetric code


def test_rate_if_plane_counts_at_b4():
    q = np.array([5])
    assert ref.rate_if_encode(q, 4).shape[0] == 15
    assert ref.tclif_encode(q, 3).shape[0] == 3


# ------------------------------------------------------------------ int32 overflow guard


def k_max(T, Qw):
    return (2**31 - 1) // ((2**T - 1) * Qw)


@pytest.mark.parametrize("T", range(1, 9))
@pytest.mark.parametrize("Qw", [7, 127])
def test_overflow_guard_bound(T, Qw):
    K = k_max(T, Qw)
    assert K * (2**T - 1) * Qw <= 2**31 - 1 < (K + 1) * (2**T - 1) * Qw
    assert ref.overflow_free(K, T, Qw) and not ref.overflow_free(K + 1, T, Qw)
    ref.check_overflow(K, T, Qw, where="layer.3")
    bound = (K + 1) * (2**T - 1) * Qw
    with pytest.raises(SpikecError, match=rf"layer\.3: .*K={K + 1} .*2\*\*{T} .*{bound}"):
        ref.check_overflow(K + 1, T, Qw, where="layer.3")


def test_overflow_guard_at_2_pow_31():
    with pytest.raises(SpikecError):
        ref.check_overflow(2**24, 1, 128)  # exactly 2**31
    ref.check_overflow(2**31 - 1, 1, 1)  # exactly 2**31 - 1


@pytest.mark.parametrize("T,Qw", [(8, 127), (12, 127), (16, 7), (16, 127), (24, 127)])
def test_spike_matmul_at_k_max_does_not_wrap(T, Qw):
    # With N = M = 1 even K_max = 66311 (T=8, Qw=127) is a tiny array.
    K = k_max(T, Qw)
    q = np.full((2, K), 2**T - 1)
    q[1] = -q[1]
    w = np.full((K, 1), Qw)
    exact = K * (2**T - 1) * Qw
    assert ref.spike_matmul(q, w, T)[:, 0].tolist() == [exact, -exact]
    q1, w1 = np.full((1, K + 1), 2**T - 1), np.full((K + 1, 1), Qw)
    with pytest.raises(SpikecError, match="overflow"):
        ref.spike_matmul(q1, w1, T)
    # The guard is what keeps it exact: one more row of K really wraps int32.
    wrapped = int(ref.horner(ref.tclif_encode(q1, T), w1)[0, 0])
    assert wrapped == (K + 1) * (2**T - 1) * Qw - 2**32


# ------------------------------------------------------------------ linear layer


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 6), k=st.integers(1, 32), m=st.integers(1, 6),
    w_bits=st.sampled_from([4, 8]),
    per_token=st.booleans(), with_bias=st.booleans(),
)
def test_spiking_linear_equals_fake_quant(seed, n, k, m, w_bits, per_token, with_bias):
    rng = np.random.default_rng(seed)
    T = rng.choice([3, 4, 8], n)  # e.g. vision 3, text 4, and a wide one
    x = (rng.standard_normal((n, k)) * rng.uniform(0.1, 10)).astype(np.float32)
    w = rng.standard_normal((k, m)).astype(np.float32)
    s_x = ref.scale_per_token(x, T + 1) if per_token else ref.scale_per_tensor(x, int(T.max()) + 1)
    s_w = ref.scale_per_channel(w, w_bits)
    w_q = ref.quantize(w, s_w, ref.qmax(w_bits))
    bias = rng.standard_normal(m).astype(np.float32) if with_bias else None
    y = ref.spiking_linear(x, s_x, w_q, s_w, bias, T)
    y_fake = ref.fake_quant_linear(x, s_x, w_q, s_w, bias, T)
    assert y.dtype == np.float32 and y.shape == (n, m)
    assert np.array_equal(y, y_fake)
    # The documented float32 order, written out: (float32(acc) * s_x) * s_w + bias.
    acc = ref.quantize(x, s_x, (2**T - 1)[:, None]).astype(np.int64) @ w_q
    expect = (acc.astype(np.float32) * s_x) * s_w
    if bias is not None:
        expect = expect + bias
    assert np.array_equal(y, expect)


def test_spiking_linear_approximates_float_and_validates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    w = rng.standard_normal((64, 8)).astype(np.float32)
    T = np.array([8, 8, 7, 8])
    s_x, s_w = ref.scale_per_token(x, T + 1), ref.scale_per_channel(w, 8)
    y = ref.spiking_linear(x, s_x, ref.quantize(w, s_w, 127), s_w, None, T)
    assert np.allclose(y, x @ w, atol=0.5)
    w_q = ref.quantize(w, s_w, 127)
    with pytest.raises(SpikecError, match="s_x"):
        ref.spiking_linear(x, s_x[:, 0], w_q, s_w, None, T)
    with pytest.raises(SpikecError, match="fake_quant_linear at fc: s_w"):
        ref.fake_quant_linear(x, s_x, w_q, s_w[:4], None, T, where="fc")
