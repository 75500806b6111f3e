"""`spikec inspect`: summarise a model file."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Show a model's inputs/outputs, op histogram and parameter count."""
    from spikec import ir as spir

    info = spir.summary(spir.load_model(path))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return

    def fmt(v: dict) -> str:
        shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
        return f"  {v['name']}: {v['dtype']} {shape}"

    click.echo(f"{path}")
    click.echo("inputs:")
    for v in info["inputs"]:
        click.echo(fmt(v))
    click.echo("outputs:")
    for v in info["outputs"]:
        click.echo(fmt(v))
    click.echo("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in info["opsets"].items()))
    click.echo(f"parameters: {info['parameters']:,} ({info['parameter_bytes']:,} bytes)")
    click.echo(f"nodes: {info['nodes']}")
    for op, n in sorted(info["ops"].items(), key=lambda kv: (-kv[1], kv[0])):
        click.echo(f"  {op:<32} {n:>6}")
