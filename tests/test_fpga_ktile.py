"""K-tiling of the linear kernels (passes/lower_isa.py, docs/isa.md section 9, "K-tiling").

A kernel whose weight tile [K, pe_cols] does not fit two WGT slots is split into k-pieces
[k_tile, m_tile]; the SPMMs of the pieces accumulate into ACC (int32 wrapping addition is
associative, the overflow bound is on the whole K), and the per-token dynamic scale is
still taken over the whole row (one dynamic ENCODE, then static ENCODEs per token and
piece with that scale). Checked here:

- kernels that need K-tiling (`small` with a 2 KiB WGT, and `default` at K = 8960) equal
  `reference.spiking_linear` / the reference graph bit for bit through KernelRunner on the
  simulator: int8 and int4, TC-LIF and rate IF, static and dynamic scales, two token groups
  of different T, M-tiles, several chunks per block, a decode-shaped call;
- a plan that was refused before (down_proj of a 2B model, K = 8960 int8 on `default`) now
  lowers, and K beyond the ISA's 16383 is still refused;
- kernels that fit keep k_tile == K, and a descriptor without `k_tile` (older .sbin files)
  builds the same program.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from isa_graphs import linear_graph
from spikec import ops as sops
from spikec import reference as R
from spikec.isa.descriptors import ProductKernel
from spikec.isa.encoding import decode_program, encode_program
from spikec.isa.fields import AccMode, Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.isa import programs, tiling
from spikec.passes import lower_isa
from spikec.runtime.fpga_target import KernelRunner
from spikec.runtime.simulator import Simulator


def _config(name: str) -> HwConfig:
    if name == "small-wgt2":  # 'small' with a 2 KiB WGT: K-tiling at K > 256 (int8, 4 columns)
        d = json.loads(HwConfig.load("small").to_json())
        d.update(name="small-wgt2", wgt_kib=2)
        return HwConfig.from_dict(d, "test")
    return HwConfig.load(name)


CASES = [  # (config, K, M, T, wbits, neuron, scale, bias, tokens)
    ("small-wgt2", 300, 100, [4, 3], 8, "tc-lif", "dynamic", True, 40),  # M-tiles, k-pieces, 2-chunk blocks
    ("small-wgt2", 600, 30, [5, 2], 4, "tc-lif", "static", True, 11),
    ("small-wgt2", 520, 24, [4, 3], 4, "tc-lif", "dynamic", False, 9),
    ("small-wgt2", 300, 24, [3, 2], 8, "if", "dynamic", True, 13),
    ("small-wgt2", 300, 20, [6, 4], 8, "tc-lif", "static", False, 25),
    ("default", 8960, 20, [4, 3], 8, "tc-lif", "dynamic", True, 7),  # K large, M small
    ("default", 9000, 36, [3, 2], 8, "if", "static", True, 5),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-K{c[1]}-{c[5]}-w{c[4]}-{c[6]}" for c in CASES])
def test_k_tiled_kernel_equals_the_reference(case):
    cfg_name, K, M, T, wbits, neuron, scale, bias, n = case
    cfg = _config(cfg_name)
    model, w, s_w, b = linear_graph(K, M, T, wbits, neuron, scale, bias)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.kernels) == 1 and art.fallback["graphs"]["g"]["not_lowered"] == {}
    k = art.kernels[0]
    assert k.k_tile < K and k.k_tile % cfg.pe_rows == 0
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((n, K)) * 2).astype(np.float32)
    x[1, 5] = 40.0  # an outlier: the row's dynamic scale must come from the whole row
    mods = rng.integers(0, 2, n)
    mods[:2] = [0, 1]
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels)
    loaded = []
    orig = runner.device.load_program
    runner.device.load_program = lambda data: (loaded.append(data), orig(data))[1]
    y = runner(0, x, mods, "mm")
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))  # bit for bit
    if neuron == "tc-lif" and scale == "dynamic":
        T_tok = np.asarray(T)[mods]
        ref = R.spiking_linear(x, R.scale_per_token(x, T_tok + 1), w, s_w, b, T_tok)
        np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32))
    prog = decode_program(loaded[-1])
    spmm = [i for i in prog if i.op == Opcode.SPMM]
    assert any(i.acc_mode == AccMode.ACCUMULATE for i in spmm) and max(i.k for i in spmm) <= k.k_tile
    if case[-1] == 40:  # several M-tiles, several chunks per resident block
        assert len(k.tiles) > 1 and k.n_max < min(cfg.buffer_elems(0) // K, cfg.buffer_elems(2) // k.m_tile)
    # decode-shaped call (one token), and the representative program
    np.testing.assert_array_equal(runner(0, x[2:3], mods[2:3], "mm").view(np.int32), want[2:3].view(np.int32))
    sim = Simulator(cfg)
    sim.write(0, art.weights)
    groups = programs.representative_groups(art.kernels, len(art.weights))
    for g in groups:
        sim.write_array(g.x_addr + 4 * g.row0 * K, rng.standard_normal(K), "<f4")
    sim.load_program(encode_program(lower_isa.representative_program(art)))
    assert sim.run().cycles > 0


def test_a_refused_plan_now_lowers():
    cfg = HwConfig.load("default")
    # down_proj of a Qwen2-VL-2B-sized LM: two [8960, 16] int8 tiles exceed WGT (256 KiB)
    mt, n_max, kt = tiling.plan_tiles(cfg, 8960, 1536, 8)
    assert kt < 8960 and 2 * tiling.align(kt * mt, tiling.TILE_ALIGN) <= cfg.buffer_bytes(1) and n_max >= 1
    with pytest.raises(tiling.TilingError):  # beyond the ISA's len/k fields: still refused
        tiling.plan_tiles(cfg, 16384, 16, 8)
    assert tiling.plan_tiles(cfg, 1536, 8960, 8)[2] == 1536  # fits: not K-tiled


def test_untiled_kernels_and_old_descriptors_are_unchanged():
    cfg = HwConfig.load("small")
    model, *_ = linear_graph(40, 100, [4, 3], 8, "tc-lif", "dynamic", True)
    k = lower_isa.lower_graphs({"g": model}, cfg).kernels[0]
    assert k.k_tile == 40
    old_json = {key: v for key, v in k.to_json().items() if key != "k_tile"}  # a descriptor written before K-tiling
    old = ProductKernel.from_json(old_json, "old", cfg)
    for desc in (k, old):
        groups = [programs.Group(desc, 0, 0, 9, 0, 1 << 20), programs.Group(desc, 1, 9, 20, 0, 1 << 20)]
        prog = programs.build_program(groups, cfg)
        assert all(i.acc_mode == AccMode.OVERWRITE for i in prog if i.op == Opcode.SPMM)
        if desc is k:
            first = encode_program(prog)
    assert encode_program(prog) == first


def test_weights_over_the_device_dram_are_refused_before_packing(tmp_path):
    """A model whose weights cannot fit the configured DRAM is refused naming the need,
    the capacity, the largest product and what to change; no .sbin is left."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from spikec.compiler import compile_path
    from spikec.errors import SpikecError

    w = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)  # 2 MiB of int8 codes
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="big_proj")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2048])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1024])],
                          [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    d = json.loads(HwConfig.load("small").to_json())
    d["dram_mib"] = 1
    (tmp_path / "tiny-dram.json").write_text(json.dumps(d))
    with pytest.raises(SpikecError, match=r"need at least 2\.0 MiB.*'big_proj'.*has 1 MiB.*--wbits 4.*dram_mib >= 4"):
        compile_path(tmp_path / "m.onnx", tmp_path / "m.sbin", isa=True, hwconfig=str(tmp_path / "tiny-dram.json"))
    assert not (tmp_path / "m.sbin").exists()
