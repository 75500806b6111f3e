"""Accelerator (fpga target) benchmark: simulator speed and the modeled comparison with a GPU.

Prints figures, not pass/fail. Three parts:

1. Functional-simulator speed: synthetic SpikeEncode -> SpikeMatMul kernels (int8 weights,
   dynamic per-token scales, 64 tokens: 32 text at T=4 and 32 vision at T=3) run through
   `fpga_target.KernelRunner` on the simulator; wall clock of each call (program build,
   DRAM copies and the simulator run), SOPs counted by the simulator (nonzero spikes x the
   weights they meet). Also checks that the cost-only timeline of part 3 reproduces the
   simulator's cycles and energy for the same program.
2. The bundled model `models/digits-llava`, exported, compiled with `--isa` (Tv/Tt = 3/4)
   and run for one prefill (vision encoder + projector + language model, one test image
   and question of `spikec.datasets.digits`) on the fpga target: `fpga_target.report`
   (the spiking products and the vector kernels -- norms, softmax, SiLU, rotary, residual
   adds -- on both sides).
3. A Qwen2-VL-2B-like language model, analytically: the per-call programs the lowering
   would build (`programs.build_program` on descriptors of the right shapes), costed
   instruction by instruction with `isa.costmodel` along the same load/compute/store
   timeline the simulator uses, the SPMM spike counts taken from densities measured on the
   bundled model's language model (linear layers only: no vector ops on either side). No
   2B weights exist and no functional simulation runs.

Parts 2 and 3 run on the built-in `default` configuration and on a hypothetical larger one
built here (64x64 PE array at 1 GHz). Everything labelled "modeled" is the cost model's
estimate (docs/isa.md sections 7 and 9), not a measurement of hardware.

    python benchmarks/fpga_benchmark.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from spikec.isa import programs, tiling
from spikec.isa.decode import timeline as decode_timeline
from spikec.isa.descriptors import ProductKernel
from spikec.isa.encoding import decode_program
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.passes import lower_isa
from spikec.isa import costmodel
from spikec.runtime.fpga_target import GPU_A100, KernelRunner, report
from spikec.runtime.simulator import Simulator
from spikec.testing.spmm_log import recorded_spmms

ROOT = Path(__file__).resolve().parents[1]
T_BY_MOD = [4, 3]  # modality 0 = text (Tt = 4), 1 = vision (Tv = 3)
MODS = ["text", "vision"]

# A hypothetical larger configuration (not a built-in one): 64x64 PE array at 1 GHz, buffers
# at the largest sizes the ISA's address fields reach (INP/ACC/VEC 2**18 elements, WGT 2**20
# bytes), 4 GiB of DRAM at an HBM2-class 460 GB/s (an Alveo U280-class FPGA card).
LARGE = dict(name="hypothetical-64x64-1GHz", clock_mhz=1000, pe_rows=64, pe_cols=64, vec_lanes=64,
             inp_kib=512, wgt_kib=1024, acc_kib=1024, vec_kib=1024, scl_kib=64, dram_mib=4096,
             dram_gbps=460.0, dram_latency_cycles=128, spmm_setup_cycles=8, vec_setup_cycles=8,
             cmd_queue_depth=256, token_queue_depth=16)

# Qwen2-VL-2B's language model (Qwen2-1.5B-shaped): linear layers per decoder layer.
QWEN = dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, head_dim=128, vocab=151936)


def qwen_linears(q=QWEN) -> list[tuple[str, int, int, bool]]:
    h, i, kv = q["hidden"], q["intermediate"], q["kv_heads"] * q["head_dim"]
    return [("q_proj", h, h, True), ("k_proj", h, kv, True), ("v_proj", h, kv, True), ("o_proj", h, h, False),
            ("gate_proj", h, i, False), ("up_proj", h, i, False), ("down_proj", i, h, False)]


# ---------------------------------------------------------------- kernels as the lowering builds them


def make_kernel(cfg: HwConfig, index: int, K: int, M: int, wbits: int = 8, bias: bool = False, base: int = 0,
                rng: np.random.Generator | None = None) -> tuple[ProductKernel, bytes | int]:
    """A kernel descriptor laid out as lower_isa.lower_graphs lays it out (weights per M-tile,
    padded to 64 bytes, then [s_w | bias]). With `rng`, random weights and the image bytes;
    without, only the offsets (and the image length)."""
    mt, n_max, kt = tiling.plan_tiles(cfg, K, M, wbits)
    w = s_w = b = None
    if rng is not None:
        w = rng.integers(-lower_isa.R.qmax(wbits), lower_isa.R.qmax(wbits) + 1, size=(K, M))
        s_w = (rng.random(M) * 0.01 + 0.001).astype(np.float32)
        b = rng.standard_normal(M).astype(np.float32) if bias else np.zeros(M, np.float32)
    tiles, image, off = tiling.kernel_tiles(K, M, mt, kt, wbits, base, w, s_w, b)
    desc = ProductKernel(index=index, graph="lm", node=f"linear_{index}", encoder=f"encode_{index}", layer=None, K=K,
                         M=M, wbits=wbits, neuron="tc-lif", timesteps=tuple(T_BY_MOD), modalities=tuple(MODS),
                         modality_id=-1, act_scale="dynamic", has_bias=bias, m_tile=mt, n_max=n_max, k_tile=kt,
                         tiles=tuple(tiles), weights_offset=base, weights_bytes=off - base)
    return desc, (image if image is not None else off)


# ---------------------------------------------------------------- cost-only timeline


def timeline(prog, cfg: HwConfig, spmm_counts) -> tuple[int, dict[str, float], dict[str, int]]:
    """The simulator's timing without its functional work (`isa.decode.timeline`, the one
    definition); `spmm_counts(i, ins)` gives (vectors, spikes) of the i-th SPMM. Returns
    (cycles, energy pJ by component, totals)."""
    t = decode_timeline(prog, cfg, 0.0, spmm_counts=spmm_counts)
    return t.cycles, t.energy_pj, {"sops": t.sops, "dram_bytes": t.dram_read + t.dram_write,
                                   "instructions": t.instructions}


def record_spmm(sink: list, tag=lambda: None):
    """Record (tag, t, n, k, m, vectors, spikes, dense vectors) of every SPMM the simulator costs."""
    return recorded_spmms(lambda cfg, ins, vectors, spikes: sink.append(
        (tag(), ins.t, ins.n, ins.k, ins.m, vectors, spikes, costmodel.spmm_dense_vectors(cfg, ins))))


def gpu_call(n: int, K: int, M: int, gpu=GPU_A100) -> float:
    """fpga_target's roofline for one product of n tokens (seconds)."""
    return max(2.0 * n * K * M / gpu.peak_flops, 2 * (K * M + n * K + n * M) / gpu.bandwidth)


