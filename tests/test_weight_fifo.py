"""The PE array's weight FIFO (docs/isa.md section 3, "The weight FIFO"): LOADs with
`wfifo` feed SPMMs with `wsrc` FIFO in order; the encoding's rules, the simulator's
numerics and checks, the coupled timing of costmodel.fifo_times, its energy class, and
the decode builder's split of weight tiles between WGT and the FIFO."""

from __future__ import annotations

import numpy as np
import pytest

from spikec import reference as R
from spikec.errors import SpikecError
from spikec.isa import costmodel
from spikec.isa import decode as D
from spikec.testing.spmm_log import recorded_spmms
from spikec.isa.encoding import Instruction, decode, encode, encode_program
from spikec.isa.fields import Buffer, Opcode, VecFunc, WeightFormat, WeightSource
from spikec.isa.hwconfig import HwConfig
from spikec.runtime.simulator import Simulator

I = Instruction  # noqa: E741
# `small` (8 DRAM bytes per cycle, DMA latency 32, SPMM setup 4) with a 1 KiB weight FIFO
FIFO_SMALL = HwConfig.from_dict(HwConfig.load("small").to_dict() | {"name": "small-wfifo", "wfifo_kib": 1})
K, M, T = 64, 32, 3  # an int8 W of 2 KiB: twice the FIFO


