"""The accelerator's hardware configuration: one JSON file shared by the compiler, the
simulator, the cost model and the RTL's parameters.

`HwConfig.load("default")` reads isa/configs/default.json; `HwConfig.load(path)` any file.
Every field of _SPEC is required, unknown fields are rejected, and each bad value ends in a
SpikecError naming the file and the field. Buffer sizes are checked against the address
widths of isa/fields.py, so every configured buffer is fully addressable.

Some fields are optional (the built-in `default` and `small` leave them out, so their
dictionaries, JSON and .sbin HWCONFIG sections are unchanged):
- `pe_load_lines` (default 1): tile lines (rows, or columns with `wtrans`) the PE array
  loads per cycle (costmodel.spmm_cost);
- `wgt_addr_bytes` (default 1): bytes per WGT address;
- `wfifo_kib` (default 0: none): the PE array's weight FIFO, which LOADs with `wfifo`
  fill and SPMMs with `wsrc` FIFO read (docs/isa.md section 3);
- `energy` (default: Horowitz's 45 nm table, `EnergyConstants()`): the energy constants
  the cost model charges, with their sources (docs/isa.md sections 7 and 11);
- `notes`: free-text strings (e.g. where the clock comes from); no effect.
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

# optional fields: name -> (kind, low, high, meaning, default)
_OPTIONAL_INT: dict[str, tuple[type, int, int, str, int]] = {
    "pe_load_lines": (int, 1, 1024, "tile lines (rows; columns with wtrans) the PE array loads per cycle", 1),
    # A WGT address names wgt_addr_bytes bytes (a power of two), so the field's 2**20
    # addresses reach a WGT larger than 1 MiB (docs/isa.md section 1, "WGT addresses").
    "wgt_addr_bytes": (int, 1, 64, "bytes per WGT address (a power of two)", 1),
    # The PE array's weight FIFO (docs/isa.md section 3, "The weight FIFO"): weights LOADed
    # into it stream to the array without a WGT write and read; 0 = no FIFO.
    "wfifo_kib": (int, 0, 1 << 16, "weight FIFO size (KiB; 0: none)", 0),
}



def check_keys(d: dict, cls, where: str, optional: set[str], noun: str) -> None:
    """Raise SpikecError naming `where` when dict `d` has a key that is no field of dataclass
    `cls`, or lacks one that is not in `optional` (`noun`: "field" or "key" in the message)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(d) - known))
    if unknown:
        raise SpikecError(f"{where}: unknown {noun}(s) {', '.join(repr(u[:40]) for u in unknown[:8])}")
    missing = sorted(known - set(d) - optional)
    if missing:
        raise SpikecError(f"{where}: missing {noun}(s) {', '.join(missing)}")

@dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation in pJ, and where the numbers come from. The defaults are
    M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
    45 nm, 0.9 V (as quoted in SEMANTICS.md section 6): the constants of every configuration
    without an `energy` field. A configuration's JSON may give its own (`energy`: an object
    with these keys; `sram64` as [[max_bytes, pJ], ...] by increasing size)."""

    int32_add: float = 0.1  # PE array: each SOP and each Horner/accumulate update
    int8_add: float = 0.03
    fp32_add: float = 0.9  # vector unit (compares, rint, conversions count as adds)
    fp32_mult: float = 3.7  # vector unit (a division counts as a multiply)
    # 64-bit SRAM access by array size; a buffer is charged the smallest class that holds it
    # (above the largest class that class's figure). Writes are charged as reads.
    sram64: tuple[tuple[int, float], ...] = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))
    # One 64-bit DRAM access: Horowitz gives 1.3 to 2.6 nJ; we use the low end so the
    # memory share is not overstated (pass dram64=2600.0 for the high end).
    dram64: float = 1300.0
    source: str = "Horowitz, ISSCC 2014, 45 nm (SEMANTICS.md section 6)"
    citations: tuple[str, ...] = ()

    def sram_pj_per_byte(self, size_bytes: int) -> float:
        for limit, pj in self.sram64:
            if size_bytes <= limit:
                return pj / 8
        return self.sram64[-1][1] / 8

    @property
    def dram_pj_per_bit(self) -> float:
        return self.dram64 / 64

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sram64"] = [list(x) for x in self.sram64]
        d["citations"] = list(self.citations)
        return d

    @classmethod
    def from_dict(cls, d: object, source: str) -> "EnergyConstants":
        where = f"{source}: field 'energy'"
        if not isinstance(d, dict):
            raise SpikecError(f"{where} must be an object, got {type(d).__name__}")
        check_keys(d, cls, where, optional={"citations"}, noun="key")
        vals: dict[str, object] = {}
        for key in ("int32_add", "int8_add", "fp32_add", "fp32_mult", "dram64"):
            v = d[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1e6:
                raise SpikecError(f"{where}: '{key}' (pJ) must be a number in 0..1e6, got {v!r:.80}")
            vals[key] = float(v)
        classes = d["sram64"]
        ok = isinstance(classes, list) and 1 <= len(classes) <= 16 and all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], int) and not isinstance(c[0], bool) and c[0] >= 1
            and isinstance(c[1], (int, float)) and not isinstance(c[1], bool) and math.isfinite(c[1]) and 0 <= c[1] <= 1e6
            for c in classes)
        if not ok or [c[0] for c in classes] != sorted({c[0] for c in classes}):
            raise SpikecError(f"{where}: 'sram64' must be 1..16 pairs [max_bytes, pJ per 64-bit access] by "
                              f"increasing size, got {classes!r:.120}")
        vals["sram64"] = tuple((int(a), float(b)) for a, b in classes)
        for key in ("source", "citations"):
            v = d.get(key, [] if key == "citations" else None)
            items = [v] if key == "source" else v
            if not isinstance(items, list) or len(items) > 64 or not all(isinstance(x, str) and 0 < len(x) <= 1024 for x in items):
                raise SpikecError(f"{where}: '{key}' must be {'a non-empty string' if key == 'source' else 'a list of strings'}"
                                  f" of at most 1024 characters")
            vals[key] = v if key == "source" else tuple(v)
        return cls(**vals)  # type: ignore[arg-type]


_OPTIONAL = ("pe_load_lines", "wgt_addr_bytes", "wfifo_kib", "energy", "notes")

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
    # optional (omitted from to_dict when at their defaults)
    pe_load_lines: int = 1
    wgt_addr_bytes: int = 1
    wfifo_kib: int = 0
    energy: EnergyConstants | None = None  # None: EnergyConstants() (Horowitz, 45 nm)
    notes: tuple[str, ...] = ()

    @property
    def energy_constants(self) -> EnergyConstants:
        """The energy constants of this configuration (Horowitz 45 nm unless it gives its own)."""
        return self.energy if self.energy is not None else _HOROWITZ

    # ------------------------------------------------------------ derived sizes

    def buffer_bytes(self, buf: Buffer | int) -> int:
        return getattr(self, _KIB_FIELD[Buffer(buf)]) * 1024

    def buffer_elems(self, buf: Buffer | int) -> int:
        return self.buffer_bytes(buf) // ELEMENT_BYTES[Buffer(buf)]

    def buffer_unit(self, buf: Buffer | int) -> int:
        """Elements per address of `buf`: wgt_addr_bytes for WGT, 1 for the others."""
        return self.wgt_addr_bytes if Buffer(buf) == Buffer.WGT else 1

    def wgt_address(self, offset: int) -> int:
        """The WGT address of byte `offset` (the value of an SPMM's `wgt`, a LOAD/STORE's
        `sram` with buf WGT, an ENCODE's `dst` with dst_buf WGT). SpikecError when the
        offset is not a multiple of wgt_addr_bytes: such bytes have no address."""
        if offset % self.wgt_addr_bytes:
            raise SpikecError(f"WGT byte offset {offset} is not a multiple of {self.wgt_addr_bytes} (wgt_addr_bytes of "
                              f"hardware configuration '{self.name}'): it has no WGT address")
        return offset // self.wgt_addr_bytes

    @property
    def wfifo_bytes(self) -> int:
        """Bytes the PE array's weight FIFO holds (0: the configuration has none)."""
        return self.wfifo_kib * 1024

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
        check_keys(d, cls, source, optional=set(_OPTIONAL), noun="field")
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
        for key, (kind, lo, hi, meaning, default) in _OPTIONAL_INT.items():
            v = d.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise SpikecError(f"{source}: field '{key}' ({meaning}) must be an integer in {lo}..{hi}, got {v!r:.80}")
            values[key] = v
        if values["wgt_addr_bytes"] & (values["wgt_addr_bytes"] - 1):  # type: ignore[operator]
            raise SpikecError(f"{source}: field 'wgt_addr_bytes' must be a power of two, got {values['wgt_addr_bytes']}")
        if "energy" in d:
            values["energy"] = EnergyConstants.from_dict(d["energy"], source)
        notes = d.get("notes", [])
        if not isinstance(notes, list) or len(notes) > 64 or not all(isinstance(x, str) and len(x) <= 2048 for x in notes):
            raise SpikecError(f"{source}: field 'notes' must be a list of at most 64 strings")
        values["notes"] = tuple(notes)
        cfg = cls(**values)  # type: ignore[arg-type]
        for buf, key in _KIB_FIELD.items():
            if cfg.buffer_elems(buf) > cfg.buffer_unit(buf) << ADDR_BITS[buf]:
                raise SpikecError(
                    f"{source}: field '{key}' = {d[key]} KiB holds {cfg.buffer_elems(buf)} elements, more than the "
                    f"{ADDR_BITS[buf]}-bit {buf.name} addresses reach ({cfg.buffer_unit(buf) << ADDR_BITS[buf]})"
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
        """Every field; the optional ones only when they differ from their defaults (so the
        built-in configurations' dictionaries and JSON are what they were before them)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _OPTIONAL}
        for key in _OPTIONAL_INT:
            if getattr(self, key) != _OPTIONAL_INT[key][4]:
                d[key] = getattr(self, key)
        if self.energy is not None:
            d["energy"] = self.energy.to_dict()
        if self.notes:
            d["notes"] = list(self.notes)
        return d

    def to_json(self) -> bytes:
        """Deterministic bytes for the .sbin HWCONFIG section."""
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")


_HOROWITZ = EnergyConstants()


def builtin_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
