"""Fuzzing spikec's loaders (tests/fuzzing.py): every mutated input ends in a result or one
clean `error:` line -- no crash, no hang, no partial output, no file touched outside the
folders given. A few hundred inputs per loader here; 10,000 per loader with SPIKEC_SLOW=1.
Plus regression tests for the kinds of fault the harness found, each at its source."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fuzzing as F
from spike_graphs import exported
from spikec.errors import SpikecError
from spikec.isa.container import SbinFile, SectionKind, write_sbin

DEFAULT_N = {"sbin": 200, "fpga": 150, "manifest": 200, "onnx": 200}
SLOW_N = 10_000


@functools.cache
def base() -> F.Base:
    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions

    work = Path(tempfile.mkdtemp(prefix="spikec-fuzz-"))
    exp = exported("tiny-llava")
    sbin, sbin_isa = work / "m.sbin", work / "m-isa.sbin"
    compile_path(exp, sbin, options=SpikeOptions().validate())
    compile_path(exp, sbin_isa, options=SpikeOptions().validate(), isa=True, hwconfig="small")
    return F.make_base(work / "base", exp, sbin, sbin_isa)


def _fuzz(loader: str, n: int, seed: int) -> None:
    log: list = []
    counts = F.fuzz_loader(loader, n, seed, base(), log=log)
    F.assert_clean(loader, counts, log)
    assert counts["ok"] + counts["error"] == n


@pytest.mark.parametrize("loader", F.LOADERS)
def test_fuzz_loader(loader):
    _fuzz(loader, DEFAULT_N[loader], seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("loader", F.LOADERS)
def test_fuzz_loader_10000(loader):
    _fuzz(loader, SLOW_N, seed=1)


@pytest.mark.slow
def test_sbin_op_allow_list_covers_what_spikec_emits():
    from spikec.package import SBIN_OPS

    assert F.collect_ops() <= SBIN_OPS


# ---------------------------------------------------------------- the harness itself


def test_harness_classifies_outcomes(tmp_path):
    out = tmp_path / "out"
    assert F.run_cli(["inspect", str(tmp_path / "none.sbin")], read=[tmp_path], write=out).kind == "error"
    assert F.run_cli(["--version"], read=[tmp_path], write=out).kind == "ok"
    (tmp_path / "secret").write_text("x")
    sub = tmp_path / "sub"
    sub.mkdir()
    r = F.run_cli(["inspect", str(tmp_path / "secret")], read=[sub], write=out)
    assert r.kind == "escape" and "secret" in r.detail


# ---------------------------------------------------------------- regressions, at their source


def _sections(path) -> list:
    with SbinFile(path) as f:
        return [(s.name, int(s.kind), bytes(f.read(s.name))) for s in f.sections.values()]


def _replace(path, out, name, data) -> Path:
    return write_sbin(out, [(n, k, data if n == name else d) for n, k, d in _sections(path)])


def _graph_with(nodes, inits=(), outputs=("y",)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _sbin_of(tmp_path, graph: onnx.ModelProto) -> Path:
    manifest = {"graphs": {"model": {"file": "graph/model"}}}
    return write_sbin(tmp_path / "m.sbin", [("manifest", SectionKind.MANIFEST, json.dumps(manifest).encode()),
                                            ("graph/model", SectionKind.ONNX, graph.SerializeToString())])


@pytest.mark.parametrize("text, message", [
    (b'{"graphs": {"model": {"file": "graph/model"}}, "lm": {"num_layers": ' + b"9" * 5000 + b"}}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"graphs": {"model": {"file": "graph/model"}}, "x": "\xff"}', "UTF-8"),
    (b'{"graphs": {"model": {"file": "graph/model"}}, "modality": {"text": [0]}}', "modality.text"),
    (b'{"graphs": {"model": {"file": "graph/model"}}, "modality": {"text": 0, "vision": 0}}', "same id"),
    (b'{"graphs": {"model": {"file": "graph/model"}}, "lm": {"num_layers": -1}}', "lm.num_layers"),
    (b'{"graphs": {"model": {"file": "graph/model", "inputs": [7]}}}', "graphs.model.inputs[0]"),
    (b'{"graphs": {"model": {"file": "graph/model"}}, "eos_token_id": [[1]]}', "eos_token_id"),
])
def test_sbin_manifest_fields_are_checked_once(run_cli, tmp_path, text, message):
    path = _sbin_of(tmp_path, _graph_with([helper.make_node("Relu", ["x"], ["y"], name="r")]))
    path = _replace(path, tmp_path / "bad.sbin", "manifest", text)
    r = run_cli("inspect", str(path))
    assert r.code == 1 and message in r.err and str(path) in r.err and len(r.err.splitlines()) == 1, r.err


def _loop_graph():
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _graph_with([helper.make_node("Loop", ["", "cond"], [], body=body, name="forever"),
                        helper.make_node("Relu", ["x"], ["y"], name="r")], [cond])


def _const_of_shape_graph(op):
    shape = numpy_helper.from_array(np.array([2**31, 2**31], np.int64), "shape")
    if op == "Range":
        lim = numpy_helper.from_array(np.array(2**40, np.int64), "lim")
        one = numpy_helper.from_array(np.array(1, np.int64), "one")
        return _graph_with([helper.make_node("Range", ["one", "lim", "one"], ["y"], name="big")], [lim, one])
    inputs = ["shape"] if op == "ConstantOfShape" else ["x", "shape"]
    return _graph_with([helper.make_node(op, inputs, ["y"], name="big")], [shape])


@pytest.mark.parametrize("graph, message", [
    (_loop_graph, "node 'forever' (Loop)"),
    (lambda: _const_of_shape_graph("ConstantOfShape"), "node 'big' (ConstantOfShape)"),
    (lambda: _const_of_shape_graph("Expand"), "node 'big' (Expand): declares"),
    (lambda: _const_of_shape_graph("Range"), "node 'big' (Range): declares"),
    (lambda: _graph_with([helper.make_node("Relu", ["x"], ["y"], name="a"),
                          helper.make_node("Relu", ["x"], ["y"], name="b")]), "node 'b' (Relu) makes 'y'"),
    (lambda: _graph_with([helper.make_node("Relu", ["x"], ["y"], name="r")], outputs=("y", "y")), "listed twice"),
    (lambda: _graph_with([helper.make_node("Add", ["x", "s"], ["y"], name="r")],
                         [helper.make_tensor("s", TensorProto.STRING, [1], [b"a"])]), "STRING"),
])
def test_sbin_graphs_hold_only_what_spikec_emits(run_cli, tmp_path, graph, message):
    path = _sbin_of(tmp_path, graph())
    np.savez(tmp_path / "x.npz", x=np.ones((1, 4), np.float32))
    for args in (["inspect", str(path)], ["run", str(path), "--inputs", str(tmp_path / "x.npz")]):
        r = run_cli(*args)
        assert r.code == 1 and message in r.err and str(path) in r.err and len(r.err.splitlines()) == 1, r.err


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.__setattr__("data_type", TensorProto.UNDEFINED), "not a valid ONNX type"),
    (lambda t: t.__setattr__("raw_data", t.raw_data[:-4]), "raw data of"),
    (lambda t: (t.ClearField("dims"), t.dims.extend([2**62, 2**62])), "over the limit"),
    (lambda t: (t.ClearField("dims"), t.dims.extend([-1, 4])), "negative dimension"),
])
def test_onnx_inputs_with_bad_tensors_are_refused_at_load(run_cli, tmp_path, mutate, message):
    path = F.tiny_graph(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    mutate(model.graph.initializer[0])
    path.write_bytes(model.SerializeToString())
    for args in (["inspect", str(path)], ["compile", str(path), "-o", str(tmp_path / "out" / "y.onnx")]):
        r = run_cli(*args)
        assert r.code == 1 and message in r.err and "'w1'" in r.err and len(r.err.splitlines()) == 1, r.err
    assert not (tmp_path / "out" / "y.onnx").exists()


KERNEL_FAULTS = [
    (lambda d: d["kernels"][0].__setitem__("n_max", 0), "kernels[0]: field 'n_max'"),
    (lambda d: d["kernels"][0].pop("K"), "kernels[0]: field 'K' is missing"),
    (lambda d: d["kernels"][0].__setitem__("tiles", []), "kernels[0]: field 'tiles'"),
    (lambda d: d["kernels"][0].__setitem__("m_tile", 10**6), "kernels[0]: field 'm_tile'"),
    (lambda d: d["kernels"][0].__setitem__("timesteps", []), "kernels[0]: field 'timesteps'"),
    (lambda d: d["kernels"][0].__setitem__("index", 5), "kernels[0]: field 'index'"),
    (lambda d: d["kernels"][0].__setitem__("weights_offset", 2**40), "kernels[0]: field 'weights_offset'"),
    (lambda d: d["vec_kernels"][0].__setitem__("inputs", []), "vec_kernels[0]: field 'inputs'"),
    (lambda d: d["vec_kernels"][0].__setitem__("func", "DEQ"), "vec_kernels[0]: field 'func'"),
    (lambda d: d["vec_kernels"][0].__setitem__("max_len", 10**6), "vec_kernels[0]: field 'max_len'"),
    (lambda d: d.__setitem__("kernels", {}), "field 'kernels' must be a list"),
]


@pytest.mark.parametrize("mutate, message", KERNEL_FAULTS)
def test_fpga_kernel_descriptors_are_checked_when_loaded(run_cli, tmp_path, mutate, message):
    b = base()
    with SbinFile(b.sbin_isa) as f:
        doc = json.loads(f.read("isa/kernels"))
    mutate(doc)
    path = _replace(b.sbin_isa, tmp_path / "bad.sbin", "isa/kernels", json.dumps(doc).encode())
    r = run_cli("run", str(path), "--target", "fpga", "--inputs", str(b.vision_npz), "--graph", "vision")
    assert r.code == 1 and message in r.err and "isa/kernels" in r.err and len(r.err.splitlines()) == 1, r.err


@pytest.mark.parametrize("text", [b'{"name": ' + b"1" * 5000 + b"}", b"[" * 50_000, b"\xff\xfe"])
def test_hwconfig_section_json_failures_are_user_errors(run_cli, tmp_path, text):
    b = base()
    path = _replace(b.sbin_isa, tmp_path / "bad.sbin", "isa/hwconfig", text)
    r = run_cli("run", str(path), "--target", "fpga", "--inputs", str(b.vision_npz), "--graph", "vision")
    assert r.code == 1 and "isa/hwconfig" in r.err and len(r.err.splitlines()) == 1, r.err


def test_processor_files_that_are_not_json_are_refused_when_extracted(tmp_path):
    from spikec.package import SbinModel

    path = _sbin_of(tmp_path, _graph_with([helper.make_node("Relu", ["x"], ["y"], name="r")]))
    path = write_sbin(tmp_path / "p.sbin", _sections(path) + [("files/tokenizer.json", SectionKind.FILE, b"{\xff")])
    with SbinModel(path) as m, pytest.raises(SpikecError, match="files/tokenizer.json.*UTF-8"):
        m.folder()


def test_generation_checks_the_manifest_fields_it_reads(tmp_path):
    from spikec.frontend import manifest as mf

    m = json.loads((exported("tiny-llava") / "manifest.json").read_text())
    assert mf.generation_fields(m, where="m")["num_layers"] == m["lm"]["num_layers"]
    for key, value, message in [("family", "nope", "family"), ("lm", {"num_layers": 2}, "lm.num_kv_heads"),
                                ("merge", {}, "merge.image_token_id"), ("modality", {"text": 0}, "modality.vision"),
                                ("merge", {"image_token_id": m["lm"]["vocab_size"]}, "outside the vocabulary")]:
        with pytest.raises(SpikecError, match=message):
            mf.generation_fields({**m, key: value}, where="m")


def test_condense_makes_one_line():
    from spikec.schema import condense

    text = "Field 'shape' of 'type' is required\n\n==> Context: Bad node spec for node. Name: mm OpType: MatMul\n"
    assert condense(text) == "Field 'shape' of 'type' is required; Bad node spec for node. Name: mm OpType: MatMul"
    assert len(condense("x" * 5000)) == 400


def test_compile_summary_printing_cannot_fail():
    from spikec.commands.compile import _fmt, _print_isa, _print_layers

    _print_layers("lm", {"msts": {"mode": "budget", "uniform": None, "budget_used": None},
                         "layers": [{"timesteps": None, "name": None, "act_scale": None, "med": "x"}]})
    _print_isa({"weights_bytes": None, "graphs": {"lm": {"host_ops": [1], "not_lowered": None}}})
    assert _fmt(None, ">9.3f") == "     None"
