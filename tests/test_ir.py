"""The IR layer: loading with external-data checks, verification, deterministic atomic save."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from graphs import messy_linear, run_ort
from spikec import ir as spir
from spikec.errors import SpikecError


def _save_external(model: onnx.ModelProto, folder, location: str = "w.bin") -> "object":
    path = folder / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def _rewrite_location(path, tensor: str, **fields) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        if t.name == tensor:
            for e in t.external_data:
                if e.key in fields:
                    e.value = str(fields.pop(e.key))
            for k, v in fields.items():
                t.external_data.add(key=k, value=str(v))
    onnx.save(proto, str(path))


def test_load_save_roundtrip_is_byte_identical(tmp_path):
    src = tmp_path / "a.onnx"
    onnx.save(messy_linear(), str(src))
    model = spir.load_model(src)
    spir.save_model(model, tmp_path / "b.onnx")
    spir.save_model(spir.load_model(src), tmp_path / "c.onnx")
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert np.array_equal(run_ort(src, {"x": x})[0], run_ort(tmp_path / "b.onnx", {"x": x})[0])


def test_external_data_roundtrip(tmp_path):
    path = _save_external(messy_linear(), tmp_path)
    model = spir.load_model(path)
    out = tmp_path / "out" / "m2.onnx"
    written = spir.save_model(model, out, external_data=True)
    assert [p.name for p in written] == ["m2.onnx.data", "m2.onnx"]
    x = np.ones((2, 8), np.float32)
    assert np.array_equal(run_ort(path, {"x": x})[0], run_ort(out, {"x": x})[0])
    # and inlining an externally stored model gives a self-contained file
    spir.save_model(spir.load_model(path), tmp_path / "inline.onnx", external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(tmp_path / "inline.onnx"), load_external_data=False).graph.initializer)
    assert np.array_equal(run_ort(path, {"x": x})[0], run_ort(tmp_path / "inline.onnx", {"x": x})[0])


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"location": "../outside.bin"}, "escapes its folder"),
        ({"location": "/etc/passwd"}, "is absolute"),
        ({"location": "missing.bin"}, "not found"),
        ({"offset": 10**12}, "lies outside"),
        ({"length": 4}, "does not match dims"),
    ],
)
def test_bad_external_data_is_refused_before_reading(tmp_path, fields, message):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _save_external(messy_linear(), folder)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 1024)
    _rewrite_location(path, "W", **fields)
    with pytest.raises(SpikecError, match=message) as info:
        spir.load_model(path)
    assert "tensor 'W'" in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "empty file"), (b"this is not protobuf \xff\xfe", "not a valid ONNX model")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SpikecError, match=message):
        spir.load_model(path)


def test_truncated_model(tmp_path):
    data = messy_linear().SerializeToString()
    path = tmp_path / "t.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpikecError, match="t.onnx"):
        spir.load_model(path)


def test_verify_reports_shape_errors_and_invariants(tmp_path):
    model = ir.from_proto(messy_linear())
    spir.verify(model)  # a clean model passes
    # a MatMul whose operands cannot multiply
    bad = messy_linear()
    bad.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((5, 4), np.float32), "W"))
    bad.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 8]))
    with pytest.raises(SpikecError, match="shape inference"):
        spir.verify(ir.from_proto(bad), after="test")

    @spir.register_invariant("no-neg-for-test")
    def no_neg(m):
        for node in m.graph:
            if node.op_type == "Neg":
                raise SpikecError(f"node '{node.name}': Neg is not allowed")

    try:
        with pytest.raises(SpikecError, match="invariant 'no-neg-for-test': node 'dead'"):
            spir.verify(model, after="x")
    finally:
        spir._INVARIANTS.pop("no-neg-for-test")


def test_save_leaves_no_partial_file_on_error(tmp_path, monkeypatch):
    model = ir.from_proto(messy_linear())
    target = tmp_path / "out.onnx"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(OSError):
        spir.save_model(model, target)
    assert list(tmp_path.iterdir()) == []


def test_summary_counts(tmp_path):
    info = spir.summary(ir.from_proto(messy_linear()))
    assert info["ops"] == {"Add": 1, "Identity": 1, "MatMul": 1, "Mul": 1, "Neg": 1}
    assert info["parameters"] == 8 * 4 + 4 + 1
    assert info["parameter_bytes"] == 4 * (8 * 4 + 4 + 1)
    assert [v["name"] for v in info["inputs"]] == ["x"]


def test_self_contained_check_tells_initializers_apart_by_position_not_id():
    """check_self_contained(initializers=False) leaves the main graph's initializers (a .sbin
    resolves them to its own sections) and refuses any other tensor with external data. It
    used to tell them apart by id() of protobuf's Python wrappers, which are made on each
    access and freed after: under a profiler about one call in 300 refused a .sbin's own
    graph (seen loading a 2B-width model under cProfile), and a freed id could as well have
    been reused by another tensor."""
    import cProfile

    from onnx import TensorProto, helper, numpy_helper

    from spikec.errors import SpikecError
    from spikec.ir import check_self_contained

    def external(name: str, location: str) -> TensorProto:
        t = numpy_helper.from_array(np.zeros(4, np.float32), name)
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=location)
        return t

    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    own = helper.make_model(helper.make_graph([helper.make_node("Identity", ["w0"], ["y"])], "g", [], out,
                                              [external(f"w{i}", "section") for i in range(50)]))
    bad = helper.make_model(helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=external("c", "/etc/passwd"))], "g", [], out))
    refused = {"own": 0, "bad": 0}
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        for i in range(300):
            junk = [object() for _ in range(i % 7)]  # noqa: F841 - moves allocations around
            for key, model in (("own", own), ("bad", bad)):
                try:
                    check_self_contained(model, where="m", initializers=False)
                except SpikecError:
                    refused[key] += 1
    finally:
        profiler.disable()
    assert refused == {"own": 0, "bad": 300}
