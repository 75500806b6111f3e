"""The functional simulator: the executable definition of docs/isa.md that the RTL is
co-simulated against, bit for bit.

Vectorised numpy. The integer path reuses spikec.reference (TC-LIF planes and the int32
Horner, quantize, scales, dequantize), so the simulator, the ONNX Runtime target and
the reference agree by construction; the vector unit follows the float32 definitions
of docs/isa.md, "Vector-unit numerics" (spikec.reference's `vec_*`, which the host's
spikec.vec functions compute too).

Execution model (docs/isa.md, "Synchronisation"): the fetch unit dispatches
instructions in program order into the command queues of the load, compute and store
modules (depth cfg.cmd_queue_depth); each module executes its queue in order, an
instruction waiting until the tokens it pops exist and the queues it pushes have room
(depth cfg.token_queue_depth). When nothing can move and the program has not finished,
that is a deadlock: a SpikecError naming what every module waits for, never a hang.

Races. Modules run concurrently, so a program is only well defined when its tokens
order every conflicting access to an on-chip buffer. The simulator proves that with
vector clocks (each token carries its producer's clock): reading an element written by
another module, or writing one another module read or wrote, without a chain of tokens
in between is a SpikecError, as is reading an element not written in this run. A
program that passes is therefore deterministic -- the same on the simulator, the RTL
and a board, whatever their relative speeds. (DRAM accesses are not tracked: the
compiler orders a STORE and a later LOAD of the same bytes with tokens.)
"""

from __future__ import annotations

from collections import deque

import numpy as np

from spikec import reference as R
from spikec.reference import vec_gelu, vec_layernorm, vec_rmsnorm, vec_rope, vec_silu, vec_softmax  # docs/isa.md 4
from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction, decode_program
from spikec.isa.fields import (
    ELEMENT_BYTES,
    ELEMENT_DTYPE,
    FORMATS,
    AccMode,
    Buffer,
    EncodeDst,
    Module,
    Neuron,
    Opcode,
    ScaleMode,
    VecFlag,
    VecFunc,
    WeightFormat,
    WeightSource,
)
from spikec.isa.hwconfig import HwConfig
from spikec.isa import costmodel
from spikec.runtime.device import Counters, Device

F32 = np.float32

# ---------------------------------------------------------------- regions an instruction touches


