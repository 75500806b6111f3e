"""The compile driver: load, run the pass pipeline, save.

`compile_onnx` compiles one ONNX file; `compile_folder` compiles every graph of a front-end
export folder together (one report); `compile_path` picks between them and is what
`spikec compile` calls. All output goes through `write_output` (one function: an .onnx, a
folder, or the .sbin container of spikec/package.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir

from spikec import atomic
from spikec import ir as spir
from spikec import ops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.passes import (GENERIC_PIPELINE, PASSES, QDQ_PIPELINE, SPIKING_PIPELINE, CompileReport, PassManager, SpikecPass,
                           with_vector_numerics)
from spikec.passes.options import CompileContext, SpikeOptions
from spikec.passes.lower_ort import LowerOrt, has_spiking_ops
from spikec.passes.rotate import with_rotation

log = logging.getLogger(__name__)


def build_pipeline(names: Sequence[str], context: CompileContext | None = None) -> list[SpikecPass]:
    """Instantiate passes by name; an unknown name is a user error listing the known ones."""
    passes = []
    context = context or CompileContext()
    for name in names:
        cls = PASSES.get(name)
        if cls is None:
            raise SpikecError(f"--passes: unknown pass '{name}' (known: {', '.join(sorted(PASSES))})")
        passes.append(cls(context) if getattr(cls, "uses_context", False) else cls())
    return passes


def default_pipeline(model: ir.Model, options: SpikeOptions | None = None) -> tuple[str, ...]:
    """SPIKING_PIPELINE, or QDQ_PIPELINE for a model that already has Q/DQ nodes; with
    options.exact_vector (--isa, --exact-vector) the vector-numerics pass too."""
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph)
    names = QDQ_PIPELINE if qdq else SPIKING_PIPELINE
    if options is not None and options.rotate and not qdq:
        names = with_rotation(names)
    return with_vector_numerics(names) if options is not None and options.exact_vector else names


@contextlib.contextmanager
def weight_spill(output: Path):
    """A private folder beside `output` for the weights passes make (spikec.ir.spill_weights),
    removed at the end: a compile holds one layer's weights in memory, not the model's.
    Beside the output rather than in /tmp, which may be memory (tmpfs)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.weights-", dir=output.parent) as tmp:
        with spir.spill_weights(tmp):
            yield


# The temporary --dump-ir folders of the compiles in progress: a compile called by another
# (compile_path -> compile_folder) writes into its caller's, not a second one.
_DUMPS_IN_PROGRESS: set[Path] = set()


@contextlib.contextmanager
def dump_folder(dump_dir: str | Path | None, *, output: str | Path | None = None, inputs=()):
    """`--dump-ir DIR` written whole or not at all: yields a temporary folder beside DIR
    (None when `dump_dir` is None) that is renamed onto DIR when the block ends without an
    error and removed when it raises (spikec.atomic.atomic_path), so a compile that fails
    partway leaves no partial dump behind. DIR is checked before any work: an existing
    non-empty folder is replaced only when an earlier --dump-ir wrote it
    (passes/manager.py, `is_dump_folder`), and DIR may neither be nor hold the output or
    an input (`inputs`), since replacing DIR would delete them. Raises SpikecError naming
    --dump-ir."""
    from spikec.passes.manager import is_dump_folder

    if dump_dir is None or Path(dump_dir) in _DUMPS_IN_PROGRESS:
        yield dump_dir
        return
    final = Path(dump_dir)
    if output is not None and (Path(output).resolve() == final.resolve()
                               or Path(output).resolve().is_relative_to(final.resolve())):
        raise SpikecError(f"--dump-ir {dump_dir}: is or holds the output -o {output}; give the dumps a folder of "
                          "their own")
    atomic.check_output(final, is_dir=True, inputs=inputs, replaceable=is_dump_folder, option="--dump-ir")
    with atomic.atomic_path(final, is_dir=True, replaceable=is_dump_folder) as tmp:
        _DUMPS_IN_PROGRESS.add(tmp)
        try:
            yield tmp
        finally:
            _DUMPS_IN_PROGRESS.discard(tmp)


# ---------------------------------------------------------------- calibration


