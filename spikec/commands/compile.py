"""`spikec compile`: run the pass pipeline over a model."""

from __future__ import annotations

from pathlib import Path

import click

from spikec.passes import GENERIC_PIPELINE, PASSES


@click.command("compile")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Output model (.onnx).")
@click.option(
    "--dump-ir",
    "dump_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the IR after every pass (NN-<pass>.onnx and .txt) and report.json to this folder.",
)
@click.option(
    "--passes",
    "pass_list",
    default=",".join(GENERIC_PIPELINE),
    show_default=True,
    help=f"Comma-separated pipeline. Known passes: {', '.join(sorted(PASSES))}.",
)
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the JSON compile report here.")
def compile_command(input_path: Path, output: Path, dump_dir: Path | None, pass_list: str, report_path: Path | None) -> None:
    """Compile INPUT (an ONNX file) through the pass pipeline into OUTPUT."""
    from spikec import atomic
    from spikec.compiler import compile_onnx

    names = [n.strip() for n in pass_list.split(",") if n.strip()]
    report = compile_onnx(
        input_path, output, pipeline=names, dump_dir=dump_dir, progress=lambda m: click.echo(m, err=True)
    )
    if report_path is not None:
        atomic.write_text(report_path, report.to_json())
    click.echo(f"compiled {input_path} -> {output}")
    click.echo(f"{'pass':<24} {'time (s)':>9} {'nodes':>7} {'param bytes':>12}  changed")
    for r in report.passes:
        click.echo(f"{r.name:<24} {r.wall_s:>9.3f} {r.nodes:>7} {r.parameter_bytes:>12}  {'yes' if r.modified else 'no'}")
    if dump_dir is not None:
        click.echo(f"IR dumps and report.json in {dump_dir}")
