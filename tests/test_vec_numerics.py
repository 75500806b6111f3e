"""One numeric for the vector functions (spikec/vector.py, passes/vector_numerics.py).

- spikec.vec's RMSNorm, LayerNorm, Softmax and SiLU, as onnxruntime runs them in a spikec
  session and as onnx's reference evaluator interprets their bodies, equal
  spikec.reference.vec_* (which the simulator executes and the RTL is co-simulated
  against) bit for bit: on bf16-valued rows with outlier channels and scales from 2**-11
  to 2**11, lengths 1 to 8960 (multiples of 16 and not), ranks 2 to 4, one session across
  row lengths (the softmax over a growing key cache), NaN, +-inf and -0.0;
- the vector-numerics pass puts them where an exported model computes those functions,
  keeping the output names;
- a .sbin graph may hold only spikec.vec's own functions, byte for byte.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import vec_graphs as G
from spikec import ir as spir
from spikec import reference as R
from spikec import vector
from spikec.errors import SpikecError
from spikec.package import check_graph_ops
from spikec.passes.vector_numerics import VectorNumerics

REFERENCE = {vector.RMSNORM: R.vec_rmsnorm, vector.LAYERNORM: R.vec_layernorm, vector.SOFTMAX: R.vec_softmax,
             vector.SILU: R.vec_silu}
EPS = np.float32(1e-6)


def _call_model(op: str) -> onnx.ModelProto:
    """One spikec.vec call with its function; x of any shape, gamma/beta/eps as inputs."""
    names = list(vector.function(op).input)
    node = helper.make_node(op, names, ["y"], domain=vector.DOMAIN)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)] + [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] if n in ("gamma", "beta") else []) for n in names[1:]]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", vector.OPSET),
                                                   helper.make_opsetid(vector.DOMAIN, vector.VERSION)],
                             functions=[vector.function(op)])


def _rows(rng, n: int, L: int) -> np.ndarray:
    """bf16-valued rows (many values near a rounding tie downstream), scales 2**-11..2**11, outliers."""
    x = rng.standard_normal((n, L)).astype(np.float32) * np.exp2(rng.integers(-11, 12, (n, 1))).astype(np.float32)
    x[:, rng.integers(0, L, 3)] *= 50
    return (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, NaN for NaN (a NaN's payload is not part of the contract)."""
    nan = np.isnan(a)
    return (a.shape == b.shape and np.array_equal(nan, np.isnan(b))
            and np.array_equal(np.where(nan, 0, a).view(np.uint32), np.where(nan, 0, b).view(np.uint32)))


def _want(op: str, x: np.ndarray, feeds: dict) -> np.ndarray:
    args = [feeds[k] for k in ("gamma", "beta") if k in feeds] + ([EPS] if "eps" in feeds else [])
    return REFERENCE[op](x.reshape(-1, x.shape[-1]), *args).reshape(x.shape)


@pytest.mark.parametrize("op", vector.OPS)
def test_onnxruntime_and_the_function_body_give_the_reference_bits(op):
    rng = np.random.default_rng(7)
    session = spir.ort_session(ir.from_proto(_call_model(op)))  # as the ORT target makes sessions
    body = ReferenceEvaluator(_call_model(op))  # the function body, op by op (no spikec kernel)
    names = [i.name for i in session.get_inputs()]
    for L in (1, 3, 15, 16, 17, 100, 1536, 8960):
        for shape in ((5, L), (2, 3, L), (1, 2, 3, L)):
            x = _rows(rng, int(np.prod(shape[:-1])), L).reshape(shape)
            flat = x.reshape(-1, L)
            if L > 4:  # non-finite rows and a -0.0 (NaN, +inf, -inf give NaN rows; the rest unaffected)
                flat[0, 2] = np.nan
                flat[-1, 1] = np.inf if op != vector.SILU else -np.inf
                flat[1, 0] = -0.0
            feeds = {"x": x}
            for k in ("gamma", "beta"):
                if k in names:
                    feeds[k] = _rows(rng, 1, L)[0]
            if "eps" in names:
                feeds["eps"] = np.array(EPS)
            want = _want(op, x, feeds)
            got = session.run(None, feeds)[0]
            assert _same_bits(got, want), f"{op} L={L} shape={shape}: {np.sum(got.view(np.uint32) != want.view(np.uint32))} differ"
            if L <= 100:
                assert _same_bits(body.run(None, feeds)[0], want), f"{op} L={L}: function body"


