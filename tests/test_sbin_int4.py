""".sbin 2.1: W4 weights stored as 4-bit codes, two per byte (TENSOR_INT4 sections).

The packed bytes are MatMulNBits' own layout (spikec/int4.py), so onnxruntime's decode
products read them where they lie in the .sbin; prefill either unpacks them (small models)
or runs MatMulNBits for every token (weights used in place). Every way must give the
bits of the int8-stored model. As in test_sbin_weights.py, the tiny models' weights are
spilled into sections by lowering `spikec.ir.BIG_TENSOR_BYTES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from spike_graphs import lm_feeds
from spikec import int4
from spikec import ir as spir
from spikec.compiler import compile_path
from spikec.errors import SpikecError
from spikec.isa.container import SbinFile, SectionKind, write_sbin
from spikec.package import SbinModel
from spikec.passes.options import SpikeOptions
from spikec.runtime import ort_target
from spikec.runtime.model import load
from spikec.runtime.ortops import library as ortops_library


@pytest.fixture(scope="module")
def w4(tmp_path_factory):
    """(W4 .sbin with every weight in the graph, W4 .sbin with TENSOR_INT4 sections) of the
    bundled models/digits-llava (the tiny models' K of 32 and 64 gain nothing from packing)."""
    from spikec.frontend.export import export

    d = tmp_path_factory.mktemp("int4")
    export(str(Path(__file__).resolve().parents[1] / "models" / "digits-llava"), d / "export")
    opts = SpikeOptions(tv=3, tt=4, wbits=4).validate()
    compile_path(d / "export", d / "inline.sbin", options=opts)
    mp = pytest.MonkeyPatch()
    mp.setattr(spir, "BIG_TENSOR_BYTES", 1024)
    compile_path(d / "export", d / "packed.sbin", options=opts)
    mp.undo()
    return d / "inline.sbin", d / "packed.sbin"


# ---------------------------------------------------------------- the layout itself


@pytest.mark.parametrize("K", [1, 5, 126, 127, 128, 254, 255, 300, 1536])
def test_pack_unpack_round_trip(K):
    rng = np.random.default_rng(K)
    w = rng.integers(-7, 8, (K, 9)).astype(np.int8)
    w[0, 0], w[-1, -1] = 7, -7
    b = int4.pack(w)
    assert b.shape == int4.packed_shape(K, 9) and b.nbytes == int4.packed_nbytes(K, 9)
    np.testing.assert_array_equal(int4.unpack(b, K), w)
    int4.check_packed(b, K, where="x")
    assert b"".join(bytes(c) for c in int4.pack_chunks(w)) == b.tobytes()
    # u = w + 8, low nibble first, then a zero weight (u = 8) closing each block of 127 codes
    u = np.stack([b & 15, b >> 4], axis=-1).reshape(9, -1, int4.BLOCK).astype(np.int64) - 8
    assert (u[:, :, -1] == 0).all()
    codes = u[:, :, :-1].reshape(9, -1)
    np.testing.assert_array_equal(codes[:, :K], w.T)
    assert (codes[:, K:] == 0).all()


def test_what_fits():
    assert int4.fits(np.full((300, 2), 7, np.int8)) and int4.fits(np.full((300, 2), -7, np.int8))
    assert not int4.fits(np.full((300, 2), -8, np.int8))  # -8 is not a symmetric 4-bit code
    assert not int4.fits(np.full((300, 2), 8, np.int8))
    assert not int4.fits(np.zeros((300, 2), np.int16)) and not int4.fits(np.zeros((600,), np.int8))
    assert not int4.fits(np.zeros((0, 2), np.int8))
    assert not int4.fits(np.zeros((128, 2), np.int8)) and int4.fits(np.zeros((129, 2), np.int8))  # bytes saved


@pytest.mark.parametrize("spoil, message", [
    (lambda b: b.__setitem__((0, 0, 0), 0x80), "-8"),  # low nibble 0
    (lambda b: b.__setitem__((1, 0, 63), 0x98), "zero-weight slot"),  # the slot holds code 1
    (lambda b: b.__setitem__((2, 2, 60), 0x89), "past K"),  # K = 300: the last block holds 46 codes
])
def test_impossible_packed_bytes_are_refused(spoil, message):
    b = int4.pack(np.zeros((300, 4), np.int8))
    spoil(b)
    with pytest.raises(SpikecError, match=message):
        int4.check_packed(b, 300, where="here")


# ---------------------------------------------------------------- in the .sbin


def _int8_bytes(model) -> dict[str, int]:
    return {v.name: v.const_value.nbytes for v in model.graph.initializers.values()
            if isinstance(v.const_value, int4.PackedInt4Tensor)}


def test_w4_codes_are_stored_two_per_byte(w4):
    inline, packed = w4
    with SbinModel(packed) as m:
        assert m.file.version >= (2, 1)
        sections = m.file.names(SectionKind.TENSOR_INT4)
        assert len(sections) >= 2
        model = m.model("lm")
        packed_weights = [v.const_value for v in model.graph.initializers.values()
                          if isinstance(v.const_value, int4.PackedInt4Tensor)]
        assert packed_weights and all(t.dtype == spir.ir.DataType.INT8 for t in packed_weights)
        int8_bytes = sum(t.nbytes for t in packed_weights)
        stored = sum(t.packed.nbytes for t in packed_weights)
        assert 0.5 * int8_bytes < stored <= 0.75 * int8_bytes  # small K: K = 384 takes 4 blocks of 127
        # the packed bytes are a reference into the .sbin itself (mapped, not copied)
        assert all(isinstance(t.packed, spir.ir.ExternalTensor) for t in packed_weights)
    with SbinModel(inline) as a, SbinModel(packed) as b:
        ma, mb = a.model("lm"), b.model("lm")
        for name in _int8_bytes(mb):
            np.testing.assert_array_equal(ma.graph.initializers[name].const_value.numpy(),
                                          mb.graph.initializers[name].const_value.numpy())


@pytest.mark.parametrize("mode", ["fused", "exact"])
@pytest.mark.parametrize("policy", ort_target.WEIGHT_POLICIES)
def test_packed_weights_give_the_same_bits(w4, monkeypatch, mode, policy):
    """Every weight policy of the runtime (choose_weight_policy: by the memory available)
    gives the int8-stored model's bits, in run and generate."""
    inline, packed = w4
    monkeypatch.setattr(ort_target, "choose_weight_policy", lambda sbin: policy)
    with load(inline, mode=mode) as a, load(packed, mode=mode) as b:
        feeds = lm_feeds(a)
        ra, rb = a.run(feeds, graph="lm"), b.run(feeds, graph="lm")
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
        image = _image()
        assert a.generate(image, "What is in the image?", 6) == b.generate(image, "What is in the image?", 6)
        layers = b.sessions["lm"].layers.values()
        if mode == "fused":  # which products run one token on packed weights, per policy: MatMulNBits, or
            # spikec's custom op (prepack's one-token graph, where its library is built)
            one_token = ("MatMulNBits", "spikec.ortops.SpikeEncodeMatMulNBits")
            assert any(info.get("one_token") in one_token for info in layers) == (policy != "in-place")
            assert any(info.get("tokens") == "MatMulNBits" for info in layers) == (policy == "nbits")
            # spikec's integer GEMM packs its weights: never where nothing may be copied
            gemm = any(info.get("tokens") == "any (spikec.ortops.SpikeMatMulIntegerToFloat)" for info in layers)
            assert gemm == (policy != "in-place" and ortops_library() is not None)


def test_weight_policy_follows_the_memory_available(w4, monkeypatch):
    """prepack while every copy fits; a packed model then takes nbits, never in-place (its
    int8 form would be copied by onnxruntime: a byte per weight, more than nbits' half)."""
    from spikec import memory

    _, packed = w4
    with SbinModel(packed) as m:
        sizes = {k: sum(m.file.sections[n].size for n in m.file.names(k))
                 for k in (SectionKind.TENSOR, SectionKind.TENSOR_INT4)}
        int8, nib = sizes[SectionKind.TENSOR], sizes[SectionKind.TENSOR_INT4]
        # 2 bytes per packed byte with spikec's one-token op, which copies nothing; 3 with MLAS'
        copies = int8 + (2 if ortops_library() is not None else 3) * nib
        assert ort_target.packed_copy_factor() * nib + int8 == copies
        for available, want in ((None, "prepack"), (4 * copies, "prepack"),
                                (4 * copies - 4, "nbits"), (4 * nib, "nbits"), (4 * nib - 4, "nbits")):
            monkeypatch.setattr(memory, "available_bytes", lambda a=available: a)
            assert ort_target.choose_weight_policy(m) == want, available


@pytest.mark.parametrize("in_place", [False, True])
def test_in_place_lowering_makes_no_int8_copy(w4, in_place):
    """In place, the packed weights reach onnxruntime only as their mapped 4-bit bytes."""
    from spikec.ort_lowering import lower_for_ort

    _, packed = w4
    with SbinModel(packed) as m:
        model = m.model("lm")
        lower_for_ort(model, "fused", in_place=in_place)
        int8_left = [v.name for v in model.graph.initializers.values()
                     if isinstance(v.const_value, int4.PackedInt4Tensor)]
        mapped = [v for v in model.graph.initializers.values()
                  if isinstance(v.const_value, spir.ir.ExternalTensor) and v.const_value.dtype == spir.ir.DataType.UINT8]
        assert mapped  # decode's MatMulNBits reads the .sbin's sections either way
        assert bool(int8_left) != in_place


def _image():
    from spikec.frontend.export import sample_image

    return sample_image()


def _rewrite(path, out, edit):
    """Rewrite the first TENSOR_INT4 section of graph 'lm' with `edit(bytes, tensor_proto)`
    (valid CRCs: only spikec's own checks can refuse the result)."""
    with SbinFile(path) as f:
        secs = [(n, f.sections[n].kind, bytes(f.read(n))) for n in f.names()]
    g = next(i for i, s in enumerate(secs) if s[0] == "graph/lm")
    proto = onnx.load_from_string(secs[g][2])
    kinds = {n: k for n, k, _ in secs}
    t = next(t for t in proto.graph.initializer
             if t.external_data and kinds.get(t.external_data[0].value) == SectionKind.TENSOR_INT4)
    i = next(i for i, s in enumerate(secs) if s[0] == t.external_data[0].value)
    secs[i] = (secs[i][0], secs[i][1], edit(bytearray(secs[i][2]), t))
    secs[g] = (secs[g][0], secs[g][1], proto.SerializeToString())
    write_sbin(out, secs)
    return out


def _nibble_zero(data, t):
    data[0] &= 0xF0
    return bytes(data)


def _slot(data, t):
    data[63] = (data[63] & 0x0F) | 0x90
    return bytes(data)


def _short(data, t):
    return bytes(data[:-64])


def _float(data, t):
    t.data_type = onnx.TensorProto.FLOAT
    return bytes(data)


@pytest.mark.parametrize("edit, message", [
    (_nibble_zero, "-8"),
    (_slot, "zero-weight slot"),
    (_short, "packed two codes per byte needs"),
    (_float, "is TENSOR_INT4, an int8 matrix"),
])
def test_bad_packed_sections_are_refused(w4, tmp_path, run_cli, edit, message):
    _, packed = w4
    bad = _rewrite(packed, tmp_path / "bad.sbin", edit)
    with SbinModel(bad) as m, pytest.raises(SpikecError, match=message) as info:
        m.model("lm")
    assert "graph 'lm'" in str(info.value) and "tensor/lm/" in str(info.value)
    r = run_cli("inspect", str(bad))
    assert r.code == 1 and "Traceback" not in r.err and message.split()[0] in r.err


def test_prefill_int8_form_is_a_mapped_file_not_heap():
    """The int8 form prefill's MatMulInteger reads (small models) is unpacked into an
    unlinked temporary file and mapped: file-backed pages, not a second anonymous copy
    beside onnxruntime's prepacked one."""
    import mmap

    rng = np.random.default_rng(0)
    ws = [rng.integers(-7, 8, (300, n)).astype(np.int8) for n in (5, 64)]
    tensors = [int4.PackedInt4Tensor(spir.ir.Tensor(int4.pack(w)), 300, name=f"w{i}") for i, w in enumerate(ws)]
    plain = spir.ir.Tensor(np.arange(6, dtype=np.float32), name="b")
    arrays = spir._session_arrays([tensors[0], plain, tensors[1]])
    for a, w in zip((arrays[0], arrays[2]), ws):
        np.testing.assert_array_equal(a, w)
        assert not a.flags.writeable
        base = a
        while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
            base = base.base
        assert isinstance(base, mmap.mmap)
    np.testing.assert_array_equal(arrays[1], np.arange(6, dtype=np.float32))


def test_fpga_target_reads_packed_weights(w4, tmp_path, monkeypatch):
    """--target fpga on a W4 .sbin with packed sections (its host ops on onnxruntime read
    them too): the same prefill logits and tokens as the ORT target, bit for bit."""
    inline, _ = w4
    monkeypatch.setattr(spir, "BIG_TENSOR_BYTES", 1024)
    path = tmp_path / "isa.sbin"
    compile_path(inline.parent / "export", path, options=SpikeOptions(tv=3, tt=4, wbits=4).validate(), isa=True)
    monkeypatch.undo()
    with SbinFile(path) as f:
        assert f.names(SectionKind.TENSOR_INT4)
    got = {}
    for target in ("ort", "fpga"):
        with load(path, target=target) as model:
            g = model.generator()
            po = g.prepare([_image()], ["What is in the image?"])
            embeds, mask, pos, modality, _ = g.prefill_inputs(po)
            logits, _ = g.lm(embeds, mask, pos, modality, g.empty_past(embeds.shape[0]))
            got[target] = (logits, g.generate_ids(po, 3, stop_at_eos=False))
    np.testing.assert_array_equal(got["ort"][0].view(np.uint8), got["fpga"][0].view(np.uint8))
    np.testing.assert_array_equal(got["ort"][1], got["fpga"][1])


def test_int8_storage_on_request(w4, tmp_path, monkeypatch, run_cli):
    """--int4-storage int8: W4 codes one per byte (TENSOR), which a model too large for any
    copy runs in place; the same bits as the packed file."""
    inline, packed = w4
    monkeypatch.setattr(spir, "BIG_TENSOR_BYTES", 1024)
    path = tmp_path / "int8.sbin"
    compile_path(inline.parent / "export", path, options=SpikeOptions(tv=3, tt=4, wbits=4).validate(),
                 int4_storage="int8")
    monkeypatch.undo()
    with SbinFile(path) as f, SbinFile(packed) as g:
        assert not f.names(SectionKind.TENSOR_INT4) and g.names(SectionKind.TENSOR_INT4)
    assert path.stat().st_size > packed.stat().st_size
    with load(path) as a, load(packed) as b:
        feeds = lm_feeds(a)
        ra, rb = a.run(feeds, graph="lm"), b.run(feeds, graph="lm")
        for k in ra:
            np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)
    r = run_cli("compile", str(inline.parent / "export"), "-o", str(tmp_path / "folder"), "--int4-storage", "int8")
    assert r.code == 1 and "--int4-storage int8" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "folder").exists()


