"""`spikec compile`: run the pass pipeline over a model (one ONNX file or an export folder)."""

from __future__ import annotations

from pathlib import Path

import click

from spikec.commands import OutputFile
from spikec.passes import PASSES, QDQ_PIPELINE, SPIKING_PIPELINE
from spikec.passes.options import DEFAULT_CALIB_SAMPLES, DEFAULT_PERCENTILE


@click.command("compile")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=OutputFile(file_suffixes=(".sbin", ".onnx")),
              help="Output: MODEL.sbin (one file for `spikec run`; needed with --isa), or a .onnx file for a "
                   "single graph, or a folder for an export folder INPUT.")
@click.option(
    "--dump-ir",
    "dump_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the IR after every pass (NN-<pass>.onnx and .txt) and report.json to this folder.",
)
@click.option(
    "--passes",
    "pass_list",
    default=None,
    help=f"Comma-separated pipeline (default: {','.join(SPIKING_PIPELINE)}; for a QDQ input: "
         f"{','.join(QDQ_PIPELINE)}). Known passes: {', '.join(sorted(PASSES))}.",
)
@click.option("--report", "report_path", type=OutputFile(), help="Write the JSON compile report here.")
@click.option("--wbits", type=click.Choice(["8", "4"]), default="8", show_default=True, help="Weight bits (symmetric codes; scales per output channel or per --group-size).")
@click.option("--int4-storage", type=click.Choice(["packed", "int8"]), default="packed", show_default=True,
              help="How a .sbin stores W4 codes: two per byte (half the file; onnxruntime's MatMulNBits reads them, "
                   "holding half a byte per weight of its own), or one per byte (onnxruntime reads them in place "
                   "with no copy: for a model larger than memory allows otherwise). docs/sbin.md.")
@click.option("--group-size", type=click.Choice(["0", "32", "64", "128"]), default="0", show_default=True,
              help="Weight scales per group of this many input features (GPTQ/AWQ style; 0: one per output channel). "
                   "A layer whose input size it does not divide keeps per-channel scales. tc-lif only.")
@click.option("--weight-method", type=click.Choice(["rtn", "gptq"]), default="rtn", show_default=True,
              help="Weight codes: round to nearest, or GPTQ (RTN's scale grid, codes that minimise the "
                   "layer's output error on the calibration inputs; needs --calib).")
@click.option("--gptq-damp", type=float, default=0.01, show_default=True,
              help="GPTQ dampening: added to diag(H) as a fraction of its mean.")
@click.option("--gptq-act-order", is_flag=True, help="GPTQ: quantize input features by decreasing diag(H).")
@click.option("--act-scale", type=click.Choice(["auto", "static", "dynamic"]), default="auto", show_default=True,
              help="Activation scales: static per modality from calibration, or dynamic per token (auto: static when --calib is given).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data: a folder of image+prompt pairs, or an .npz of graph inputs.")
@click.option("--calib-method", type=click.Choice(["max", "percentile", "mse"]), default="max", show_default=True,
              help="With --calib: static activation scales from max |x|, a percentile of |x|, or the scale of least "
                   "squared error.")
@click.option("--percentile", type=float, default=DEFAULT_PERCENTILE, show_default=True, help="Percentile of |x| for --calib-method percentile.")
@click.option("--calib-samples", type=int, default=DEFAULT_CALIB_SAMPLES, show_default=True, help="Calibration image+prompt pairs used at most.")
@click.option("--smooth", type=float, default=None, help="SmoothQuant alpha (folded into the preceding norm or linear layer).")
@click.option("--neuron", type=click.Choice(["tc-lif", "if"]), default="tc-lif", show_default=True,
              help="tc-lif: a b-bit code in b-1 timesteps (SpikeMLLM); if: rate-coded integrate-and-fire, "
                   "2^T - 1 timesteps (the baseline).")
@click.option("--tv", type=int, default=None, help="Timesteps of vision tokens (default 3).")
@click.option("--tt", type=int, default=None, help="Timesteps of text tokens (default 4).")
@click.option("--budget", type=float, default=None, help="Effective timesteps per token: search Tv/Tt (and per layer) for least error.")
@click.option("--spike-attention", is_flag=True, help="Also spike the attention products Q @ K^T and P @ V.")
@click.option("--isa", is_flag=True, help="Also lower the spiking products to the accelerator (needs -o MODEL.sbin; "
              "for `spikec run --target fpga` and `spikec disasm`).")
@click.option("--exact-vector", is_flag=True, help="Norms, softmax and SiLU with the accelerator's exact float32 "
              "numerics (implied by --isa): the same bits on every target, slower on ONNX Runtime (docs/passes.md).")
