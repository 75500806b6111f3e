"""`spikec disasm`: print the accelerator program stored in a .sbin (section isa/program)."""

from __future__ import annotations

from pathlib import Path

import click

from spikec.commands import OutputFile


@click.command("disasm")
@click.argument("model_path", metavar="MODEL.sbin", type=click.Path(path_type=Path))
@click.option("--section", default="isa/program", show_default=True, help="The PROGRAM section to disassemble.")
@click.option("-o", "--output", type=OutputFile(),
              help="Write the assembly here instead of printing it (re-assembles to identical bytes).")
def disasm_command(model_path: Path, section: str, output: Path | None) -> None:
    """Disassemble MODEL.sbin's accelerator program (compile with --isa).

    The stored program is the representative one: every lowered kernel for one token of
    each modality its graph feeds it, then FINISH. At run time the fpga target generates
    the same kind of stream for the actual token counts."""
    from spikec import atomic
    from spikec.errors import SpikecError
    from spikec.isa.asm import disassemble_program
    from spikec.isa import container as C
    from spikec.isa.container import SbinFile, SectionKind

    if not model_path.is_file():
        raise SpikecError(f"{model_path}: no such file")
    if output is not None:
        atomic.check_output(output, is_dir=False, inputs=[model_path], option="-o")
    with SbinFile(model_path) as f:
        if section not in f.sections:
            programs = f.names(SectionKind.PROGRAM)
            hint = f" (PROGRAM sections: {', '.join(programs)})" if programs else " (compile with `spikec compile --isa`)"
            raise SpikecError(f"{model_path}: no section '{section}'{hint}")
        try:
            text = disassemble_program(f.read(section))
        except SpikecError as exc:
            raise SpikecError(f"{model_path}: section '{section}' is not a valid accelerator program: {exc}") from None
        if C.ISA_KERNELS in f.sections:
            text = _kernel_comments(f, model_path) + text
    if output is not None:
        atomic.write_text(output, text)
        n = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        click.echo(f"wrote {n} instructions to {output}")
    else:
        click.echo(text, nl=False)


def _kernel_comments(f, where: Path) -> str:
    """One comment line per lowered kernel, in program order, naming the layer it runs (the
    module path the export gave the node, e.g. lm:model.language_model.layers.3.mlp.down_proj).
    Comments: the assembler skips them, so the output still re-assembles to identical bytes.
    When the descriptors do not pass their checks (against the file's hardware
    configuration and weights image) the program is printed without them, under one
    comment line giving the check's error (also a warning on stderr): a disassembly of a
    damaged file stays possible, and says it is damaged. Raises SpikecError when the
    section is not JSON."""
    from spikec.errors import SpikecError
    from spikec.isa import container as C
    from spikec.isa.descriptors import KernelsDocument
    from spikec.isa.hwconfig import HwConfig
    from spikec.schema import parse_json

    where_k = f"{where}: section 'isa/kernels'"
    obj = parse_json(f.read(C.ISA_KERNELS), where=where_k)
    try:
        cfg = HwConfig.from_json(f.read(C.ISA_HWCONFIG), f"{where}: section '{C.ISA_HWCONFIG}'")
        weights_len = len(f.read(C.ISA_WEIGHTS)) if C.ISA_WEIGHTS in f.sections else None
        doc = KernelsDocument.from_json(obj, where_k, cfg, weights_len)
    except (SpikecError, KeyError) as exc:
        import click

        msg = f"kernel descriptors not shown: {str(exc)[:300]}".replace("\n", " ").replace("\r", " ")
        click.echo(f"warning: {where}: {msg}", err=True)
        return f"# {msg}\n"
    # the configuration first: field values such as a WGT address mean bytes x wgt_addr_bytes
    lines = [f"# hwconfig '{cfg.name}': PE array {cfg.pe_rows}x{cfg.pe_cols}, {cfg.vec_lanes} vector lanes, "
             f"WGT addresses of {cfg.wgt_addr_bytes} byte{'s' if cfg.wgt_addr_bytes > 1 else ''} (docs/isa.md section 1)"]
    lines += [f"# kernel {k.index}: {k.graph}:{k.node} K={k.K} M={k.M}" for k in doc.kernels]
    lines += [f"# attention kernel {k.index}: {k.graph}:{k.node}" for k in doc.attn_kernels]
    lines += [f"# vector kernel {k.index}: {k.graph}:{k.node} {k.func.name}" for k in doc.vec_kernels]
    return "".join(line.replace("\n", " ").replace("\r", " ") + "\n" for line in lines)
