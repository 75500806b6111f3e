"""The .sbin container: one file holding everything a compiled model needs.

Layout (all integers little-endian; docs/sbin.md is the normative description):

    offset 0      header, 64 bytes
    table_offset  section table: section_count entries of 48 bytes,
                  then the name table (UTF-8 names, back to back)
    ...           section payloads, each starting at a multiple of ALIGN (4096)
                  so a reader can memory-map weights and graphs in place

Header:  magic(8) version_major(u16) version_minor(u16) flags(u32)
         section_count(u32) table_offset(u64) table_size(u64) file_size(u64)
         table_crc32(u32) header_crc32(u32) reserved(12)
Entry:   name_offset(u32) name_size(u32) kind(u32) flags(u32)
         offset(u64) size(u64) crc32(u32) reserved(u32) reserved(u64)

The reader validates in an order that never trusts a number before it is checked:
file size, magic, version, header CRC, the header's reserved bytes (zero),
table bounds, table CRC, then every section's bounds, alignment and overlap -- all before any payload is touched.
Payloads are memory-mapped (no copy, no allocation proportional to a declared
size) and their CRC32 is checked on first access (or all at once with
`verify_all`). Writing is deterministic (no timestamps, sections in the order
given) and atomic.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from spikec import atomic
from spikec.errors import SpikecError

MAGIC = b"\x89SBIN\r\n\x1a"  # non-ASCII first byte and CR/LF catch text-mode mangling, as PNG's does
# 2.0: graphs may keep their weights in TENSOR sections (docs/sbin.md, "Weights"), which a
# 1.x reader would not resolve. 1.x files (self-contained graphs) are still read.
# 2.1: W4 weights may be TENSOR_INT4 sections (4-bit codes two per byte), which a 2.0 reader
# refuses by name ("not a TENSOR section") rather than misreads.
VERSION_MAJOR = 2
VERSION_MINOR = 1
READABLE_MAJORS = (1, 2)
ALIGN = 4096
HEADER = struct.Struct("<8sHHIIQQQII12x")
ENTRY = struct.Struct("<IIIIQQIIQ")
MAX_SECTIONS = 65536
MAX_NAME = 1024

assert HEADER.size == 64 and ENTRY.size == 48
HEADER_RESERVED = slice(52, 64)  # the header's reserved bytes: zero, refused otherwise (not under header_crc32)


# The accelerator's sections of a .sbin (`spikec compile --isa`), each name written once here.
ISA_HWCONFIG = "isa/hwconfig"  # HWCONFIG: the hardware configuration the program was built for
ISA_WEIGHTS = "isa/weights"  # WEIGHTS: every kernel's packed weights, one DRAM image
ISA_KERNELS = "isa/kernels"  # JSON: the kernel descriptors (isa/descriptors.py)
ISA_PROGRAM = "isa/program"  # PROGRAM: a representative instruction stream (for `spikec disasm`)
ISA_SECTIONS = (ISA_HWCONFIG, ISA_WEIGHTS, ISA_KERNELS, ISA_PROGRAM)


class SectionKind(enum.IntEnum):
    """What a section holds. Readers ignore kinds they do not know (minor versions may add some)."""

    RAW = 0
    MANIFEST = 1  # JSON: graph roles, modalities, T assignment, quantization, file list
    ONNX = 2  # a serialized ONNX ModelProto
    FILE = 3  # an opaque file of the checkpoint (tokenizer, processor config, ...)
    JSON = 4  # other JSON (compile report, MED, MSTS search)
    PROGRAM = 5  # accelerator instruction stream
    WEIGHTS = 6  # packed accelerator weights
    HWCONFIG = 7  # accelerator hardware configuration
    TENSOR = 8  # one weight of a graph: raw little-endian bytes, named by the graph's initializer
    TENSOR_INT4 = 9  # one int8 [K, N] weight of 4-bit codes, packed two per byte (spikec/int4.py)


# The kinds that hold a graph's weights: checked on first use, not when the file is opened.
WEIGHT_KINDS = (SectionKind.TENSOR, SectionKind.TENSOR_INT4)


@dataclass(frozen=True)
class Section:
    name: str
    kind: SectionKind | int
    offset: int
    size: int
    crc32: int


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class StreamedPayload:
    """A payload produced while the file is written, `size` bytes in the pieces `chunks()`
    yields: a section that would not fit in memory whole (a packed weight of a 7B model)."""

    size: int
    chunks: Callable[[], Iterable[bytes | bytearray | memoryview]]


Payload = bytes | bytearray | memoryview | StreamedPayload


def write_sbin(path: str | os.PathLike, sections: Iterable[tuple[str, int, Payload]]) -> Path:
    """Write sections (name, kind, payload) to `path`, atomically and deterministically.

    Payloads are written first and the table (with each payload's CRC) last, so a
    StreamedPayload is produced once, chunk by chunk; SpikecError if it yields another
    number of bytes than its `size`."""
    items = [(name, int(kind), data if isinstance(data, StreamedPayload) else memoryview(data).cast("B"))
             for name, kind, data in sections]
    names = [n for n, _, _ in items]
    if len(set(names)) != len(names):
        raise SpikecError(f"{path}: duplicate section names in {names}")
    if len(items) > MAX_SECTIONS:
        raise SpikecError(f"{path}: {len(items)} sections exceed the format's limit of {MAX_SECTIONS}")
    name_blob = b""
    name_refs = []
    for n in names:
        encoded = n.encode("utf-8")
        if not encoded or len(encoded) > MAX_NAME:
            raise SpikecError(f"{path}: section name '{n}' must be 1..{MAX_NAME} bytes")
        name_refs.append((len(name_blob), len(encoded)))
        name_blob += encoded
    table_offset = HEADER.size
    table_size = ENTRY.size * len(items) + len(name_blob)
    cursor = _align(table_offset + table_size)
    layout = []
    for _, _, data in items:
        layout.append(cursor)
        cursor = _align(cursor + _size(data))
    file_size = cursor
    final = Path(path)
    with atomic.atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"\0" * _align(table_offset + table_size))  # header and table, written last
            crcs = []
            for offset, (name, _, data) in zip(layout, items):
                f.write(b"\0" * (offset - f.tell()))
                crcs.append(_write_payload(f, data, f"{path}: section '{name}'"))
            f.write(b"\0" * (file_size - f.tell()))
            entries = [ENTRY.pack(name_off, name_len, kind, 0, offset, _size(data), crc, 0, 0)
                       for (name_off, name_len), (_, kind, data), offset, crc in zip(name_refs, items, layout, crcs)]
            table = b"".join(entries) + name_blob
            f.seek(0)
            f.write(_pack_header(len(items), table_offset, table_size, file_size, zlib.crc32(table)))
            f.write(table)
    return final


def _size(data: "memoryview | StreamedPayload") -> int:
    return data.size if isinstance(data, StreamedPayload) else len(data)


def _write_payload(f, data: "memoryview | StreamedPayload", where: str) -> int:
    """Write one payload; its CRC-32."""
    if not isinstance(data, StreamedPayload):
        f.write(data)
        return zlib.crc32(data)
    crc, written = 0, 0
    for chunk in data.chunks():
        chunk = memoryview(chunk).cast("B")
        f.write(chunk)
        crc, written = zlib.crc32(chunk, crc), written + len(chunk)
    if written != data.size:
        raise SpikecError(f"{where}: produced {written} bytes, declared {data.size}")
    return crc


def _pack_header(count: int, table_offset: int, table_size: int, file_size: int, table_crc: int) -> bytes:
    fields = (MAGIC, VERSION_MAJOR, VERSION_MINOR, 0, count, table_offset, table_size, file_size, table_crc)
    unsigned = HEADER.pack(*fields, 0)
    return HEADER.pack(*fields, zlib.crc32(unsigned))


# ---------------------------------------------------------------- reading


class SbinFile:
    """A validated, memory-mapped .sbin file. Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike, *, verify_all: bool = False) -> None:
        self.path = Path(path)
        self._mm: mmap.mmap | None = None
        self._verified: set[str] = set()
        self.sections: dict[str, Section] = {}
        self._open()
        if verify_all:
            for name in self.sections:
                self.read(name)

    def _fail(self, msg: str) -> SpikecError:
        return SpikecError(f"{self.path}: {msg}")

    def _open(self) -> None:
        p = self.path
        if not p.exists():
            raise self._fail("no such file")
        if not p.is_file():
            raise self._fail("not a file")
        size = p.stat().st_size
        if size < HEADER.size:
            raise self._fail(f"{size} bytes is too short for a .sbin header ({HEADER.size} bytes); truncated?")
        with open(p, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        magic, major, minor, flags, count, table_offset, table_size, file_size, table_crc, header_crc = HEADER.unpack_from(mm, 0)
        if magic != MAGIC:
            raise self._fail("not a .sbin file (bad magic)")
        if major not in READABLE_MAJORS:
            raise self._fail(f"unsupported .sbin version {major}.{minor} (this spikec reads "
                             f"{', '.join(f'{m}.x' for m in READABLE_MAJORS)}); recompile the model with this spikec")
        self.version = (major, minor)
        check = HEADER.pack(magic, major, minor, flags, count, table_offset, table_size, file_size, table_crc, 0)
        if zlib.crc32(check) != header_crc:
            raise self._fail("header checksum mismatch (corrupt header)")
        # header_crc32 is computed with the reserved bytes as zero (HEADER packs them as
        # padding), so it does not cover them: checked here, or any value would pass
        if any(mm[HEADER_RESERVED]):
            raise self._fail(f"header field 'reserved' (bytes {HEADER_RESERVED.start}-{HEADER_RESERVED.stop - 1}) "
                             f"must be zero, got {bytes(mm[HEADER_RESERVED]).hex()}")
        if file_size != size:
            raise self._fail(f"header says {file_size} bytes but the file has {size}; truncated or padded")
        if count > MAX_SECTIONS:
            raise self._fail(f"section count {count} exceeds the limit {MAX_SECTIONS}")
        if table_size < count * ENTRY.size or table_offset < HEADER.size or table_offset + table_size > size:
            raise self._fail(f"section table [{table_offset}, {table_offset + table_size}) lies outside the file ({size} bytes)")
        table = mm[table_offset : table_offset + table_size]
        if zlib.crc32(table) != table_crc:
            raise self._fail("section table checksum mismatch (corrupt table)")
        names_base = count * ENTRY.size
        spans = []
        for i in range(count):
            name_off, name_len, kind, _flags, offset, length, crc, _r0, _r1 = ENTRY.unpack_from(table, i * ENTRY.size)
            if name_len == 0 or name_len > MAX_NAME or names_base + name_off + name_len > table_size:
                raise self._fail(f"section {i}: name lies outside the section table")
            try:
                name = table[names_base + name_off : names_base + name_off + name_len].decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail(f"section {i}: name is not UTF-8") from None
            if name in self.sections:
                raise self._fail(f"section '{name}' appears twice")
            if offset % ALIGN:
                raise self._fail(f"section '{name}': offset {offset} is not aligned to {ALIGN}")
            if offset < table_offset + table_size or offset + length > size:
                raise self._fail(f"section '{name}': [{offset}, {offset + length}) lies outside the file ({size} bytes)")
            if kind == SectionKind.TENSOR_INT4 and (major, minor) < (2, 1):
                raise self._fail(f"section '{name}': kind TENSOR_INT4 appeared in .sbin 2.1; the header says "
                                 f"{major}.{minor}")
            spans.append((offset, offset + length, name))
            self.sections[name] = Section(name, _kind(kind), offset, length, crc)
        spans.sort()
        for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise self._fail(f"sections '{n0}' and '{n1}' overlap")

    def view(self, name: str) -> memoryview:
        """The payload of a section as a zero-copy view, its checksum verified on first access."""
        section = self.sections.get(name)
        if section is None:
            raise self._fail(f"no section '{name}' (sections: {', '.join(self.sections) or 'none'})")
        assert self._mm is not None
        data = memoryview(self._mm)[section.offset : section.offset + section.size]
        if name not in self._verified:
            if zlib.crc32(data) != section.crc32:
                data.release()
                raise self._fail(f"section '{name}': checksum mismatch (corrupt data)")
            self._verified.add(name)
        return data

    def read(self, name: str) -> bytes:
        """The payload of a section as bytes (a copy)."""
        with self.view(name) as v:
            return bytes(v)

    def names(self, kind: SectionKind | None = None) -> list[str]:
        return [s.name for s in self.sections.values() if kind is None or s.kind == kind]

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # a caller still holds a view; the map closes when it is released
            self._mm = None

    def __enter__(self) -> "SbinFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kind(value: int) -> SectionKind | int:
    try:
        return SectionKind(value)
    except ValueError:
        return value  # unknown kinds of a newer minor version are kept, not rejected


def is_sbin(path: str | os.PathLike) -> bool:
    """Whether the file starts with the .sbin magic (cheap sniffing for `inspect`)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
