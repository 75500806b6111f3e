"""Assembler and disassembler for the accelerator's text format (docs/isa.md, "Assembly").

One instruction per line: a mnemonic, then `field=value` pairs in any order:

    LOAD   buf=WGT sram=0 dram=0x1000 stride=64 rows=64 cols=64 deps=push_next
    SPMM   inp=0 wgt=0 acc=0 n=4 k=64 m=64 acc_stride=64 t=3 deps=pop_prev
    FINISH

Values are integers (decimal, 0x.., 0b..) or, for enum fields, member names
(case-insensitive). Omitted fields take their minimum (0, or 1 for counts). The
dependency bits are written together as `deps=pop_prev,push_next`. `#` or `;` starts a
comment. The disassembler prints every field in table order (and the instruction's index
as a comment), so its output re-assembles to identical bytes.
"""

from __future__ import annotations

from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction, LAYOUT, decode_program, encode, encode_program
from spikec.isa.fields import DEP_FIELDS, FORMATS, WORD_BYTES

_MNEMONICS = {fmt.mnemonic: op for op, fmt in FORMATS.items()}


def _parse_value(field, text: str, where: str) -> int:
    if field.enum is not None:
        for m in field.enum:
            if m.name.lower() == text.lower():
                return int(m)
    try:
        return int(text, 0)
    except ValueError:
        names = f" or one of {', '.join(m.name for m in field.enum)}" if field.enum else ""
        raise SpikecError(f"{where}: field '{field.name}' needs an integer{names}, got '{text}'") from None


def assemble_line(line: str, where: str = "") -> Instruction | None:
    """One line of assembly; None for a blank or comment-only line."""
    text = line.split("#", 1)[0].split(";", 1)[0].strip()
    if not text:
        return None
    mnemonic, *args = text.split()
    op = _MNEMONICS.get(mnemonic.upper())
    if op is None:
        raise SpikecError(f"{where}: unknown mnemonic '{mnemonic}' (known: {', '.join(_MNEMONICS)})")
    fields = {f.name: f for f, _ in LAYOUT[op][1:]}
    values: dict[str, int] = {}
    for arg in args:
        name, eq, raw = arg.partition("=")
        if not eq or not raw:
            raise SpikecError(f"{where}: expected field=value, got '{arg}'")
        name = name.lower()
        if name in values or (name == "deps" and any(d in values for d in DEP_FIELDS)):
            raise SpikecError(f"{where}: field '{name}' given twice")
        if name == "deps":
            for dep in raw.lower().split(","):
                if dep not in DEP_FIELDS:
                    raise SpikecError(f"{where}: unknown dependency '{dep}' (known: {', '.join(DEP_FIELDS)})")
                if dep in values:
                    raise SpikecError(f"{where}: dependency '{dep}' given twice")
                values[dep] = 1
            continue
        if name not in fields:
            raise SpikecError(f"{where}: {op.name} has no field '{name}' (fields: deps, {', '.join(f for f in fields if f not in DEP_FIELDS)})")
        values[name] = _parse_value(fields[name], raw, where)
    try:
        ins = Instruction(op, **values)
        encode(ins)  # applies the cross-field rules of encoding.check
    except SpikecError as e:
        raise SpikecError(f"{where}: {e}") from None
    return ins


def assemble(text: str, name: str = "<asm>") -> list[Instruction]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        ins = assemble_line(line, f"{name}:{lineno}")
        if ins is not None:
            out.append(ins)
    return out


def assemble_program(text: str, name: str = "<asm>") -> bytes:
    return encode_program(assemble(text, name))


def format_instruction(ins: Instruction) -> str:
    parts = [ins.op.name]
    deps = [d for d in DEP_FIELDS if getattr(ins, d)]
    for (f, _), v in zip(LAYOUT[ins.op][1:], ins.values):
        if f.name in DEP_FIELDS:
            continue
        if f.enum is not None:
            parts.append(f"{f.name}={f.enum(v).name}")
        elif f.hex:
            parts.append(f"{f.name}={v:#x}")
        else:
            parts.append(f"{f.name}={v}")
    if deps:
        parts.append("deps=" + ",".join(deps))
    return " ".join(parts)


def disassemble(program: list[Instruction]) -> str:
    lines = [f"{format_instruction(ins)}  # {i}" for i, ins in enumerate(program)]
    return "\n".join(lines) + ("\n" if lines else "")


def disassemble_program(data: bytes) -> str:
    """Text for a PROGRAM section (what `spikec disasm` prints). Decodes strictly (a bad
    word is a SpikecError naming it) but does not require the trailing FINISH, so a
    partial stream can be inspected too."""
    prog = decode_program(data, require_finish=False)
    head = f"# spikec accelerator program: {len(prog)} instructions, {len(prog) * WORD_BYTES} bytes\n"
    return head + disassemble(prog)


__all__ = ["assemble", "assemble_line", "assemble_program", "disassemble", "disassemble_program", "format_instruction"]
