"""Calibration data: where it comes from, how the float model is run on it, and the
clipping ranges the static activation scales are made of.

Sources (`--calib PATH`):
- an `.npz` of graph inputs. Keys are input names (one feed), or `<i>/<name>` for
  several feeds (i = 0, 1, ...), or `<graph>/<name>` / `<graph>/<i>/<name>` to address
  one graph of an export folder (graph = vision | embed | lm);
- a folder of image+prompt pairs, read through the checkpoint's processor by the front
  end's host glue (spikec.frontend.generate.OrtGenerator: processor -> vision graph ->
  embedding -> merge -> positions), which needs an export folder as the compile input.
  Layout: `data.jsonl` lines {"image": "rel/path.png", "prompt": "..."} (the front end's
  evaluation folders), or `NAME.png|jpg` files with a `NAME.txt` prompt beside each.

The float model is run on ONNX Runtime with the wanted intermediate values added as
graph outputs (`run_ort`); nothing is re-implemented. The passes reach it through the
float-activations analysis (passes/analyses.py), which runs it once per compile.

Clipping ranges (per linear layer and modality, over that modality's tokens):
- max:        clip = max |x|
- percentile: clip = the p-th percentile of |x| (--percentile, default 99.99)
- mse:        for each T, the clip in a grid of fractions of max |x| that minimises the
              mean squared error of quantize/dequantize at 2**T - 1 levels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from spikec import ir as spir
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.paths import resolve_inside
from spikec.schema import parse_json
from spikec.ops import CLIP_T, token_modality

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_TOKENS = 8192  # tokens per (layer, modality) kept for clip statistics
MSE_GRID = np.linspace(0.05, 1.0, 96, dtype=np.float32)


# ---------------------------------------------------------------- sources


def load_npz(path: str | Path, input_names: Sequence[str], graph: str | None = None, *,
             required: Sequence[str] = ()) -> list[dict]:
    """Feeds of one graph from an .npz (see module doc for the key layout).

    Raises SpikecError naming the file ("--calib PATH: ...") for a file that is not a
    readable .npz (schema.open_npz: a corrupt archive or member included), no array named
    after the inputs, or a feed lacking a `required` input."""
    p = Path(path)
    from spikec.schema import open_npz

    with open_npz(p, where=f"--calib {p}") as data:  # a corrupt archive or member: SpikecError naming the file
        return _npz_feeds(p, data, input_names, graph, required)


def _npz_feeds(p: Path, data, input_names: Sequence[str], graph: str | None, required: Sequence[str]) -> list[dict]:
    keys = list(data.keys())
    prefix = f"{graph}/" if graph and any(k.startswith(f"{graph}/") for k in keys) else ""
    keys = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    feeds: dict[str, dict] = {}
    for k in keys:
        parts = k.split("/")
        idx, name = (parts[0], "/".join(parts[1:])) if len(parts) > 1 and parts[0].isdigit() else ("0", k)
        if name in input_names:
            feeds.setdefault(idx, {})[name] = data[prefix + k]
    if not feeds:
        raise SpikecError(f"--calib {p}: no arrays named after the graph inputs {list(input_names)}"
                          f"{f' (graph {graph})' if graph else ''}; keys are: {list(data.keys())[:8]}")
    out = [feeds[i] for i in sorted(feeds, key=int)]
    for i, f in enumerate(out):
        missing = [n for n in required if n not in f]
        if missing:
            raise SpikecError(f"--calib {p}: feed {i} lacks input(s) {missing}")
    return out


def image_prompt_pairs(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, prompt) pairs of a calibration folder (layouts in the module doc).

    Raises SpikecError naming the folder, data.jsonl line or image at fault. The images
    are only checked to exist here; `export_folder_feeds` reads them.
    """
    return [(img, prompt) for img, prompt, _ in _image_prompt_rows(folder)]


def _image_prompt_rows(folder: str | Path) -> list[tuple[Path, str, str]]:
    """`image_prompt_pairs` plus, for each pair, where it came from ("--calib DIR/data.jsonl:3", "--calib DIR/a.png")."""
    folder = Path(folder)
    jsonl = folder / "data.jsonl"
    rows = []
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            # schema.parse_json: invalid JSON, a key given twice, lone surrogates... name the line
            row = parse_json(line, where=f"--calib {jsonl}: line {n}")
            if isinstance(row, dict) and "prompt" in row and not isinstance(row["prompt"], str):
                # as the evaluation folder's reader refuses it (a number is no prompt)
                raise SpikecError(f"--calib {jsonl}: line {n}: field 'prompt' must be a string, got "
                                  f"{type(row['prompt']).__name__}")
            try:
                image = resolve_inside(folder, row["image"], where=f"--calib {jsonl}: line {n}: field 'image'")
                rows.append((image, row["prompt"], f"--calib {jsonl}:{n}"))
            except (KeyError, TypeError, RecursionError, ValueError) as exc:
                raise SpikecError(f"--calib {jsonl}: line {n}: expected {{\"image\": ..., \"prompt\": ...}} ({exc})") from None
    else:
        for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            if not txt.is_file():
                raise SpikecError(f"--calib {folder}: image {img.name} has no prompt file {txt.name}")
            rows.append((img, txt.read_text().strip(), f"--calib {img}"))
    if not rows:
        raise SpikecError(f"--calib {folder}: no image+prompt pairs (expected data.jsonl or NAME.png + NAME.txt)")
    for img, _, _ in rows:
        if not img.is_file():
            raise SpikecError(f"--calib {folder}: image {img} not found")
    return rows


