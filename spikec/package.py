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
from spikec.paths import check_name, files_inside, resolve_inside
from spikec.isa.container import SbinFile, SectionKind, write_sbin

MANIFEST_SECTION = "manifest"
GRAPH_PREFIX = "graph/"
FILE_PREFIX = "files/"
# Where the processor files of a .sbin are extracted, inside a private temporary folder:
# a fixed name, never the manifest's own `processor` field.
PROCESSOR_DIR = "processor"


def _graph_bytes(path: Path) -> bytes:
    """A graph file as self-contained ONNX bytes (its external weights inlined)."""
    model = spir.load_model(path)
    proto = spir.inline_external_tensors(spir.to_proto(model), model)
    if proto.ByteSize() >= 2**31:
        raise SpikecError(f"{path}: over 2 GiB once its weights are inlined; .sbin v1 stores graphs self-contained")
    return proto.SerializeToString(deterministic=True)


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
        sections.append((GRAPH_PREFIX + role, SectionKind.ONNX, _graph_bytes(mf.graph_path(folder, manifest, role))))
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
        self.path = Path(path)
        self.file = SbinFile(self.path, verify_all=verify_all)
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
        """Graph `role` as a ModelProto, refused unless self-contained: a .sbin is one file,
        so an external-data reference could only point outside it."""
        try:
            proto = onnx.load_from_string(self.graph_bytes(role))
        except Exception as exc:  # protobuf raises several types for bad bytes
            raise SpikecError(f"{self.path}: graph '{role}' is not a valid ONNX model ({exc})") from None
        spir.check_self_contained(proto, where=f"{self.path}: graph '{role}'")
        return proto

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
