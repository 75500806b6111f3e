"""Encode and decode instructions: bytes <-> Instruction, generated from isa/fields.py.

Nothing here restates a width or an offset: `Format.layout()` is the only place bits are
assigned. Decoding checks everything that does not depend on the hardware configuration
(opcode, enum values, counts >= 1, reserved bits zero, the dependency bits a module may
use, and the per-opcode rules of `check`), so random or corrupted bytes end in one
SpikecError naming the instruction and field. Buffer and DRAM bounds depend on the
configuration and are checked when a device loads the program.
"""

from __future__ import annotations

from typing import Iterable

from spikec.errors import SpikecError
from spikec.isa.fields import (
    FORMATS,
    VEC_OPERANDS,
    WORD_BYTES,
    Buffer,
    EncodeDst,
    Format,
    Neuron,
    Opcode,
    VecFunc,
    WeightSource,
)

# Precomputed from the table: (field, lsb) per opcode, and field name -> value index.
LAYOUT = {op: fmt.layout() for op, fmt in FORMATS.items()}
_INDEX = {op: {f.name: i for i, (f, _) in enumerate(lay[1:])} for op, lay in LAYOUT.items()}

MAX_IF_T = 7  # rate IF runs 2**(t+1) - 1 planes: 255 at t = 7 is the longest the ISA allows
MAX_WGT_CODE_T = 7  # ENCODE into WGT writes int8 codes: |q| <= 127


class Instruction:
    """One decoded instruction: an opcode and its field values (header bits included).

    Immutable and hashable; fields are attributes (`ins.n`, `ins.pop_prev`). Build one with
    `Instruction(Opcode.SPMM, n=4, k=64, ...)`: omitted fields take their minimum (0 for
    addresses and flags, 1 for counts)."""

    __slots__ = ("op", "values")

    def __init__(self, op: Opcode | int, **values: int) -> None:
        try:
            op = Opcode(op)
        except ValueError:
            raise SpikecError(f"unknown opcode {op}") from None
        names = list(_INDEX[op])
        unknown = set(values) - set(names)
        if unknown:
            raise SpikecError(f"{op.name}: unknown field(s) {', '.join(sorted(unknown))} (fields: {', '.join(names)})")
        vals = []
        for f, _ in LAYOUT[op][1:]:
            v = values.get(f.name, f.min)
            if isinstance(v, bool) or not isinstance(v, int):
                try:
                    v = int(v)  # enum members, numpy integers
                except (TypeError, ValueError):
                    raise SpikecError(f"{op.name}: field '{f.name}' must be an integer, got {v!r}") from None
            if not f.legal(int(v)):
                raise SpikecError(f"{op.name}: field '{f.name}' = {v} out of range ({_legal(f)})")
            vals.append(int(v))
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "values", tuple(vals))

    @property
    def format(self) -> Format:
        return FORMATS[self.op]

    def fields(self) -> dict[str, int]:
        return dict(zip(_INDEX[self.op], self.values))

    def replace(self, **changes: int) -> "Instruction":
        return Instruction(self.op, **{**self.fields(), **changes})

    def __getattr__(self, name: str) -> int:
        if name.startswith("__"):
            raise AttributeError(name)
        i = _INDEX[self.op].get(name)
        if i is not None:
            return self.values[i]
        raise AttributeError(f"{self.op.name} has no field '{name}'")

    def __setattr__(self, name, value):
        raise AttributeError("Instruction is immutable; use replace()")

    def __eq__(self, other) -> bool:
        return isinstance(other, Instruction) and (self.op, self.values) == (other.op, other.values)

    def __hash__(self) -> int:
        return hash((self.op, self.values))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.fields().items() if v)
        return f"Instruction({self.op.name}{', ' if args else ''}{args})"


def _legal(f) -> str:
    if f.enum is not None:
        return "one of " + ", ".join(f"{m.name}={int(m)}" for m in f.enum)
    return f"{f.min}..{f.max}"


def check(ins: Instruction) -> None:
    """The configuration-independent rules of docs/isa.md beyond single-field ranges."""
    op, fmt = ins.op, ins.format
    where = op.name
    for dep in ("pop_prev", "pop_next", "push_prev", "push_next"):
        if getattr(ins, dep) and dep not in fmt.deps:
            raise SpikecError(f"{where}: the {fmt.module.name.lower()} module has no '{dep}' queue")
    if op == Opcode.LOAD and ins.wfifo:
        # The weight FIFO has no addresses, and a LOAD into it ends when its SPMM has taken
        # all but a FIFO's worth of its bytes, so a token pushed at its end could only be
        # waited for by instructions after that SPMM (section 3, "The weight FIFO").
        bad = [f"{name} = {getattr(ins, name)}" for name, ok in (("buf", ins.buf == Buffer.WGT), ("sram", ins.sram == 0),
                                                                   ("push_next", ins.push_next == 0)) if not ok]
        if bad:
            raise SpikecError(f"{where} to the weight FIFO needs buf WGT, sram 0 and no push; got {', '.join(bad)}")
    if op == Opcode.SPMM:
        if ins.wsrc == WeightSource.FIFO and ins.wgt:
            raise SpikecError(f"{where}: weights from the FIFO (wsrc FIFO) need wgt = 0, got {ins.wgt}")
        if ins.acc_stride < ins.m:
            raise SpikecError(f"{where}: acc_stride {ins.acc_stride} < m {ins.m}: output rows would overlap")
        if ins.neuron == Neuron.IF and ins.t > MAX_IF_T:
            raise SpikecError(f"{where}: rate-IF needs 2**(t+1) - 1 planes; t = {ins.t} > {MAX_IF_T}")
    elif op == Opcode.ENCODE:
        if ins.dst_buf == EncodeDst.WGT and ins.t > MAX_WGT_CODE_T:
            raise SpikecError(f"{where}: int8 codes in WGT need t <= {MAX_WGT_CODE_T}, got t = {ins.t}")
    elif op == Opcode.VEC:
        func = VecFunc(ins.func)
        _, s1, s2, flags = VEC_OPERANDS[func]
        if ins.flags & ~flags:
            raise SpikecError(f"{where} {func.name}: flags {ins.flags:#x} not allowed (allowed {flags:#x})")
        for name, role in (("src1", s1), ("src2", s2)):
            if role is None and getattr(ins, name):
                raise SpikecError(f"{where} {func.name}: '{name}' is unused and must be 0")
        if func == VecFunc.ROPE and ins.len % 2:
            raise SpikecError(f"{where} ROPE: len {ins.len} must be even (rotate-half pairs)")
        src = vec_dst_overlap(ins)
        if src:
            raise SpikecError(f"{where} {func.name}: dst [{ins.dst}, {ins.dst + ins.n * ins.len}) overlaps {src} "
                              f"other than exactly in place (a streaming vector unit writes while it reads)")


