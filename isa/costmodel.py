"""Cycle and energy model of the accelerator (docs/isa.md, "Cost model").

Cycles come from the hardware configuration (PE array, vector lanes, clock, DRAM
bandwidth and latency); energy from the configuration's constants (HwConfig.energy_constants:
the 45 nm ones of SEMANTICS.md section 6 unless the configuration gives its own), with
memory traffic counted next to arithmetic. Each instruction's cost depends only on its
fields, except SPMM, whose PE-array time grows with the spike vectors that are not all
zero (the hardware skips all-zero (token, plane, k-chunk) vectors) -- the simulator
passes that count in; without it the cost is the dense worst case. The simulator adds
the per-instruction cycles along the load/compute/store timeline (modules overlap,
dependency tokens order them), so a program's cycles are its critical path. A group-wise
product (docs/isa.md section 9) costs what its instructions cost: per group and chunk its
SPMMs, one DEQ and (after the first group) one VEC ADD, the K-tiled ENCODEs, and the scale
LOADs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spikec.isa.encoding import Instruction
from spikec.errors import SpikecError
from spikec.isa.fields import (ELEMENT_BYTES, AccMode, Buffer, EncodeDst, Opcode, ScaleMode, VecFlag, VecFunc, WeightFormat,
                               WeightSource)
from spikec.isa.hwconfig import EnergyConstants, HwConfig
from spikec.isa.tiling import weight_bytes


# The energy table: pJ per operation, per configuration (HwConfig.energy_constants; the
# class lives in isa/hwconfig.py so a configuration can carry its own). Energy45nm() is
# Horowitz's 45 nm table (ISSCC 2014, as quoted in SEMANTICS.md section 6), the constants
# of every configuration that gives none (`default`, `small`); `deploy` gives 28 nm-class
# ones (docs/isa.md section 11).
Energy45nm = EnergyConstants

ENERGY = Energy45nm()

# float32 operations per element of each function: (adds, mults, passes over the row).
# Compares, rint and int->float conversions count as adds; a division counts as a
# multiply (an assumption: Horowitz gives no divider figure). EXP is the ISA's exp
# (docs/isa.md): 3 mults + 3 adds of range reduction, 6 mults + 5 adds of polynomial,
# the final two adds and the 2**k scaling (one add): 10 mults, 11 adds.
EXP = (11, 10)
VEC_OPS: dict[VecFunc, tuple[int, int, int]] = {
    VecFunc.COPY: (0, 0, 1),
    VecFunc.ADD: (1, 0, 1),
    VecFunc.MUL: (0, 1, 1),
    VecFunc.ADD_ROW: (1, 0, 1),
    VecFunc.MUL_ROW: (0, 1, 1),
    VecFunc.SCALE: (0, 1, 1),
    VecFunc.DEQ: (1, 2, 1),  # +1 add with BIAS
    VecFunc.RMSNORM: (1, 3, 2),
    VecFunc.LAYERNORM: (4, 3, 3),
    VecFunc.SOFTMAX: (3 + EXP[0], 1 + EXP[1], 3),
    VecFunc.SILU: (1 + EXP[0], 1 + EXP[1], 1),
    VecFunc.GELU: (5 + EXP[0], 7 + EXP[1], 1),
    VecFunc.ROPE: (1, 2, 1),
}
ENCODE_OPS = {ScaleMode.DYNAMIC: (3, 1, 2), ScaleMode.STATIC: (2, 1, 1)}  # |x|/max, divide, rint, clamp


# Cycles of the RTL's vector unit (docs/rtl.md section 2, rtl/spikec_vecu.sv): iterative,
# one float32 operation per lane issued per cycle from a microprogram per (function,
# pass); every operation that makes a value has a latency of 2 cycles (float32 add and
# multiply in two pipeline stages), so a dependent operation waits one step and
# independent ones issue back to back. A chunk of `lanes` elements costs a fixed number
# of steps (its operand latch included); the first chunk of a pass adds the row's
# prologue (row sum of the 16 partial sums, mean, 1/sqrt, ENCODE scale, max over the
# lanes), run once per row.
VEC_EXP_STEPS = 40  # 22 operations (docs/isa.md 4), each 2 steps after the one it reads; 2 issued next to a neighbour
VEC_DIV_STEPS = 9  # iterative divide: unpack, 7 x 4 quotient bits, round
VEC_SQRT_STEPS = 11  # iterative square root: unpack, 9 x 3 root bits, round
VEC_TOT_STEPS = 30  # the 16 partial sums added left to right: 15 adds, 2 steps each


def vec_pass_steps(func: VecFunc | None, lanes: int, bias: bool = False, scale: ScaleMode | None = None) -> list[tuple[int, int]]:
    """(prologue, steps per chunk) of each pass over a row, as the RTL sequences them;
    func None is ENCODE with `scale`. ROPE's chunks cover len/2 elements (x1/x2, then cos
    and sin); LAYERNORM's last pass reads x and gamma, then beta (1 + 8 steps)."""
    e, d, q, t = VEC_EXP_STEPS, VEC_DIV_STEPS, VEC_SQRT_STEPS, VEC_TOT_STEPS
    pg = 2 * _ceil(lanes, 16) - 1  # partial-sum update steps per chunk (16 partial sums), gaps between
    rsq = t + (d + 1) + 2 + (q + 1) + (d + 1)  # row sum, / len, + eps, sqrt, 1 / x, each + 1 wait
    if func is None:
        return [(0, 2), (2 + d, 3 + d)] if scale == ScaleMode.DYNAMIC else [(0, 3 + d)]
    return {
        VecFunc.DEQ: [(0, 8 if bias else 6)],
        VecFunc.RMSNORM: [(0, 3 + pg), (rsq, 4)],
        VecFunc.LAYERNORM: [(0, 1 + pg), (t + d + 1, 5 + pg), (rsq, 9)],
        VecFunc.SOFTMAX: [(0, 2), (1, 4 + e + pg), (t, 4 + e + d)],
        VecFunc.SILU: [(0, 4 + e + d)],
        VecFunc.GELU: [(0, 22 + e + d)],
        VecFunc.ROPE: [(0, 8)],
    }.get(func, [(0, 2)])  # COPY, ADD, MUL, ADD_ROW, MUL_ROW, SCALE: latch, one op