def _role_in_export(path: Path) -> tuple[Path, str] | None:
    """(export folder, role) when `path` is a graph named by the manifest.json beside it."""
    from spikec.frontend import manifest as mf

    if not (path.parent / mf.MANIFEST).is_file():
        return None
    manifest = mf.load_json(path.parent)
    for role in manifest["graphs"]:
        if mf.graph_path(path.parent, manifest, role) == path.resolve():
            return path.parent, role
    return None


def calibration_feeds(options: SpikeOptions, model: ir.Model, input_path: Path, role: str | None = None,
                      folder_feeds: dict | None = None) -> list[dict] | None:
    from spikec import calibration as C

    if not options.calib:
        return None
    calib = Path(options.calib)
    names = [v.name for v in model.graph.inputs]
    if folder_feeds is not None:
        return folder_feeds.get(role) or None
    if calib.suffix == ".npz" and calib.is_file():
        return C.load_npz(calib, names, role)[: max(options.calib_samples, 1) * 8]
    if calib.is_dir():
        found = _role_in_export(input_path)
        if found is None:
            raise SpikecError(f"--calib {calib}: a folder of image+prompt pairs needs an export folder (or a graph "
                              f"inside one) as INPUT, to run the checkpoint's processor; for a single ONNX file "
                              f"pass an .npz of its graph inputs")
        return C.export_folder_feeds(found[0], calib, options.calib_samples).get(found[1]) or None
    if not calib.exists():
        raise SpikecError(f"--calib {calib}: not found")
    raise SpikecError(f"--calib {calib}: a file that is not an .npz of graph inputs; give an .npz, or a folder of "
                      f"image+prompt pairs (data.jsonl, or NAME.png + NAME.txt)")


# ---------------------------------------------------------------- reports


def layer_table(model: ir.Model, med: dict | None) -> list[dict]:
    """Per spiking (or quantized) product: T per modality, scales, bits, MED of its layer."""
    names = ops.modalities(model)
    meds = {r["layer"]: r.get("med") for r in (med or {}).get("layers", [])}
    rows = []
    for node in ops.spikec_nodes(model, ops.QUANT_LINEAR, ops.QUANT_MATMUL, ops.SPIKE_MATMUL):
        T = ops.get_timesteps(node)
        enc = node
        if node.op_type == ops.SPIKE_MATMUL:
            p = node.inputs[0].producer()
            enc = p if p is not None else node
        scale_kind = ops.attr(enc, "act_scale", "dynamic")
        scales = None
        if scale_kind == "static":
            clip = ops.clip_table(enc, len(names))
            scales = {}
            for m, n in enumerate(names):
                c = float(clip[m, T[m] - 1]) if T[m] <= ops.CLIP_T else float("nan")
                scales[n] = None if np.isnan(c) else float(R.static_scale(c, T[m]))  # a silent layer: 1.0
        layer = ops.attr(node, "layer")
        rows.append({
            "name": node.name, "op": node.op_type, "layer": layer, "timesteps": dict(zip(names, T)),
            "wbits": ops.attr(node, "wbits", ops.attr(node, "bbits")), "neuron": ops.attr(node, "neuron"),
            "act_scale": scale_kind, "act_scales": scales, "med": meds.get(layer),
        })
    return rows


def _finish_report(report: CompileReport, ctx: CompileContext, model: ir.Model) -> CompileReport:
    report.extra.update({k: v for k, v in ctx.results.items()})
    report.extra["options"] = {k: v for k, v in vars(ctx.options).items()}
    report.extra["calibration"] = {"source": ctx.calib_source or None, "feeds": len(ctx.feeds or [])}
    if ops.spikec_nodes(model):
        report.extra["layers"] = layer_table(model, ctx.results.get("med"))
    return report


# ---------------------------------------------------------------- output


