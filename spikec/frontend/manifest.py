"""manifest.json: what each exported graph is, its I/O, and how the host glues them.

Schema (version 1):
{
  "format": "spikec-frontend", "version": 1,
  "family": "qwen2_vl" | "qwen2_5_vl" | "llava" | "internvl" | "idefics3",
  "model_type": config.model_type, "source": checkpoint folder or tiny name,
  "opset": 18, "dtype": "float32",
  "modality": {"text": 0, "vision": 1},          # values of the LM's `modality` input
  "merge": {"image_token_id": int, "rule": "..."},
  "position_ids": {"kind": "1d" | "mrope", "shape": [...]},
  "processor": "processor",                      # folder: processor, tokenizer, config.json
  "lm": {"num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size",
         "past": "past_key_values.{i}.key|value", "present": "present.{i}.key|value",
         "decode": "..."},
  "eos_token_id": int | list | null,
  "graphs": {"vision"|"embed"|"lm": {"file", "role", "inputs": [io], "outputs": [io]}}
}
io = {"name": str, "dtype": "float32" | "int64" | "bool", "shape": [int | str]}
"""

from __future__ import annotations

import json

import numpy as np
from pathlib import Path

from spikec.atomic import write_text
from spikec.errors import SpikecError
from spikec.paths import check_name, check_relative, resolve_inside

MANIFEST = "manifest.json"
FORMAT, VERSION = "spikec-frontend", 1
# Token modality codes fed to the LM's `modality` input. Append new modalities
# (e.g. "audio": 2); never renumber.
MODALITY = {"text": 0, "vision": 1}


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def _io(value) -> dict:
    dims = [d if isinstance(d, int) else str(d) for d in (value.shape or [])]
    dtype = str(np.dtype(value.dtype.numpy())) if value.dtype is not None else None
    return {"name": value.name, "dtype": dtype, "shape": dims}


def graph_entry(file: str, role: str, model) -> dict:
    return {"file": file, "role": role, "inputs": [_io(v) for v in model.graph.inputs],
            "outputs": [_io(v) for v in model.graph.outputs]}


def build(loaded, graphs: dict, opset: int, processor_dir: str, lm_dims) -> dict:
    config = loaded.model.config
    adapter = loaded.adapter
    tc = config.get_text_config()
    n_layers, n_kv, head_dim = lm_dims
    gen = getattr(loaded.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    return {
        "format": FORMAT, "version": VERSION,
        "family": adapter.family, "model_type": config.model_type, "source": loaded.source,
        "opset": opset, "dtype": "float32",
        "modality": dict(MODALITY),
        "merge": {
            "image_token_id": adapter.image_token_id(config),
            "rule": "inputs_embeds = embed(input_ids); the rows of vision's image_features replace, in order, "
                    "the positions where input_ids == image_token_id (row-major over batch, then sequence); "
                    "those positions get modality = vision",
        },
        "position_ids": {"kind": "mrope" if adapter.mrope else "1d",
                         "shape": [3, "batch", "seq"] if adapter.mrope else ["batch", "seq"]},
        "processor": processor_dir,
        "lm": {"num_layers": n_layers, "num_kv_heads": n_kv, "head_dim": head_dim, "hidden_size": tc.hidden_size,
               "vocab_size": tc.vocab_size, "past": "past_key_values.{i}.key|value", "present": "present.{i}.key|value",
               "decode": "feed present.* back as past_key_values.*; prefill with past length 0; attention_mask "
                         "covers past + new tokens"},
        "eos_token_id": eos,
        "graphs": graphs,
    }


def write(path: Path, manifest: dict) -> None:
    write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def load_json(outdir: str | Path) -> dict:
    """manifest.json of a model folder as a dict, whatever wrote it (export or compile).

    The paths it holds come from a file someone else may have made: every graph role must
    be a plain name (it names output files), every graph `file` and the `processor` folder
    a relative path with no `..` (spikec.paths); `graph_path` / `processor_path` then
    resolve them inside the folder, symlinks included. Raises SpikecError naming the field.
    """
    path = Path(outdir) / MANIFEST
    if not path.is_file():
        raise SpikecError(f"{path}: not found (not a folder written by `spikec export` or `spikec compile`)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise SpikecError(f"{path}: invalid JSON: {str(exc)[:200]}") from None
    if not isinstance(m, dict):
        raise SpikecError(f"{path}: expected a JSON object")
    check_paths(m, where=str(path))
    return m


def check_paths(m: dict, *, where: str) -> None:
    """The path-like fields of a manifest: graph roles, graph files, the processor folder."""
    graphs = m.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise SpikecError(f"{where}: field 'graphs' must be an object naming at least one graph")
    for role, entry in graphs.items():
        check_name(role, where=f"{where}: graph role")
        if not isinstance(entry, dict):
            raise SpikecError(f"{where}: graphs.{role} must be an object")
        check_relative(entry.get("file"), where=f"{where}: graphs.{role}.file")
    if m.get("processor") is not None:
        check_relative(m["processor"], where=f"{where}: field 'processor'")


def graph_path(folder: str | Path, m: dict, role: str) -> Path:
    """The file of graph `role`, resolved inside `folder` (SpikecError on an escape)."""
    return resolve_inside(folder, m["graphs"][role]["file"], where=f"{Path(folder) / MANIFEST}: graphs.{role}.file")


def processor_path(folder: str | Path, m: dict) -> Path | None:
    """The processor folder, resolved inside `folder`; None when the manifest names none."""
    if m.get("processor") is None:
        return None
    return resolve_inside(folder, m["processor"], where=f"{Path(folder) / MANIFEST}: field 'processor'")


def read(outdir: str | Path) -> dict:
    """The front end's manifest, checked to be of the format and version this spikec reads."""
    path = Path(outdir) / MANIFEST
    m = load_json(outdir)
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise SpikecError(f"{path}: format {m.get('format')!r} version {m.get('version')!r}; expected {FORMAT} {VERSION}")
    return m
