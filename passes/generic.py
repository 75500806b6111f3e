"""Generic graph clean-up passes every pipeline runs.

Each is a thin, named wrapper over a pass that onnx_ir or onnxscript already
ships; spikec adds only the pipeline metadata (name, needs, guarantees). See
docs/libraries.md for which library does what.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
import onnxscript.optimizer

from spikec.passes.manager import SpikecPass


class ShapeInference(SpikecPass):
    """Annotate every value with its type and shape (onnx's shape inference)."""

    name = "shape-inference"
    guarantees = ("shapes-inferred",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.ShapeInferencePass()(model)


class FoldConstants(SpikecPass):
    """Evaluate nodes whose inputs are all constant (onnxscript's constant folder).

    Size limits keep folding from materialising large tensors (e.g. an expanded
    attention mask) into the weights.
    """

    name = "fold-constants"
    invalidates = ("shapes-inferred",)

    def __init__(self, input_size_limit: int = 8192, output_size_limit: int = 512 * 512) -> None:
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
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

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.IdentityEliminationPass()(model)


class EliminateDeadNodes(SpikecPass):
    """Remove nodes and initializers that no graph output depends on."""

    name = "eliminate-dead-nodes"

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

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return common.CommonSubexpressionEliminationPass()(model)
