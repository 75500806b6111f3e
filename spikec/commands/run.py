"""`spikec run`: execute a compiled model (.sbin) on a target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from spikec.commands import NEW_TOKENS, OutputFile


def _print_stats(stats: dict) -> None:
    s = stats["summary"]
    click.echo("spike statistics (exact mode):")
    click.echo(f"  spiking products run: {s['spiking_products']}")
    click.echo(f"  spikes: {s['spikes']:,}   spike rate: {s['spike_rate']:.4f}")
    click.echo(f"  synaptic ops (SOPs): {s['sops']:,}   float MACs of the same products: {s['float_macs']:,}"
               f"   SOPs/MAC: {s['sops_per_mac']:.4f}")
    by_mod = ", ".join(f"{m} {t:.2f}" for m, t in s["effective_timesteps_by_modality"].items())
    click.echo(f"  effective timesteps per token: {s['effective_timesteps']:.3f} ({by_mod})")
    # layer names are module paths (lm:model.language_model.layers.3.mlp.down_proj): shown whole
    width = max([24] + [len(f"{row['graph']}:{row['layer']}") for row in stats["layers"]])
    click.echo(f"  {'layer':<{width}} {'modality':<8} {'T':>2} {'tokens':>7} {'rate':>7} {'SOPs':>12}")
    for row in stats["layers"]:
        for mod, r in row["modalities"].items():
            click.echo(f"  {row['graph'] + ':' + row['layer']:<{width}} {mod:<8} {r['T']:>2} {r['tokens']:>7} "
                       f"{r['rate']:>7.4f} {r['sops']:>12,}")


def _print_fpga(r: dict) -> None:
    g = r["gpu"]
    click.echo(f"fpga target ({r.get('device', 'device')}, hwconfig '{r['hwconfig']}' at {r['clock_mhz']:g} MHz): "
               f"{r['calls']} kernel calls, {r['tokens']:,} token-rows, effective timesteps {r['effective_timesteps']:.3f}; "
               f"{r.get('vec_calls', 0)} vector-kernel calls, {r.get('vec_elements', 0):,} elements"
               + (f"; of the kernel calls {r['attn_calls']} attention products (+{r['attn_host_calls']} on the host: "
                  f"right operand over one ENCODE row)" if r.get("attn_calls") or r.get("attn_host_calls") else ""))
    click.echo(f"  device cycles: {r['cycles']:,} ({r.get('vec_cycles', 0):,} in vector kernels)   modeled latency of "
               f"the spiking products and vector ops: {r['latency_s'] * 1e3:.4f} ms")
    parts = ", ".join(f"{k} {v * 1e-6:.3f}" for k, v in r["energy_pj_by_component"].items())
    click.echo(f"  modeled energy: {r['energy_j'] * 1e6:.3f} uJ ({parts} uJ; the configuration's energy constants: "
               f"{r.get('energy_constants', 'Horowitz, ISSCC 2014, 45 nm')}; docs/isa.md section 7)")
    click.echo(f"  spikes: {r['spikes']:,}   spike density: {r['spike_density']:.4f}   SOPs: {r['sops']:,}   "
               f"float MACs of the same products: {r['float_macs']:,}")
    click.echo(f"  spike vectors processed: {r['spike_vectors']:,}, skipped (all zero): {r['skipped_vectors']:,}   "
               f"DRAM traffic: {r['dram_bytes']:,} bytes")
    click.echo(f"  modeled GPU baseline: {g['name']}, roofline per product (max(2*MACs/peak, FP16 bytes/bandwidth)) "
               f"and per vector op (FP16 bytes read and written / bandwidth), energy = power x time")
    click.echo(f"    GPU time {g['seconds'] * 1e6:.3f} us ({g.get('vec_seconds', 0.0) * 1e6:.3f} us vector ops), "
               f"energy {g['energy_j'] * 1e6:.3f} uJ ({g['bytes']:,} bytes)")
    click.echo(f"  modeled throughput ratio (GPU time / accelerator time): {r['throughput_ratio']:.4g}   "
               f"modeled energy-efficiency ratio (GPU energy / accelerator energy): {r['efficiency_ratio']:.4g}")
    click.echo("  (both sides count the spiking products and the vector ops lowered to the device -- norms, softmax, "
               "SiLU, rotary, residual adds; host fallback ops -- attention products, erf GELU, masks, shape ops -- "
               "are on neither side)")


@click.command("run")
@click.argument("model_path", metavar="MODEL.sbin", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["ort", "fpga"]), default="ort", show_default=True,
              help="Where to run: ort = ONNX Runtime; fpga = spiking products on the accelerator (a model compiled "
                   "with --isa), everything else on the host.")
@click.option("--device", type=click.Choice(["sim", "rtl"]), default="sim", show_default=True,
              help="With --target fpga: the device (sim = the functional simulator and cost model; rtl = the "
                   "SystemVerilog core in rtl/ co-simulated with Verilator, cycles measured, energy modeled; "
                   "needs Verilator, which `make test` installs).")
@click.option("--mode", type=click.Choice(["fused", "exact", "fakequant"]), default="fused", show_default=True,
              help="fused: integer products; exact: explicit spike planes (bit-identical, counts spikes); fakequant: the ANN baseline, float MatMul of the same codes.")
@click.option("--image", type=click.Path(path_type=Path),
              help="Input image for generation (omit it for a text-only prompt, where the family allows one).")
@click.option("--prompt", help="Text prompt for generation.")
@click.option("--max-new-tokens", type=NEW_TOKENS, default=None,
              help="The most tokens to generate (it stops earlier at EOS). Default: the checkpoint's "
                   "generation_config max_new_tokens, as exported; 32 where it sets none.")
@click.option("--inputs", "inputs_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Raw input tensors (.npz keyed by graph input name).")
@click.option("--graph", help="With --inputs: which graph to run (vision, embed, lm, ...).")
@click.option("-o", "--output", type=OutputFile(), help="With --inputs: write outputs (.npz).")
@click.option("--stats", is_flag=True, help="Print per-layer spike rate, SOPs and effective timesteps (runs exact mode).")
@click.option("--stats-json", type=OutputFile(), help="Also write the statistics as JSON.")
def run_command(model_path, target, device, mode, image, prompt, max_new_tokens, inputs_path, graph, output, stats, stats_json):
    """Run MODEL.sbin: image + prompt to text, or raw tensors (--inputs/-o)."""
    import numpy as np

    from spikec import atomic
    from spikec.errors import SpikecError
    from spikec.runtime.model import load
    from spikec.runtime.ort_target import ort_errors
    from spikec.schema import condense, naming_file

    generating = image is not None or prompt is not None
    if generating == (inputs_path is not None):
        raise SpikecError("give either --image and --prompt (generation) or --inputs (raw tensors)")
    if generating and prompt is None:
        raise SpikecError("generation needs --prompt (with --image, or alone for a text-only prompt)")
    if output is not None and inputs_path is None:
        raise SpikecError("-o/--output goes with --inputs")
    if device != "sim" and target != "fpga":
        raise SpikecError(f"--device {device} applies to --target fpga only")
    if (stats or stats_json) and target == "ort":
        mode = "exact"
    # before any work: an output that cannot be written, or that would replace an input
    inputs = [model_path, inputs_path, image]
    if output is not None:
        atomic.check_output(output, is_dir=False, inputs=inputs, option="-o")
    if stats_json is not None:
        atomic.check_output(stats_json, is_dir=False, inputs=inputs + [output], option="--stats-json")
    with naming_file(model_path):  # a graph's load error names its file
        model = load(model_path, target=target, mode=mode, device=device)
    with model:
        # every file is written before anything is printed: a closed stdout (`| head`) ends
        # the command at its first print, and the files the user asked for are its product
        if generating:
            with naming_file(model_path):  # an error running a graph names its file
                text = model.generate(image, prompt, max_new_tokens=max_new_tokens)
        else:
            if not inputs_path.is_file():
                raise SpikecError(f"--inputs {inputs_path}: no such file")
            from spikec.schema import open_npz

            where = f"--inputs {inputs_path}"
            try:
                with open_npz(inputs_path, where=where) as data:
                    feeds = {k: data[k] for k in data.files}
            except (ValueError, OSError) as exc:  # a member numpy cannot read
                raise SpikecError(f"{where}: not a readable .npz ({exc})") from None
            try:
                outs = model.run(feeds, graph=graph)
            except (SpikecError, *ort_errors()) as exc:  # the inputs do not fit the graph (type, shape, rank)
                # onnxruntime's error, raised as it is or as the ORT target's SpikecError
                cause = exc.__cause__ if isinstance(exc, SpikecError) else exc
                if not isinstance(cause, ort_errors()):
                    raise
                raise SpikecError(f"{model_path}: graph '{graph or '?'}' cannot run on --inputs {inputs_path}: "
                                  f"{condense(cause)}") from exc
            if output is not None:
                with atomic.atomic_path(output) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, **outs)
        report = model.stats() if stats or stats_json else None
        if stats_json:
            atomic.write_text(stats_json, json.dumps(report, indent=2) + "\n")
        if generating:
            click.echo(text)
        elif output is not None:
            click.echo(f"wrote {len(outs)} outputs to {output}")
        else:
            for k, v in outs.items():
                click.echo(f"{k}: {v.dtype} {list(v.shape)}")
        if stats:
            (_print_fpga if target == "fpga" else _print_stats)(report)
