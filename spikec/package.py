"""Packing a model folder into one .sbin file, and opening it again.

A model folder is what `spikec export` (and `spikec compile` on a folder) writes:
`manifest.json`, one ONNX graph per role (`graphs.<role>.file`, weights possibly
in external data), and the checkpoint's processor/tokenizer files. The .sbin (2.1) holds:

    manifest            MANIFEST  the folder's manifest, graph files replaced by section names
    graph/<role>        ONNX      each graph; weights of 64 KiB or more refer to TENSOR sections
    tensor/<role>/<k>   TENSOR    those weights, raw bytes, each 4096-aligned (memory-mapped on load);
                        TENSOR_INT4 for a weight of 4-bit codes (two per byte, spikec/int4.py)
    files/<relpath>     FILE      every file of the processor folder
    <extra sections>              e.g. the compile report, the accelerator program

No weight is copied into the Python heap on either side: packing writes views of the
memory-mapped source (4-bit codes packed a few MiB at a time), and `SbinModel.model` hands views of the .sbin's own map to the
runtime. Container format and checks: docs/sbin.md (isa/container.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx_ir as ir

from spikec import ir as spir
from spikec import int4, vector
from spikec.errors import SpikecError
from spikec.frontend import manifest as mf
from spikec.paths import check_name, files_inside, resolve_inside
from spikec.isa.container import WEIGHT_KINDS, SbinFile, SectionKind, StreamedPayload, write_sbin
from spikec.schema import condense, parse_json

MANIFEST_SECTION = "manifest"
REPORT_SECTION = "report"  # JSON: the compile report (`spikec compile`; read by `spikec report`)
GRAPH_PREFIX = "graph/"
FILE_PREFIX = "files/"
# Where the processor files of a .sbin are extracted, inside a private temporary folder:
# a fixed name, never the manifest's own `processor` field.
PROCESSOR_DIR = "processor"


TENSOR_PREFIX = "tensor/"
# A tokenizer.json of a large vocabulary is tens of MB; the processor's JSON files are read
# whole by transformers anyway.
MAX_PROCESSOR_JSON = 256 << 20


def _graph_sections(path: Path, role: str, pack_int4: bool = True) -> list[tuple[str, int, bytes | memoryview]]:
    """A graph file as an ONNX section whose big weights refer to TENSOR sections, then those
    sections (payloads are views of the source's memory map, not copies); with `pack_int4`,
    weights of 4-bit codes as TENSOR_INT4 sections (int4.fits), packed as they are written."""
    model = spir.load_model(path)
    frozen = spir.freeze(model)
    tensors = []
    for k, t in enumerate(i for i in frozen.proto.graph.initializer if i.name in frozen.weights):
        name = f"{TENSOR_PREFIX}{role}/{k}"
        array = np.ascontiguousarray(frozen.weights[t.name].numpy())
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        if pack_int4 and int4.fits(array):
            # 4-bit codes, two per byte, in the layout onnxruntime's MatMulNBits reads in place;
            # packed while the file is written, a few MiB at a time
            size = int4.packed_nbytes(*array.shape)
            payload = StreamedPayload(size, lambda a=array: int4.pack_chunks(a))
            tensors.append((name, SectionKind.TENSOR_INT4, payload))
        else:
            size = array.nbytes
            tensors.append((name, SectionKind.TENSOR, memoryview(array).cast("B") if array.size else b""))
        del t.external_data[:]
        for key, value in (("location", name), ("offset", "0"), ("length", str(size))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    if frozen.proto.ByteSize() >= 2**31:
        raise SpikecError(f"{path}: the graph without its big weights is still over protobuf's 2 GiB limit")
    # The reader refuses any op outside SBIN_OPS: refuse it here too, so that a compile never
    # writes a .sbin that spikec itself would not load.
    check_graph_ops(frozen.proto, where=f"{path} (graph '{role}', packing into a .sbin)")
    return [(GRAPH_PREFIX + role, SectionKind.ONNX, frozen.proto.SerializeToString(deterministic=True)), *tensors]


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike,
                extra: Iterable[tuple[str, int, bytes]] = (), pack_int4: bool = True) -> Path:
    """Pack a model folder (manifest.json + graphs + processor files) into `out` (.sbin);
    `pack_int4` stores W4 codes two per byte (TENSOR_INT4), else one per byte (TENSOR).

    Every path comes from the folder's manifest and is resolved inside `folder`
    (frontend.manifest.graph_path / processor_path): nothing outside it is packed. The
    processor's JSON files are checked as opening the .sbin checks them (schema.parse_json:
    a key given twice, invalid JSON). Raises SpikecError naming the file and field."""
    from spikec.frontend import manifest as mf

    folder = Path(folder)
    manifest_path = folder / mf.MANIFEST
    manifest = mf.load_json(folder)
    graphs = manifest["graphs"]
    sections: list[tuple[str, int, bytes]] = []
    packed_manifest = json.loads(json.dumps(manifest))  # a deep copy of the checked manifest, not a file read
    for role in sorted(graphs):
        sections.extend(_graph_sections(mf.graph_path(folder, manifest, role), role, pack_int4))
        packed_manifest["graphs"][role]["file"] = GRAPH_PREFIX + role
    proc_dir = mf.processor_path(folder, manifest)
    if proc_dir is not None:
        if not proc_dir.is_dir():
            raise SpikecError(f"{manifest_path}: processor folder '{manifest['processor']}' not found")
        packed_manifest["processor"] = PROCESSOR_DIR
        for rel, f in files_inside(proc_dir, where=f"{manifest_path}: processor file"):
            data = f.read_bytes()
            if rel.endswith(".json"):  # checked as SbinModel.folder() will check it: refused now, not at run time
                parse_json(data, where=str(f), max_bytes=MAX_PROCESSOR_JSON)
            sections.append((FILE_PREFIX + rel, SectionKind.FILE, data))
    manifest_bytes = (json.dumps(packed_manifest, indent=2, sort_keys=True) + "\n").encode()
    return write_sbin(out, [(MANIFEST_SECTION, SectionKind.MANIFEST, manifest_bytes), *sections, *extra])


# ---------------------------------------------------------------- what a graph section may hold

# The ops a .sbin graph may contain: the ones spikec emits, and no others (a graph section
# is run by ONNX Runtime or onnx's reference evaluator, so an op outside this list -- a Loop
# with no trip count, a ConstantOfShape of 4 EiB -- would reach them unchecked).
# Derived by exporting every family's tiny model (tiny-llava, tiny-qwen2-vl, tiny-qwen2.5-vl,
# tiny-internvl, tiny-idefics3) and models/digits-llava and compiling each export
# (tests/fuzzing.py COLLECT_OPTIONS: default; --spike-attention; --neuron if --wbits 4;
# W4 with groups of 32, --rotate --spike-attention), then
# collecting (domain, op_type) of every exported and compiled graph
# (tests/fuzzing.py: `collect_ops`, re-run by the slow test in tests/test_fuzz.py); plus the
# spikec domain's ops (spikec/ops.py), the QDQ ops `import-qdq` reads, and the ops of the
# single-graph models the test suite compiles (spikec.testing.examples.tiny_mlp_block: CastLike,
# Constant; tests/graphs.py: Relu, Identity). No op carrying a subgraph (Loop, Scan, If) is
# emitted, so none is accepted.
DEFAULT_DOMAIN_OPS = frozenset({
    "Add", "And", "Cast", "CastLike", "Clip", "Concat", "Constant", "Conv", "Cos", "DequantizeLinear", "Div", "Equal",
    "Erf", "Expand", "Gather", "GatherND", "Gemm", "Greater", "Identity", "LayerNormalization", "Less", "LessOrEqual",
    "MatMul", "Max", "Mod", "Mul", "Neg", "Not", "Pow", "QuantizeLinear", "Range", "Reciprocal", "ReduceMean",
    "ReduceSum", "Relu", "Reshape", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze", "Where",
})
SPIKEC_DOMAIN_OPS = frozenset({"QuantLinear", "QuantMatMul", "SpikeEncode", "SpikeCode", "SpikeMatMul"})
SBIN_OPS: frozenset[tuple[str, str]] = frozenset(
    {("", op) for op in DEFAULT_DOMAIN_OPS} | {("spikec", op) for op in SPIKEC_DOMAIN_OPS}
    | {(vector.DOMAIN, op) for op in vector.OPS})
# Elements a constant shape (ConstantOfShape, Expand, Reshape, Tile) or a constant Range may
# declare: 2**28 float32 elements is 1 GiB, far above any shape a spikec graph holds
# constant (those are small; sequence-sized shapes come from Shape at run time).
MAX_DECLARED_ELEMENTS = 1 << 28


def _constants(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Values of a graph known without running it: initializers and Constant nodes' `value`."""
    out = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[n.output[0]] = a.t
    return out


