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
import contextlib
import contextvars
import dataclasses
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

from spikec import int4, vector
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


def _iter_tensor_protos(graph: onnx.GraphProto, initializers: bool = True) -> Iterable[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and tensor attributes, recursively (this
    graph's own initializers only with `initializers`; a subgraph's always)."""
    if initializers:
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


def _element_count(t: onnx.TensorProto) -> int | None:
    """Elements the dims declare, in Python integers (no overflow); None for a negative dim."""
    count = 1
    for d in t.dims:
        if d < 0:
            return None
        count *= int(d)
    return count


def _tensor_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the tensor's data must have, or None for types without a fixed size (and for
    negative dims, which `check_tensor_data` refuses)."""
    if t.data_type == onnx.TensorProto.STRING:
        return None
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        dtype = ir.DataType(t.data_type)
    except (KeyError, ValueError, TypeError):
        return None
    count = _element_count(t)
    if count is None:
        return None
    bitwidth = dtype.bitwidth if hasattr(dtype, "bitwidth") else np_dtype.itemsize * 8
    return (count * bitwidth + 7) // 8


# The typed field that holds a tensor's values when it has no raw_data, and how many
# entries one element takes (onnx.proto: FLOAT16/BFLOAT16 and the small integers in
# int32_data, one per entry; complex numbers as two entries).
_TYPED_FIELD = {
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.COMPLEX64: ("float_data", 2),
    onnx.TensorProto.DOUBLE: ("double_data", 1), onnx.TensorProto.COMPLEX128: ("double_data", 2),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
    **{dt: ("int32_data", 1) for dt in (onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                                         onnx.TensorProto.UINT16, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
                                         onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)},
}


def check_tensor_data(t: onnx.TensorProto, *, where: str, strings: bool = False) -> None:
    """Refuse a tensor stored in the file (not external) whose data does not match its
    declaration: an UNDEFINED or unknown element type, STRING unless `strings`, a negative
    dim, dims over MAX_TENSOR_BYTES, or raw_data / typed values of another length than the
    dims need. Everything is computed in Python integers before anything is allocated.
    Raises SpikecError naming `where` and the tensor."""
    tw = f"{where}: tensor '{t.name[:80]}'"
    if t.data_type == onnx.TensorProto.UNDEFINED or t.data_type not in onnx.TensorProto.DataType.values():
        raise SpikecError(f"{tw}: element type {t.data_type} is not a valid ONNX type")
    if t.data_type == onnx.TensorProto.STRING and not strings:
        raise SpikecError(f"{tw}: element type STRING is not supported")
    count = _element_count(t)
    if count is None:
        raise SpikecError(f"{tw}: negative dimension in dims {list(t.dims)[:8]}")
    nbytes = _tensor_nbytes(t)
    if (nbytes if nbytes is not None else count) > MAX_TENSOR_BYTES:
        raise SpikecError(f"{tw}: dims {list(t.dims)[:8]} declare {nbytes or count} bytes, over the limit of "
                          f"{MAX_TENSOR_BYTES}")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return
    name = onnx.TensorProto.DataType.Name(t.data_type)
    if t.HasField("raw_data") and t.data_type != onnx.TensorProto.STRING:
        if nbytes is not None and len(t.raw_data) != nbytes:
            raise SpikecError(f"{tw}: raw data of {len(t.raw_data)} bytes; dims {list(t.dims)[:8]} of {name} need {nbytes}")
        return
    field, per = _TYPED_FIELD.get(t.data_type, (None, 1))
    if field is None:
        if count:
            raise SpikecError(f"{tw}: {name} values must be stored as raw data")
        return
    have = len(getattr(t, field))
    if have != count * per:
        raise SpikecError(f"{tw}: {have} values in {field}; dims {list(t.dims)[:8]} of {name} need {count * per}")


# Element types a weight may have when its bytes are mapped as a numpy array.
_MAPPABLE = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.UINT16: np.uint16, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
}
MAX_TENSOR_BYTES = 2**40  # 1 TiB: far above any real weight, far below what overflows


