"""Random VALID accelerator programs, for co-simulating the RTL against the functional
simulator (tests/test_rtl_cosim.py, scripts/rtl_cosim.py).

    prog, image = random_program(np.random.default_rng(seed), HwConfig.load("small"))

gives a program (PROGRAM bytes) and a DRAM image to place at address 0. Every program is
valid by construction (docs/isa.md sections 3 and 5), so its result is one well-defined
DRAM image whatever the relative speed of the modules:

- every buffer element read was written earlier in the run, every region is inside the
  configuration's buffers and DRAM, FINISH is last and ordered after every LOAD/STORE;
- no races: the generator keeps the simulator's vector clocks itself (per buffer element
  and per byte of the DRAM area STOREs write) and, for each new instruction, adds the
  dependency tokens that order it after every conflicting access. A needed ordering
  between adjacent modules is one token (pushed by the other module's latest
  instruction, popped by the new one, or pushed by a *filler* -- a one-element LOAD into /
  STORE from reserved scratch -- when that would overfill the queue); between LOAD and
  STORE it goes through a *barrier*, a 1x1x1 SPMM of the compute module on reserved
  scratch elements (the last two elements of every buffer are never used otherwise);
- no deadlock and no leftover tokens: every pop takes a token pushed earlier in program
  order, and at every program point each queue holds at most `token_queue_depth`
  tokens (then the earliest unexecuted instruction can always run); the l2c and s2c
  queues also get random bursts of several outstanding tokens, drained by compute;
- floats loaded into VEC/SCL are finite (varied magnitudes, zeros, some subnormals);
  ENCODE only reads VEC elements known to be finite (loaded, or COPYed from such), static
  scales and norm epsilons are positive: nothing faults. int32 wrap-around is allowed.

Exercised: LOAD/STORE with random strides (0, overlapping, gaps, unaligned DRAM
addresses), overlapping STORE rows; SPMM TC-LIF (t 1..15) and IF (t <= 7), int8/int4,
wtrans, OVERWRITE/ACCUMULATE, acc_stride > m, INP codes loaded directly (beyond 2**t - 1:
the neuron saturates), int32 wrapping (extreme ACC values accumulated); ENCODE dynamic and
static into INP and WGT (then used as weights); the VEC functions in `vec_funcs`; several
token groups (SPMMs of different t into one ACC); random token-queue use.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction, encode_program, vec_dst_overlap
from spikec.isa.fields import (
    ELEMENT_BYTES,
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
)
from spikec.isa.hwconfig import HwConfig
from spikec.isa.tiling import weight_bytes

ALL_VEC_FUNCS = tuple(VecFunc)
DRAM = "DRAM"  # the tracked DRAM area (STORE destinations), a pseudo-buffer of bytes

# queue name: (from module, to module, push bit, pop bit)
QUEUES = {
    "l2c": (Module.LOAD, Module.COMPUTE, "push_next", "pop_prev"),
    "c2l": (Module.COMPUTE, Module.LOAD, "push_prev", "pop_next"),
    "c2s": (Module.COMPUTE, Module.STORE, "push_next", "pop_prev"),
    "s2c": (Module.STORE, Module.COMPUTE, "push_prev", "pop_next"),
}
_INTO = {(f, t): q for q, (f, t, _, _) in QUEUES.items()}
_MODULE = {Opcode.LOAD: Module.LOAD, Opcode.STORE: Module.STORE}

# value classes of buffer elements (VEC/SCL floats; other buffers use only 0/1)
UNWRITTEN, ANY, FINITE, POSITIVE = 0, 1, 2, 3


def _module(op: Opcode) -> Module:
    return _MODULE.get(op, Module.COMPUTE)


class _Track:
    """The simulator's race bookkeeping for one buffer (or the DRAM area), plus the value
    class of each element."""

    def __init__(self, size: int) -> None:
        self.w_mod = np.full(size, -1, np.int8)
        self.w_clk = np.zeros(size, np.int64)
        self.r_clk = np.zeros((3, size), np.int64)
        self.cls = np.zeros(size, np.uint8)


class _Gen:
    def __init__(self, rng: np.random.Generator, cfg: HwConfig, vec_funcs, *, encode: bool, p_extra_token: float,
                 p_burst: float) -> None:
        if cfg.wgt_addr_bytes != 1:  # random WGT addresses are byte offsets, as the RTL's
            raise SpikecError(f"random programs need a byte-addressed WGT (wgt_addr_bytes 1), not {cfg.wgt_addr_bytes}")
        self.rng, self.cfg = rng, cfg
        self.vec_funcs = tuple(VecFunc(f) for f in vec_funcs)
        self.encode_ok = encode
        self.p_extra, self.p_burst = p_extra_token, p_burst
        self.depth = cfg.token_queue_depth
        self.prog: list[dict] = []  # {"op", "f" (fields incl. dep bits), "m", "vc"}
        self.vc = {m: np.zeros(3, np.int64) for m in Module}
        self.latest: dict[Module, int | None] = {m: None for m in Module}
        self.pending = {q: deque() for q in QUEUES}  # program indices of pushers not yet popped
        self.count = {q: [] for q in QUEUES}  # tokens outstanding after each instruction
        self.burst = {"l2c": 0, "s2c": 0}
        self.size = {b: cfg.buffer_elems(b) for b in Buffer}
        # the last two elements of every buffer are reserved (scratch for barriers/fillers)
        self.usable = {b: self.size[b] - 2 for b in Buffer}
        self.INP_SCR, self.INP_SCR2 = self.size[Buffer.INP] - 2, self.size[Buffer.INP] - 1
        self.WGT_SCR, self.ACC_SCR = self.size[Buffer.WGT] - 1, self.size[Buffer.ACC] - 1
        small = cfg.buffer_elems(Buffer.SCL) < 1024
        self.out_size = 8192 if small else 32768  # DRAM [0, out_size): STORE destinations, tracked
        self.DRAM_SCR = 0  # 16 bytes at 0: filler STOREs
        self.track = {b: _Track(self.size[b]) for b in Buffer}
        self.track[DRAM] = _Track(self.out_size)
        self.image = bytearray(rng.integers(0, 256, self.out_size, dtype=np.uint8).tobytes())
        self.outputs: list[tuple[Buffer, int, int, int, int]] = []  # (buf, start, rows, cols, pitch) results not yet stored
        self.scratch_ready = False
        self.sequential = False
        self.bump = {b: 0 for b in Buffer}
        R, C = cfg.pe_rows, cfg.pe_cols
        self.kmax, self.mmax = 3 * R + 3, 3 * C + 3
        self.nmax = 6
        self.lmax = min(48, 2 * cfg.vec_lanes + 9)

    # ------------------------------------------------------------ DRAM input data

    def _alloc_in(self, nbytes: int) -> int:
        gap = int(self.rng.integers(0, 8))
        addr = len(self.image) + gap
        self.image.extend(b"\0" * (gap + nbytes))
        return addr

    def _floats(self, n: int, cls: int) -> np.ndarray:
        rng = self.rng
        if cls == POSITIVE:
            return (2.0 ** rng.uniform(-10, 6, n) * rng.uniform(1, 2, n)).astype(np.float32)
        kind = rng.choice(5, n, p=[0.08, 0.74, 0.08, 0.05, 0.05])
        mag = 2.0 ** rng.uniform(-14, 14, n) * rng.uniform(1, 2, n)
        v = np.where(rng.random(n) < 0.5, -mag, mag)
        v = np.where(kind == 0, np.where(rng.random(n) < 0.5, -0.0, 0.0), v)
        v = np.where(kind == 2, rng.integers(-8, 9, n).astype(np.float64), v)  # small integers (ties in rint)
        v = np.where(kind == 3, rng.standard_normal(n), v)
        sub = (rng.integers(1, 1 << 23, n).astype(np.uint32)).view(np.float32).astype(np.float64)  # subnormals
        v = np.where(kind == 4, np.where(rng.random(n) < 0.5, -sub, sub), v)
        return v.astype(np.float32)

    def _data(self, buf: Buffer, n: int, cls: int) -> bytes:
        """n elements of buf's type, as DRAM bytes."""
        rng = self.rng
        if buf in (Buffer.VEC, Buffer.SCL):
            return self._floats(n, cls).astype("<f4").tobytes()
        if buf == Buffer.INP:
            kind = rng.choice(3, n, p=[0.55, 0.3, 0.15])
            v = np.where(kind == 0, rng.integers(-15, 16, n), np.where(kind == 1, rng.integers(-300, 301, n),
                                                                       rng.integers(-32768, 32768, n)))
            return v.astype("<i2").tobytes()
        if buf == Buffer.WGT:
            return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        kind = rng.choice(3, n, p=[0.6, 0.25, 0.15])  # ACC: small, medium, extreme (wraps when accumulated)
        v = np.where(kind == 0, rng.integers(-1000, 1001, n), np.where(kind == 1, rng.integers(-(1 << 24), 1 << 24, n),
                                                                       rng.integers(-(1 << 31), 1 << 31, n)))
        return v.astype("<i4").tobytes()

    # ------------------------------------------------------------ emission with tokens

    def _need(self, accesses, m: Module) -> np.ndarray:
        need = np.zeros(3, np.int64)
        for space, mode, idx in accesses:
            t = self.track[space]
            wm, wc = t.w_mod[idx], t.w_clk[idx]
            if mode == "r":
                assert (wm >= 0).all(), f"generator bug: {space} read before written"
            for x in Module:
                if x == m:
                    continue
                sel = wm == x
                if sel.any():
                    need[x] = max(need[x], int(wc[sel].max()))
                if mode == "w":
                    rc = t.r_clk[x][idx]
                    if rc.size:
                        need[x] = max(need[x], int(rc.max()))
        return need

    def _accesses(self, ins: Instruction) -> list:
        from spikec.runtime.simulator import element_index, regions

        out = []
        for buf, mode, start, rows, cols, pitch in regions(ins):
            idx = element_index(start, rows, cols, pitch)
            out.append((buf, mode, np.arange(idx.start, idx.stop) if isinstance(idx, slice) else idx))
        if ins.op in (Opcode.LOAD, Opcode.STORE) and ins.dram < self.out_size:  # the tracked DRAM area
            rb = ins.cols * ELEMENT_BYTES[Buffer(ins.buf)]
            b = (ins.dram + np.arange(ins.rows, dtype=np.int64)[:, None] * ins.stride + np.arange(rb)).ravel()
            assert b.max() < self.out_size
            out.append((DRAM, "w" if ins.op == Opcode.STORE else "r", b))
        return out

    def _retro_ok(self, q: str) -> bool:
        src = QUEUES[q][0]
        a = self.latest[src]
        if a is None or self.prog[a]["f"].get(QUEUES[q][2]):
            return False
        c = self.count[q][a:]
        return (max(c) if c else 0) + 1 <= self.depth

    def _retro(self, q: str) -> int:
        a = self.latest[QUEUES[q][0]]
        self.prog[a]["f"][QUEUES[q][2]] = 1
        for i in range(a, len(self.count[q])):
            self.count[q][i] += 1
        return a

    def emit(self, op: Opcode, fields: dict, extra_need: dict | None = None, filler: bool = False,
             cls_update=None) -> int:
        """Append one instruction with the tokens that order it; returns its index."""
        m = _module(op)
        ins = Instruction(op, **fields)
        acc = self._accesses(ins) if op != Opcode.FINISH else []

        def need_now() -> np.ndarray:
            need = self._need(acc, m)
            for x, v in (extra_need or {}).items():
                need[x] = max(need[x], v)
            if op == Opcode.FINISH:
                for x in (Module.LOAD, Module.STORE):
                    if self.latest[x] is not None:
                        need[x] = max(need[x], self.prog[self.latest[x]]["vc"][x])
            need[m] = 0
            return need

        pops: list[str] = []
        if m == Module.COMPUTE:
            while True:  # barriers and fillers first, then the pops
                need, changed = need_now(), False
                for x in (Module.LOAD, Module.STORE):
                    q = _INTO[(x, m)]
                    pend = self.pending[q]
                    if pend and max(self.vc[m][x], self.prog[pend[0]]["vc"][x]) < need[x]:
                        self._barrier()  # pops the oldest token
                        changed = True
                        break
                    if op == Opcode.FINISH and len(pend) > 1:
                        self._barrier()
                        changed = True
                        break
                    if not pend and self.vc[m][x] < need[x] and not self._retro_ok(q):
                        self._filler(x)  # a harmless LOAD/STORE that pushes q
                        changed = True
                        break
                if not changed:
                    break
            need = need_now()
            for x in (Module.LOAD, Module.STORE):
                q = _INTO[(x, m)]
                if self.pending[q]:
                    pops.append(q)
                elif self.vc[m][x] < need[x] or (self.rng.random() < self.p_extra and self._retro_ok(q)):
                    assert self._retro_ok(q)
                    self.pending[q].append(self._retro(q))
                    pops.append(q)
        else:
            far = Module.STORE if m == Module.LOAD else Module.LOAD
            need = need_now()
            if self.vc[m][far] < need[far]:
                b = self._barrier(extra={far: int(need[far])})
                extra_need = dict(extra_need or {})
                extra_need[Module.COMPUTE] = int(self.prog[b]["vc"][Module.COMPUTE])
                need = need_now()
            q = _INTO[(Module.COMPUTE, m)]
            assert not self.pending[q]
            if self.vc[m][Module.COMPUTE] < need[Module.COMPUTE] or (self.rng.random() < self.p_extra and self._retro_ok(q)):
                assert self._retro_ok(q), "generator bug: compute already pushed but not covered"
                self.pending[q].append(self._retro(q))
                pops.append(q)
        # execute: pop, tick, record
        vc = self.vc[m].copy()
        f = dict(fields)
        for q in pops:
            a = self.pending[q].popleft()
            vc = np.maximum(vc, self.prog[a]["vc"])
            f[QUEUES[q][3]] = 1
        vc[m] += 1
        self.vc[m] = vc
        clock = int(vc[m])
        need = need_now()
        assert all(vc[x] >= need[x] for x in Module if x != m), "generator bug: an access stays unordered"
        for space, mode, idx in acc:
            t = self.track[space]
            if mode == "r":
                t.r_clk[m][idx] = clock
            else:
                t.w_mod[idx], t.w_clk[idx] = m, clock
                if space != DRAM:
                    t.cls[idx] = ANY
        i = len(self.prog)
        self.prog.append({"op": op, "f": f, "m": m, "vc": vc.copy()})
        self.latest[m] = i
        # pushes (bursts on l2c / s2c)
        for q in self.count:
            prev = self.count[q][-1] if self.count[q] else 0
            self.count[q].append(prev - (q in pops))
        q = {Module.LOAD: "l2c", Module.STORE: "s2c"}.get(m)
        if q and not filler and self.burst[q] > 0 and len(self.pending[q]) < self.depth:
            self.burst[q] -= 1
            f[QUEUES[q][2]] = 1
            self.pending[q].append(i)
            self.count[q][-1] += 1
        elif q and not filler and self.rng.random() < self.p_burst:
            self.burst[q] = int(self.rng.integers(2, self.depth + 2))
        if cls_update is not None:
            cls_update()
        return i

    def _barrier(self, extra: dict | None = None) -> int:
        self._ensure_scratch()
        return self.emit(Opcode.SPMM, dict(inp=self.INP_SCR, wgt=self.WGT_SCR, acc=self.ACC_SCR, n=1, k=1, m=1,
                                           acc_stride=1, t=1),
                         extra_need=extra)

    def _filler(self, x: Module) -> int:
        self._ensure_scratch()
        if x == Module.LOAD:
            i = self.emit(Opcode.LOAD, dict(buf=Buffer.INP, sram=self.INP_SCR2, dram=self.scr_dram, stride=0, rows=1, cols=1),
                          filler=True)
            q = "l2c"
        else:
            i = self.emit(Opcode.STORE, dict(buf=Buffer.INP, sram=self.INP_SCR, dram=self.DRAM_SCR, stride=0, rows=1, cols=1),
                          filler=True)
            q = "s2c"
        assert not self.pending[q]
        self.prog[i]["f"][QUEUES[q][2]] = 1
        self.pending[q].append(i)
        self.count[q][-1] += 1
        return i

    def _ensure_scratch(self) -> None:
        if self.scratch_ready:
            return
        self.scratch_ready = True
        self.scr_dram = self._alloc_in(4)
        self.image[self.scr_dram:self.scr_dram + 4] = self._data(Buffer.INP, 2, ANY)
        w = self._alloc_in(1)
        self.image[w] = int(self.rng.integers(0, 256))
        self.emit(Opcode.LOAD, dict(buf=Buffer.INP, sram=self.INP_SCR, dram=self.scr_dram, stride=0, rows=1, cols=1))
        self.emit(Opcode.LOAD, dict(buf=Buffer.WGT, sram=self.WGT_SCR, dram=w, stride=0, rows=1, cols=1))

    # ------------------------------------------------------------ regions

    def _valid(self, buf: Buffer, cls_min: int) -> np.ndarray:
        return self.track[buf].cls[: self.usable[buf]] >= cls_min

    def _find(self, buf: Buffer, length: int, cls_min: int) -> int | None:
        ok = self._valid(buf, cls_min)
        if length > ok.size:
            return None
        cs = np.concatenate([[0], np.cumsum(ok, dtype=np.int64)])
        starts = np.flatnonzero(cs[length:] - cs[:-length] == length)
        return int(self.rng.choice(starts)) if starts.size else None

    def _factor(self, length: int, max_rows: int = 16) -> tuple[int, int]:
        divs = [d for d in range(1, min(length, max_rows) + 1) if length % d == 0]
        rows = int(self.rng.choice(divs))
        return rows, length // rows

    def _stride(self, rows: int, row_bytes: int, store: bool) -> int:
        r = self.rng.random()
        if rows == 1:
            return int(self.rng.integers(0, 1 << 12)) if r < 0.3 else row_bytes
        if r < 0.45:
            return row_bytes
        if r < 0.7:
            return row_bytes + int(self.rng.integers(1, 40))
        if r < 0.85:
            return 0
        return int(self.rng.integers(1, row_bytes)) if row_bytes > 1 else 0

    def load(self, buf: Buffer, start: int, length: int, cls: int = FINITE) -> None:
        """LOAD `length` elements at `start` of buf with fresh DRAM data of value class cls."""
        rows, cols = self._factor(length)
        eb = ELEMENT_BYTES[buf]
        rb = cols * eb
        stride = self._stride(rows, rb, False)
        if buf in (Buffer.VEC, Buffer.SCL) and rows > 1:
            stride -= stride % eb  # overlapping float rows stay element-aligned (no NaN made of two halves)
        span = (rows - 1) * stride + rb if rows > 1 else rb
        addr = self._alloc_in(span)
        self.image[addr:addr + span] = self._data(buf, -(-span // eb), cls)[:span]
        self.emit(Opcode.LOAD, dict(buf=buf, sram=start, dram=addr, stride=stride, rows=rows, cols=cols),
                  cls_update=lambda: self._set_cls(buf, start, length, cls))

    def _set_cls(self, buf, start, length, cls) -> None:
        self.track[buf].cls[start:start + length] = cls if buf in (Buffer.VEC, Buffer.SCL) else ANY

    def region(self, buf: Buffer, length: int, cls_min: int = ANY, reuse: float = 0.6, load_cls: int | None = None) -> int:
        """Start of `length` readable elements of buf: an existing one, or freshly LOADed."""
        if self.rng.random() < reuse and not self.sequential:
            s = self._find(buf, length, cls_min)
            if s is not None:
                return s
        start = self.dst(buf, length)
        self.load(buf, start, length, load_cls if load_cls is not None else max(cls_min, FINITE))
        return start

    def dst(self, buf: Buffer, length: int) -> int:
        if self.sequential:  # fresh elements, in order (wrapping when the buffer is used up)
            start = self.bump[buf] if self.bump[buf] + length <= self.usable[buf] else 0
            self.bump[buf] = start + length
            return start
        return int(self.rng.integers(0, self.usable[buf] - length + 1))

    # ------------------------------------------------------------ instructions

    def spmm(self, neuron: Neuron | None = None) -> None:
        rng = self.rng
        if neuron is None:
            neuron = Neuron.IF if rng.random() < 0.25 else Neuron.TCLIF
        if neuron == Neuron.IF:
            t = int(rng.choice([1, 2, 3, 4, 5, 6, 7], p=[0.25, 0.25, 0.2, 0.12, 0.08, 0.05, 0.05]))
        else:
            t = int(rng.integers(1, 16)) if rng.random() < 0.4 else int(rng.integers(1, 6))
        n = int(rng.integers(1, self.nmax + 1 if t < 6 or neuron == Neuron.TCLIF else 3))
        k = int(rng.integers(1, self.kmax + 1))
        m = int(rng.integers(1, self.mmax + 1))
        wfmt = WeightFormat.INT4 if rng.random() < 0.35 else WeightFormat.INT8
        wtrans = int(rng.random() < 0.3)
        acc_stride = m if rng.random() < 0.6 else m + int(rng.integers(1, 8))
        mode = AccMode.ACCUMULATE if rng.random() < 0.35 else AccMode.OVERWRITE
        wbytes = weight_bytes(k, m, 8 if wfmt == WeightFormat.INT8 else 4)
        inp = self.region(Buffer.INP, n * k)
        wgt = self.region(Buffer.WGT, wbytes)
        span = (n - 1) * acc_stride + m
        if mode == AccMode.ACCUMULATE:
            acc = None
            if rng.random() < 0.6:  # accumulate onto an earlier product (another token group)
                cands = [o for o in self.outputs if o[0] == Buffer.ACC]
                for o in cands:
                    _, s, r, c, p = o
                    if r >= n and c >= m and p == acc_stride:
                        acc = s
                        break
            if acc is None:
                acc = self.dst(Buffer.ACC, span)
                idx = (acc + np.arange(n)[:, None] * acc_stride + np.arange(m)).ravel()
                if not (self.track[Buffer.ACC].cls[idx] >= ANY).all():
                    self.load(Buffer.ACC, acc, span)
        else:
            acc = self.dst(Buffer.ACC, span)
        self.emit(Opcode.SPMM, dict(inp=inp, wgt=wgt, acc=acc, n=n, k=k, m=m, acc_stride=acc_stride, t=t, neuron=neuron,
                                    wfmt=wfmt, wtrans=wtrans, acc_mode=mode))
        self.outputs.append((Buffer.ACC, acc, n, m, acc_stride))

    def encode(self, static: bool | None = None) -> None:
        rng = self.rng
        n, length = int(rng.integers(1, self.nmax + 1)), int(rng.integers(1, self.lmax + 1))
        to_wgt = rng.random() < 0.3
        t = int(rng.integers(1, 8 if to_wgt else 16))
        if static is None:
            static = rng.random() < 0.4
        src = self.region(Buffer.VEC, n * length, FINITE)
        if static:
            scl = self.region(Buffer.SCL, 1, POSITIVE, load_cls=POSITIVE)
        else:
            scl = self.dst(Buffer.SCL, n)
        dbuf = Buffer.WGT if to_wgt else Buffer.INP
        d = self.dst(dbuf, n * length)

        def cls():
            if not static:
                self.track[Buffer.SCL].cls[scl:scl + n] = POSITIVE

        self.emit(Opcode.ENCODE, dict(src=src, dst=d, dst_buf=EncodeDst.WGT if to_wgt else EncodeDst.INP, n=n, len=length, t=t,
                                      scale=ScaleMode.STATIC if static else ScaleMode.DYNAMIC, scl=scl), cls_update=cls)
        self.outputs.append((dbuf, d, n, length, length))
        if not static:
            self.outputs.append((Buffer.SCL, scl, 1, n, n))

    def vec(self, func: VecFunc | None = None) -> None:
        rng = self.rng
        func = VecFunc(rng.choice(self.vec_funcs) if func is None else func)
        n, length = int(rng.integers(1, self.nmax + 1)), int(rng.integers(1, self.lmax + 1))
        if func == VecFunc.ROPE and length % 2:
            length += 1
        NL = n * length
        f = dict(func=func, n=n, len=length)
        copy_cls = None
        if func == VecFunc.DEQ:
            src0 = self.region(Buffer.ACC, NL)
            flags = int(rng.integers(0, 4))
            src1 = self.region(Buffer.SCL, n if flags & VecFlag.PER_ROW else 1)
            src2 = self.region(Buffer.SCL, 2 * length if flags & VecFlag.BIAS else length)
            f.update(src0=src0, src1=src1, src2=src2, flags=flags)
        else:
            src0 = self.region(Buffer.VEC, NL)
            f["src0"] = src0
            if func == VecFunc.COPY:
                copy_cls = self.track[Buffer.VEC].cls[src0:src0 + NL].copy()
            elif func in (VecFunc.ADD, VecFunc.MUL):
                f["src1"] = self.region(Buffer.VEC, NL)
            elif func in (VecFunc.ADD_ROW, VecFunc.MUL_ROW):
                f["src1"] = self.region(Buffer.VEC, length)
            elif func == VecFunc.SCALE:
                f["src1"] = self.region(Buffer.SCL, 1, FINITE)
            elif func == VecFunc.RMSNORM:
                f["src1"] = self.region(Buffer.VEC, length)
                f["src2"] = self.region(Buffer.SCL, 1, POSITIVE, load_cls=POSITIVE)
            elif func == VecFunc.LAYERNORM:
                f["src1"] = self.region(Buffer.VEC, 2 * length)
                f["src2"] = self.region(Buffer.SCL, 1, POSITIVE, load_cls=POSITIVE)
            elif func == VecFunc.ROPE:
                f["src1"] = self.region(Buffer.VEC, NL // 2)
                f["src2"] = self.region(Buffer.VEC, NL // 2)
        d = src0 if func != VecFunc.DEQ and rng.random() < 0.2 else self.dst(Buffer.VEC, NL)  # in place sometimes
        if vec_dst_overlap(Instruction(Opcode.VEC, **f, dst=d)):
            for _ in range(64):  # apart from every source (or exactly in place)
                d = self.dst(Buffer.VEC, NL)
                if not vec_dst_overlap(Instruction(Opcode.VEC, **f, dst=d)):
                    break
            else:
                return  # no room: skip this instruction
        f["dst"] = d

        def cls():
            self.track[Buffer.VEC].cls[d:d + NL] = copy_cls if copy_cls is not None else ANY

        self.emit(Opcode.VEC, f, cls_update=cls)
        self.outputs.append((Buffer.VEC, d, n, length, length))

    def store(self, out=None) -> None:
        rng = self.rng
        if out is None:
            if self.outputs and rng.random() < 0.7:
                out = self.outputs.pop(int(rng.integers(0, len(self.outputs))))
            else:
                buf = Buffer(int(rng.integers(0, 5)))
                length = int(rng.integers(1, 40))
                s = self._find(buf, length, ANY)
                if s is None:
                    return
                out = (buf, s, 1, length, length)
        buf, start, rows, cols, pitch = out
        pieces = [(start, rows * cols)] if pitch == cols else [(start + r * pitch, cols) for r in range(rows)]
        if len(pieces) > 1 and rng.random() < 0.5:
            pieces = [pieces[int(rng.integers(0, len(pieces)))]]
        eb = ELEMENT_BYTES[buf]
        for s, length in pieces:
            r, c = self._factor(length)
            rb = c * eb
            stride = self._stride(r, rb, True)
            span = (r - 1) * stride + rb if r > 1 else rb
            if span > self.out_size - 16:
                r, c, stride, span = 1, length, rb, length * eb
                rb = span
            addr = int(rng.integers(16, self.out_size - span + 1))
            self.emit(Opcode.STORE, dict(buf=buf, sram=s, dram=addr, stride=stride, rows=r, cols=c))

    def readback(self) -> None:
        """LOAD integer data back from where an earlier STORE wrote it (a DRAM round trip,
        ordered store -> compute -> load by the generator's tokens)."""
        rng = self.rng
        stores = [p for p in self.prog if p["op"] == Opcode.STORE and p["f"]["dram"] >= 16
                  and Buffer(p["f"]["buf"]) in (Buffer.INP, Buffer.WGT, Buffer.ACC)]
        if not stores:
            return
        p = stores[int(rng.integers(0, len(stores)))]["f"]
        buf = Buffer(p["buf"])
        length = p["rows"] * p["cols"]
        if length > self.usable[buf]:
            return
        start = self.dst(buf, length)
        self.emit(Opcode.LOAD, dict(buf=buf, sram=start, dram=p["dram"], stride=p["stride"], rows=p["rows"], cols=p["cols"]),
                  cls_update=lambda: self._set_cls(buf, start, length, ANY))

    # ------------------------------------------------------------ the program

    def finish(self) -> tuple[bytes, bytes]:
        while self.outputs:  # every result is observed
            self.store(self.outputs.pop(0))
        self.emit(Opcode.FINISH, {})
        assert not any(self.pending.values()), "generator bug: leftover tokens"
        prog = [Instruction(p["op"], **p["f"]) for p in self.prog]
        return encode_program(prog), bytes(self.image)

    def run(self, n_ops: int) -> tuple[bytes, bytes]:
        rng = self.rng
        kinds = ["spmm", "vec", "load", "store", "readback"] + (["encode"] if self.encode_ok else [])
        w = {"spmm": 0.3, "encode": 0.17, "vec": 0.28 if self.vec_funcs else 0.0, "load": 0.08, "store": 0.12, "readback": 0.05}
        p = np.array([w[k] for k in kinds])
        # scratch first: a barrier's own accesses then never need a token newer than any pending one
        self._ensure_scratch()
        for _ in range(n_ops):
            kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
            if kind == "load":
                buf = Buffer(int(rng.integers(0, 5)))
                length = int(rng.integers(1, 40))
                self.load(buf, self.dst(buf, length), length, POSITIVE if rng.random() < 0.2 else FINITE)
            else:
                getattr(self, kind)()
        return self.finish()


def random_program(rng: np.random.Generator | int, cfg: HwConfig | str, *, vec_funcs=ALL_VEC_FUNCS, encode: bool = True,
                   n_ops: int | None = None, p_extra_token: float = 0.1, p_burst: float = 0.15) -> tuple[bytes, bytes]:
    """A random valid program for `cfg` and the DRAM image (from address 0) it runs on.

    `vec_funcs`: the VEC functions it may use (e.g. those an RTL core implements; empty
    for none); `encode`: whether it uses ENCODE; `n_ops`: number of random operations
    (default 3..24), each one instruction plus the LOADs its operands need.
    VEC destinations are apart from their sources or exactly in place (docs/isa.md)."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if not isinstance(cfg, HwConfig):
        cfg = HwConfig.load(cfg)
    g = _Gen(rng, cfg, vec_funcs, encode=encode, p_extra_token=p_extra_token, p_burst=p_burst)
    return g.run(int(rng.integers(3, 25)) if n_ops is None else n_ops)


KINDS = ("LOAD", "STORE", "SPMM.TCLIF", "SPMM.IF", "ENCODE.DYNAMIC", "ENCODE.STATIC") + tuple(f"VEC.{f.name}" for f in VecFunc)


def kind_program(rng: np.random.Generator | int, cfg: HwConfig | str, kind: str, count: int = 8) -> tuple[bytes, bytes]:
    """A valid program whose `count` random instructions of one kind (KINDS) are the only
    work of their module, to attribute cycles per instruction kind: for a compute kind the
    compute module runs only those (plus FINISH; no barriers), fed by LOADs and followed
    by the STOREs of the results; for LOAD only LOADs; for STORE the loads, one barrier,
    then the STOREs. No extra tokens or bursts."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if not isinstance(cfg, HwConfig):
        cfg = HwConfig.load(cfg)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    g = _Gen(rng, cfg, ALL_VEC_FUNCS, encode=True, p_extra_token=0.0, p_burst=0.0)
    g.sequential = True  # fresh regions: no LOAD overwrites a result, so no barriers (scratch loaded lazily)
    op, _, sub = kind.partition(".")
    if kind == "LOAD":
        for _ in range(count):
            buf = Buffer(int(rng.integers(0, 5)))
            length = int(rng.integers(1, 64))
            g.load(buf, g.dst(buf, length), length)
        g.emit(Opcode.FINISH, {})
        return encode_program([Instruction(p["op"], **p["f"]) for p in g.prog]), bytes(g.image)
    if kind == "STORE":
        regs = []
        for _ in range(count):
            buf = Buffer(int(rng.integers(0, 5)))
            length = int(rng.integers(1, 64))
            start = g.dst(buf, length)
            g.load(buf, start, length)
            regs.append((buf, start, 1, length, length))
        for r in regs:
            g.store(r)
        return g.finish()
    for _ in range(count):
        if op == "SPMM":
            g.spmm(Neuron[sub])
        elif op == "ENCODE":
            g.encode(static=sub == "STATIC")
        else:
            g.vec(VecFunc[sub])
    return g.finish()


__all__ = ["random_program", "kind_program", "KINDS", "ALL_VEC_FUNCS"]