def _small_array(t: onnx.TensorProto, where: str) -> np.ndarray | None:
    """A constant shape/scalar operand as an array; None if it is not one (not an integer or
    float tensor of at most 64 elements, e.g. stored externally)."""
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
        return None
    count = 1
    for d in t.dims:
        count *= max(int(d), 0)
    if count > 64:
        raise SpikecError(f"{where}: a constant shape operand of {count} elements (a rank over 64)")
    try:
        return np.asarray(onnx.numpy_helper.to_array(t))
    except Exception as exc:  # onnx raises several types for malformed tensors
        raise SpikecError(f"{where}: constant operand '{t.name[:80]}' cannot be read ({condense(exc, 200)})") from None


def _declared_elements(op: str, node: onnx.NodeProto, consts: dict, where: str) -> int | None:
    """Elements node `op` will allocate according to its constant operands, or None when they
    are not constant (then the input's own size bounds it)."""
    def operand(i: int) -> np.ndarray | None:
        if len(node.input) <= i or node.input[i] not in consts:
            return None
        return _small_array(consts[node.input[i]], where)

    if op in ("ConstantOfShape", "Expand", "Reshape", "Tile"):
        shape = operand(0 if op == "ConstantOfShape" else 1)
        if shape is None:
            return None
        if shape.dtype.kind not in "iu":
            raise SpikecError(f"{where}: {op} shape operand of type {shape.dtype} (not integers)")
        count = 1
        for d in shape.reshape(-1).tolist():
            count *= abs(int(d)) if op != "Reshape" or d > 0 else 1
        return count
    if op == "Range":
        vals = [operand(i) for i in range(3)]
        if any(v is None or v.size != 1 for v in vals):
            return None
        start, limit, delta = (float(v.reshape(-1)[0]) for v in vals)
        if not all(np.isfinite([start, limit, delta])):
            raise SpikecError(f"{where}: Range with a non-finite start, limit or delta")
        if delta == 0:
            raise SpikecError(f"{where}: Range with delta 0")
        return max(int(np.ceil((limit - start) / delta)), 0)
    return None


