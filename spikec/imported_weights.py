"""The integer codes and scales a graph exported from a quantized checkpoint carries.

`spikec export` of a published int4 checkpoint (spikec/frontend/quantized.py: compressed-
tensors pack-quantized, GPTQ, AWQ GEMM) writes, beside each graph that has imported layers,
a safetensors side file `<graph>.int4.safetensors` of `<module>.codes` (int8 [K, M], the
checkpoint's q - z) and `<module>.scales` (float32 [n, M], n groups of contiguous rows),
keyed by the MatMul's module path and named in the graph's metadata `spikec.imported_weights`
({"format", "file", "layers"}). The quantize pass (passes/quantize.py) reads it through
`imported_weights` and takes the codes and scales as they are. This module is the one
definition of that file, below both the front end that writes it and the pass that reads
it (docs/layers.md: front end -> passes, never back).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from spikec.errors import SpikecError
from spikec.schema import parse_json

IMPORTED_KEY = "spikec.imported_weights"  # graph metadata: {"format", "file", "layers"}
SIDE_SUFFIX = ".int4.safetensors"


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32(codes) * scales[group of the row] (group = row // (K / n)); the one definition
    the export and the quantize pass's check share."""
    K, n = codes.shape[0], scales.shape[0]
    return codes.astype(np.float32) * np.repeat(scales.astype(np.float32, copy=False), K // n, axis=0)


_ST_DTYPES = {np.dtype(np.int8): "I8", np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}


def write_side_file(path: Path, entries: list[tuple[str, list[int], np.dtype]], produce) -> None:
    """A safetensors file written one tensor at a time: `entries` (name, shape, dtype) in
    order, `produce(name)` gives each array (called once per entry, in order)."""
    header, offset = {}, 0
    for name, shape, dtype in entries:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_DTYPES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "spikec-imported-int4"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            a = np.ascontiguousarray(produce(name), dtype=dtype)
            if list(a.shape) != list(shape):
                raise AssertionError(f"side file: {name} has shape {list(a.shape)}, declared {shape}")
            f.write(a.tobytes())


class ImportedWeights:
    """The imported codes and scales of one graph, read by the quantize pass."""

    def __init__(self, path: Path, fmt: str) -> None:
        from safetensors import safe_open

        self.path, self.format = path, fmt
        try:
            self._h = safe_open(str(path), framework="np")
        except Exception as exc:
            raise SpikecError(f"{path}: cannot read the imported weights: {str(exc)[:200]}") from None
        self._keys = set(self._h.keys())

    def __contains__(self, module: str) -> bool:
        return f"{module}.codes" in self._keys

    def modules(self) -> list[str]:
        return sorted(k[: -len(".codes")] for k in self._keys if k.endswith(".codes"))

    def get(self, module: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes int8 [K, M], scales float32 [n, M]), checked for dtype, shape and range."""
        codes, scales = self._h.get_tensor(f"{module}.codes"), self._h.get_tensor(f"{module}.scales")
        where = f"{self.path}: layer {module}"
        if codes.dtype != np.int8 or codes.ndim != 2 or scales.dtype != np.float32 or scales.ndim != 2 \
                or scales.shape[1] != codes.shape[1] or scales.shape[0] < 1 or codes.shape[0] % scales.shape[0]:
            raise SpikecError(f"{where}: codes {codes.dtype} {list(codes.shape)} and scales {scales.dtype} "
                              f"{list(scales.shape)} are not int8 [K, M] and float32 [n, M] with n dividing K")
        if np.abs(codes.astype(np.int16)).max(initial=0) > 127 or not (np.isfinite(scales) & (scales > 0)).all():
            raise SpikecError(f"{where}: codes beyond +-127 or scales not finite and positive")
        return codes, scales


def imported_weights(model) -> ImportedWeights | None:
    """The side file of a graph exported from a quantized checkpoint (its metadata names
    it, relative to the graph's folder: the base folder of its external weights)."""
    meta = model.metadata_props.get(IMPORTED_KEY)
    if not meta:
        return None
    from spikec.paths import resolve_inside

    try:
        info = parse_json(meta, where="quantization metadata")
    except SpikecError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("file"), str) or not isinstance(info.get("format"), str):
        raise SpikecError(f"graph metadata {IMPORTED_KEY}: expected {{\"format\": str, \"file\": str}}, got "
                          f"{meta[:120]!r}")
    base = None
    for v in model.graph.initializers.values():
        base = getattr(v.const_value, "base_dir", None)
        if base:
            break
    if not base:
        raise SpikecError(f"graph metadata {IMPORTED_KEY} names {info['file'][:80]!r}, but the graph's folder is "
                          "unknown (its weights are not external data); compile the exported graph in its folder")
    path = resolve_inside(base, info["file"], where=f"graph metadata {IMPORTED_KEY} file")
    if not path.is_file():
        raise SpikecError(f"{path}: the imported weights of this graph are missing (graph metadata {IMPORTED_KEY})")
    return ImportedWeights(path, info["format"])
