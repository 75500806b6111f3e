"""Packing a model folder into one .sbin file, and opening it again.

A model folder is what `spikec export` (and `spikec compile` on a folder) writes:
`manifest.json`, one ONNX graph per role (`graphs.<role>.file`, weights possibly
in external data), and the checkpoint's processor/tokenizer files. The .sbin holds:

    manifest            MANIFEST  the folder's manifest, graph files replaced by section names
    graph/<role>        ONNX      each graph, self-contained (external weights inlined)
    files/<relpath>     FILE      every file of the processor folder
    <extra sections>              e.g. the compile report, the accelerator program

Container format: docs/sbin.md (isa/container.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import onnx

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.isa.container import SbinFile, SectionKind, write_sbin

MANIFEST_SECTION = "manifest"
GRAPH_PREFIX = "graph/"
FILE_PREFIX = "files/"


def _graph_bytes(path: Path) -> bytes:
    """A graph file as self-contained ONNX bytes (its external weights inlined)."""
    model = spir.load_model(path)
    proto = spir.inline_external_tensors(spir.to_proto(model), model)
    if proto.ByteSize() >= 2**31:
        raise SpikecError(f"{path}: over 2 GiB once its weights are inlined; .sbin v1 stores graphs self-contained")
    return proto.SerializeToString(deterministic=True)


def pack_folder(folder: str | os.PathLike, out: str | os.PathLike,
                extra: Iterable[tuple[str, int, bytes]] = ()) -> Path:
    """Pack a model folder (manifest.json + graphs + processor files) into `out` (.sbin)."""
    from spikec.frontend.manifest import load_json

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    manifest = load_json(folder)
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise SpikecError(f"{manifest_path}: field 'graphs' must name at least one graph")
    sections: list[tuple[str, int, bytes]] = []
    packed_manifest = json.loads(json.dumps(manifest))
    for role in sorted(graphs):
        entry = graphs[role]
        if not isinstance(entry, dict) or "file" not in entry:
            raise SpikecError(f"{manifest_path}: graphs.{role} has no 'file'")
        sections.append((GRAPH_PREFIX + role, SectionKind.ONNX, _graph_bytes(folder / entry["file"])))
        packed_manifest["graphs"][role]["file"] = GRAPH_PREFIX + role
    processor = manifest.get("processor")
    if processor:
        proc_dir = folder / processor
        if not proc_dir.is_dir():
            raise SpikecError(f"{manifest_path}: processor folder '{processor}' not found")
        for f in sorted(p for p in proc_dir.rglob("*") if p.is_file()):
            sections.append((FILE_PREFIX + f.relative_to(proc_dir).as_posix(), SectionKind.FILE, f.read_bytes()))
    manifest_bytes = (json.dumps(packed_manifest, indent=2, sort_keys=True) + "\n").encode()
    return write_sbin(out, [(MANIFEST_SECTION, SectionKind.MANIFEST, manifest_bytes), *sections, *extra])


class SbinModel:
    """An opened .sbin: manifest, graphs by role, and the processor files on demand."""

    def __init__(self, path: str | os.PathLike, *, verify_all: bool = True) -> None:
        self.path = Path(path)
        self.file = SbinFile(self.path, verify_all=verify_all)
        try:
            self.manifest = json.loads(self.file.read(MANIFEST_SECTION))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpikecError(f"{self.path}: section 'manifest' is not valid JSON: {exc}") from None
        graphs = self.manifest.get("graphs")
        if not isinstance(graphs, dict):
            raise SpikecError(f"{self.path}: manifest has no 'graphs' table")
        for role, entry in graphs.items():
            section = entry.get("file") if isinstance(entry, dict) else None
            if section not in self.file.sections:
                raise SpikecError(f"{self.path}: manifest graph '{role}' names a missing section {section!r}")
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def roles(self) -> list[str]:
        return sorted(self.manifest["graphs"])

    def graph_bytes(self, role: str) -> bytes:
        if role not in self.manifest["graphs"]:
            raise SpikecError(f"{self.path}: no graph '{role}' (graphs: {', '.join(self.roles)})")
        return self.file.read(self.manifest["graphs"][role]["file"])

    def graph(self, role: str) -> onnx.ModelProto:
        try:
            return onnx.load_from_string(self.graph_bytes(role))
        except Exception as exc:  # protobuf raises several types for bad bytes
            raise SpikecError(f"{self.path}: graph '{role}' is not a valid ONNX model ({exc})") from None

    def section_json(self, name: str) -> dict | None:
        if name not in self.file.sections:
            return None
        return json.loads(self.file.read(name))

    def folder(self) -> Path:
        """A temporary folder laid out like the source model folder (manifest.json +
        processor files), for code that loads processors from disk. Removed on close()."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="spikec-sbin-")
            root = Path(self._tmp.name)
            (root / "manifest.json").write_text(json.dumps(self.manifest, indent=2))
            proc = root / (self.manifest.get("processor") or "processor")
            for name in self.file.names(SectionKind.FILE):
                rel = name[len(FILE_PREFIX):]
                target = (proc / rel).resolve()
                if not target.is_relative_to(proc.resolve()):
                    raise SpikecError(f"{self.path}: file section '{name}' escapes the processor folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.file.read(name))
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