# ---------------------------------------------------------------- part 1


def part1(repeat: int) -> None:
    cfg = HwConfig.load("default")
    print(f"\n== 1. Functional simulator speed (hwconfig '{cfg.name}', int8 weights, dynamic scales, "
          f"64 tokens: 32 text T=4 + 32 vision T=3, Gaussian activations; wall clock of whole kernel calls "
          f"(program build, DRAM copies, simulator run), median of {repeat}; SOPs = nonzero spikes x weights met) ==")
    print(f"{'K=M':>6} {'calls':>5} {'instr':>6} {'wall ms':>9} {'SOPs':>12} {'spike dens':>10} {'SOPs/s':>10} "
          f"{'dense MAC/s':>11} {'dev cycles':>10}")
    rng = np.random.default_rng(0)
    for km in (128, 512, 1024):
        desc, image = make_kernel(cfg, 0, km, km, rng=rng)
        sim = Simulator(cfg)
        loaded = []
        orig_load = sim.load_program
        sim.load_program = lambda b: (loaded.append(b), orig_load(b))[1]
        runner = KernelRunner(sim, image, [desc])
        x = rng.standard_normal((64, km)).astype(np.float32)
        mods = np.repeat([0, 1], 32)
        runner(0, x, mods)  # warm-up
        times = []
        for _ in range(repeat):
            runner.reset()
            t0 = time.perf_counter()
            runner(0, x, mods)
            times.append(time.perf_counter() - t0)
        wall = float(np.median(times))
        d = runner.stats.device
        # spikes / (tokens * K * T); from SOPs, because the device's `spikes` counter counts
        # the same spikes again in every M-tile's SPMM (SOPs = spikes x m per SPMM do add up)
        dens = d.sops / km / runner.stats.possible_spikes
        print(f"{km:>6} {1:>5} {d.instructions:>6} {wall * 1e3:>9.1f} {d.sops:>12,} {dens:>10.4f} "
              f"{d.sops / wall:>10.3g} {runner.stats.float_macs / wall:>11.3g} {d.cycles:>10,}")
        if km == 512:  # the cost-only timeline against the simulator, same program and spike counts
            rec: list = []
            sim2 = Simulator(cfg)
            sim2.write(0, image)
            sim2.write(runner.io_base, np.ascontiguousarray(x[np.argsort(mods, kind='stable')], "<f4").tobytes())
            sim2.load_program(loaded[-1])
            with record_spmm(rec):
                ref = sim2.run()
            prog = decode_program(loaded[-1])
            cyc, en, _ = timeline(prog, cfg, lambda i, ins: (rec[i][5], rec[i][6]))
            ok = cyc == ref.cycles and abs(sum(en.values()) - ref.energy_total_pj) <= 1e-6 * ref.energy_total_pj
            print(f"   timeline check (K=M=512): cost-only timeline {cyc:,} cycles, {sum(en.values()) * 1e-6:.3f} uJ; "
                  f"simulator {ref.cycles:,} cycles, {ref.energy_total_pj * 1e-6:.3f} uJ -> "
                  f"{'identical' if ok else 'MISMATCH'}")


