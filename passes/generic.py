"""Generic graph clean-up passes every pipeline runs.

Each is a thin, named wrapper over a pass that onnx_ir or onnxscript already
ships; spikec adds only the pipeline metadata (name, needs, guarantees, invalidates)
and the checks of the properties they guarantee (`shapes-inferred`,
`topologically-sorted`). See docs/libraries.md for which library does what.

Passes that change the float graph's values or their names invalidate the analyses
`float-model` and `layer-map` (passes/analyses.py); once a graph is quantized the float
model is the compile's reference and stays (the analysis is kept once `quantized` holds).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from spikec.errors import SpikecError
from spikec.passes.manager import SpikecPass, register_property

# Elements checked at once by check_finite: a memory-mapped weight is read slice by slice,
# never copied whole (the bool temporary is 16 MiB).
FINITE_CHUNK = 1 << 24
# Ops whose constant inputs are weights: +-inf there is corruption, never a valid value
# (a float mask may hold -inf, and reaches Add/Where/Min/Max, which are not listed).
WEIGHT_READERS = frozenset({
    "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Gather", "Mul", "Div", "PRelu",
    "LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization",
    "BatchNormalization", "InstanceNormalization", "GroupNormalization",
})


def first_nonfinite(array, *, nan_only: bool = False) -> tuple[tuple[int, ...], float, int] | None:
    """(index, value, count) of the first NaN (or +-inf unless `nan_only`) in `array`, or None.

    Works on any float array numpy can view (float16/32/64, ml_dtypes bfloat16, a memory
    map), `FINITE_CHUNK` elements at a time, so a multi-GB weight is never copied."""
    a = np.asarray(array)
    flat = a.reshape(-1)
    first, count = None, 0
    for i in range(0, flat.size, FINITE_CHUNK):
        chunk = flat[i:i + FINITE_CHUNK]
        bad = np.isnan(chunk) if nan_only else ~np.isfinite(chunk)
        n = int(np.count_nonzero(bad))
        if n and first is None:
            j = i + int(np.flatnonzero(bad)[0])
            first = (tuple(int(k) for k in np.unravel_index(j, a.shape)), float(flat[j]))
        count += n
    return None if first is None else (first[0], first[1], count)


def nonfinite_message(what: str, found: tuple[tuple[int, ...], float, int]) -> str:
    """'<what> holds NaN at index [3, 5] (2 non-finite values): ...' for check_finite's finding."""
    index, value, count = found
    kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    return (f"{what} holds {kind} at index {list(index)} ({count} non-finite value{'s' if count != 1 else ''}): "
            f"the weights are corrupt (a broken checkpoint, fine-tune or merge); fix or re-export them")


def check_finite_initializers(model: ir.Model) -> None:
    """Refuse non-finite float constants: every float initializer and Constant node of the
    graph. NaN is refused everywhere; +-inf where an op in WEIGHT_READERS reads the
    constant (a norm weight, an embedding, a linear or conv weight). Raises SpikecError
    naming the initializer (its ONNX name: the checkpoint's name in an export) and a node
    that reads it. Slices of FINITE_CHUNK elements: memory-mapped weights stay mapped."""

    def readers(v: ir.Value) -> list[ir.Node]:
        return [u.node for u in v.uses()]

    def check(v: ir.Value, tensor, what: str) -> None:
        if tensor is None or not tensor.dtype.is_floating_point():
            return
        users = readers(v)
        strict = any(n.op_type in WEIGHT_READERS and n.domain in ("", "ai.onnx") for n in users)
        try:
            array = tensor.numpy()
        except Exception as exc:  # unreadable external data is reported by whoever reads it
            raise SpikecError(f"{what} '{v.name}': cannot read its data ({exc})") from None
        found = first_nonfinite(array, nan_only=not strict)
        if found is not None:
            node = next((n for n in users if n.op_type in WEIGHT_READERS), users[0] if users else None)
            read_by = f" (read by node '{node.name}', {node.op_type})" if node is not None else ""
            raise SpikecError(nonfinite_message(f"{what} '{v.name}'{read_by}", found))

    for v in model.graph.initializers.values():
        check(v, v.const_value, "initializer")
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and attr.type == ir.AttributeType.TENSOR:
                check(node.outputs[0], attr.value, f"Constant node '{node.name}' output")


