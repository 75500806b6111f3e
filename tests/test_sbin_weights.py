""".sbin 2.0: weights in their own TENSOR sections, mapped in place; the compile's spill store.

The tiny models' weights are all under the 64 KiB threshold, so these tests lower it
(`spikec.ir.BIG_TENSOR_BYTES`): every weight of 1 KiB or more is then spilled while
compiling, stored as a TENSOR section and mapped on load, and the results must equal
the all-in-memory path bit for bit.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import onnx
import pytest

from spike_graphs import exported, lm_feeds
from spikec import ir as spir
from spikec import ops as sops
from spikec.compiler import compile_path
from spikec.errors import SpikecError
from spikec.isa import container as C
from spikec.isa.container import SbinFile, SectionKind, write_sbin
from spikec.package import TENSOR_PREFIX, SbinModel
from spikec.passes.options import SpikeOptions
from spikec.runtime.model import load

ARCHS = ["tiny-llava", "tiny-qwen2-vl"]


def _compile(name, out, monkeypatch=None, threshold=None):
    if threshold is not None:
        monkeypatch.setattr(spir, "BIG_TENSOR_BYTES", threshold)
    compile_path(exported(name), out, options=SpikeOptions(tv=3, tt=4).validate())
    if threshold is not None:
        monkeypatch.undo()
    return out




@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(in-memory .sbin, tensor-section .sbin) of tiny-llava, compiled the two ways."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("v2")
    inline = _compile("tiny-llava", d / "inline.sbin")
    mapped = _compile("tiny-llava", d / "mapped.sbin", mp, threshold=1024)
    return inline, mapped


def test_weights_live_in_tensor_sections(pair):
    inline, mapped = pair
    with SbinFile(inline) as f:
        assert f.version == (C.VERSION_MAJOR, C.VERSION_MINOR) and not f.names(SectionKind.TENSOR)
    with SbinModel(mapped) as m:
        names = m.file.names(SectionKind.TENSOR)
        assert len(names) > 20 and all(n.startswith(TENSOR_PREFIX) for n in names)
        assert all(m.file.sections[n].offset % C.ALIGN == 0 for n in names)
        model = m.model("lm")
        mapped_weights = [v.const_value.numpy() for v in model.graph.initializers.values()
                          if v.const_value is not None and v.const_value.nbytes >= 1024]
        assert mapped_weights and all(not a.flags.writeable for a in mapped_weights)  # read-only views
        with pytest.raises(ValueError):
            mapped_weights[0][...] = 0
        # the int8 codes of the spiking products are among them
        assert any(a.dtype == np.int8 for a in mapped_weights)


@pytest.mark.parametrize("mode", ["fused", "exact"])
def test_mapped_weights_give_the_same_bits(pair, mode):
    inline, mapped = pair
    with load(inline, mode=mode) as a, load(mapped, mode=mode) as b:
        feeds = lm_feeds(a)
        ra, rb = a.run(feeds, graph="lm"), b.run(feeds, graph="lm")
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
        assert a.generate(feeds_image(), "What is in the image?", 6) == b.generate(feeds_image(), "What is in the image?", 6)


def feeds_image():
    from spikec.frontend.export import sample_image

    return sample_image()


def test_inspect_and_graph_inline_the_same_weights(pair, run_cli):
    _, mapped = pair
    with SbinModel(mapped) as m:
        proto = m.graph("lm")
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        model = m.model("lm")
        for t in proto.graph.initializer:
            if t.name in model.graph.initializers and model.graph.initializers[t.name].const_value is not None:
                np.testing.assert_array_equal(onnx.numpy_helper.to_array(t),
                                              model.graph.initializers[t.name].const_value.numpy())
    r = run_cli("inspect", str(mapped))
    assert r.code == 0 and "TENSOR" in r.out


def test_compile_is_deterministic_with_spilled_weights(tmp_path, monkeypatch):
    a = _compile("tiny-llava", tmp_path / "a.sbin", monkeypatch, threshold=1024)
    b = _compile("tiny-llava", tmp_path / "b.sbin", monkeypatch, threshold=1024)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.sbin", "b.sbin"]  # spill folders removed


# ---------------------------------------------------------------- hostile tensor references


def _sections(path):
    with SbinFile(path) as f:
        return [(n, f.sections[n].kind, f.read(n)) for n in f.names()]


def _edit_lm(path, out, edit):
    """Rewrite graph/lm's first TENSOR reference with `edit(tensor_proto, sections)`."""
    secs = _sections(path)
    for i, (n, k, data) in enumerate(secs):
        if n == "graph/lm":
            m = onnx.load_from_string(data)
            t = next(t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
            edit(t, secs)
            secs[i] = (n, k, m.SerializeToString())
    write_sbin(out, secs)
    return out


def _set(t, **kv):
    info = {e.key: e.value for e in t.external_data}
    info.update(kv)
    del t.external_data[:]
    for k, v in info.items():
        e = t.external_data.add()
        e.key, e.value = k, v


@pytest.mark.parametrize("edit, message", [
    (lambda t, s: _set(t, location="manifest"), "not a TENSOR section"),
    (lambda t, s: _set(t, location="tensor/lm/99999"), "not a TENSOR section"),
    (lambda t, s: _set(t, location="../../etc/passwd"), "not a TENSOR section"),
    (lambda t, s: _set(t, offset="8"), "offset 0"),
    (lambda t, s: _set(t, checksum="x"), "offset 0"),
    (lambda t, s: _set(t, length="4"), "need"),
    (lambda t, s: t.dims.__setitem__(0, t.dims[0] + 1), "need"),
    (lambda t, s: t.dims.__setitem__(0, 2**62), "over the limit"),
    (lambda t, s: t.dims.__setitem__(0, -3), "negative"),
    (lambda t, s: setattr(t, "data_type", onnx.TensorProto.STRING), "element type"),
    (lambda t, s: setattr(t, "data_type", 0), "element type"),
])
def test_bad_tensor_references_are_refused(pair, tmp_path, run_cli, edit, message):
    _, mapped = pair
    bad = _edit_lm(mapped, tmp_path / "bad.sbin", edit)
    with SbinModel(bad) as m, pytest.raises(SpikecError, match=message) as info:
        m.model("lm")
    assert "graph 'lm'" in str(info.value)
    r = run_cli("inspect", str(bad))
    assert r.code == 1 and "Traceback" not in r.err and message.split()[0] in r.err


def test_corrupt_or_short_tensor_sections_are_refused(pair, tmp_path):
    _, mapped = pair
    secs = _sections(mapped)
    i = next(i for i, s in enumerate(secs) if s[1] == SectionKind.TENSOR and s[0].startswith("tensor/lm/"))
    # a flipped byte: the CRC is checked on first use
    raw = bytearray(mapped.read_bytes())
    with SbinFile(mapped) as f:
        off = f.sections[secs[i][0]].offset
    raw[off] ^= 0xFF
    flipped = tmp_path / "flipped.sbin"
    flipped.write_bytes(bytes(raw))
    with SbinModel(flipped) as m:  # opening stays cheap: tensor CRCs are not read yet
        with pytest.raises(SpikecError, match="checksum mismatch"):
            m.model("lm")
    # a section shorter than its tensor, with a valid CRC
    name, kind, data = secs[i]
    secs[i] = (name, kind, data[: len(data) // 2])
    short = write_sbin(tmp_path / "short.sbin", secs)
    with SbinModel(short) as m, pytest.raises(SpikecError, match=f"section '{name}' holds"):
        m.model("lm")


def test_a_version_1_file_still_loads(pair, tmp_path):
    """1.x files (self-contained graphs) are read by this spikec."""
    inline, _ = pair
    data = bytearray(inline.read_bytes())
    fields = list(C.HEADER.unpack_from(data, 0))
    fields[1], fields[2], fields[-1] = 1, 0, 0
    unsigned = C.HEADER.pack(*fields)
    fields[-1] = zlib.crc32(unsigned)
    data[: C.HEADER.size] = C.HEADER.pack(*fields)
    old = tmp_path / "v1.sbin"
    old.write_bytes(bytes(data))
    with SbinFile(old) as f:
        assert f.version == (1, 0)
    with load(old) as a, load(inline) as b:
        feeds = lm_feeds(a)
        ra, rb = a.run(feeds, graph="lm"), b.run(feeds, graph="lm")
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k])


def test_freeze_keeps_weights_out_of_the_proto(monkeypatch):
    """A graph whose weights total more than protobuf's 2 GiB is verified and serialised:
    the weights are never copied into a proto (they are views here: one shared buffer)."""
    import onnx_ir as ir

    monkeypatch.setattr(spir, "BIG_TENSOR_BYTES", 1024)
    big = np.zeros((1024, 1024), np.float32)  # 4 MiB, shared by 600 initializers: 2.4 GiB declared
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 1024]))
    cur, nodes, inits = x, [], []
    for i in range(600):
        w = ir.Value(name=f"W{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1024, 1024]),
                     const_value=ir.Tensor(big, name=f"W{i}"))
        inits.append(w)
        node = ir.node("MatMul", [cur, w], num_outputs=1)
        node.outputs[0].name = f"h{i}"
        cur = node.outputs[0]
        nodes.append(node)
    cur.type, cur.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([1, 1024])
    graph = ir.Graph([x], [cur], nodes=nodes, initializers=inits, opset_imports={"": 18}, name="big")
    model = ir.Model(graph, ir_version=10)
    frozen = spir.freeze(model)
    assert frozen.proto.ByteSize() < 1_000_000 and len(frozen.weights) == 600
    spir.verify(model)
    assert "W599" in spir.to_text(model)
    with pytest.raises(SpikecError, match="2 GiB"):
        frozen.inlined()
