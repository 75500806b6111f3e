"""Synthesise the RTL core with Yosys for an FPGA family and write the resource report.

    .venv/bin/python scripts/synth_report.py [--config small default] [--family xc7] [--out docs/synthesis.md]

Each hardware configuration (isa/configs/*.json) becomes the core's parameters
(`spikec.isa.svgen.params`), Yosys reads the same SystemVerilog the co-simulation
builds, and `synth_xilinx` (7-series: LUT6, FDRE, RAMB36E1/RAMB18E1, DSP48E1; without
its `share` step, see `no_share_flow`) maps it without flattening, so every module's
cells can be counted on their own -- in particular the PE array's DSPs, which a spike
datapath (accumulate-only PEs) must not need. The report section of --out between the markers is rewritten; the rest of the file
is left alone. Yosys is Debian's 0.23 (`make rtl-tools` installs it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spikec.isa import svgen  # noqa: E402
from spikec.isa.hwconfig import HwConfig  # noqa: E402
from spikec.runtime import rtl_sim  # noqa: E402

BEGIN = "<!-- BEGIN SYNTHESIS REPORT: python scripts/synth_report.py -->"
END = "<!-- END SYNTHESIS REPORT -->"
TOP = "spikec_core"

# Cell classes of Yosys' xc7 library.
CLASSES = {
    "LUT": re.compile(r"^LUT[1-6]$"),
    "FF": re.compile(r"^FD[A-Z]*$"),
    "LUTRAM": re.compile(r"^RAM\d+[XM]"),
    "BRAM36": re.compile(r"^RAMB36"),
    "BRAM18": re.compile(r"^RAMB18"),
    "DSP": re.compile(r"^DSP48"),
    "CARRY4": re.compile(r"^CARRY4$"),
    "MUXF": re.compile(r"^MUXF[78]$"),
}


def classify(cells: dict[str, int]) -> Counter:
    out: Counter = Counter()
    for cell, n in cells.items():
        for name, pat in CLASSES.items():
            if pat.match(cell):
                out[name] += n
                break
    return out


def hierarchical(stat: dict, top: str) -> dict[str, Counter]:
    """Leaf cells of each module including everything instantiated below it."""
    mods = stat["modules"]
    memo: dict[str, Counter] = {}

    def total(name: str) -> Counter:
        if name not in memo:
            c: Counter = Counter()
            for cell, n in mods[name]["num_cells_by_type"].items():
                if cell in mods:
                    for k, v in total(cell).items():
                        c[k] += v * n
                else:
                    c[cell] += n
            memo[name] = c
        return memo[name]

    return {name: total(name) for name in mods}


def short(name: str) -> str:
    """Yosys' '$paramod\\spikec_pe_array\\R=...' -> 'spikec_pe_array'."""
    name = name.lstrip("\\")
    if name.startswith("$paramod"):
        name = name.split("\\")[1]
    return name


def no_share_flow(top: str, family: str) -> str:
    """synth_xilinx's own script with its coarse step written out minus `share` (resource
    sharing), which runs out of memory on the float32 functions (rtl/fp32.sv header) and
    only merges operators that never run at once."""
    return (f"synth_xilinx -top {top} -family {family} -run begin:coarse\n"
            "techmap -map +/cmp2lut.v -map +/cmp2lcu.v -D LUT_WIDTH=6\nalumacc\nopt\nmemory -nomap\nopt_clean\n"
            f"synth_xilinx -top {top} -family {family} -run map_memory:\n")


