"""The vector-unit lowering (passes/lower_vec.py) and DeviceVec (runtime/fpga_target.py).

- every vector kernel the lowering makes, run on the simulator through the fpga target's
  graph rewrite, gives the host's result bit for bit: for ADD, MUL, SCALE, ADD_ROW, MUL_ROW
  and ROPE the exported op's; for RMSNORM, LAYERNORM, SOFTMAX and SILU the spikec.vec
  function the vector-numerics pass puts in its place, on the reference evaluator and on
  onnxruntime (and, as before, within the tolerance docs/isa.md section 9 states of the
  exported pattern's numpy result: 16-lane sums, Cephes exp); the same bits on `small` (many
  chunks, so the double-buffered programs pass the simulator's token and race checks)
  as on `default`;
- the erf GELU stays on the host, and rows that do not fit VEC are refused with a reason;
- on tiny-llava at T = 8 the fpga target with vector kernels generates the ORT target's
  tokens, the vector ops are counted on both sides, and fewer ops fall back to the host.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx.reference import ReferenceEvaluator

import vec_graphs as G
from spikec.isa import programs, tiling
from spikec.errors import SpikecError
from spikec.frontend.export import sample_image
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig
from spikec import ir as spir
from spikec.passes import lower_isa, lower_vec
from spikec.passes.vector_numerics import VectorNumerics
from spikec.runtime.fpga_target import FpgaSession, KernelRunner
from spikec.runtime.model import load
from spikec.runtime.simulator import Simulator

ULP = 2.0**-23
TINY = 2.0**-100  # results below this are compared absolutely (exp's tails: flushed vs subnormal)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in units in the last place (a monotone integer map of float32)."""
    ia, ib = (np.where(v.view(np.int32) < 0, -(v.view(np.int32) & 0x7FFFFFFF), v.view(np.int32)).astype(np.int64)
              for v in (a, b))
    return np.abs(ia - ib)


def _compiled(proto):
    """The graph as `spikec compile` leaves it: norms, softmax and SiLU as spikec.vec calls."""
    model = ir.from_proto(proto)
    VectorNumerics()(model)
    return ir.to_proto(model)


def _on_device(proto, feeds: dict, cfg: str):
    proto = _compiled(proto)
    art = lower_isa.lower_graphs({"g": ir.from_proto(proto)}, HwConfig.load(cfg))
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels, vec_kernels=art.vec_kernels)
    y = FpgaSession("g", proto, art.kernels, runner, art.vec_kernels).run(None, feeds)[0]
    return y, art, runner


# (id, graph, VEC function, tolerance: "exact", ("ulp", n) per element, or ("row", n) ulps of the row's largest |y|)
CASES = [
    ("add", G.binary("Add"), "ADD", "exact"),
    ("mul", G.binary("Mul"), "MUL", "exact"),
    ("scale", G.binary("Mul", const="scalar"), "SCALE", "exact"),
    ("add-row", G.binary("Add", const="row"), "ADD_ROW", "exact"),
    ("add-scalar", G.binary("Add", const="scalar"), "ADD_ROW", "exact"),
    ("mul-row", G.binary("Mul", const="row"), "MUL_ROW", "exact"),
    ("rope", G.rope(), "ROPE", "exact"),
    ("rmsnorm", G.rmsnorm(), "RMSNORM", ("ulp", 8)),
    ("rmsnorm-div", G.rmsnorm(div=True), "RMSNORM", ("ulp", 8)),
    ("layernorm", G.layernorm(), "LAYERNORM", ("row", 4)),
    ("softmax", G.softmax(), "SOFTMAX", ("ulp", 16)),
    ("silu", G.silu(), "SILU", ("ulp", 8)),
]
HOST_LEFT = {"ROPE": {"Concat": 1, "Cos": 1, "Sin": 1, "Unsqueeze": 2}}  # the tables are computed on the host


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_vector_kernel_equals_the_host_op(case):
    _, (proto, make_feeds), func, tol = case
    n = 150
    feeds = make_feeds(np.random.default_rng(0), n)
    vec_function = func in ("RMSNORM", "LAYERNORM", "SOFTMAX", "SILU")
    # the exported graph's result: numpy's for the functions (docs/isa.md's tolerances are
    # against it), onnxruntime's for the exact ones (the ORT target computes ROPE's tables)
    exported = (ReferenceEvaluator(proto) if vec_function else spir.ort_session(ir.from_proto(proto))).run(None, feeds)[0]
    # the ORT target's result: the fpga target runs its host ops (here ROPE's Cos/Sin tables) on onnxruntime
    want = spir.ort_session(ir.from_proto(_compiled(proto))).run(None, feeds)[0]
    if vec_function:  # and so does numpy, interpreting spikec.vec's function bodies
        on_ref = ReferenceEvaluator(_compiled(proto)).run(None, feeds)[0]
        np.testing.assert_array_equal(on_ref.view(np.int32), want.view(np.int32))
    y, art, runner = _on_device(proto, feeds, "default")
    assert [k.func.name for k in art.vec_kernels] == [func]
    assert art.fallback["graphs"]["g"]["host_ops"] == HOST_LEFT.get(func, {})
    assert runner.stats.vec_calls == 1 and runner.stats.device.cycles > 0 and runner.stats.gpu_vec_seconds > 0
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))
    want = exported  # the exported pattern's numpy result: within the stated tolerance
    if tol == "exact":
        np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))
    elif tol[0] == "ulp":
        big = np.abs(want) >= TINY
        assert _ulps(y, want)[big].max() <= tol[1]
        assert np.abs(y - want)[~big].max(initial=0) < 1e-36
    else:
        rowmax = np.abs(want).max(axis=-1, keepdims=True)
        assert (np.abs(y - want) <= tol[1] * ULP * rowmax).all()
    # the configuration changes tiling, never numerics: 'small' needs several chunks
    k = art.vec_kernels[0]
    small = HwConfig.load("small")
    rows = y.size // y.shape[-1]
    assert rows > 2 * tiling.plan_vec(small, lower_vec.VecFunc[func], y.shape[-1])
    y_small, _, runner = _on_device(proto, feeds, "small")
    np.testing.assert_array_equal(y_small.view(np.int32), y.view(np.int32))
    prog = programs.build_vec_program(k, rows, y.shape[-1], [0] * 3, 0, small)
    assert sum(i.op == Opcode.VEC for i in prog) > 2