def test_exp_edges_equal_the_reference():
    """exp's clamp, the two-step 2**k scaling into subnormals and overflow, via SiLU(-x)."""
    session = spir.ort_session(ir.from_proto(_call_model(vector.SILU)))
    x = np.concatenate([np.linspace(-100, 100, 4001, dtype=np.float32),
                        np.float32([-104, -103.9, -89, -88.7, -87.3, 87.3, 88.7, 89, 104, 1e-45, -1e-45, 0, -0.0])])
    want = R.vec_silu(x[None, :])[0]
    assert _same_bits(session.run(None, {"x": x})[0], want)


def test_the_pass_puts_the_functions_where_the_patterns_were():
    for make, op in ((G.rmsnorm, vector.RMSNORM), (lambda: G.rmsnorm(div=True), vector.RMSNORM),
                     (G.layernorm, vector.LAYERNORM), (G.softmax, vector.SOFTMAX), (G.silu, vector.SILU)):
        proto, make_feeds = make()
        model = ir.from_proto(proto)
        out_name = model.graph.outputs[0].name
        result = VectorNumerics()(model)
        assert result.modified
        calls = [n for n in model.graph if n.domain == vector.DOMAIN]
        assert [n.op_type for n in calls] == [op] and not [n for n in model.graph if n.domain == "" and n.op_type not in
                                                             ("Constant",)]
        assert model.graph.outputs[0].name == out_name and calls[0].outputs[0] is model.graph.outputs[0]
        feeds = make_feeds(np.random.default_rng(1), 20)
        y = spir.ort_session(model).run(None, feeds)[0]
        x = feeds[next(iter(feeds))]
        node = calls[0]
        args = [c.const_value.numpy() for c in node.inputs[1:]]
        if len(args) > 1:
            args[-1] = np.float32(args[-1])
        assert _same_bits(y, REFERENCE[op](x.reshape(-1, x.shape[-1]), *args).reshape(x.shape))
    # a graph without those patterns is left alone
    proto, _ = G.binary("Add")
    model = ir.from_proto(proto)
    assert not VectorNumerics()(model).modified and not model.functions


def test_a_sbin_graph_holds_only_spikec_vec_functions_byte_for_byte():
    good = _call_model(vector.RMSNORM)
    check_graph_ops(good, where="m.sbin: graph 'lm'")
    tampered = onnx.ModelProto()
    tampered.CopyFrom(good)
    for n in tampered.functions[0].node:  # change one constant of the body
        if n.op_type == "Constant" and n.attribute[0].t.data_type == TensorProto.FLOAT and n.attribute[0].t.dims == []:
            n.attribute[0].t.CopyFrom(onnx.numpy_helper.from_array(np.array(2.0, np.float32), n.output[0]))
            break
    with pytest.raises(SpikecError, match="m.sbin: graph 'lm'.*'spikec.vec::RMSNorm' differs"):
        check_graph_ops(tampered, where="m.sbin: graph 'lm'")
    foreign = onnx.ModelProto()
    foreign.CopyFrom(good)
    foreign.functions[0].domain = "evil"
    with pytest.raises(SpikecError, match="'evil::RMSNorm' is not one spikec defines"):
        check_graph_ops(foreign, where="m.sbin: graph 'lm'")


def test_exact_vector_is_part_of_the_pipeline_with_isa_or_when_asked(tmp_path):
    """Without --isa the ORT target keeps onnxruntime's own fused kernels (a .sbin that runs
    only there); --isa (the device computes these functions) and --exact-vector add the pass."""
    import onnx as _onnx

    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions

    proto, _ = G.rmsnorm()
    src = tmp_path / "norm.onnx"
    _onnx.save(proto, src)
    for exact in (False, True):
        out = tmp_path / f"n{int(exact)}.onnx"
        report = compile_path(src, out, pipeline=None, options=SpikeOptions(exact_vector=exact).validate())
        names = [p.name for p in report.passes]
        compiled = _onnx.load(out)
        calls = [n for n in compiled.graph.node if n.domain == vector.DOMAIN]
        assert (len(calls) == 1) == exact and ("vector-numerics" in names) == exact, names