def _k_minus_one(data, t):
    """K - 1 codes, repacked so nothing lies past the new K (same byte count)."""
    K, N = t.dims
    codes = int4.unpack(np.frombuffer(bytes(data), np.uint8).reshape(int4.packed_shape(K, N)), K)
    t.dims[0] = K - 1
    return int4.pack(codes[:K - 1]).tobytes()


def _length_leading_zero(data, t):
    for e in t.external_data:
        if e.key == "length":
            e.value = "0" + e.value
    return bytes(data)


def test_a_packed_k_that_does_not_fit_its_input(w4, tmp_path, run_cli):
    """Found by a newcomer's trial: K - 1 codes packed in the same bytes pass every nibble
    check; the graph then does not fit. Refused where the input's width is known (the ops
    check), else by onnxruntime when the graph is loaded or run: exit 1, file and graph named."""
    from spikec import ops as sops
    from test_ort_nbits import _graph

    model = _graph(300)
    node = next(n for n in model.graph if n.op_type == "SpikeMatMul")
    node.inputs[0].shape = spir.ir.Shape([1, 2, 299])
    with pytest.raises(SpikecError, match="K = 300 input features, its input 299"):
        sops.check_spikec_ops(model)
    _, packed = w4
    bad = _rewrite(packed, tmp_path / "bad.sbin", _k_minus_one)
    r = run_cli("run", str(bad), "--prompt", "hi", "--max-new-tokens", "1")
    assert r.code == 1 and "Traceback" not in r.err and "graph 'lm'" in r.err and str(bad) in r.err, r.err


