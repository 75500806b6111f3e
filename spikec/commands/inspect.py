"""`spikec inspect`: summarise an ONNX model or a .sbin file."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _print_onnx_summary(info: dict, indent: str = "") -> None:
    def fmt(v: dict) -> str:
        shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
        return f"{indent}  {v['name']}: {v['dtype']} {shape}"

    click.echo(f"{indent}inputs:")
    for v in info["inputs"]:
        click.echo(fmt(v))
    click.echo(f"{indent}outputs:")
    for v in info["outputs"]:
        click.echo(fmt(v))
    click.echo(f"{indent}opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in info["opsets"].items()))
    click.echo(f"{indent}parameters: {info['parameters']:,} ({info['parameter_bytes']:,} bytes)")
    click.echo(f"{indent}nodes: {info['nodes']}")
    for op, n in sorted(info["ops"].items(), key=lambda kv: (-kv[1], kv[0])):
        click.echo(f"{indent}  {op:<32} {n:>6}")


def _inspect_sbin(path: Path, as_json: bool) -> None:
    from spikec import ir as spir
    from spikec.isa import container as C
    from spikec.isa.hwconfig import HwConfig
    from spikec.package import SbinModel

    with SbinModel(path) as m:
        sections = [
            {"name": s.name, "kind": getattr(s.kind, "name", str(s.kind)), "offset": s.offset, "size": s.size}
            for s in m.file.sections.values()
        ]
        graphs = {}
        for role in m.roles:
            model = m.model(role)
            graphs[role] = spir.summary(model)
            graphs[role]["spiking_layers"] = _spiking_layers(model)
        manifest = m.manifest
        hwconfig = None
        if C.ISA_HWCONFIG in m.file.sections:  # compiled with --isa: the accelerator it targets
            hwconfig = HwConfig.from_json(m.file.read(C.ISA_HWCONFIG), f"{path}: section '{C.ISA_HWCONFIG}'").to_dict()
    info = {
        "file": str(path),
        "size": path.stat().st_size,
        "sections": sections,
        "modality": manifest.get("modality"),
        "timesteps": manifest.get("timesteps"),
        "graphs": graphs,
        "hwconfig": hwconfig,
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{path}: .sbin, {info['size']:,} bytes, {len(sections)} sections")
    tensors = [s for s in sections if s["kind"] == "TENSOR"]
    for s in sections:
        if s["kind"] != "TENSOR":
            click.echo(f"  {s['name']:<40} {s['kind']:<9} {s['size']:>12,} bytes @ {s['offset']}")
    if tensors:  # one per big weight: thousands on a 7B model, listed by --json
        click.echo(f"  {'tensor/* (weights, --json lists them)':<40} {'TENSOR':<9} "
                   f"{sum(s['size'] for s in tensors):>12,} bytes in {len(tensors)} sections")
    if hwconfig is not None:
        h = hwconfig
        click.echo(f"accelerator (isa/hwconfig): '{h['name']}', {h['clock_mhz']:g} MHz, PE array {h['pe_rows']}x{h['pe_cols']}, "
                   f"{h['vec_lanes']} vector lanes, WGT {h['wgt_kib']} KiB in addresses of {h.get('wgt_addr_bytes', 1)} "
                   f"byte(s), DRAM {h['dram_mib']} MiB at {h['dram_gbps']:g} GB/s")
    if info["modality"]:
        click.echo("modalities: " + ", ".join(f"{k}={v}" for k, v in info["modality"].items()))
    if info["timesteps"]:
        click.echo("timesteps per modality: " + json.dumps(info["timesteps"], sort_keys=True))
    for role, summary in graphs.items():
        click.echo(f"graph '{role}':")
        _print_onnx_summary(summary, indent="  ")
        layers = summary.get("spiking_layers") or []
        if layers:
            click.echo(f"  spiking layers ({len(layers)}): T per modality, weight bits and groups")
            for row in layers:
                T = " ".join(f"{k}={v}" for k, v in row["timesteps"].items())
                w = f"  W{row['wbits']}" if "wbits" in row else "  (activation x activation)"
                g = f" groups of {row['group_size']}" if row.get("group_size") else (" per channel" if "wbits" in row else "")
                click.echo(f"    {row['name']}  {T}{w}{g}")


def _spiking_layers(model) -> list[dict]:
    """Each spiking (or quantized) product: its name (the module path the export gave the
    node) and T per modality."""
    from spikec import ops

    names = ops.modalities(model)
    rows = []
    for n in ops.spikec_nodes(model, ops.SPIKE_MATMUL, ops.QUANT_LINEAR, ops.QUANT_MATMUL):
        row = {"name": n.name, "timesteps": dict(zip(names, ops.get_timesteps(n)))}
        i = ops.w_val_index(n)
        w = n.inputs[i] if len(n.inputs) > i else None
        s = n.inputs[i + 1] if len(n.inputs) > i + 1 else None
        if w is not None and w.const_value is not None and ops.attr(n, "wbits") is not None:
            row["wbits"] = int(ops.attr(n, "wbits"))
            # shapes only (no weight is read): s_w [M] per channel, [n, M] groups of K / n rows
            if s is not None and s.shape is not None and len(s.shape) == 2 and w.shape is not None:
                row["group_size"] = int(w.shape[0]) // int(s.shape[0])
        rows.append(row)
    return rows


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect_command(path: Path, as_json: bool) -> None:
    """Summarise PATH: an ONNX model (I/O, op histogram, parameters) or a .sbin
    (sections, timesteps per modality, and each graph's summary)."""
    from spikec import ir as spir
    from spikec.isa.container import is_sbin

    if is_sbin(path):
        _inspect_sbin(path, as_json)
        return
    from spikec.errors import SpikecError

    try:
        model = spir.load_model(path)
    except SpikecError as exc:
        if not path.is_file():
            raise
        # neither kind: say both were tried
        raise SpikecError(f"{exc} (nor a .sbin: it does not start with the .sbin magic)") from None
    info = spir.summary(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{path}")
    _print_onnx_summary(info)