@click.option("--rotate", is_flag=True, help="QuaRot's Hadamard rotation of the residual stream, folded into the "
              "weights before quantizing (combines with --weight-method gptq; export folders only; passes/rotate.py).")
@click.option("--no-online-hadamard", "online_hadamard", flag_value=False, default=True,
              help="With --rotate: leave out QuaRot's online Hadamard before each down projection.")
@click.option("--no-attention-hadamard", "attention_hadamard", flag_value=False, default=True,
              help="With --rotate --spike-attention: leave the attention products unrotated.")
@click.option("--hwconfig", default=None, help="With --isa: the hardware configuration (built-in name or JSON path; "
              "default: default).")
@click.option("--no-per-layer", "per_layer", flag_value=False, default=True, help="With --budget: one T per modality for all layers.")
def compile_command(input_path: Path, output: Path, dump_dir: Path | None, pass_list: str | None, report_path: Path | None,
                    wbits: str, act_scale: str, calib: Path | None, calib_method: str, percentile: float, calib_samples: int,
                    smooth: float | None, neuron: str, tv: int | None, tt: int | None, budget: float | None,
                    spike_attention: bool, isa: bool, hwconfig: str | None, per_layer: bool, weight_method: str = "rtn",
                    gptq_damp: float = 0.01, gptq_act_order: bool = False, exact_vector: bool = False,
                    rotate: bool = False, online_hadamard: bool = True, group_size: str = "0",
                    attention_hadamard: bool = True, int4_storage: str = "packed") -> None:
    """Compile INPUT (an ONNX file, or an export folder of `spikec export`) into OUTPUT."""
    from spikec import atomic
    from spikec import progress as P
    from spikec.compiler import compile_path
    from spikec.errors import SpikecError
    from spikec.schema import naming_file
    from spikec.passes.options import SpikeOptions

    options = SpikeOptions(
        wbits=int(wbits), act_scale=act_scale, calib=str(calib) if calib else None, calib_method=calib_method,
        percentile=percentile, calib_samples=calib_samples, smooth=smooth, neuron=neuron, tv=tv, tt=tt,
        budget=budget, spike_attention=spike_attention, per_layer=per_layer,
        weight_method=weight_method, gptq_damp=gptq_damp, gptq_act_order=gptq_act_order, exact_vector=exact_vector,
        rotate=rotate, online_hadamard=online_hadamard, group_size=int(group_size),
        attention_hadamard=attention_hadamard,
    ).validate()
    if hwconfig is not None and not isa:
        raise SpikecError("--hwconfig applies to --isa only")
    if int4_storage != "packed" and wbits != "4":
        import logging

        logging.getLogger("spikec").warning("--int4-storage has no effect without --wbits 4")
    if pass_list is not None and not [n for n in pass_list.split(",") if n.strip()]:
        raise SpikecError("--passes: the list is empty; give pass names (or leave --passes out for the default "
                          "pipeline)")
    if report_path is not None:
        atomic.check_output(report_path, is_dir=False, inputs=[input_path, output, calib], option="--report")
    if budget is not None and not calib and (pass_list is None or "msts" in pass_list):
        # the msts pass would say so too, but only after the passes before it have run
        from spikec.passes.msts import BUDGET_NEEDS_CALIB

        raise SpikecError(BUDGET_NEEDS_CALIB)
    if isa:  # a bad configuration is an error before any pass runs
        from spikec.isa.hwconfig import HwConfig

        HwConfig.load(hwconfig or "default")
    names = None if pass_list is None else [n.strip() for n in pass_list.split(",") if n.strip()]
    # one bar per graph over its passes on a terminal; the "[i/n] pass" lines in a pipe; nothing with -q
    with naming_file(input_path), P.pass_lines(lambda m: click.echo(m, err=True)) as progress:
        report = compile_path(input_path, output, pipeline=names, options=options, dump_dir=dump_dir,
                              progress=progress, isa=isa, hwconfig=hwconfig or "default", int4_storage=int4_storage)
    # The output is complete and renamed by now: the summary below only reads the report,
    # and every value is formatted defensively (`_fmt`), so printing it cannot fail.
    if report_path is not None:
        atomic.write_text(report_path, report.to_json())
    if not P.is_quiet():  # -q: the result line only; the tables are in --report / --dump-ir
        # the pass column as wide as the longest name (per-graph passes read "lower-ort:lm")
        width = max([28] + [len(str(r.name)) for r in report.passes])
        click.echo(f"{'pass':<{width}} {'time (s)':>9} {'nodes':>7} {'param bytes':>12}  changed")
        for r in report.passes:
            click.echo(f"{_fmt(r.name, f'<{width}')} {_fmt(r.wall_s, '>9.3f')} {_fmt(r.nodes, '>7')} "
                       f"{_fmt(r.parameter_bytes, '>12')}  {'yes' if r.modified else 'no'}")
        graphs = report.extra.get("graphs") or {"": report.extra}
        for role, extra in (graphs.items() if isinstance(graphs, dict) else ()):
            _print_layers(str(role), extra if isinstance(extra, dict) else {})
        if isa:
            _print_isa(report.extra.get("isa") or {})
        if dump_dir is not None:
            click.echo(f"IR dumps and report.json in {dump_dir}")
    # the result last, where a reader of the terminal looks for it
    click.echo(f"compiled {input_path} -> {output}")


