"""lower-ort: the spikec op domain rewritten into stock ONNX for onnxruntime.

The ORT target's lowering (spikec/ort_lowering.py) as a registered pass: every
`spikec` node (SpikeEncode, SpikeCode, SpikeMatMul, QuantLinear, QuantMatMul) becomes a
call of a model-local `spikec.ort` function that spells its numerics (SEMANTICS.md) in
stock operators, in one of three modes (`fused`, `exact`, `fakequant`; docs/ort-target.md).

`spikec compile` runs this pass on a clone of every compiled graph (weights shared, not
copied) after the main pipeline, so a graph that onnxruntime could not run is refused at
compile time, the lowered graph is verified like every pass's output, `--dump-ir` writes
it (`<dump>/lower-ort/`), and the compile report has its record. The .sbin keeps the
portable spiking graph, which the fpga target and the report also read; the ORT target
applies the same lowering function when it loads a graph, in the mode the user picks at
run time (`spikec run --mode`), instead of the .sbin storing three lowered copies. The one
difference: the ORT target may add the one-token MatMulNBits path for W4 products (a 4-bit
copy of the weights, made at load time only where memory allows); this pass lowers without it.
"""

from __future__ import annotations

import onnx_ir as ir

from spikec import ops as sops
from spikec.errors import SpikecError
from spikec.ort_lowering import MODES, lower_for_ort
from spikec.passes.manager import SpikecPass, register_property


class LowerOrt(SpikecPass):
    """spikec nodes -> spikec.ort function calls (mode: one of spikec.ort_lowering.MODES).

    Raises SpikecError for a mode outside MODES; its guarantee `ort-lowered` (no spikec
    node left) is checked after it runs."""

    name = "lower-ort"
    guarantees = ("ort-lowered",)

    def __init__(self, mode: str = "fused") -> None:
        super().__init__()
        if mode not in MODES:
            raise SpikecError(f"lower-ort: mode '{mode}' is not one of {', '.join(MODES)}")
        self.mode = mode

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # nbits=False: the one-token MatMulNBits path packs a 4-bit copy of every W4 weight,
        # which a compile of a 7B model must not hold; the ORT target adds it at load time
        # where memory allows (runtime/ort_target.py), and tests/test_ort_nbits.py checks it.
        stats = lower_for_ort(model, self.mode, nbits=False)
        return ir.passes.PassResult(model, modified=stats.nodes > 0)



@register_property("ort-lowered", "no spikec-domain node is left: each became a spikec.ort function call")
def check_ort_lowered(model: ir.Model) -> None:
    left = [n.name for n in model.graph if n.domain == sops.DOMAIN]
    if left:
        raise SpikecError(f"{len(left)} spikec node(s) not lowered, first '{left[0]}'")


def has_spiking_ops(model: ir.Model) -> bool:
    """True when `model`'s main graph holds a node of the spikec domain (what lower-ort rewrites)."""
    return any(n.domain == sops.DOMAIN for n in model.graph)


__all__ = ["LowerOrt", "check_ort_lowered", "has_spiking_ops"]
