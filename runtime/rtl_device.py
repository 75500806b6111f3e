"""The `rtl` device: the accelerator's SystemVerilog core (rtl/) run cycle by cycle in a
Verilator testbench, behind the same `Device` interface as the functional simulator.

    dev = RtlDevice("small")          # builds (once, cached) the Verilator model of that configuration
    dev.load_program(program)         # decoded and bounds-checked exactly like Simulator; plus
                                      # instructions the RTL core does not implement are rejected
    dev.write(addr, data); dev.run(); dev.read(addr, n)

The DRAM model is the simulator's: `cfg.dram_bytes` of zeros (np.zeros maps pages
lazily). `run()` hands the testbench the DRAM image up to the highest byte the host wrote
or the program's LOADs/STOREs touch (the testbench's DRAM is that plus a guard band of at
least 1 MiB, not all of `cfg.dram_bytes`: the program cannot reach further, and stray
writes into the band still come back), and copies the image it returns back into DRAM,
so host reads after a run see exactly what the RTL wrote. A FAULT or TIMEOUT of the
device is a SpikecError (from `runtime.rtl_sim`).

Counters. **Cycles are measured**: cycles, busy_load/compute/store, instructions, DRAM
bytes, spikes, spike vectors (processed and skipped) and vector elements are the RTL's own
counters. **Energy is modeled**: `isa/costmodel.py` applied to the program's
instructions, with each SPMM's spike vectors and spikes taken from the RTL's measured
totals (split over the program's SPMMs in proportion to their dense counts -- exact when
the program has one SPMM or its SPMMs share shapes; the RTL reports totals, not per
instruction). SRAM bytes and SOPs come from the same attribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction, decode_program
from spikec.isa.fields import Opcode, VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.isa import costmodel
from spikec.runtime.device import Counters, Device
from spikec.runtime.simulator import dram_span, check_bounds

# The VEC functions the RTL core implements: all of them (docs/rtl.md section 3; its
# fault 5 is reserved for a function left out). Edit this set if the core drops one: the
# loader then refuses such programs and the random programs avoid them.
RTL_VEC_FUNCS: frozenset[VecFunc] = frozenset(VecFunc)


def implemented_vec_funcs() -> frozenset[VecFunc]:
    """The VEC functions the RTL core implements (docs/rtl.md)."""
    return RTL_VEC_FUNCS


def unsupported(ins: Instruction) -> str | None:
    """Why the RTL core cannot run `ins`, or None."""
    if ins.op == Opcode.VEC and VecFunc(ins.func) not in implemented_vec_funcs():
        have = ", ".join(f.name for f in sorted(implemented_vec_funcs()))
        return f"VEC function {VecFunc(ins.func).name} is not implemented by the RTL core (it implements {have}; docs/rtl.md)"
    return None


def randprog_options() -> dict:
    """Keyword arguments for spikec.testing.randprog.random_program that keep to what this RTL core runs."""
    return {"vec_funcs": tuple(sorted(implemented_vec_funcs()))}


def _rtl_sim():
    try:
        from spikec.runtime import rtl_sim
    except ImportError as exc:
        raise SpikecError(f"--device rtl: the RTL co-simulation is not available ({exc})") from None
    return rtl_sim


GUARD = 1 << 20

_BINARIES: dict = {}


def _split(total: int, weights: list[int]) -> list[int]:
    """Integers summing to `total`, proportional to `weights` (largest remainder)."""
    wsum = sum(weights)
    if not weights:
        return []
    if wsum == 0:
        weights, wsum = [1] * len(weights), len(weights)
    raw = [total * w / wsum for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: total - sum(out)]:
        out[i] += 1
    return out


class RtlDevice(Device):
    """Verilator co-simulation of rtl/ for one hardware configuration.

    `cache_dir`: where rtl_sim caches the build (its default when None); `max_cycles`:
    the testbench's timeout per run (default: 8x the cost model's serial dense bound of the
    program, plus 200,000)."""

    label = "RTL co-simulation (Verilator), measured cycles"

    def __init__(self, config: HwConfig | str = "default", cache_dir: str | Path | None = None,
                 max_cycles: int | None = None) -> None:
        self.config = config if isinstance(config, HwConfig) else HwConfig.load(config)
        self.dram = np.zeros(self.config.dram_bytes, np.uint8)
        self.program: list[Instruction] | None = None
        self._program_bytes = b""
        self._host_hi = 0  # one past the highest byte the host wrote
        self._prog_hi = 0  # one past the highest DRAM byte the program's DMAs touch
        self._max_cycles = max_cycles
        self._counters = Counters()
        self._sim = _rtl_sim()
        key = (self.config, None if cache_dir is None else str(cache_dir))
        if key not in _BINARIES:  # rtl_sim.build caches on disk; this skips re-hashing the sources per device
            _BINARIES[key] = self._sim.build(self.config, cache_dir)
        self.binary = _BINARIES[key]
        self.last_out_bytes = 0

    # ------------------------------------------------------------ Device interface

    def load_program(self, program: bytes) -> None:
        prog = decode_program(program)
        hi = 0
        for i, ins in enumerate(prog):
            check_bounds(self.config, ins, i)
            why = unsupported(ins)
            if why:
                raise SpikecError(f"instruction {i} ({ins.op.name}): {why}")
            if ins.op in (Opcode.LOAD, Opcode.STORE):
                hi = max(hi, dram_span(ins)[1])
        self.program, self._program_bytes, self._prog_hi = prog, bytes(program), hi

    def write(self, addr: int, data: bytes) -> None:
        data = np.frombuffer(bytes(data), np.uint8)
        self._check_range(addr, len(data))
        self.dram[addr : addr + len(data)] = data
        if len(data):
            self._host_hi = max(self._host_hi, addr + len(data))

    def read(self, addr: int, n: int) -> bytes:
        self._check_range(addr, n)
        return self.dram[addr : addr + n].tobytes()

    @property
    def counters(self) -> Counters:
        return self._counters

    def max_cycles(self) -> int:
        if self._max_cycles is not None:
            return self._max_cycles
        serial = sum(costmodel.instruction_cost(self.config, ins).cycles for ins in self.program or [])
        return 8 * serial + 200_000

    def run(self) -> Counters:
        if self.program is None:
            raise SpikecError("run: no program loaded")
        cfg = self.config
        n = min(max(self._host_hi, self._prog_hi), cfg.dram_bytes)
        # The testbench's DRAM: every byte the program may touch (load_program checked the
        # DMA bounds) plus a guard band of at least 1 MiB, where a stray write of the RTL
        # would still show up (and be copied back); allocating all of cfg.dram_bytes
        # (256 MiB on `default`) would cost more than most runs.
        tb_bytes = min(cfg.dram_bytes, -(-n // GUARD) * GUARD + GUARD)
        out, rtl = self._sim.run(self.binary, self._program_bytes, self.dram[:n].tobytes(), tb_bytes, self.max_cycles())
        if len(out) > cfg.dram_bytes:
            raise SpikecError(f"rtl: the testbench returned {len(out)} bytes of DRAM, more than the device's {cfg.dram_bytes}")
        self.dram[: len(out)] = np.frombuffer(out, np.uint8)
        self.last_out_bytes = len(out)
        self._host_hi = max(self._host_hi, len(out))
        self._counters = self._make_counters(rtl)
        return self._counters

    # ------------------------------------------------------------ counters

    def _make_counters(self, rtl: dict) -> Counters:
        cfg = self.config
        c = Counters()
        for key in ("cycles", "busy_load", "busy_compute", "busy_store", "instructions", "dram_read_bytes",
                    "dram_write_bytes", "spikes", "spike_vectors", "skipped_vectors", "vec_elements"):
            setattr(c, key, int(rtl.get(key, 0)))
        spmms = [ins for ins in self.program if ins.op == Opcode.SPMM]
        vectors = _split(c.spike_vectors, [costmodel.spmm_dense_vectors(cfg, s) for s in spmms])
        planes = [s.t if s.neuron == 0 else 2 ** (s.t + 1) - 1 for s in spmms]
        spikes = _split(c.spikes, [s.n * p * s.k for s, p in zip(spmms, planes)])
        per_spmm = iter(zip(vectors, spikes))
        c.energy_pj = {"dram": 0.0, "sram": 0.0, "pe": 0.0, "vec": 0.0}
        for ins in self.program:
            if ins.op == Opcode.SPMM:
                v, s = next(per_spmm)
                cost = costmodel.instruction_cost(cfg, ins, v, s)
                c.sops += s * ins.m
            else:
                cost = costmodel.instruction_cost(cfg, ins)
            c.sram_read_bytes += sum(cost.sram_read.values())
            c.sram_write_bytes += sum(cost.sram_write.values())
            for k, e in cost.energy_pj(cfg).items():
                c.energy_pj[k] += e
        return c


__all__ = ["RtlDevice", "implemented_vec_funcs", "unsupported", "randprog_options", "RTL_VEC_FUNCS"]
