"""The pass manager and the generic passes: each does its job, numerics unchanged."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphs import messy_linear, run_ort
from spikec import ir as spir
from spikec.compiler import compile_onnx
from spikec.errors import SpikecError
from spikec.passes import GENERIC_PIPELINE, PASSES, PassManager, SpikecPass


def _ops(model: ir.Model) -> dict[str, int]:
    return spir.op_histogram(model)


@pytest.mark.parametrize(
    "name, gone",
    [("fold-constants", "Mul"), ("eliminate-identity", "Identity"), ("eliminate-dead-nodes", "Neg")],
)
def test_each_generic_pass_removes_its_target(name, gone):
    model = ir.from_proto(messy_linear())
    assert gone in _ops(model)
    report = PassManager([PASSES[name]()]).run(model)
    assert gone not in _ops(model)
    assert report.passes[0].modified


def test_shape_inference_annotates_values():
    model = ir.from_proto(messy_linear())
    PassManager([PASSES["shape-inference"]()]).run(model)
    xw = next(n for n in model.graph if n.name == "mm").outputs[0]
    assert xw.shape is not None and xw.shape[1] == 4


def test_generic_pipeline_preserves_numerics(tmp_path):
    src = tmp_path / "in.onnx"
    onnx.save(messy_linear(), str(src))
    out = tmp_path / "out.onnx"
    report = compile_onnx(src, out, dump_dir=tmp_path / "dump")
    assert [r.name for r in report.passes] == list(GENERIC_PIPELINE)
    assert _ops(spir.load_model(out)) == {"Add": 1, "MatMul": 1}
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(src, {"x": x})[0], run_ort(out, {"x": x})[0])


def test_dump_ir_writes_each_pass_and_report(tmp_path, tiny_mlp):
    dump = tmp_path / "dump"
    compile_onnx(tiny_mlp, tmp_path / "out.onnx", dump_dir=dump)
    expected = [f"{i:02d}-{n}.{ext}" for i, n in enumerate(GENERIC_PIPELINE, 1) for ext in ("onnx", "txt")]
    assert sorted(p.name for p in dump.iterdir()) == sorted(expected + ["report.json"])
    for i, name in enumerate(GENERIC_PIPELINE, 1):
        onnx.checker.check_model(onnx.load(str(dump / f"{i:02d}-{name}.onnx")))
        assert "MatMul" in (dump / f"{i:02d}-{name}.txt").read_text()
    report = json.loads((dump / "report.json").read_text())
    row = report["passes"][0]
    assert set(row) >= {"name", "wall_s", "nodes", "ops", "parameter_bytes"}
    assert row["ops"]["MatMul"] == 2 and row["parameter_bytes"] > 0
    assert "shapes-inferred" in report["properties"]


def test_compile_is_deterministic(tmp_path, tiny_mlp):
    compile_onnx(tiny_mlp, tmp_path / "a.onnx")
    compile_onnx(tiny_mlp, tmp_path / "b.onnx", dump_dir=tmp_path / "d")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_compiled_real_model_matches_torch_export(tmp_path, tiny_mlp):
    out = tmp_path / "out.onnx"
    compile_onnx(tiny_mlp, out)
    x = np.random.default_rng(2).standard_normal((2, 7, 32)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], run_ort(tiny_mlp, {"x": x})[0], rtol=0, atol=1e-6)


class _NeedsQuantized(SpikecPass):
    name = "needs-quantized"
    needs = ("quantized",)

    def call(self, model):
        return ir.passes.PassResult(model, False)


def test_pipeline_order_is_checked_before_running():
    with pytest.raises(SpikecError, match="'needs-quantized' needs quantized"):
        PassManager([PASSES["fold-constants"](), _NeedsQuantized()])


class _BreaksGraph(SpikecPass):
    name = "breaks-graph"

    def call(self, model):
        node = next(n for n in model.graph if n.op_type == "MatMul")
        node.op_type = "NoSuchOp"
        return ir.passes.PassResult(model, True)


def test_verifier_runs_after_each_pass():
    model = ir.from_proto(messy_linear())
    with pytest.raises(SpikecError, match="after pass 'breaks-graph'"):
        PassManager([_BreaksGraph()]).run(model)


class _BadPostcondition(SpikecPass):
    name = "bad-postcondition"

    def call(self, model):
        return ir.passes.PassResult(model, False)

    def ensures(self, model):
        raise SpikecError("node 'mm' still a MatMul")


def test_pass_postconditions_surface_as_user_errors():
    with pytest.raises(SpikecError, match="pass 'bad-postcondition': postcondition failed: node 'mm'"):
        PassManager([_BadPostcondition()]).run(ir.from_proto(messy_linear()))


class _FailsMidway(SpikecPass):
    name = "fails-midway"

    def call(self, model):
        raise SpikecError("simulated failure")


@pytest.mark.parametrize("output", ["out.onnx", "out.sbin"])
def test_dump_ir_of_a_failed_compile_is_not_left_behind(run_cli, tmp_path, tiny_mlp, monkeypatch, output):
    """--dump-ir is written whole or not at all: passes that ran before the failing one
    dumped into a temporary folder, removed with the error (here a new dump folder, and
    an earlier dump folder that stays as it was)."""
    monkeypatch.setitem(PASSES, "fails-midway", _FailsMidway)
    dump = tmp_path / "dump"
    args = ("compile", str(tiny_mlp), "-o", str(tmp_path / output), "--dump-ir", str(dump))
    r = run_cli(*args, "--passes", "fold-constants,eliminate-identity,fails-midway")
    assert r.code == 1 and "simulated failure" in r.err and "Traceback" not in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no dump folder, no temporary, no output
    assert run_cli(*args, "--passes", "fold-constants").code == 0
    before = {p.relative_to(dump): p.read_bytes() for p in dump.rglob("*") if p.is_file()}
    r = run_cli(*args, "--passes", "fold-constants,eliminate-identity,fails-midway")
    assert r.code == 1
    assert {p.relative_to(dump): p.read_bytes() for p in dump.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump", output]
    assert run_cli(*args, "--passes", "fold-constants,eliminate-identity").code == 0  # an earlier dump is replaced
    assert (dump / "02-eliminate-identity.onnx").is_file()


def test_dump_ir_folder_is_checked_before_any_work(run_cli, tmp_path, tiny_mlp):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "o.onnx"), "--dump-ir", str(mine))
    assert r.code == 1 and f"--dump-ir {mine}" in r.err and "[1/" not in r.out + r.err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and not (tmp_path / "o.onnx").exists()
    r = run_cli("compile", str(tiny_mlp), "-o", str(tmp_path / "d" / "o.onnx"), "--dump-ir", str(tmp_path / "d"))
    assert r.code == 1 and "--dump-ir" in r.err and not (tmp_path / "d").exists()