def test_a_length_written_oddly_is_named(w4, tmp_path, run_cli):
    _, packed = w4
    bad = _rewrite(packed, tmp_path / "bad.sbin", _length_leading_zero)
    r = run_cli("inspect", str(bad))
    assert r.code == 1 and "Traceback" not in r.err and "not written plainly" in r.err, r.err


def test_a_section_backs_one_weight_only(w4, tmp_path):
    _, packed = w4
    with SbinFile(packed) as f:
        secs = [(n, f.sections[n].kind, bytes(f.read(n))) for n in f.names()]
    g = next(i for i, s in enumerate(secs) if s[0] == "graph/lm")
    proto = onnx.load_from_string(secs[g][2])
    kinds = {n: k for n, k, _ in secs}
    refs = [t for t in proto.graph.initializer
            if t.external_data and kinds.get(t.external_data[0].value) == SectionKind.TENSOR_INT4]
    same = [t for t in refs if list(t.dims) == list(refs[0].dims)]
    assert len(same) >= 2
    same[1].external_data[0].value = same[0].external_data[0].value
    secs[g] = (secs[g][0], secs[g][1], proto.SerializeToString())
    bad = write_sbin(tmp_path / "bad.sbin", secs)
    with SbinModel(bad) as m, pytest.raises(SpikecError, match="already the data of"):
        m.model("lm")


