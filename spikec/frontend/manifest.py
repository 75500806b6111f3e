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
  "max_new_tokens": int | null,                  # generation_config's, 1..MAX_NEW_TOKENS (`spikec run`'s default)
  "graphs": {"vision"|"embed"|"lm": {"file", "role", "inputs": [io], "outputs": [io]}}
}
io = {"name": str, "dtype": "float32" | "int64" | "bool", "shape": [int | str]}
"""

from __future__ import annotations

import json

import numpy as np
from pathlib import Path

from spikec import schema
from spikec.atomic import write_text
from spikec.errors import SpikecError
from spikec.ops import MAX_T, MODALITY_IDS
from spikec.paths import check_name, check_relative, resolve_inside

MANIFEST = "manifest.json"
FORMAT, VERSION = "spikec-frontend", 1
# The most tokens one generation may produce (`spikec run --max-new-tokens`'s range).
MAX_NEW_TOKENS = 4096


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
    image_token = adapter.image_token_id(config)
    if not 0 <= image_token < tc.vocab_size:
        raise SpikecError(f"{loaded.source}/config.json: the image token id {image_token} is outside the vocabulary "
                          f"(vocab_size {tc.vocab_size}): no position could take the image")
    gen = getattr(loaded.model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    # generate()'s default length as the checkpoint sets it; a value out of the runtime's
    # range is left out rather than refused (the runtime's own default applies)
    max_new = getattr(gen, "max_new_tokens", None) if gen is not None else None
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 1 <= max_new <= MAX_NEW_TOKENS:
        max_new = None
    return {
        "format": FORMAT, "version": VERSION,
        "family": adapter.family, "model_type": config.model_type, "source": loaded.source,
        "opset": opset, "dtype": "float32",
        "modality": dict(MODALITY_IDS),  # the LM's `modality` input values (spikec.ops, the one table)
        "merge": {
            "image_token_id": image_token,
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
        "max_new_tokens": max_new,
        "graphs": graphs,
    }


def write(path: Path, manifest: dict) -> None:
    write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def load_json(outdir: str | Path) -> dict:
    """manifest.json of a model folder as a dict, whatever wrote it (export or compile).

    The paths it holds come from a file someone else may have made: every graph role must
    be a plain name (it names output files), every graph `file` and the `processor` folder
    a relative path with no `..` (spikec.paths); `graph_path` / `processor_path` then
    resolve them inside the folder, symlinks included. Every other field spikec reads is
    checked by `check_manifest`. Raises SpikecError naming the file and field, among them a
    graph file or processor folder whose real location (symlinks followed) is outside the
    folder: refused here, when the manifest is read, before any graph is opened.
    """
    path = Path(outdir) / MANIFEST
    if not path.is_file():
        raise SpikecError(f"{path}: not found (not a folder written by `spikec export` or `spikec compile`)")
    size = path.stat().st_size
    if size > schema.MAX_JSON_BYTES:
        raise SpikecError(f"{path}: {size} bytes, over the limit of {schema.MAX_JSON_BYTES} for a manifest")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpikecError(f"{path}: cannot read ({exc.strerror})") from None
    m = schema.parse_json(data, where=str(path))
    check_manifest(m, where=str(path))
    # resolved now, not when a graph is first opened: a graph file or processor folder that
    # leads out of the folder (a symlink) is refused before any work starts
    for role in m["graphs"]:
        graph_path(outdir, m, role)
    processor_path(outdir, m)
    return m


# Bounds of the manifest's numbers: far above any real model, far below what would make a
# reader allocate or loop without end.
MAX_LAYERS = 1024
MAX_HEADS = 4096
MAX_HEAD_DIM = 65536
MAX_HIDDEN = 1 << 20
MAX_TOKEN_ID = (1 << 31) - 1
MAX_MODALITY_ID = 255
MAX_TIMESTEPS = MAX_T  # what the compiler accepts (spikec.reference.MAX_T), so any manifest it writes reads back
MAX_POSITIONS = 1 << 24  # a config's max_position_embeddings (16M tokens of context)
MAX_GRAPHS = 64
MAX_IO = 4096
MAX_TEXT = 4096


# What each family's adapter feeds the graphs (spikec/frontend/adapters: `mrope`,
# `vision_feeds`, and the shared generation loop in frontend/generate.py), kept here without
# importing the adapters (they need torch; a .sbin is opened without it). A manifest must
# agree with its own family (`_check_family`): otherwise the first image or prompt would end
# in a KeyError of an adapter or an ONNX Runtime rank error. tests/test_untrusted_more.py
# checks this table against the adapters.
MROPE_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})  # position_ids [3, batch, seq]
_QWEN2_VISION = ("pixel_values", "rotary_pos_ids", "segment_ids")
VISION_INPUTS: dict[str, tuple[str, ...]] = {
    "qwen2_vl": _QWEN2_VISION,
    "qwen2_5_vl": _QWEN2_VISION + ("window_segment_ids", "window_index", "reverse_index"),
    "llava": ("pixel_values",),
    "internvl": ("pixel_values",),
    "idefics3": ("pixel_values", "patch_attention_mask"),
}
EMBED_INPUTS = ("input_ids",)
LM_INPUTS = ("inputs_embeds", "attention_mask", "position_ids", "modality")  # then past_names(lm.num_layers)


def _check_family(m: dict, where: str) -> None:
    """A manifest of a known `family` agrees with itself: `position_ids.kind` and the rank
    of `position_ids.shape` are the family's (mrope: [3, batch, seq]; else [batch, seq]),
    the declared inputs of the vision, embed and lm graphs include what the family's
    adapter and the generation loop feed, and the lm graph's `position_ids` input has the
    family's rank. Fields that are absent are not required here. Raises SpikecError naming
    `where` and the field."""
    family = m.get("family")
    if family not in VISION_INPUTS:
        return  # no family (a single-graph model) or one generation refuses by name
    mrope = family in MROPE_FAMILIES
    kind, rank = ("mrope", 3) if mrope else ("1d", 2)
    pos = m.get("position_ids")
    if isinstance(pos, dict):
        if pos.get("kind") is not None and pos["kind"] != kind:
            raise SpikecError(f"{where}: field 'position_ids.kind' = {schema.describe(pos['kind'])} does not match "
                              f"field 'family' = {family!r}, whose position ids are {kind!r}")
        shape = pos.get("shape")
        if isinstance(shape, list) and shape and len(shape) != rank:
            raise SpikecError(f"{where}: field 'position_ids.shape' has rank {len(shape)}; family {family!r} "
                              f"feeds position ids of rank {rank}")
    graphs = m["graphs"]
    layers = (m.get("lm") or {}).get("num_layers")
    wanted = {"vision": VISION_INPUTS[family], "embed": EMBED_INPUTS,
              "lm": LM_INPUTS + tuple(past_names(layers) if isinstance(layers, int) else ())}
    for role, names in wanted.items():
        entry = graphs.get(role)
        if not isinstance(entry, dict) or entry.get("inputs") is None:
            continue
        declared = {io["name"]: io for io in entry["inputs"]}
        missing = [n for n in names if n not in declared]
        if missing and missing[0].startswith("past_key_values."):
            raise SpikecError(f"{where}: field 'lm.num_layers' = {layers} implies KV-cache inputs that field "
                              f"'graphs.lm.inputs' does not declare (e.g. {missing[0]!r})")
        if missing:
            raise SpikecError(f"{where}: field 'graphs.{role}.inputs' lacks {missing[0]!r}, which family {family!r} "
                              f"feeds the {role} graph (declared: {schema.describe(sorted(declared))})")
        if role == "lm":
            shape = declared["position_ids"].get("shape")
            if isinstance(shape, list) and len(shape) != rank:
                raise SpikecError(f"{where}: field 'graphs.lm.inputs' declares 'position_ids' of rank {len(shape)}; "
                                  f"family {family!r} feeds rank {rank}")


def _check_io(value: object, where: str, field: str) -> None:
    """A graph's `inputs` or `outputs` list (field names it: "graphs.lm.inputs")."""
    items = schema.check(value, list, where=f"{where}: field '{field}'", max=MAX_IO)
    for i, io in enumerate(items):
        w = f"{where}: field '{field}[{i}]'"
        schema.check(io, dict, where=w)
        schema.check(io.get("name"), str, where=f"{where}: field '{field}[{i}].name'", max=MAX_TEXT)
        schema.check(io.get("dtype"), str, where=f"{where}: field '{field}[{i}].dtype'", nullable=True, max=64)
        shape = schema.check(io.get("shape"), list, where=f"{where}: field '{field}[{i}].shape'", nullable=True, max=64)
        for j, d in enumerate(shape or []):
            schema.check(d, (int, str), where=f"{where}: field '{field}[{i}].shape[{j}]'")