def _fmt(value, spec: str = "") -> str:
    """`format(value, spec)`, or the value as text padded like it when the spec does not
    apply (None, a string where a number was expected): a summary line never fails."""
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        align = "".join(c for c in spec[:1] if c in "<>^")
        width = "".join(c for c in spec.lstrip("<>^").split(".")[0].split(",")[0] if c.isdigit())
        return format(str(value), f"{align}{width}")


def _timesteps(value) -> str:
    """Timesteps as people read them: {"text": 4, "vision": 2} -> "text 4, vision 2"; a
    single T as is (never a Python dict or list in a summary line)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
    if isinstance(value, (list, tuple)):
        return "/".join(map(str, value)) or "none"
    return str(value)


def _get(d, key, default=None):
    return d.get(key, default) if isinstance(d, dict) else default


def _print_layers(role: str, extra: dict) -> None:
    msts = _get(extra, "msts") or {}
    if _get(msts, "mode") == "budget":
        u = _get(msts, "uniform") or {}
        click.echo(f"{role + ': ' if role else ''}msts: T {_timesteps(_get(msts, 'timesteps'))}; budget "
                   f"{_get(msts, 'budget')} (used {_fmt(_get(msts, 'budget_used'), '.3f')}), error "
                   f"{_fmt(_get(msts, 'error'), '.6g')}; uniform T {_timesteps(_get(u, 'T'))}, error "
                   f"{_fmt(_get(u, 'error'), '.6g')}")
    rows = _get(extra, "layers") or []
    if not rows or not isinstance(rows, list):
        return
    # names are module paths from the checkpoint (model.language_model.layers.3.mlp.down_proj): shown whole
    width = max([26] + [len(str(_get(r, "name", ""))) for r in rows])
    click.echo(f"{role + ': ' if role else ''}{'layer':>5} {'name':<{width}} {'T':<18} {'bits':>4} {'scale':<8} {'MED':>6}")
    for r in rows:
        timesteps = _get(r, "timesteps") or {}
        T = "/".join(f"{str(k)[:1]}{v}" for k, v in timesteps.items()) if isinstance(timesteps, dict) else str(timesteps)
        med = "" if _get(r, "med") is None else _fmt(_get(r, "med"), ".3f")
        click.echo(f"{'':{len(role) + 2 if role else 0}}{str(_get(r, 'layer', '')):>5} {str(_get(r, 'name', '')):<{width}} "
                   f"{T:<18} {str(_get(r, 'wbits')):>4} {_fmt(_get(r, 'act_scale'), '<8')} {med:>6}")


def _print_isa(isa: dict) -> None:
    click.echo(f"accelerator ({_get(isa, 'hwconfig')}): {_get(isa, 'kernels')} kernels, {_get(isa, 'vec_kernels', 0)} "
               f"vector kernels, {_fmt(_get(isa, 'weights_bytes'), ',')} weight bytes, representative program "
               f"{_get(isa, 'program_instructions')} instructions")
    graphs = _get(isa, "graphs") or {}
    for role, g in (graphs.items() if isinstance(graphs, dict) else ()):
        host = _get(g, "host_ops") or {}
        vecs = _get(g, "vec_kernels") or {}
        ops = ", ".join(f"{k} {v}" for k, v in host.items()) if isinstance(host, dict) else ""
        vec = ", ".join(f"{k} {v}" for k, v in vecs.items()) if isinstance(vecs, dict) else ""
        click.echo(f"  {role}: {_get(g, 'device_kernels')} kernels on the device, vector kernels: {vec or 'none'}; "
                   f"host fallback: {ops or 'none'}")
        not_lowered = _get(g, "not_lowered") or {}
        for node, why in (not_lowered.items() if isinstance(not_lowered, dict) else ()):
            click.echo(f"    not lowered: {node}: {why}")
    click.echo(f"  note: {_get(isa, 'note')}")