def export_folder_feeds(export_dir: str | Path, calib_folder: str | Path, max_samples: int) -> dict[str, list[dict]]:
    """Feeds of every graph of an export folder from image+prompt pairs (float graphs, ORT).

    Images are read by `spikec.images.load_image` (8-bit RGB; high-depth images scaled).
    Raises SpikecError naming the image file (and its data.jsonl line) for an image that
    cannot be read or that the checkpoint's processor refuses.
    """
    from spikec.frontend import manifest as mf
    from spikec.frontend.adapters.base import to_numpy
    from spikec.frontend.generate import OrtGenerator
    from spikec.images import load_image, naming_image
    from spikec.progress import track

    gen = OrtGenerator(export_dir)
    feeds: dict[str, list[dict]] = {role: [] for role in gen.manifest["graphs"]}
    for img_path, prompt, where in track(_image_prompt_rows(calib_folder)[:max_samples], "calibration", "pair",
                                         leave=False):  # a bar on a terminal only
        image = load_image(img_path, where=where)
        with naming_image(img_path, where=where):
            proc = gen.prepare([image], [prompt])
        if "vision" in feeds:
            feeds["vision"].append(gen.adapter.vision_feeds(gen.config, proc))
        if "embed" in feeds:
            feeds["embed"].append({"input_ids": to_numpy(proc["input_ids"]).astype(np.int64)})
        embeds, mask, pos, modality, _ = gen.prefill_inputs(proc)
        lm = {"inputs_embeds": embeds.astype(np.float32), "attention_mask": mask.astype(np.int64),
              "position_ids": np.asarray(pos).astype(np.int64), "modality": modality.astype(np.int64)}
        lm.update(zip(mf.past_names(gen.n_layers), gen.empty_past(embeds.shape[0])))
        feeds.setdefault("lm", []).append(lm)
    return feeds


# ---------------------------------------------------------------- running the float model


def with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs the values `names` (types from shape inference)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    wanted = [n for n in dict.fromkeys(names) if n not in have]
    if not wanted:
        return m
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:  # inference is only a source of element types here
        types = {}
    for n in wanted:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None))
    return m


def run_ort(graph: spir.Frozen | onnx.ModelProto, feeds_list: Sequence[dict],
            names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Run `graph` on each feed with ORT; return the values `names` (inputs or any intermediate).

    A `spikec.ir.Frozen` graph keeps its weights as views (memory-mapped), whatever its size."""
    import onnxruntime as ort

    frozen = graph if isinstance(graph, spir.Frozen) else spir.Frozen(graph, {})
    m = with_outputs(frozen.proto, names)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every value
    sess = spir.ort_session(spir.Frozen(m, frozen.weights), opts)
    input_names = {i.name for i in sess.get_inputs()}
    fetch = [n for n in dict.fromkeys(names) if n not in input_names]
    results = []
    for feeds in feeds_list:
        f = {k: v for k, v in feeds.items() if k in input_names}
        missing = input_names - set(f)
        if missing:
            raise SpikecError(f"calibration feed lacks graph input(s) {sorted(missing)}")
        vals = dict(zip(fetch, sess.run(fetch, f))) if fetch else {}
        results.append({n: (f[n] if n in f else vals[n]) for n in names})
    return results


def tokens_by_modality(x: np.ndarray, mod_feed: np.ndarray | None, const: int, n_mod: int, where: str) -> list[np.ndarray]:
    """Rows [n, K] of an activation for each modality id."""
    x = np.asarray(x, dtype=np.float32)
    mods = token_modality(mod_feed, const, x.shape[:-1], where).reshape(-1)
    flat = x.reshape(-1, x.shape[-1])
    return [flat[mods == m] for m in range(n_mod)]


# ---------------------------------------------------------------- clipping ranges


def _subsample(rows: np.ndarray) -> np.ndarray:
    if rows.shape[0] <= MAX_TOKENS:
        return rows
    idx = np.random.default_rng(0).choice(rows.shape[0], MAX_TOKENS, replace=False)
    return rows[np.sort(idx)]


def clip_row(rows: np.ndarray, method: str, percentile: float = 99.99) -> np.ndarray:
    """float32 [CLIP_T]: the clip range at T = 1..CLIP_T for these tokens (NaN: no tokens)."""
    if rows.size == 0:
        return np.full(CLIP_T, np.nan, dtype=np.float32)
    a = np.abs(_subsample(rows)).astype(np.float32)
    amax = np.float32(a.max())
    if method == "max":
        return np.full(CLIP_T, amax, dtype=np.float32)
    if method == "percentile":
        return np.full(CLIP_T, np.float32(np.percentile(a, percentile)), dtype=np.float32)
    if method != "mse":
        raise SpikecError(f"--calib-method {method}: unknown")
    if amax == 0:
        return np.zeros(CLIP_T, dtype=np.float32)
    x = _subsample(rows).astype(np.float32).reshape(-1)
    if x.size > 65536:
        x = x[np.random.default_rng(1).choice(x.size, 65536, replace=False)]
    out = np.empty(CLIP_T, dtype=np.float32)
    for T in range(1, CLIP_T + 1):
        levels = np.float32(2**T - 1)
        best, best_err = amax, np.inf
        for frac in MSE_GRID:
            clip = np.float32(amax * frac)
            s = np.float32(clip / levels)
            if not s > 0:
                continue
            err = float(np.mean((R.dequantize(R.quantize(x, s, 2**T - 1), s) - x) ** 2))
            if err < best_err:
                best, best_err = clip, err
        out[T - 1] = best
    return out
