"""Pass contracts (issue 14, item 5): declared properties are checked on the model, the
float model, its activations and the layer map are analyses computed once per compile,
and no pass writes another pass's results."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from spike_graphs import as_model, mixed_feeds, mixed_lm, run_passes, save
from spikec import calibration as C
from spikec import ir as spir
from spikec import ops
from spikec.compiler import build_pipeline
from spikec.errors import SpikecError
from spikec.passes import PassManager, SpikecPass
from spikec.passes.analyses import FLOAT_ACTIVATIONS, FLOAT_MODEL, LAYER_MAP, AnalysisManager
from spikec.passes.manager import PROPERTIES, check_property
from spikec.passes.options import CompileContext, SpikeOptions, quantization_results
from spikec.passes.quantize import Quantize
from spikec.passes.spike_rewrite import SpikeRewrite

SPIKING = ["quantize", "spike-rewrite", "eliminate-common-subexpressions", "med", "msts"]


@pytest.fixture
def ort_runs(monkeypatch):
    """Counts every run of a graph on ORT through spikec.calibration.run_ort."""
    calls = []
    real = C.run_ort

    def counted(graph, feeds, names):
        calls.append(list(names))
        return real(graph, feeds, names)

    monkeypatch.setattr(C, "run_ort", counted)
    return calls


# ---------------------------------------------------------------- order and checks


def spir_ops(model: ir.Model) -> dict[str, int]:
    return spir.op_histogram(model)


def test_pipeline_whose_order_violates_needs_is_refused_before_running():
    model = as_model(mixed_lm())
    before = spir_ops(model)
    with pytest.raises(SpikecError, match="pass 'spike-rewrite' needs quantized, which no earlier pass guarantees"):
        PassManager(build_pipeline(["spike-rewrite", "quantize"], CompileContext()))
    # a property invalidated in between counts as missing: vector-numerics needs shapes-inferred
    with pytest.raises(SpikecError, match="pass 'vector-numerics' needs shapes-inferred"):
        PassManager(build_pipeline(["shape-inference", "fold-constants", "vector-numerics"], CompileContext()))
    assert spir_ops(model) == before  # nothing ran


class LazyQuantize(Quantize):
    """Declares `quantized` but leaves every float weight where it was."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


def test_a_pass_whose_guarantee_fails_is_named_with_the_node():
    model = as_model(mixed_lm())
    with pytest.raises(SpikecError, match=r"pass 'quantize': postcondition failed: quantized: node 'l0a\.up' \(MatMul\) "
                                          r"is a linear layer over the constant weight 'l0a\.w1' left in float"):
        PassManager([LazyQuantize(CompileContext(SpikeOptions(act_scale="dynamic")))]).run(model)


class LazySpikeRewrite(SpikeRewrite):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


def test_spiking_and_timesteps_checks_name_the_node():
    model = as_model(mixed_lm())
    ctx = CompileContext(SpikeOptions(act_scale="dynamic"))
    with pytest.raises(SpikecError, match=r"pass 'spike-rewrite': postcondition failed: spiking: node 'l0a\.up' "
                                          r"\(QuantLinear\) was not rewritten"):
        PassManager([Quantize(ctx), LazySpikeRewrite(ctx)]).run(model)
    node = next(n for n in ops.spikec_nodes(model, ops.QUANT_LINEAR))
    node.attributes["timesteps"] = ir.AttrInt64s("timesteps", [4, 0])
    with pytest.raises(SpikecError, match=r"timesteps-assigned: node 'l0a\.up' \(QuantLinear\): timesteps \[4, 0\] "
                                          r"must be 2 value\(s\)"):
        check_property("timesteps-assigned", model)


class AddFloatLinear(SpikecPass):
    """Adds a float MatMul over a constant weight (and declares nothing about it)."""

    name = "add-float-linear"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        out = model.graph.outputs[0]
        w = ir.Value(name="extra.w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([24, 24]),
                     const_value=ir.Tensor(np.eye(24, dtype=np.float32), name="extra.w"))
        model.graph.register_initializer(w)
        node = ir.node("MatMul", [out, w], name="extra")
        node.outputs[0].name = "extra.y"
        node.outputs[0].type, node.outputs[0].shape = out.type, out.shape
        model.graph.append(node)
        model.graph.outputs[0] = node.outputs[0]
        return ir.passes.PassResult(model, True)


def test_a_need_broken_in_between_is_caught_before_the_pass_runs():
    model = as_model(mixed_lm())
    ctx = CompileContext(SpikeOptions(act_scale="dynamic"))
    manager = PassManager([Quantize(ctx), AddFloatLinear(), SpikeRewrite(ctx)])
    with pytest.raises(SpikecError, match=r"pass 'spike-rewrite': precondition failed: quantized: node 'extra' "
                                          r"\(MatMul\)"):
        manager.run(model)
    assert ops.spikec_nodes(model, ops.SPIKE_MATMUL) == []  # spike-rewrite did not run


def test_every_declared_property_of_the_registered_passes_has_a_check():
    from spikec.passes import PASSES

    declared = {n for cls in PASSES.values() for n in (*cls.needs, *cls.guarantees)}
    spikec_own = {"shapes-inferred", "topologically-sorted", "quantized", "spiking", "med-measured",
                  "timesteps-assigned", "vector-exact"}
    assert spikec_own <= declared and spikec_own <= set(PROPERTIES)