# What a pass that rewrites the graph's float computation makes stale (passes/analyses.py).
FLOAT_ANALYSES = ("float-model", "layer-map")


@register_property("shapes-inferred", "every value a standard ONNX node of the main graph produces, from typed "
                                      "inputs, has an element type (what onnx's shape inference gives)")
def check_shapes_inferred(model: ir.Model) -> None:
    """Raises SpikecError naming the first such node output without a type. Outputs of
    custom-domain ops (spikec, spikec.vec), and of nodes reading an untyped value, are
    outside what onnx's inference can type, so they are not required."""
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or any(v is not None and v.type is None for v in node.inputs):
            continue
        for out in node.outputs:
            if out.type is None:
                raise SpikecError(f"value '{out.name}' (output of node '{node.name}', {node.op_type}) has no type")


@register_property("topologically-sorted", "every node of the main graph follows the producers of its inputs")
def check_topologically_sorted(model: ir.Model) -> None:
    """Raises SpikecError naming the first node that reads a value produced after it."""
    seen: set[int] = set()
    for node in model.graph:
        for v in node.inputs:
            p = v.producer() if v is not None else None
            if p is not None and p.graph is model.graph and id(p) not in seen:
                raise SpikecError(f"node '{node.name}' ({node.op_type}) reads '{v.name}' before its producer "
                                  f"'{p.name}' ({p.op_type})")
        seen.add(id(node))


class ShapeInference(SpikecPass):
    """Annotate every value with its type and shape (onnx's shape inference)."""

    name = "shape-inference"
    guarantees = ("shapes-inferred",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.ShapeInferencePass()(model)


class FoldConstants(SpikecPass):
    """Evaluate nodes whose inputs are all constant (onnxscript's constant folder).

    First it refuses non-finite weights (check_finite_initializers): SpikecError naming
    the initializer and a node reading it.

    Size limits keep folding from materialising large tensors (e.g. an expanded
    attention mask) into the weights.
    """

    name = "fold-constants"
    invalidates = ("shapes-inferred", *FLOAT_ANALYSES)

    def __init__(self, input_size_limit: int = 8192, output_size_limit: int = 512 * 512) -> None:
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # The first pass of every pipeline (SPIKING and QDQ): weights are read here first,
        # so a NaN/inf weight is refused before folding spreads it (check_finite_initializers).
        check_finite_initializers(model)
        result = onnxscript.optimizer.fold_constants_ir(
            model,
            onnx_shape_inference=False,
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
        )
        return ir.passes.PassResult(model, result.modified)


class EliminateIdentity(SpikecPass):
    """Remove Identity nodes, reconnecting their consumers (graph outputs are kept)."""

    name = "eliminate-identity"
    invalidates = FLOAT_ANALYSES

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.IdentityEliminationPass()(model)


class EliminateDeadNodes(SpikecPass):
    """Remove nodes and initializers that no graph output depends on."""

    name = "eliminate-dead-nodes"
    invalidates = FLOAT_ANALYSES

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = common.RemoveUnusedNodesPass()(model)
        functions = common.RemoveUnusedFunctionsPass()(model)
        return ir.passes.PassResult(model, result.modified or functions.modified)


class TopologicalSort(SpikecPass):
    """Order nodes so that every node follows its producers (deterministic)."""

    name = "topological-sort"
    guarantees = ("topologically-sorted",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.TopologicalSortPass()(model)


class EliminateCommonSubexpressions(SpikecPass):
    """Merge nodes that compute the same thing from the same inputs (onnx-ir's CSE).

    After spike-rewrite this is what lets Q, K and V (and gate and up) share one spike
    encoder: their SpikeEncode nodes have the same input and attributes."""

    name = "eliminate-common-subexpressions"
    invalidates = FLOAT_ANALYSES

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.CommonSubexpressionEliminationPass()(model)