def test_a_2_0_header_with_packed_sections_is_refused(w4, tmp_path):
    import zlib

    from spikec.isa import container as C

    _, packed = w4
    data = bytearray(packed.read_bytes())
    fields = list(C.HEADER.unpack_from(data, 0))
    fields[2], fields[-1] = 0, 0
    fields[-1] = zlib.crc32(C.HEADER.pack(*fields))
    data[: C.HEADER.size] = C.HEADER.pack(*fields)
    old = tmp_path / "old.sbin"
    old.write_bytes(bytes(data))
    with pytest.raises(SpikecError, match="TENSOR_INT4 appeared in .sbin 2.1"):
        SbinFile(old)


def test_generation_length_is_the_checkpoints(w4, monkeypatch):
    """Without max_new_tokens, generate takes the checkpoint's generation_config (the bundled
    model's is 4, carried by the export's manifest into the .sbin); a manifest without it: 32."""
    from spikec.frontend.generate import OrtGenerator

    asked = []
    real = OrtGenerator.generate

    def spy(self, image, prompt, max_new_tokens=32):
        asked.append(max_new_tokens)
        return real(self, image, prompt, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(OrtGenerator, "generate", spy)
    with load(w4[1]) as m:
        assert m.manifest["max_new_tokens"] == 4 and m.default_max_new_tokens == 4
        m.generate(_image(), "What is in the image?")
        m.generate(_image(), "What is in the image?", 2)
        m.manifest.pop("max_new_tokens")
        assert m.default_max_new_tokens == 32
    assert asked == [4, 2]
