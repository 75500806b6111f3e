"""THE table of instruction formats and fields: every other view of the encoding is generated from it.

An instruction is one 128-bit word, stored little-endian (16 bytes). Bits are numbered from
the least significant bit of that word. Every format starts with the same 7-bit header:

    bits 0..2  opcode
    bit  3     pop_prev    wait for (and consume) a token from the previous stage
    bit  4     pop_next    wait for (and consume) a token from the next stage
    bit  5     push_prev   after executing, send a token to the previous stage
    bit  6     push_next   after executing, send a token to the next stage

and then lays out its own fields from bit 7 upward, in the order of FORMATS below; all bits
above the last field are reserved and must be zero. The encoder and decoder
(isa/encoding.py), the assembler (isa/asm.py), the field tables of docs/isa.md (regenerate
with `python -m spikec.isa.fields docs/isa.md`; a test checks they agree) and the
RTL's SystemVerilog package (isa/svgen.py) are all derived from this one table -- the VTA lesson: one
header both sides compile, not widths restated by hand.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass

WORD_BITS = 128
WORD_BYTES = WORD_BITS // 8


class Opcode(enum.IntEnum):
    LOAD = 0
    STORE = 1
    SPMM = 2
    ENCODE = 3
    VEC = 4
    FINISH = 5


class Module(enum.IntEnum):
    """The three concurrently running modules; an opcode belongs to exactly one."""

    LOAD = 0
    COMPUTE = 1
    STORE = 2


class Buffer(enum.IntEnum):
    """On-chip buffers. Addresses inside a buffer count elements of its element type."""

    INP = 0  # int16 integer codes (spiking-side input of SPMM)
    WGT = 1  # bytes: int8 weights, or int4 packed two per byte, low nibble first
    ACC = 2  # int32 accumulators
    VEC = 3  # float32 vector-unit operands
    SCL = 4  # float32 scales and scalar constants


ELEMENT_BYTES = {Buffer.INP: 2, Buffer.WGT: 1, Buffer.ACC: 4, Buffer.VEC: 4, Buffer.SCL: 4}
ELEMENT_DTYPE = {Buffer.INP: "<i2", Buffer.WGT: "u1", Buffer.ACC: "<i4", Buffer.VEC: "<f4", Buffer.SCL: "<f4"}


class Neuron(enum.IntEnum):
    TCLIF = 0  # ternary TC-LIF, t planes MSB first, Horner acc <- 2*acc + S_t @ W
    IF = 1  # rate-coded IF, 2**(t+1) - 1 binary planes of the offset code, summed


class WeightFormat(enum.IntEnum):
    INT8 = 0
    INT4 = 1  # two's-complement nibbles, element e in byte e // 2, low nibble first


class AccMode(enum.IntEnum):
    OVERWRITE = 0
    ACCUMULATE = 1


class EncodeDst(enum.IntEnum):
    INP = 0  # int16 codes, t <= 15
    WGT = 1  # int8 codes (the right-hand operand of an activation x activation product), t <= 7


class WeightSource(enum.IntEnum):
    """Where an SPMM reads its weights (docs/isa.md section 3, "The weight FIFO")."""

    WGT = 0  # the WGT buffer at the SPMM's `wgt` address
    FIFO = 1  # the PE array's weight FIFO, fed in order by LOADs with wfifo = 1 (`wgt` must be 0)


class ScaleMode(enum.IntEnum):
    DYNAMIC = 0  # per row s_i = max_j |x_ij| / (2**t - 1), written to SCL[scl + i]
    STATIC = 1  # one scale read from SCL[scl]


class VecFunc(enum.IntEnum):
    """Vector-unit functions; operand roles per function are in VEC_OPERANDS."""

    COPY = 0
    ADD = 1
    MUL = 2
    ADD_ROW = 3
    MUL_ROW = 4
    SCALE = 5
    DEQ = 6
    RMSNORM = 7
    LAYERNORM = 8
    SOFTMAX = 9
    SILU = 10
    GELU = 11
    ROPE = 12


class VecFlag(enum.IntFlag):
    PER_ROW = 1  # DEQ: s_x is one scale per row (SCL[src1 + i]) instead of one scalar
    BIAS = 2  # DEQ: add bias SCL[src2 + len + j] after the two multiplies


# Operand roles of each VEC function: (src0, src1, src2, allowed flags). None = unused (field
# must be 0). Shapes: [n, len] rows are contiguous (row pitch = len); [len] is one row
# broadcast over the n rows; [1] is a scalar.
VEC_OPERANDS: dict[VecFunc, tuple[str | None, str | None, str | None, int]] = {
    VecFunc.COPY: ("VEC[n,len]", None, None, 0),
    VecFunc.ADD: ("VEC[n,len]", "VEC[n,len]", None, 0),
    VecFunc.MUL: ("VEC[n,len]", "VEC[n,len]", None, 0),
    VecFunc.ADD_ROW: ("VEC[n,len]", "VEC[len]", None, 0),
    VecFunc.MUL_ROW: ("VEC[n,len]", "VEC[len]", None, 0),
    VecFunc.SCALE: ("VEC[n,len]", "SCL[1]", None, 0),
    VecFunc.DEQ: ("ACC[n,len]", "SCL[1] or SCL[n] (PER_ROW)", "SCL[len] s_w, then SCL[len] bias (BIAS)", int(VecFlag.PER_ROW | VecFlag.BIAS)),
    VecFunc.RMSNORM: ("VEC[n,len]", "VEC[len] gamma", "SCL[1] eps", 0),
    VecFunc.LAYERNORM: ("VEC[n,len]", "VEC[len] gamma, then VEC[len] beta", "SCL[1] eps", 0),
    VecFunc.SOFTMAX: ("VEC[n,len]", None, None, 0),
    VecFunc.SILU: ("VEC[n,len]", None, None, 0),
    VecFunc.GELU: ("VEC[n,len]", None, None, 0),
    VecFunc.ROPE: ("VEC[n,len]", "VEC[n,len/2] cos", "VEC[n,len/2] sin", 0),
}


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    doc: str
    min: int = 0  # smallest legal value (counts are >= 1)
    enum: type[enum.IntEnum] | None = None  # legal values are this enum's members
    hex: bool = False  # the disassembler prints it in hex

    @property
    def max(self) -> int:
        if self.enum is not None:
            return max(int(v) for v in self.enum)
        return (1 << self.bits) - 1

    def legal(self, value: int) -> bool:
        if self.enum is not None:
            return value in {int(v) for v in self.enum}
        return self.min <= value <= self.max


@dataclass(frozen=True)
class Format:
    opcode: Opcode
    module: Module
    doc: str
    fields: tuple[Field, ...]  # after the header, from bit 7 upward
    deps: tuple[str, ...]  # the dependency bits this module may set (others must be 0)

    @property
    def mnemonic(self) -> str:
        return self.opcode.name

    def layout(self) -> list[tuple[Field, int]]:
        """(field, lsb) for the header and every field, in bit order."""
        out, lsb = [], 0
        for f in HEADER + self.fields:
            out.append((f, lsb))
            lsb += f.bits
        assert lsb <= WORD_BITS, f"{self.mnemonic} uses {lsb} bits"
        return out

    @property
    def used_bits(self) -> int:
        return sum(f.bits for f in HEADER + self.fields)


DEP_FIELDS = ("pop_prev", "pop_next", "push_prev", "push_next")

HEADER: tuple[Field, ...] = (
    Field("opcode", 3, "instruction kind", enum=Opcode),
    Field("pop_prev", 1, "wait for and consume a token from the previous stage"),
    Field("pop_next", 1, "wait for and consume a token from the next stage"),
    Field("push_prev", 1, "after executing, push a token to the previous stage"),
    Field("push_next", 1, "after executing, push a token to the next stage"),
)

# Buffer address widths (elements). hwconfig checks every buffer is addressable with them.
ADDR_BITS = {Buffer.INP: 18, Buffer.WGT: 20, Buffer.ACC: 18, Buffer.VEC: 18, Buffer.SCL: 18}
DRAM_ADDR_BITS = 32

_DMA_FIELDS = (
    Field("buf", 3, "on-chip buffer", enum=Buffer),
    Field("sram", 20, "first element in the buffer (rows are packed, pitch = cols)"),
    Field("dram", 32, "DRAM byte address of the first row", hex=True),
    Field("stride", 24, "DRAM bytes between row starts (0 repeats one row)"),
    Field("rows", 16, "number of rows", min=1),
    Field("cols", 16, "elements per row (element size of buf)", min=1),
)

FORMATS: dict[Opcode, Format] = {
    f.opcode: f
    for f in (
        Format(
            Opcode.LOAD,
            Module.LOAD,
            "2-D DMA, DRAM -> buffer (or -> the weight FIFO)",
            _DMA_FIELDS + (Field("wfifo", 1, "1: the rows go to the PE array's weight FIFO (buf WGT, sram 0, no push)"),),
            ("pop_next", "push_next"),
        ),
        Format(Opcode.STORE, Module.STORE, "2-D DMA, buffer -> DRAM", _DMA_FIELDS, ("pop_prev", "push_prev")),
        Format(
            Opcode.SPMM,
            Module.COMPUTE,
            "spiking matrix product of a token group sharing t: ACC[n,m] (+)= S(INP[n,k]) @ W[k,m]",
            (
                Field("inp", 18, "INP element of token 0's codes (rows packed, pitch = k)"),
                Field("wgt", 20, "WGT byte address of W"),
                Field("acc", 18, "ACC element of output row 0"),
                Field("n", 12, "tokens", min=1),
                Field("k", 14, "input features (reduction length)", min=1),
                Field("m", 14, "output features", min=1),
                Field("acc_stride", 14, "ACC elements between output rows (>= m)", min=1),
                Field("t", 4, "code width: |q| <= 2**t - 1 (TC-LIF: t timesteps)", min=1),
                Field("neuron", 1, "spike encoding", enum=Neuron),
                Field("wfmt", 1, "weight format", enum=WeightFormat),
                Field("wtrans", 1, "1: W is stored [m, k] row-major (e.g. K^T), else [k, m]"),
                Field("acc_mode", 1, "overwrite or accumulate into ACC", enum=AccMode),
                Field("wsrc", 1, "weight source: WGT at wgt, or the weight FIFO (wgt 0)", enum=WeightSource),
            ),
            DEP_FIELDS,
        ),
        Format(
            Opcode.ENCODE,
            Module.COMPUTE,
            "quantize float32 VEC rows to integer codes: q = clamp(rint(x / s), +-(2**t - 1))",
            (
                Field("src", 18, "VEC element of row 0 (rows packed, pitch = len)"),
                Field("dst", 20, "first element of the codes in dst_buf (rows packed)"),
                Field("dst_buf", 1, "where the codes go", enum=EncodeDst),
                Field("n", 12, "rows (tokens)", min=1),
                Field("len", 14, "elements per row", min=1),
                Field("t", 4, "code width: qmax = 2**t - 1", min=1),
                Field("scale", 1, "scale source", enum=ScaleMode),
                Field("scl", 18, "SCL element: dynamic -> written scales [n]; static -> read scale [1]"),
            ),
            DEP_FIELDS,
        ),
        Format(
            Opcode.VEC,
            Module.COMPUTE,
            "vector-unit function over n rows of len float32 elements",
            (
                Field("func", 5, "function", enum=VecFunc),
                Field("flags", 3, "function flags (VecFlag)"),
                Field("dst", 18, "VEC element of the result [n, len]"),
                Field("src0", 18, "first operand (see the operand table)"),
                Field("src1", 18, "second operand (0 when unused)"),
                Field("src2", 18, "third operand (0 when unused)"),
                Field("n", 12, "rows", min=1),
                Field("len", 14, "elements per row", min=1),
            ),
            DEP_FIELDS,
        ),
        Format(Opcode.FINISH, Module.COMPUTE, "end of program (must be the last instruction)", (), DEP_FIELDS),
    )
}

for _f in FORMATS.values():
    _f.layout()  # asserts every format fits in 128 bits


def field(opcode: Opcode, name: str) -> Field:
    """The field `name` of an instruction format (KeyError if it has none): the one source
    of the ISA's limits, e.g. `field(Opcode.VEC, "len").max`."""
    for f in FORMATS[opcode].fields:
        if f.name == name:
            return f
    raise KeyError(f"{opcode.name} has no field '{name}'")