def vec_dst_overlap(ins: Instruction) -> str | None:
    """For a VEC instruction whose destination overlaps a VEC source other than exactly in
    place (dst == src0, or dst == src1 for ADD/MUL), which source; else None. Exactly in
    place is fine (each element is read before it is written), partial overlap is not
    (docs/isa.md section 3): the vector unit streams rows, so it would read results."""
    if ins.op != Opcode.VEC:
        return None
    func, n, L = VecFunc(ins.func), ins.n, ins.len
    d0, d1 = ins.dst, ins.dst + n * L
    srcs = []
    if func != VecFunc.DEQ:
        srcs.append(("src0", ins.src0, n * L, ins.dst == ins.src0))
    size1 = {VecFunc.ADD: n * L, VecFunc.MUL: n * L, VecFunc.ADD_ROW: L, VecFunc.MUL_ROW: L, VecFunc.RMSNORM: L,
             VecFunc.LAYERNORM: 2 * L, VecFunc.ROPE: n * (L // 2)}.get(func)
    if size1:
        srcs.append(("src1", ins.src1, size1, func in (VecFunc.ADD, VecFunc.MUL) and ins.dst == ins.src1))
    if func == VecFunc.ROPE:
        srcs.append(("src2", ins.src2, n * (L // 2), False))
    for name, a0, size, exact in srcs:
        if d0 < a0 + size and a0 < d1 and not exact:
            return name
    return None


# ---------------------------------------------------------------- bytes


def encode(ins: Instruction) -> bytes:
    """16 little-endian bytes."""
    check(ins)
    word = 0
    for (f, lsb), v in zip(LAYOUT[ins.op], (int(ins.op),) + ins.values):
        word |= v << lsb
    return word.to_bytes(WORD_BYTES, "little")


def decode(data: bytes, index: int = 0) -> Instruction:
    """One instruction from exactly 16 bytes; `index` only names it in errors."""
    if len(data) != WORD_BYTES:
        raise SpikecError(f"instruction {index}: {len(data)} bytes, expected {WORD_BYTES}")
    word = int.from_bytes(data, "little")
    code = word & 0b111
    try:
        fmt = FORMATS[Opcode(code)]
    except ValueError:
        raise SpikecError(f"instruction {index}: illegal opcode {code}") from None
    values = {}
    for f, lsb in LAYOUT[fmt.opcode][1:]:
        v = (word >> lsb) & ((1 << f.bits) - 1)
        if not f.legal(v):
            raise SpikecError(f"instruction {index} ({fmt.mnemonic}): field '{f.name}' = {v} is illegal ({_legal(f)})")
        values[f.name] = v
    if word >> fmt.used_bits:
        raise SpikecError(f"instruction {index} ({fmt.mnemonic}): reserved bits {fmt.used_bits}..127 are not zero")
    ins = Instruction(fmt.opcode, **values)
    try:
        check(ins)
    except SpikecError as e:
        raise SpikecError(f"instruction {index}: {e}") from None
    return ins


def encode_program(program: Iterable[Instruction]) -> bytes:
    return b"".join(encode(i) for i in program)


def decode_program(data: bytes, *, require_finish: bool = True) -> list[Instruction]:
    """Decode a whole stream. With require_finish (what a device loads), the program must be
    non-empty and hold exactly one FINISH, as its last instruction."""
    data = bytes(data)
    if len(data) % WORD_BYTES:
        raise SpikecError(f"program is {len(data)} bytes, not a multiple of {WORD_BYTES} (truncated?)")
    prog = [decode(data[i : i + WORD_BYTES], i // WORD_BYTES) for i in range(0, len(data), WORD_BYTES)]
    if require_finish:
        if not prog:
            raise SpikecError("empty program (it must end with FINISH)")
        finishes = [i for i, ins in enumerate(prog) if ins.op == Opcode.FINISH]
        if finishes != [len(prog) - 1]:
            where = f"at {finishes}" if finishes else "none"
            raise SpikecError(f"a program needs exactly one FINISH, as its last instruction (found {where})")
    return prog


__all__ = ["Instruction", "check", "encode", "decode", "encode_program", "decode_program"]
