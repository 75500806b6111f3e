"""lower-ort, the ORT target's lowering as a registered pass: run by every spiking compile
on a clone of the graph, verified, dumped and reported; the compiled graph is unchanged."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from spikec import ir as spir
from spikec import ops as sops
from spikec.compiler import compile_onnx
from spikec.errors import SpikecError
from spikec.ort_lowering import lower_for_ort
from spikec.passes import PASSES, PassManager
from spikec.passes.lower_ort import LowerOrt
from spikec.passes.options import SpikeOptions


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, tiny_mlp):
    tmp = tmp_path_factory.mktemp("lower_ort")
    out, dump = tmp / "out.onnx", tmp / "dump"
    report = compile_onnx(tiny_mlp, out, pipeline=None, options=SpikeOptions(), dump_dir=dump)
    return out, dump, report


def test_spiking_compile_records_and_dumps_lower_ort(compiled):
    out, dump, report = compiled
    names = [r.name for r in report.passes]
    assert names[-1] == "lower-ort" and names.count("lower-ort") == 1
    record = report.passes[-1]
    assert record.index == len(report.passes) and record.modified
    assert record.dumps == ["lower-ort/01-lower-ort.onnx", "lower-ort/01-lower-ort.txt"]
    lowered = spir.load_model(dump / "lower-ort" / "01-lower-ort.onnx")
    assert not [n for n in lowered.graph if n.domain == sops.DOMAIN]
    assert any(n.domain == "spikec.ort" for n in lowered.graph)
    top = json.loads((dump / "report.json").read_text())
    assert top["passes"][-1]["name"] == "lower-ort"
    assert "spikec.ort" in (dump / "lower-ort" / "01-lower-ort.txt").read_text()


def test_compiled_graph_keeps_its_spiking_ops(compiled):
    out, _, _ = compiled
    model = spir.load_model(out)
    assert [n for n in model.graph if n.domain == sops.DOMAIN], "lower-ort must run on a clone"


def test_pass_equals_the_runtime_lowering(compiled):
    """The pass and the ORT target's load-time call give the same graph."""
    out, _, _ = compiled
    by_pass, by_call = spir.load_model(out), spir.load_model(out)
    PassManager([LowerOrt("exact")]).run(by_pass)
    lower_for_ort(by_call, "exact")
    assert spir.to_proto(by_pass).SerializeToString(deterministic=True) == \
        spir.to_proto(by_call).SerializeToString(deterministic=True)


def test_float_graph_is_not_lowered(tmp_path, tiny_mlp):
    report = compile_onnx(tiny_mlp, tmp_path / "f.onnx")
    assert "lower-ort" not in [r.name for r in report.passes]


def test_bad_mode_and_leftover_nodes_are_refused(compiled):
    with pytest.raises(SpikecError, match="mode 'int2'"):
        LowerOrt("int2")
    assert PASSES["lower-ort"] is LowerOrt
    model = spir.load_model(compiled[0])
    stray = ir.node("SpikeCode", [model.graph.inputs[0]], domain=sops.DOMAIN, name="stray")
    with pytest.raises(SpikecError, match="ort-lowered: 1 spikec node.s. not lowered, first 'stray'"):
        LowerOrt().ensures(ir.Model(ir.Graph([], [], nodes=[stray]), ir_version=10))
