"""`spikec report`: one self-contained HTML page about a compiled model (docs/report.md)."""

from __future__ import annotations

from pathlib import Path

import click

from spikec.commands import NEW_TOKENS, OutputFile


@click.command("report")
@click.argument("model_path", metavar="MODEL.sbin", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=OutputFile(),
              help="The HTML file to write (self-contained: plots embedded as PNG data URIs).")
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False),
              help="A folder of images: generate on each (exact mode) for spike rates and SOPs per layer.")
@click.option("--prompt", default="Describe the image.", show_default=True, help="The prompt used with every image.")
@click.option("--max-images", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="Use at most this many images of --images (sorted by name).")
@click.option("--max-new-tokens", type=NEW_TOKENS, default=16, show_default=True,
              help="The most tokens generated per image and per evaluation item (it stops earlier at EOS).")
@click.option("--fpga/--no-fpga", default=None,
              help="The accelerator's cycles and energy from one image on the fpga target (default: when the "
                   ".sbin has isa/* sections and --images is given).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Evaluation folder (data.jsonl + images): accuracy against effective timesteps.")
@click.option("--limit", "eval_limit", type=click.IntRange(1), help="With --data: evaluate only the first N items.")
@click.option("--float-model", type=click.Path(path_type=Path),
              help="With --data: also evaluate this float model (export folder or checkpoint) as a reference line.")
def report_command(model_path, output, images_dir, prompt, max_images, max_new_tokens, fpga, data_dir, eval_limit,
                   float_model):
    """Write an HTML report of MODEL.sbin: MED and timesteps per layer and modality (compile
    report), spike rate and SOPs per layer (--images), accelerator cycles and energy (a
    model compiled with --isa), accuracy against effective timesteps (--data)."""
    from spikec.errors import SpikecError
    from spikec.report import write_report
    from spikec.schema import naming_file

    if float_model is not None and data_dir is None:
        raise SpikecError("--float-model goes with --data")
    if eval_limit is not None and data_dir is None:
        raise SpikecError("--limit goes with --data")

    try:  # `spikec -q` silences progress lines
        from spikec.progress import is_quiet
    except ImportError:
        def is_quiet() -> bool:
            return False

    def progress(msg: str) -> None:
        if not is_quiet():
            click.echo(f"  {msg}", err=True)

    from spikec import atomic

    atomic.check_output(output, is_dir=False, inputs=[model_path, images_dir, data_dir, float_model], option="-o")
    with naming_file(model_path):  # a graph's load error names its file
        write_report(model_path, output, images_dir=images_dir, data_dir=data_dir, prompt=prompt,
                     max_images=max_images, max_new_tokens=max_new_tokens, fpga=fpga, eval_limit=eval_limit,
                     float_model=float_model, progress=progress)
    click.echo(f"wrote {output}")