def check_manifest(m: object, *, where: str, sbin: bool = False) -> dict:
    """Check every field of a manifest (an export or compiled folder's manifest.json, or a
    .sbin's manifest section) that spikec reads, each where present; `graphs` is required.

    Types and ranges: `modality` maps names to distinct ids in 0..MAX_MODALITY_ID; `lm`
    dimensions, `merge.image_token_id` and `eos_token_id` are bounded integers; graph I/O
    entries are objects with a string name; `timesteps` maps graphs to {modality: T}; a
    known `family` agrees with `position_ids` and the graphs' declared inputs
    (`_check_family`). The
    path fields are checked by `check_paths` (in a .sbin, `processor` is never used as a
    path and is not checked: SbinModel.folder() chooses the folder). Returns `m`.
    Raises SpikecError naming `where` and the field."""
    schema.check(m, dict, where=f"{where}: the manifest")
    assert isinstance(m, dict)
    for key in ("format", "model_type", "dtype", "family"):
        schema.get(m, key, str, where=where, default=None, max=MAX_TEXT)
    schema.get(m, "source", str, where=where, default=None, max=MAX_TEXT, nullable=True)
    schema.get(m, "version", int, where=where, default=None)
    schema.get(m, "opset", int, where=where, default=None, min=1, max=1000)
    modality = schema.get(m, "modality", dict, where=where, default=None, min=1, max=MAX_MODALITY_ID + 1)
    if modality is not None:
        for name, mid in modality.items():
            schema.check(name, str, where=f"{where}: a name in field 'modality'", min=1, max=64)
            schema.check(mid, int, where=f"{where}: field 'modality.{name}'", min=0, max=MAX_MODALITY_ID)
        if len(set(modality.values())) != len(modality):
            raise SpikecError(f"{where}: field 'modality' gives two modalities the same id: {schema.describe(modality)}")
    if schema.get(m, "merge", dict, where=where, default=None) is not None:
        schema.get(m, "merge.image_token_id", int, where=where, default=None, min=0, max=MAX_TOKEN_ID)
        schema.get(m, "merge.rule", str, where=where, default=None, max=MAX_TEXT)
    if schema.get(m, "position_ids", dict, where=where, default=None) is not None:
        schema.get(m, "position_ids.kind", str, where=where, default=None, choices=("1d", "mrope"))
        for j, d in enumerate(schema.get(m, "position_ids.shape", list, where=where, default=[], max=8)):
            schema.check(d, (int, str), where=f"{where}: field 'position_ids.shape[{j}]'")
    if schema.get(m, "lm", dict, where=where, default=None) is not None:
        for key, hi in (("num_layers", MAX_LAYERS), ("num_kv_heads", MAX_HEADS), ("head_dim", MAX_HEAD_DIM),
                        ("hidden_size", MAX_HIDDEN), ("vocab_size", MAX_TOKEN_ID)):
            schema.get(m, f"lm.{key}", int, where=where, default=None, min=1, max=hi)
        for key in ("past", "present", "decode"):
            schema.get(m, f"lm.{key}", str, where=where, default=None, max=MAX_TEXT)
    eos = m.get("eos_token_id")
    if isinstance(eos, list):
        schema.int_list(eos, where=f"{where}: field 'eos_token_id'", min=0, max=MAX_TOKEN_ID, length=(0, 1024))
    else:
        schema.get(m, "eos_token_id", int, where=where, default=None, nullable=True, min=0, max=MAX_TOKEN_ID)
    schema.get(m, "max_new_tokens", int, where=where, default=None, nullable=True, min=1, max=MAX_NEW_TOKENS)
    timesteps = schema.get(m, "timesteps", dict, where=where, default=None, max=MAX_GRAPHS)
    for role, table in (timesteps or {}).items():
        if schema.check(table, dict, where=f"{where}: field 'timesteps.{role}'", nullable=True, max=MAX_MODALITY_ID + 1):
            for name, t in table.items():
                schema.check(t, int, where=f"{where}: field 'timesteps.{role}.{name}'", min=1, max=MAX_TIMESTEPS)
    schema.get(m, "compiled", dict, where=where, default=None)
    graphs = m.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise SpikecError(f"{where}: field 'graphs' must be an object naming at least one graph")
    schema.check(graphs, dict, where=f"{where}: field 'graphs'", max=MAX_GRAPHS)
    for role, entry in graphs.items():
        check_name(role, where=f"{where}: graph role")
        schema.check(entry, dict, where=f"{where}: field 'graphs.{role}'")
        schema.get(entry, "role", str, where=f"{where}: graphs.{role}", default=None, max=MAX_TEXT)
        for key in ("inputs", "outputs"):
            if key in entry:
                _check_io(entry[key], where, f"graphs.{role}.{key}")
    _check_family(m, where)
    if not sbin:
        check_paths(m, where=where)
    return m


