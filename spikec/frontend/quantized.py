"""Import the integer codes and group scales of a published int4 checkpoint, exactly.

Formats (the checkpoint's config.json `quantization_config`):
- compressed-tensors `pack-quantized` (llm-compressor): `weight_packed` int32 [M, K/8]
  (eight 4-bit values per word along K, element i in bits 4i..4i+3, stored as q + 8),
  `weight_scale` [M, K/G], `weight_shape` [2], and for asymmetric schemes
  `weight_zero_point` int32 [M/8, K/G] (packed along M the same way); W = (q - z) * s.
- GPTQ (`quant_method: gptq`; AutoGPTQ / GPTQModel): `qweight` int32 [K/8, M] (packed
  along K, element i of a word in bits 4i..4i+3, unsigned), `qzeros` int32 [n, M/8]
  (packed along M), `scales` [n, M], `g_idx` int32 [K] (the group of each input row;
  arbitrary with `desc_act`), `checkpoint_format` gptq (v1: a stored zero is z - 1) or
  gptq_v2 (z as is); W[k] = (q[k] - z[g_idx[k]]) * s[g_idx[k]].
- AWQ GEMM (`quant_method: awq`, version gemm): `qweight` int32 [K, M/8] (packed along
  M in AWQ's order: nibble i of word c holds column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i]),
  `qzeros` int32 [n, M/8] (same order), `scales` [n, M]; W = (q - z) * s.

Each quantized linear layer becomes, in spikec's layout ([K, M] for MatMul(x, W)):
codes int8 (q - z, in [-15, 15]), scales float32 [n, M] (fp16/bf16 -> float32 is exact)
and, with act-order, the row permutation perm (stable argsort of g_idx) that makes each
group contiguous. The exported float graph holds W[perm] = float32(codes) * scales (one
float32 product, exact for fp16/bf16 scales) and reads x[..., perm] (a Gather), so it
computes the checkpoint's dequantized model; the codes and scales travel to the compiler
in a safetensors side file beside the graph (`<graph>.int4.safetensors`, named in the
graph's metadata `spikec.imported_weights`), keyed by module path. The quantize pass
takes them as they are (passes/quantize.py) after checking codes * scales == the
graph's weight bit for bit.

Everything read from the checkpoint is checked before use; any fault is a SpikecError
naming the file and the field or tensor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from spikec.errors import SpikecError
from spikec.imported_weights import IMPORTED_KEY, SIDE_SUFFIX, dequantize, write_side_file

log = logging.getLogger(__name__)

CT_FORMAT = "compressed-tensors:pack-quantized"
GPTQ_FORMATS = ("gptq", "gptq_v2")
AWQ_FORMAT = "awq:gemm"
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column 8c + AWQ_ORDER[i]
SUPPORTED = "compressed-tensors (format pack-quantized), gptq (checkpoint_format gptq or gptq_v2), awq (version gemm)"
FLOAT_DTYPES = ("F16", "BF16", "F32")


@dataclasses.dataclass
class QuantSpec:
    format: str  # CT_FORMAT, "gptq", "gptq_v2", AWQ_FORMAT
    bits: int
    group_size: int  # -1: one group over all of K
    symmetric: bool | None
    desc_act: bool
    config: dict  # the checkpoint's quantization_config, as read

    @property
    def parts(self) -> tuple[str, ...]:
        """The tensor names (after the module path) of a quantized layer."""
        if self.format == CT_FORMAT:
            return ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx")
        return ("qweight", "qzeros", "scales", "g_idx")

    @property
    def marker(self) -> str:
        return "weight_packed" if self.format == CT_FORMAT else "qweight"


def _field(qc: dict, name: str, where: str, kinds, default=dataclasses.MISSING):
    if name not in qc:
        if default is dataclasses.MISSING:
            raise SpikecError(f"{where}: field '{name}' is missing")
        return default
    v = qc[name]
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise SpikecError(f"{where}: field '{name}' has the wrong type ({type(v).__name__}: {str(v)[:60]!r})")
    return v


def read_spec(cfg_path: Path, raw: dict) -> QuantSpec | None:
    """The checked quantization_config of a checkpoint's config.json; None if it has none."""
    qc = raw.get("quantization_config")
    if qc is None:
        return None
    where = f"{cfg_path}: quantization_config"
    if not isinstance(qc, dict):
        raise SpikecError(f"{where}: must be an object")
    method = _field(qc, "quant_method", where, str)
    if method == "compressed-tensors":
        return _ct_spec(qc, where)
    if method == "gptq":
        bits = _field(qc, "bits", where, int)
        if bits != 4:
            raise SpikecError(f"{where}: field 'bits' is {bits}; spikec imports 4-bit GPTQ checkpoints only")
        g = _field(qc, "group_size", where, int)
        if g != -1 and g <= 0:
            raise SpikecError(f"{where}: field 'group_size' is {g}; expected -1 or a positive row count")
        fmt = _field(qc, "checkpoint_format", where, str, _field(qc, "format", where, str, "gptq"))
        if fmt not in GPTQ_FORMATS:
            raise SpikecError(f"{where}: field 'checkpoint_format' is {fmt[:40]!r}; spikec imports {GPTQ_FORMATS}")
        desc = _field(qc, "desc_act", where, bool, False)
        sym = _field(qc, "sym", where, bool, True)
        return QuantSpec(fmt, 4, g, sym, desc, qc)
    if method == "awq":
        bits = _field(qc, "bits", where, int, _field(qc, "w_bit", where, int, 4))
        if bits != 4:
            raise SpikecError(f"{where}: field 'bits' is {bits}; spikec imports 4-bit AWQ checkpoints only")
        version = _field(qc, "version", where, str, "gemm").lower()
        if version != "gemm":
            raise SpikecError(f"{where}: field 'version' is {version[:40]!r}; spikec imports the AWQ GEMM layout only")
        g = _field(qc, "group_size", where, int, _field(qc, "q_group_size", where, int, 128))
        if g <= 0:
            raise SpikecError(f"{where}: field 'group_size' is {g}; expected a positive row count")
        return QuantSpec(AWQ_FORMAT, 4, g, _field(qc, "zero_point", where, bool, True) is False, False, qc)
    raise SpikecError(f"{where}: quant_method {method[:40]!r} is not supported; spikec imports {SUPPORTED}")


