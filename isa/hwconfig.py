"""The accelerator's hardware configuration: one JSON file shared by the compiler, the
simulator, the cost model and (later) the RTL's parameters.

`HwConfig.load("default")` reads isa/configs/default.json; `HwConfig.load(path)` any file.
Every field is required, unknown fields are rejected, and each bad value ends in a
SpikecError naming the file and the field. Buffer sizes are checked against the address
widths of isa/fields.py, so every configured buffer is fully addressable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from spikec.errors import SpikecError
from spikec.isa.fields import ADDR_BITS, DRAM_ADDR_BITS, ELEMENT_BYTES, Buffer

CONFIG_DIR = Path(__file__).parent / "configs"

# name: (kind, low, high, meaning). Integers are checked exactly; floats must be finite.
_SPEC: dict[str, tuple[type, float, float, str]] = {
    "clock_mhz": (float, 1, 10_000, "clock frequency in MHz"),
    "pe_rows": (int, 1, 1024, "PE array rows: spike inputs (k) consumed per cycle"),
    "pe_cols": (int, 1, 1024, "PE array columns: output features (m) per cycle"),
    "vec_lanes": (int, 1, 1024, "vector-unit lanes: float32 elements per cycle and pass"),
    "inp_kib": (int, 1, 1 << 20, "INP buffer size (KiB, int16 codes)"),
    "wgt_kib": (int, 1, 1 << 20, "WGT buffer size (KiB, bytes)"),
    "acc_kib": (int, 1, 1 << 20, "ACC buffer size (KiB, int32)"),
    "vec_kib": (int, 1, 1 << 20, "VEC buffer size (KiB, float32)"),
    "scl_kib": (int, 1, 1 << 20, "SCL buffer size (KiB, float32)"),
    "dram_mib": (int, 1, 1 << (DRAM_ADDR_BITS - 20), "DRAM size (MiB), byte-addressed from 0"),
    "dram_gbps": (float, 1e-3, 1e4, "DRAM bandwidth in GB/s (1e9 bytes/s)"),
    "dram_latency_cycles": (int, 0, 1 << 20, "fixed cycles per DMA instruction"),
    "spmm_setup_cycles": (int, 0, 1 << 20, "fixed cycles per SPMM instruction"),
    "vec_setup_cycles": (int, 0, 1 << 20, "fixed cycles per ENCODE or VEC instruction"),
    "cmd_queue_depth": (int, 1, 1 << 16, "instructions each module's command queue holds"),
    "token_queue_depth": (int, 1, 1 << 16, "tokens each dependency queue holds"),
}

_KIB_FIELD = {Buffer.INP: "inp_kib", Buffer.WGT: "wgt_kib", Buffer.ACC: "acc_kib", Buffer.VEC: "vec_kib", Buffer.SCL: "scl_kib"}


@dataclass(frozen=True)
class HwConfig:
    name: str
    clock_mhz: float
    pe_rows: int
    pe_cols: int
    vec_lanes: int
    inp_kib: int
    wgt_kib: int
    acc_kib: int
    vec_kib: int
    scl_kib: int
    dram_mib: int
    dram_gbps: float
    dram_latency_cycles: int
    spmm_setup_cycles: int
    vec_setup_cycles: int
    cmd_queue_depth: int
    token_queue_depth: int

    # ------------------------------------------------------------ derived sizes

    def buffer_bytes(self, buf: Buffer | int) -> int:
        return getattr(self, _KIB_FIELD[Buffer(buf)]) * 1024

    def buffer_elems(self, buf: Buffer | int) -> int:
        return self.buffer_bytes(buf) // ELEMENT_BYTES[Buffer(buf)]

    @property
    def dram_bytes(self) -> int:
        return self.dram_mib << 20

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_gbps * 1e3 / self.clock_mhz

    # ------------------------------------------------------------ (de)serialisation

    @classmethod
    def from_dict(cls, d: object, source: str = "hwconfig") -> "HwConfig":
        if not isinstance(d, dict):
            raise SpikecError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise SpikecError(f"{source}: unknown field(s) {', '.join(repr(u[:40]) for u in unknown[:8])}")
        missing = [f for f in known if f not in d]
        if missing:
            raise SpikecError(f"{source}: missing field(s) {', '.join(sorted(missing))}")
        name = d["name"]
        if not isinstance(name, str) or not name or len(name) > 256:
            raise SpikecError(f"{source}: field 'name' must be a non-empty string of at most 256 characters, got {name!r:.80}")
        values: dict[str, object] = {"name": name}
        for key, (kind, lo, hi, meaning) in _SPEC.items():
            v = d[key]
            bad_type = isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int))
            if bad_type or not (isinstance(v, int) or math.isfinite(v)) or not lo <= v <= hi:
                want = "an integer" if kind is int else "a number"
                raise SpikecError(f"{source}: field '{key}' ({meaning}) must be {want} in {lo:g}..{hi:g}, got {v!r:.80}")
            values[key] = kind(v)
        cfg = cls(**values)  # type: ignore[arg-type]
        for buf, key in _KIB_FIELD.items():
            if cfg.buffer_elems(buf) > 1 << ADDR_BITS[buf]:
                raise SpikecError(
                    f"{source}: field '{key}' = {d[key]} KiB holds {cfg.buffer_elems(buf)} elements, more than the "
                    f"{ADDR_BITS[buf]}-bit {buf.name} addresses reach ({1 << ADDR_BITS[buf]})"
                )
        if cfg.dram_bytes_per_cycle < 1e-3:
            raise SpikecError(f"{source}: field 'dram_gbps' gives {cfg.dram_bytes_per_cycle:g} bytes per cycle; too slow")
        return cfg

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "hwconfig") -> "HwConfig":
        from spikec.schema import parse_json

        # every failure of the JSON itself (invalid UTF-8, 5,000-digit numbers, deep nesting) is
        # a SpikecError naming the file; then every field is checked by from_dict
        return cls.from_dict(parse_json(text, where=source, max_bytes=1 << 20), source)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike = "default") -> "HwConfig":
        """A built-in configuration by name ('default', 'small') or a JSON file."""
        p = Path(name_or_path)
        if not p.suffix and not p.exists():
            p = CONFIG_DIR / f"{name_or_path}.json"
            if not p.exists():
                known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.json")))
                raise SpikecError(f"unknown hardware configuration '{name_or_path}' (built in: {known}; or give a .json path)")
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SpikecError(f"{p}: cannot read hardware configuration ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise SpikecError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        return cls.from_json(text, str(p))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> bytes:
        """Deterministic bytes for the .sbin HWCONFIG section."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
