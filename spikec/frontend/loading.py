"""Load a model and its processor: a save_pretrained folder or a built-in tiny name.

Every way a folder can be wrong ends in a SpikecError that names the file or tensor:
no config.json, an unsupported architecture, a size in config.json that is not a positive
integer in range (or heads that do not divide the hidden size), a model that needs more
memory than the machine has (refused before anything is allocated, with the estimate),
no weights, pickle-only weights without --allow-pickle, a missing tensor or one of the
wrong shape, a tensor holding NaN or inf.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikec.errors import SpikecError
from spikec.schema import parse_json
from spikec.paths import resolve_inside

log = logging.getLogger(__name__)

# Never reach the network, whatever the environment says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@dataclass
class Loaded:
    model: Any  # a transformers *ForConditionalGeneration in eval mode, float32, eager attention
    processor: Any
    adapter: type
    source: str
    # With stream=True: the checkpoint's tensors for a `model` that has no weight values
    # (spikec.frontend.streaming); None when `model` holds real float32 weights.
    weights: Any = None


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load(source: str | os.PathLike, *, allow_pickle: bool = False, stream: bool = False) -> Loaded:
    """A built-in tiny model, or a checkpoint folder. With `stream` (export), a folder gives a
    trace model without weight values plus its memory-mapped tensors (Loaded.weights), so
    that memory stays bounded by one tensor whatever the model's size; without it, a float32
    model with real weights (evaluation of the float model)."""
    from spikec.frontend.tiny import TINY, build_tiny

    _quiet_transformers()
    src = str(source)
    if src in TINY and not Path(src).exists():
        from spikec.frontend.adapters import adapter_for

        model, processor = build_tiny(src)
        model.config._attn_implementation = "eager"
        return Loaded(model, processor, adapter_for(model.config.model_type), src)
    return load_folder(Path(src), allow_pickle=allow_pickle, stream=stream)


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    safe = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for p in folder.glob("*.bin") if p.name.startswith("pytorch_model")) + sorted(
        folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
    return safe, pickled


# safetensors: an 8-byte little-endian header length, the JSON header, then the data
# (https://github.com/huggingface/safetensors, "Format"); the library caps the header at 100 MB
SAFETENSORS_MAX_HEADER = 100_000_000


def check_safetensors(path: Path) -> int:
    """SpikecError naming `path` unless its header is well formed and every tensor's
    data_offsets lie inside the file (a truncated or mutated shard), read without loading
    any tensor. Returns the number of elements its tensors hold (by their shapes).
    Raises: SpikecError."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > SAFETENSORS_MAX_HEADER or 8 + n > size:
                raise SpikecError(f"{path}: not a complete safetensors file (header of {n} bytes in a file of {size})")
            header = parse_json(f.read(n), where=f"{path}: safetensors header")
    except OSError as exc:
        raise SpikecError(f"{path}: cannot read: {exc}") from None
    if not isinstance(header, dict):
        raise SpikecError(f"{path}: safetensors header is not a JSON object")
    data = size - 8 - n
    elements = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offs = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= data):
            raise SpikecError(f"{path}: tensor '{str(name)[:80]}': data_offsets {str(offs)[:80]} outside the file's "
                              f"{data} data bytes (truncated or damaged)")
        shape = entry.get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            elements += math.prod(shape)
    return elements


# Sizes config.json gives a model (in the top level and in every *_config object: text_config,
# vision_config), with their bounds: those of an export folder's manifest.json
# (spikec.frontend.manifest), so that whatever exports can be read back.
def _size_fields() -> dict[str, int]:
    from spikec.frontend import manifest as mf

    return {"hidden_size": mf.MAX_HIDDEN, "embed_dim": mf.MAX_HIDDEN, "intermediate_size": mf.MAX_HIDDEN,
            "num_attention_heads": mf.MAX_HEADS, "num_heads": mf.MAX_HEADS, "num_key_value_heads": mf.MAX_HEADS,
            "head_dim": mf.MAX_HEAD_DIM, "num_hidden_layers": mf.MAX_LAYERS, "depth": mf.MAX_LAYERS,
            "vocab_size": mf.MAX_TOKEN_ID, "max_position_embeddings": mf.MAX_POSITIONS}