def _ct_spec(qc: dict, where: str) -> QuantSpec:
    for empty in ("sparsity_config", "transform_config"):
        if qc.get(empty):
            raise SpikecError(f"{where}: field '{empty}' is set; spikec imports plain pack-quantized weights only "
                              f"(no sparsity, no transforms)")
    if qc.get("kv_cache_scheme"):
        raise SpikecError(f"{where}: field 'kv_cache_scheme' is set; a quantized KV cache is not imported")
    groups = _field(qc, "config_groups", where, dict)
    if not groups:
        raise SpikecError(f"{where}: field 'config_groups' is empty")
    args = None
    top = qc.get("format")
    for name, group in groups.items():
        gw = f"{where}.config_groups.{str(name)[:40]}"
        if not isinstance(group, dict):
            raise SpikecError(f"{gw}: must be an object")
        fmt = group.get("format") or top
        if fmt != "pack-quantized":
            raise SpikecError(f"{gw}: field 'format' is {str(fmt)[:40]!r}; spikec imports compressed-tensors "
                              f"'pack-quantized' only")
        for act in ("input_activations", "output_activations"):
            if group.get(act):
                raise SpikecError(f"{gw}: field '{act}' is set; spikec imports weight-only quantization (it codes "
                                  f"activations itself)")
        w = _field(group, "weights", gw, dict)
        ww = f"{gw}.weights"
        bits = _field(w, "num_bits", ww, int)
        if bits != 4:
            raise SpikecError(f"{ww}: field 'num_bits' is {bits}; spikec imports 4-bit weights only")
        if _field(w, "type", ww, str) != "int":
            raise SpikecError(f"{ww}: field 'type' is {w['type'][:20]!r}; spikec imports integer weights only")
        strategy = _field(w, "strategy", ww, str)
        if strategy not in ("group", "channel"):
            raise SpikecError(f"{ww}: field 'strategy' is {strategy[:20]!r}; spikec imports 'group' or 'channel'")
        g = _field(w, "group_size", ww, int) if strategy == "group" else -1
        if strategy == "group" and g <= 0:
            raise SpikecError(f"{ww}: field 'group_size' is {g}; expected a positive row count")
        if _field(w, "dynamic", ww, bool, False):
            raise SpikecError(f"{ww}: field 'dynamic' is true; dynamic weight scales are not imported")
        sym = _field(w, "symmetric", ww, bool, True)
        key = (g, sym)
        if args is not None and args != key:
            raise SpikecError(f"{where}: config_groups with different weight group sizes or symmetry are not "
                              f"supported")
        args = key
    return QuantSpec(CT_FORMAT, 4, args[0], args[1], False, qc)