def vec_row_steps(func: VecFunc | None, length: int, lanes: int, bias: bool = False, scale: ScaleMode | None = None) -> int:
    """Vector-unit cycles per row (see vec_pass_steps)."""
    chunks = _ceil(length // 2 if func == VecFunc.ROPE else length, lanes)
    return sum(pro + chunks * steps for pro, steps in vec_pass_steps(func, lanes, bias, scale))


@dataclass
class Cost:
    cycles: int = 0
    dram_read: int = 0  # bytes
    dram_write: int = 0
    sram_read: dict[Buffer, int] = field(default_factory=dict)  # bytes per buffer
    sram_write: dict[Buffer, int] = field(default_factory=dict)
    fifo_read: int = 0  # bytes through the weight FIFO (charged its SRAM class)
    fifo_write: int = 0
    pe_adds: int = 0  # int32 adds in the PE array
    fp_adds: int = 0
    fp_mults: int = 0

    def energy_pj(self, cfg: HwConfig, e: EnergyConstants | None = None) -> dict[str, float]:
        """pJ by component: dram (DRAM/HBM traffic), sram (on-chip buffers), pe (PE-array
        adds), vec (vector-unit float operations); constants `e`, else the configuration's."""
        if e is None:
            e = cfg.energy_constants
        sram = sum(n * e.sram_pj_per_byte(cfg.buffer_bytes(b)) for d in (self.sram_read, self.sram_write) for b, n in d.items())
        if self.fifo_read or self.fifo_write:
            sram += (self.fifo_read + self.fifo_write) * e.sram_pj_per_byte(cfg.wfifo_bytes)
        return {
            "dram": (self.dram_read + self.dram_write) / 8 * e.dram64,
            "sram": sram,
            "pe": self.pe_adds * e.int32_add,
            "vec": self.fp_adds * e.fp32_add + self.fp_mults * e.fp32_mult,
        }


def _ceil(a: int | float, b: int | float) -> int:
    return int(math.ceil(a / b))


def dma_cost(cfg: HwConfig, ins: Instruction) -> Cost:
    """LOAD/STORE: fixed latency, then each row as one burst at the DRAM bandwidth."""
    buf = Buffer(ins.buf)
    row_bytes = ins.cols * ELEMENT_BYTES[buf]
    total = ins.rows * row_bytes
    # A STORE retires one cycle after its last beat, when the DRAM acknowledges the write
    # (the RTL's STORE engine; its tokens must order a later LOAD of the same bytes).
    c = Cost(cycles=cfg.dram_latency_cycles + ins.rows * _ceil(row_bytes, cfg.dram_bytes_per_cycle)
             + (ins.op == Opcode.STORE))
    if ins.op == Opcode.LOAD and ins.wfifo:
        c.dram_read, c.fifo_write = total, total
    elif ins.op == Opcode.LOAD:
        c.dram_read, c.sram_write = total, {buf: total}
    else:
        c.dram_write, c.sram_read = total, {buf: total}
    return c


def spmm_dense_vectors(cfg: HwConfig, ins: Instruction) -> int:
    """Spike vectors of an SPMM with nothing skipped: n tokens x planes x k-chunks."""
    planes = ins.t if ins.neuron == 0 else 2 ** (ins.t + 1) - 1
    return ins.n * planes * _ceil(ins.k, cfg.pe_rows)


def spmm_cost(cfg: HwConfig, ins: Instruction, vectors: int | None = None, spikes: int | None = None) -> Cost:
    """Weight-stationary PE array of pe_rows x pe_cols. For each weight tile (k-chunk of
    pe_rows, m-chunk of pe_cols): pe_rows cycles to load it, then one cycle per spike vector
    (token, plane) of that k-chunk that is not all zero. `vectors` counts those over all
    k-chunks (dense when None); `spikes` the nonzero spikes (dense bound when None). With
    `pe_load_lines` = p the tile loads p rows (columns with wtrans) per cycle."""
    R, C = cfg.pe_rows, cfg.pe_cols
    kc, mc = _ceil(ins.k, R), _ceil(ins.m, C)
    if vectors is None:
        vectors = spmm_dense_vectors(cfg, ins)
    if spikes is None:
        spikes = vectors * min(R, ins.k)
    wbytes = weight_bytes(ins.k, ins.m, 8 if ins.wfmt == WeightFormat.INT8 else 4)
    acc_bytes = ins.n * ins.m * 4
    # Loading a weight tile takes one cycle per PE row, or per PE column when W is stored
    # transposed (the array then takes a column of the tile per cycle).
    # A configuration may load several lines per cycle (`pe_load_lines`, default 1).
    c = Cost(cycles=cfg.spmm_setup_cycles + mc * (kc * _ceil(C if ins.wtrans else R, cfg.pe_load_lines) + vectors))
    # SOPs (one add per nonzero spike per output feature) plus one Horner/accumulate add
    # per processed vector per PE column.
    c.pe_adds = spikes * ins.m + vectors * mc * C
    c.sram_read = {
        Buffer.INP: mc * ins.n * ins.k * 2,  # codes re-read for every m-chunk
        Buffer.WGT: wbytes,  # every weight once (weight stationary)
        Buffer.ACC: acc_bytes * (kc - 1 + (ins.acc_mode == AccMode.ACCUMULATE)),
    }
    if ins.wsrc == WeightSource.FIFO:  # the weights come through the FIFO instead of WGT
        del c.sram_read[Buffer.WGT]
        c.fifo_read = wbytes
    c.sram_write = {Buffer.ACC: acc_bytes * kc}
    return c


def fifo_weight_bytes(ins: Instruction) -> int:
    """Bytes an SPMM takes from the weight FIFO (its packed W), 0 when it reads WGT."""
    if ins.op != Opcode.SPMM or ins.wsrc != WeightSource.FIFO:
        return 0
    return weight_bytes(ins.k, ins.m, 8 if ins.wfmt == WeightFormat.INT8 else 4)


def fifo_feeders(loads, nbytes: int, where: str) -> int | None:
    """How many of `loads` (the load module's next instructions, in order, as far as they
    are fetched) feed an SPMM that takes `nbytes` from the weight FIFO: the LOADs with
    `wfifo` whose bytes add up to exactly nbytes (docs/isa.md section 3, "The weight
    FIFO"). None when the first is not such a LOAD yet, or they are not all fetched.
    SpikecError (naming `where`) when a LOAD would straddle two SPMMs or a LOAD that is not
    to the FIFO comes first."""
    got = 0
    for n, ins in enumerate(loads):
        if not (ins.op == Opcode.LOAD and ins.wfifo):
            if n == 0:
                return None  # the load module has other LOADs to run first
            raise SpikecError(f"{where}: takes {nbytes} bytes from the weight FIFO, but the LOADs to the FIFO before the "
                              f"next other LOAD carry only {got}")
        got += ins.rows * ins.cols
        if got == nbytes:
            return n + 1
        if got > nbytes:
            raise SpikecError(f"{where}: takes {nbytes} bytes from the weight FIFO, but its LOADs to the FIFO carry {got} "
                              f"(a LOAD may not straddle two SPMMs)")
    return None


def fifo_times(cfg: HwConfig, load_free: int, loads: list[tuple[int, int, int]], spmm_start: int,
               spmm_cycles: int) -> tuple[list[tuple[int, int]], int]:
    """Timing of one SPMM reading the weight FIFO and the LOADs that feed it (cycles).

    `loads`: (the time its popped tokens allow it to start, its dma_cost cycles, bytes) of
    each feeding LOAD, in order; `load_free`: when the load module is free for the first.
    Returns ((start, end) of each LOAD, the SPMM's end). The model (docs/isa.md section 7): a
    LOAD starts when the load module and its tokens allow and runs at the DRAM rate, but
    byte x can enter the FIFO only once the SPMM has taken byte x - F (F = wfifo_bytes), and
    the SPMM takes its bytes no faster than its own cycles (B bytes in spmm_cycles) or the
    DRAM rate, from when both it and the first LOAD have started (it cannot work on bytes
    not yet on their way); the SPMM ends one cycle after its last byte arrived, at the
    earliest spmm_cycles after that start."""
    B = sum(nb for _, _, nb in loads)
    t, cum = load_free, 0
    spans: list[tuple[int, int]] = []
    go = None  # when the SPMM starts taking bytes
    for ready, cycles, nb in loads:
        start = max(t, ready)
        go = max(spmm_start, start) if go is None else go
        cum += nb
        over = cum - cfg.wfifo_bytes
        t = start + cycles
        if over > 0:  # the FIFO is full until the SPMM has taken `over` bytes
            t = max(t, go + max(_ceil(over, cfg.dram_bytes_per_cycle), _ceil(spmm_cycles * over, B)))
        spans.append((start, t))
    assert go is not None, "an SPMM from the weight FIFO has at least one LOAD"
    return spans, max(go + spmm_cycles, t + 1)


def encode_cost(cfg: HwConfig, ins: Instruction) -> Cost:
    adds, mults, passes = ENCODE_OPS[ScaleMode(ins.scale)]
    elems = ins.n * ins.len
    dst = Buffer.INP if ins.dst_buf == EncodeDst.INP else Buffer.WGT
    c = Cost(cycles=cfg.vec_setup_cycles + ins.n * vec_row_steps(None, ins.len, cfg.vec_lanes, scale=ScaleMode(ins.scale)))
    c.fp_adds, c.fp_mults = adds * elems, mults * elems
    c.sram_read = {Buffer.VEC: passes * elems * 4}
    c.sram_write = {dst: elems * ELEMENT_BYTES[dst]}
    if ins.scale == ScaleMode.DYNAMIC:
        c.sram_write[Buffer.SCL] = ins.n * 4
    else:
        c.sram_read[Buffer.SCL] = 4
    return c


def vec_cost(cfg: HwConfig, ins: Instruction) -> Cost:
    func = VecFunc(ins.func)
    adds, mults, passes = VEC_OPS[func]
    if func == VecFunc.DEQ and ins.flags & VecFlag.BIAS:
        adds += 1
    elems = ins.n * ins.len
    c = Cost(cycles=cfg.vec_setup_cycles + ins.n * vec_row_steps(func, ins.len, cfg.vec_lanes, bool(ins.flags & VecFlag.BIAS)))
    c.fp_adds, c.fp_mults = adds * elems, mults * elems
    src = Buffer.ACC if func == VecFunc.DEQ else Buffer.VEC
    # src0 is read once per pass; full-size second operands (ADD, MUL, ROPE's cos and sin)
    # once; row vectors and scalars stay in lane registers and are not counted.
    second = elems * 4 if func in (VecFunc.ADD, VecFunc.MUL, VecFunc.ROPE) else 0
    if src == Buffer.ACC:
        c.sram_read = {Buffer.ACC: passes * elems * 4}
    else:
        c.sram_read = {Buffer.VEC: passes * elems * 4 + second}
    c.sram_write = {Buffer.VEC: elems * 4}
    return c


def instruction_cost(cfg: HwConfig, ins: Instruction, vectors: int | None = None, spikes: int | None = None) -> Cost:
    op = ins.op
    if op in (Opcode.LOAD, Opcode.STORE):
        return dma_cost(cfg, ins)
    if op == Opcode.SPMM:
        return spmm_cost(cfg, ins, vectors, spikes)
    if op == Opcode.ENCODE:
        return encode_cost(cfg, ins)
    if op == Opcode.VEC:
        return vec_cost(cfg, ins)
    return Cost(cycles=1)  # FINISH
