"""`spikec export SOURCE -o OUTDIR`: a Hugging Face multimodal model -> ONNX graphs + manifest."""

from __future__ import annotations

import logging
import time
import warnings

import click

from spikec.errors import SpikecError

SUPPORTED_OPSETS = range(18, 22)  # 22+ at some point fuses attention/norms; see docs/frontend.md


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Output folder (written whole or not at all).")
@click.option("--allow-pickle", is_flag=True, help="Allow loading pickle (*.bin) weights. Only for trusted files.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (18-21).")
@click.pass_context
def export_command(ctx: click.Context, source: str, outdir: str, allow_pickle: bool, opset: int) -> None:
    """Export SOURCE to ONNX: vision encoder + projector, token embedding, and a
    language model with a per-token modality input and a KV cache.

    SOURCE is a local folder in save_pretrained layout (config.json, *.safetensors,
    processor and tokenizer files) or a built-in tiny model: tiny-qwen2-vl,
    tiny-qwen2.5-vl, tiny-llava, tiny-internvl, tiny-idefics3. No network is used.
    """
    if opset not in SUPPORTED_OPSETS:
        raise SpikecError(f"--opset {opset}: supported opsets are {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
    verbose = (ctx.obj or {}).get("verbose", 0)
    if verbose < 2:
        # The exporter's own passes log every folded constant at INFO.
        for name in ("onnx_ir", "onnxscript", "torch.onnx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from spikec import progress as P
    from spikec.frontend.export import export

    start = time.time()
    with warnings.catch_warnings():
        if verbose < 2:
            warnings.simplefilter("ignore")
        # a bar over loading + the 4 stages on a terminal; the timestamped lines in a pipe; nothing with -q
        with P.stage_lines(lambda s: click.echo(f"[{time.time() - start:6.1f}s] {s}"), 5, "export") as progress:
            manifest = export(source, outdir, allow_pickle=allow_pickle, opset=opset, progress=progress)
    graphs = ", ".join(g["file"] for g in manifest["graphs"].values())
    click.echo(f"wrote {outdir}: {graphs}, manifest.json ({manifest['family']}, opset {opset}, "
               f"{time.time() - start:.1f}s)")