def _program(via_fifo: bool, split: bool = False, vec_first: int = 0) -> list[Instruction]:
    """q [1, K] int16 at 0x0, W int8 [K, M] at 0x1000 -> ACC -> STORE at 0x3000; W through
    WGT or the FIFO (in one LOAD, or two when `split`); `vec_first` rows of a VEC SILU (on
    rows loaded from 0x2000) in the compute module before the SPMM, to hold it back. Each
    compute instruction that pops takes the token of the last LOAD it needs."""
    wb = K * M
    loads, compute = [], []
    if vec_first:
        loads.append(I(Opcode.LOAD, buf=Buffer.VEC, sram=0, dram=0x2000, stride=0, rows=vec_first, cols=64, push_next=1))
        compute.append(I(Opcode.VEC, func=VecFunc.SILU, dst=0, src0=0, n=vec_first, len=64, pop_prev=1))
    loads.append(I(Opcode.LOAD, buf=Buffer.INP, sram=0, dram=0x0, stride=2 * K, rows=1, cols=K, push_next=int(via_fifo)))
    if via_fifo:
        halves = [(0, wb // 2), (wb // 2, wb // 2)] if split else [(0, wb)]
        loads += [I(Opcode.LOAD, buf=Buffer.WGT, sram=0, dram=0x1000 + o, stride=n, rows=1, cols=n, wfifo=1) for o, n in halves]
    else:
        loads.append(I(Opcode.LOAD, buf=Buffer.WGT, sram=0, dram=0x1000, stride=wb, rows=1, cols=wb, push_next=1))
    compute.append(I(Opcode.SPMM, inp=0, wgt=0, acc=0, n=1, k=K, m=M, acc_stride=M, t=T, wfmt=WeightFormat.INT8,
                     wsrc=WeightSource.FIFO if via_fifo else WeightSource.WGT, pop_prev=1, push_next=1))
    store = I(Opcode.STORE, buf=Buffer.ACC, sram=0, dram=0x3000, stride=4 * M, rows=1, cols=M, pop_prev=1, push_prev=1)
    return loads + compute + [store, I(Opcode.FINISH, pop_next=1)]


def _run(prog, cfg=FIFO_SMALL, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.integers(-(2**T - 1), 2**T, (1, K)).astype(np.int16)
    w = rng.integers(-127, 128, (K, M)).astype(np.int8)
    sim = Simulator(cfg)
    sim.load_program(encode_program(prog))
    sim.write_array(0x0, q, "<i2")
    sim.write_array(0x1000, w, "i1")
    sim.write_array(0x2000, rng.standard_normal(64).astype(np.float32), "<f4")
    ctr = sim.run()
    return sim.read_array(0x3000, (1, M), "<i4"), R.spike_matmul(q, w, np.array([T])), ctr


@pytest.mark.parametrize("split", [False, True], ids=["one-load", "two-loads"])
def test_fifo_spmm_equals_the_wgt_spmm_and_the_reference(split):
    got_f, ref, ctr_f = _run((_program(True, split)))
    got_w, _, ctr_w = _run((_program(False)))
    np.testing.assert_array_equal(got_f, ref)
    np.testing.assert_array_equal(got_w, ref)
    # the same DRAM traffic; the FIFO path neither writes nor reads W in WGT
    assert ctr_f.dram_read_bytes == ctr_w.dram_read_bytes
    assert ctr_f.sram_read_bytes + ctr_f.sram_write_bytes == ctr_w.sram_read_bytes + ctr_w.sram_write_bytes
    # small's buffers are all in the 8 KB class, the 1 KiB FIFO too: the same SRAM energy here
    assert ctr_f.energy_pj["sram"] == pytest.approx(ctr_w.energy_pj["sram"])


def test_fifo_bytes_are_charged_the_fifo_class():
    """A FIFO's bytes cost the FIFO's SRAM class, not WGT's (deploy: 256 KiB against 32 MiB)."""
    cfg = HwConfig.load("deploy")
    e = cfg.energy_constants
    spmm = I(Opcode.SPMM, n=1, k=512, m=512, acc_stride=512, t=4, wfmt=WeightFormat.INT4)
    w = costmodel.spmm_cost(cfg, spmm)
    f = costmodel.spmm_cost(cfg, spmm.replace(wsrc=WeightSource.FIFO))
    saved = w.energy_pj(cfg)["sram"] - f.energy_pj(cfg)["sram"]
    nbytes = 512 * 512 // 2
    assert f.fifo_read == nbytes and Buffer.WGT not in f.sram_read
    assert saved == pytest.approx(nbytes * (e.sram_pj_per_byte(cfg.buffer_bytes(Buffer.WGT)) - e.sram_pj_per_byte(cfg.wfifo_bytes)))
    assert e.sram_pj_per_byte(cfg.wfifo_bytes) < e.sram_pj_per_byte(cfg.buffer_bytes(Buffer.WGT))
    ld = I(Opcode.LOAD, buf=Buffer.WGT, sram=0, dram=0, stride=nbytes // 4, rows=4, cols=nbytes // 4, wfifo=1)
    c = costmodel.dma_cost(cfg, ld)
    assert c.fifo_write == nbytes and not c.sram_write and c.dram_read == nbytes
    assert c.cycles == costmodel.dma_cost(cfg, ld.replace(wfifo=0)).cycles


def test_fifo_times_by_hand():
    """costmodel.fifo_times on small (8 B/cycle) with a 1 KiB FIFO: a 2 KiB LOAD of 288
    cycles (32 + 2048 / 8) that the load module starts at 34."""
    cfg = FIFO_SMALL
    # The SPMM starts late (1000) and takes 900: the FIFO fills, the LOAD ends when the SPMM
    # has taken 1 KiB (the slower of the DRAM, 128 cycles, and its own pace, 450 cycles).
    spans, end = costmodel.fifo_times(cfg, 34, [(0, 288, 2048)], 1000, 900)
    assert spans == [(34, 1450)] and end == 1900
    # The SPMM is there first and fast: it waits for the last byte.
    spans, end = costmodel.fifo_times(cfg, 34, [(0, 288, 2048)], 40, 100)
    assert spans == [(34, 322)] and end == 323
    # Two LOADs; the second pops a token that arrives at 500.
    spans, end = costmodel.fifo_times(cfg, 34, [(0, 160, 1024), (500, 160, 1024)], 40, 100)
    assert spans == [(34, 194), (500, 660)] and end == 661
    # The SPMM is there at 40 but its only LOAD starts at 500 (a token): its 300 cycles of
    # work start with the bytes, so it ends at 800, not 661.
    spans, end = costmodel.fifo_times(cfg, 0, [(500, 160, 1024)], 40, 300)
    assert spans == [(500, 660)] and end == 800


def test_fifo_backpressure_holds_the_load_module():
    """A FIFO LOAD ends only when its SPMM has taken all but a FIFO's worth of its bytes, so
    vector work that holds the SPMM back holds the load module too; the cost-only timeline
    (isa/decode.py), given the simulator's spike counts, agrees with the simulator to the
    cycle and the picojoule."""
    busy = []
    for rows in (1, 16):
        prog = _program(True, vec_first=rows)
        rec = []
        with recorded_spmms(lambda cfg, ins, vectors, spikes: rec.append((vectors, spikes))):
            *_, ctr = _run(prog)
        t = D.timeline(prog, FIFO_SMALL, 0.0, spmm_counts=lambda i, ins: rec[i])
        assert (t.cycles, t.busy["load"]) == (ctr.cycles, ctr.busy_load)
        assert t.energy_total_pj == pytest.approx(ctr.energy_total_pj)
        own = sum(costmodel.instruction_cost(FIFO_SMALL, x).cycles for x in prog if x.op == Opcode.LOAD)
        assert ctr.busy_load > own  # the 2 KiB LOAD waited for the SPMM to drain the 1 KiB FIFO
        busy.append(ctr.busy_load)
    assert busy[1] > busy[0]


def test_fifo_rules_are_checked():
    # encoding: a LOAD to the FIFO has no address and pushes nothing; an SPMM from it has no wgt
    for bad in (dict(buf=Buffer.VEC), dict(sram=4), dict(push_next=1)):
        ld = dict(buf=Buffer.WGT, sram=0, dram=0, stride=16, rows=1, cols=16, wfifo=1) | bad
        with pytest.raises(SpikecError, match="weight FIFO needs buf WGT, sram 0 and no push"):
            encode(I(Opcode.LOAD, **ld))
    with pytest.raises(SpikecError, match="wsrc FIFO.*wgt = 0"):
        encode(I(Opcode.SPMM, wgt=8, n=1, k=4, m=4, acc_stride=4, t=1, wsrc=WeightSource.FIFO))
    ok = I(Opcode.LOAD, buf=Buffer.WGT, sram=0, dram=0, stride=16, rows=1, cols=16, wfifo=1, pop_next=1)
    assert decode(encode(ok)) == ok
    # a configuration without a FIFO refuses the program when it is loaded
    with pytest.raises(SpikecError, match="instruction 1 .LOAD.: uses the weight FIFO, which config 'small' does not have"):
        Simulator("small").load_program(encode_program((_program(True))))
    # a LOAD that would feed two SPMMs
    prog = (_program(True))
    spmm_i = next(i for i, x in enumerate(prog) if x.op == Opcode.SPMM)
    half = prog[spmm_i].replace(k=K // 2, push_next=0)
    prog[spmm_i:spmm_i + 1] = [half, half.replace(pop_prev=0, push_next=1, acc_mode=1)]
    with pytest.raises(SpikecError, match="straddle two SPMMs"):
        _run(prog)
    # an SPMM from the FIFO with no LOAD to feed it, or too few bytes
    prog = [x for x in (_program(True)) if not (x.op == Opcode.LOAD and x.wfifo)]
    with pytest.raises(SpikecError, match="deadlock: .*its LOADs to the weight FIFO .it takes 2048 bytes; the load "
                                          "module's queue has 0 bytes"):
        _run(prog)
    prog = _program(True, split=True)
    prog.pop(max(i for i, x in enumerate(prog) if x.op == Opcode.LOAD and x.wfifo))
    with pytest.raises(SpikecError, match="queue has 1024 bytes of them next"):
        _run(prog)
    # a LOAD to the FIFO that waits for a token nobody pushes; one that no SPMM reads
    prog = _program(True)
    i = next(i for i, x in enumerate(prog) if x.op == Opcode.LOAD and x.wfifo)
    prog[i] = prog[i].replace(pop_next=1)
    with pytest.raises(SpikecError, match=r"LOAD to the weight FIFO\) waits for a token in c2l .* and the SPMM"):
        _run(prog)
    prog = _program(True)
    prog.insert(i + 1, prog[i])
    with pytest.raises(SpikecError, match="LOAD to the weight FIFO.: no SPMM reads it before FINISH"):
        _run(prog)


# ---------------------------------------------------------------- the decode builder


def test_decode_step_splits_tiles_between_wgt_and_the_fifo():
    """The deploy configuration streams part of a 7B step's weights through the FIFO, every
    weight once (WGT or FIFO), and without a FIFO the program is the all-WGT one."""
    cfg = HwConfig.load("deploy")
    p = D.build_decode(D.QWEN2VL_7B, cfg, 1024, layers=2, head=False)
    fifo = sum(i.rows * i.cols for i in p.program if i.op == Opcode.LOAD and i.wfifo)
    assert fifo == p.fifo_load_bytes and 0.25 < fifo / p.weight_load_bytes < 0.75
    assert p.weight_load_bytes == sum(D.weight_bytes(K_, M_, 4) for _, K_, M_, _ in D.QWEN2VL_7B.linears()) * 2
    spmm_fifo = [i for i in p.program if i.op == Opcode.SPMM and i.wsrc == WeightSource.FIFO]
    assert sum(costmodel.fifo_weight_bytes(i) for i in spmm_fifo) == fifo
    none = HwConfig.from_dict(cfg.to_dict() | {"wfifo_kib": 0})
    q = D.build_decode(D.QWEN2VL_7B, none, 1024, layers=2, head=False)
    assert q.fifo_load_bytes == 0 and not any(i.op == Opcode.LOAD and i.wfifo for i in q.program)


def test_the_rtl_is_not_built_with_a_fifo():
    from spikec.isa import svgen

    with pytest.raises(SpikecError, match="wfifo_kib = 1; the RTL has no weight FIFO"):
        svgen.params(FIFO_SMALL)


def test_deploy_fifo_holds_the_bytes_in_flight():
    """The FIFO is the landing place of the HBM reads in flight, so it must hold bandwidth x
    round trip (Little's law; ~100 ns for HBM, docs/isa.md section 3): the cost model does
    not check it, the configuration must."""
    cfg = HwConfig.load("deploy")
    assert cfg.wfifo_bytes >= cfg.dram_gbps * 1e9 * 100e-9


def test_interleave_spreads_wgt_tiles_among_fifo_tiles():
    F, W = False, True
    assert D._interleave(3, 2) == [F, F, W, F, W]
    assert D._interleave(1, 3) == [F, W, W, W]
    assert D._interleave(4, 0) == [F] * 4
    for nf, nw in ((5, 7), (66, 34), (1, 1)):
        order = D._interleave(nf, nw)
        assert order[0] is F and order.count(W) == nw and order.count(F) == nf