def tensor_layout(t: onnx.TensorProto, *, where: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(numpy dtype, shape, bytes) of a weight whose raw bytes are to be mapped, from its
    declared type and dims alone, in Python integers (no overflow). Raises SpikecError
    naming `where` for a type that cannot be mapped (STRING, UNDEFINED, sub-byte types), a
    negative dim, or a size over MAX_TENSOR_BYTES."""
    dtype = _MAPPABLE.get(t.data_type)
    if dtype is None:
        raise SpikecError(f"{where}: element type {t.data_type} cannot be stored as raw weight bytes")
    shape = tuple(int(d) for d in t.dims)
    if any(d < 0 for d in shape):
        raise SpikecError(f"{where}: negative dimension in dims {list(shape)[:8]}")
    count = 1
    for d in shape:
        count *= d
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise SpikecError(f"{where}: dims {list(shape)[:8]} declare {nbytes} bytes, over the limit of {MAX_TENSOR_BYTES}")
    return np.dtype(dtype).newbyteorder("<"), shape, nbytes


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


def check_self_contained(proto: onnx.ModelProto, *, where: str, initializers: bool = True) -> None:
    """Refuse any tensor with external data: for graphs stored inside another file (a .sbin),
    where no folder exists to resolve a location against, and onnxruntime would resolve it
    against the current directory (an arbitrary read). With `initializers=False` the main
    graph's initializers are left to the caller (a .sbin resolves them to its own sections)."""
    # (not by id() of the initializers: protobuf's Python wrappers are made on access and
    # freed after, so an id can differ between two reads or be reused by another tensor)
    for t in _iter_tensor_protos(proto.graph, initializers):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise SpikecError(f"{where}: tensor '{t.name[:80]}' refers to external data; an embedded graph "
                              f"must be self-contained")


def _check_strings(proto: onnx.ModelProto, *, where: str) -> None:
    """Refuse a string field (a name, op type, domain, attribute name, ...) that is not valid
    UTF-8: protobuf hands such a field over as bytes, which breaks every reader of names."""
    from google.protobuf.descriptor import FieldDescriptor

    stack: list = [proto]
    while stack:
        msg = stack.pop()
        for fd, value in msg.ListFields():
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                if hasattr(value, "ListFields"):
                    stack.append(value)
                else:  # a repeated field
                    stack.extend(value)
            elif fd.type == FieldDescriptor.TYPE_STRING:
                for v in ([value] if isinstance(value, (str, bytes)) else value):
                    if not isinstance(v, str):
                        raise SpikecError(f"{where}: field '{fd.name}' of a {msg.DESCRIPTOR.name} is not valid UTF-8 "
                                          f"({bytes(v)[:40]!r})")


def check_graph_structure(proto: onnx.ModelProto, *, where: str) -> None:
    """What spikec's IR and passes assume of any graph they read, checked before building it:
    every stored tensor matches its declaration (`check_tensor_data`), each value is made
    once in a graph (no two nodes, initializers or inputs defining one name, no graph output
    listed twice), and opset versions are in range. Raises SpikecError naming `where`, the
    node and the value."""
    _check_strings(proto, where=where)
    for t in _iter_tensor_protos(proto.graph):
        check_tensor_data(t, where=where)
    for op in proto.opset_import:
        if not 0 <= op.version <= 10_000:
            raise SpikecError(f"{where}: opset version {op.version} of domain '{op.domain}' is out of range")

    def graph(g: onnx.GraphProto, gw: str) -> None:
        made: dict[str, str] = {}
        for kind, names in (("graph input", [v.name for v in g.input]), ("initializer", [t.name for t in g.initializer])):
            for n in names:
                if n in made and not (kind == "initializer" and made[n] == "graph input"):
                    raise SpikecError(f"{gw}: value '{n[:80]}' is defined twice ({made[n]} and {kind})")
                made[n] = kind
        for node in g.node:
            for o in node.output:
                if not o:
                    continue
                if o in made:
                    raise SpikecError(f"{gw}: node '{node.name[:80]}' ({node.op_type}) makes '{o[:80]}', which "
                                      f"{made[o]} already defines")
                made[o] = f"node '{node.name[:80]}'"
            for a in node.attribute:
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    graph(sub, f"{gw}: node '{node.name[:80]}' attribute '{a.name[:80]}'")
        for kind, values in (("input", g.input), ("output", g.output), ("value_info", g.value_info)):
            for v in values:
                if not v.HasField("type"):
                    continue
                which = v.type.WhichOneof("value")
                if which != "tensor_type":
                    raise SpikecError(f"{gw}: graph {kind} '{v.name[:80]}' is of type {which}, not a tensor")
                elem = v.type.tensor_type.elem_type
                if elem == onnx.TensorProto.UNDEFINED or elem not in onnx.TensorProto.DataType.values():
                    raise SpikecError(f"{gw}: graph {kind} '{v.name[:80]}' has element type {elem}, not a valid "
                                      f"ONNX type")
        outs = [v.name for v in g.output]
        if len(set(outs)) != len(outs):
            dup = next(n for n in outs if outs.count(n) > 1)
            raise SpikecError(f"{gw}: graph output '{dup[:80]}' is listed twice")

    graph(proto.graph, where)


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX file into the IR, validating it and its external data first
    (`check_model_file`). Raises SpikecError naming the file (and tensor)."""
    p = Path(path)
    proto = _read_checked(p)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx_ir raises several types for malformed protos
        raise SpikecError(f"{p}: cannot read the model ({type(exc).__name__}: {exc})") from None
    ir.external_data.set_base_dir(model.graph, str(p.parent))
    return model


def check_model_file(path: str | os.PathLike) -> None:
    """The checks `load_model` makes, without building the IR (the graph is parsed, its
    weights are not read): an ONNX file of a valid structure whose external data lies in
    files beside it, inside its folder (no symlink out) and inside their bounds. For
    refusing a bad graph of a folder before work starts, and before onnxruntime opens it.
    Raises SpikecError naming the file (and tensor)."""
    _read_checked(Path(path))


def _read_checked(p: Path) -> onnx.ModelProto:
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
    check_graph_structure(proto, where=str(p))
    check_external_data(proto, p)
    return proto


# ---------------------------------------------------------------- verifying


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialise the IR to a ModelProto (external tensors stay references)."""
    return ir.serde.serialize_model(model)


def verify(model: ir.Model, *, after: str = "") -> None:
    """onnx.checker + strict shape inference + every registered spikec invariant.

    Works on models of any size: big weights are never serialised (see `freeze`), so the
    proto checked is the graph and its small constants, far below protobuf's 2 GiB."""
    stage = f" after pass '{after}'" if after else ""
    proto = _without_external_weights(freeze(model).proto)
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


# ---------------------------------------------------------------- big weights, never copied

# Tensors of at least this many bytes never enter a serialised proto: the verifier, ORT
# sessions and .sbin packing handle them as references and pass their bytes as views.
BIG_TENSOR_BYTES = 64 * 1024
# The external-data location of a weight that `freeze` left out of a proto. Nothing reads
# it: ORT sessions get the bytes through add_external_initializers (`ort_session`).
FROZEN_LOCATION = "spikec-frozen-weight"


@dataclasses.dataclass
class Frozen:
    """A graph serialised without its big weights, and those weights by initializer name.

    `proto` holds every weight of `BIG_TENSOR_BYTES` or more (and every external one) as
    an external-data reference; `weights` holds the tensor objects themselves
    (memory-mapped or in memory; `.numpy()` gives a view, not a copy)."""

    proto: onnx.ModelProto
    weights: dict[str, ir.TensorProtocol]

    def inlined(self) -> onnx.ModelProto:
        """A self-contained copy with every weight's bytes inlined (small models only: the
        numpy reference evaluator; raises SpikecError past protobuf's 2 GiB)."""
        total = sum(t.nbytes for t in self.weights.values())
        if self.proto.ByteSize() + total >= 2**31:
            raise SpikecError(f"graph '{self.proto.graph.name}': {total} bytes of weights cannot be inlined into one "
                              f"proto (protobuf's 2 GiB limit)")
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        for t in proto.graph.initializer:
            if t.name in self.weights:
                t.CopyFrom(ir.serde.serialize_tensor(ir.Tensor(self.weights[t.name].numpy(), name=t.name)))
        return proto


def freeze(model: ir.Model, min_bytes: int | None = None) -> Frozen:
    """Serialise `model` with its big weights (`min_bytes`, default BIG_TENSOR_BYTES) as
    references (main graph initializers).

    The proto's size is that of the graph and its small constants, whatever the model's
    size; no weight is copied. The model is unchanged afterwards."""
    min_bytes = BIG_TENSOR_BYTES if min_bytes is None else min_bytes
    swapped = []
    for value in model.graph.initializers.values():
        t = value.const_value
        if t is None or isinstance(t, ir.ExternalTensor) or t.nbytes < min_bytes:
            continue
        value.const_value = ir.ExternalTensor(FROZEN_LOCATION, 0, t.nbytes, t.dtype, shape=t.shape, name=value.name)
        swapped.append((value, t))
    try:
        proto = to_proto(model)
    finally:
        for value, t in swapped:
            value.const_value = t
    weights = {}
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            weights[t.name] = model.graph.initializers[t.name].const_value
    return Frozen(proto, weights)


# onnxruntime graph optimizations that change float32 results: they rewrite arithmetic
# (DivMulFusion: x * (1 / s) -> x / s; MatMulScaleFusion moves a scale into the product) or
# replace a pattern by a fused kernel with its own operation order (the norm, GELU,
# attention and Gemm fusions). A graph compiled for exactness (with spikec.vector's
# functions: `--isa`, `--exact-vector`) says exactly what it computes, and the fpga target
# runs its host ops in pieces where a fusion across a piece's edge cannot happen, so such a
# graph runs as written; other graphs keep onnxruntime's fusions (onnxruntime ignores
# names it does not know).
FLOAT_REWRITING_OPTIMIZERS = (
    "DivMulFusion", "MatMulScaleFusion", "MatMulAddFusion", "GemmActivationFusion", "GeluFusion", "FastGeluFusion",
    "BiasGeluFusion", "QuickGeluFusion", "LayerNormFusion", "SimplifiedLayerNormFusion", "SkipLayerNormFusion",
    "AttentionFusion", "EmbedLayerNormFusion", "BiasSoftmaxFusion", "MatMulIntegerToFloatFusion",
    "DynamicQuantizeMatMulFusion", "ConvAddFusion", "ConvMulFusion", "ConvBNFusion", "MatMulBNFusion",
    "GemmSumFusion", "MatmulTransposeFusion", "NchwcTransformer")


def ort_session(graph: "Frozen | ir.Model", options=None, providers: list[str] | None = None):
    """An onnxruntime InferenceSession over `graph` without serialising its big weights.

    Weights stored in files (an export's data files, a .sbin's TENSOR sections: both
    ir.ExternalTensor) stay external-data references that onnxruntime memory-maps; other
    big weights are handed over through SessionOptions.add_external_initializers (which
    onnxruntime copies). The proto handed over stays small. Raises onnxruntime's own
    exceptions (callers turn them into SpikecError with context). The optimizations in
    FLOAT_REWRITING_OPTIMIZERS are disabled for a graph that imports spikec.vec."""
    import onnxruntime as ort

    frozen = graph if isinstance(graph, Frozen) else freeze(graph)
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    # onnxruntime memory-maps external data it reads from files (no copy), but copies what
    # add_external_initializers hands it: weights stored in files keep their references,
    # resolved against one folder (that of most of their bytes: an export's data files, or
    # the .sbin itself); the rest (in memory, or in another folder) go as OrtValues.
    by_dir: dict[str, int] = collections.Counter()
    for t in frozen.weights.values():
        if isinstance(t, ir.ExternalTensor) and t.base_dir:
            by_dir[str(t.base_dir)] += t.nbytes
    folder = max(by_dir, key=by_dir.get) if by_dir else None
    if folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    names = [n for n, t in frozen.weights.items()
             if not (isinstance(t, ir.ExternalTensor) and str(t.base_dir) == folder)]
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in _session_arrays([frozen.weights[n] for n in names])]
    if names:
        options.add_external_initializers(names, values)
    exact = any(o.domain == vector.DOMAIN for o in frozen.proto.opset_import)
    session = ort.InferenceSession(frozen.proto.SerializeToString(), options,
                                   providers=providers or ["CPUExecutionProvider"],
                                   disabled_optimizers=list(FLOAT_REWRITING_OPTIMIZERS) if exact else [])
    session.spikec_weights = values  # onnxruntime reads these buffers for the session's lifetime
    return session


