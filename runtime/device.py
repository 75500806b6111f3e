"""The device interface of the `fpga` target: what the ISA simulator, an RTL co-simulation
and a real board all implement, so one runtime drives any of them.

The host sees a byte-addressed DRAM and a program (docs/isa.md). A run is:

    dev = Simulator(HwConfig.load("default"))      # or an RTL co-simulation, or a board
    dev.load_program(program_bytes)                 # decoded and checked; bad bytes -> SpikecError
    dev.write(addr, weights); dev.write(addr2, activations)
    counters = dev.run()                            # until FINISH retires
    out = dev.read(addr3, nbytes)

On-chip buffers are not visible to the host: data moves only through LOAD and STORE.
`counters` are the device's performance counters for the last run (cycles, traffic,
spikes, energy); an implementation fills what it can measure and leaves the rest 0.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields

import numpy as np

from spikec.errors import SpikecError
from spikec.isa.hwconfig import HwConfig


@dataclass
class Counters:
    """Performance counters of one run. Cycles are device cycles at cfg.clock_mhz."""

    cycles: int = 0  # first fetch to FINISH retirement, with load/compute/store overlapped
    busy_load: int = 0  # cycles each module spent executing (<= cycles)
    busy_compute: int = 0
    busy_store: int = 0
    instructions: int = 0
    dram_read_bytes: int = 0
    dram_write_bytes: int = 0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    spikes: int = 0  # nonzero spikes fed to the PE array
    sops: int = 0  # synaptic operations: nonzero spike x weight it meets (SEMANTICS.md section 6)
    spike_vectors: int = 0  # (token, plane, k-chunk) spike vectors the PE array processed
    skipped_vectors: int = 0  # all-zero spike vectors the PE array skipped
    vec_elements: int = 0  # float32 elements produced by ENCODE and VEC
    energy_pj: dict[str, float] = field(default_factory=dict)  # by component: dram, sram, pe, vec

    @property
    def energy_total_pj(self) -> float:
        return float(sum(self.energy_pj.values()))

    def seconds(self, cfg: HwConfig) -> float:
        return self.cycles / (cfg.clock_mhz * 1e6)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["energy_pj"] = dict(self.energy_pj)
        d["energy_total_pj"] = self.energy_total_pj
        return d


class Device(abc.ABC):
    """One accelerator instance with its DRAM. Implementations: runtime.simulator.Simulator
    (functional + cost model) and runtime.rtl_device.RtlDevice (Verilator co-simulation of
    rtl/); a board driver would be a third."""

    config: HwConfig
    label: str = "device"  # what reports call it

    @abc.abstractmethod
    def load_program(self, program: bytes) -> None:
        """Decode and check a PROGRAM section; raise SpikecError on any bad instruction
        (including buffer or DRAM bounds for this configuration)."""

    @abc.abstractmethod
    def write(self, addr: int, data: bytes) -> None:
        """Copy bytes into DRAM at byte address `addr`."""

    @abc.abstractmethod
    def read(self, addr: int, n: int) -> bytes:
        """n bytes of DRAM from byte address `addr`."""

    @abc.abstractmethod
    def run(self) -> Counters:
        """Execute the loaded program until FINISH retires; return the run's counters.
        A program that cannot finish (deadlock, fault) raises SpikecError, never hangs."""

    @property
    @abc.abstractmethod
    def counters(self) -> Counters:
        """Counters of the last run."""

    # ------------------------------------------------------------ conveniences

    def _check_range(self, addr: int, n: int) -> None:
        size = self.config.dram_bytes
        if not (isinstance(addr, (int, np.integer)) and isinstance(n, (int, np.integer))) or addr < 0 or n < 0 or addr + n > size:
            raise SpikecError(f"DRAM access [{addr}, {addr}+{n}) outside the device's {size} bytes")

    def write_array(self, addr: int, a: np.ndarray, dtype: str) -> None:
        """Write an array in the device's little-endian layout (dtype such as '<f4', 'i1')."""
        self.write(addr, np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())

    def read_array(self, addr: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        return np.frombuffer(self.read(addr, n), dtype=dt).reshape(shape).astype(dt.newbyteorder("="))