def write_output(kind: str, output: Path, graphs: dict[str, ir.Model], *, reports: dict[str, dict],
                 source_dir: Path | None = None) -> list[Path]:
    """Write the compiled result: `kind` 'onnx' (one graph to OUTPUT.onnx, MED beside it as
    OUTPUT.med.json/.png) or 'folder' (a folder mirroring the export folder: graphs under
    their manifest names, manifest.json and processor/ copied, <graph>.med.json/.png and
    report.json). Everything is written under temporary names and renamed when complete."""
    from spikec.passes.med import write_artifacts

    if kind == "onnx":
        (name, model), = graphs.items()
        written = spir.save_model(model, output)
        med = reports.get(name, {}).get("med")
        if med is not None:
            written += write_artifacts(med, output.with_suffix(""), title=output.name)
        return written
    from spikec.frontend import manifest as mf
    from spikec.paths import files_inside

    with atomic.atomic_path(output, is_dir=True, replaceable=atomic.is_spikec_folder) as tmp:
        # every path below comes from the source manifest: resolved inside its folder (reading)
        # and inside the new one (writing), so nothing outside either is touched
        manifest = mf.load_json(source_dir)
        for role, model in graphs.items():
            spir.save_model(model, mf.graph_path(tmp, manifest, role))
            med = reports.get(role, {}).get("med")
            if med is not None:
                write_artifacts(med, tmp / role, title=f"{role} ({source_dir.name})")
        proc = mf.processor_path(source_dir, manifest)
        if proc is not None and proc.is_dir():
            dest = mf.processor_path(tmp, manifest)
            for rel, f in files_inside(proc, where=f"{source_dir / mf.MANIFEST}: processor file"):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest / rel)
        manifest["compiled"] = {"by": "spikec compile", "passes": "see report.json"}
        # T per modality as msts chose it, per graph (what `spikec inspect` shows)
        manifest["timesteps"] = {
            role: (reports.get(role, {}).get("msts") or {}).get("timesteps")
            for role in graphs if isinstance((reports.get(role, {}).get("msts") or {}).get("timesteps"), dict)
        }
        atomic.write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        atomic.write_text(tmp / "report.json", json.dumps(reports, indent=2, default=_json_default) + "\n")
    return [output]


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


# ---------------------------------------------------------------- drivers


def _compile_model(model: ir.Model, ctx: CompileContext, pipeline: Sequence[str] | None, input_name: str,
                   dump_dir, progress) -> CompileReport:
    names = list(pipeline) if pipeline is not None else list(default_pipeline(model, ctx.options))
    manager = PassManager(build_pipeline(names, ctx), dump_dir=dump_dir, progress=progress)
    report = manager.run(model, input_name=input_name)
    lower_for_targets(model, report, dump_dir, progress)
    return _finish_report(report, ctx, model)


def lower_for_targets(model: ir.Model, report: CompileReport, dump_dir, progress) -> None:
    """Run the ORT target's lowering (passes/lower_ort.py, `fused` mode) on a clone of the
    compiled graph (weights shared): verified like every pass, dumped to `<dump>/lower-ort/`,
    its record appended to `report.passes`. The compiled graph itself is unchanged: the
    .sbin keeps the portable spiking graph (why: passes/lower_ort.py)."""
    if not has_spiking_ops(model):
        return
    sub_dump = Path(dump_dir) / "lower-ort" if dump_dir is not None else None
    lowered = PassManager([LowerOrt()], dump_dir=sub_dump, progress=progress).run(model.clone(), input_name=report.input)
    for record in lowered.passes:
        record.index = len(report.passes) + 1
        record.dumps = [f"lower-ort/{d}" for d in record.dumps]
        report.passes.append(record)
    if dump_dir is not None:  # the top report lists every pass, lower-ort included
        atomic.write_text(Path(dump_dir) / "report.json", report.to_json())


