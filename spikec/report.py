"""`spikec report`: one self-contained HTML page about a compiled model (.sbin).

    data = gather("model.sbin", images_dir="imgs/", data_dir="testset/")
    html_text = render_html(data)          # or write_report(..., output="report.html")

The page holds, as far as the file and the options allow (docs/report.md):

- MED per layer and modality: the per-modality evolution e[l, m] and MED[l] from the
  compile report's `med` section of each graph (measured only with `--calib`);
- timesteps per layer and modality: the compile report's per-layer rows;
- spike rate and SOPs per layer and modality: exact-mode statistics of a run on the
  images of `--images DIR` (`CompiledModel.stats`, runtime/ort_target.py `spike_stats`);
- the accelerator's cycle and energy breakdown (modeled, isa/costmodel.py) of a run on
  one image on the `fpga` target, when the .sbin has `isa/*` sections;
- accuracy against effective timesteps per token with `--data DIR` (spikec.evaluate).

A .sbin is made by others: every string read from it (layer names, modality names,
messages of the compile report) is escaped with `html.escape`, shortened, and drawn by
matplotlib with mathtext off (a `$` in a name is text, not a formula); numbers that are
not finite numbers are shown as missing. Images are embedded as base64 PNG data URIs; the
page loads nothing else and runs no script.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from spikec.errors import SpikecError

DEFAULT_PROMPT = "Describe the image."
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_LABEL = 96  # characters of a name taken from the file, in plots and tables
MAX_ROWS = 600  # per-layer rows per graph plotted and tabulated (the rest are counted)
MAX_GRAPHS = 16
MAX_MODALITIES = 8
THUMB_PX = 96
EFFECTIVE_T_ITEMS = 4  # evaluation items run in exact mode to measure the effective timesteps

Progress = Callable[[str], None]


# ------------------------------------------------------------------ values from the file


def _text(value: Any, limit: int = MAX_LABEL) -> str:
    """A value read from the file as a short plain string (escaped later, when written)."""
    s = value if isinstance(value, str) else json.dumps(value, default=str)[:limit + 1]
    s = "".join(ch if ch.isprintable() else "\ufffd" for ch in s)
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        f = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**62 else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _modalities(names: list[str], *mappings: dict) -> list[str]:
    """Modality names in the manifest's order, then any other key seen, at most MAX_MODALITIES."""
    out = list(names)
    for m in mappings:
        for k in m:
            if isinstance(k, str) and _text(k, 32) not in out:
                out.append(_text(k, 32))
    return out[:MAX_MODALITIES]


def _per_modality(value: Any, conv: Callable[[Any], Any]) -> dict[str, Any]:
    return {_text(k, 32): conv(v) for k, v in list(_dict(value).items())[:MAX_MODALITIES]}


def _group_label(names: list[str], index: int | None, head: int | None) -> str:
    """A layer group's label: the dotted prefix its products' names share
    (`model.language_model.layers.3`), else "layer N" / "head"."""
    if index is not None and head is not None and index == head:
        base = "head"
    else:
        base = f"layer {index}" if index is not None else "layer ?"
    if not names:
        return base
    parts = [n.split(".") for n in names]
    common = []
    for tokens in zip(*parts):
        if len(set(tokens)) != 1:
            break
        common.append(tokens[0])
    prefix = ".".join(common)
    return _text(prefix) if prefix and prefix not in names else base