def _session_arrays(tensors: list) -> list[np.ndarray]:
    """The arrays handed to onnxruntime for `tensors` through add_external_initializers,
    which spikec keeps alive for the session (`session.spikec_weights`) while onnxruntime
    makes its own copy (prepacked, for integer products). Packed 4-bit weights
    (int4.PackedInt4Tensor), whose int8 form prefill's MatMulInteger needs, are unpacked
    into an unlinked temporary file and mapped back, one weight at a time, so that the
    array kept alive is clean file-backed memory the kernel can drop, not a second
    anonymous copy (Qwen2-VL-2B at W4: 2 GiB, docs/ort-target.md "Memory")."""
    packed = [t for t in tensors if isinstance(t, int4.PackedInt4Tensor)]
    if not packed:
        return [np.ascontiguousarray(t.numpy()) for t in tensors]
    offsets, end = {}, 0
    for t in packed:
        offsets[id(t)] = end
        end += -(-t.nbytes // 64) * 64
    with tempfile.TemporaryFile(prefix="spikec-int8-") as f:  # unlinked: gone with its last mapping
        for t in packed:
            f.seek(offsets[id(t)])
            f.write(memoryview(int4.unpack(t.packed.numpy(), t.K)).cast("B"))
        f.truncate(end)
        f.flush()
        mapped = np.memmap(f, dtype=np.uint8, mode="r", shape=(end,))
    out = []
    for t in tensors:
        if isinstance(t, int4.PackedInt4Tensor):
            o = offsets[id(t)]
            out.append(mapped[o:o + t.nbytes].view(np.int8).reshape(tuple(t.shape)))
        else:
            out.append(np.ascontiguousarray(t.numpy()))
    return out


class WeightStore:
    """Weights made during a compile, written to one file as they are produced.

    A pass that quantizes a 7B model must not hold its weights in memory: each new big
    tensor is appended to `folder/weights.bin` (64-byte aligned) and comes back as a
    memory-mapped ir.ExternalTensor, so the process holds one layer's worth at a time."""

    FILE = "weights.bin"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self._file = open(self.path, "wb")
        self.bytes_written = 0

    def put(self, array: np.ndarray, name: str) -> ir.ExternalTensor:
        array = np.ascontiguousarray(array)
        pad = -self._file.tell() % 64
        self._file.write(b"\0" * pad)
        offset = self._file.tell()
        self._file.write(array.data if array.size else b"")
        self._file.flush()
        self.bytes_written += array.nbytes
        return ir.ExternalTensor(self.FILE, offset, array.nbytes, ir.DataType.from_numpy(array.dtype),
                                 shape=ir.Shape(array.shape), name=name, base_dir=str(self.folder))

    def close(self) -> None:
        self._file.close()


_STORE: contextvars.ContextVar[WeightStore | None] = contextvars.ContextVar("spikec_weight_store", default=None)


@contextlib.contextmanager
def spill_weights(folder: str | os.PathLike):
    """While active, `new_tensor` writes big tensors to a WeightStore in `folder`."""
    store = WeightStore(folder)
    token = _STORE.set(store)
    try:
        yield store
    finally:
        _STORE.reset(token)
        store.close()


def new_tensor(array: np.ndarray, name: str) -> ir.TensorProtocol:
    """The tensor a pass makes for a new or changed weight: in memory when small or when
    no `spill_weights` is active, else written out at once and memory-mapped."""
    store = _STORE.get()
    if store is not None and array.nbytes >= BIG_TENSOR_BYTES:
        return store.put(array, name)
    return ir.Tensor(array, name=name)


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
    proto = freeze(model).proto
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.SerializeToString()) > max_inline_bytes:
            t.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
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
            proto = freeze(model).inlined()  # self-contained: every weight's bytes in the proto
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
