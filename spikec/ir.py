"""The IR layer: load, verify, summarise and save ONNX models.

spikec's in-memory IR is onnx_ir's `ir.Model` (the IR under torch's own ONNX
exporter): it keeps external weights memory-mapped, which the multi-GB models of
the front end need, and it is what onnx_ir's pass infrastructure and onnxscript's
rewriter operate on. This module adds what spikec needs around it:

- `load_model` checks the file and every external-data reference *before* reading
  (location inside the model's folder, offset + length inside the data file,
  length equal to what the tensor's shape and type need), so a hostile or corrupt
  model gives a clear error instead of an arbitrary read or a huge allocation;
- `verify` runs onnx.checker, strict shape inference and spikec's own invariants
  (registered by later passes with `register_invariant`);
- `save_model` is atomic (temporary names, renamed when complete) and
  deterministic (same model, same bytes).
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from spikec.errors import SpikecError
from spikec.paths import resolve_inside

log = logging.getLogger(__name__)

# Models whose initializers exceed this go to an external data file on save:
# protobuf cannot serialise a message over 2 GiB, and keeping weights outside the
# graph lets readers memory-map them.
EXTERNAL_DATA_THRESHOLD = 256 * 1024 * 1024
# Tensors at least this big are stored externally once a model uses external data.
EXTERNAL_TENSOR_MIN_BYTES = 1024

Invariant = Callable[[ir.Model], None]
_INVARIANTS: dict[str, Invariant] = {}


def register_invariant(name: str) -> Callable[[Invariant], Invariant]:
    """Register a check that `verify` runs on every model after every pass.

    The check raises SpikecError naming the node at fault. Passes that introduce
    new op kinds register the invariants of those ops (e.g. the spiking ops' T >= 1
    and int32 overflow guard), so every later pass is checked against them too.
    """

    def decorate(fn: Invariant) -> Invariant:
        _INVARIANTS[name] = fn
        return fn

    return decorate


def registered_invariants() -> dict[str, Invariant]:
    return dict(_INVARIANTS)


# ---------------------------------------------------------------- loading


def _iter_tensor_protos(graph: onnx.GraphProto) -> Iterable[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and tensor attributes, recursively."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensor_protos(attr.g)
            for g in attr.graphs:
                yield from _iter_tensor_protos(g)


def _tensor_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the tensor's data must have, or None for types without a fixed size."""
    if t.data_type == onnx.TensorProto.STRING:
        return None
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, ValueError):
        return None
    count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
    dtype = ir.DataType(t.data_type)
    bitwidth = dtype.bitwidth if hasattr(dtype, "bitwidth") else np_dtype.itemsize * 8
    return (count * bitwidth + 7) // 8