def check_config_sizes(raw: dict, *, where: str) -> None:
    """The sizes of a checkpoint's config.json (`raw`, parsed; `where` names the file), checked
    before transformers reads them: hidden_size, embed_dim, intermediate_size,
    num_attention_heads, num_heads, num_key_value_heads, head_dim, num_hidden_layers, depth,
    vocab_size and max_position_embeddings, where present and not null, at the top level and in every `*_config`
    object, must be integers from 1 up to the bounds of manifest.json; the attention heads
    must divide the hidden size (hidden_size or embed_dim) and be a multiple of the key/value
    heads. Raises SpikecError naming the file and the field ('text_config.num_attention_heads').
    """
    from spikec import schema

    bounds = _size_fields()
    stack: list[tuple[str, dict]] = [("", raw)]
    while stack:
        prefix, cfg = stack.pop()
        sizes = {}
        for key, hi in bounds.items():
            if cfg.get(key) is not None:
                sizes[key] = schema.check(cfg[key], int, where=f"{where}: field '{prefix}{key}'", min=1, max=hi)
        heads = next((k for k in ("num_attention_heads", "num_heads") if k in sizes), None)
        hidden = next((k for k in ("hidden_size", "embed_dim") if k in sizes and
                       (k == "embed_dim" or heads == "num_attention_heads")), None)
        if heads and hidden and sizes[hidden] % sizes[heads]:
            raise SpikecError(f"{where}: field '{prefix}{hidden}' ({sizes[hidden]}) is not a multiple of field "
                              f"'{prefix}{heads}' ({sizes[heads]})")
        kv = sizes.get("num_key_value_heads")
        if heads and kv and sizes[heads] % kv:
            raise SpikecError(f"{where}: field '{prefix}{heads}' ({sizes[heads]}) is not a multiple of field "
                              f"'{prefix}num_key_value_heads' ({kv})")
        stack.extend((f"{prefix}{k}.", v) for k, v in sorted(cfg.items(), reverse=True)
                     if k.endswith("_config") and isinstance(v, dict))


# Families whose published configs may keep the language model's fields at the top level
# instead of in a text_config object (Qwen2-VL-2B/7B-Instruct's config.json does; transformers
# moves them into text_config).
TOP_LEVEL_TEXT_FAMILIES = frozenset({"qwen2_vl", "qwen2_5_vl"})


def check_sub_configs(raw: dict, *, where: str) -> None:
    """A checkpoint's config.json (`raw`, parsed; `where` names the file) must describe both
    halves of the model: a `vision_config` object and a `text_config` object (or, for
    TOP_LEVEL_TEXT_FAMILIES, the text fields at the top level, with hidden_size). Without
    one, transformers builds that half from its config class's defaults (LLaVA: a
    Llama-2-7B-sized language model), not from the checkpoint, and the mismatch shows up
    only as missing or unused weights. Raises SpikecError naming the file and the field."""
    for key in ("vision_config", "text_config"):
        value = raw.get(key)
        if isinstance(value, dict):
            continue
        if value is not None:
            raise SpikecError(f"{where}: field '{key}' must be an object, got {type(value).__name__}")
        if key == "text_config" and raw.get("model_type") in TOP_LEVEL_TEXT_FAMILIES and "hidden_size" in raw:
            continue
        raise SpikecError(f"{where}: no '{key}' object: transformers would build that half of the model from its "
                          f"defaults, not from this checkpoint (a folder written by save_pretrained has one)")


# Memory a load or an export needs beyond its tensors and beyond what the process holds when
# the check runs (Python, torch and transformers are loaded by then): the exporter and the
# traced graphs. docs/real-size.md: 2B and 7B exports peaked at 2.47 and 4.84 GiB in all,
# about 0.6 GiB of it the loaded runtime, the rest mostly two of their largest float32 tensors.
RUNTIME_BYTES = 512 << 20


