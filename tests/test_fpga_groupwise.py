"""Group-wise weight scales on the accelerator (docs/isa.md section 9, "Group-wise products").

A SpikeMatMul whose s_w is [n_groups, M] (group g covers input rows g*G .. (g+1)*G - 1)
lowers to the existing ISA: per group an SPMM over the group's k-pieces into a fresh ACC
region, a DEQ of the group with its scale row (group 0's with the bias), and for g >= 1
a DEQ into a scratch row then a VEC ADD into the running sum, so the output is
spikec.reference.dequantize_acc's bit for bit. Checked here:

- the fpga target (KernelRunner on the simulator) equals spikec.ops.run_reference bit for
  bit for G in {16 | 32, 64, K} (and G below pe_rows), with and without bias, several T,
  int8 and int4, static and dynamic scales, several chunks per block;
- the program has the expected DEQ / ADD sequence, one output per (chunk, M-tile);
- per-channel kernels (s_w [M], or [1, M]) build the same bytes as before;
- malformed descriptors (group size not dividing K, zero, too large, a k-piece spanning two
  groups, a rate-IF group-wise kernel, a v1 document with one) are refused with SpikecError;
- one small case on the RTL co-simulation: outputs and DRAM byte-identical to the
  simulator, cycles within 5 % of the cost model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest

from isa_graphs import linear_graph, run_representative_program
from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.isa import programs, tiling
from spikec.isa.descriptors import KernelsDocument, ProductKernel
from spikec.isa.encoding import decode_program, encode_program
from spikec.isa.fields import AccMode, Opcode, VecFlag, VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.passes import lower_isa
from spikec.runtime.fpga_target import KernelRunner
from spikec.runtime.simulator import Simulator


def grouped_graph(K, M, T, G, wbits=8, scale="dynamic", bias=True, seed=0):
    """x [N, K] + modality [N] -> SpikeEncode -> SpikeMatMul with s_w [K / G, M] -> y [N, M]
    (tests/isa_graphs.py's linear graph with group-wise scales)."""
    return linear_graph(K, M, T, wbits=wbits, scale=scale, bias=bias, seed=seed, group_size=G)


def _config(name: str) -> HwConfig:
    if name == "small-wgt2":  # 'small' with a 2 KiB WGT (K-tiled pieces below G)
        d = json.loads(HwConfig.load("small").to_json())
        d.update(name="small-wgt2", wgt_kib=2)
        return HwConfig.from_dict(d, "test")
    return HwConfig.load(name)


def _inputs(K, n, seed=3):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, K)) * 2).astype(np.float32)
    x[1 % n, 5] = 40.0  # an outlier: the dynamic scale is the whole row's
    mods = rng.integers(0, 2, n)
    mods[: min(n, 2)] = [0, 1][: min(n, 2)]
    return x, mods


def _run(cfg, art, x, mods, device=None):
    runner = KernelRunner(device if device is not None else Simulator(cfg), art.weights, art.kernels)
    loaded = []
    orig = runner.device.load_program
    runner.device.load_program = lambda data: (loaded.append(data), orig(data))[1]
    return runner(0, x, mods, "mm"), decode_program(loaded[-1]), runner


CASES = [  # (config, K, M, T, G, wbits, scale, bias, tokens)
    ("small", 96, 20, [4, 3], 16, 8, "dynamic", True, 13),  # M-tiles, several chunks per block
    ("small", 128, 12, [5, 2], 32, 8, "dynamic", False, 9),
    ("small", 128, 12, [3, 6], 64, 4, "static", True, 11),
    ("small", 64, 8, [4, 3], 64, 8, "dynamic", True, 5),  # G == K (s_w [1, M]): per channel
    ("small", 8, 6, [4, 2], 2, 8, "dynamic", True, 4),  # G = 2 < pe_rows 4: SPMMs with k < pe_rows
    ("small-wgt2", 512, 24, [4, 3], 256, 8, "dynamic", True, 7),  # k-pieces below G
    ("default", 256, 40, [4, 3], 32, 8, "dynamic", True, 21),
    ("default", 256, 40, [2, 7], 64, 4, "static", False, 6),
    ("default", 64, 24, [4, 3], 8, 8, "dynamic", True, 3),  # G = 8 < pe_rows 16
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-K{c[1]}-G{c[4]}-w{c[5]}-{c[6]}-{'b' if c[7] else 'nb'}"
                                             for c in CASES])