def check_external_data(proto: onnx.ModelProto, model_path: Path) -> None:
    """Refuse external data outside the model's folder or outside its data file."""
    base = model_path.resolve().parent
    for t in _iter_tensor_protos(proto.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        where = f"{model_path}: tensor '{t.name}'"
        data_path = resolve_inside(base, info.get("location"), where=f"{where}: external data location")
        location = info["location"]
        if not data_path.is_file():
            raise SpikecError(f"{where}: external data file '{location}' not found next to the model")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise SpikecError(f"{where}: external data offset/length is not an integer") from None
        size = data_path.stat().st_size
        expected = _tensor_nbytes(t)
        if length is None:
            length = expected if expected is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise SpikecError(
                f"{where}: external data [{offset}, {offset + length}) lies outside '{location}' ({size} bytes)"
            )
        if expected is not None and length != expected:
            raise SpikecError(
                f"{where}: external data length {length} does not match dims {list(t.dims)} "
                f"of {onnx.TensorProto.DataType.Name(t.data_type)} ({expected} bytes)"
            )


def check_self_contained(proto: onnx.ModelProto, *, where: str) -> None:
    """Refuse any tensor with external data: for graphs stored inside another file (a .sbin),
    where no folder exists to resolve a location against, and onnxruntime would resolve it
    against the current directory (an arbitrary read)."""
    for t in _iter_tensor_protos(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise SpikecError(f"{where}: tensor '{t.name[:80]}' refers to external data; an embedded graph "
                              f"must be self-contained")


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX file into the IR, validating it and its external data first."""
    p = Path(path)
    if not p.exists():
        raise SpikecError(f"{p}: no such file")
    if not p.is_file():
        raise SpikecError(f"{p}: not a file")
    size = p.stat().st_size
    if size == 0:
        raise SpikecError(f"{p}: empty file, not an ONNX model")
    if size >= 2**31:
        raise SpikecError(f"{p}: {size} bytes is over protobuf's 2 GiB limit; store the weights as external data")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise SpikecError(f"{p}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not proto.HasField("graph") or proto.ir_version == 0:
        raise SpikecError(f"{p}: not a valid ONNX model (no graph or no ir_version; truncated or not ONNX?)")
    check_external_data(proto, p)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx_ir raises several types for malformed protos
        raise SpikecError(f"{p}: cannot read the model ({type(exc).__name__}: {exc})") from None
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    return model


# ---------------------------------------------------------------- verifying


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise the IR to a ModelProto (external tensors stay references)."""
    return ir.serde.serialize_model(model)


def verify(model: ir.Model, *, after: str = "") -> None:
    """onnx.checker + strict shape inference + every registered spikec invariant."""
    stage = f" after pass '{after}'" if after else ""
    proto = _without_external_weights(to_proto(model))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise SpikecError(f"verifier{stage}: onnx.checker: {exc}") from None
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
        raise SpikecError(f"verifier{stage}: shape inference: {exc}") from None
    for name, check in _INVARIANTS.items():
        try:
            check(model)
        except SpikecError as exc:
            raise SpikecError(f"verifier{stage}: invariant '{name}': {exc}") from None


def _without_external_weights(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Turn externally stored initializers into typed graph inputs, for checking only.

    onnx.checker resolves external-data locations against a folder it is not given
    when handed a proto; the references were validated by load_model, and what the
    checker and shape inference need of a weight is its type and shape."""
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return proto
    keep = [t for t in proto.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    for t in external:
        proto.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return proto


# ---------------------------------------------------------------- summarising


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Node count by op type (`domain::Op` outside the default domain), sorted by name."""
    counts: collections.Counter[str] = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
    return dict(sorted(counts.items()))


def parameter_stats(model: ir.Model) -> tuple[int, int]:
    """(parameter count, parameter bytes) over the main graph's initializers."""
    count = nbytes = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        count += int(np.prod(tensor.shape.numpy(), dtype=np.int64)) if tensor.shape is not None else 0
        nbytes += tensor.nbytes
    return count, nbytes


def summary(model: ir.Model) -> dict:
    """A JSON-ready description: I/O, op histogram, parameters."""

    def describe(v: ir.Value) -> dict:
        shape = None if v.shape is None else [d if isinstance(d, int) else str(d) for d in v.shape]
        dtype = None if v.dtype is None else v.dtype.name
        return {"name": v.name, "dtype": dtype, "shape": shape}

    params, nbytes = parameter_stats(model)
    hist = op_histogram(model)
    return {
        "inputs": [describe(v) for v in model.graph.inputs],
        "outputs": [describe(v) for v in model.graph.outputs],
        "opsets": dict(sorted(model.opset_imports.items())),
        "nodes": sum(hist.values()),
        "ops": hist,
        "parameters": params,
        "parameter_bytes": nbytes,
    }


def to_text(model: ir.Model, *, max_inline_bytes: int = 256) -> str:
    """The onnx.printer text form, with large initializers shown by declaration only.

    Weight values are what makes a text dump unreadable (and for real models, GBs
    long); they are marked external so the printer shows type and shape only.
    """
    proto = to_proto(model)
    for t in proto.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.SerializeToString()) > max_inline_bytes:
            t.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", "<elided>"
    return onnx.printer.to_text(proto)


# ---------------------------------------------------------------- saving


def save_model(model: ir.Model, path: str | os.PathLike, *, external_data: bool | None = None) -> list[Path]:
    """Save atomically and deterministically; returns the files written.

    With external data the weights go to `<name>.data` beside the model. Both
    files are written under temporary names in the destination folder and
    renamed when complete (data first, graph last), so a reader never sees a
    graph that points at a half-written data file.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = parameter_stats(model)[1] > EXTERNAL_DATA_THRESHOLD
    data_name = final.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        written = tmpdir / final.name
        if external_data:
            ir.save(model, written, external_data=data_name, size_threshold_bytes=EXTERNAL_TENSOR_MIN_BYTES)
        else:
            proto = inline_external_tensors(to_proto(model), model)
            written.write_bytes(proto.SerializeToString(deterministic=True))
        results = []
        if external_data:
            os.replace(tmpdir / data_name, final.parent / data_name)
            results.append(final.parent / data_name)
        os.replace(written, final)
        results.append(final)
        return results
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def inline_external_tensors(proto: onnx.ModelProto, model: ir.Model) -> onnx.ModelProto:
    """Make a self-contained proto: external tensors (e.g. of a loaded model) get their bytes inlined."""
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return proto
    by_name = {t.name: t for t in proto.graph.initializer}
    for name, value in model.graph.initializers.items():
        t = by_name.get(name)
        if t is not None and t.data_location == onnx.TensorProto.EXTERNAL and value.const_value is not None:
            t.CopyFrom(ir.serde.serialize_tensor(ir.Tensor(value.const_value.numpy(), name=name)))
    return proto
