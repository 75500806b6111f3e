"""`spikec eval`: exact match, ANLS and VQA accuracy on an evaluation folder, overall and per question type."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spikec.commands import NEW_TOKENS, OutputFile


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Evaluation folder: data.jsonl + images (docs/default-model.md).")
@click.option("--target", type=click.Choice(["ort", "fpga"]), default="ort", show_default=True,
              help="Target for a .sbin MODEL: ort = ONNX Runtime; fpga = spiking products on the accelerator (a model "
                   "compiled with --isa).")
@click.option("--device", type=click.Choice(["sim", "rtl"]), default="sim", show_default=True,
              help="With --target fpga: the functional simulator, or the RTL co-simulation (slow).")
@click.option("--mode", type=click.Choice(["fused", "exact", "fakequant"]), default="fused", show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Evaluate only the first N items.")
@click.option("--max-new-tokens", type=NEW_TOKENS, default=8, show_default=True,
              help="The most tokens generated per item (it stops earlier at EOS; the data sets' answers are short).")
@click.option("--json", "json_path", type=OutputFile(), help="Write the result (with predictions) as JSON.")
def eval_command(model, data_dir, target, device, mode, limit, max_new_tokens, json_path):
    """Exact match, ANLS and VQA accuracy of MODEL (checkpoint folder, export folder or .sbin) on --data, per type."""
    from spikec import atomic
    from spikec import progress as P
    from spikec.evaluate import evaluate

    def progress(done: int, total: int) -> None:
        # in a pipe; on a terminal evaluate() draws a bar over the items instead, with -q nothing
        if done % 100 == 0 or done == total:
            P.line(f"  {done}/{total}")

    if device != "sim" and target != "fpga":
        from spikec.errors import SpikecError

        raise SpikecError(f"--device {device} applies to --target fpga only")
    if json_path is not None:  # before the evaluation, not after it
        atomic.check_output(json_path, is_dir=False, inputs=[model, data_dir], option="--json")
    r = evaluate(model, data_dir, target=target, mode=mode, limit=limit, max_new_tokens=max_new_tokens, progress=progress,
                 device=device)
    if json_path is not None:  # written before anything is printed (a closed stdout, `| head`, ends the command)
        data = r.to_dict()
        data["predictions"] = r.predictions
        atomic.write_text(json_path, json.dumps(data, indent=2) + "\n")
    click.echo(f"{r.model}: {r.correct}/{r.total} = {100 * r.accuracy:.2f}% exact match ({r.seconds:.1f} s)")
    m = r.metrics()
    click.echo(f"  {'type':<10} {'items':>11} {'exact':>8} {'ANLS':>8} {'VQA acc':>8}")
    for t, (c, n) in sorted(r.by_type.items()):
        mt = r.metrics(t)
        click.echo(f"  {t:<10} {c:>5}/{n:<5} {100 * c / n:>7.2f}% {100 * mt['anls']:>7.2f}% {100 * mt['vqa_accuracy']:>7.2f}%")
    click.echo(f"  {'all':<10} {r.correct:>5}/{r.total:<5} {100 * r.accuracy:>7.2f}% {100 * m['anls']:>7.2f}% {100 * m['vqa_accuracy']:>7.2f}%")
