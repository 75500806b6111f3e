"""The accelerator lowering (passes/lower_isa.py) and the fpga target (runtime/fpga_target.py).

- a lowered kernel on the simulator equals spikec.reference bit for bit (several token
  groups, int8 and int4 weights, rate IF, static scales; M-tiling and token chunking
  forced by the `small` configuration), and its programs pass the simulator's
  dependency, race and bounds checks;
- the representative program stored in the .sbin runs on the simulator and
  `spikec disasm` re-assembles to identical bytes;
- on tiny-llava at T = 8 the fpga target generates the ORT target's tokens;
- device cycles grow with the sum of per-token T (Tv/Tt 2/4 < 4/4 on the same input);
- a missing or corrupted program section is a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isa_graphs import compiled_isa, linear_graph, run_representative_program
from spike_graphs import exported, lm_feeds
from spikec import ops as sops
from spikec import reference as R
from spikec.isa import programs
from spikec.compiler import compile_path
from spikec.errors import SpikecError
from spikec.frontend.export import sample_image
from spikec.isa.asm import assemble_program
from spikec.isa.container import SbinFile, SectionKind, write_sbin
from spikec.isa.descriptors import KernelsDocument
from spikec.isa.hwconfig import HwConfig
from spikec.passes import lower_isa
from spikec.passes.options import SpikeOptions
from spikec.runtime.fpga_target import KernelRunner
from spikec.runtime.model import load
from spikec.runtime.simulator import Simulator

PROMPT = "What is in the image?"



CASES = [  # (config, K, M, T, wbits, neuron, scale, bias)
    ("small", 40, 100, [4, 3], 8, "tc-lif", "dynamic", True),  # M tiles and token chunks on 'small'
    ("small", 24, 30, [5, 2], 4, "tc-lif", "dynamic", False),
    ("default", 48, 40, [3, 2], 8, "if", "dynamic", True),
    ("default", 32, 20, [6, 4], 8, "tc-lif", "static", True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[5]}-w{c[4]}-{c[6]}" for c in CASES])
def test_kernel_on_the_simulator_equals_the_reference(case):
    cfg_name, K, M, T, wbits, neuron, scale, bias = case
    cfg = HwConfig.load(cfg_name)
    model, w, s_w, b = linear_graph(K, M, T, wbits, neuron, scale, bias)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.kernels) == 1 and art.fallback["graphs"]["g"]["host_ops"] == {}
    k = art.kernels[0]
    if cfg_name == "small":
        assert len(k.tiles) > 1 or k.n_max < 27
    rng = np.random.default_rng(1)
    n = 27
    x = (rng.standard_normal((n, K)) * 2).astype(np.float32)
    mods = rng.integers(0, 2, n)  # mixed, unsorted: the runner groups them by modality
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels)
    y = runner(0, x, mods, "mm")
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    assert y.dtype == np.float32 and y.shape == (n, M)
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))  # bit for bit
    if neuron == "tc-lif" and scale == "dynamic":
        T_tok = np.asarray(T)[mods]
        ref = R.spiking_linear(x, R.scale_per_token(x, T_tok + 1), w, s_w, b, T_tok)
        np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32))
    st = runner.stats
    assert st.device.cycles > 0 and st.device.spikes > 0 and st.tokens_T == int(np.asarray(T)[mods].sum())
    # decode-shaped call (one token) and an empty one
    np.testing.assert_array_equal(runner(0, x[:1], mods[:1], "mm"), want[:1])
    assert runner(0, x[:0], mods[:0], "mm").shape == (0, M)


def test_kernel_overflow_is_rejected():
    model, *_ = linear_graph(4096, 4, [15, 15], wbits=8)  # 4096 * (2**15 - 1) * 127 > 2**31 - 1
    with pytest.raises(SpikecError, match="overflow|int32"):
        lower_isa.lower_graphs({"g": model}, HwConfig.load("default"))


# ---------------------------------------------------------------- tiny-llava



def test_representative_program_runs_and_disasm_reassembles(run_cli, tmp_path):
    path = compiled_isa(3, 4)
    with SbinFile(path) as f:
        program = f.read("isa/program")
        weights = f.read("isa/weights")
        cfg = HwConfig.from_json(f.read("isa/hwconfig"))
        doc = KernelsDocument.from_bytes(f.read("isa/kernels"), "isa/kernels", cfg, len(weights))
        assert f.sections["isa/program"].kind == SectionKind.PROGRAM
        assert f.sections["isa/weights"].kind == SectionKind.WEIGHTS
    assert len(doc.kernels) == 23  # 15 LM products + 8 vision products
    lm = doc.fallback["graphs"]["lm"]
    assert "Softmax" not in lm["host_ops"] and lm["vec_kernels"]["SOFTMAX"] == 2  # tests/test_fpga_vec.py
    # the stored program is the representative one; it passes the simulator's checks
    ctr = run_representative_program(cfg, doc.kernels, weights, program)
    assert ctr.cycles > 0 and ctr.spikes > 0
    # spikec disasm: text that re-assembles to the identical bytes
    res = run_cli("disasm", path)
    assert res.code == 0, res.err
    assert "SPMM" in res.out and "ENCODE" in res.out and res.out.rstrip().splitlines()[-1].startswith("FINISH")
    assert "# hwconfig 'default': PE array 16x16, 16 vector lanes, WGT addresses of 1 byte" in res.out
    assert assemble_program(res.out) == program
    res = run_cli("inspect", path)  # names the accelerator too
    assert res.code == 0 and "accelerator (isa/hwconfig): 'default', 200 MHz, PE array 16x16" in res.out
    res = run_cli("disasm", path, "-o", str(tmp_path / "p.s"))
    assert res.code == 0 and assemble_program((tmp_path / "p.s").read_text()) == program


def test_fpga_generation_at_T8_equals_ort_tokens():
    path = compiled_isa(8, 8)
    image = sample_image()
    with load(path, target="fpga") as fpga, load(path) as ort_model:
        g = fpga.generator()
        ids_f = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        g = ort_model.generator()
        ids_o = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        stats = fpga.stats()
    assert ids_f.shape == (1, 5)
    np.testing.assert_array_equal(ids_f, ids_o)
    assert stats["cycles"] > 0 and stats["energy_j"] > 0 and stats["effective_timesteps"] == 8.0
    assert 0 < stats["spike_density"] < 1 and stats["gpu"]["seconds"] > 0 and stats["throughput_ratio"] > 0




def test_cycles_grow_with_the_sum_of_per_token_timesteps():
    with load(compiled_isa(4, 4), target="fpga") as m:
        feeds = lm_feeds(m)  # runs the vision graph on the device too
        m.runner.reset()
        m.run(feeds, graph="lm")
        r44 = m.stats()
    with load(compiled_isa(2, 4), target="fpga") as m:
        m.run(feeds, graph="lm")
        r24 = m.stats()
    n_vis, n_all = int((feeds["modality"] == 1).sum()), feeds["modality"].size
    assert 0 < n_vis < n_all
    assert r24["effective_timesteps"] == pytest.approx((2 * n_vis + 4 * (n_all - n_vis)) / n_all)
    assert r24["tokens"] == r44["tokens"]
    assert r24["cycles"] < r44["cycles"]
    assert r24["spike_vectors"] < r44["spike_vectors"]


def test_fpga_cli_and_clear_errors(run_cli, tmp_path):
    path = compiled_isa(3, 4)
    image = tmp_path / "img.png"
    sample_image().save(image)
    res = run_cli("run", path, "--target", "fpga", "--image", str(image), "--prompt", PROMPT,
                  "--max-new-tokens", "2", "--stats")
    assert res.code == 0, res.err
    assert "device cycles" in res.out and "modeled" in res.out and "throughput ratio" in res.out
    assert "energy constants: Horowitz, ISSCC 2014, 45 nm" in res.out  # the configuration's own, named
    # options that belong to another target are refused, not ignored
    res = run_cli("run", path, "--device", "rtl", "--image", str(image), "--prompt", PROMPT)
    assert res.code == 1 and "--device rtl applies to --target fpga only" in res.err
    res = run_cli("compile", str(exported("tiny-llava")), "-o", str(tmp_path / "x.sbin"), "--hwconfig", "small")
    assert res.code == 1 and "--hwconfig applies to --isa only" in res.err and not (tmp_path / "x.sbin").exists()
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(HwConfig.load("small").to_dict() | {"wgt_addr_bytes": 3}))
    res = run_cli("compile", str(exported("tiny-llava")), "-o", str(tmp_path / "x.sbin"), "--isa", "--hwconfig", str(cfg))
    assert res.code == 1 and "wgt_addr_bytes' must be a power of two" in res.err and "[1/" not in res.err  # before any pass
    # a model compiled without --isa
    plain = tmp_path / "plain.sbin"
    compile_path(exported("tiny-llava"), plain, options=SpikeOptions(tv=3, tt=4).validate())
    res = run_cli("run", str(plain), "--target", "fpga", "--image", str(image), "--prompt", PROMPT)
    assert res.code == 1 and "compile with `spikec compile --isa" in res.err
    # a corrupted payload: the container's checksum catches it
    data = bytearray(Path(path).read_bytes())
    with SbinFile(path) as f:
        sec = f.sections["isa/program"]
        sections = [(name, s.kind, f.read(name)) for name, s in f.sections.items()]
    data[sec.offset + 5] ^= 0x40
    bad = tmp_path / "bad.sbin"
    bad.write_bytes(bytes(data))
    with pytest.raises(SpikecError, match="isa/program.*checksum"):
        load(bad, target="fpga")
    res = run_cli("disasm", str(bad))
    assert res.code == 1 and "checksum" in res.err
    # a well-formed container whose program does not decode (reserved bits set)
    prog = bytearray(dict((n, d) for n, _, d in sections)["isa/program"])
    prog[15] = 0xFF
    bad2 = tmp_path / "bad2.sbin"
    write_sbin(bad2, [(n, k, bytes(prog) if n == "isa/program" else d) for n, k, d in sections])
    with pytest.raises(SpikecError, match="isa/program.*not a valid accelerator program"):
        load(bad2, target="fpga")
    res = run_cli("disasm", str(bad2))
    assert res.code == 1 and "not a valid accelerator program" in res.err


def test_isa_compile_is_deterministic_and_needs_sbin(tmp_path):
    a, b = tmp_path / "a.sbin", tmp_path / "b.sbin"
    opts = SpikeOptions(tv=3, tt=4).validate()
    compile_path(exported("tiny-llava"), a, options=opts, isa=True)
    compile_path(exported("tiny-llava"), b, options=opts, isa=True)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(SpikecError, match="--isa"):
        compile_path(exported("tiny-llava"), tmp_path / "folder", options=opts, isa=True)


@pytest.mark.parametrize("order", ["resident", "reencode"])
@pytest.mark.parametrize("scale", ["dynamic", "static"])
def test_both_tile_orders_are_bit_exact(monkeypatch, order, scale):
    """The lowering picks tile-outer 'resident' (codes kept in INP across M-tiles) or
    're-encode' by modeled energy; force each on 'small' (M tiles, several chunks)."""
    cfg = HwConfig.load("small")
    model, *_ = linear_graph(40, 100, [4, 3], 8, "tc-lif", scale, True)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.kernels[0].tiles) > 1
    chosen = []

    def forced(groups, cfg_, rows_cap, chunks_cap):
        k = groups[0].kernel
        chunks = [(g, g.row0 + r, min(k.n_max, g.n - r)) for g in groups for r in range(0, g.n, k.n_max)]
        plan = (order, chunks) if order == "reencode" else ("resident", programs._pack_chunks(chunks, rows_cap, chunks_cap))
        chosen.append(plan[0])
        return plan

    monkeypatch.setattr(programs, "_plan_segment", forced)
    rng = np.random.default_rng(5)
    n = 70
    x = (rng.standard_normal((n, 40)) * 2).astype(np.float32)
    mods = rng.integers(0, 2, n)
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels)
    y = runner(0, x, mods, "mm")
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))
    assert chosen and set(chosen) == {order}


@pytest.mark.parametrize("scale", ["dynamic", "static"])
def test_non_finite_tokens_give_nan_rows_as_on_every_target(scale):
    """docs/passes.md: a token holding NaN or +-inf fires no spike and its output row is
    NaN; the other rows are bit-identical to a run without it (the simulator faults on
    NaN, so the host sends zeros and writes NaN over those rows)."""
    cfg = HwConfig.load("small")
    model, *_ = linear_graph(24, 8, [3, 4], 8, "tc-lif", scale, True)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 24)).astype(np.float32)
    mods = np.array([0, 1, 0, 1, 1, 0])
    clean = runner(0, x, mods, "mm")
    x[1, 5], x[3, 0], x[4, 23] = np.nan, np.inf, -np.inf
    y = runner(0, x, mods, "mm")
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    bad = np.array([False, True, False, True, True, False])
    assert np.isnan(y[bad]).all() and np.isnan(want[bad]).all()
    np.testing.assert_array_equal(y[~bad].view(np.int32), clean[~bad].view(np.int32))
    np.testing.assert_array_equal(y[~bad].view(np.int32), want[~bad].view(np.int32))
