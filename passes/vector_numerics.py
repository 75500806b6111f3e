"""vector-numerics: norms, softmax and SiLU become spikec.vec functions with one exact numeric.

An exported graph computes RMSNorm as Pow -> ReduceMean -> Add -> Sqrt -> Reciprocal ->
Mul (-> Mul gamma), LayerNorm as LayerNormalization, softmax as Softmax and SiLU as
x * Sigmoid(x); each runtime then sums and rounds in its own order. Where a spike encoder
follows, a last-bit difference near a rounding tie changes a whole code and then the
generated tokens (bf16 checkpoints put many values near ties). This pass replaces each
such pattern (matched by passes/lower_vec.py's `match_functions`, the same patterns the
accelerator implements) by one call `spikec.vec::RMSNorm(x, gamma, eps)`,
`LayerNorm(x, gamma, beta, eps)`, `Softmax(x)` or `SiLU(x)`, whose definition
(spikec/vector.py, spelled out in stock ONNX ops; spikec.reference.vec_*) is the vector
unit's (docs/isa.md section 4). The reference evaluator, onnxruntime, the simulator and
the RTL then give the same bits.

The replaced pattern's output value is kept (same name), so analyses that look values up
by name still find them. A graph without such patterns is unchanged. Runs before
quantize, while every value has its inferred shape (the matchers need ranks and row
lengths).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from spikec import vector
from spikec.errors import SpikecError
from spikec.isa.fields import VecFunc
from spikec.passes.lower_vec import match_functions
from spikec.passes.manager import SpikecPass, register_property

log = logging.getLogger(__name__)

FUNCTIONS = {VecFunc.RMSNORM: vector.RMSNORM, VecFunc.LAYERNORM: vector.LAYERNORM,
             VecFunc.SOFTMAX: vector.SOFTMAX, VecFunc.SILU: vector.SILU}


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    v = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape),
                 const_value=ir.Tensor(array, name=name))
    graph.register_initializer(v)
    return v


@register_property("vector-exact", "no RMSNorm / LayerNorm / Softmax / SiLU pattern the accelerator implements is "
                                   "left in stock ops (each is a spikec.vec function call)")
def check_vector_exact(model: ir.Model) -> None:
    """Raises SpikecError naming the last node of the first pattern left."""
    for m in match_functions(model):
        last = m.nodes[-1]
        raise SpikecError(f"node '{last.name}' ({last.op_type}) ends a {FUNCTIONS[m.func]} pattern left in stock ops")


class VectorNumerics(SpikecPass):
    """RMSNorm / LayerNorm / Softmax / SiLU patterns -> spikec.vec function calls."""

    name = "vector-numerics"
    needs = ("shapes-inferred",)  # the matchers read ranks and row lengths
    guarantees = ("vector-exact",)
    invalidates = ("float-model", "layer-map")  # the float graph's norms now round like the accelerator's

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        used: set[str] = set()
        count = 0
        # The matches are found up front: a match's input may be the output of an earlier
        # match's pattern, replaced meanwhile; read the replacement (same name), not the old value.
        replaced: dict[int, ir.Value] = {}
        for m in match_functions(model):
            op = FUNCTIONS[m.func]
            last = m.nodes[-1]
            base = last.name
            inputs = [replaced.get(id(v), v) if v is not None else None for v in m.inputs]
            if m.func == VecFunc.RMSNORM:
                inputs.append(_initializer(graph, f"{base}.gamma", m.row.astype(np.float32)))
            elif m.func == VecFunc.LAYERNORM:
                gamma, beta = np.split(m.row.astype(np.float32), 2)
                inputs += [_initializer(graph, f"{base}.gamma", gamma), _initializer(graph, f"{base}.beta", beta)]
            if m.scalar is not None:
                inputs.append(_initializer(graph, f"{base}.eps", np.array(m.scalar, np.float32)))
            node = ir.node(op, inputs, domain=vector.DOMAIN, name=base)
            old = last.outputs[0]
            new = node.outputs[0]
            new.type, new.shape = old.type, old.shape
            ir.convenience.replace_nodes_and_values(graph, last, m.nodes, [node], [old], [new])
            new.name = old.name  # after the replacement freed the name
            replaced[id(old)] = new
            used.add(op)
            count += 1
        if used:
            vector.add_functions(model, sorted(used))
        log.info("vector-numerics: %d pattern(s) -> spikec.vec functions", count)
        return ir.passes.PassResult(model, modified=count > 0)


__all__ = ["VectorNumerics"]