def check_graph_ops(proto: onnx.ModelProto, *, where: str) -> None:
    """Refuse a graph section holding an op spikec does not emit (SBIN_OPS: no subgraphs), a
    model-local function other than spikec.vec's own (vector.check_functions), or
    a constant shape declaring more than MAX_DECLARED_ELEMENTS elements, before anything is
    allocated or run. Raises SpikecError naming `where` (file and graph), the node and op."""
    g = proto.graph
    vector.check_functions(proto, where)  # the only model-local functions: spikec.vec's, byte for byte
    consts = _constants(g)
    for node in g.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        op = f"{domain + '::' if domain else ''}{node.op_type}"
        nw = f"{where}: node '{node.name[:80]}' ({op[:80]})"
        if (domain, node.op_type) not in SBIN_OPS:
            raise SpikecError(f"{nw}: op '{op[:80]}' is not one spikec emits; a .sbin graph holds only those "
                              f"(spikec.package.SBIN_OPS)")
        for a in node.attribute:
            if a.HasField("g") or len(a.graphs):
                raise SpikecError(f"{nw}: attribute '{a.name[:80]}' holds a subgraph, which spikec never emits")
        n = _declared_elements(node.op_type, node, consts, nw) if not domain else None
        if n is not None and n > MAX_DECLARED_ELEMENTS:
            raise SpikecError(f"{nw}: declares {n} elements, over the limit of {MAX_DECLARED_ELEMENTS}")


