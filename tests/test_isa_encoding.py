"""The instruction set's encoding: one field table, round trips, canonical decoding,
assembler/disassembler, the generated doc tables, and the hardware configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikec.errors import SpikecError
from spikec.isa import fields as F
from spikec.isa.asm import assemble, assemble_program, disassemble_program, format_instruction
from spikec.isa.encoding import Instruction, decode, decode_program, encode, encode_program, vec_dst_overlap
from spikec.isa.hwconfig import HwConfig, builtin_names

DOC = Path(__file__).resolve().parent.parent / "docs" / "isa.md"


@st.composite
def instructions(draw, op=None):
    """Any legal instruction: every format, every field over its whole range."""
    op = draw(st.sampled_from(list(F.Opcode))) if op is None else op
    fmt = F.FORMATS[op]
    v = {}
    for f in fmt.fields:
        v[f.name] = draw(st.sampled_from([int(m) for m in f.enum]) if f.enum else st.integers(f.min, f.max))
    for dep in fmt.deps:
        v[dep] = draw(st.integers(0, 1))
    # The cross-field rules of encoding.check.
    if op == F.Opcode.LOAD and v["wfifo"]:
        v.update(buf=int(F.Buffer.WGT), sram=0, push_next=0)
    if op == F.Opcode.SPMM:
        if v["wsrc"] == F.WeightSource.FIFO:
            v["wgt"] = 0
        v["acc_stride"] = max(v["acc_stride"], v["m"])
        if v["neuron"] == F.Neuron.IF:
            v["t"] = min(v["t"], 7)
    if op == F.Opcode.ENCODE and v["dst_buf"] == F.EncodeDst.WGT:
        v["t"] = min(v["t"], 7)
    if op == F.Opcode.VEC:
        _, s1, s2, flags = F.VEC_OPERANDS[F.VecFunc(v["func"])]
        v["flags"] &= flags
        v["src1"] = v["src1"] if s1 else 0
        v["src2"] = v["src2"] if s2 else 0
        if v["func"] == F.VecFunc.ROPE:
            v["len"] = max(2, v["len"] - v["len"] % 2)
        # No partial overlap of dst and a source: first try in place, else small disjoint regions.
        if vec_dst_overlap(Instruction(op, **v)):
            v["dst"] = v["src0"]
        if vec_dst_overlap(Instruction(op, **v)):
            v.update(n=1, len=min(v["len"], 64), dst=0, src0=0)
            v["src1"], v["src2"] = (128 if s1 else 0), (256 if s2 else 0)
    return Instruction(op, **v)


@settings(max_examples=300, deadline=None)
@given(instructions())
def test_encode_decode_round_trip(ins):
    b = encode(ins)
    assert len(b) == 16
    assert decode(b) == ins
    assert encode(decode(b)) == b


@settings(max_examples=100, deadline=None)
@given(st.lists(instructions(), max_size=6))
def test_disassemble_reassembles_to_identical_bytes(prog):
    data = encode_program(prog)
    text = disassemble_program(data)
    assert assemble_program(text) == data
    assert assemble(text) == prog


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80))
def test_random_bytes_decode_or_clear_error(data):
    """Never a crash: a SpikecError, or instructions that re-encode to the same bytes."""
    try:
        prog = decode_program(data, require_finish=False)
    except SpikecError as e:
        assert str(e)
        return
    assert encode_program(prog) == data


@settings(max_examples=200, deadline=None)
@given(instructions(), st.integers(0, 127))
def test_bit_flip_is_caught_or_canonical(ins, bit):
    word = bytearray(encode(ins))
    word[bit // 8] ^= 1 << (bit % 8)
    try:
        other = decode(bytes(word))
    except SpikecError as e:
        assert "instruction 0" in str(e)
        return
    assert other != ins and encode(other) == bytes(word)


def test_layout_fits_and_fields_are_unique():
    for fmt in F.FORMATS.values():
        names = [f.name for f, _ in fmt.layout()]
        assert len(names) == len(set(names)), fmt.mnemonic
        assert fmt.used_bits <= F.WORD_BITS
        assert set(fmt.deps) <= set(F.DEP_FIELDS)
    assert {int(op) for op in F.Opcode} == set(range(6))


def test_doc_field_tables_match_the_table():
    text = DOC.read_text(encoding="utf-8")
    block = text.split(F.BEGIN_MARK, 1)[1].split(F.END_MARK, 1)[0]
    assert block.strip() == F.markdown_tables().strip(), "run: python -m spikec.isa.fields docs/isa.md"


_LOAD = int.from_bytes(encode(Instruction(F.Opcode.LOAD, rows=1, cols=1)), "little")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00" * 15, "not a multiple of 16"),
        (bytes([7]) + b"\x00" * 15, "illegal opcode 7"),
        (b"", "empty program"),
        (encode(Instruction(F.Opcode.FINISH)) * 2, "exactly one FINISH"),
        (encode(Instruction(F.Opcode.LOAD, rows=1, cols=1)), "exactly one FINISH"),
        ((F.Opcode.FINISH | 1 << 127).to_bytes(16, "little"), "reserved bits"),
        ((_LOAD | 1 << 3).to_bytes(16, "little"), "no 'pop_prev' queue"),
    ],
)
def test_decode_errors_name_the_problem(data, message):
    with pytest.raises(SpikecError, match=message):
        decode_program(data)


def test_zero_counts_and_cross_field_rules_are_rejected():
    with pytest.raises(SpikecError, match="'rows' = 0"):
        decode(bytes(16))  # LOAD with rows = 0
    with pytest.raises(SpikecError, match="acc_stride"):
        encode(Instruction(F.Opcode.SPMM, m=8, acc_stride=4))
    with pytest.raises(SpikecError, match="rate-IF"):
        encode(Instruction(F.Opcode.SPMM, neuron=F.Neuron.IF, t=8))
    with pytest.raises(SpikecError, match="unused"):
        encode(Instruction(F.Opcode.VEC, func=F.VecFunc.SILU, src1=3))
    with pytest.raises(SpikecError, match="out of range"):
        Instruction(F.Opcode.SPMM, t=16)
    with pytest.raises(SpikecError, match="unknown field"):
        Instruction(F.Opcode.FINISH, n=1)


@pytest.mark.parametrize(
    "line, message",
    [
        ("FROB x=1", "unknown mnemonic"),
        ("LOAD buf=XYZ", "needs an integer or one of"),
        ("LOAD rows", "expected field=value"),
        ("LOAD wibble=3", "has no field 'wibble'"),
        ("LOAD rows=1 rows=2", "given twice"),
        ("LOAD deps=pop_prev", "no 'pop_prev' queue"),
        ("SPMM t=99", "out of range"),
        ("STORE deps=push_sideways", "unknown dependency"),
    ],
)
def test_assembler_errors_name_the_line(line, message):
    with pytest.raises(SpikecError, match=message) as e:
        assemble("# header\n" + line, "prog.s")
    assert "prog.s:2" in str(e.value)


def test_assembler_syntax():
    a = assemble("load BUF=wgt dram=0x10 rows=2 cols=0b11 deps=push_next ; comment\n\nFINISH # end")
    assert a == [Instruction(F.Opcode.LOAD, buf=F.Buffer.WGT, dram=16, rows=2, cols=3, push_next=1), Instruction(F.Opcode.FINISH)]
    assert format_instruction(a[0]).startswith("LOAD buf=WGT sram=0 dram=0x10 ")


# ---------------------------------------------------------------- hardware configuration


def test_builtin_configs_load_and_round_trip():
    assert {"default", "small"} <= set(builtin_names())
    cfg = HwConfig.load("default")
    assert (cfg.pe_rows, cfg.pe_cols, cfg.clock_mhz) == (16, 16, 200.0)
    assert cfg.buffer_elems(F.Buffer.ACC) == 128 * 1024 // 4
    assert cfg.dram_bytes_per_cycle == 64.0
    assert HwConfig.from_json(cfg.to_json()) == cfg
    assert HwConfig.load("small").pe_rows == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"pe_rows": 0}, "'pe_rows'"),
        ({"pe_cols": 2.5}, "'pe_cols'.*integer"),
        ({"vec_lanes": True}, "'vec_lanes'"),
        ({"clock_mhz": "fast"}, "'clock_mhz'"),
        ({"acc_kib": 4096}, "'acc_kib'.*18-bit ACC addresses"),
        ({"dram_mib": 8192}, "'dram_mib'"),
        ({"name": ""}, "'name'"),
        ({"bogus": 1}, "unknown field.*bogus"),
    ],
)
def test_bad_config_names_the_field(tmp_path, change, message):
    d = HwConfig.load("default").to_dict() | change
    p = tmp_path / "hw.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SpikecError, match=message) as e:
        HwConfig.load(p)
    assert str(p) in str(e.value)


def test_config_missing_field_and_bad_json(tmp_path):
    d = HwConfig.load("small").to_dict()
    del d["token_queue_depth"]
    with pytest.raises(SpikecError, match="missing field.*token_queue_depth"):
        HwConfig.from_dict(d)
    p = tmp_path / "bad.json"
    p.write_text("{nope")
    with pytest.raises(SpikecError, match="not valid JSON"):
        HwConfig.load(p)
    with pytest.raises(SpikecError, match="unknown hardware configuration 'huge'"):
        HwConfig.load("huge")