# ---------------------------------------------------------------- generated documentation

BEGIN_MARK = "<!-- BEGIN GENERATED FIELD TABLES: python -m spikec.isa.fields docs/isa.md -->"
END_MARK = "<!-- END GENERATED FIELD TABLES -->"


def _range(f: Field) -> str:
    if f.enum is not None:
        return ", ".join(f"{m.name}={int(m)}" for m in f.enum)
    return f"{f.min}..{f.max}"


def markdown_tables() -> str:
    """The field table of every format, and the enum tables, as Markdown."""
    lines = []
    for fmt in FORMATS.values():
        lines += [
            f"#### {fmt.mnemonic} (opcode {int(fmt.opcode)}, {fmt.module.name.lower()} module, "
            f"{fmt.used_bits} of {WORD_BITS} bits used)",
            "",
            fmt.doc + ". Dependency bits allowed: " + ", ".join(fmt.deps) + ".",
            "",
            "| bits | field | width | values | meaning |",
            "|---|---|---|---|---|",
        ]
        for f, lsb in fmt.layout():
            lines.append(f"| {lsb + f.bits - 1}:{lsb} | `{f.name}` | {f.bits} | {_range(f)} | {f.doc} |")
        if fmt.used_bits < WORD_BITS:
            lines.append(f"| {WORD_BITS - 1}:{fmt.used_bits} | reserved | {WORD_BITS - fmt.used_bits} | 0 | must be zero |")
        lines.append("")
    lines += ["#### VEC operand roles", "", "| func | code | src0 | src1 | src2 | flags |", "|---|---|---|---|---|---|"]
    for func, (s0, s1, s2, flags) in VEC_OPERANDS.items():
        fl = ", ".join(m.name for m in VecFlag if flags & m) or "0"
        lines.append(f"| {func.name} | {int(func)} | {s0 or '0'} | {s1 or '0'} | {s2 or '0'} | {fl} |")
    lines.append("")
    return "\n".join(lines)


def update_doc(path: str) -> bool:
    """Rewrite the generated block of `path`; True when it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, sep, rest = text.partition(BEGIN_MARK)
    _, sep2, tail = rest.partition(END_MARK)
    if not sep or not sep2:
        raise SystemExit(f"{path}: markers {BEGIN_MARK!r} / {END_MARK!r} not found")
    new = head + BEGIN_MARK + "\n\n" + markdown_tables() + "\n" + END_MARK + tail
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    for p in sys.argv[1:] or ["docs/isa.md"]:
        print(f"{p}: {'updated' if update_doc(p) else 'up to date'}")