def test_grouped_kernel_equals_the_reference(case):
    cfg_name, K, M, T, G, wbits, scale, bias, n = case
    cfg = _config(cfg_name)
    model, w, s_w, b = grouped_graph(K, M, T, G, wbits, scale, bias)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.kernels) == 1 and art.fallback["graphs"]["g"]["not_lowered"] == {}
    k = art.kernels[0]
    ng = K // G
    assert k.n_groups == ng and (k.group_size == G if ng > 1 else k.group_size is None)
    if ng > 1:
        assert G % k.k_tile == 0  # a k-piece never spans two groups
    x, mods = _inputs(K, n)
    y, prog, runner = _run(cfg, art, x, mods)
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    assert np.array_equal(y.view(np.int32), want.view(np.int32))  # bit for bit
    if scale == "dynamic":
        T_tok = np.asarray(T)[mods]
        s_x = R.scale_per_token(x, T_tok + 1)
        q = R.quantize(x, s_x, ((np.int64(1) << T_tok) - 1)[..., None])
        acc = R.grouped(lambda qg, wg: R.spike_matmul(qg, wg, T_tok), q, w, G)
        ref = R.dequantize_acc(acc, s_x, s_w, b)
        assert np.array_equal(y.view(np.int32), ref.view(np.int32))
    # the instruction sequence: per (chunk, M-tile) ng DEQs, ng - 1 ADDs, one STORE of the output
    deq = [i for i in prog if i.op == Opcode.VEC and i.func == VecFunc.DEQ]
    add = [i for i in prog if i.op == Opcode.VEC and i.func == VecFunc.ADD]
    stores = [i for i in prog if i.op == Opcode.STORE]
    assert len(deq) == ng * len(stores) and len(add) == (ng - 1) * len(stores)
    assert sum(1 for i in deq if i.flags & VecFlag.BIAS) == (len(stores) if bias else 0)
    spmm = [i for i in prog if i.op == Opcode.SPMM]
    assert max(i.k for i in spmm) <= min(G, k.k_tile)
    if ng > 1:
        assert sum(1 for i in spmm if i.acc_mode == AccMode.OVERWRITE) == ng * len(stores)
    # a decode-shaped call (one token)
    y1, _, _ = _run(cfg, art, x[2:3], mods[2:3])
    assert np.array_equal(y1.view(np.int32), want[2:3].view(np.int32))


def test_per_channel_kernels_are_unchanged():
    """s_w [M] and s_w [1, M] give the same image, descriptor, v1 document and program."""
    cfg = HwConfig.load("small")
    model, w, s_w, b = linear_graph(64, 20, [4, 3], 8, "tc-lif", "dynamic", True)
    one, *_ = grouped_graph(64, 20, [4, 3], 64)
    one.graph.initializers["W_q"].const_value = ir.tensor(w)
    one.graph.initializers["s_w"].const_value = ir.tensor(s_w[None])
    one.graph.initializers["bias"].const_value = ir.tensor(b)
    arts = [lower_isa.lower_graphs({"g": m}, cfg) for m in (model, one)]
    assert arts[0].weights == arts[1].weights and arts[0].kernels == arts[1].kernels
    assert json.loads(arts[0].kernels_json())["version"] == 1 and "group_size" not in arts[0].kernels[0].to_json()
    groups = [programs.Group(arts[0].kernels[0], 0, 0, 9, 0, 1 << 20)]
    assert encode_program(programs.build_program(groups, cfg)) == encode_program(
        programs.build_program([programs.Group(arts[1].kernels[0], 0, 0, 9, 0, 1 << 20)], cfg))


def _grouped_doc(cfg, K=128, M=12, G=32):
    model, *_ = grouped_graph(K, M, [4, 3], G)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    return art, json.loads(art.kernels_json())


