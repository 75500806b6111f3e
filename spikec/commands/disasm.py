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
        if "isa/kernels" in f.sections:
            text = _kernel_comments(f.read("isa/kernels"), model_path) + text
    if output is not None:
        atomic.write_text(output, text)
        n = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        click.echo(f"wrote {n} instructions to {output}")
    else:
        click.echo(text, nl=False)


def _kernel_comments(data: bytes, where: Path) -> str:
    """One comment line per lowered kernel, in program order, naming the layer it runs (the
    module path the export gave the node, e.g. lm:model.language_model.layers.3.mlp.down_proj).
    Comments: the assembler skips them, so the output still re-assembles to identical bytes."""
    from spikec.schema import parse_json

    doc = parse_json(data, where=f"{where}: section 'isa/kernels'")
    lines = []
    for key, kind in (("kernels", "kernel"), ("attn_kernels", "attention kernel"), ("vec_kernels", "vector kernel")):
        items = doc.get(key) if isinstance(doc, dict) else None
        for i, k in enumerate(items if isinstance(items, list) else []):
            if not isinstance(k, dict):
                continue
            name = f"{k.get('graph', '?')}:{k.get('node', '?')}"
            shape = f" K={k['K']} M={k['M']}" if isinstance(k.get("K"), int) and isinstance(k.get("M"), int) else ""
            func = f" {k['func']}" if isinstance(k.get("func"), str) else ""
            lines.append(f"# {kind} {i}: {name}{func}{shape}".replace("\n", " ").replace("\r", " "))
    return "".join(line + "\n" for line in lines)
