"""GPTQ (passes/gptq.py) as the quantize pass's --weight-method gptq.

- the blocked, Cholesky-based algorithm gives the same codes as a slow, obviously correct
  form: quantize row k, then re-solve the remaining rows by least squares (np.linalg.lstsq)
  for the damped objective, row after row (in act order too);
- its output error ||X W - X W_q||^2 beats RTN's by a margin on correlated inputs;
- codes stay within +-Qb and the scales are RTN's (so the spiking numerics are unchanged);
- the quantize pass: report rows, Hessians fetched in bounded chunks, SmoothQuant, errors;
- end to end: `spikec compile --weight-method gptq` of tiny-llava at W4, and every spiking
  product of the result on ORT equals spikec.reference bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spike_graphs import as_model, calib_folder, exported, lm_feeds, mixed_feeds, mixed_lm, run_passes
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.passes import gptq
from spikec.passes.gptq import gptq_quantize, proxy_loss
from spikec.passes.options import SpikeOptions
from spikec.passes.quantize import quantize_weight


def _layer(seed: int, K: int = 16, N: int = 8, n: int = 96):
    """A random layer with correlated inputs X = Z A (plus a few strong channels)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, K)) @ rng.standard_normal((K, K)) * rng.uniform(0.2, 2.0, K)
    W = rng.standard_normal((K, N)).astype(np.float32)
    return X, W, 2.0 / n * X.T @ X