def compile_graphs(report: Any, modality_names: list[str]) -> list[dict]:
    """Per graph of the compile report: MED rows, per-layer rows, MSTS summary (checked and
    shortened; anything malformed is left out, never trusted)."""
    extra = _dict(_dict(report).get("extra"))
    graphs = _dict(extra.get("graphs"))
    if not graphs and ("layers" in extra or "med" in extra):
        graphs = {"model": extra}  # a .sbin compiled from one ONNX file
    out = []
    for role, g in list(graphs.items())[:MAX_GRAPHS]:
        g = _dict(g)
        med = _dict(g.get("med"))
        head = _int(med.get("head_group"))
        rows = []
        raw_rows = [r for r in _list(g.get("layers")) if isinstance(r, dict)]
        for r in raw_rows[:MAX_ROWS]:
            layer = r.get("layer")
            rows.append({
                "name": _text(r.get("name", "?")), "op": _text(r.get("op", ""), 32),
                "layer": _int(layer), "med": _num(r.get("med")),
                "timesteps": _per_modality(r.get("timesteps"), _int),
                "wbits": _int(r.get("wbits")),
            })
        med_rows = []
        for r in [r for r in _list(med.get("layers")) if isinstance(r, dict)][:MAX_ROWS]:
            index = _int(r.get("layer"))
            names = [x["name"] for x in rows if x["layer"] is not None and x["layer"] == index]
            med_rows.append({
                "layer": index, "label": _group_label(names, index, head), "med": _num(r.get("med")),
                "e": _per_modality(r.get("e"), _num), "tokens": _per_modality(r.get("tokens"), _int),
            })
        msts = _dict(g.get("msts"))
        mods = _modalities(modality_names, *(r["timesteps"] for r in rows), *(r["e"] for r in med_rows))
        out.append({
            "role": _text(role, 64), "modalities": mods, "rows": rows, "rows_left_out": max(0, len(raw_rows) - MAX_ROWS),
            "med": med_rows, "med_skipped": _text(med["skipped"], 300) if "skipped" in med else None,
            "head_group": head,
            "msts": {"mode": _text(msts.get("mode", ""), 32), "timesteps": _per_modality(msts.get("timesteps"), _int),
                     "budget_used": _num(msts.get("budget_used")), "error": _num(msts.get("error")),
                     "skipped": _text(msts["skipped"], 300) if "skipped" in msts else None},
        })
    return out


# ------------------------------------------------------------------ runs