def test_the_report_records_the_properties_after_each_pass():
    model = as_model(mixed_lm())
    ctx = CompileContext(SpikeOptions(act_scale="dynamic"))
    report = PassManager(build_pipeline(["shape-inference", "quantize", "spike-rewrite", "med", "msts"], ctx)).run(model)
    props = {r.name: r.properties for r in report.passes}
    assert props["shape-inference"] == ["shapes-inferred"]
    assert props["quantize"] == ["quantized"]  # quantize invalidates shapes-inferred
    assert props["msts"] == ["med-measured", "quantized", "spiking", "timesteps-assigned"] == report.properties


# ---------------------------------------------------------------- analyses


def test_the_float_model_runs_once_per_compile(ort_runs):
    feeds = mixed_feeds(2)
    ctx = run_passes(as_model(mixed_lm()), SPIKING, feeds, calib="npz", budget=4.0, smooth=0.5, weight_method="gptq")
    assert len(ort_runs) == 1 and ctx.analyses.ort_runs == 1
    assert ctx.analyses.computed[FLOAT_MODEL] == 1 and ctx.analyses.computed[FLOAT_ACTIVATIONS] == 1
    # the one run fetched what every pass reads: layer inputs, the residual stream, the logits
    assert {"l0a.norm.out", "l1m.h", "logits", "modality"} <= set(ort_runs[0])
    assert ctx.results["med"]["layers"] and ctx.results["msts"]["mode"] == "budget"
    assert ctx.analyses.cached(FLOAT_ACTIVATIONS) is None  # released once no pass needs it
    assert ctx.float_model is not None  # the reference stays


def test_analyses_are_recomputed_after_an_invalidating_pass(ort_runs):
    feeds = mixed_feeds(2)
    model = as_model(mixed_lm())
    # eliminate-identity rewrites the float graph: float model, its activations and the layer map go stale
    ctx = run_passes(model, ["med", "eliminate-identity", "med"], feeds, calib="npz")
    assert ctx.analyses.computed[LAYER_MAP] == 2 and ctx.analyses.computed[FLOAT_MODEL] == 2
    assert ctx.analyses.computed[FLOAT_ACTIVATIONS] == 2 and len(ort_runs) == 2
    # a pass that invalidates nothing keeps them: one computation for both meds
    ort_runs.clear()
    ctx = run_passes(as_model(mixed_lm()), ["med", "topological-sort", "med"], feeds, calib="npz")
    assert ctx.analyses.computed[LAYER_MAP] == 1 and len(ort_runs) == 1


def test_the_float_model_is_kept_once_quantized():
    feeds = mixed_feeds(2)
    ctx = run_passes(as_model(mixed_lm()), ["quantize", "eliminate-identity", "spike-rewrite", "med"], feeds,
                     calib="npz")
    assert ctx.analyses.computed[FLOAT_MODEL] == 1  # eliminate-identity ran after quantize: still the reference
    assert ctx.results["med"]["layers"]


def test_invalidating_an_analysis_drops_those_that_depend_on_it():
    feeds = mixed_feeds(1)
    model = as_model(mixed_lm())
    am = AnalysisManager(lambda: feeds)
    am.activations(model, ["l0m.h"])
    assert am.cached(FLOAT_ACTIVATIONS) is not None
    assert sorted(am.invalidate([FLOAT_MODEL])) == [FLOAT_ACTIVATIONS, FLOAT_MODEL]
    am.activations(model, ["l0m.h"])
    assert sorted(am.invalidate([FLOAT_MODEL], properties=["quantized"])) == []  # kept once quantized


def test_msts_takes_the_layer_map_from_the_analysis():
    feeds = mixed_feeds(2)
    model = as_model(mixed_lm())
    ctx = run_passes(model, ["quantize", "msts"], feeds, calib="npz")  # no med: msts assigns the layers
    assert ctx.analyses.computed[LAYER_MAP] == 1
    layers = {n.name: ops.attr(n, "layer") for n in ops.spikec_nodes(model)}
    assert layers["l0a.up"] == 0 and layers["l1m.down"] == 1 and layers["head"] == 2


# ---------------------------------------------------------------- results


def test_each_pass_writes_its_own_results_entry(tmp_path):
    ctx = run_passes(as_model(mixed_lm()), ["quantize"], None, act_scale="dynamic")
    assert ctx.quantization() is ctx.results["quantize"]
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = iter(mixed_feeds(2, outlier=1.0))

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    src = save(as_model(mixed_lm()), tmp_path / "float.onnx")
    quantize_static(str(src), str(tmp_path / "q.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    ctx = run_passes(spir.load_model(tmp_path / "q.onnx"), ["import-qdq", "spike-rewrite"], None)
    assert "quantize" not in ctx.results
    q = quantization_results(ctx.results)
    assert q is ctx.results["import-qdq"] and q["source"] == "qdq" and len(q["layers"]) == 9


def test_vector_exact_is_checked_on_the_model():
    import vec_graphs as G

    from spikec.passes import PASSES

    proto, _ = G.rmsnorm()
    model = ir.from_proto(proto)
    with pytest.raises(SpikecError, match=r"vector-exact: node '.*' \(Mul\) ends a RMSNorm pattern left in stock ops"):
        check_property("vector-exact", model)
    report = PassManager([PASSES["shape-inference"](), PASSES["vector-numerics"]()]).run(model)
    check_property("vector-exact", model)
    assert "vector-exact" in report.properties
