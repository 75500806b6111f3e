"""Recording what the simulator passes the cost model for each SPMM, for tests and
benchmarks that replay or tabulate it (e.g. `decode.timeline(..., spmm_counts=...)`)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from spikec.isa import costmodel
from spikec.isa.encoding import Instruction
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig


@contextlib.contextmanager
def recorded_spmms(on_spmm: Callable[[HwConfig, Instruction, int | None, int | None], None]) -> Iterator[None]:
    """Within the block, `on_spmm(cfg, ins, vectors, spikes)` is called for every SPMM that
    isa/costmodel.instruction_cost is asked about (the simulator passes the spike vectors
    it processed and the nonzero spikes), before it is costed."""
    orig = costmodel.instruction_cost

    def recording(cfg, ins, vectors=None, spikes=None):
        if ins.op == Opcode.SPMM:
            on_spmm(cfg, ins, vectors, spikes)
        return orig(cfg, ins, vectors, spikes)

    costmodel.instruction_cost = recording
    try:
        yield
    finally:
        costmodel.instruction_cost = orig