def generation_fields(m: dict, *, where: str) -> dict:
    """What greedy generation reads from a front-end manifest, checked: `family`,
    `lm.num_layers`, `lm.num_kv_heads`, `lm.head_dim`, `merge.image_token_id`, the
    `modality` ids of text and vision, and the set of `eos_token_id`s.
    Raises SpikecError naming `where` and the field."""
    from spikec.frontend.adapters import ADAPTERS

    check_manifest(m, where=where, sbin=True)
    families = [a.family for a in ADAPTERS]
    eos = m.get("eos_token_id")
    vocab = schema.get(m, "lm.vocab_size", int, where=where, default=None, min=1, max=MAX_TOKEN_ID)
    image_token = schema.get(m, "merge.image_token_id", int, where=where, min=0, max=MAX_TOKEN_ID)
    if vocab is not None and image_token >= vocab:
        # the merge would find no image position: the image would be silently ignored
        raise SpikecError(f"{where}: field 'merge.image_token_id' = {image_token} is outside the vocabulary "
                          f"(lm.vocab_size {vocab})")
    return {
        "family": schema.get(m, "family", str, where=where, choices=families),
        "num_layers": schema.get(m, "lm.num_layers", int, where=where, min=1, max=MAX_LAYERS),
        "num_kv_heads": schema.get(m, "lm.num_kv_heads", int, where=where, min=1, max=MAX_HEADS),
        "head_dim": schema.get(m, "lm.head_dim", int, where=where, min=1, max=MAX_HEAD_DIM),
        "image_token_id": schema.get(m, "merge.image_token_id", int, where=where, min=0, max=MAX_TOKEN_ID),
        "modality": {name: schema.get(m, f"modality.{name}", int, where=where, min=0, max=MAX_MODALITY_ID)
                     for name in MODALITY_IDS},
        "eos": set(eos) if isinstance(eos, list) else set() if eos is None else {eos},
    }


def check_paths(m: dict, *, where: str) -> None:
    """The path-like fields of a manifest: graph roles, graph files, the processor folder."""
    schema.check(m, dict, where=f"{where}: the manifest")
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
    """The front end's manifest, checked (`check_manifest`) and of the format and version
    this spikec reads. Raises SpikecError naming the file and field."""
    path = Path(outdir) / MANIFEST
    m = load_json(outdir)
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise SpikecError(f"{path}: format {schema.describe(m.get('format'))} version {schema.describe(m.get('version'))}; "
                          f"expected {FORMAT} {VERSION}")
    return m