class SbinModel:
    """An opened .sbin: manifest, graphs by role, and the processor files on demand."""

    def __init__(self, path: str | os.PathLike, *, verify_all: bool = True) -> None:
        """Open and check a .sbin. `verify_all` checks every section's CRC now except the
        TENSOR sections, whose CRC is checked on their first use (`model`, `graph`), so that
        opening a multi-GB model stays fast (docs/sbin.md)."""
        self.path = Path(path)
        self.file = SbinFile(self.path)
        if verify_all:
            for section in self.file.sections.values():
                if section.kind not in WEIGHT_KINDS:
                    self.file.view(section.name).release()
        if MANIFEST_SECTION not in self.file.sections:
            raise SpikecError(f"{self.path}: no section 'manifest' (not a compiled spikec model)")
        where = f"{self.path}: section 'manifest'"
        manifest = parse_json(self.file.read(MANIFEST_SECTION), where=where)
        if not isinstance(manifest, dict):
            raise SpikecError(f"{where} is not a JSON object")
        # every field any reader uses later (inspect, the runtime, generation), checked once
        self.manifest = mf.check_manifest(manifest, where=where, sbin=True)
        graphs = self.manifest["graphs"]
        for role, entry in graphs.items():
            check_name(role, where=f"{self.path}: manifest graph role")
            section = entry.get("file")
            if not isinstance(section, str) or section not in self.file.sections:
                raise SpikecError(f"{self.path}: manifest graph '{role}' names a missing section {section!r:.80}")
            if self.file.sections[section].kind != SectionKind.ONNX:
                raise SpikecError(f"{self.path}: manifest graph '{role}' names section '{section}', which is not ONNX")
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def roles(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def graph_bytes(self, role: str) -> bytes:
        if role not in self.manifest["graphs"]:
            raise SpikecError(f"{self.path}: no graph '{role}' (graphs: {', '.join(self.roles)})")
        return self.file.read(self.manifest["graphs"][role]["file"])

    def graph(self, role: str) -> onnx.ModelProto:
        """Graph `role` as a self-contained ModelProto (its TENSOR sections inlined: a copy;
        for small models and tools; the runtime uses `model`)."""
        proto, tensors = self._graph_and_tensors(role)
        return spir.Frozen(proto, tensors).inlined()

    def model(self, role: str) -> ir.Model:
        """Graph `role` in the IR, its big weights zero-copy read-only views of the .sbin's
        memory map (checksums verified on this first use)."""
        proto, tensors = self._graph_and_tensors(role)
        for t in proto.graph.initializer:
            if t.name in tensors:
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]
        model = ir.serde.deserialize_model(proto)
        for name, tensor in tensors.items():
            model.graph.initializers[name].const_value = tensor
        # the spiking ops' own contract (T per modality, code bounds, weight shapes, overflow
        # guard), checked before any lowering reads their attributes
        from spikec import ops

        try:
            ops.check_spikec_ops(model)
        except SpikecError as exc:
            raise SpikecError(f"{self.path}: graph '{role}': {exc}") from None
        return model

    def _graph_and_tensors(self, role: str) -> tuple[onnx.ModelProto, dict[str, ir.Tensor]]:
        """The graph proto and, for each initializer that refers to a TENSOR section, a tensor
        over that section. Every reference is checked against the file: only this .sbin's
        own TENSOR sections, offset 0, the section's length equal to what dims and type need;
        anything else (a path, an offset, another file) is refused."""
        where = f"{self.path}: graph '{role}'"
        try:
            proto = onnx.load_from_string(self.graph_bytes(role))
        except Exception as exc:  # protobuf raises several types for bad bytes
            raise SpikecError(f"{where} is not a valid ONNX model ({condense(exc, 200)})") from None
        if not proto.HasField("graph"):
            raise SpikecError(f"{where} is not a valid ONNX model (no graph)")
        # a tensor attribute or a subgraph initializer may not refer to anything outside itself
        spir.check_self_contained(proto, where=where, initializers=False)
        # only the ops spikec emits, no declared size past the limits, stored data as declared
        spir.check_graph_structure(proto, where=where)
        check_graph_ops(proto, where=where)
        tensors: dict[str, ir.TensorProtocol] = {}
        used: dict[str, str] = {}  # section -> the initializer it holds
        folder = self.path.resolve().parent
        # onnx_ir refuses to map a file with several hard links; such a .sbin is read through views
        shared_file_ok = os.stat(self.path).st_nlink == 1
        for t in proto.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL and not len(t.external_data):
                continue
            info = {e.key: e.value for e in t.external_data}
            tw = f"{where}: tensor '{t.name[:80]}'"
            section = info.get("location", "")
            if set(info) - {"location", "offset", "length"} or info.get("offset", "0") != "0":
                raise SpikecError(f"{tw}: external data {sorted(info)[:4]} must name one TENSOR section of this "
                                  f"file, at offset 0")
            entry = self.file.sections.get(section) if section.startswith(TENSOR_PREFIX) else None
            if entry is None or entry.kind not in WEIGHT_KINDS:
                raise SpikecError(f"{tw}: external data '{section[:80]}' is not a TENSOR section of this file; "
                                  f"an embedded graph refers only to its own .sbin")
            if t.name in tensors:
                raise SpikecError(f"{tw}: initializer appears twice")
            if section in used:
                raise SpikecError(f"{tw}: section '{section}' is already the data of '{used[section][:80]}'; "
                                  f"each weight has its own section")
            used[section] = t.name
            if "length" in info and not info["length"].isdigit():
                raise SpikecError(f"{tw}: external data length '{info['length'][:40]}' is not a byte count")
            if "length" in info and info["length"] != str(int(info["length"])):
                raise SpikecError(f"{tw}: external data length '{info['length'][:40]}' is not written plainly "
                                  f"(as {int(info['length'])})")
            dtype, shape, nbytes = spir.tensor_layout(t, where=tw)
            if entry.kind == SectionKind.TENSOR_INT4:
                tensors[t.name] = self._packed_tensor(t, entry, info, shape, tw, folder, shared_file_ok)
                continue
            if entry.size != nbytes or info.get("length", str(nbytes)) != str(nbytes):
                raise SpikecError(f"{tw}: section '{section}' holds {entry.size} bytes; dims {list(t.dims)[:8]} of "
                                  f"{onnx.TensorProto.DataType.Name(t.data_type)} need {nbytes}")
            view = self.file.view(section)  # checks the section's CRC on first use
            if nbytes and shared_file_ok:
                # A reference into the .sbin itself: onnxruntime maps it in place (spikec.ir.ort_session)
                view.release()
                tensors[t.name] = ir.ExternalTensor(self.path.name, entry.offset, nbytes, ir.DataType(t.data_type),
                                                    shape=ir.Shape(shape), name=t.name, base_dir=str(folder))
            else:
                array = np.frombuffer(view, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
                tensors[t.name] = ir.Tensor(array, name=t.name)
        return proto, tensors

    def _packed_tensor(self, t: onnx.TensorProto, entry, info: dict, shape: tuple[int, ...], tw: str,
                       folder: Path, shared_file_ok: bool) -> int4.PackedInt4Tensor:
        """A TENSOR_INT4 section as the int8 [K, N] weight it packs (spikec/int4.py), after
        checking its type, size, CRC and every nibble (int4.check_packed)."""
        if t.data_type != onnx.TensorProto.INT8 or len(shape) != 2 or min(shape) < 1:
            raise SpikecError(f"{tw}: section '{entry.name}' is TENSOR_INT4, an int8 matrix [K, N]; the graph declares "
                              f"{onnx.TensorProto.DataType.Name(t.data_type)} {list(shape)[:8]}")
        K, N = shape
        size = int4.packed_nbytes(K, N)
        if entry.size != size or info.get("length", str(size)) != str(size):
            raise SpikecError(f"{tw}: section '{entry.name}' holds {entry.size} bytes; int8 [{K}, {N}] packed "
                              f"two codes per byte needs {size}")
        view = self.file.view(entry.name)  # checks the section's CRC on first use
        packed = np.frombuffer(view, dtype=np.uint8).reshape(int4.packed_shape(K, N))
        int4.check_packed(packed, K, where=f"{tw}: section '{entry.name}'")
        if shared_file_ok:
            del packed
            view.release()
            packed = ir.ExternalTensor(self.path.name, entry.offset, size, ir.DataType.UINT8,
                                       shape=ir.Shape(int4.packed_shape(K, N)), name=f"{t.name}.int4",
                                       base_dir=str(folder))
        else:
            packed = ir.Tensor(packed, name=f"{t.name}.int4")
        return int4.PackedInt4Tensor(packed, K, name=t.name)

    def section_json(self, name: str) -> object | None:
        """A JSON section parsed (None when the file has no such section); SpikecError naming
        the file and section if it is not valid JSON (schema.parse_json)."""
        if name not in self.file.sections:
            return None
        return parse_json(self.file.read(name), where=f"{self.path}: section '{name}'")

    def folder(self) -> Path:
        """A private temporary folder laid out like a model folder: manifest.json and the
        processor files under `processor/`, for code that loads processors from disk.

        spikec creates it (mkdtemp, mode 0700) and removes it on close(). The manifest's own
        `processor` field is never used as a path here: the copy written says `processor`,
        and every FILE section name is checked to stay inside that folder."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="spikec-sbin-")
            root = Path(self._tmp.name)
            manifest = dict(self.manifest, processor=PROCESSOR_DIR)
            (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
            proc = root / PROCESSOR_DIR
            proc.mkdir()
            for name in self.file.names(SectionKind.FILE):
                where = f"{self.path}: file section"
                if not name.startswith(FILE_PREFIX):
                    raise SpikecError(f"{where} '{name[:80]}' is not under '{FILE_PREFIX}'")
                target = resolve_inside(proc, name[len(FILE_PREFIX):], where=f"{where} '{name[:80]}'")
                data = self.file.read(name)
                if name.endswith(".json"):  # processor, tokenizer and model configurations
                    parse_json(data, where=f"{where} '{name[:80]}'", max_bytes=MAX_PROCESSOR_JSON)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "xb") as f:  # exclusive: two sections may not name one file
                        f.write(data)
                except OSError as exc:
                    raise SpikecError(f"{where} '{name[:80]}' cannot be extracted: it collides with another "
                                      f"file section ({exc.strerror})") from None
        return Path(self._tmp.name)

    def public_name(self, message: str) -> str:
        """`message` with every path into the private folder of `folder()` replaced by what
        the user knows: "<tmp>/manifest.json" -> "model.sbin: manifest.json" (the section
        'manifest'), "<tmp>/processor/x.json" -> "model.sbin (files/x.json)" (a FILE
        section), "<tmp>/processor" -> "model.sbin (files/)"; the folder itself is
        temporary and removed on close, so an error naming it would point nowhere."""
        if self._tmp is None:
            return message
        root = self._tmp.name
        proc = re.escape(f"{root}{os.sep}{PROCESSOR_DIR}{os.sep}")
        message = message.replace(f"{root}{os.sep}{mf.MANIFEST}", f"{self.path}: {mf.MANIFEST}")
        message = re.sub(proc + r"([^\s'\":,)]+)", lambda mt: f"{self.path} ({FILE_PREFIX}{mt.group(1)})", message)
        message = message.replace(f"{root}{os.sep}{PROCESSOR_DIR}", f"{self.path} ({FILE_PREFIX})")
        return message.replace(root, str(self.path))

    @contextlib.contextmanager
    def naming_files(self) -> Iterator[None]:
        """Re-raise a SpikecError raised inside that names the private folder of `folder()`
        (a check of its manifest.json, a processor file transformers cannot load) with the
        .sbin and section named instead (`public_name`); the original stays the cause."""
        try:
            yield
        except SpikecError as exc:
            text = self.public_name(str(exc))
            if text == str(exc):
                raise
            raise SpikecError(text) from exc

    def close(self) -> None:
        self.file.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "SbinModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
