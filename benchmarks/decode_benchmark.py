"""Deployment-scale decode benchmark: the whole batch-1 decode step of Qwen2-VL-shaped
language models on the `deploy` configuration, modeled (docs/isa.md section 11).

For Qwen2-VL-7B- and 2B-shaped LMs at W4 and Tt = 4, the decode step's program
(`isa/decode.py`: every layer and the LM head as one instruction stream) is costed along the
simulator's load/compute/store timeline with isa/costmodel.py and the configuration's
energy constants. Printed: decode tokens/s, energy per token (J), average power split into
HBM, SRAM, PE array and vector unit, next to (a) the SpikeMLLM paper's A800 figures, (b) an
FP16 roofline of the same GPU, (c) the accelerator's own bound (weight bytes per token /
bandwidth); the targets of issue 18 (met or not); context-length and assumption
sensitivities; prefill figures: the prompt's program on the device (`build_prefill`,
costed the same way) and the PE array's compute bound. Everything is modeled; nothing
here measures hardware. About a minute on two CPU cores.

    python benchmarks/decode_benchmark.py [--L 1024] [--prompt 32] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from spikec.isa.decode import QWEN2VL_2B, QWEN2VL_7B, HostModel, LMShape, cost_decode, cost_prefill, prefill_chunk
from spikec.isa.fields import Buffer
from spikec.isa.hwconfig import EnergyConstants, HwConfig

# Spike density of the language model's text tokens at T = 4, W4, measured on the bundled
# model (SOPs / (tokens * K * M * T) over the LM's products for the text tokens) with:
#   spikec export models/digits-llava -o export
#   spikec compile export -o model-w4.sbin --calib calib --wbits 4
#   spikec run model-w4.sbin --image testset/images/00005.png --prompt "what digit is this?" \
#       --max-new-tokens 8 --stats
# (calib/ and testset/ as in docs/tutorial.md section 0). Overall spike rate of that run:
# 0.1878 (vision and text); LM text tokens, weighted by SOPs: 0.2294.
SPIKE_DENSITY = 0.2294
# Fraction of spike vectors (pe_rows spikes of one token, plane, k-chunk) that are not all
# zero: 1.0 (no skipping) -- with 256-row vectors at a density of 0.23 an all-zero vector is
# rare; the bundled model measured 0.82 at 16 rows and 0.96 at 64 (benchmarks/fpga_benchmark.py).
VECTOR_DENSITY = 1.0

# The SpikeMLLM paper's GPU baseline: A800, FP16, batch 1 (tokens/s, W, J/token).
PAPER_GPU = dict(name="A800 FP16 batch 1 (SpikeMLLM paper)", tok_s=43.5, watts=184.0)
PAPER_ACC = dict(name="SpikeMLLM accelerator (paper)", tok_s=393.7, watts=7.13)
GPU_BW, GPU_FLOPS = 2.039e12, 312e12  # A800/A100 80GB SXM: HBM2e bytes/s, dense FP16 tensor FLOP/s
TARGET_BOUND, TARGET_ROOF, TARGET_TPJ = 0.85, 3.0, 25.8
T_TEXT = 4


def fp16_roofline(shape: LMShape) -> float:
    """Tokens/s of the GPU's FP16 roofline for one decode step: max(weight bytes / bandwidth,
    2 * weights / peak FLOP/s) (KV cache and activations left out, which favours the GPU)."""
    w = shape.weights()
    return 1.0 / max(2 * w / GPU_BW, 2 * w / GPU_FLOPS)


def argmax_seconds_per_elem() -> float:
    """numpy argmax over float32, measured here (median of 20, 152k elements)."""
    x = np.random.default_rng(0).standard_normal(152064).astype(np.float32)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        int(np.argmax(x))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) / x.size


def variant(cfg: HwConfig, **changes) -> HwConfig:
    d = cfg.to_dict()
    energy = changes.pop("energy", None)
    d.update(changes)
    if energy is not None:
        d["energy"] = energy.to_dict()
    d["name"] = cfg.name + "-" + "-".join(f"{k}" for k in list(changes) + (["energy"] if energy else []))
    return HwConfig.from_dict(d, "benchmark variant")


def row(shape: LMShape, cfg: HwConfig, L: int, host: HostModel) -> dict:
    c = cost_decode(shape, cfg, L, SPIKE_DENSITY, VECTOR_DENSITY)
    dev_s = c.seconds
    host_s = sum(host.ops(shape).values())
    e = c.energy_j
    ej = sum(e.values())
    bound_s = shape.weight_bytes(4) / (cfg.dram_gbps * 1e9)
    return dict(c=c, dev_s=dev_s, host_s=host_s, tok_s=1 / dev_s, tok_s_host=1 / (dev_s + host_s), e=e, ej=ej,
                bound_tok_s=1 / bound_s, frac=bound_s / dev_s, roof=fp16_roofline(shape))


def print_decode(shape: LMShape, cfg: HwConfig, L: int, host: HostModel) -> dict:
    r = row(shape, cfg, L, host)
    c, t = r["c"], r["c"].timing
    gpu_tpj = PAPER_GPU["tok_s"] / PAPER_GPU["watts"]
    print(f"\n== {shape.name}-shaped LM (hidden {shape.hidden}, intermediate {shape.intermediate}, {shape.layers} layers, "
          f"{shape.heads} heads / {shape.kv_heads} KV heads of {shape.head_dim}, vocab {shape.vocab}), W4, Tt={T_TEXT}, "
          f"batch 1, context L={L} ==")
    print(f"  weights streamed per token: {shape.weights() / 1e9:.3f} G = {shape.weight_bytes(4) / 1e9:.4f} GB "
          f"(program LOADs {c.prog.weight_load_bytes:,} B of weights, {c.prog.fifo_load_bytes / c.prog.weight_load_bytes:.0%} "
          f"of them through the weight FIFO; {c.prog.kv_load_bytes / 1e6:.2f} MB of KV cache); "
          f"{t.instructions:,} instructions; DRAM read {t.dram_read / 1e9:.4f} GB, written {t.dram_write / 1e6:.3f} MB")
    print(f"  modeled device: {t.cycles:,} cycles at {cfg.clock_mhz:g} MHz = {r['dev_s'] * 1e3:.4f} ms/token -> "
          f"{r['tok_s']:.1f} tokens/s (load module busy {t.busy['load']:,}, compute {t.busy['compute']:,} of which "
          f"SPMM {t.spmm_cycles:,} and vector unit {t.vec_cycles:,})")
    ops = host.ops(shape)
    print(f"  host ops per token (serial with the device): " + ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in ops.items())
          + f"; total {r['host_s'] * 1e6:.1f} us -> end to end {r['tok_s_host']:.1f} tokens/s")
    pw = {k: v * r["tok_s"] for k, v in r["e"].items()}
    names = {"dram": "HBM", "sram": "SRAM", "pe": "PE array", "vec": "vector unit"}
    print(f"  energy per token {r['ej']:.4f} J (" + ", ".join(f"{names[k]} {v:.4f}" for k, v in r["e"].items())
          + f" J); average power {sum(pw.values()):.1f} W (" + ", ".join(f"{names[k]} {v:.2f}" for k, v in pw.items())
          + " W); tokens per joule " + f"{1 / r['ej']:.2f}")
    print(f"  (a) paper's GPU: {PAPER_GPU['name']}: {PAPER_GPU['tok_s']} tokens/s, {PAPER_GPU['watts']:g} W, "
          f"{PAPER_GPU['watts'] / PAPER_GPU['tok_s']:.2f} J/token -> modeled device / GPU: throughput "
          f"{r['tok_s'] / PAPER_GPU['tok_s']:.2f}x, tokens per joule {(1 / r['ej']) / gpu_tpj:.1f}x")
    print(f"  (b) FP16 roofline of the same GPU (2.04 TB/s, 312 TFLOP/s): {r['roof']:.1f} tokens/s -> modeled device "
          f"{r['tok_s'] / r['roof']:.2f}x")
    print(f"  (c) accelerator's own bound (weight bytes / {cfg.dram_gbps:g} GB/s): {r['bound_tok_s']:.1f} tokens/s -> "
          f"modeled device at {100 * r['frac']:.1f} % of it")
    print(f"  (paper's accelerator: {PAPER_ACC['tok_s']} tokens/s at {PAPER_ACC['watts']} W = "
          f"{PAPER_ACC['watts'] / PAPER_ACC['tok_s'] * 1e3:.1f} mJ/token; this step's HBM traffic alone (W4 weights, KV "
          f"cache, constants and tables, read and written) costs {r['e']['dram'] * 1e3:.1f} mJ/token here)")
    return r


def print_prefill(cfg: HwConfig, prompt: int, kv_max: int) -> None:
    """The prompt's program on the device (isa/decode.build_prefill: chunks of token rows
    through every layer, each weight streamed once per chunk), next to the PE array's
    compute bound and the GPU's FP16 roofline for the same prompt."""
    print(f"\n== prefill of a {prompt}-token prompt on the device (build_prefill; KV cache of {kv_max} rows) ==")
    for shape in (QWEN2VL_7B, QWEN2VL_2B):
        c = cost_prefill(shape, cfg, prompt, SPIKE_DENSITY, VECTOR_DENSITY, kv_max=kv_max)
        t, e = c.timing, c.energy_j
        tok_s = prompt / c.seconds
        bound = cfg.clock_mhz * 1e6 * cfg.pe_rows * cfg.pe_cols / (shape.weights() * T_TEXT * VECTOR_DENSITY)
        w = shape.weights()
        gpu = prompt / max(2 * w / GPU_BW, 2 * w * prompt / GPU_FLOPS)
        most = prefill_chunk(shape, cfg, kv_max)
        print(f"  {shape.name}: chunks of {c.prog.chunk} token rows (the buffers hold {most}); "
              f"{t.instructions:,} instructions, {t.cycles:,} cycles = {c.seconds * 1e3:.2f} ms -> {tok_s:,.0f} tokens/s "
              f"(load module busy {t.busy['load']:,}, compute {t.busy['compute']:,} of which SPMM {t.spmm_cycles:,} and "
              f"vector unit {t.vec_cycles:,}); {sum(e.values()) / prompt * 1e3:.2f} mJ/token")
        print(f"    PE-array bound (weights x T / {cfg.pe_rows * cfg.pe_cols} PEs, every spike vector processed): "
              f"{bound:,.0f} tokens/s -> device at {100 * tok_s / bound:.1f} % of it; GPU FP16 roofline for the same "
              f"prompt (max of weight bytes / bandwidth and FLOPs / peak): {gpu:,.0f} tokens/s -> device "
              f"{tok_s / gpu:.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=1024,
                    help="context length of the decode step (KV rows incl. the new token); also the KV-cache rows the "
                         "prefill is sized for (default 1024)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens of the modeled prefill, at most --L (default 32)")
    ap.add_argument("--quick", action="store_true", help="skip the sensitivity runs")
    args = ap.parse_args()
    if not 2 <= args.L <= 16383:
        ap.error(f"--L {args.L}: a decode step's context length lies in 2..16383")
    if not 1 <= args.prompt <= args.L:
        ap.error(f"--prompt {args.prompt}: the prompt must have 1..{args.L} (--L) tokens")
    t_start = time.perf_counter()
    cfg = HwConfig.load("deploy")
    e = cfg.energy_constants
    host = HostModel(argmax_s_per_elem=argmax_seconds_per_elem())
    print("decode benchmark -- assumptions (everything below is modeled)")
    print(f"  hwconfig '{cfg.name}' (isa/configs/deploy.json): {cfg.clock_mhz:g} MHz (28 nm ASIC clock of TPUv1, ISCA 2017; "
          f"the RTL reaches 27.7 MHz on ECP5 for 'small', docs/synthesis.md), PE array {cfg.pe_rows}x{cfg.pe_cols} loading "
          f"{cfg.pe_load_lines} rows/cycle, {cfg.vec_lanes} vector lanes, WGT {cfg.wgt_kib} KiB, weight FIFO {cfg.wfifo_kib} KiB, "
          f"INP {cfg.inp_kib} KiB, "
          f"ACC {cfg.acc_kib} KiB, VEC {cfg.vec_kib} KiB, SCL {cfg.scl_kib} KiB, HBM {cfg.dram_gbps:g} GB/s "
          f"({cfg.dram_bytes_per_cycle:.1f} B/cycle), {cfg.dram_latency_cycles} cycles per DMA instruction")
    classes = " / ".join(f"{p:g}" for _, p in e.sram64) + " pJ per 64 bit (<= " + " / ".join(
        f"{b // 1024} KB" for b, _ in e.sram64) + ")"
    sizes = {b.name: cfg.buffer_bytes(b) for b in Buffer} | {"weight FIFO": cfg.wfifo_bytes}
    charged = ", ".join(f"{n} {e.sram_pj_per_byte(v):.2f}" for n, v in sizes.items())
    print(f"  energy: {e.source}: int32 add {e.int32_add} pJ, fp32 add {e.fp32_add} / mult {e.fp32_mult} pJ, SRAM "
          f"{classes}, a buffer charged the smallest class that holds it (pJ/byte: {charged}), HBM "
          f"{e.dram64:g} pJ per 64 bit ({e.dram_pj_per_bit:.2f} pJ/bit)")
    for cit in e.citations:
        print(f"    - {cit}")
    print(f"  spike density {SPIKE_DENSITY} (measured on models/digits-llava's LM text tokens, W4, T=4; see the "
          f"script's header), spike-vector density {VECTOR_DENSITY} (no all-zero vector skipped)")
    print("  host: embedding lookup and sampling (+ logits read, embedding write, launch), serial with the device; "
          f"link {host.link_gbps:g} GB/s (PCIe 4.0 x16), argmax {host.argmax_s_per_elem * 1e9:.3f} ns/element "
          "(measured here with numpy)")
    print("  not in the model: DRAM bandwidth shared between the LOAD and STORE modules (STOREs are 0.02 % of the "
          "bytes), instruction fetch (16 bytes per instruction: 0.35 MB per 7B step, 0.01 % of its bytes), the HBM round trip after "
          "the load module idles (see the latency sensitivity)")

    res = {}
    for shape in (QWEN2VL_7B, QWEN2VL_2B):
        res[shape.name] = print_decode(shape, cfg, args.L, host)

    r = res[QWEN2VL_7B.name]
    gpu_tpj = PAPER_GPU["tok_s"] / PAPER_GPU["watts"]
    print(f"\n== targets (Qwen2-VL-7B-shaped, L={args.L}, device figures; end to end with the host in brackets) ==")
    frac_h = r["tok_s_host"] / r["bound_tok_s"]
    checks = [
        (f"decode >= {TARGET_BOUND:.0%} of the bandwidth bound", r["frac"], frac_h, TARGET_BOUND, "{:.1%}"),
        (f"decode >= {TARGET_ROOF:g}x the FP16 roofline", r["tok_s"] / r["roof"], r["tok_s_host"] / r["roof"],
         TARGET_ROOF, "{:.2f}x"),
        (f"tokens per joule >= {TARGET_TPJ:g}x the paper's GPU (HBM included)", (1 / r["ej"]) / gpu_tpj,
         (1 / r["ej"]) / gpu_tpj, TARGET_TPJ, "{:.1f}x"),
    ]
    for name, v, vh, target, fmt in checks:
        verdict = "MET" if v >= target else f"MISSED by {100 * (1 - v / target):.1f} %"
        print(f"  {name}: {fmt.format(v)} [{fmt.format(vh)}] -> {verdict}")
    t = r["c"].timing
    p = r["c"].prog
    print(f"  what limits it: the load module is busy {t.busy['load'] / t.cycles:.1%} and the compute module "
          f"{t.busy['compute'] / t.cycles:.1%} of the step (the weights at full bandwidth would take "
          f"{p.weight_load_bytes / (cfg.dram_gbps * 1e9) / r['dev_s']:.1%}): the compute module multiplies a tile "
          f"through the weight FIFO ({p.fifo_load_bytes / p.weight_load_bytes:.0%} of the weight bytes) as its bytes "
          f"arrive and, between those, a tile the load module fetched into WGT during vector work ({t.vec_cycles:,} "
          f"cycles: softmax, ENCODE, norms, SiLU), while the FIFO ({cfg.wfifo_kib} KiB) fills with the next; a vector "
          f"stretch longer than WGT ({cfg.buffer_bytes(Buffer.WGT) >> 20} MiB, "
          f"{cfg.buffer_bytes(Buffer.WGT) / (cfg.dram_gbps * 1e3):.1f} us of HBM time, a layer's softmax over L) holds "
          f"tiles still to come; the rest is DMA latency, burst rounding and the KV cache; energy is "
          f"{r['e']['dram'] / r['ej']:.0%} HBM and {r['e']['sram'] / r['ej']:.0%} SRAM")

    print(f"\n== context length (Qwen2-VL-7B-shaped) ==")
    for L in (256, 1024, 4096):
        rr = row(QWEN2VL_7B, cfg, L, host)
        print(f"  L={L:>5}: {rr['tok_s']:7.1f} tokens/s ({100 * rr['frac']:.1f} % of the bound, "
              f"{rr['tok_s'] / rr['roof']:.2f}x FP16 roofline), {rr['ej']:.4f} J/token")

    if not args.quick:
        print(f"\n== sensitivity (Qwen2-VL-7B-shaped, L={args.L}; one assumption changed at a time) ==")
        e45 = EnergyConstants(source="Horowitz 45 nm, unscaled", dram64=e.dram64)
        cases = [
            ("no weight FIFO (every weight written to and read from WGT)", variant(cfg, wfifo_kib=0)),
            ("SRAM classes only Horowitz's (no 256 KB class: the weight FIFO charged the 1 MB class, as WGT)",
             variant(cfg, energy=dataclasses.replace(e, sram64=tuple(c for c in e.sram64 if c[0] != 256 * 1024)))),
            ("weight FIFO 32 KiB (32 KB class; too small to hold the HBM's 204 KB in flight, which the model does not "
             "check)", variant(cfg, wfifo_kib=32)),
            ("PE array loading 64 rows of a tile per cycle (16 KiB of int4 weights from WGT per cycle)",
             variant(cfg, pe_load_lines=64)),
            ("DMA latency 16 cycles per instruction", variant(cfg, dram_latency_cycles=16)),
            ("DMA latency 70 cycles (the HBM round trip, ~100 ns) per instruction", variant(cfg, dram_latency_cycles=70)),
            ("clock 1 GHz (same HBM bandwidth)", variant(cfg, clock_mhz=1000)),
            ("vector unit 512 lanes", variant(cfg, vec_lanes=512)),
            ("WGT 1 MiB (byte-addressed: two 512 KiB slots)", variant(cfg, wgt_kib=1024, wgt_addr_bytes=1)),
            ("WGT 16 MiB (16-byte addresses: 32 slots)", variant(cfg, wgt_kib=16384, wgt_addr_bytes=16)),
            ("HBM 450 pJ per 64 bit (7.0 pJ/bit)", variant(cfg, energy=dataclasses.replace(e, dram64=450.0))),
            ("logic and SRAM at Horowitz's 45 nm figures (unscaled)", variant(cfg, energy=e45)),
            ("SRAM banked in 32 KB arrays (every access charged the 32 KB class, wires to the bank not counted)",
             variant(cfg, energy=dataclasses.replace(e, sram64=((8192, e.sram64[0][1]), (1 << 20, e.sram64[1][1]))))),
        ]
        for name, c2 in cases:
            rr = row(QWEN2VL_7B, c2, args.L, host)
            print(f"  {name}: {rr['tok_s']:.1f} tokens/s ({100 * rr['frac']:.1f} % of the bound, "
                  f"{rr['tok_s'] / rr['roof']:.2f}x roofline), {rr['ej']:.4f} J/token "
                  f"({(1 / rr['ej']) / gpu_tpj:.1f}x the paper GPU's tokens per joule)")

    print_prefill(cfg, args.prompt, args.L)
    print(f"\ntotal benchmark wall clock {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
