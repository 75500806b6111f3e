"""WGT addresses of more than one byte (`wgt_addr_bytes`, docs/isa.md section 1): a
configuration may name its WGT in units of 2, 4, ... 64 bytes so the 20-bit address
reaches a larger buffer (`deploy`: 32 MiB in 32-byte units).

- the field is validated (a power of two; the buffer within what the addresses reach);
- kernels compiled for such a configuration run on the simulator bit for bit like the
  reference, and their WGT fields are the byte-addressed program's divided by the unit;
- the RTL (byte-addressed WGT) and the random-program generator refuse it clearly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isa_graphs import attention_graph, linear_graph
from spikec import ops as sops
from spikec.errors import SpikecError
from spikec.isa import svgen
from spikec.isa.fields import Buffer, EncodeDst, Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.passes import lower_isa
from spikec.runtime.fpga_target import KernelRunner
from spikec.runtime.simulator import Simulator
from spikec.testing.randprog import random_program


def small_with_unit(unit: int, wgt_kib: int | None = None) -> HwConfig:
    d = HwConfig.load("small").to_dict() | {"name": f"small-wgt{unit}", "wgt_addr_bytes": unit}
    if wgt_kib is not None:
        d["wgt_kib"] = wgt_kib
    return HwConfig.from_dict(d, "test")


def test_the_field_is_validated_and_round_trips():
    base = HwConfig.load("small").to_dict()
    assert "wgt_addr_bytes" not in base  # the built-in byte-addressed configurations are unchanged
    for bad in (0, 3, 128, True, "4"):
        with pytest.raises(SpikecError, match="wgt_addr_bytes"):
            HwConfig.from_dict(base | {"wgt_addr_bytes": bad}, "cfg.json")
    with pytest.raises(SpikecError, match=r"'wgt_kib' = 2048 KiB .* 20-bit WGT addresses reach \(1048576\)"):
        HwConfig.from_dict(base | {"wgt_kib": 2048}, "cfg.json")
    cfg = HwConfig.from_dict(base | {"wgt_kib": 2048, "wgt_addr_bytes": 2}, "cfg.json")
    assert HwConfig.from_json(cfg.to_json()) == cfg and cfg.to_dict()["wgt_addr_bytes"] == 2
    deploy = HwConfig.load("deploy")
    assert deploy.wgt_addr_bytes == 32 and deploy.buffer_bytes(Buffer.WGT) == 32 << 20


def test_wgt_address_refuses_bytes_between_addresses():
    cfg = small_with_unit(8)
    assert cfg.wgt_address(64) == 8 and cfg.buffer_unit(Buffer.WGT) == 8 and cfg.buffer_unit(Buffer.INP) == 1
    with pytest.raises(SpikecError, match="WGT byte offset 12 is not a multiple of 8"):
        cfg.wgt_address(12)


def wgt_fields(program) -> list[int]:
    out = []
    for ins in program:
        if ins.op == Opcode.SPMM:
            out.append(ins.wgt)
        elif ins.op in (Opcode.LOAD, Opcode.STORE) and ins.buf == Buffer.WGT:
            out.append(ins.sram)
        elif ins.op == Opcode.ENCODE and ins.dst_buf == EncodeDst.WGT:
            out.append(ins.dst)
    return out


def recorded(runner: KernelRunner) -> list:
    """The programs `runner` runs, in order (its _run wrapped)."""
    progs, run = [], runner._run

    def keep(prog, writes, where):
        progs.append(prog)
        return run(prog, writes, where)

    runner._run = keep
    return progs


@pytest.mark.parametrize("unit", [4, 64])
def test_a_product_kernel_runs_bit_exact_with_coarse_wgt_addresses(unit):
    model, *_ = linear_graph(40, 100, [4, 3], 4, "tc-lif", "dynamic", True)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((27, 40)) * 2).astype(np.float32)
    mods = rng.integers(0, 2, 27)
    want = sops.run_reference(model, {"x": x, "modality": mods})[0]
    fields = {}
    for cfg in (HwConfig.load("small"), small_with_unit(unit)):
        art = lower_isa.lower_graphs({"g": model}, cfg)
        runner = KernelRunner(Simulator(cfg), art.weights, art.kernels)
        progs = recorded(runner)
        y = runner(0, x, mods, "mm")
        np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))  # bit for bit on both
        fields[cfg.wgt_addr_bytes] = wgt_fields(progs[0])
    assert fields[unit] and [f * unit for f in fields[unit]] == fields[1]


def run_attention(cfg: HwConfig, H: int, K: int, N: int, S: int, T: list[int], seed: int) -> KernelRunner:
    """Lower a P @ V attention product for `cfg`, run it through the fpga runner and check
    it against the reference bit for bit; the runner, for its counters."""
    model = attention_graph(H, K, N, T, False)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.attn_kernels) == 1
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((1, H, S, K)).astype(np.float32)
    b = rng.standard_normal((1, H, K, N)).astype(np.float32)
    mods = rng.integers(0, 2, (1, S))
    want = sops.run_reference(model, {"a": a, "b": b, "modality": mods})[0]
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels, attn_kernels=art.attn_kernels)
    y = runner.attention(0, a, b, mods, where="mm")
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))
    return runner


def test_an_attention_kernel_runs_bit_exact_with_coarse_wgt_addresses():
    # a head's K x N = 128 codes: whole addresses of 4 bytes
    runner = run_attention(small_with_unit(4), H=3, K=16, N=8, S=12, T=[5, 3], seed=0)
    assert runner.stats.attn_host_calls == 0 and runner.stats.device.cycles > 0


def test_an_attention_whose_heads_split_an_address_runs_on_the_host():
    # K x N = 60 codes per head: not whole 64-byte addresses
    runner = run_attention(small_with_unit(64), H=2, K=12, N=5, S=6, T=[4, 3], seed=2)
    assert runner.stats.attn_host_calls == 1 and runner.stats.device.cycles == 0  # never on the device


def test_the_rtl_and_random_programs_need_byte_addresses():
    cfg = small_with_unit(4)
    with pytest.raises(SpikecError, match="wgt_addr_bytes = 4; the RTL implements 1 only"):
        svgen.params(cfg)
    with pytest.raises(SpikecError, match="pe_load_lines = 4; the RTL implements 1 only"):  # the same for the PE load
        svgen.params(dataclasses.replace(HwConfig.load("small"), pe_load_lines=4))
    with pytest.raises(SpikecError, match="byte-addressed WGT"):
        random_program(0, cfg)
    assert dataclasses.replace(cfg, wgt_addr_bytes=1).wgt_address(3) == 3
