"""`spikec disasm`: print the accelerator program stored in a .sbin (section isa/program)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("disasm")
@click.argument("model_path", metavar="MODEL.sbin", type=click.Path(path_type=Path))
@click.option("--section", default="isa/program", show_default=True, help="The PROGRAM section to disassemble.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the assembly here instead of printing it (re-assembles to identical bytes).")
def disasm_command(model_path: Path, section: str, output: Path | None) -> None:
    """Disassemble MODEL.sbin's accelerator program (compile with --isa).

    The stored program is the representative one: every lowered kernel for one token of
    each modality its graph feeds it, then FINISH. At run time the fpga target generates
    the same kind of stream for the actual token counts."""
    from spikec import atomic
    from spikec.errors import SpikecError
    from spikec.isa.asm import disassemble_program
    from spikec.isa.container import SbinFile, SectionKind

    if not model_path.is_file():
        raise SpikecError(f"{model_path}: no such file")
    with SbinFile(model_path) as f:
        if section not in f.sections:
            programs = f.names(SectionKind.PROGRAM)
            hint = f" (PROGRAM sections: {', '.join(programs)})" if programs else " (compile with `spikec compile --isa`)"
            raise SpikecError(f"{model_path}: no section '{section}'{hint}")
        try:
            text = disassemble_program(f.read(section))
        except SpikecError as exc:
            raise SpikecError(f"{model_path}: section '{section}' is not a valid accelerator program: {exc}") from None
    if output is not None:
        atomic.write_text(output, text)
        click.echo(f"wrote {text.count(chr(10)) - 1} instructions to {output}")
    else:
        click.echo(text, nl=False)