def regions(ins: Instruction, wgt_unit: int = 1) -> list[tuple[Buffer, str, int, int, int, int]]:
    """On-chip accesses of an instruction: (buffer, 'r'|'w', start, rows, cols, pitch) in
    elements of the buffer; a WGT address counts `wgt_unit` bytes (the configuration's
    wgt_addr_bytes, docs/isa.md section 1). Used for bounds checks at load and race checks
    at run."""
    op = ins.op
    if op == Opcode.LOAD and ins.wfifo:
        return []  # the weight FIFO has no addresses: its order is the program's
    if op in (Opcode.LOAD, Opcode.STORE):
        buf = Buffer(ins.buf)
        start = ins.sram * (wgt_unit if buf == Buffer.WGT else 1)
        return [(buf, "w" if op == Opcode.LOAD else "r", start, ins.rows, ins.cols, ins.cols)]
    if op == Opcode.SPMM:
        wbytes = ins.k * ins.m if ins.wfmt == WeightFormat.INT8 else -(-ins.k * ins.m // 2)
        out = [(Buffer.INP, "r", ins.inp, ins.n, ins.k, ins.k)]
        if ins.wsrc == WeightSource.WGT:
            out.append((Buffer.WGT, "r", ins.wgt * wgt_unit, 1, wbytes, wbytes))
        if ins.acc_mode == AccMode.ACCUMULATE:
            out.append((Buffer.ACC, "r", ins.acc, ins.n, ins.m, ins.acc_stride))
        return out + [(Buffer.ACC, "w", ins.acc, ins.n, ins.m, ins.acc_stride)]
    if op == Opcode.ENCODE:
        dst = Buffer.INP if ins.dst_buf == EncodeDst.INP else Buffer.WGT
        dst_start = ins.dst * (wgt_unit if dst == Buffer.WGT else 1)
        scl = (Buffer.SCL, "w", ins.scl, 1, ins.n, ins.n) if ins.scale == ScaleMode.DYNAMIC else (Buffer.SCL, "r", ins.scl, 1, 1, 1)
        return [(Buffer.VEC, "r", ins.src, ins.n, ins.len, ins.len), scl, (dst, "w", dst_start, ins.n, ins.len, ins.len)]
    if op == Opcode.VEC:
        n, L = ins.n, ins.len
        func = VecFunc(ins.func)
        full = lambda a: (Buffer.VEC, "r", a, n, L, L)  # noqa: E731
        row = lambda a, cols=L: (Buffer.VEC, "r", a, 1, cols, cols)  # noqa: E731
        scalar = (Buffer.SCL, "r", ins.src1, 1, 1, 1)
        srcs = {
            VecFunc.COPY: [full(ins.src0)],
            VecFunc.ADD: [full(ins.src0), full(ins.src1)],
            VecFunc.MUL: [full(ins.src0), full(ins.src1)],
            VecFunc.ADD_ROW: [full(ins.src0), row(ins.src1)],
            VecFunc.MUL_ROW: [full(ins.src0), row(ins.src1)],
            VecFunc.SCALE: [full(ins.src0), scalar],
            VecFunc.DEQ: [
                (Buffer.ACC, "r", ins.src0, n, L, L),
                (Buffer.SCL, "r", ins.src1, 1, n, n) if ins.flags & VecFlag.PER_ROW else scalar,
                (Buffer.SCL, "r", ins.src2, 1, 2 * L if ins.flags & VecFlag.BIAS else L, 0),
            ],
            VecFunc.RMSNORM: [full(ins.src0), row(ins.src1), (Buffer.SCL, "r", ins.src2, 1, 1, 1)],
            VecFunc.LAYERNORM: [full(ins.src0), row(ins.src1, 2 * L), (Buffer.SCL, "r", ins.src2, 1, 1, 1)],
            VecFunc.SOFTMAX: [full(ins.src0)],
            VecFunc.SILU: [full(ins.src0)],
            VecFunc.GELU: [full(ins.src0)],
            VecFunc.ROPE: [full(ins.src0), (Buffer.VEC, "r", ins.src1, n, L // 2, L // 2), (Buffer.VEC, "r", ins.src2, n, L // 2, L // 2)],
        }[func]
        return srcs + [(Buffer.VEC, "w", ins.dst, n, L, L)]
    return []


def element_index(start: int, rows: int, cols: int, pitch: int) -> np.ndarray | slice:
    if rows == 1 or pitch == cols:
        return slice(start, start + rows * cols)
    return (start + np.arange(rows, dtype=np.int64)[:, None] * pitch + np.arange(cols, dtype=np.int64)[None, :]).ravel()


def dram_span(ins: Instruction) -> tuple[int, int]:
    row_bytes = ins.cols * ELEMENT_BYTES[Buffer(ins.buf)]
    return ins.dram, ins.dram + (ins.rows - 1) * ins.stride + row_bytes


def _dram_rows(ins: Instruction) -> np.ndarray:
    """DRAM byte addresses [rows, row bytes] of a LOAD or STORE."""
    row_bytes = ins.cols * ELEMENT_BYTES[Buffer(ins.buf)]
    return ins.dram + np.arange(ins.rows, dtype=np.int64)[:, None] * ins.stride + np.arange(row_bytes, dtype=np.int64)


def check_bounds(cfg: HwConfig, ins: Instruction, index: int = 0) -> None:
    """Every buffer and DRAM access of `ins` lies inside this configuration's memories."""
    where = f"instruction {index} ({ins.op.name})"
    for buf, _mode, start, rows, cols, pitch in regions(ins, cfg.wgt_addr_bytes):
        end = start + (rows - 1) * pitch + cols
        size = cfg.buffer_elems(buf)
        if end > size:
            raise SpikecError(f"{where}: {buf.name} elements [{start}, {end}) exceed the buffer's {size} elements (config '{cfg.name}')")
    if costmodel.fifo_weight_bytes(ins) or (ins.op == Opcode.LOAD and ins.wfifo):
        if not cfg.wfifo_bytes:
            raise SpikecError(f"{where}: uses the weight FIFO, which config '{cfg.name}' does not have (wfifo_kib 0)")
    if ins.op in (Opcode.LOAD, Opcode.STORE):
        lo, hi = dram_span(ins)
        if hi > cfg.dram_bytes:
            raise SpikecError(f"{where}: DRAM bytes [{lo:#x}, {hi:#x}) exceed the device's {cfg.dram_bytes:#x} bytes (config '{cfg.name}')")


# ---------------------------------------------------------------- race tracking


class _Tracker:
    """Per buffer element: last writer (module, its clock, its instruction) and the last
    read clock of each module in this run."""

    def __init__(self, size: int) -> None:
        self.w_mod = np.full(size, -1, np.int8)
        self.w_clk = np.zeros(size, np.int64)
        self.w_ins = np.zeros(size, np.int64)
        self.r_clk = np.zeros((3, size), np.int64)

    def access(self, buf: Buffer, mode: str, idx, m: int, vc: np.ndarray, ins_index: int, who: str) -> None:
        wm = self.w_mod[idx]
        if mode == "r" and (wm < 0).any():
            first = int(np.flatnonzero(wm < 0)[0])
            raise SpikecError(f"{who}: reads {buf.name}[{_elem(idx, first)}], which nothing wrote in this run")
        written = wm >= 0
        unordered = written & (wm != m) & (self.w_clk[idx] > vc[np.maximum(wm, 0)])
        if unordered.any():
            j = int(np.flatnonzero(unordered)[0])
            other = Module(int(wm[j])).name.lower()
            raise SpikecError(
                f"{who}: {'reads' if mode == 'r' else 'overwrites'} {buf.name}[{_elem(idx, j)}] written by instruction "
                f"{int(self.w_ins[idx][j])} ({other} module) with no dependency token ordering them (a race)"
            )
        if mode == "w":
            for r in range(3):
                if r != m:
                    late = self.r_clk[r][idx] > vc[r]
                    if late.any():
                        j = int(np.flatnonzero(late)[0])
                        raise SpikecError(
                            f"{who}: overwrites {buf.name}[{_elem(idx, j)}] that the {Module(r).name.lower()} module reads "
                            f"with no dependency token ordering them (a race)"
                        )
            self.w_mod[idx], self.w_clk[idx], self.w_ins[idx] = m, vc[m], ins_index
        else:
            self.r_clk[m][idx] = vc[m]


def _elem(idx, j: int) -> int:
    return idx.start + j if isinstance(idx, slice) else int(idx[j])


# ---------------------------------------------------------------- the simulator

# Dependency queues, named by (from, to); which bit of which module uses which queue.
QUEUES = ("l2c", "c2l", "c2s", "s2c")
_POP = {
    Module.LOAD: {"pop_next": "c2l"},
    Module.COMPUTE: {"pop_prev": "l2c", "pop_next": "s2c"},
    Module.STORE: {"pop_prev": "c2s"},
}
_PUSH = {
    Module.LOAD: {"push_next": "l2c"},
    Module.COMPUTE: {"push_prev": "c2l", "push_next": "c2s"},
    Module.STORE: {"push_prev": "s2c"},
}
_QUEUE_FROM = {"l2c": "load", "c2l": "compute", "c2s": "compute", "s2c": "store"}


class Simulator(Device):
    """Functional simulator with the cost model's timeline. `Simulator("small")` or
    `Simulator(HwConfig.load(path))`."""

    label = "functional simulator, modeled cycles"

    def __init__(self, config: HwConfig | str = "default") -> None:
        self.config = config if isinstance(config, HwConfig) else HwConfig.load(config)
        cfg = self.config
        # np.zeros maps zero pages lazily: only DRAM the program touches costs memory.
        self.dram = np.zeros(cfg.dram_bytes, np.uint8)
        self.buffers = {b: np.zeros(cfg.buffer_elems(b), np.dtype(ELEMENT_DTYPE[b]).newbyteorder("=")) for b in Buffer}
        self.program: list[Instruction] | None = None
        self._counters = Counters()

    # ------------------------------------------------------------ Device interface

    def load_program(self, program: bytes) -> None:
        prog = decode_program(program)
        for i, ins in enumerate(prog):
            check_bounds(self.config, ins, i)
        self.program = prog

    def write(self, addr: int, data: bytes) -> None:
        data = np.frombuffer(bytes(data), np.uint8)
        self._check_range(addr, len(data))
        self.dram[addr : addr + len(data)] = data

    def read(self, addr: int, n: int) -> bytes:
        self._check_range(addr, n)
        return self.dram[addr : addr + n].tobytes()

    @property
    def counters(self) -> Counters:
        return self._counters

    def run(self) -> Counters:
        if self.program is None:
            raise SpikecError("run: no program loaded")
        prog, cfg = self.program, self.config
        self._trackers = {b: _Tracker(cfg.buffer_elems(b)) for b in Buffer}
        self._counters = ctr = Counters()
        ctr.energy_pj = {"dram": 0.0, "sram": 0.0, "pe": 0.0, "vec": 0.0}
        total = {m: sum(1 for ins in prog if FORMATS[ins.op].module == m) for m in Module}
        cmd = {m: deque() for m in Module}
        tokens = {q: deque() for q in QUEUES}  # each token: (vector clock, push time)
        vc = {m: np.zeros(3, np.int64) for m in Module}
        t_free = {m: 0 for m in Module}
        fetch = 0
        while True:
            while fetch < len(prog) and len(cmd[FORMATS[prog[fetch].op].module]) < cfg.cmd_queue_depth:
                cmd[FORMATS[prog[fetch].op].module].append(fetch)
                fetch += 1
            progressed = False
            for m in Module:
                while cmd[m]:
                    i = cmd[m][0]
                    ins = prog[i]
                    if ins.op == Opcode.LOAD and ins.wfifo:
                        break  # it runs with the SPMM that reads it (`_fifo_spmm`)
                    if ins.op == Opcode.FINISH and cmd[Module.LOAD] and prog[cmd[Module.LOAD][0]].wfifo:
                        j = cmd[Module.LOAD][0]
                        raise SpikecError(f"instruction {j} (LOAD to the weight FIFO): no SPMM reads it before FINISH "
                                          f"(instruction {i})")
                    pops = [q for bit, q in _POP[m].items() if getattr(ins, bit)]
                    pushes = [q for bit, q in _PUSH[m].items() if getattr(ins, bit)]
                    if any(not tokens[q] for q in pops) or any(len(tokens[q]) >= cfg.token_queue_depth for q in pushes):
                        break
                    feed: list[int] = []
                    if costmodel.fifo_weight_bytes(ins):
                        n = costmodel.fifo_feeders((prog[j] for j in cmd[Module.LOAD]), costmodel.fifo_weight_bytes(ins),
                                                   f"instruction {i} (SPMM)")
                        feed = list(cmd[Module.LOAD])[:n] if n else []
                        if not feed or sum(prog[j].pop_next for j in feed) > len(tokens["c2l"]):
                            break
                    cmd[m].popleft()
                    start = t_free[m]
                    for q in pops:
                        tvc, ttime = tokens[q].popleft()
                        vc[m] = np.maximum(vc[m], tvc)
                        start = max(start, ttime)
                    if feed:
                        self._fifo_spmm(i, ins, feed, start, cmd, tokens, vc, t_free, total)
                    else:
                        vc[m][m] += 1
                        cost = self._execute(i, ins, m, vc, total)
                        t_free[m] = start + cost.cycles
                        self._account(m, cost)
                    for q in pushes:
                        tokens[q].append((vc[m].copy(), t_free[m]))
                    progressed = True
            if fetch == len(prog) and not any(cmd.values()):
                break
            if not progressed:
                raise SpikecError(self._deadlock(prog, cmd, tokens, fetch))
        left = {q: len(v) for q, v in tokens.items() if v}
        if left:
            raise SpikecError(
                "program ended with unconsumed dependency tokens ("
                + ", ".join(f"{n} in {q}" for q, n in left.items())
                + "): its pushes and pops do not pair up"
            )
        ctr.cycles = max(t_free.values())
        ctr.instructions = len(prog)
        return ctr

    # ------------------------------------------------------------ internals

    def _fifo_spmm(self, i: int, ins: Instruction, feed: list[int], start: int, cmd, tokens, vc, t_free, total) -> None:
        """SPMM i, which reads the weight FIFO, with the LOADs `feed` (the load module's next
        instructions) that fill it: the LOADs pop their tokens and read DRAM, the SPMM
        multiplies their bytes; times from costmodel.fifo_times. The FIFO orders each LOAD
        before its SPMM, so the SPMM's vector clock takes in the load module's."""
        L, C = Module.LOAD, Module.COMPUTE
        loads, chunks = [], []
        for j in feed:
            cmd[L].popleft()
            lins = self.program[j]
            ready = 0
            if lins.pop_next:
                tvc, ready = tokens["c2l"].popleft()
                vc[L] = np.maximum(vc[L], tvc)
            vc[L][L] += 1
            chunks.append(self.dram[_dram_rows(lins)].ravel())
            cost = costmodel.instruction_cost(self.config, lins)
            loads.append((ready, cost.cycles, lins.rows * lins.cols, cost))
        vc[C] = np.maximum(vc[C], vc[L])
        vc[C][C] += 1
        cost = self._execute(i, ins, C, vc, total, np.concatenate(chunks))
        spans, end = costmodel.fifo_times(self.config, t_free[L], [x[:3] for x in loads], start, cost.cycles)
        for (s0, e0), (*_, lcost) in zip(spans, loads):
            self._account(L, lcost, e0 - s0)
        t_free[L] = spans[-1][1]
        t_free[C] = end
        self._account(C, cost, end - start)

    def _deadlock(self, prog, cmd, tokens, fetch) -> str:
        waits = []
        for m in Module:
            if not cmd[m]:
                waits.append(f"{m.name.lower()}: idle")
                continue
            i = cmd[m][0]
            ins = prog[i]
            why = [f"a token in {q} (from {_QUEUE_FROM[q]}; none pending)" for bit, q in _POP[m].items() if getattr(ins, bit) and not tokens[q]]
            if ins.op == Opcode.LOAD and ins.wfifo:
                why.append("the SPMM that reads it from the weight FIFO")
                waits.append(f"load: instruction {i} (LOAD to the weight FIFO) waits for {' and '.join(why)}")
                continue
            if costmodel.fifo_weight_bytes(ins):
                queued = 0
                for j in cmd[Module.LOAD]:
                    if not (prog[j].op == Opcode.LOAD and prog[j].wfifo):
                        break
                    queued += prog[j].rows * prog[j].cols
                why.append(f"its LOADs to the weight FIFO (it takes {costmodel.fifo_weight_bytes(ins)} bytes; the load module's "
                           f"queue has {queued} bytes of them next, and the c2l tokens they pop)")
            why += [f"room in {q} (full, depth {self.config.token_queue_depth})" for bit, q in _PUSH[m].items() if getattr(ins, bit) and len(tokens[q]) >= self.config.token_queue_depth]
            waits.append(f"{m.name.lower()}: instruction {i} ({ins.op.name}) waits for {' and '.join(why)}")
        if fetch < len(prog):
            mod = FORMATS[prog[fetch].op].module
            waits.append(f"fetch: instruction {fetch} waits for room in the {mod.name.lower()} command queue (depth {self.config.cmd_queue_depth})")
        return "deadlock: " + "; ".join(waits)

    def _account(self, m: Module, cost: costmodel.Cost, busy: int | None = None) -> None:
        """Add an instruction's cost; `busy`: the cycles it held its module, when not its own
        cycles (a weight-FIFO LOAD or SPMM waiting for the other)."""
        ctr = self._counters
        setattr(ctr, f"busy_{m.name.lower()}", getattr(ctr, f"busy_{m.name.lower()}") + (cost.cycles if busy is None else busy))
        ctr.dram_read_bytes += cost.dram_read
        ctr.dram_write_bytes += cost.dram_write
        ctr.sram_read_bytes += sum(cost.sram_read.values()) + cost.fifo_read
        ctr.sram_write_bytes += sum(cost.sram_write.values()) + cost.fifo_write
        for k, v in cost.energy_pj(self.config).items():
            ctr.energy_pj[k] += v

    def _access(self, i: int, ins: Instruction, m: Module, vc) -> list:
        """Race-check every region of the instruction; the index of each, in order."""
        who = f"instruction {i} ({ins.op.name})"
        out = []
        for buf, mode, start, rows, cols, pitch in regions(ins, self.config.wgt_addr_bytes):
            idx = element_index(start, rows, cols, pitch)
            self._trackers[buf].access(buf, mode, idx, int(m), vc[m], i, who)
            out.append(idx)
        return out

    def _execute(self, i: int, ins: Instruction, m: Module, vc, total, fifo: np.ndarray | None = None) -> costmodel.Cost:
        cfg = self.config
        if ins.op == Opcode.FINISH:
            for other in (Module.LOAD, Module.STORE):
                if vc[m][other] < total[other]:
                    raise SpikecError(
                        f"instruction {i} (FINISH): does not wait for the last {other.name} instruction "
                        f"(only {vc[m][other]} of {total[other]} are ordered before it by tokens)"
                    )
            return costmodel.instruction_cost(cfg, ins)
        idx = self._access(i, ins, m, vc)
        try:
            with np.errstate(all="ignore"):
                if ins.op in (Opcode.LOAD, Opcode.STORE):
                    self._dma(ins, idx[0])
                    return costmodel.instruction_cost(cfg, ins)
                if ins.op == Opcode.SPMM:
                    vectors, spikes = self._spmm(ins, idx, fifo)
                    self._counters.spikes += spikes
                    self._counters.sops += spikes * ins.m
                    self._counters.spike_vectors += vectors
                    self._counters.skipped_vectors += costmodel.spmm_dense_vectors(cfg, ins) - vectors
                    return costmodel.instruction_cost(cfg, ins, vectors, spikes)
                self._counters.vec_elements += ins.n * ins.len
                if ins.op == Opcode.ENCODE:
                    self._encode(ins, idx)
                else:
                    self._vec(ins, idx)
                return costmodel.instruction_cost(cfg, ins)
        except SpikecError as e:
            raise SpikecError(f"instruction {i} ({ins.op.name}): {e}") from None

    def _dma(self, ins: Instruction, idx) -> None:
        buf = self.buffers[Buffer(ins.buf)]
        dt = np.dtype(ELEMENT_DTYPE[Buffer(ins.buf)])
        row_bytes = ins.cols * dt.itemsize
        rows = _dram_rows(ins)
        if ins.op == Opcode.LOAD:
            buf[idx] = self.dram[rows].view(dt).ravel()
        else:
            data = np.ascontiguousarray(buf[idx]).astype(dt).view(np.uint8).reshape(ins.rows, row_bytes)
            if ins.stride >= row_bytes:
                self.dram[rows] = data
            else:
                for r in range(ins.rows):  # overlapping rows: later rows win, in order
                    self.dram[rows[r]] = data[r]

    def _weights(self, ins: Instruction, raw: np.ndarray) -> np.ndarray:
        """W [k, m] int8 from the SPMM's weight bytes (WGT or FIFO)."""
        if ins.wfmt == WeightFormat.INT8:
            w = raw.view(np.int8)
        else:
            nib = np.stack([raw & 0xF, raw >> 4], axis=1).ravel()[: ins.k * ins.m].astype(np.int8)
            w = np.where(nib >= 8, nib - 16, nib).astype(np.int8)
        w = w.reshape((ins.m, ins.k) if ins.wtrans else (ins.k, ins.m))
        return w.T if ins.wtrans else w

    def _spmm(self, ins: Instruction, idx, fifo: np.ndarray | None = None) -> tuple[int, int]:
        """ACC (+)= spiking product, the weights from WGT or (`fifo`: its bytes) the weight
        FIFO; returns (spike vectors processed, nonzero spikes)."""
        n, k, m, t = ins.n, ins.k, ins.m, ins.t
        qmax = 2**t - 1
        # The input neuron saturates: a code beyond +-(2**t - 1) fires on every plane.
        q = np.clip(self.buffers[Buffer.INP][idx[0]].astype(np.int64), -qmax, qmax).reshape(n, k)
        w = self._weights(ins, self.buffers[Buffer.WGT][idx[1]] if fifo is None else fifo)
        R_ = self.config.pe_rows
        kc = -(-k // R_)
        if ins.neuron == Neuron.TCLIF:
            planes = R.tclif_encode(q, t)  # [t, n, k] ternary, MSB first
            acc = R.horner(planes, w)  # int32, wraps like hardware (the compiler prevents it)
            padded = np.zeros((t, n, kc * R_), np.int8)
            padded[..., :k] = planes
            vectors = int(padded.reshape(t, n, kc, R_).any(axis=-1).sum())
            spikes = int(np.count_nonzero(planes))
        else:
            # Rate IF with b = t + 1 bits: 2**b - 1 binary planes of c = q + 2**t through W
            # (spikec.reference.rate_if_accumulate), plus the folded offset
            # -2**t * sum_k W[k, :]; int32 arithmetic wraps, in any order.
            c = q + 2**t
            acc = R.rate_if_accumulate(c, w) + R.wrap_int32(-(2**t) * w.astype(np.int64).sum(axis=0))
            padded = np.zeros((n, kc * R_), np.int64)
            padded[:, :k] = c
            vectors = int(padded.reshape(n, kc, R_).max(axis=-1).sum())  # plane p is live where some c > p
            spikes = int(c.sum())
        out = self.buffers[Buffer.ACC]
        dst = idx[-1]
        if ins.acc_mode == AccMode.ACCUMULATE:
            acc = out[dst].reshape(n, m) + acc  # int32 + int32 wraps
        out[dst] = acc.astype(np.int32).ravel()
        return vectors, spikes

    def _encode(self, ins: Instruction, idx) -> None:
        x = self.buffers[Buffer.VEC][idx[0]].reshape(ins.n, ins.len)
        scl = self.buffers[Buffer.SCL]
        qmax = 2**ins.t - 1
        if ins.scale == ScaleMode.DYNAMIC:
            if not np.isfinite(x).all():
                raise SpikecError("non-finite input (inf or NaN) with a dynamic scale: a device fault")
            s = R.scale_per_token(x, ins.t + 1)  # max|x_i| / (2**t - 1), 1.0 for an all-zero row
            scl[idx[1]] = s[:, 0]
        else:
            s = scl[idx[1]].reshape(())
            if not (np.isfinite(s) and s > 0):
                raise SpikecError(f"static scale SCL[{ins.scl}] = {s} is not finite and > 0: a device fault")
        q = R.quantize(x, s, qmax, where=f"VEC[{ins.src}]")  # raises on NaN (a device fault)
        if ins.dst_buf == EncodeDst.INP:
            self.buffers[Buffer.INP][idx[2]] = q.astype(np.int16).ravel()
        else:
            self.buffers[Buffer.WGT][idx[2]] = q.astype(np.int8).view(np.uint8).ravel()

    def _vec(self, ins: Instruction, idx) -> None:
        func = VecFunc(ins.func)
        n, L = ins.n, ins.len
        V, S = self.buffers[Buffer.VEC], self.buffers[Buffer.SCL]

        def get(j: int, buf=V, shape=(n, L)):
            return buf[idx[j]].reshape(shape)

        if func == VecFunc.DEQ:
            acc = self.buffers[Buffer.ACC][idx[0]].reshape(n, L)
            s_x = get(1, S, (n, 1) if ins.flags & VecFlag.PER_ROW else ())
            sw = S[idx[2]]
            # The reference's order: (float32(acc) * s_x) * s_w, then + bias.
            y = R.dequantize(acc, s_x) * sw[:L]
            if ins.flags & VecFlag.BIAS:
                y = y + sw[L:]
        elif func == VecFunc.COPY:
            y = get(0).copy()
        elif func in (VecFunc.ADD, VecFunc.MUL):
            a, b = get(0), get(1)
            y = a + b if func == VecFunc.ADD else a * b
        elif func in (VecFunc.ADD_ROW, VecFunc.MUL_ROW):
            a, r = get(0), get(1, V, (L,))
            y = a + r if func == VecFunc.ADD_ROW else a * r
        elif func == VecFunc.SCALE:
            y = get(0) * get(1, S, ())
        elif func == VecFunc.RMSNORM:
            y = vec_rmsnorm(get(0), get(1, V, (L,)), get(2, S, ()))
        elif func == VecFunc.LAYERNORM:
            gb = get(1, V, (2, L))
            y = vec_layernorm(get(0), gb[0], gb[1], get(2, S, ()))
        elif func == VecFunc.SOFTMAX:
            y = vec_softmax(get(0))
        elif func == VecFunc.SILU:
            y = vec_silu(get(0))
        elif func == VecFunc.GELU:
            y = vec_gelu(get(0))
        elif func == VecFunc.ROPE:
            y = vec_rope(get(0), get(1, V, (n, L // 2)), get(2, V, (n, L // 2)))
        else:  # pragma: no cover - the decoder admits only the functions above
            raise SpikecError(f"unimplemented VEC function {func.name}")
        V[idx[-1]] = np.asarray(y, F32).ravel()
