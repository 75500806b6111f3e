"""The .sbin container: round trip, determinism, and every corruption a clear error."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikec.errors import SpikecError
from spikec.isa.container import ALIGN, ENTRY, HEADER, SbinFile, SectionKind, write_sbin

SECTIONS = [
    ("manifest", SectionKind.MANIFEST, b'{"format": "test"}'),
    ("graph/language_model", SectionKind.ONNX, bytes(range(256)) * 40),
    ("files/tokenizer.json", SectionKind.FILE, b"{}"),
    ("empty", SectionKind.RAW, b""),
]


@pytest.fixture
def sbin(tmp_path):
    return write_sbin(tmp_path / "m.sbin", SECTIONS)


def _repack(path, *, header=None, entry=None, index=0):
    """Rewrite header fields / one entry's fields with valid checksums, to test the checks behind them."""
    data = bytearray(path.read_bytes())
    h = list(HEADER.unpack_from(data, 0))
    count, table_offset, table_size = h[4], h[5], h[6]
    if entry:
        e = list(ENTRY.unpack_from(data, table_offset + index * ENTRY.size))
        for k, v in entry.items():
            e[k] = v
        ENTRY.pack_into(data, table_offset + index * ENTRY.size, *e)
    h[8] = zlib.crc32(bytes(data[table_offset : table_offset + table_size]))
    for k, v in (header or {}).items():
        h[k] = v
    h[9] = 0
    h[9] = zlib.crc32(HEADER.pack(*h))
    HEADER.pack_into(data, 0, *h)
    path.write_bytes(bytes(data))


def test_round_trip_alignment_and_determinism(tmp_path, sbin):
    with SbinFile(sbin, verify_all=True) as f:
        assert f.names() == [n for n, _, _ in SECTIONS]
        for name, kind, payload in SECTIONS:
            assert f.read(name) == payload
            assert f.sections[name].kind == kind
            assert f.sections[name].offset % ALIGN == 0
        assert f.names(SectionKind.ONNX) == ["graph/language_model"]
    again = write_sbin(tmp_path / "again.sbin", SECTIONS)
    assert again.read_bytes() == sbin.read_bytes()


def test_flipped_payload_byte(sbin):
    with SbinFile(sbin) as f:
        offset = f.sections["graph/language_model"].offset
    data = bytearray(sbin.read_bytes())
    data[offset + 100] ^= 0x01
    sbin.write_bytes(bytes(data))
    with SbinFile(sbin) as f:
        assert f.read("manifest") == SECTIONS[0][2]  # other sections stay readable
        with pytest.raises(SpikecError, match="section 'graph/language_model': checksum mismatch"):
            f.read("graph/language_model")
    with pytest.raises(SpikecError, match="checksum mismatch"):
        SbinFile(sbin, verify_all=True)


@pytest.mark.parametrize("where, message", [(3, "bad magic"), (20, "header checksum"), (HEADER.size + 5, "table checksum")])
def test_flipped_header_or_table_byte(sbin, where, message):
    data = bytearray(sbin.read_bytes())
    data[where] ^= 0x40
    sbin.write_bytes(bytes(data))
    with pytest.raises(SpikecError, match=message):
        SbinFile(sbin)


@pytest.mark.parametrize("keep", [0, 10, HEADER.size, HEADER.size + 30, ALIGN + 5, -1])
def test_truncation(sbin, keep):
    data = sbin.read_bytes()
    sbin.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(SpikecError, match="m.sbin"):
        SbinFile(sbin, verify_all=True)


def test_unknown_version(sbin):
    _repack(sbin, header={1: 3})
    with pytest.raises(SpikecError, match=r"unsupported .sbin version 3\.\d"):
        SbinFile(sbin)


def test_table_pointing_past_end(sbin):
    size = sbin.stat().st_size
    _repack(sbin, entry={4: size + ALIGN}, index=1)
    with pytest.raises(SpikecError, match="section 'graph/language_model'.*lies outside the file"):
        SbinFile(sbin)


def test_huge_declared_size_is_rejected_without_allocating(sbin):
    _repack(sbin, entry={5: 2**60}, index=1)
    with pytest.raises(SpikecError, match="lies outside the file"):
        SbinFile(sbin)
    _repack(sbin, header={4: 2**31, 6: 2**60})
    with pytest.raises(SpikecError, match="section count|outside the file"):
        SbinFile(sbin)


def test_overlapping_and_misaligned_sections(sbin):
    with SbinFile(sbin) as f:
        first = f.sections["manifest"].offset
    _repack(sbin, entry={4: first}, index=1)
    with pytest.raises(SpikecError, match="overlap"):
        SbinFile(sbin)
    _repack(sbin, entry={4: first + 8}, index=1)
    with pytest.raises(SpikecError, match="not aligned"):
        SbinFile(sbin)


def test_not_sbin_and_missing(tmp_path):
    junk = tmp_path / "junk.sbin"
    junk.write_bytes(b"x" * 200)
    with pytest.raises(SpikecError, match="bad magic"):
        SbinFile(junk)
    with pytest.raises(SpikecError, match="no such file"):
        SbinFile(tmp_path / "none.sbin")


def test_duplicate_section_names_refused(tmp_path):
    with pytest.raises(SpikecError, match="duplicate section"):
        write_sbin(tmp_path / "d.sbin", [("a", 0, b"1"), ("a", 0, b"2")])
    assert not (tmp_path / "d.sbin").exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 2 * ALIGN + 200), st.integers(0, 255)), min_size=1, max_size=4))
def test_random_mutations_never_crash(tmp_path_factory, mutations):
    path = write_sbin(tmp_path_factory.mktemp("fuzz") / "m.sbin", SECTIONS)
    data = bytearray(path.read_bytes())
    for where, value in mutations:
        if where < len(data):
            data[where] = value
    path.write_bytes(bytes(data))
    try:
        with SbinFile(path, verify_all=True) as f:
            for name in f.names():
                f.read(name)
    except SpikecError:
        pass  # a clear error is the expected outcome; anything else fails the test