# ---------------------------------------------------------------- the checkpoint's tensors


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _unpack4(words: np.ndarray, axis: int, order=None) -> np.ndarray:
    """Unsigned 4-bit values of int32 words, 8 per word along `axis` (nibble i: bits 4i..4i+3;
    with `order`, nibble i holds element order[i] of its word's 8)."""
    u = np.ascontiguousarray(words, dtype=np.int32).view(np.uint32)
    nib = ((u[..., None] >> (np.arange(8, dtype=np.uint32) * 4)) & 0xF).astype(np.uint8)  # [..., 8] by nibble
    if order is not None:
        inv = np.empty(8, np.int64)
        inv[list(order)] = np.arange(8)
        nib = nib[..., inv]  # element e comes from nibble inv[e]
    nib = np.moveaxis(nib, -1, axis + 1) if axis == 0 else nib
    shape = list(words.shape)
    shape[axis] *= 8
    return nib.reshape(shape).astype(np.int16)


@dataclasses.dataclass
class Layer:
    codes: np.ndarray  # int8 [K, M], groups of contiguous rows (after perm)
    scales: np.ndarray  # float32 [n, M]
    perm: np.ndarray | None  # int64 [K]: the graph reads x[..., perm]; None: identity
    group_size: int

    def dequantized(self) -> np.ndarray:
        """float32 [K, M]: codes * scales of their group, one float32 product per element."""
        return dequantize(self.codes, self.scales)


