"""Compiler passes: one module per pass (or family of small generic passes).

`PASSES` maps every pass name to its class; `GENERIC_PIPELINE` is the clean-up
pipeline that runs on any ONNX model.
"""

from __future__ import annotations

from spikec.passes.generic import (
    EliminateDeadNodes,
    EliminateIdentity,
    FoldConstants,
    ShapeInference,
    TopologicalSort,
)
from spikec.passes.manager import CompileReport, PassManager, PassRecord, SpikecPass

PASSES: dict[str, type[SpikecPass]] = {
    cls.name: cls
    for cls in (ShapeInference, FoldConstants, EliminateIdentity, EliminateDeadNodes, TopologicalSort)
}

GENERIC_PIPELINE: tuple[str, ...] = (
    "fold-constants",
    "eliminate-identity",
    "eliminate-dead-nodes",
    "topological-sort",
    "shape-inference",
)

__all__ = ["PASSES", "GENERIC_PIPELINE", "PassManager", "CompileReport", "PassRecord", "SpikecPass"]