def slow_gptq(W, X, bits, damp, order, group_size=0):
    """Row by row in `order`: quantize the row (RTN grid, as spikec.reference rounds), then set
    every row not yet quantized to the least-squares optimum of ||X_aug (W - V)||^2 given the
    rows quantized so far. X_aug = [X; sqrt(lambda n / 2) I] makes 2/n X_aug^T X_aug =
    H + lambda I, the damped Hessian (lambda = damp * mean diag(H)). No Cholesky, no blocks.
    With group_size G: rows in order, a group's scale is RTN's of its rows as they stand when
    its first row comes; in any other order (act-order), RTN's of the original rows."""
    n, K = X.shape
    H = 2.0 / n * X.T @ X
    lam = damp * np.mean(np.diag(H))
    Xa = np.vstack([X, np.sqrt(lam * n / 2) * np.eye(K)])
    G = group_size or K
    s = np.stack([R.scale_per_channel(W[g:g + G], bits) for g in range(0, K, G)])
    in_order = list(order) == list(range(K))
    W64, V = W.astype(np.float64), W.astype(np.float64)
    Q = np.zeros(W.shape, np.int64)
    for i, k in enumerate(order):
        if group_size and in_order and k % G == 0:
            s[k // G] = R.scale_per_channel(V[k:k + G].astype(np.float32), bits)
        Q[k] = R.quantize(V[k], s[k // G], R.qmax(bits))
        done, rest = list(order[: i + 1]), list(order[i + 1:])
        if rest:
            D = Xa[:, done] @ (W64[done] - R.dequantize(Q[done], s[np.array(done) // G]).astype(np.float64))
            V[rest] = W64[rest] + np.linalg.lstsq(Xa[:, rest], D, rcond=None)[0]
    return Q, (s if group_size else s[0])


def _out_err(X, W, codes, s):
    return float(np.sum((X @ (W.astype(np.float64) - codes * s.astype(np.float64))) ** 2))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bits", [4, 8])
def test_codes_equal_the_slow_least_squares_form(seed, bits):
    X, W, H = _layer(seed)
    codes, s_w = gptq_quantize(W, H, bits, damp=0.01)
    want, s = slow_gptq(W, X, bits, 0.01, np.arange(W.shape[0]))
    assert np.array_equal(s_w, s)
    np.testing.assert_array_equal(codes.astype(np.int64), want)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [4, 8])
def test_group_wise_codes_equal_the_slow_form(seed, act_order, group_size):
    X, W, H = _layer(seed, K=24 if group_size == 4 else 32)
    codes, s_w = gptq_quantize(W, H, 4, damp=0.01, act_order=act_order, group_size=group_size)
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(W.shape[0])
    want, s = slow_gptq(W, X, 4, 0.01, order, group_size)
    assert s_w.shape == (W.shape[0] // group_size, W.shape[1]) and s_w.dtype == np.float32
    # the scales of later groups come from updated weights: equal to float rounding
    np.testing.assert_allclose(s_w, s, rtol=1e-5)
    np.testing.assert_array_equal(codes.astype(np.int64), want)
    # group-wise scales fit the layer at least as well as RTN's per group, on its own inputs
    rtn_q, rtn_s = quantize_weight(W, 4, "w", group_size)
    assert proxy_loss(W, codes, s_w, H) < proxy_loss(W, rtn_q, rtn_s, H)
    # and the per-group RTN scale grid beats the per-channel one
    assert proxy_loss(W, rtn_q, rtn_s, H) < proxy_loss(W, *quantize_weight(W, 4, "w"), H)


def test_group_size_must_divide_k():
    X, W, H = _layer(0, K=24)
    with pytest.raises(SpikecError, match="does not divide K = 24"):
        gptq_quantize(W, H, 4, group_size=16)
    with pytest.raises(SpikecError, match="does not divide"):
        quantize_weight(W, 4, "layer.q", 16)


@pytest.mark.parametrize("block", [1, 5, 128])
def test_block_size_does_not_change_the_codes(block):
    X, W, H = _layer(7, K=24, N=6)
    ref, _ = gptq_quantize(W, H, 4, block=128)
    codes, _ = gptq_quantize(W, H, 4, block=block)
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(codes.astype(np.int64), slow_gptq(W, X, 4, 0.01, np.arange(24))[0])


@pytest.mark.parametrize("seed", range(3))
def test_act_order_processes_rows_by_decreasing_diag_and_stays_correct(seed):
    X, W, H = _layer(seed)
    order = np.argsort(-np.diag(H), kind="stable")
    assert not np.array_equal(order, np.arange(len(order)))
    codes, s_w = gptq_quantize(W, H, 4, damp=0.01, act_order=True)
    want, _ = slow_gptq(W, X, 4, 0.01, order)
    np.testing.assert_array_equal(codes.astype(np.int64), want)
    plain, s_plain = gptq_quantize(W, H, 4, damp=0.01)
    assert np.array_equal(s_w, s_plain) and not np.array_equal(codes, plain)  # another order, other codes


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("act_order", [False, True])
def test_output_error_beats_rtn_by_a_margin(seed, act_order):
    X, W, H = _layer(100 + seed, K=64, N=32, n=512)
    codes, s_w = gptq_quantize(W, H, 4, act_order=act_order)
    rtn, s_rtn = quantize_weight(W, 4, "w")
    e_gptq, e_rtn = _out_err(X, W, codes, s_w), _out_err(X, W, rtn, s_rtn)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # proxy_loss is the same objective: trace(E^T H E) = 2/n ||X E||^2
    assert proxy_loss(W, codes, s_w, H) == pytest.approx(2 / X.shape[0] * e_gptq, rel=1e-9)


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_in_range_scales_are_rtn_and_deterministic(bits):
    X, W, H = _layer(3, K=40, N=12)
    W[:, 0] *= 50  # one wide channel, one all-zero channel (RTN's scale 1.0)
    W[:, 1] = 0
    codes, s_w = gptq_quantize(W, H, bits)
    rtn, s_rtn = quantize_weight(W, bits, "w")
    assert codes.dtype == np.int8 and codes.shape == W.shape and s_w.dtype == np.float32
    assert np.abs(codes.astype(int)).max() <= R.qmax(bits)
    assert np.array_equal(s_w, s_rtn) and not np.any(codes[:, 1])
    again, s_again = gptq_quantize(W, H, bits)
    assert np.array_equal(codes, again) and np.array_equal(s_w, s_again)


def test_uncorrelated_inputs_give_rtn_codes_and_dead_inputs_keep_rtn_codes():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 5)).astype(np.float32)
    rtn, _ = quantize_weight(W, 4, "w")
    np.testing.assert_array_equal(gptq_quantize(W, np.diag(rng.uniform(0.5, 2, 12)), 4)[0], rtn)
    X, _, _ = _layer(1, K=12, N=5)
    X[:, [2, 7]] = 0  # inputs never active on the calibration data
    codes, _ = gptq_quantize(W, 2 / len(X) * X.T @ X, 4, act_order=True)
    np.testing.assert_array_equal(codes[[2, 7]], rtn[[2, 7]])


def test_float32_hessian_above_the_bound(monkeypatch):
    X, W, H = _layer(5, K=32, N=8, n=256)
    ref, _ = gptq_quantize(W, H, 8)
    monkeypatch.setattr(gptq, "H_FLOAT32_ABOVE", 16)
    assert gptq.hessian_dtype(32) == np.float32
    codes, _ = gptq_quantize(W, H.astype(np.float32), 8)
    assert np.mean(codes != ref) < 0.02 and np.abs(codes.astype(int) - ref).max() <= 1


def test_bad_inputs_are_refused():
    X, W, H = _layer(0)
    with pytest.raises(SpikecError, match="Hessian shape"):
        gptq_quantize(W, H[:4, :4], 4, where="l0")
    with pytest.raises(SpikecError, match="NaN or inf"):
        gptq_quantize(W, np.full_like(H, np.nan), 4)
    with pytest.raises(SpikecError, match="damp"):
        gptq_quantize(W, H, 4, damp=0.0)


def test_hessians_are_fetched_in_bounded_chunks_and_freed():
    rng = np.random.default_rng(0)
    feeds = [{"a": rng.standard_normal((2, 5, 8), np.float32), "b": rng.standard_normal((1, 7, 4), np.float32),
              "c": rng.standard_normal((3, 6), np.float32)} for _ in range(3)]
    calls = []

    def run(names):
        calls.append(list(names))
        return [{n: f[n] for n in names} for f in feeds]

    inputs = [("a", 8), ("a", 8), ("b", 4), ("c", 6), ("a", 8)]  # "a" feeds three layers (Q/K/V)
    hs = gptq.Hessians(run, inputs, scale={"b": np.float32(2.0)}, budget_bytes=8 * 8 * 8 + 4 * 4 * 8)
    for name, K in inputs:
        h = hs.get(name)
        x = np.concatenate([f[name].reshape(-1, K) for f in feeds]).astype(np.float64) / (2 if name == "b" else 1)
        np.testing.assert_allclose(h.value(), 2 / len(x) * x.T @ x, rtol=1e-12)
        assert h.n == len(x)
        hs.done(name)
    assert calls == [["a", "b"], ["c"]]  # a and b fit the budget together, c takes a second pass
    assert hs.ready == {}  # every H freed after its last layer


def _ql(model, name):
    return next(n for n in model.graph if n.name == name and n.op_type == "QuantLinear")


@pytest.mark.parametrize("smooth", [None, 0.5])
def test_quantize_pass_reports_gptq_against_rtn(smooth):
    feeds = mixed_feeds(3)
    kw = dict(calib="npz", act_scale="dynamic", wbits=4, smooth=smooth)
    rtn_model, gptq_model = as_model(mixed_lm()), as_model(mixed_lm())
    run_passes(rtn_model, ["quantize"], feeds, **kw)
    ctx = run_passes(gptq_model, ["quantize"], feeds, weight_method="gptq", gptq_act_order=True, **kw)
    q = ctx.results["quantize"]
    assert q["weight_method"] == "gptq" and q["gptq"]["loss"] < 0.9 * q["gptq"]["rtn_loss"]
    rows = [r for r in q["layers"] if r["kind"] == "linear"]
    assert rows and all(r["weight_method"] == "gptq" for r in rows)
    changed = 0
    for r in rows:
        g = r["gptq"]
        assert g["loss"] <= g["rtn_loss"] * 1.001 and g["hessian"] == "float64" and g["act_order"]
        a, b = _ql(rtn_model, r["name"]), _ql(gptq_model, r["name"])
        assert np.array_equal(a.inputs[3].const_value.numpy(), b.inputs[3].const_value.numpy())  # same s_w
        changed += g["codes_changed"]
        assert g["codes_changed"] == int(np.count_nonzero(a.inputs[2].const_value.numpy() != b.inputs[2].const_value.numpy()))
    assert changed > 0


def test_gptq_needs_calibration_data():
    with pytest.raises(SpikecError, match="--weight-method gptq: .*--calib PATH"):
        SpikeOptions(weight_method="gptq").validate()
    with pytest.raises(SpikecError, match="--weight-method obs"):
        SpikeOptions(weight_method="obs").validate()
    with pytest.raises(SpikecError, match="--gptq-damp"):
        SpikeOptions(weight_method="gptq", calib="x.npz", gptq_damp=0).validate()
    with pytest.raises(SpikecError, match="--weight-method gptq.*--calib"):
        run_passes(as_model(mixed_lm()), ["quantize"], None, act_scale="dynamic", calib="x.npz", weight_method="gptq")




def test_compile_gptq_end_to_end_every_spiking_product_equals_the_reference(run_cli, tmp_path):
    from spikec import ir as spir
    from spikec.runtime.model import load
    from spikec.ort_lowering import lower_for_ort

    out, report = tmp_path / "m.sbin", tmp_path / "report.json"
    res = run_cli("compile", str(exported("tiny-llava")), "-o", str(out), "--weight-method", "gptq", "--gptq-act-order",
                  "--calib", str(calib_folder()), "--wbits", "4", "--act-scale", "dynamic", "--report", str(report))
    assert res.code == 0, res.err
    graphs = json.loads(report.read_text())["extra"]["graphs"]
    for role in ("lm", "vision"):
        q = graphs[role]["quantize"]
        assert q["weight_method"] == "gptq" and q["gptq"]["loss"] < q["gptq"]["rtn_loss"]
        assert all(r["weight_method"] == "gptq" for r in q["layers"] if r["kind"] == "linear")
    assert run_cli("compile", str(exported("tiny-llava")), "-o", str(tmp_path / "x.sbin"),
                   "--weight-method", "gptq").code != 0

    with load(str(out)) as m:
        feeds = lm_feeds(m)
        model = m.sbin.model("lm")
    pairs = []
    for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
        enc = mm.inputs[0].producer()
        if enc is None or enc.op_type != sops.SPIKE_ENCODE or mm.inputs[3].const_value is None:
            continue
        pairs.append((mm, enc.inputs[0].name, mm.outputs[0].name))
        for v in (enc.inputs[0], mm.outputs[0]):
            if v not in model.graph.outputs:
                model.graph.outputs.append(v)
    assert len(pairs) >= 7 * 2  # every linear layer of the 2-layer LM
    infos = [(mm, x, y, mm.inputs[3].const_value.numpy(), mm.inputs[4].const_value.numpy(),
              mm.inputs[5].const_value.numpy() if len(mm.inputs) > 5 and mm.inputs[5] is not None else None,
              sops.get_timesteps(mm)) for mm, x, y in pairs]
    assert all(np.abs(w_q.astype(int)).max() <= 7 for _, _, _, w_q, _, _, _ in infos)
    lower_for_ort(model, "fused")
    sess = spir.ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))
    mod = feeds["modality"]
    for mm, x, y, w_q, s_w, bias, T in infos:
        T_tok = np.asarray(T)[mod]
        s_x = R.scale_per_token(outs[x], T_tok + 1)
        np.testing.assert_array_equal(outs[y], R.spiking_linear(outs[x], s_x, w_q, s_w, bias, T_tok, where=mm.name),
                                      err_msg=mm.name)
