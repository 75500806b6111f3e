"""Packing a model folder into one .sbin file, and opening it again.

A model folder is what `spikec export` (and `spikec compile` on a folder) writes:
`manifest.json`, one ONNX graph per role (`graphs.<role>.file`, weights possibly
in external data), and the checkpoint's processor/tokenizer files. The .sbin (2.0) holds:

    manifest            MANIFEST  the folder's manifest, graph files replaced by section names
    graph/<role>        ONNX      each graph; weights of 64 KiB or more refer to TENSOR sections
    tensor/<role>/<k>   TENSOR    those weights, raw bytes, each 4096-aligned (memory-mapped on load)
    files/<relpath>     FILE      every file of the processor folder
    <extra sections>              e.g. the compile report, the accelerator program

No weight is copied into the Python heap on either side: packing writes views of the
memory-mapped source, and `SbinModel.model` hands views of the .sbin's own map to the
runtime. Container format and checks: docs/sbin.md (isa/container.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import onnx_ir as ir

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.paths import check_name, files_inside, resolve_inside
from spikec.isa.container import SbinFile, SectionKind, write_sbin

MANIFEST_SECTION = "manifest"
GRAPH_PREFIX = "graph/"
FILE_PREFIX = "files/"
# Where the processor files of a .sbin are extracted, inside a private temporary folder:
# a fixed name, never the manifest's own `processor` field.
PROCESSOR_DIR = "processor"


TENSOR_PREFIX = "tensor/"


def _graph_sections(path: Path, role: str) -> list[tuple[str, int, bytes | memoryview]]:
    """A graph file as an ONNX section whose big weights refer to TENSOR sections, then those
    sections (payloads are views of the source's memory map, not copies)."""
    model = spir.load_model(path)
    frozen = spir.freeze(model)
    tensors = []
    for k, t in enumerate(i for i in frozen.proto.graph.initializer if i.name in frozen.weights):
        name = f"{TENSOR_PREFIX}{role}/{k}"
        array = np.ascontiguousarray(frozen.weights[t.name].numpy())
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        del t.external_data[:]
        for key, value in (("location", name), ("offset", "0"), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        tensors.append((name, SectionKind.TENSOR, memoryview(array).cast("B") if array.size else b""))
    if frozen.proto.ByteSize() >= 2**31:
        raise SpikecError(f"{path}: the graph without its big weights is still over protobuf's 2 GiB limit")
    return [(GRAPH_PREFIX + role, SectionKind.ONNX, frozen.proto.SerializeToString(deterministic=True)), *tensors]


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike,
                extra: Iterable[tuple[str, int, bytes]] = ()) -> Path:
    """Pack a model folder (manifest.json + graphs + processor files) into `out` (.sbin).

    Every path comes from the folder's manifest and is resolved inside `folder`
    (frontend.manifest.graph_path / processor_path): nothing outside it is packed."""
    from spikec.frontend import manifest as mf

    folder = Path(folder)
    manifest_path = folder / mf.MANIFEST
    manifest = mf.load_json(folder)
    graphs = manifest["graphs"]
    sections: list[tuple[str, int, bytes]] = []
    packed_manifest = json.loads(json.dumps(manifest))
    for role in sorted(graphs):
        sections.extend(_graph_sections(mf.graph_path(folder, manifest, role), role))
        packed_manifest["graphs"][role]["file"] = GRAPH_PREFIX + role
    proc_dir = mf.processor_path(folder, manifest)
    if proc_dir is not None:
        if not proc_dir.is_dir():
            raise SpikecError(f"{manifest_path}: processor folder '{manifest['processor']}' not found")
        packed_manifest["processor"] = PROCESSOR_DIR
        for rel, f in files_inside(proc_dir, where=f"{manifest_path}: processor file"):
            sections.append((FILE_PREFIX + rel, SectionKind.FILE, f.read_bytes()))
    manifest_bytes = (json.dumps(packed_manifest, indent=2, sort_keys=True) + "\n").encode()
    return write_sbin(out, [(MANIFEST_SECTION, SectionKind.MANIFEST, manifest_bytes), *sections, *extra])


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
                if section.kind != SectionKind.TENSOR:
                    self.file.view(section.name).release()
        try:
            self.manifest = json.loads(self.file.read(MANIFEST_SECTION))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpikecError(f"{self.path}: section 'manifest' is not valid JSON: {exc}") from None
        if not isinstance(self.manifest, dict):
            raise SpikecError(f"{self.path}: section 'manifest' is not a JSON object")
        graphs = self.manifest.get("graphs")
        if not isinstance(graphs, dict) or not graphs:
            raise SpikecError(f"{self.path}: manifest has no 'graphs' table")
        for role, entry in graphs.items():
            check_name(role, where=f"{self.path}: manifest graph role")
            section = entry.get("file") if isinstance(entry, dict) else None
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
            raise SpikecError(f"{where} is not a valid ONNX model ({str(exc)[:200]})") from None
        # a tensor attribute or a subgraph initializer may not refer to anything outside itself
        spir.check_self_contained(proto, where=where, initializers=False)
        tensors: dict[str, ir.Tensor] = {}
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
            if entry is None or entry.kind != SectionKind.TENSOR:
                raise SpikecError(f"{tw}: external data '{section[:80]}' is not a TENSOR section of this file; "
                                  f"an embedded graph refers only to its own .sbin")
            if t.name in tensors:
                raise SpikecError(f"{tw}: initializer appears twice")
            dtype, shape, nbytes = spir.tensor_layout(t, where=tw)
            if entry.size != nbytes or info.get("length", str(nbytes)) != str(nbytes):
                raise SpikecError(f"{tw}: section '{section}' holds {entry.size} bytes; dims {list(t.dims)[:8]} of "
                                  f"{onnx.TensorProto.DataType.Name(t.data_type)} need {nbytes}")
            view = self.file.view(section)
            array = np.frombuffer(view, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
            tensors[t.name] = ir.Tensor(array, name=t.name)
        return proto, tensors

    def section_json(self, name: str) -> dict | None:
        if name not in self.file.sections:
            return None
        return json.loads(self.file.read(name))

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
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "xb") as f:  # exclusive: two sections may not name one file
                        f.write(self.file.read(name))
                except OSError as exc:
                    raise SpikecError(f"{where} '{name[:80]}' cannot be extracted: it collides with another "
                                      f"file section ({exc.strerror})") from None
        return Path(self._tmp.name)

    def close(self) -> None:
        self.file.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "SbinModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