class QuantizedCheckpoint:
    """The tensors of a quantized checkpoint folder, by the model's parameter names.

    Checkpoint keys are renamed to the model's (transformers' own conversion mapping, as
    from_pretrained applies it); the quantized layers are the modules with `weight_packed`
    (compressed-tensors) or `qweight` (GPTQ, AWQ)."""

    def __init__(self, folder: Path, spec: QuantSpec, model) -> None:
        from safetensors import safe_open
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        self.folder, self.spec = folder, spec
        files = _weight_files(folder)
        if not files:
            raise SpikecError(f"{folder}: no weight files (*.safetensors); a quantized checkpoint must be safetensors")
        conv = get_model_conversion_mapping(model)
        ren = [c for c in conv if isinstance(c, WeightRenaming)]
        cvt = [c for c in conv if isinstance(c, WeightConverter)]
        meta = {k: True for k in model.state_dict()}
        self._handles = {}
        self.tensors: dict[str, tuple[Path, str]] = {}  # model name -> (file, checkpoint key)
        for path in files:
            try:
                h = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise SpikecError(f"{path}: not a readable safetensors file: {str(exc)[:200]}") from None
            self._handles[path] = h
            for key in h.keys():
                name, pattern = rename_source_key(key, ren, cvt, model.base_model_prefix, meta)
                if pattern is not None:
                    raise SpikecError(f"{path}: tensor {key} needs a weight conversion on load ({pattern}); "
                                      f"spikec imports quantized checkpoints whose tensors load as stored")
                if name in self.tensors:
                    raise SpikecError(f"{path}: tensor {key} is also in {self.tensors[name][0].name} (as "
                                      f"{self.tensors[name][1]}); a checkpoint holds each tensor once")
                self.tensors[name] = (path, key)
        suffix = "." + spec.marker
        self.layers = sorted(n[: -len(suffix)] for n in self.tensors if n.endswith(suffix))
        if not self.layers:
            raise SpikecError(f"{folder}: config.json declares {spec.format} quantization, but no tensor is named "
                              f"*.{spec.marker}")
        self._layer_set = set(self.layers)
        self._checked: dict[str, tuple[int, int, int, bool]] = {}

    # -- raw tensors
    def has(self, name: str) -> bool:
        return name in self.tensors

    def where(self, name: str) -> str:
        path, key = self.tensors[name]
        return f"{path.name}: tensor {key}"

    def meta(self, name: str) -> tuple[str, list[int]]:
        path, key = self.tensors[name]
        s = self._handles[path].get_slice(key)
        return s.get_dtype(), list(s.get_shape())

    def raw(self, name: str):
        path, key = self.tensors[name]
        return self._handles[path].get_tensor(key)

    def float32(self, name: str, transpose: bool = False, check_only: bool = False) -> np.ndarray | None:
        """A float tensor as float32 (exact from fp16/bf16; transposed if asked, for a 2-D one),
        refused if it holds NaN or inf. Read and converted by row blocks from the mapped file,
        so memory is the float32 result plus one block (`check_only`: the block only)."""
        import torch

        dtype, shape = self.meta(name)
        if dtype not in FLOAT_DTYPES:
            raise SpikecError(f"{self.folder}: {self.where(name)} has dtype {dtype}; expected a float tensor")
        path, key = self.tensors[name]
        sl = self._handles[path].get_slice(key)
        rows = shape[0] if shape else 1
        step = max(1, (1 << 22) // max(int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1, 1))
        out = None if check_only else np.empty(shape[::-1] if transpose and len(shape) == 2 else shape, np.float32)
        for r in range(0, rows, step) if len(shape) else [None]:
            raw = sl[r:r + step] if r is not None else self._handles[path].get_tensor(key)
            block = raw.to(torch.float32).numpy()
            if not np.isfinite(block).all():
                raise SpikecError(f"{self.folder}: {self.where(name)} holds NaN or inf: the checkpoint is corrupt; "
                                  "spikec does not export it")
            if out is None:
                continue
            if r is None:
                out[...] = block
            elif transpose and len(shape) == 2:
                out[:, r:r + step] = block.T
            else:
                out[r:r + step] = block
        return out

    def is_layer(self, module: str) -> bool:
        return module in self._layer_set

    # -- quantized layers
    def _int(self, name: str, module: str, want_shape: list[int], dtype: str = "I32") -> np.ndarray:
        if name not in self.tensors:
            raise SpikecError(f"{self.folder}: quantized layer {module}: tensor {name.rsplit('.', 1)[-1]} is missing")
        got_dtype, shape = self.meta(name)
        if got_dtype != dtype:
            raise SpikecError(f"{self.folder}: {self.where(name)} has dtype {got_dtype}; the {self.spec.format} "
                              f"layout needs {dtype}")
        if shape != want_shape:
            raise SpikecError(f"{self.folder}: {self.where(name)} has shape {shape}; the {self.spec.format} layout "
                              f"needs {want_shape} for the model's layer {module}")
        return self.raw(name).numpy()

    def _scales(self, name: str, module: str, want_shape: list[int]) -> np.ndarray:
        if name not in self.tensors:
            raise SpikecError(f"{self.folder}: quantized layer {module}: tensor {name.rsplit('.', 1)[-1]} is missing")
        dtype, shape = self.meta(name)
        if shape != want_shape:
            raise SpikecError(f"{self.folder}: {self.where(name)} has shape {shape}; expected {want_shape}")
        s = self.float32(name)
        if not (s > 0).all():
            raise SpikecError(f"{self.folder}: {self.where(name)} holds a scale <= 0; spikec weight scales are "
                              f"positive")
        return s

    def _group(self, module: str, K: int, n: int, what: str) -> int:
        if n <= 0 or K % n:
            raise SpikecError(f"{self.folder}: quantized layer {module}: {n} scale groups do not divide K = {K} "
                              f"({what})")
        G = K // n
        want = self.spec.group_size
        if want != -1 and G != want and not (want >= K and n == 1):
            raise SpikecError(f"{self.folder}: quantized layer {module}: {n} groups over K = {K} rows is a group "
                              f"size of {G}, but quantization_config.group_size is {want}")
        return G

    def layer(self, module: str, K: int, M: int) -> Layer:
        """The layer `module` whose float weight has shape [M, K] (torch's [out, in]); checked."""
        fmt = self.spec.format
        if fmt == CT_FORMAT:
            return self._ct(module, K, M)
        if fmt in GPTQ_FORMATS:
            return self._gptq(module, K, M)
        return self._awq(module, K, M)

    def _ct(self, module: str, K: int, M: int) -> Layer:
        p = module + "."
        shape = self._int(p + "weight_shape", module, [2], "I64")
        if [int(v) for v in shape] != [M, K]:
            raise SpikecError(f"{self.folder}: {self.where(p + 'weight_shape')} is {shape.tolist()}; the model's "
                              f"layer is [{M}, {K}]")
        if K % 8:
            raise SpikecError(f"{self.folder}: quantized layer {module}: K = {K} is not a multiple of 8 (4-bit "
                              f"packing)")
        n_dtype, s_shape = self.meta(p + "weight_scale") if self.has(p + "weight_scale") else ("", [])
        n = s_shape[1] if len(s_shape) == 2 else -1
        G = self._group(module, K, n, f"{self.where(p + 'weight_scale') if n_dtype else 'weight_scale missing'}"
                                      f" shape {s_shape}")
        q = _unpack4(self._int(p + "weight_packed", module, [M, K // 8]), 1) - 8  # [M, K] in -8..7
        s = self._scales(p + "weight_scale", module, [M, n])
        if self.has(p + "weight_zero_point"):
            if self.spec.symmetric:
                raise SpikecError(f"{self.folder}: {self.where(p + 'weight_zero_point')}: a zero point in a "
                                  f"symmetric scheme")
            if M % 8:
                raise SpikecError(f"{self.folder}: quantized layer {module}: M = {M} is not a multiple of 8")
            z = _unpack4(self._int(p + "weight_zero_point", module, [M // 8, n]), 0) - 8  # [M, n] in -8..7
        elif not self.spec.symmetric:
            raise SpikecError(f"{self.folder}: quantized layer {module}: tensor weight_zero_point is missing "
                              f"(the scheme is asymmetric)")
        else:
            z = np.zeros((M, n), np.int16)
        if self.has(p + "weight_g_idx"):
            raise SpikecError(f"{self.folder}: {self.where(p + 'weight_g_idx')}: compressed-tensors act-order group "
                              f"indices are not imported yet (GPTQ checkpoints with desc_act are)")
        codes = (q - np.repeat(z, G, axis=1)).T  # [K, M]
        return Layer(np.ascontiguousarray(codes, dtype=np.int8), np.ascontiguousarray(s.T), None, G)

    def _zeros(self, name: str, module: str, n: int, M: int, order=None) -> np.ndarray:
        if M % 8:
            raise SpikecError(f"{self.folder}: quantized layer {module}: M = {M} is not a multiple of 8")
        z = _unpack4(self._int(name, module, [n, M // 8]), 1, order)  # [n, M] in 0..15
        if self.spec.format == "gptq":  # v1 stores z - 1
            if (z == 15).any():
                raise SpikecError(f"{self.folder}: {self.where(name)}: a stored zero point of 15 in the gptq (v1) "
                                  f"format means z = 16, out of the 4-bit range; convert the checkpoint to "
                                  f"gptq_v2")
            z = z + 1
        return z

    def _packed_groups(self, module: str, K: int, dim: str, size: int) -> tuple[str, int, int]:
        """(tensor-name prefix, number of scale groups n, group size G) of a packed 4-bit layer
        whose packed dimension `dim` (K or M, `size` long) holds eight codes per int32."""
        p = module + "."
        if size % 8:
            raise SpikecError(f"{self.folder}: quantized layer {module}: {dim} = {size} is not a multiple of 8")
        _, s_shape = self.meta(p + "scales") if self.has(p + "scales") else ("", [])
        n = s_shape[0] if len(s_shape) == 2 else -1
        return p, n, self._group(module, K, n, f"scales shape {s_shape}")

    def _gptq(self, module: str, K: int, M: int) -> Layer:
        p, n, G = self._packed_groups(module, K, "K", K)
        q = _unpack4(self._int(p + "qweight", module, [K // 8, M]), 0)  # [K, M] in 0..15
        z = self._zeros(p + "qzeros", module, n, M)
        s = self._scales(p + "scales", module, [n, M])
        perm = None
        g_idx = np.arange(K) // G
        if self.has(p + "g_idx"):
            g_idx = self._int(p + "g_idx", module, [K]).astype(np.int64)
            if g_idx.min() < 0 or g_idx.max() >= n:
                raise SpikecError(f"{self.folder}: {self.where(p + 'g_idx')}: group indices must lie in 0..{n - 1}")
            counts = np.bincount(g_idx, minlength=n)
            if (counts != G).any():
                g = int(np.argmax(counts != G))
                raise SpikecError(f"{self.folder}: {self.where(p + 'g_idx')}: group {g} has {int(counts[g])} rows, "
                                  f"not {G}; spikec needs groups of equal size (K / n_groups)")
            order = np.argsort(g_idx, kind="stable")
            if not np.array_equal(order, np.arange(K)):
                perm = order
        codes = q - z[g_idx]  # [K, M]
        if perm is not None:
            codes = codes[perm]
        return Layer(np.ascontiguousarray(codes, dtype=np.int8), s, perm, G)

    def _awq(self, module: str, K: int, M: int) -> Layer:
        p, n, G = self._packed_groups(module, K, "M", M)
        q = _unpack4(self._int(p + "qweight", module, [K, M // 8]), 1, AWQ_ORDER)  # [K, M] in 0..15
        z = self._zeros(p + "qzeros", module, n, M, AWQ_ORDER)
        s = self._scales(p + "scales", module, [n, M])
        codes = q - np.repeat(z, G, axis=0)
        return Layer(np.ascontiguousarray(codes, dtype=np.int8), s, None, G)


def describe(spec: QuantSpec) -> dict[str, Any]:
    """The manifest's `quantization` entry (without the graphs)."""
    return {"format": spec.format, "bits": spec.bits, "group_size": spec.group_size, "symmetric": spec.symmetric,
            "desc_act": spec.desc_act}


# ---------------------------------------------------------------- export: binding and loading


def _checkpoint_weights_base():
    from spikec.frontend.streaming import CheckpointWeights

    return CheckpointWeights


class QuantizedWeights(_checkpoint_weights_base()):
    """CheckpointWeights for a quantized checkpoint: float tensors as stored (converted to
    float32), each quantized layer's weight as its exact dequantization W[perm], an
    act-order layer's input permuted by a Gather, and the codes and scales of each graph's
    layers written to its side file (`write_imported`)."""

    def __init__(self, trace, ckpt: QuantizedCheckpoint) -> None:  # noqa: D107 (no super: other sources)
        self.ckpt = ckpt
        aliases: dict[int, list[tuple[str, tuple]]] = {}
        for fqn, p in trace.named_parameters(remove_duplicate=False):
            if p.numel():
                aliases.setdefault(p.data_ptr(), []).append((fqn, tuple(p.shape)))
        self._fqn_by_storage, self._shape, missing = {}, {}, []
        for ptr, names in aliases.items():
            pick = next((f for f, _ in names if self._source(f) is not None), None)
            if pick is None:
                missing.append(names[0][0])
                continue
            self._fqn_by_storage[ptr], self._shape[pick] = pick, names[0][1]
        if missing:
            raise SpikecError(f"{ckpt.folder}: weights missing: tensor {missing[0]} not found in the checkpoint"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        self._perm: dict[str, np.ndarray | None] = {}
        self._dims: dict[str, tuple[int, int, int]] = {}  # module -> (K, M, n_groups)
        used = set()
        for fqn, shape in self._shape.items():  # check everything before anything is written
            kind, name = self._source(fqn)
            if kind == "float":
                dtype, got = ckpt.meta(name)
                if tuple(got) != shape:
                    raise SpikecError(f"{ckpt.folder}: {ckpt.where(name)} has shape {got}, the config needs "
                                      f"{list(shape)}")
                ckpt.float32(name, check_only=True)  # dtype and finiteness (a block at a time)
                continue
            if len(shape) != 2:
                raise SpikecError(f"{ckpt.folder}: quantized layer {name}: its weight has shape {list(shape)}; only "
                                  f"2-D linear weights are imported")
            M, K = shape
            layer = ckpt.layer(name, K, M)
            self._perm[name], self._dims[name] = layer.perm, (K, M, int(layer.scales.shape[0]))
            used.add(name)
        unused = sorted(set(ckpt.layers) - used)
        if unused:
            raise SpikecError(f"{ckpt.folder}: quantized layer {unused[0]} is not a parameter of the model")
        self._graph_layers: list[str] = []
        self.exported: dict[str, dict] = {}  # graph file -> {"file", "layers"}

    def _source(self, fqn: str) -> tuple[str, str] | None:
        if self.ckpt.has(fqn):
            return "float", fqn
        if fqn.endswith(".weight") and self.ckpt.is_layer(fqn[: -len(".weight")]):
            return "quant", fqn[: -len(".weight")]
        return None

    def array(self, fqn: str, transpose: bool) -> np.ndarray:
        """The float32 value of parameter `fqn` ([K, M] MatMul layout when `transpose`)."""
        kind, name = self._source(fqn)
        if kind == "float":
            return self.ckpt.float32(name, transpose)
        K, M, _ = self._dims[name]
        w = self.ckpt.layer(name, K, M).dequantized()  # [K, M], rows in perm order
        return w if transpose else np.ascontiguousarray(w.T)

    def _value(self, fqn: str, transpose: bool):
        import onnx_ir as ir

        return lambda: ir.Tensor(self.array(fqn, transpose))

    def _bound(self, graph, fqn: str, consumer, transpose: bool) -> None:
        import onnx_ir as ir

        kind, module = self._source(fqn)
        if kind != "quant":
            return
        ok = consumer is not None and consumer.op_type in ("MatMul", "Gemm") and consumer.domain in ("", "ai.onnx") \
            and len(consumer.inputs) > 1 and consumer.inputs[1] is not None \
            and consumer.inputs[1].const_value is not None and (transpose or consumer.op_type == "Gemm")
        if not ok:
            raise SpikecError(f"{self.ckpt.folder}: quantized layer {module}: the exported graph does not apply its "
                              f"weight as a linear layer (MatMul(x, W)); spikec cannot import it")
        self._graph_layers.append(module)
        perm = self._perm[module]
        if perm is None:
            return
        # act-order: the groups of W[perm] are contiguous; the layer reads x[..., perm]
        name = f"{module}.act_order_perm"
        v = ir.Value(name=name, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([len(perm)]),
                     const_value=ir.Tensor(perm.astype(np.int64), name=name))
        graph.register_initializer(v)
        gather = ir.Node("", "Gather", [consumer.inputs[0], v], [ir.AttrInt64("axis", -1)],
                         name=f"{module}.act_order", num_outputs=1)
        graph.insert_before(consumer, gather)
        consumer.replace_input_with(0, gather.outputs[0])

    def write_imported(self, model, path: Path) -> dict | None:
        """Name the side file in the graph's metadata (call before saving the graph) and write
        it beside `path`; returns the manifest entry, None for a graph with no imported layer."""
        layers, self._graph_layers = list(dict.fromkeys(self._graph_layers)), []
        if not layers:
            return None
        side = path.with_name(path.stem + SIDE_SUFFIX)
        model.metadata_props[IMPORTED_KEY] = json.dumps({"format": self.ckpt.spec.format, "file": side.name,
                                                         "layers": len(layers)})
        entries = []
        for m in layers:
            K, M, n = self._dims[m]
            entries += [(f"{m}.codes", [K, M], np.int8), (f"{m}.scales", [n, M], np.float32)]
        cache: dict[str, Layer] = {}

        def produce(name: str) -> np.ndarray:
            module, part = name.rsplit(".", 1)
            if module not in cache:
                cache.clear()
                K, M, _ = self._dims[module]
                cache[module] = self.ckpt.layer(module, K, M)
            return cache[module].codes if part == "codes" else cache[module].scales

        write_side_file(side, entries, produce)
        entry = {"file": side.name, "layers": len(layers)}
        self.exported[path.name] = entry
        return entry

    def materialize(self, model) -> None:
        """Give `model` (the trace model) real float32 weights: the checkpoint's dequantized
        model, for evaluating the float model (not bounded: the whole model in float32)."""
        import torch

        by_fqn = dict(model.named_parameters(remove_duplicate=False))
        for fqn in self._shape:
            a = self.array(fqn, False)
            kind, module = self._source(fqn)
            if kind == "quant" and self._perm[module] is not None:  # W^T[:, perm] -> W^T
                inv = np.argsort(self._perm[module])
                a = np.ascontiguousarray(a[:, inv])
            by_fqn[fqn].data = torch.from_numpy(a)


def load_quantized(folder: Path, config, spec: QuantSpec, *, stream: bool):
    """(model, weights) for a quantized checkpoint: a trace model without weight values and
    its QuantizedWeights (stream), or a float32 model holding the dequantized weights."""
    import torch
    from transformers import AutoModelForImageTextToText

    from spikec.frontend.streaming import trace_model

    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._attn_implementation = "eager"
    try:
        with torch.device("meta"):
            meta = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    except Exception as exc:
        raise SpikecError(f"{folder}: cannot build the model from its config: {exc}") from None
    trace = trace_model(meta)
    del meta
    weights = QuantizedWeights(trace, QuantizedCheckpoint(folder, spec, trace))
    log.info("%s: %d layers imported as %s", folder, len(weights._dims), spec.format)
    if stream:
        return trace, weights
    weights.materialize(trace)
    return trace, None