def memory_estimate(folder: Path, config, *, stream: bool, checkpoint_elements: int | None) -> dict:
    """What loading the checkpoint in `folder` with `config` will take, from the config alone:
    the model is built on torch's meta device (shapes, no storage). `stream` (export): two of
    the largest tensors in float32 (one converted while another is written) plus the
    runtime; otherwise (a float32 model, for evaluation) every parameter in float32 plus the
    runtime. With `checkpoint_elements` (the elements the *.safetensors files hold), the
    parameters the checkpoint does not hold are added in float32: transformers allocates
    those from the config (a config larger than its checkpoint). Returns {"bytes",
    "parameters", "largest", "largest_name"}. Raises SpikecError naming config.json when the
    model cannot be built from the config."""
    import copy

    import torch
    from transformers import AutoModelForImageTextToText

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # shapes of the float model; no quantizer set up
        delattr(config, "quantization_config")
    try:
        with torch.device("meta"):
            meta = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds on a bad config
        raise SpikecError(f"{folder / 'config.json'}: cannot build the model from the config: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None
    params = dict(meta.named_parameters())  # tied parameters once
    total = sum(p.numel() for p in params.values())
    name, largest = max(((n, p) for n, p in params.items()), key=lambda np_: np_[1].numel(), default=("", None))
    big = largest.numel() if largest is not None else 0
    need = RUNTIME_BYTES + (2 * 4 * big if stream else 4 * total)
    if checkpoint_elements is not None:
        need += 4 * max(0, total - checkpoint_elements)
    return {"bytes": need, "parameters": total, "largest": list(largest.shape) if largest is not None else [],
            "largest_name": name}


def check_memory(folder: Path, config, *, stream: bool, checkpoint_elements: int | None) -> None:
    """Refuse, before anything is allocated, a checkpoint whose load (`memory_estimate`) needs
    more memory than the machine has available (spikec.memory.available_bytes; no check where
    that cannot be read). Raises SpikecError naming config.json, with the estimate."""
    from spikec.memory import available_bytes, gib

    available = available_bytes()
    est = memory_estimate(folder, config, stream=stream, checkpoint_elements=checkpoint_elements)
    if available is not None and est["bytes"] > available:
        raise SpikecError(
            f"{folder / 'config.json'}: {'exporting' if stream else 'loading'} this model needs about "
            f"{gib(est['bytes'])} of memory ({est['parameters']:,} parameters, the largest "
            f"{est['largest_name']} {est['largest']}), more than the {gib(available)} available; nothing was "
            "loaded (check the sizes in config.json, or use a machine with more memory)")


def load_folder(folder: Path, *, allow_pickle: bool = False, stream: bool = False) -> Loaded:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from spikec.frontend.adapters import adapter_for
    from spikec.frontend.tiny import TINY

    if not folder.is_dir():
        raise SpikecError(f"{folder}: not a folder and not a built-in model name ({', '.join(TINY)})")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise SpikecError(f"{folder}: no config.json (expected a folder written by save_pretrained)")
    # Check the architecture from the raw JSON first: an unsupported model is reported
    # as such even when its config would not validate in transformers.
    try:
        raw = parse_json(cfg_path.read_bytes(), where=str(cfg_path))
    except OSError as exc:
        raise SpikecError(f"{cfg_path}: cannot read: {exc}") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise SpikecError(f"{cfg_path}: no model_type field")
    adapter = adapter_for(raw["model_type"], where=str(cfg_path))
    check_sub_configs(raw, where=str(cfg_path))
    check_config_sizes(raw, where=str(cfg_path))  # before transformers divides by them
    from spikec.frontend import quantized

    spec = quantized.read_spec(cfg_path, raw)  # checked before transformers reads the config
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise SpikecError(f"{cfg_path}: cannot read the config: {exc}") from exc

    _check_shard_index(folder)
    elements = 0
    for shard in _weight_files(folder)[0]:  # names a damaged shard before transformers reads it
        elements += check_safetensors(shard)
    # a quantized checkpoint packs several codes per stored element: no count to compare
    check_memory(folder, config, stream=stream,
                 checkpoint_elements=elements if spec is None and _weight_files(folder)[0] else None)
    if spec is not None:  # a published int4 format: codes and scales imported as stored
        model, weights = quantized.load_quantized(folder, config, spec, stream=stream)
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise SpikecError(f"{folder}: cannot load the processor/tokenizer files: {exc}") from exc
        _set_generation_config(folder, model)
        return Loaded(model.eval(), processor, adapter, str(folder), weights)
    safe, pickled = _weight_files(folder)
    if not safe and not pickled:
        raise SpikecError(f"{folder}: no weight files (*.safetensors)")
    if not safe and not allow_pickle:
        raise SpikecError(
            f"{pickled[0]}: pickle-only checkpoint; pickle files can run code when loaded. "
            "Convert it to safetensors, or pass --allow-pickle if you trust it"
        )
    log.info("loading %s (%s) from %s", config.model_type, "safetensors" if safe else "pickle", folder)
    try:
        # Streaming keeps the stored dtype: safetensors are then memory-mapped, not converted.
        model, info = AutoModelForImageTextToText.from_pretrained(
            folder, config=config, local_files_only=True, dtype="auto" if stream else torch.float32,
            attn_implementation="eager", output_loading_info=True, ignore_mismatched_sizes=True,
            use_safetensors=bool(safe),
        )
    except SpikecError:
        raise
    except Exception as exc:
        raise SpikecError(f"{folder}: cannot load the weights: {exc}") from exc
    _check_loading_info(folder, info)
    _check_finite(folder, model, safe)
    weights = None
    if stream:
        from spikec.frontend.streaming import CheckpointWeights, trace_model

        values, model = model, trace_model(model)
        weights = CheckpointWeights(model, values)
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise SpikecError(f"{folder}: cannot load the processor/tokenizer files: {exc}") from exc
    _set_generation_config(folder, model)
    return Loaded(model.eval(), processor, adapter, str(folder), weights)


def _set_generation_config(folder: Path, model) -> None:
    """The checkpoint's generation_config.json on `model`, whichever way it was built.

    A model built from the config alone (the streaming path's trace model, a quantized
    checkpoint's) has a generation config derived from config.json, which misses what only
    generation_config.json says: its EOS list (Qwen2-VL-Instruct's adds 151643) and
    max_new_tokens, both exported into the manifest. Raises SpikecError naming the file
    when transformers cannot read it."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds on a bad file
        raise SpikecError(f"{path}: cannot read the generation config: {type(exc).__name__}: "
                          f"{str(exc)[:300]}") from None


def _check_finite(folder: Path, model, safe: list[Path], chunk: int = 1 << 24) -> None:
    """Refuse NaN/+-inf in the loaded weights (every parameter, `chunk` elements at a time).

    Raises SpikecError naming the checkpoint's own tensor (found in the *.safetensors files,
    read tensor by tensor, only once a bad parameter was seen) and the model parameter."""
    import torch

    bad = None
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and not all(bool(torch.isfinite(c).all()) for c in p.reshape(-1).split(chunk)):
                bad = name
                break
    if bad is None:
        return
    where = f"parameter {bad}"
    try:
        from safetensors import safe_open

        for path in safe:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                        where = f"tensor {key} in {path.name} (model parameter {bad})"
                        raise StopIteration
    except StopIteration:
        pass
    except Exception as exc:  # naming the checkpoint tensor is a courtesy: keep the model's name
        log.debug("could not find the checkpoint tensor of %s: %s", bad, exc)
    raise SpikecError(f"{folder}: {where} holds NaN or inf: the checkpoint is corrupt "
                      "(a broken fine-tune, merge or conversion); spikec does not export it")


# A sharded checkpoint's *.index.json: a weight name and a shard name per tensor (a 72B
# model's is about 100 KB); far beyond that it is not an index.
MAX_INDEX_BYTES = 64 << 20


def _check_shard_index(folder: Path) -> None:
    """The shard names of a sharded checkpoint's index stay inside the folder: transformers
    joins them to the folder, so an absolute or `..` name would read a file from elsewhere."""
    for index in sorted(folder.glob("*.index.json")):
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise SpikecError(f"{index}: {index.stat().st_size} bytes, over the {MAX_INDEX_BYTES} an index needs")
        try:
            data = index.read_bytes()
        except OSError as exc:
            raise SpikecError(f"{index}: cannot read ({exc.strerror or exc})") from None
        doc = parse_json(data, where=str(index), max_bytes=MAX_INDEX_BYTES)  # duplicate keys refused too
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict):
            raise SpikecError(f"{index}: field 'weight_map' must be an object of tensor name -> shard file")
        for name in sorted(set(map(str, weight_map.values()))):
            shard = resolve_inside(folder, name, where=f"{index}: weight_map shard")
            if not shard.is_file():
                raise SpikecError(f"{index}: weight_map names shard '{name[:80]}', which is not in {folder}")


def _check_loading_info(folder: Path, info: dict) -> None:
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if mismatched:
        first = mismatched[0]
        if isinstance(first, tuple) and len(first) == 3:
            name, got, want = first
            detail = f"tensor {name} has shape {list(got)}, the config needs {list(want)}"
        else:
            detail = f"tensor {first} has the wrong shape for the config"
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise SpikecError(f"{folder}: {detail}{more}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SpikecError(f"{folder}: weights missing: tensor {missing[0]} not found in the checkpoint{more}")