def test_erf_gelu_stays_on_the_host():
    proto, _ = G.erf_gelu()
    art = lower_isa.lower_graphs({"g": ir.from_proto(proto)}, HwConfig.load("default"))
    g = art.fallback["graphs"]["g"]
    assert art.vec_kernels == [] and g["vec_kernels"] == {}
    assert g["host_ops"] == {"Add": 1, "Div": 1, "Erf": 1, "Mul": 2}
    (why,) = g["not_lowered"].values()
    assert "erf" in why and "tanh" in why and "5 ops" in why
    # without the vector lowering, the same graph reports the same host ops
    assert lower_isa.lower_graphs({"g": ir.from_proto(proto)}, HwConfig.load("default"), vec=False).vec_kernels == []


def test_rows_that_do_not_fit_are_refused():
    small = HwConfig.load("small")  # VEC: 2048 float32
    proto, _ = G.layernorm(600)
    art = lower_isa.lower_graphs({"g": ir.from_proto(_compiled(proto))}, small)
    assert art.vec_kernels == [] and art.fallback["graphs"]["g"]["host_ops"] == {"spikec.vec::LayerNorm": 1}
    assert "does not fit VEC" in art.fallback["graphs"]["g"]["not_lowered"]["layernormalization_0"]
    # a row length known only at run time: bounded by max_len, a longer row is a clear error
    proto, make_feeds = G.softmax(600)
    art = lower_isa.lower_graphs({"g": ir.from_proto(_compiled(proto))}, small)
    (k,) = art.vec_kernels
    assert k.length is None and k.max_len == tiling.max_len(small, lower_vec.VecFunc.SOFTMAX) == 512
    with pytest.raises(SpikecError, match="rows of 600 elements.*at most 512"):
        _on_device(proto, make_feeds(np.random.default_rng(0), 2), "small")
    # ROPE needs rotate-half tables (equal halves); another table is refused at run time
    proto, make_feeds = G.rope()
    art = lower_isa.lower_graphs({"g": ir.from_proto(proto)}, HwConfig.load("default"))
    runner = KernelRunner(Simulator("default"), art.weights, art.kernels, vec_kernels=art.vec_kernels)
    x = np.ones((1, 4, 3, 16), np.float32)
    with pytest.raises(SpikecError, match="halves differ"):
        runner.vec(0, [x, np.arange(16, dtype=np.float32), np.ones(16, np.float32)], "rope")


def test_tiny_llava_generation_with_vector_kernels_equals_ort():
    from test_fpga_target import PROMPT, compiled_isa

    path = compiled_isa(8, 8)
    image = sample_image()
    with load(path, target="fpga") as fpga, load(path) as ort_model:
        g = fpga.generator()
        ids_f = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        g = ort_model.generator()
        ids_o = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        stats = fpga.stats()
        graphs = {role: ir.from_proto(fpga.sbin.graph(role)) for role in fpga.sbin.roles}
        cfg = fpga.runner.cfg
    np.testing.assert_array_equal(ids_f, ids_o)
    assert stats["vec_calls"] > 0 and 0 < stats["vec_cycles"] < stats["cycles"]
    assert 0 < stats["gpu"]["vec_seconds"] < stats["gpu"]["seconds"]
    # the report: fewer host-fallback ops, none of the lowered kinds left in the LM
    with_vec, without = (lower_isa.lower_graphs(graphs, cfg, vec=v).fallback["graphs"] for v in (True, False))
    for role in ("lm", "vision"):
        assert sum(with_vec[role]["host_ops"].values()) < sum(without[role]["host_ops"].values())
    lm = with_vec["lm"]
    assert not {"Softmax", "Sigmoid", "Pow", "ReduceMean", "Sqrt", "Reciprocal", "Neg", "Slice"} & set(lm["host_ops"])
    assert {"RMSNORM", "ROPE", "SOFTMAX", "SILU", "ADD", "MUL"} <= set(lm["vec_kernels"])