# ---------------------------------------------------------------- part 2


def export_digits(tmp: Path) -> Path:
    from spikec.frontend.export import export_quietly

    return export_quietly(str(ROOT / "models" / "digits-llava"), tmp / "export")


def run_digits(export_dir: Path, tmp: Path, cfg_name_or_path: str, item, image) -> tuple[dict, list]:
    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.model import load

    sbin = tmp / f"digits-{Path(cfg_name_or_path).stem}.sbin"
    compile_path(export_dir, sbin, options=SpikeOptions(tv=3, tt=4).validate(), isa=True, hwconfig=cfg_name_or_path)
    rec: list = []
    with load(sbin, target="fpga") as model:
        runner = model.runner
        graph = {"g": None}
        orig = runner.__class__.__call__

        def call(index, x, mods, where=""):
            graph["g"] = runner.kernels[index].graph
            return orig(runner, index, x, mods, where)

        # DeviceLinear calls `runner(...)`, which looks __call__ up on the class: tag each call's graph
        runner.__class__ = type("TaggingRunner", (runner.__class__,), {"__call__": lambda self, *a, **k: call(*a, **k)})
        gen = model.generator()
        t0 = time.perf_counter()
        with record_spmm(rec, lambda: graph["g"]):
            ids = gen.generate_ids(gen.prepare([image], [item.prompt]), max_new_tokens=1)  # prefill only
        wall = time.perf_counter() - t0
        r = report(runner)
        r["wall_s"] = wall
        r["next_token"] = int(ids[0, 0])
        r["lm_kernels"] = sum(1 for k in runner.kernels if k.graph == "lm")
        r["all_kernels"] = len(runner.kernels)
        r["vec_kernels"] = len(runner.vec_kernels)
    return r, rec


def densities(rec: list, graph: str = "lm") -> dict[int, tuple[float, float]]:
    """Per t: (spike density = spikes / (n*k*t), vector density = vectors / dense vectors)."""
    out = {}
    for t in sorted({r[1] for r in rec if r[0] == graph}):
        rows = [r for r in rec if r[0] == graph and r[1] == t]
        out[t] = (sum(r[6] for r in rows) / sum(r[2] * r[3] * t for r in rows), sum(r[5] for r in rows) / sum(r[7] for r in rows))
    return out


def print_report(r: dict) -> None:
    g = r["gpu"]
    parts = ", ".join(f"{k} {v * 1e-6:.1f}" for k, v in r["energy_pj_by_component"].items())
    print(f"  {r['calls']} kernel calls ({r['all_kernels']} kernels, {r['lm_kernels']} in the LM), {r['tokens']:,} token-rows, "
          f"effective T {r['effective_timesteps']:.3f}; {r['vec_calls']} vector-kernel calls ({r['vec_kernels']} kernels), "
          f"{r['vec_elements']:,} elements; simulator wall clock {r['wall_s']:.2f} s (whole prefill incl. host ops)")
    print(f"  spike density {r['spike_density']:.4f}, vector density {r['vector_density']:.4f}, SOPs {r['sops']:,}, "
          f"float MACs {r['float_macs']:,}")
    print(f"  modeled accelerator: {r['cycles']:,} cycles = {r['latency_s'] * 1e3:.4f} ms ({r['vec_cycles']:,} cycles in "
          f"vector kernels), energy {r['energy_j'] * 1e6:.1f} uJ ({parts} uJ), DRAM traffic {r['dram_bytes']:,} B")
    print(f"  modeled GPU (roofline): {g['seconds'] * 1e6:.3f} us ({g['vec_seconds'] * 1e6:.3f} us vector ops), "
          f"{g['energy_j'] * 1e6:.1f} uJ")
    print(f"  modeled throughput ratio (GPU time / accelerator time): {r['throughput_ratio']:.4g}   "
          f"modeled power-efficiency ratio (GPU energy / accelerator energy): {r['efficiency_ratio']:.4g}")