def test_grouped_descriptor_round_trips_as_v2():
    cfg = HwConfig.load("small")
    art, doc = _grouped_doc(cfg)
    assert doc["version"] == 2 and doc["kernels"][0]["group_size"] == 32
    back = KernelsDocument.from_json(doc, "t", cfg, len(art.weights))
    assert back.kernels == tuple(art.kernels) and back.kernels[0].n_groups == 4
    # the scales block of a tile: [s_w[0] | bias | s_w[1] | s_w[2] | s_w[3]]
    t = art.kernels[0].tiles[0]
    assert t.w_bytes * (128 // art.kernels[0].k_tile) + t.w <= t.sb


@pytest.mark.parametrize("edit, match", [
    (lambda k: k.update(group_size=48), r"field 'group_size' 48 does not divide K=128"),
    (lambda k: k.update(group_size=0), r"field 'group_size'"),
    (lambda k: k.update(group_size=256), r"field 'group_size'"),
    (lambda k: k.update(group_size=-32), r"field 'group_size'"),
    (lambda k: k.update(group_size="32"), r"field 'group_size'"),
    (lambda k: k.update(group_size=True), r"field 'group_size'"),
    (lambda k: k.update(group_size=2), r"field 'k_tile' \d+ does not divide 'group_size' 2"),
])
def test_malformed_group_size_is_refused(edit, match):
    cfg = HwConfig.load("small")
    art, doc = _grouped_doc(cfg)
    edit(doc["kernels"][0])
    with pytest.raises(SpikecError, match=match):
        KernelsDocument.from_json(doc, "t.sbin:isa/kernels", cfg, len(art.weights))


def test_grouped_descriptor_needs_v2_and_tc_lif():
    cfg = HwConfig.load("small")
    art, doc = _grouped_doc(cfg)
    doc["version"] = 1
    with pytest.raises(SpikecError, match=r"kernels\[0\]: field 'group_size' needs a v2 document"):
        KernelsDocument.from_json(doc, "t", cfg, len(art.weights))
    doc["version"] = 3
    with pytest.raises(SpikecError, match=r"not a spikec-isa-kernels v1 document nor a v2"):
        KernelsDocument.from_json(doc, "t", cfg, len(art.weights))
    k = dict(doc["kernels"][0], neuron="if", timesteps=[4, 3])
    with pytest.raises(SpikecError, match=r"need the tc-lif neuron"):
        ProductKernel.from_json(k, "t", cfg, weights_len=len(art.weights))


def test_plan_tiles_cuts_k_at_group_boundaries():
    cfg = HwConfig.load("default")
    for K, G in ((4096, 128), (4096, 32), (4096, 16), (256, 8), (8960, 1792)):
        mt, n, kt = tiling.plan_tiles(cfg, K, 1536, 8, G)
        assert G % kt == 0 and n >= 1 and kt <= G
        assert tiling.product_fits(cfg, K, mt, kt, n, 8, G)
    assert tiling.plan_tiles(cfg, 4096, 1536, 8, 4096) == tiling.plan_tiles(cfg, 4096, 1536, 8)
    with pytest.raises(tiling.TilingError, match="group size 100 does not divide K=4096"):
        tiling.plan_tiles(cfg, 4096, 16, 8, 100)


@pytest.mark.parametrize("K, M, G, n", [(64, 12, 16, 6), (16, 20, 2, 5)], ids=["block-scales", "row-scales-k2"])
def test_grouped_kernel_rtl_equals_simulator(K, M, G, n, capsys):
    """Small group-wise calls on the RTL (Verilator, config 'small'): outputs and DRAM
    byte-identical to the simulator, cycles within 5 % of the cost model's. The first holds
    a tile's whole scale block in SCL; the second one group's row per slot, and its SPMMs
    have k = 2 < pe_rows."""
    from spikec.runtime.rtl_device import RtlDevice

    cfg = HwConfig.load("small")
    model, *_ = grouped_graph(K, M, [4, 3], G, 8, "dynamic", True)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    x, mods = _inputs(K, n)
    rtl = RtlDevice(cfg)  # Verilator is part of the test extra: a missing one fails, not skips
    y_sim, prog, r_sim = _run(cfg, art, x, mods)
    y_rtl, prog_rtl, r_rtl = _run(cfg, art, x, mods, rtl)
    assert encode_program(prog) == encode_program(prog_rtl)
    assert np.array_equal(y_rtl.view(np.int32), y_sim.view(np.int32))
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    assert np.array_equal(y_rtl.view(np.int32), want.view(np.int32))
    end = tiling.align(len(art.weights), 4096) + (1 << 14)
    assert r_rtl.device.read(0, end) == r_sim.device.read(0, end)
    c_sim, c_rtl = r_sim.stats.device, r_rtl.stats.device
    for key in ("spikes", "spike_vectors", "skipped_vectors", "dram_read_bytes", "dram_write_bytes", "instructions"):
        assert getattr(c_rtl, key) == getattr(c_sim, key), key
    rel = (c_rtl.cycles - c_sim.cycles) / c_sim.cycles
    with capsys.disabled():
        print(f"\n[rtl cosim] group-wise K={K} G={G} M={M}, {n} tokens on 'small': RTL {c_rtl.cycles:,} cycles, "
              f"cost model {c_sim.cycles:,} ({rel:+.2%})")
    assert abs(rel) <= 0.05, f"RTL cycles {c_rtl.cycles:,} vs cost model {c_sim.cycles:,}: {rel:+.2%}"


def test_cases_cover_both_scale_layouts():
    """The CASES run both ways of holding a tile's scales in SCL: the whole block per tile,
    and one group's row per slot (many groups or wide tiles)."""
    seen = set()
    for cfg_name, K, M, T, G, wbits, scale, bias, _ in CASES:
        if G < K:
            cfg = _config(cfg_name)
            k = lower_isa.lower_graphs({"g": grouped_graph(K, M, T, G, wbits, scale, bias)[0]}, cfg).kernels[0]
            seen.add(programs._block_scales(k, cfg))
    assert seen == {True, False}


def test_compiled_group_size_model_on_the_fpga_target_equals_ort(tmp_path):
    """tiny-llava compiled with --group-size 32 --isa: its K = 64 products are group-wise
    device kernels (v2 descriptors), and the LM's prefill on the fpga target gives the ORT
    target's logits and KV cache bit for bit."""
    from spike_graphs import exported, lm_feeds
    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.model import load

    out = tmp_path / "m.sbin"
    compile_path(exported("tiny-llava"), out, options=SpikeOptions(tv=3, tt=4, group_size=32).validate(), isa=True)
    with load(str(out), target="fpga") as fpga, load(str(out)) as ort_model:
        gw = [k for k in fpga.runner.kernels if k.group_size]
        assert gw and all(k.K // k.group_size == 2 for k in gw)
        feeds = lm_feeds(ort_model)
        got, want = fpga.run(feeds, graph="lm"), ort_model.run(feeds, graph="lm")
    assert list(got) == list(want)
    for name in want:
        assert np.array_equal(np.asarray(got[name]).view(np.int32), np.asarray(want[name]).view(np.int32)), name
    # the stored representative program (per-channel and group-wise kernels together) runs cleanly
    from spikec.isa.container import SbinFile

    with SbinFile(out) as f:
        program, weights = f.read("isa/program"), f.read("isa/weights")
        cfg = HwConfig.from_json(f.read("isa/hwconfig"))
        doc = KernelsDocument.from_bytes(f.read("isa/kernels"), "isa/kernels", cfg, len(weights))
    assert json.loads(doc.to_bytes())["version"] == 2
    assert run_representative_program(cfg, doc.kernels, weights, program).spikes > 0


def test_kernel_and_graph_scale_groups_must_agree(tmp_path):
    """The fpga target runs a kernel's weights, the ORT target the graph node's: a .sbin whose
    isa/kernels says one grouping and whose graph says another (sections edited, checksums
    recomputed) is refused by the fpga loader, naming the kernel and the node."""
    import dataclasses

    from spike_graphs import exported
    from spikec.compiler import compile_path
    from spikec.isa import container as C
    from spikec.package import SbinModel
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.fpga_target import rewrite_graph

    out = tmp_path / "m.sbin"
    compile_path(exported("tiny-llava"), out, options=SpikeOptions(tv=3, tt=4, group_size=32).validate(), isa=True)
    with SbinModel(out) as m:
        cfg = HwConfig.from_json(m.file.read(C.ISA_HWCONFIG))
        weights = m.file.read(C.ISA_WEIGHTS)
        doc = KernelsDocument.from_bytes(m.file.read(C.ISA_KERNELS), "isa/kernels", cfg, len(weights))
        proto = m.graph("lm")
    names = {n.name for n in proto.graph.node}
    kernels = [k for k in doc.kernels if k.node in names]
    rewrite_graph(proto, kernels)  # as compiled: consistent
    gw = next(i for i, k in enumerate(kernels) if k.group_size)
    wrong = list(kernels)
    wrong[gw] = dataclasses.replace(kernels[gw], group_size=None)
    with pytest.raises(SpikecError, match=rf"kernel {kernels[gw].index} is \[K=.*1 weight-scale group.*s_w \[2, "):
        rewrite_graph(proto, wrong)