def compile_onnx(
    input_path: str | Path,
    output_path: str | Path,
    *,
    pipeline: Sequence[str] | None = GENERIC_PIPELINE,
    options: SpikeOptions | None = None,
    dump_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompileReport:
    """Compile one ONNX file through `pipeline` (None: the default spiking or QDQ pipeline).
    `dump_dir` (--dump-ir) is written whole or not at all (`dump_folder`). Raises
    SpikecError naming the file, node or option at fault."""
    output_path = Path(output_path)
    if output_path.suffix != ".onnx":
        raise SpikecError(f"-o {output_path}: unsupported output type '{output_path.suffix}' (this version writes .onnx)")
    if Path(input_path).resolve() == output_path.resolve():
        raise SpikecError(f"-o {output_path}: the output would overwrite the input; choose another path")
    options = (options or SpikeOptions()).validate()
    if options.rotate or (pipeline is not None and "rotate" in pipeline):
        raise SpikecError(f"--rotate: {input_path} is one graph; rotation changes every graph that feeds the "
                          "language model (embedding, vision projector), so compile the export folder instead")
    with dump_folder(dump_dir, output=output_path, inputs=[input_path, options.calib or None]) as dump_dir, \
            weight_spill(output_path):
        model = spir.load_model(Path(input_path))
        ctx = CompileContext(options=options)
        found = _role_in_export(Path(input_path))
        if found is not None and found[1] == "vision":
            ctx.graph_modality = ops.DEFAULT_MODALITIES.index("vision")
        if pipeline is None or any(n in ("quantize", "import-qdq", "med", "msts") for n in pipeline):
            ctx.feeds = calibration_feeds(options, model, Path(input_path))
            ctx.calib_source = options.calib or ""
        report = _compile_model(model, ctx, pipeline, str(input_path), dump_dir, progress)
        write_output("onnx", output_path, {"graph": model}, reports={"graph": report.extra})
    return report


def compile_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    *,
    pipeline: Sequence[str] | None = None,
    options: SpikeOptions | None = None,
    dump_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompileReport:
    """Compile every graph of an export folder (vision, embed, lm) together: one report.
    `dump_dir` (--dump-ir) gets one subfolder per graph, written whole or not at all
    (`dump_folder`). Raises SpikecError naming the file, node or option at fault."""
    from spikec.frontend import manifest as mf

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.resolve() == output_dir.resolve():
        raise SpikecError(f"-o {output_dir}: the output would overwrite the input folder; choose another path")
    manifest = mf.read(input_dir)
    for role in manifest["graphs"]:  # every graph and its external data checked before any work
        spir.check_model_file(mf.graph_path(input_dir, manifest, role))
    options = (options or SpikeOptions()).validate()
    with dump_folder(dump_dir, output=output_dir, inputs=[input_dir, options.calib or None]) as dump_dir:
        return _compile_folder(input_dir, output_dir, manifest, options, pipeline, dump_dir, progress)


def _compile_folder(input_dir: Path, output_dir: Path, manifest: dict, options: SpikeOptions, pipeline, dump_dir,
                    progress) -> CompileReport:
    from spikec import calibration as C
    from spikec.frontend import manifest as mf

    folder_feeds = None
    if options.calib and Path(options.calib).is_dir():
        progress and progress(f"calibration: running {options.calib} through the float graphs")
        folder_feeds = C.export_folder_feeds(input_dir, options.calib, options.calib_samples)
    modality_ids = manifest.get("modality", ops.MODALITY_IDS)
    # The language model first: with --budget its search picks Tv, which the vision encoder then uses.
    roles = sorted(manifest["graphs"], key=lambda r: {"lm": 0, "vision": 1}.get(r, 2))
    graphs, reports, records, extra = {}, {}, [], {"graphs": {}}
    with weight_spill(output_dir):
        for role in roles:
            path = mf.graph_path(input_dir, manifest, role)
            opts = SpikeOptions(**vars(options))
            if role != "lm" and "lm" in reports:
                chosen = (reports["lm"].get("msts") or {}).get("timesteps")
                if options.budget is not None and isinstance(chosen, dict) and "vision" in chosen:
                    opts.budget, opts.tv = None, chosen["vision"]
            graphs[role], report = _compile_role(role, path, opts, modality_ids, pipeline, folder_feeds,
                                                 Path(dump_dir) / role if dump_dir is not None else None,
                                                 (lambda m, r=role: progress(f"{r}: {m}")) if progress else None)
            reports[role] = extra["graphs"][role] = report.extra
            for rec in report.passes:
                rec.name = f"{role}/{rec.name}"
                records.append(rec)
        write_output("folder", output_dir, graphs, reports=reports, source_dir=input_dir)
    return CompileReport(input=str(input_dir), passes=records, properties=[], extra=extra)


def _compile_role(role: str, path: Path, opts: SpikeOptions, modality_ids: dict, pipeline, folder_feeds, dump_dir,
                  progress) -> tuple[ir.Model, CompileReport]:
    """One graph of an export folder through the pipeline (weights stay memory-mapped)."""
    model = spir.load_model(path)
    ctx = CompileContext(options=opts, graph_modality=modality_ids.get("vision") if role == "vision" else None)
    if role == "vision" and "modality" not in [v.name for v in model.graph.inputs]:
        ctx.graph_modality = modality_ids.get("vision", 1)
    ctx.feeds = calibration_feeds(opts, model, path, role, folder_feeds)
    ctx.calib_source = opts.calib or ""
    if opts.act_scale == "auto" and not ctx.feeds:
        opts.act_scale = "dynamic"
    return model, _compile_model(model, ctx, pipeline, str(path), dump_dir, progress)


INT4_STORAGE = ("packed", "int8")  # how a .sbin stores W4 codes (--int4-storage)


def compile_path(input_path: str | Path, output: str | Path, *, isa: bool = False, hwconfig: str = "default",
                 int4_storage: str = "packed", **kw) -> CompileReport:
    """A folder with manifest.json compiles as an export folder, anything else as one ONNX file.

    An OUTPUT ending in .sbin gets the whole compiled model packed into one container
    (docs/sbin.md): the folder is compiled beside it under a temporary name, packed with
    the compile report, and removed. With `isa`, the spiking products are also lowered to
    the accelerator (passes/lower_isa.py) for the hardware configuration `hwconfig`
    (a built-in name or a JSON path), adding the sections isa/hwconfig, isa/weights,
    isa/kernels and isa/program (docs/isa.md, "Lowering and the fpga target"); `isa` implies
    `options.exact_vector` (the device computes norms, softmax and SiLU, so every target
    must compute them alike: the vector-numerics pass). `dump_dir` (--dump-ir) is written
    whole or not at all (`dump_folder`). `int4_storage` (a .sbin OUTPUT): "packed" stores W4
    codes two per byte (TENSOR_INT4, docs/sbin.md), "int8" one per byte, which onnxruntime
    can use with no copy at all (docs/ort-target.md, "Memory"). Raises SpikecError naming
    the file, node or option at fault, before any work for a bad OUTPUT or dump folder."""
    output = Path(output)
    if int4_storage not in INT4_STORAGE:
        raise SpikecError(f"--int4-storage: '{int4_storage}' is not one of {', '.join(INT4_STORAGE)}")
    if int4_storage != "packed" and output.suffix != ".sbin":
        raise SpikecError(f"--int4-storage {int4_storage}: the storage of a .sbin; -o {output} is not one")
    from spikec.isa.container import is_sbin

    if is_sbin(input_path):
        raise SpikecError(f"{input_path}: is a compiled .sbin, not a model to compile (INPUT is an export folder of "
                          "`spikec export` or an ONNX file); run it with `spikec run`, look inside with `spikec inspect`")
    if Path(input_path).is_dir() and output.suffix == ".onnx":
        raise SpikecError(f"-o {output}: an export folder compiles to a .sbin or to a folder; a .onnx output is for "
                          "one graph (give a graph file as INPUT)")
    opts = kw.get("options")
    atomic.check_output(output, is_dir=output.suffix not in (".sbin", ".onnx"), replaceable=atomic.is_spikec_folder,
                        inputs=[input_path, kw.get("dump_dir"), getattr(opts, "calib", None) or None])
    if isa:
        kw["options"] = dataclasses.replace(kw.get("options") or SpikeOptions(), exact_vector=True)
    with dump_folder(kw.pop("dump_dir", None), output=output,
                     inputs=[input_path, getattr(opts, "calib", None) or None]) as dump_dir:
        return _compile_path(Path(input_path), output, isa=isa, hwconfig=hwconfig, dump_dir=dump_dir,
                             int4_storage=int4_storage, **kw)


def _compile_path(input_path: Path, output: Path, *, isa: bool, hwconfig: str, int4_storage: str,
                  **kw) -> CompileReport:
    if output.suffix == ".sbin":
        return _compile_to_sbin(Path(input_path), output, isa=isa, hwconfig=hwconfig, int4_storage=int4_storage, **kw)
    if isa:
        raise SpikecError(f"--isa: the accelerator lowering is packed into a .sbin; give -o {Path(output).with_suffix('.sbin').name}")
    p = Path(input_path)
    if p.is_dir():
        if not (p / "manifest.json").is_file():
            raise SpikecError(f"{p}: a folder INPUT must be an export folder of `spikec export` (no manifest.json)")
        return compile_folder(p, output, **kw)
    kw.setdefault("pipeline", None)
    return compile_onnx(p, output, **kw)




def isa_sections(folder: Path, hwconfig: str = "default", *, report: CompileReport | None = None,
                 dump_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = None) -> tuple[list[tuple[str, int, bytes]], dict]:
    """Lower the compiled graphs of a model folder to the accelerator with the lower-isa pass
    (passes/lower_isa.py: verified, dumped to `<dump_dir>/lower-isa/<role>/`, its records
    appended to `report.passes`): the four isa/* sections and the summary (kernel counts,
    host ops per graph)."""
    from spikec.frontend import manifest as mf
    from spikec.isa import container as C
    from spikec.isa.container import SectionKind
    from spikec.isa.encoding import encode_program
    from spikec.isa.hwconfig import HwConfig
    from spikec.passes import lower_isa

    cfg = HwConfig.load(hwconfig)
    manifest = mf.load_json(folder)
    graphs = {role: spir.load_model(mf.graph_path(folder, manifest, role)) for role in manifest["graphs"]}
    sub_dump = Path(dump_dir) / "lower-isa" if dump_dir is not None else None
    art, records = lower_isa.lower_model(graphs, cfg, dump_dir=sub_dump, progress=progress)
    if report is not None:
        for rec in records:
            rec.index = len(report.passes) + 1
            rec.dumps = [f"lower-isa/{rec.name.split('/')[0]}/{d}" for d in rec.dumps]
            report.passes.append(rec)
    program = encode_program(lower_isa.representative_program(art))
    sections = [
        (C.ISA_HWCONFIG, SectionKind.HWCONFIG, cfg.to_json()),
        (C.ISA_WEIGHTS, SectionKind.WEIGHTS, art.weights),
        (C.ISA_KERNELS, SectionKind.JSON, art.kernels_json()),
        (C.ISA_PROGRAM, SectionKind.PROGRAM, program),
    ]
    summary = {"hwconfig": cfg.name, "kernels": len(art.kernels), "vec_kernels": len(art.vec_kernels),
               "attn_kernels": len(art.attn_kernels),
               "weights_bytes": len(art.weights),
               "program_instructions": len(program) // 16, **art.fallback}
    return sections, summary


def _compile_to_sbin(input_path: Path, output: Path, *, isa: bool = False, hwconfig: str = "default",
                     int4_storage: str = "packed", **kw) -> CompileReport:
    import tempfile

    from spikec.isa.container import SectionKind
    from spikec.package import REPORT_SECTION, pack_folder

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.build-", dir=output.parent) as tmp:
        folder = Path(tmp) / "model"
        if input_path.is_dir():
            report = compile_path(input_path, folder, **kw)
        else:
            folder.mkdir()
            kw.setdefault("pipeline", None)
            report = compile_onnx(input_path, folder / "model.onnx", **kw)
            manifest = {"format": "spikec-model", "version": 1, "source": str(input_path),
                        "modality": dict(ops.MODALITY_IDS),
                        "graphs": {"model": {"file": "model.onnx", "role": "model"}}}
            msts = (report.extra.get("msts") or {}).get("timesteps")
            if isinstance(msts, dict):
                manifest["timesteps"] = {"model": msts}
            atomic.write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        extra_sections: list = []
        if isa:
            extra_sections, report.extra["isa"] = isa_sections(folder, hwconfig, report=report,
                                                               dump_dir=kw.get("dump_dir"), progress=kw.get("progress"))
        report_json = json.dumps(dataclasses.asdict(report), indent=2, default=_json_default, sort_keys=True)
        # wall times differ run to run; the container must not, so the packed report drops them;
        # the per-pass property trail (the pass contracts) is compile diagnostics, kept in
        # --report and --dump-ir's report.json, not in the artifact
        packed = json.loads(report_json)
        for rec in packed.get("passes", []):
            rec.pop("wall_s", None)
            rec.pop("properties", None)
        pack_folder(folder, output, extra=[(REPORT_SECTION, SectionKind.JSON,
                                            (json.dumps(packed, indent=2, sort_keys=True) + "\n").encode()),
                                           *extra_sections], pack_int4=int4_storage == "packed")
    return report