# ---------------------------------------------------------------- part 3


def model_2b(cfg: HwConfig, dens: dict[int, tuple[float, float]], wbits: int, n_text: int, n_vision: int) -> dict:
    """One decoder layer's linears costed analytically, times the layer count."""
    per_call = []
    for i, (name, K, M, bias) in enumerate(qwen_linears()):
        try:
            tiling.plan_tiles(cfg, K, M, wbits)
        except tiling.TilingError as exc:
            per_call.append((name, K, M, None, str(exc)))
            continue
        desc, _ = make_kernel(cfg, i, K, M, wbits=wbits, bias=bias)
        n = n_text + n_vision
        x_addr = 1 << 30
        y_addr = x_addr + 4 * n * K
        groups = [programs.Group(desc, 0, 0, n_text, x_addr, y_addr),
                  programs.Group(desc, 1, n_text, n_vision, x_addr, y_addr)]
        prog = programs.build_program(groups, cfg)

        def counts(_i, ins):
            sd, vd = dens[ins.t]
            return round(vd * costmodel.spmm_dense_vectors(cfg, ins)), round(sd * ins.n * ins.k * ins.t)

        cyc, en, tot = timeline(prog, cfg, counts)
        per_call.append((name, K, M, dict(cycles=cyc, energy=en, tot=tot, gpu_s=gpu_call(n, K, M), macs=n * K * M,
                                          steps=sum(1 for ins in prog if ins.op == Opcode.VEC),
                                          spmms=sum(1 for ins in prog if ins.op == Opcode.SPMM), n_max=desc.n_max,
                                          m_tile=desc.m_tile, k_tile=desc.k_tile if desc.k_tile < K else None), None))
    L = QWEN["layers"]
    ok = [c for c in per_call if c[3] is not None]
    cyc = L * sum(c[3]["cycles"] for c in ok)
    en = {k: L * sum(c[3]["energy"][k] for c in ok) for k in ("dram", "sram", "pe", "vec")}
    gpu_s = L * sum(c[3]["gpu_s"] for c in ok)
    return dict(per_call=per_call, cycles=cyc, secs=cyc / (cfg.clock_mhz * 1e6), energy_j=sum(en.values()) * 1e-12,
                energy=en, gpu_s=gpu_s, gpu_j=gpu_s * GPU_A100.power_w, macs=L * sum(c[3]["macs"] for c in ok),
                sops=L * sum(c[3]["tot"]["sops"] for c in ok), dram=L * sum(c[3]["tot"]["dram_bytes"] for c in ok),
                instr=sum(c[3]["tot"]["instructions"] for c in ok))


