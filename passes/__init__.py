"""Compiler passes: one module per pass (or family of small generic passes).

`PASSES` maps every pass name to its class; `GENERIC_PIPELINE` is the clean-up
pipeline that runs on any ONNX model; `SPIKING_PIPELINE` is the default of
`spikec compile`: clean up, quantize, rewrite into spiking ops, measure MED, assign
timesteps (docs/passes.md). `with_vector_numerics` adds the pass that gives norms, softmax
and SiLU the accelerator's exact numerics (for `--isa` and `--exact-vector`). Passes derived from `ContextPass` take the compile's
shared `CompileContext` (options, calibration data, the analyses of
passes/analyses.py) in their constructor. Contracts (needs, guarantees, invalidates) and
their checks: passes/manager.py and docs/passes.md.
"""

from __future__ import annotations

from spikec.passes.generic import (
    EliminateCommonSubexpressions,
    EliminateDeadNodes,
    EliminateIdentity,
    FoldConstants,
    ShapeInference,
    TopologicalSort,
)
from spikec.passes.import_qdq import ImportQdq
from spikec.passes.lower_isa import LowerIsa
from spikec.passes.lower_ort import LowerOrt
from spikec.passes.manager import CompileReport, PassManager, PassRecord, SpikecPass
from spikec.passes.med import Med
from spikec.passes.msts import Msts
from spikec.passes.quantize import Quantize
from spikec.passes.rotate import Rotate
from spikec.passes.spike_rewrite import SpikeRewrite
from spikec.passes.vector_numerics import VectorNumerics

PASSES: dict[str, type[SpikecPass]] = {
    cls.name: cls
    for cls in (ShapeInference, FoldConstants, EliminateIdentity, EliminateDeadNodes, TopologicalSort,
                EliminateCommonSubexpressions,
                VectorNumerics, Quantize, ImportQdq, SpikeRewrite, Med, Msts, LowerOrt, LowerIsa, Rotate)
}

GENERIC_PIPELINE: tuple[str, ...] = (
    "fold-constants",
    "eliminate-identity",
    "eliminate-dead-nodes",
    "topological-sort",
    "shape-inference",
)

# CSE after spike-rewrite merges the spike encoders of products that read the same
# activation (Q/K/V, gate/up): one encoder per activation, as the hardware would have.
SPIKING_PIPELINE: tuple[str, ...] = GENERIC_PIPELINE + (
    "quantize", "spike-rewrite", "eliminate-common-subexpressions", "med", "msts")
# For a model already quantized to QDQ by another tool (chosen automatically when the
# input has QuantizeLinear/DequantizeLinear nodes).
QDQ_PIPELINE: tuple[str, ...] = ("import-qdq",) + GENERIC_PIPELINE + (
    "spike-rewrite", "eliminate-common-subexpressions", "med", "msts")



def with_vector_numerics(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` with vector-numerics after the clean-up (before the first of quantize and
    spike-rewrite, while every value has its inferred shape)."""
    if "vector-numerics" in names:
        return names
    i = min([names.index(n) for n in ("quantize", "spike-rewrite") if n in names], default=len(names))
    return names[:i] + ("vector-numerics",) + names[i:]


__all__ = ["with_vector_numerics", "PASSES", "GENERIC_PIPELINE", "SPIKING_PIPELINE", "QDQ_PIPELINE", "PassManager", "CompileReport", "PassRecord", "SpikecPass"]