def image_files(images_dir: str | os.PathLike, limit: int) -> list[tuple[str, Path]]:
    """The image files under DIR (by suffix), sorted, at most `limit`."""
    from spikec.paths import files_inside

    d = Path(images_dir)
    if not d.is_dir():
        raise SpikecError(f"--images {d}: not a folder")
    files = [(rel, p) for rel, p in files_inside(d, where=f"--images {d}:") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise SpikecError(f"--images {d}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit]


def _png_bytes(image, max_px: int) -> bytes:
    im = image.copy()
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def run_images(sbin: Path, files: list[tuple[str, Path]], prompt: str, max_new_tokens: int,
               progress: Progress) -> dict:
    """Generate on every image in exact mode; the answers, thumbnails and spike statistics."""
    from spikec.images import load_image, naming_image
    from spikec.runtime.model import load

    shown = []
    with load(sbin, mode="exact") as model:
        for i, (rel, path) in enumerate(files):
            where = f"--images {path}"
            image = load_image(path, where=where)
            with naming_image(path, where=where):
                answer = model.generate(image, prompt, max_new_tokens=max_new_tokens)
            shown.append({"name": rel, "answer": _text(answer, 300), "png": _png_bytes(image, THUMB_PX)})
            progress(f"image {i + 1}/{len(files)}: {rel}")
        stats = model.stats()
    return {"prompt": prompt, "images": shown, "stats": stats}


def run_fpga(sbin: Path, image_path: Path, prompt: str, max_new_tokens: int) -> dict:
    """One image on the fpga target (functional simulator, modeled cycles and energy)."""
    from spikec.images import load_image, naming_image
    from spikec.runtime.model import load

    where = f"--images {image_path}"
    image = load_image(image_path, where=where)
    try:
        with load(sbin, target="fpga") as model:
            with naming_image(image_path, where=where):
                answer = model.generate(image, prompt, max_new_tokens=max_new_tokens)
            r = model.stats()
            device = getattr(getattr(model.runner, "stats", None), "device", None)
            busy = {k: int(getattr(device, f"busy_{k}", 0) or 0) for k in ("load", "compute", "store")}
    except SpikecError as exc:
        raise SpikecError(f"{exc} (the accelerator section of the report: --no-fpga leaves it out)") from None
    r["busy_cycles"] = busy
    r["answer"] = _text(answer, 300)
    r["image"] = image_path.name
    return r


def run_accuracy(sbin: Path, data_dir: Path, limit: int | None, float_model: Path | None,
                 progress: Progress) -> dict:
    """Exact-match accuracy of the .sbin as compiled (spikec.evaluate) and its effective
    timesteps per token, measured in exact mode on the first EFFECTIVE_T_ITEMS items."""
    from spikec.evaluate import evaluate, load_items
    from spikec.images import load_image, naming_image
    from spikec.runtime.model import load

    items = load_items(data_dir)
    if limit is not None:
        items = items[:limit]
    result = evaluate(sbin, data_dir, limit=limit, progress=lambda i, n: progress(f"eval {i}/{n}") if i == n else None)
    with load(sbin, mode="exact") as model:
        for item in items[:EFFECTIVE_T_ITEMS]:
            where = f"--data {data_dir / 'data.jsonl'}:{item['line']}"
            image = load_image(item["image_path"], where=where)
            with naming_image(item["image_path"], where=where):
                model.generate(image, item["prompt"], max_new_tokens=8)
        summary = model.stats()["summary"]
    out = {"data": str(data_dir), "total": result.total, "correct": result.correct, "accuracy": result.accuracy,
           "effective_timesteps": summary["effective_timesteps"],
           "effective_timesteps_by_modality": summary["effective_timesteps_by_modality"],
           "t_items": min(len(items), EFFECTIVE_T_ITEMS), "float": None}
    if float_model is not None:
        progress("eval of the float model")
        f = evaluate(float_model, data_dir, limit=limit)
        out["float"] = {"model": str(float_model), "total": f.total, "correct": f.correct, "accuracy": f.accuracy}
    return out


def gather(sbin: str | os.PathLike, *, images_dir: str | os.PathLike | None = None,
           data_dir: str | os.PathLike | None = None, prompt: str = DEFAULT_PROMPT, max_images: int = 8,
           max_new_tokens: int = 16, fpga: bool | None = None, eval_limit: int | None = None,
           float_model: str | os.PathLike | None = None, progress: Progress | None = None) -> dict:
    """Everything the page shows, as plain data. `fpga`: None = when the file has isa/*
    sections and images are given; True = required; False = never."""
    from spikec.isa.container import is_sbin
    from spikec.package import REPORT_SECTION, SbinModel

    progress = progress or (lambda msg: None)
    path = Path(sbin)
    if not path.is_file():
        raise SpikecError(f"{path}: no such file")
    if not is_sbin(path):
        raise SpikecError(f"{path}: not a .sbin file (spikec report reads a compiled model: spikec compile ... -o x.sbin)")
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpikecError("--prompt: give a non-empty prompt")
    notes: list[str] = []
    with SbinModel(path) as m:
        sections = sorted(m.file.sections)
        manifest = m.manifest
        try:
            report = m.section_json(REPORT_SECTION)
        except SpikecError as exc:
            report = None
            notes.append(f"the compile report could not be read: {exc}")
    if report is None and not notes:
        notes.append("the file has no compile report section ('report'): MED and per-layer timesteps are not shown")
    table = _dict(manifest.get("modality"))
    modality_names = [_text(k, 32) for k, _ in sorted(table.items(), key=lambda kv: (_int(kv[1]) or 0, str(kv[0])))]
    data: dict = {
        "model": path.name, "size": path.stat().st_size, "sections": [_text(s) for s in sections[:200]],
        "modalities": modality_names[:MAX_MODALITIES],
        "timesteps": {_text(r, 64): _per_modality(t, _int) for r, t in list(_dict(manifest.get("timesteps")).items())[:MAX_GRAPHS]},
        "graphs": compile_graphs(report, modality_names) if report is not None else [],
        "notes": notes, "run": None, "fpga": None, "accuracy": None, "generated_s": 0.0,
    }
    start = time.perf_counter()
    has_isa = any(s.startswith("isa/") for s in sections)
    if fpga and not has_isa:
        raise SpikecError(f"--fpga: {path} has no isa/* sections (compile with --isa)")
    files = image_files(images_dir, max_images) if images_dir is not None else []
    if data_dir is not None:  # a bad evaluation folder fails before the runs, not after
        from spikec.evaluate import load_items

        load_items(data_dir)
    if fpga and not files:
        raise SpikecError("--fpga: the accelerator run needs an image: give --images DIR")
    if files:
        progress(f"running {len(files)} image(s) in exact mode")
        data["run"] = run_images(path, files, prompt, max_new_tokens, progress)
    else:
        notes.append("no --images: spike rates and SOPs are not shown")
    if files and has_isa and fpga is not False:
        progress("running one image on the fpga target (simulator and cost model)")
        data["fpga"] = run_fpga(path, files[0][1], prompt, max_new_tokens)
    elif not has_isa:
        notes.append("no isa/* sections (compile with --isa): no accelerator cycles and energy")
    if data_dir is not None:
        progress("evaluating on --data")
        data["accuracy"] = run_accuracy(path, Path(data_dir), eval_limit,
                                        Path(float_model) if float_model is not None else None, progress)
    data["generated_s"] = time.perf_counter() - start
    return data


# ------------------------------------------------------------------ plots

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg backend, without pyplot (no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _rc() -> dict:
    # names from the file are text: no mathtext, no TeX
    return {"text.parse_math": False, "text.usetex": False, "svg.fonttype": "none", "font.size": 8}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _hbars(ax, labels: list[str], series: dict[str, list[float | None]], xlabel: str, stacked: bool = False,
           colors: list[str] = COLORS) -> None:
    """Horizontal bars, one row per label (top to bottom), one colour per series."""
    import numpy as np

    n, k = len(labels), max(1, len(series))
    y = np.arange(n)
    left = np.zeros(n)
    h = 0.8 if stacked else 0.8 / k
    for i, (name, values) in enumerate(series.items()):
        v = np.array([0.0 if x is None else x for x in values], dtype=float)
        if stacked:
            ax.barh(y, v, h, left=left, label=name, color=colors[i % len(colors)])
            left += v
        else:
            ax.barh(y - 0.4 + h * (i + 0.5), v, h, label=name, color=colors[i % len(colors)])
    ax.set_yticks(y, labels)
    if not ax.yaxis_inverted():  # axes sharing y share the inversion: invert once
        ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def _legend(fig, ax) -> None:
    """One legend for the figure, outside the axes on the right (bars never hidden)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)


def _height(n: int) -> float:
    return max(2.2, 0.5 + 0.16 * n)


def plot_med(graph: dict) -> str | None:
    rows = graph["med"]
    if not rows or all(r["med"] is None and not any(v is not None for v in r["e"].values()) for r in rows):
        return None
    import matplotlib

    with matplotlib.rc_context(_rc()):
        labels = [r["label"] for r in rows]
        has_med = any(r["med"] is not None for r in rows)  # one modality (a vision encoder): e only
        fig = _figure(10 if has_med else 6, _height(len(rows)))
        axes = fig.subplots(1, 2 if has_med else 1, sharey=True, squeeze=False)
        a1 = axes[0][0]
        mods = [m for m in graph["modalities"] if any(r["e"].get(m) is not None for r in rows)]
        _hbars(a1, labels, {m: [r["e"].get(m) for r in rows] for m in mods}, "e[l, m] = mean 1 - cos(h_l, h_l+1)")
        a1.set_title(f"graph {graph['role']}: evolution per modality")
        _legend(fig, a1)
        if has_med:
            a2 = axes[0][1]
            _hbars(a2, labels, {"MED": [r["med"] for r in rows]}, "MED[l] = |e_v - e_t| / (e_v + e_t)",
                   colors=[COLORS[4]])
            a2.set_xlim(0, 1)
            a2.set_title("modality evolution discrepancy")
        return _png(fig)


def plot_timesteps(graph: dict) -> str | None:
    rows = graph["rows"]
    if not rows:
        return None
    import matplotlib

    with matplotlib.rc_context(_rc()):
        mods = [m for m in graph["modalities"] if any(r["timesteps"].get(m) is not None for r in rows)]
        fig = _figure(8, _height(len(rows)))
        ax = fig.subplots()
        _hbars(ax, [r["name"] for r in rows], {m: [r["timesteps"].get(m) for r in rows] for m in mods},
               "timesteps T (TC-LIF planes)")
        ax.set_title(f"graph {graph['role']}: timesteps per layer and modality")
        _legend(fig, ax)
        return _png(fig)


def stats_rows(stats: dict, modalities: list[str]) -> dict[str, list[dict]]:
    """Per graph: the exact-mode rows (name, K, M, per modality T, tokens, rate, SOPs)."""
    out: dict[str, list[dict]] = {}
    for row in stats.get("layers", []):
        mods = {}
        for mod, r in row.get("modalities", {}).items():
            mods[_text(mod, 32)] = {"T": _int(r.get("T")), "tokens": _int(r.get("tokens")),
                                    "rate": _num(r.get("rate")), "sops": _int(r.get("sops"))}
        out.setdefault(_text(row.get("graph"), 64), []).append(
            {"name": _text(row.get("layer")), "K": _int(row.get("K")), "M": _int(row.get("M")), "modalities": mods})
    return {g: rows[:MAX_ROWS] for g, rows in list(out.items())[:MAX_GRAPHS]}


def plot_spikes(role: str, rows: list[dict], modalities: list[str]) -> str | None:
    if not rows:
        return None
    import matplotlib

    with matplotlib.rc_context(_rc()):
        mods = [m for m in _modalities(modalities, *(r["modalities"] for r in rows))
                if any(m in r["modalities"] for r in rows)]
        labels = [r["name"] for r in rows]
        fig = _figure(11, _height(len(rows)))
        a1, a2 = fig.subplots(1, 2, sharey=True)
        _hbars(a1, labels, {m: [r["modalities"].get(m, {}).get("rate") for r in rows] for m in mods},
               "spike rate (spikes / (tokens x K x planes))")
        a1.set_title(f"graph {role}: spike rate per layer")
        _hbars(a2, labels, {m: [r["modalities"].get(m, {}).get("sops") for r in rows] for m in mods},
               "synaptic operations (SOPs)", stacked=True)
        a2.set_title("SOPs per layer (stacked by modality)")
        _legend(fig, a2)
        return _png(fig)


def plot_fpga(r: dict) -> str:
    import matplotlib

    with matplotlib.rc_context(_rc()):
        fig = _figure(10, 2.8)
        a1, a2 = fig.subplots(1, 2)
        cycles = int(r.get("cycles", 0))
        vec = int(r.get("vec_cycles", 0))
        busy = r.get("busy_cycles", {})
        names = ["total (critical path)", "spiking products", "vector kernels"] + [f"busy: {k}" for k in busy]
        values = [cycles, max(0, cycles - vec), vec] + [busy[k] for k in busy]
        bars = a1.barh(names, values, color=[COLORS[0], COLORS[1], COLORS[2]] + [COLORS[7]] * len(busy))
        a1.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, padding=2)
        a1.margins(x=0.25)
        a1.invert_yaxis()
        a1.set_xlabel(f"device cycles at {float(r.get('clock_mhz', 0)):g} MHz")
        a1.set_title("cycles")
        energy = {k: float(v) * 1e-6 for k, v in r.get("energy_pj_by_component", {}).items()}
        bars = a2.barh(list(energy), list(energy.values()), color=COLORS[3])
        a2.bar_label(bars, labels=[f"{v:.4g}" for v in energy.values()], fontsize=7, padding=2)
        a2.margins(x=0.2)
        a2.invert_yaxis()
        a2.set_xlabel("modeled energy (uJ, 45 nm constants)")
        a2.set_title("energy by component")
        for ax in (a1, a2):
            ax.grid(axis="x", alpha=0.3)
        return _png(fig)


def plot_accuracy(acc: dict) -> str:
    import matplotlib

    with matplotlib.rc_context(_rc()):
        fig = _figure(5, 3.2)
        ax = fig.subplots()
        x, y = acc["effective_timesteps"], 100 * acc["accuracy"]
        ax.plot([x], [y], "o", color=COLORS[0], markersize=8, label="this .sbin (spiking)")
        ax.annotate(f"{y:.1f} % at T = {x:.2f}", (x, y), textcoords="offset points", xytext=(8, -14 if y > 90 else 6))
        if acc.get("float"):
            ax.axhline(100 * acc["float"]["accuracy"], color=COLORS[7], linestyle="--", label="float model")
        ax.set_xlim(0, max(8.0, x + 1))
        ax.set_ylim(0, 105)
        ax.set_xlabel("effective timesteps per token")
        ax.set_ylabel("exact-match accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title("accuracy against effective timesteps")
        return _png(fig)


# ------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left;font-family:monospace} .note{color:#8a5a00}
img.plot{max-width:100%;display:block;margin:.5em 0} figure{margin:0 0 1em} .thumbs{display:flex;flex-wrap:wrap;gap:1em}
.thumb{font-size:.8em;max-width:220px} .thumb img{image-rendering:pixelated;width:96px;border:1px solid #ccc}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, spec)
    return _e(value)


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return ""
    return f'<figure><img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{b64}"></figure>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Header cells are escaped; row cells are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section_compile(data: dict) -> list[str]:
    parts = ["<h2>MED and timesteps (from the compile report)</h2>"]
    if data["timesteps"]:
        mods = _modalities(data["modalities"], *data["timesteps"].values())
        parts.append("<p>Timesteps per modality (manifest):</p>")
        parts.append(_table(["graph"] + mods, [[_e(g)] + [_fmt(t.get(m)) for m in mods]
                                               for g, t in data["timesteps"].items()]))
    if not data["graphs"]:
        parts.append('<p class="note">No compile report in this file.</p>')
    for g in data["graphs"]:
        mods = g["modalities"]
        if not g["rows"] and not g["med"]:
            parts.append(f"<p>graph <code>{_e(g['role'])}</code>: no spiking layers.</p>")
            continue
        parts.append(f"<h3>graph {_e(g['role'])}</h3>")
        ms = g["msts"]
        if ms["skipped"]:
            parts.append(f"<p>MSTS: {_e(ms['skipped'])}</p>")
        elif ms["timesteps"]:
            t = ", ".join(f"{_e(k)} {_fmt(v)}" for k, v in ms["timesteps"].items())
            more = "".join(f"; {label} {_fmt(ms[key], spec)}" for label, key, spec in
                           (("budget used", "budget_used", ".3f"), ("error", "error", ".4g")) if ms[key] is not None)
            parts.append(f"<p>MSTS ({_e(ms['mode'])}): T = {t}{more}.</p>")
        if g["med_skipped"]:
            parts.append(f'<p class="note">MED not measured: {_e(g["med_skipped"])}.</p>')
        elif g["med"]:
            plot = plot_med(g)
            parts.append(_img(plot, f"MED per layer and modality, graph {g['role']}") if plot else
                         '<p class="note">MED: no values (no calibration tokens of both modalities).</p>')
            parts.append(_table(["layer"] + [f"e[{m}]" for m in mods] + [f"tokens[{m}]" for m in mods] + ["MED"],
                                [[_e(r["label"])] + [_fmt(r["e"].get(m)) for m in mods]
                                 + [_fmt(r["tokens"].get(m)) for m in mods] + [_fmt(r["med"])] for r in g["med"]]))
        if g["rows"]:
            parts.append(_img(plot_timesteps(g), f"timesteps per layer and modality, graph {g['role']}"))
            rows = [[_e(r["name"]), _e(r["op"]), _fmt(r["layer"]), _fmt(r["wbits"])]
                    + [_fmt(r["timesteps"].get(m)) for m in mods] + [_fmt(r["med"])] for r in g["rows"]]
            parts.append("<details><summary>per-layer table</summary>"
                         + _table(["layer", "op", "group", "wbits"] + [f"T[{m}]" for m in mods] + ["MED"], rows)
                         + "</details>")
            if g["rows_left_out"]:
                parts.append(f'<p class="note">{g["rows_left_out"]:,} more layers not shown.</p>')
    return parts


def _section_run(data: dict) -> list[str]:
    run = data["run"]
    parts = ["<h2>Spike rate and SOPs per layer (exact mode)</h2>"]
    if run is None:
        parts.append('<p class="note">Not run: give --images DIR.</p>')
        return parts
    s = run["stats"]["summary"]
    parts.append(f"<p>{len(run['images'])} image(s), prompt <q>{_e(run['prompt'])}</q>.</p>")
    thumbs = "".join(f'<div class="thumb"><img alt="{_e(im["name"])}" '
                     f'src="data:image/png;base64,{base64.b64encode(im["png"]).decode("ascii")}">'
                     f'<br><code>{_e(im["name"])}</code><br>{_e(im["answer"])}</div>' for im in run["images"])
    parts.append(f'<div class="thumbs">{thumbs}</div>')
    by_mod = ", ".join(f"{_e(m)} {t:.2f}" for m, t in s["effective_timesteps_by_modality"].items())
    parts.append(_table(["summary", "value"], [
        ["spiking products run", _fmt(s["spiking_products"])], ["spikes", _fmt(s["spikes"])],
        ["spike rate", _fmt(s["spike_rate"])], ["SOPs", _fmt(s["sops"])],
        ["float MACs of the same products", _fmt(s["float_macs"])], ["SOPs / MAC", _fmt(s["sops_per_mac"])],
        ["effective timesteps per token", f"{s['effective_timesteps']:.3f} ({by_mod})"]]))
    for role, rows in stats_rows(run["stats"], data["modalities"]).items():
        mods = _modalities(data["modalities"], *(r["modalities"] for r in rows))
        parts.append(f"<h3>graph {_e(role)}</h3>")
        parts.append(_img(plot_spikes(role, rows, data["modalities"]), f"spike rate and SOPs per layer, graph {role}"))
        table = []
        for r in rows:
            cells = [_e(r["name"]), _fmt(r["K"]), _fmt(r["M"])]
            for m in mods:
                v = r["modalities"].get(m, {})
                cells += [_fmt(v.get("T")), _fmt(v.get("tokens")), _fmt(v.get("rate")), _fmt(v.get("sops"))]
            table.append(cells)
        header = ["layer", "K", "M"] + [f"{h}[{m}]" for m in mods for h in ("T", "tokens", "rate", "SOPs")]
        parts.append("<details><summary>per-layer table</summary>" + _table(header, table) + "</details>")
    return parts


def _section_fpga(data: dict) -> list[str]:
    r = data["fpga"]
    if r is None:
        return []
    g = r["gpu"]
    parts = ["<h2>Accelerator: cycles and energy (modeled)</h2>",
             f"<p>One image (<code>{_e(r['image'])}</code>) on the fpga target ({_e(r.get('device', ''))}, hwconfig "
             f"<code>{_e(r['hwconfig'])}</code> at {float(r['clock_mhz']):g} MHz); answer: {_e(r['answer'])}. "
             "Spiking products and vector ops lowered to the device; host ops are on neither side "
             "(docs/isa.md, cost model).</p>",
             _img(plot_fpga(r), "accelerator cycle and energy breakdown"),
             _table(["quantity", "value"], [
                 ["kernel calls / token-rows", f"{_fmt(r['calls'])} / {_fmt(r['tokens'])}"],
                 ["effective timesteps", _fmt(r["effective_timesteps"], ".3f")],
                 ["device cycles", _fmt(r["cycles"])], ["of which vector kernels", _fmt(r.get("vec_cycles", 0))],
                 ["modeled latency (ms)", _fmt(r["latency_s"] * 1e3, ".4f")],
                 ["modeled energy (uJ)", _fmt(r["energy_j"] * 1e6, ".3f")],
                 ["spike density / vector density", f"{_fmt(r['spike_density'])} / {_fmt(r['vector_density'])}"],
                 ["SOPs / float MACs", f"{_fmt(r['sops'])} / {_fmt(r['float_macs'])}"],
                 ["DRAM traffic (bytes)", _fmt(r["dram_bytes"])],
                 [f"modeled GPU ({_e(g['name'])}) time (us) / energy (uJ)",
                  f"{_fmt(g['seconds'] * 1e6, '.3f')} / {_fmt(g['energy_j'] * 1e6, '.3f')}"],
                 ["throughput ratio (GPU time / accelerator time)", _fmt(r["throughput_ratio"])],
                 ["energy-efficiency ratio (GPU energy / accelerator energy)", _fmt(r["efficiency_ratio"])]])]
    return parts


def _section_accuracy(data: dict) -> list[str]:
    a = data["accuracy"]
    if a is None:
        return []
    parts = ["<h2>Accuracy against effective timesteps</h2>",
             f"<p>Exact match on <code>{_e(a['data'])}</code>: {a['correct']}/{a['total']} = "
             f"{100 * a['accuracy']:.2f} %; effective timesteps per token {a['effective_timesteps']:.3f} "
             f"(exact mode, first {a['t_items']} item(s)).</p>"]
    if a["float"]:
        f = a["float"]
        parts.append(f"<p>Float model <code>{_e(f['model'])}</code>: {f['correct']}/{f['total']} = "
                     f"{100 * f['accuracy']:.2f} %.</p>")
    parts.append(_img(plot_accuracy(a), "accuracy against effective timesteps"))
    return parts


def render_html(data: dict) -> str:
    """The page: static HTML, inline CSS, images as data URIs, no script."""
    from spikec import __version__

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>spikec report: {_e(data['model'])}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>spikec report: <code>{_e(data['model'])}</code></h1>",
             f"<p>{data['size']:,} bytes, {len(data['sections'])} sections; modalities: "
             f"{_e(', '.join(data['modalities']) or '-')}; spikec {_e(__version__)}.</p>"]
    for note in data["notes"]:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts += _section_compile(data)
    parts += _section_run(data)
    parts += _section_fpga(data)
    parts += _section_accuracy(data)
    parts.append("<details><summary>sections of the file</summary><ul>"
                 + "".join(f"<li><code>{_e(s)}</code></li>" for s in data["sections"]) + "</ul></details>")
    parts.append(f"<p><small>Runs for this page took {data['generated_s']:.1f} s.</small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(sbin: str | os.PathLike, output: str | os.PathLike, **kw) -> dict:
    """gather + render_html, written atomically to `output`; returns the gathered data."""
    from spikec import atomic

    out = Path(output)
    if out.exists() and out.is_dir():
        raise SpikecError(f"-o {out}: is a folder; give the HTML file to write")
    data = gather(sbin, **kw)
    atomic.write_text(out, render_html(data))
    return data