def print_2b(cfg: HwConfig, r: dict, wbits: int, wall: float) -> None:
    skipped = [f"{c[0]} ({c[4]})" for c in r["per_call"] if c[3] is None]
    print(f"  wbits={wbits}: per layer " + ", ".join(
        f"{c[0]} {c[3]['cycles']:,} cyc (m_tile {c[3]['m_tile']}, "
        + (f"k_tile {c[3]['k_tile']}, " if c[3]['k_tile'] else "") + f"n_max {c[3]['n_max']}, {c[3]['steps']} steps"
        + (f", {c[3]['spmms']} SPMMs" if c[3]['k_tile'] else "") + ")"
        for c in r["per_call"] if c[3] is not None))
    if skipped:
        print(f"    NOT lowerable, excluded on both sides: {'; '.join(skipped)}")
    parts = ", ".join(f"{k} {v * 1e-12:.3f}" for k, v in r["energy"].items())
    print(f"    modeled accelerator: {r['cycles']:,} cycles = {r['secs'] * 1e3:.2f} ms, energy {r['energy_j']:.3f} J "
          f"({parts} J), DRAM traffic {r['dram'] / 1e9:.2f} GB, {r['macs'] / 1e9:.1f} G float MACs, "
          f"{r['sops'] / 1e9:.1f} G SOPs, {2 * r['macs'] / r['secs'] / 1e12:.3f} dense-equivalent TOP/s")
    print(f"    modeled GPU (roofline): {r['gpu_s'] * 1e3:.3f} ms, {r['gpu_j']:.3f} J")
    print(f"    modeled throughput ratio (GPU time / accelerator time): {r['gpu_s'] / r['secs']:.4g}   "
          f"modeled power-efficiency ratio (GPU energy / accelerator energy): {r['gpu_j'] / r['energy_j']:.4g}   "
          f"[{r['instr']:,} instructions per layer costed in {wall:.1f} s]")


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t_start = time.perf_counter()
    default, large = HwConfig.load("default"), HwConfig.from_dict(LARGE, "benchmark")
    gpu = GPU_A100
    print("fpga benchmark -- assumptions")
    for c in (default, large):
        print(f"  hwconfig '{c.name}': {c.clock_mhz:g} MHz, PE array {c.pe_rows}x{c.pe_cols}, {c.vec_lanes} vector lanes, "
              f"WGT {c.wgt_kib} KiB, INP {c.inp_kib} KiB, VEC {c.vec_kib} KiB, DRAM {c.dram_mib} MiB at {c.dram_gbps:g} GB/s"
              f"{' (built-in)' if c is default else ' (hypothetical, built in this script)'}")
    print(f"  energy constants: {costmodel.ENERGY.source}: int32 add {costmodel.ENERGY.int32_add} pJ, fp32 add "
          f"{costmodel.ENERGY.fp32_add} / mult {costmodel.ENERGY.fp32_mult} pJ, SRAM {'/'.join(f'{p:g}' for _, p in costmodel.ENERGY.sram64)} "
          f"pJ per 64 bit, DRAM {costmodel.ENERGY.dram64:g} pJ per 64 bit (same constants for both configurations)")
    print(f"  GPU baseline: {gpu.name}: peak FP16 {gpu.peak_flops / 1e12:g} TFLOP/s, bandwidth {gpu.bandwidth / 1e12:g} TB/s, "
          f"power {gpu.power_w:g} W; per product time = max(2*MACs/peak, 2*(K*M + n*K + n*M) bytes/bandwidth), per vector "
          f"op time = FP16 bytes read and written / bandwidth, energy = power x time")
    print("  both sides count what the device runs: in part 2 the spiking products and the vector kernels (norms, "
          "softmax, SiLU, rotary, residual adds), in part 3 the linear layers only; host ops (attention products, "
          "erf GELU, masks, shape ops) are on neither side")

    part1(args.repeat)

    from spikec.datasets.digits import load_digit_images, make_items, render_image

    item = make_items("test")[0]
    pixels, _ = load_digit_images()
    image = render_image(pixels[item.index]).convert("RGB")
    dens_by_cfg = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        t0 = time.perf_counter()
        exp = export_digits(tmp)
        print(f"\n== 2. models/digits-llava, one prefill on the fpga target (Tv/Tt = 3/4, int8 weights, dynamic scales; "
              f"test image {item.index} (digit {item.label}), question {item.prompt!r}; export took "
              f"{time.perf_counter() - t0:.1f} s) ==")
        large_json = tmp / "large.json"
        large_json.write_text(json.dumps(LARGE))
        for c, where in ((default, "default"), (large, str(large_json))):
            r, rec = run_digits(exp, tmp, where, item, image)
            print(f" hwconfig '{c.name}' (next token id {r['next_token']}):")
            print_report(r)
            dens_by_cfg[c.name] = densities(rec, "lm")
            print("  measured on the language model's kernels, per T: " + ", ".join(
                f"T={t}: spike density {sd:.4f}, vector density {vd:.4f}" for t, (sd, vd) in dens_by_cfg[c.name].items()))

    n_text, n_vision = 64, 256
    print(f"\n== 3. Qwen2-VL-2B-like language model, modeled analytically (hidden {QWEN['hidden']}, intermediate "
          f"{QWEN['intermediate']}, {QWEN['layers']} layers, {QWEN['heads']} heads / {QWEN['kv_heads']} KV heads of "
          f"{QWEN['head_dim']}; linears q/k/v (bias), o, gate, up, down; LM head (vocab {QWEN['vocab']}) NOT included) ==")
    print(f"  prefill of {n_vision} vision (T=3) + {n_text} text (T=4) tokens, one call per linear per layer "
          f"(as the fpga target makes), spike and vector densities per T = those measured above on digits-llava's LM "
          f"for the same configuration; one layer costed, times {QWEN['layers']}")
    for c in (default, large):
        print(f" hwconfig '{c.name}':")
        for wbits in (8, 4):
            t0 = time.perf_counter()
            r = model_2b(c, dens_by_cfg[c.name], wbits, n_text, n_vision)
            print_2b(c, r, wbits, time.perf_counter() - t0)
    print(f"\ntotal benchmark wall clock {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