def synthesise(cfg: HwConfig, family: str, workdir: Path, blackbox: tuple[str, ...] = ()) -> tuple[dict, float]:
    params = svgen.params(cfg)
    # The core's sources as the co-simulation builds them, without the testbench; modules
    # in `blackbox` are read for their ports only (`read_verilog -lib`) and not counted.
    srcs = [p for p in rtl_sim.sources() if p.suffix == ".sv" and p.parent.name != "tb"]
    files = [str(p) for p in srcs if p.stem not in blackbox]
    boxed = [str(p) for p in srcs if p.stem in blackbox]
    chparam = " ".join(f"-set {k} {v}" for k, v in params.items())
    script = workdir / f"synth_{cfg.name}.ys"
    stat_json = workdir / f"stat_{cfg.name}.json"
    script.write_text(
        f"read_verilog -sv {' '.join(files)}\n"
        + (f"read_verilog -sv -lib {' '.join(boxed)}\n" if boxed else "")
        + f"chparam {chparam} {TOP}\n"
        + no_share_flow(TOP, family)
        + 
        f"tee -q -o {stat_json} stat -json\n"
    )
    t0 = time.time()
    log = workdir / f"yosys_{cfg.name}.log"
    with open(log, "w") as fh:
        rc = subprocess.run(["yosys", "-q", "-s", str(script)], stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"yosys failed on configuration '{cfg.name}' (rc {rc}); last lines of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-20:]))
    return parse_stat_json(stat_json.read_text()), time.time() - t0


def parse_stat_json(text: str) -> dict:
    """Yosys 0.23's `stat -json` on a hierarchical design prints the hierarchy tree as
    bare lines ("  $paramod...\\spikec_ram   4") inside the JSON: drop those, keep the rest."""
    bare = re.compile(r'^\s+[^\s"{}\[\],]')
    return json.loads("\n".join(ln for ln in text.splitlines() if not bare.match(ln)))


def instances(stat: dict, top_key: str) -> Counter:
    """How many times each module (per parametrisation) is instantiated below the top."""
    mods, count = stat["modules"], Counter({top_key: 1})
    order = [top_key]
    for name in order:  # breadth first; the hierarchy is a DAG
        for cell, n in mods[name]["num_cells_by_type"].items():
            if cell in mods:
                count[cell] += count[name] * n
                if cell not in order:
                    order.append(cell)
    return count


def table(cfg: HwConfig, stat: dict, seconds: float, blackbox: tuple[str, ...] = ()) -> str:
    totals = hierarchical(stat, TOP)
    top_key = next(k for k in totals if short(k) == TOP)
    inst = instances(stat, top_key)
    cols = ["LUT", "FF", "LUTRAM", "BRAM36", "BRAM18", "DSP", "CARRY4"]
    # One row per module name: every instance of every parametrisation, each with what it
    # instantiates (so a bank's RAMs show under spikec_ram and again under spikec_buf).
    by_name: dict[str, Counter] = {}
    n_inst: Counter = Counter()
    for name, cells in totals.items():
        if short(name) in blackbox or not inst[name]:
            continue
        agg = by_name.setdefault(short(name), Counter())
        for k, v in classify(cells).items():
            agg[k] += v * inst[name]
        n_inst[short(name)] += inst[name]
    rows = [f"| `{name}` | {n_inst[name]} | " + " | ".join(f"{c[k]:,}" for k in cols) + " |"
            for name, c in sorted(by_name.items(), key=lambda kv: (kv[0] != TOP, kv[0]))]
    lines = [
        f"#### `{cfg.name}`: PE array {cfg.pe_rows}x{cfg.pe_cols}, {cfg.vec_lanes} vector lanes, "
        f"INP {cfg.inp_kib} / WGT {cfg.wgt_kib} / ACC {cfg.acc_kib} / VEC {cfg.vec_kib} / SCL {cfg.scl_kib} KiB "
        f"(Yosys {seconds:.0f} s)" + (f"; not synthesised, counted as zero: {', '.join(f'`{b}`' for b in blackbox)}" if blackbox else ""),
        "",
        "| module (all instances, with what they instantiate) | instances | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
        *rows,
        "",
    ]
    top = by_name[TOP]
    lines.append(("Core without " + ", ".join(blackbox) if blackbox else "Whole core") + f": {top['LUT']:,} LUTs, {top['FF']:,} flip-flops, {top['BRAM36']} RAMB36 + "
                 f"{top['BRAM18']} RAMB18 block RAMs, {top['LUTRAM']:,} LUT-RAM cells, {top['DSP']} DSP48E1.")
    return "\n".join(lines) + "\n"


# The vector unit's float32 operators, one instance each (rtl/fp32.sv). Synthesised without
# Yosys' `share` pass, which runs out of memory on f32_exp (rtl/fp32.sv header); the rest
# of synth_xilinx's script is unchanged.
OPERATORS = {
    "f32_add": "spikec_fp32::f32_add(a, b)",
    "f32_mul": "spikec_fp32::f32_mul(a, b)",
    "f32_div": "spikec_fp32::f32_div(a, b)",
    "f32_sqrt": "spikec_fp32::f32_sqrt(a)",
    "f32_from_i32": "spikec_fp32::f32_from_i32(a)",
    "f32_rint_clamp": "spikec_fp32::f32_rint_clamp(a, b)",
    "f32_exp": "spikec_fp32::f32_exp(a)",
}


def synthesise_operators(family: str, workdir: Path) -> tuple[dict, float]:
    wrappers = "".join(
        f"module op_{name} (input logic [31:0] a, input logic [31:0] b, output logic [31:0] y);\n"
        f"  assign y = {call};\nendmodule\n" for name, call in OPERATORS.items())
    wrappers += ("module fp32_operators (input logic [31:0] a, input logic [31:0] b, output logic [31:0] y);\n"
                 + "".join(f"  logic [31:0] y_{n};\n  op_{n} u_{n} (.a(a), .b(b), .y(y_{n}));\n" for n in OPERATORS)
                 + "  assign y = " + " ^ ".join(f"y_{n}" for n in OPERATORS) + ";\nendmodule\n")
    (workdir / "fp32_operators.sv").write_text(wrappers)
    stat_json = workdir / "stat_fp32_operators.json"
    script = workdir / "synth_fp32_operators.ys"
    script.write_text(
        f"read_verilog -sv {rtl_sim.rtl_dir() / 'fp32.sv'} {workdir / 'fp32_operators.sv'}\n"
        + no_share_flow("fp32_operators", family)
        + f"tee -q -o {stat_json} stat -json\n")
    t0 = time.time()
    log = workdir / "yosys_fp32_operators.log"
    with open(log, "w") as fh:
        rc = subprocess.run(["yosys", "-q", "-s", str(script)], stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"yosys failed on the float32 operators (rc {rc}); see {log}")
    return parse_stat_json(stat_json.read_text()), time.time() - t0


def operator_table(stat: dict, seconds: float) -> str:
    totals = hierarchical(stat, "fp32_operators")
    cols = ["LUT", "FF", "DSP", "CARRY4", "MUXF"]
    lines = [f"#### The vector unit's float32 operators, one instance each (Yosys {seconds:.0f} s, without `share`)", "",
             "| operator | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name in OPERATORS:
        key = next(k for k in totals if short(k) == f"op_{name}")
        c = classify(totals[key])
        lines.append(f"| `{name}` | " + " | ".join(f"{c[k]:,}" for k in cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=["small", "default"], help="hardware configurations (name or .json)")
    ap.add_argument("--family", default="xc7", help="synth_xilinx -family (default xc7: 7-series)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "synthesis.md", help="markdown file to update")
    ap.add_argument("--blackbox", nargs="*", default=["spikec_vecu"],
                    help="modules read for their ports only and left out of the counts (default: the vector unit, "
                         "whose combinational float32 functions Yosys 0.23 does not finish; docs/synthesis.md)")
    ap.add_argument("--no-operators", dest="operators", action="store_false",
                    help="skip the table of the vector unit's float32 operators synthesised one by one")
    ap.add_argument("--keep", type=Path, help="keep Yosys scripts, logs and stat JSON in this folder")
    args = ap.parse_args()
    if shutil.which("yosys") is None:
        sys.exit("yosys not found: run `make rtl-tools` (Debian's yosys 0.23)")
    version = subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="spikec-synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    parts = [f"{version}, `synth_xilinx -family {args.family}` without `share` (no flattening), top `{TOP}`; "
             f"regenerate with `.venv/bin/python scripts/synth_report.py --config {' '.join(args.config)}"
             + (f" --blackbox {' '.join(args.blackbox)}" if args.blackbox else " --blackbox") + "`.", ""]
    for name in args.config:
        cfg = HwConfig.load(name)
        print(f"synthesising '{cfg.name}' ...", flush=True)
        stat, secs = synthesise(cfg, args.family, workdir, tuple(args.blackbox))
        parts.append(table(cfg, stat, secs, tuple(args.blackbox)))
        print(parts[-1], flush=True)
    if args.operators:
        print("synthesising the float32 operators ...", flush=True)
        parts.append(operator_table(*synthesise_operators(args.family, workdir)))
        print(parts[-1], flush=True)
    body = BEGIN + "\n" + "\n".join(parts) + END
    text = args.out.read_text() if args.out.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + body + text[text.index(END) + len(END):]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + body + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
