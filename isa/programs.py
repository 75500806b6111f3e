"""The instruction streams of the accelerator's kernels, built from their descriptors.

A kernel's descriptor (isa/descriptors.py; JSON in the .sbin's `isa/kernels` section) says where
its data lies in DRAM and how it is tiled; the stream of one call is a deterministic
function of the descriptor and the call's rows, built at run time because the token count
varies (prefill vs decode): `build_program` (spiking products), `build_vec_program`
(vector functions), `build_attention_program` (activation x activation products). The
compile-time lowering (passes/lower_*.py) builds the stored representative program with
the same functions. Dependency tokens: docs/isa.md section 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spikec.errors import SpikecError
from spikec.isa.descriptors import AttentionKernel, ProductKernel, VecKernel
from spikec.isa.encoding import Instruction
from spikec.isa.fields import (FORMATS, AccMode, Buffer, EncodeDst, Module, Neuron, Opcode, ScaleMode, VecFlag, VecFunc,
                               WeightFormat)
from spikec.isa.hwconfig import HwConfig
from spikec.isa.tiling import (CONST_ROWS, HAS_SCALAR, TILE_ALIGN, Tile, TilingError, align, operand_cols, plan_attention,
                               plan_vec, scale_row_offsets, scales_per_feature, weight_bytes)
from spikec.isa import costmodel



# ---------------------------------------------------------------- programs


@dataclass
class Group:
    """Consecutive rows of one kernel call sharing one modality (hence one t)."""

    kernel: ProductKernel
    modality: int
    row0: int  # first row in the call's x / y arrays
    n: int
    x_addr: int  # DRAM byte address of the call's x [rows, K] float32
    y_addr: int  # DRAM byte address of the call's y [rows, M] float32


def ins(op: Opcode, **kw) -> Instruction:
    """One instruction with integer fields (dependency flags included)."""
    return Instruction(op, **{k: int(v) for k, v in kw.items()})


# ---------------------------------------------------------------- the program builder

# A dependency token from module `src` to module `dst` is a push flag on an instruction of
# src and a pop flag on one of dst (docs/isa.md section 5): the modules are ordered
# LOAD -> COMPUTE -> STORE, and an instruction names its neighbours as prev / next.
_PUSH_FLAG = {(Module.LOAD, Module.COMPUTE): "push_next", (Module.COMPUTE, Module.LOAD): "push_prev",
              (Module.COMPUTE, Module.STORE): "push_next", (Module.STORE, Module.COMPUTE): "push_prev"}
_POP_FLAG = {(Module.LOAD, Module.COMPUTE): "pop_prev", (Module.COMPUTE, Module.LOAD): "pop_next",
             (Module.COMPUTE, Module.STORE): "pop_prev", (Module.STORE, Module.COMPUTE): "pop_next"}


class ProgramBuilder:
    """An instruction queue that owns the dependency-token protocol, as VTA's runtime does
    (`InsnQueue`, `CommitPendingPop`): emitters append instructions and say which tokens
    order them; the builder sets the flags.

    - `push(src, dst)`: the last instruction `src` has emitted pushes a token to `dst` (it
      signals when that instruction retires: e.g. after a compute step's last read of a slot);
    - `pop(src, dst)`: the next instruction `dst` emits waits for a token from `src`
      (pending until then, then folded into that instruction).
    `program()` ends with FINISH, which pops the last STORE's token, and checks that every
    push has its pop and no pop is left pending. Raises SpikecError on a protocol error (a
    push with no instruction to carry it, two pushes or pops of one direction on one
    instruction, an unbalanced program)."""

    def __init__(self) -> None:
        self._ins: list[tuple[Opcode, dict]] = []
        self._last: dict[Module, int] = {}
        self._pending: dict[Module, list[str]] = {m: [] for m in Module}
        self._balance: dict[tuple[Module, Module], int] = {k: 0 for k in _PUSH_FLAG}

    def emit(self, op: Opcode, **fields) -> None:
        m = FORMATS[op].module
        kw = {k: int(v) for k, v in fields.items()}
        for flag in self._pending[m]:
            if kw.get(flag):
                raise SpikecError(f"program builder: {op.name} already pops with {flag}")
            kw[flag] = 1
        self._pending[m] = []
        self._ins.append((op, kw))
        self._last[m] = len(self._ins) - 1

    def push(self, src: Module, dst: Module) -> None:
        flag = _PUSH_FLAG[(src, dst)]
        i = self._last.get(src)
        if i is None:
            raise SpikecError(f"program builder: {src.name} has no instruction to push a token to {dst.name}")
        kw = self._ins[i][1]
        if kw.get(flag):
            raise SpikecError(f"program builder: instruction {i} already pushes to {dst.name}")
        kw[flag] = 1
        self._balance[(src, dst)] += 1

    def pop(self, src: Module, dst: Module) -> None:
        flag = _POP_FLAG[(src, dst)]
        if flag in self._pending[dst]:
            raise SpikecError(f"program builder: two pending pops of {src.name} -> {dst.name}")
        self._pending[dst].append(flag)
        self._balance[(src, dst)] -= 1

    def program(self) -> list[Instruction]:
        """The instructions, FINISH last (popping the last STORE's token when there is one)."""
        if self._balance[(Module.STORE, Module.COMPUTE)] > 0:
            self.pop(Module.STORE, Module.COMPUTE)
        self.emit(Opcode.FINISH)
        if any(self._balance.values()) or any(self._pending.values()):
            raise SpikecError(f"program builder: unbalanced tokens {self._balance}")
        return [Instruction(op, **kw) for op, kw in self._ins]


@dataclass
class _Step:
    """One (chunk, M-tile) step of a program: SPMM + VEC DEQ + STORE, plus the loads it needs.
    With K-tiling, one (chunk, M-tile, k-piece) step: SPMM (accumulating after the first
    piece), and DEQ + STORE only on the last piece. With group-wise weight scales (the
    kernel's n_groups > 1; always K-tiled, pieces inside one group), the SPMM of a group's
    first piece overwrites ACC, and the step of a group's last piece (`grp_end`) DEQs that
    group: group 0 (with the bias) into the chunk's running sum in VEC, group g >= 1 into a
    scratch row then VEC ADD into the running sum, or, for the last group, into the output
    slot (then STORE)."""

    g: Group
    r0: int  # first row of the chunk in the call's x / y arrays
    n: int
    tile: Tile
    u: int  # sequence number of the tile's load (WGT / [s_w | bias] slot u % 2)
    load_tile: bool  # this step loads the tile (the tile's first chunk)
    load_x: bool  # this step loads the chunk's rows (and static scale) and ENCODEs them
    e: int  # sequence number of the chunk's encode (VEC input slot e % 2)
    q: int  # scale set (static-scale slots (q % 2) * n_static + idx)
    idx: int  # the chunk's index in its scale set
    inp: int  # INP address of the chunk's codes
    row: int  # the chunk's first dynamic scale in SCL
    kc: int = 0  # k-piece index (K-tiling)
    k0: int = 0  # first input feature of the piece
    kl: int = 0  # the piece's features (0: the whole K)
    acc: int = 0  # ACC address of the chunk's accumulators
    last_k: bool = True  # the tile's last k-piece: DEQ + STORE follow (and [s_w | bias] loads with it)
    grp_end: bool | None = None  # the last piece of a weight-scale group: its DEQ follows (None: last_k)
    sb: int | None = None  # sequence number of the tile's [s_w | bias] load (SCL slot sb % 2; None: u)
    load_sb: bool | None = None  # this step's load group loads [s_w | bias] (None: load_tile and last_k)

    def __post_init__(self) -> None:
        if self.grp_end is None:
            self.grp_end = self.last_k
        if self.sb is None:
            self.sb = self.u
        if self.load_sb is None:
            self.load_sb = self.load_tile and self.last_k


def _pack_chunks(chunks: list[tuple[Group, int, int]], rows_cap: int,
                 chunks_cap: int | None) -> list[list[tuple[Group, int, int]]]:
    """Consecutive chunks packed, in order, into blocks of at most rows_cap rows (and at most
    chunks_cap chunks); a chunk is never split, so packing adds no instruction."""
    blocks: list[list[tuple[Group, int, int]]] = []
    rows = 0
    for ch in chunks:
        if not blocks or rows + ch[2] > rows_cap or (chunks_cap is not None and len(blocks[-1]) >= chunks_cap):
            blocks.append([])
            rows = 0
        blocks[-1].append(ch)
        rows += ch[2]
    return blocks


def _plan_segment(groups: list[Group], cfg: HwConfig, rows_cap: int, chunks_cap: int | None) -> tuple[str, list]:
    """Tile-outer order for the consecutive groups of one kernel: ("resident", blocks) or
    ("reencode", chunks), whichever costs less energy by the cost model (isa/costmodel.py:
    the weight loads against the rows' loads and ENCODEs; DRAM dominates both).

    resident: the chunks (at most n_max tokens, as before) are packed in order into blocks
    whose codes INP holds (`rows_cap` rows; static scales: at most `chunks_cap` chunks);
    per block, every chunk is LOADed and ENCODEd once into its own INP rows, then each
    weight tile is loaded once and all the block's chunks run against it. Weights move
    once per block, rows once.
    reencode: each weight tile is loaded once per call; per tile, every chunk's rows are
    LOADed and ENCODEd again into INP 0. Weights move once, rows once per M-tile."""
    k = groups[0].kernel
    K, n_max, tiles = k.K, k.n_max, k.tiles
    chunks = [(g, g.row0 + r, min(n_max, g.n - r)) for g in groups for r in range(0, g.n, n_max)]
    static = k.static
    if k.k_tile < K:
        # K-tiled: re-encoding would reload every k-piece per chunk, so the codes stay resident
        return "resident", _pack_chunks(chunks, rows_cap, chunks_cap)

    def energy(*ins: Instruction) -> float:
        return sum(sum(costmodel.instruction_cost(cfg, i).energy_pj(cfg).values()) for i in ins)

    W = energy(*(ins(Opcode.LOAD, buf=Buffer.WGT, rows=t.w_bytes // TILE_ALIGN, cols=TILE_ALIGN, stride=TILE_ALIGN)
                 for t in tiles), *(ins(Opcode.LOAD, buf=Buffer.SCL, rows=1, cols=2 * t.m) for t in tiles))
    X = sum(energy(ins(Opcode.LOAD, buf=Buffer.VEC, rows=n, cols=K, stride=4 * K),
                   ins(Opcode.ENCODE, n=n, len=K, t=1, scale=ScaleMode.STATIC if static else ScaleMode.DYNAMIC),
                   *([ins(Opcode.LOAD, buf=Buffer.SCL, rows=1, cols=1)] if static else [])) for _, _, n in chunks)
    blocks = _pack_chunks(chunks, rows_cap, chunks_cap)
    if W + len(tiles) * X <= len(blocks) * W + X:
        return "reencode", chunks
    return "resident", blocks


def _block_scales(k: ProductKernel, cfg: HwConfig) -> bool:
    """Whether a group-wise kernel's SCL slot holds its tile's whole scale block (loaded with
    the tile's first piece) rather than one group's row (loaded with the group's first piece)."""
    return scales_per_feature(cfg, k.K, k.m_tile, k.group_size) > 2


def _sb_slot(k: ProductKernel, cfg: HwConfig, m: int) -> int:
    """SCL elements of one [s_w | bias] slot of an M-tile of m features."""
    return scales_per_feature(cfg, k.K, k.m_tile, k.group_size) * m


def _schedule(groups: list[Group], cfg: HwConfig) -> tuple[list[_Step], int, int]:
    """The steps of a program (see build_program), with the static-scale slots per scale set
    and the widest M-tile: the scheduling, before any instruction is emitted."""
    segs: list[list[Group]] = []
    for g in groups:
        if g.n <= 0:
            continue
        if segs and segs[-1][0].kernel is g.kernel:
            segs[-1].append(g)
        else:
            segs.append([g])
    if not segs:
        raise SpikecError("build_program: no tokens")
    scl_elems, inp_elems, acc_elems = cfg.buffer_elems(Buffer.SCL), cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC)

    vec_elems = cfg.buffer_elems(Buffer.VEC)

    def rows_cap(k: ProductKernel) -> int:  # rows whose codes (and, K-tiled, accumulators) a block keeps on chip
        if k.k_tile >= k.K:
            return inp_elems // k.K
        if k.n_groups > 1:  # and their running sums in VEC, after the x and output slots and the DEQ scratch
            return min(inp_elems // k.K, acc_elems // k.m_tile,
                       (vec_elems - 2 * k.n_max * k.K - 3 * k.n_max * k.m_tile) // k.m_tile)
        return min(inp_elems // k.K, acc_elems // k.m_tile)

    mt_max = max(t.m for seg in segs for t in seg[0].kernel.tiles)
    sb_slot = max(_sb_slot(seg[0].kernel, cfg, t.m) for seg in segs for t in seg[0].kernel.tiles)
    budget = scl_elems - 2 * sb_slot  # SCL left for dynamic scales and static-scale slots
    n_dyn = max([min(g.n, g.kernel.n_max) for seg in segs for g in seg if not g.kernel.static], default=0)
    chunks_cap = max(1, (budget - n_dyn) // 2)
    plans: list[tuple[list[Group], str, list]] = [None] * len(segs)
    # static segments first: their slots per scale set bound the rows of dynamic blocks
    for i, seg in enumerate(segs):
        k = seg[0].kernel
        if k.static:
            plans[i] = (seg, *_plan_segment(seg, cfg, rows_cap(k), chunks_cap))
    n_static = max([len(b) for seg, mode, blocks in filter(None, plans) if mode == "resident" for b in blocks]
                   + [1 for p in plans if p is not None], default=0)
    for i, seg in enumerate(segs):
        if plans[i] is None:
            k = seg[0].kernel
            plans[i] = (seg, *_plan_segment(seg, cfg, max(1, min(rows_cap(k), budget - 2 * n_static)), None))
    steps: list[_Step] = []
    u = e = q = v = 0  # v: [s_w | bias] loads of group-wise kernels
    for seg, mode, blocks in plans:
        tiles, K = seg[0].kernel.tiles, seg[0].kernel.K
        if mode == "reencode":
            for tile in tiles:
                for ci, (g, r0, n) in enumerate(blocks):
                    steps.append(_Step(g, r0, n, tile, u, ci == 0, True, e, q, 0, 0, 0))
                    e, q = e + 1, q + 1
                u += 1
            continue
        kt, mtk = seg[0].kernel.k_tile, seg[0].kernel.m_tile
        gw = seg[0].kernel.n_groups > 1
        G = seg[0].kernel.group_size if gw else K
        whole = gw and _block_scales(seg[0].kernel, cfg)
        for block in blocks:
            offs = np.cumsum([0] + [n for _, _, n in block]).tolist()
            for ti, tile in enumerate(tiles):
                if kt >= K:
                    for ci, (g, r0, n) in enumerate(block):
                        steps.append(_Step(g, r0, n, tile, u, ci == 0, ti == 0, e + ci, q, ci, offs[ci] * K, offs[ci]))
                    u += 1
                    continue
                # K-tiled: piece-outer, chunk-inner; each chunk accumulates in its own ACC rows
                for kc, k0 in enumerate(range(0, K, kt)):
                    kl = min(kt, K - k0)
                    for ci, (g, r0, n) in enumerate(block):
                        # group-wise: the tile's scale block loads with its first piece (`whole`), or
                        # each group's scale row with the group's first piece (SCL slot v % 2)
                        steps.append(_Step(g, r0, n, tile, u, ci == 0, ti == 0 and kc == 0, e + ci, q, ci, offs[ci] * K,
                                           offs[ci], kc, k0, kl, offs[ci] * mtk, k0 + kl >= K,
                                           *((k0 + kl) % G == 0, v, ci == 0 and (kc == 0 if whole else k0 % G == 0))
                                             if gw else ()))
                    u += 1
                    v += gw and not whole and (k0 + kl) % G == 0
                v += whole
            e, q = e + len(block), q + 1
    return steps, n_static, mt_max


@dataclass(frozen=True)
class _Layout:
    """Where a program's slots lie in the buffers (two of each, for double buffering)."""

    VX: tuple[int, int]  # VEC: the rows of a chunk (float32)
    VO: tuple[int, int]  # VEC: the DEQ outputs
    SX: int  # SCL: dynamic scales
    SST: int  # SCL: static-scale slots
    SSB: tuple[int, int]  # SCL: [s_w | bias] of a tile (and the other groups' s_w rows)
    WS: tuple[int, int]  # WGT: weight tiles (addresses: HwConfig.wgt_address of the slots' bytes)
    VY: int = 0  # VEC: group-wise running sums of a block's chunks (at the step's acc offset)
    VT: int = 0  # VEC: group-wise DEQ scratch (one chunk)


def _layout(steps: list[_Step], cfg: HwConfig, n_static: int, mt_max: int) -> _Layout:
    """Slots sized for the largest step; SpikecError when they do not fit the buffers."""
    scl_elems, inp_elems, acc_elems = cfg.buffer_elems(Buffer.SCL), cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC)
    x_slot = max(st.n * st.g.kernel.K for st in steps)
    o_slot = max(st.n * st.tile.m for st in steps)
    w_slot = max(st.tile.w_bytes for st in steps)
    n_sx = max([st.row + st.n for st in steps if not st.g.kernel.static], default=0)
    sb_slot = max(_sb_slot(st.g.kernel, cfg, st.tile.m) for st in steps)  # 2 * mt_max per channel
    gw = [st for st in steps if st.g.kernel.n_groups > 1]
    y_len = max([st.acc + st.n * st.tile.m for st in gw], default=0)
    t_len = max([st.n * st.tile.m for st in gw], default=0)
    VX = (0, x_slot)
    VO = (2 * x_slot, 2 * x_slot + o_slot)
    VY, VT = 2 * x_slot + 2 * o_slot, 2 * x_slot + 2 * o_slot + y_len
    SX, SST = 0, n_sx
    SSB = (n_sx + 2 * n_static, n_sx + 2 * n_static + sb_slot)
    WS = (0, cfg.wgt_address(w_slot))  # w_slot: whole TILE_ALIGN rows, so an address at any wgt_addr_bytes
    if VT + t_len > cfg.buffer_elems(Buffer.VEC) or SSB[1] + sb_slot > scl_elems \
            or 2 * w_slot > cfg.buffer_elems(Buffer.WGT) or max(st.inp + st.n * st.g.kernel.K for st in steps) > inp_elems \
            or max(st.acc + st.n * st.tile.m for st in steps) > acc_elems:
        raise SpikecError(f"build_program: the kernels' tiles do not fit the buffers of config '{cfg.name}'")
    return _Layout(VX, VO, SX, SST, SSB, WS, VY, VT)


def _slot_release(steps: list[_Step]) -> tuple[set[int], set[int]]:
    """(steps whose load group pops c2l, steps whose last compute instruction pushes it)."""
    # c2l: a load group pops a token only if it overwrites a slot some earlier step read; the
    # token comes from the DEQ of the last such step (later if that DEQ already pushes for
    # an earlier group: pushes and pops pair up in order), never later than the step before
    # the previous load group's, so the load module runs up to two groups ahead.
    pops: set[int] = set()  # steps whose load group pops c2l
    pushers: set[int] = set()  # steps whose DEQ pushes c2l
    last_w, last_x, last_st = [-1, -1], [-1, -1], [-1, -1]  # last step reading each WGT, VEC x, static slot
    last_sb = [-1, -1]  # last step of a tile reading each SSB slot (per channel the WGT slot's: sb == u)
    last_push = -1
    for s, st in enumerate(steps):
        static = st.g.kernel.static
        if st.load_x or st.load_tile:
            need = max(last_x[st.e % 2] if st.load_x else -1, last_st[st.q % 2] if st.load_x and static else -1,
                       last_w[st.u % 2] if st.load_tile else -1, last_sb[st.sb % 2] if st.load_sb else -1)
            if need >= 0:
                last_push = max(need, last_push + 1)
                assert last_push < s, "c2l token pushed after the load group that waits for it"
                pops.add(s)
                pushers.add(last_push)
        last_w[st.u % 2] = s
        last_sb[st.sb % 2] = s
        if st.load_x:
            last_x[st.e % 2] = s
        if static:
            last_st[st.q % 2] = s
    return pops, pushers


def build_program(groups: list[Group], cfg: HwConfig) -> list[Instruction]:
    """The instruction stream for a list of token groups (of one or several kernels).

    Consecutive groups of one kernel form a segment, run tile-outer (see `_plan_segment`):
    each weight tile and its [s_w | bias] are loaded once per segment (or once per block
    of rows whose codes INP holds) and every token chunk runs against them while they are
    resident. A step is one (chunk, M-tile) pair: SPMM, VEC DEQ (output slot s % 2), STORE,
    preceded, when it needs them, by a *load group*: the chunk's rows into VEC (slot e % 2,
    e counting encodes) with its static scale, ENCODEd by the step, and/or the weight tile
    into WGT and [s_w | bias] into SCL (slot u % 2, u counting tile loads). Tokens
    (docs/isa.md section 5): the last LOAD of a load group pushes l2c, popped by its step's
    first compute instruction; a load group that overwrites a slot an earlier step read pops
    c2l, pushed by the DEQ of the last such step (or of the next step whose DEQ pushes for
    no earlier group), at the latest the step before the previous load group's step; each
    STORE pushes s2c for the DEQ of step s + 2, which overwrites the STORE's VEC slot, or,
    for the last STORE, for FINISH."""
    steps, n_static, mt_max = _schedule(groups, cfg)
    lay = _layout(steps, cfg, n_static, mt_max)
    pops, pushers = _slot_release(steps)
    outs = np.cumsum([0] + [int(st.last_k) for st in steps]).tolist()  # output (DEQ/STORE) index of each step
    S = outs[-1]  # outputs (VEC output slot o % 2)
    b = ProgramBuilder()
    for s, st in enumerate(steps):
        k = st.g.kernel
        o = outs[s]
        scl = lay.SST + (st.q % 2) * n_static + st.idx if k.static else lay.SX + st.row  # the chunk's scale(s) in SCL
        whole = k.n_groups > 1 and _block_scales(k, cfg)
        # load module
        loads = _step_loads(st, lay, scl, whole)
        if loads:
            if s in pops:
                b.pop(Module.COMPUTE, Module.LOAD)
            for kw in loads:
                b.emit(Opcode.LOAD, **kw)
            b.push(Module.LOAD, Module.COMPUTE)
            b.pop(Module.LOAD, Module.COMPUTE)  # the step's first compute instruction waits for them
        # compute module
        for op, kw in _step_compute(st, lay, scl):
            b.emit(op, **kw)
        _emit_dequantize(b, st, lay, o, scl, whole)
        if s in pushers:  # after the step's last read of its slots
            b.push(Module.COMPUTE, Module.LOAD)
        # store module
        if st.last_k:
            b.push(Module.COMPUTE, Module.STORE)
            b.pop(Module.COMPUTE, Module.STORE)
            b.emit(Opcode.STORE, buf=Buffer.VEC, sram=lay.VO[o % 2], dram=st.g.y_addr + 4 * (st.r0 * k.M + st.tile.m0),
                   stride=4 * k.M, rows=st.n, cols=st.tile.m)
            if o + 2 < S or o == S - 1:  # for the DEQ of output o + 2, or for FINISH
                b.push(Module.STORE, Module.COMPUTE)
    return b.program()


def _acc_rows(k: ProductKernel) -> int:
    """Input rows per accumulator: a weight-scale group's (group-wise kernels), else the whole K."""
    return k.group_size if k.n_groups > 1 else k.K


def _step_loads(st: _Step, lay: _Layout, scl: int, whole: bool) -> list[dict]:
    """The LOAD fields of a step's load group: the chunk's rows (and static scale), the weight
    tile (a K-tiled piece: its own packed block), and [s_w | bias] (group-wise: the tile's
    whole scale block when `whole`, else the group's row)."""
    g, k, tile = st.g, st.g.kernel, st.tile
    K, mt = k.K, tile.m
    G = _acc_rows(k)
    loads = []
    if st.load_x:
        loads.append(dict(buf=Buffer.VEC, sram=lay.VX[st.e % 2], dram=g.x_addr + 4 * st.r0 * K, stride=4 * K,
                          rows=st.n, cols=K))
        if k.static:
            loads.append(dict(buf=Buffer.SCL, sram=scl, dram=k.static_offset + 4 * g.modality, stride=4, rows=1, cols=1))
    if st.load_tile:
        w_rows = (align(weight_bytes(st.kl, mt, k.wbits), TILE_ALIGN) if st.kl > 0 else tile.w_bytes) // TILE_ALIGN
        loads.append(dict(buf=Buffer.WGT, sram=lay.WS[st.u % 2], dram=tile.w + st.kc * tile.w_bytes,
                          stride=TILE_ALIGN, rows=w_rows, cols=TILE_ALIGN))
    if st.load_sb:  # [s_w | bias], after the tile's piece; group-wise: the tile's whole scale block
        # [s_w[0] | bias | s_w[1] | ...], or the group's row ([s_w[0] | bias] or s_w[g])
        sbl = (k.n_groups + 1) * mt if whole else (2 if st.k0 < G else 1) * mt
        off = 0 if whole else scale_row_offsets(k.n_groups, mt)[st.k0 // G]
        loads.append(dict(buf=Buffer.SCL, sram=lay.SSB[st.sb % 2], dram=tile.sb + 4 * off, stride=4 * sbl, rows=1,
                          cols=sbl))
    return loads


def _step_compute(st: _Step, lay: _Layout, scl: int) -> list[tuple[Opcode, dict]]:
    """A step's ENCODEs (when it loaded the chunk's rows) and its SPMM, which overwrites ACC at
    the first piece of an accumulator (a group, or the whole K) and accumulates after it."""
    k, n = st.g.kernel, st.n
    K, static, ktiled = k.K, k.static, st.kl > 0
    G = _acc_rows(k)
    T = int(k.timesteps[st.g.modality])
    compute = []
    mode = ScaleMode.STATIC if static else ScaleMode.DYNAMIC
    if st.load_x and ktiled and n > 1:
        # K-tiled codes: piece c of the chunk is its own packed block [n, kl_c] at inp + n * k0_c.
        # The dynamic scale needs the whole row: one dynamic ENCODE of the rows (its codes, in
        # the same INP rows, are overwritten), then per token and piece a static ENCODE with
        # that token's scale from SCL (x / s with the same s: the same codes).
        if not static:
            compute.append((Opcode.ENCODE, dict(src=lay.VX[st.e % 2], dst=st.inp, dst_buf=EncodeDst.INP, n=n, len=K,
                                                t=T, scale=ScaleMode.DYNAMIC, scl=scl)))
        for i in range(n):
            for k0 in range(0, K, k.k_tile):
                kl = min(k.k_tile, K - k0)
                compute.append((Opcode.ENCODE, dict(src=lay.VX[st.e % 2] + i * K + k0, dst=st.inp + n * k0 + i * kl,
                                                    dst_buf=EncodeDst.INP, n=1, len=kl, t=T, scale=ScaleMode.STATIC,
                                                    scl=scl if static else scl + i)))
    elif st.load_x:  # (one row: its [1, K] codes are already the pieces' blocks)
        compute.append((Opcode.ENCODE, dict(src=lay.VX[st.e % 2], dst=st.inp, dst_buf=EncodeDst.INP, n=n, len=K, t=T,
                                            scale=mode, scl=scl)))
    compute.append((Opcode.SPMM, dict(inp=st.inp + n * st.k0, wgt=lay.WS[st.u % 2], acc=st.acc, n=n,
                                      k=st.kl if ktiled else K, m=st.tile.m, acc_stride=st.tile.m, t=T,
                                      neuron=Neuron.IF if k.neuron == "if" else Neuron.TCLIF,
                                      wfmt=WeightFormat.INT4 if k.wbits == 4 else WeightFormat.INT8,
                                      acc_mode=AccMode.ACCUMULATE if st.k0 % G else AccMode.OVERWRITE)))
    return compute


def _emit_dequantize(b: ProgramBuilder, st: _Step, lay: _Layout, o: int, scl: int, whole: bool) -> None:
    """The step's VEC DEQ, where one follows: per channel, of the tile's last piece into output
    slot o % 2; group-wise, of a group's last piece into the chunk's running sum (group 0)
    or the scratch row, then VEC ADD into the running sum (the output slot for the last
    group). A DEQ or ADD writing the output slot first waits for STORE o - 2, which read it."""
    k, n, mt = st.g.kernel, st.n, st.tile.m
    static = k.static
    if st.last_k and k.n_groups == 1:
        if o >= 2:  # its VEC output slot: STORE o - 2 has read it
            b.pop(Module.STORE, Module.COMPUTE)
        flags = (0 if static else VecFlag.PER_ROW) | (VecFlag.BIAS if k.has_bias else 0)
        b.emit(Opcode.VEC, func=VecFunc.DEQ, flags=int(flags), dst=lay.VO[o % 2], src0=st.acc, src1=scl,
               src2=lay.SSB[st.sb % 2], n=n, len=mt)
    elif st.grp_end:
        # group-wise (reference.dequantize_acc): t_g = (float32(acc_g) * s_x) * s_w[g]; y = t_0 (+ bias) in
        # the chunk's running sum, then y = y + t_g in ascending g; the last ADD writes the output slot
        grp = st.k0 // _acc_rows(k)
        y = lay.VY + st.acc
        flags = (0 if static else VecFlag.PER_ROW) | (VecFlag.BIAS if k.has_bias and grp == 0 else 0)
        src2 = lay.SSB[st.sb % 2] + (scale_row_offsets(k.n_groups, mt)[grp] if whole else 0)  # s_w[grp]
        b.emit(Opcode.VEC, func=VecFunc.DEQ, flags=int(flags), dst=y if grp == 0 else lay.VT, src0=st.acc,
               src1=scl, src2=src2, n=n, len=mt)
        if grp > 0:
            if st.last_k and o >= 2:  # its VEC output slot: STORE o - 2 has read it
                b.pop(Module.STORE, Module.COMPUTE)
            b.emit(Opcode.VEC, func=VecFunc.ADD, dst=lay.VO[o % 2] if st.last_k else y, src0=y, src1=lay.VT, n=n,
                   len=mt)


def kernel_modalities(k: ProductKernel | AttentionKernel) -> list[int]:
    """The modalities a kernel's graph feeds it: the constant one, or every one."""
    return [k.modality_id] if k.modality_id >= 0 else list(range(len(k.timesteps)))


def representative_groups(kernels: list[ProductKernel] | tuple[ProductKernel, ...], io_base: int) -> list[Group]:
    """One token of each modality per kernel (modalities without a usable static scale
    skipped), x and y of each kernel at their own DRAM addresses from io_base."""
    groups, addr = [], align(io_base, 4096)
    for k in kernels:
        mods = [m for m in kernel_modalities(k) if not k.static or k.static_scales[m] is not None]
        if not mods:
            continue
        x_addr = addr
        y_addr = align(x_addr + 4 * len(mods) * k.K, TILE_ALIGN)
        addr = align(y_addr + 4 * len(mods) * k.M, TILE_ALIGN)
        for i, m in enumerate(mods):
            groups.append(Group(k, m, i, 1, x_addr, y_addr))
    return groups


# ---------------------------------------------------------------- vector kernels


def build_vec_program(k: VecKernel, n: int, L: int, addrs: list[int], y_addr: int, cfg: HwConfig) -> list[Instruction]:
    """The instruction stream of one call of vector kernel `k` on n rows of L elements: the
    operands (float32, packed rows, at `addrs` in DRAM, ISA order) in chunks of at most
    plan_vec rows. VEC holds the constant row(s) at 0, then two operand slots and two result
    slots (chunk c uses slot c % 2); SCL[0] holds the scalar constant. Per chunk: LOAD its
    operands (chunk 0 first loads the constants; the last LOAD pushes l2c), VEC (pops l2c;
    for c >= 2 pops s2c from STORE c - 2, whose result slot it overwrites; pushes c2l for the
    LOADs of chunk c + 2, which overwrite its operand slot; pushes c2s), STORE (pops c2s;
    pushes s2c for VEC c + 2, or for FINISH after the last chunk)."""
    func = k.func
    try:
        n_max = plan_vec(cfg, func, L)
    except TilingError as exc:
        raise SpikecError(f"vector kernel {k.index} ({func.name}): {exc}") from None
    cols = operand_cols(func, L)
    const = CONST_ROWS.get(func, 0) * L
    VX = (const, const + n_max * sum(cols))
    VO = (const + 2 * n_max * sum(cols), const + 2 * n_max * sum(cols) + n_max * L)
    chunks = [(r0, min(n_max, n - r0)) for r0 in range(0, n, n_max)]
    C = len(chunks)
    b = ProgramBuilder()
    for c, (r0, m) in enumerate(chunks):
        loads = []
        if c == 0 and const:
            loads.append(dict(buf=Buffer.VEC, sram=0, dram=k.vec_const, stride=0, rows=1, cols=const))
        if c == 0 and func in HAS_SCALAR:
            loads.append(dict(buf=Buffer.SCL, sram=0, dram=k.scl_const, stride=0, rows=1, cols=1))
        srcs, off = [], VX[c % 2]
        for addr, w in zip(addrs, cols):
            loads.append(dict(buf=Buffer.VEC, sram=off, dram=addr + 4 * r0 * w, stride=4 * w, rows=m, cols=w))
            srcs.append(off)
            off += m * w
        if c >= 2:  # the operand slot: VEC c - 2 has read it
            b.pop(Module.COMPUTE, Module.LOAD)
        for kw in loads:
            b.emit(Opcode.LOAD, **kw)
        b.push(Module.LOAD, Module.COMPUTE)
        # constants sit at VEC 0 (gamma, gamma|beta, the row) and SCL 0 (eps, the scale)
        src1, src2 = (srcs[1:] + [0, 0])[:2]
        b.pop(Module.LOAD, Module.COMPUTE)
        if c >= 2:  # the result slot: STORE c - 2 has read it
            b.pop(Module.STORE, Module.COMPUTE)
        b.emit(Opcode.VEC, func=func, dst=VO[c % 2], src0=srcs[0], src1=src1, src2=src2, n=m, len=L)
        if c + 2 < C:
            b.push(Module.COMPUTE, Module.LOAD)
        b.push(Module.COMPUTE, Module.STORE)
        b.pop(Module.COMPUTE, Module.STORE)
        b.emit(Opcode.STORE, buf=Buffer.VEC, sram=VO[c % 2], dram=y_addr + 4 * r0 * L, stride=4 * L, rows=m, cols=L)
        if c + 2 < C or c == C - 1:  # for VEC c + 2, or for FINISH
            b.push(Module.STORE, Module.COMPUTE)
    return b.program()


# ---------------------------------------------------------------- attention kernels


def build_attention_program(k: AttentionKernel, chunks: list[tuple[int, int, int, int]], K: int, N: int, nb: int,
                            addrs: tuple[int, int, int, int], cfg: HwConfig) -> list[Instruction]:
    """The instruction stream of one attention call. `chunks`: (head, first row, rows, t), the
    rows of one head sharing t (rows of the left operand are packed [rows, K] float32 at
    a_addr, results [rows, N] at y_addr); `addrs` = (a_addr, b_addr: b's nb float32,
    y_addr, scratch: 4 bytes for s_b).

    VEC: b at 0, left-row slots, result slots (chunk c uses slot c % 2); WGT: b's codes at 0;
    SCL: s_b at 0, the chunk's per-token scales at 1, the s_w row at 1 + n_max; INP, ACC at 0.
    Tokens (docs/isa.md section 5): LOAD b pushes l2c for ENCODE b, which pushes c2s for the
    STORE of s_b to the scratch word, which pushes s2c for SPMM 0; SPMM 0 pushes c2l for the
    LOAD of the s_w row (stride 0: N copies of s_b; it follows chunk 0's LOAD), which pushes
    l2c for DEQ 0. Per chunk as in build_vec_program: its LOAD pushes l2c for its ENCODE
    (and, for c >= 2, pops c2l from DEQ c - 2, the slot's last reader); DEQ pops s2c from
    STORE c - 2 for c >= 2 and pushes c2s for its STORE, which pushes s2c for DEQ c + 2 or,
    last, for FINISH."""
    a_addr, b_addr, y_addr, scratch = addrs
    try:
        n_max = plan_attention(cfg, K, N, nb)
    except TilingError as exc:
        raise SpikecError(f"attention kernel {k.index}: {exc}") from None
    VX = (nb, nb + n_max * K)
    VO = (nb + 2 * n_max * K, nb + 2 * n_max * K + n_max * N)
    SB, SX, SW = 0, 1, 1 + n_max
    C = len(chunks)
    q = ProgramBuilder()
    q.emit(Opcode.LOAD, buf=Buffer.VEC, sram=0, dram=b_addr, stride=4 * nb, rows=1, cols=nb)
    q.push(Module.LOAD, Module.COMPUTE)
    q.pop(Module.LOAD, Module.COMPUTE)
    q.emit(Opcode.ENCODE, src=0, dst=0, dst_buf=EncodeDst.WGT, n=1, len=nb, t=k.bits - 1, scale=ScaleMode.DYNAMIC,
           scl=SB)
    q.push(Module.COMPUTE, Module.STORE)
    q.pop(Module.COMPUTE, Module.STORE)
    q.emit(Opcode.STORE, buf=Buffer.SCL, sram=SB, dram=scratch, stride=4, rows=1, cols=1)
    q.push(Module.STORE, Module.COMPUTE)  # s_b is in DRAM: SPMM 0 may go (and then the s_w row load)
    for c, (h, r0, n, t) in enumerate(chunks):
        assert n <= n_max
        if c >= 2:  # the left-row slot: chunk c - 2's DEQ pushes once its compute is done with it
            q.pop(Module.COMPUTE, Module.LOAD)
        q.emit(Opcode.LOAD, buf=Buffer.VEC, sram=VX[c % 2], dram=a_addr + 4 * r0 * K, stride=4 * K, rows=n, cols=K)
        q.push(Module.LOAD, Module.COMPUTE)
        if c == 0:  # the s_w row: N copies of s_b, after SPMM 0 saw s_b stored
            q.pop(Module.COMPUTE, Module.LOAD)
            q.emit(Opcode.LOAD, buf=Buffer.SCL, sram=SW, dram=scratch, stride=0, rows=N, cols=1)
            q.push(Module.LOAD, Module.COMPUTE)
        q.pop(Module.LOAD, Module.COMPUTE)
        q.emit(Opcode.ENCODE, src=VX[c % 2], dst=0, dst_buf=EncodeDst.INP, n=n, len=K, t=t, scale=ScaleMode.DYNAMIC,
               scl=SX)
        if c == 0:
            q.pop(Module.STORE, Module.COMPUTE)
        q.emit(Opcode.SPMM, inp=0, wgt=cfg.wgt_address(h * K * N), acc=0, n=n, k=K, m=N, acc_stride=N, t=t, neuron=Neuron.TCLIF,
               wfmt=WeightFormat.INT8, wtrans=int(k.wtrans), acc_mode=AccMode.OVERWRITE)
        if c == 0:
            q.push(Module.COMPUTE, Module.LOAD)
            q.pop(Module.LOAD, Module.COMPUTE)
        if c >= 2:
            q.pop(Module.STORE, Module.COMPUTE)
        q.emit(Opcode.VEC, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW), dst=VO[c % 2], src0=0, src1=SX, src2=SW, n=n,
               len=N)
        if c + 2 < C:
            q.push(Module.COMPUTE, Module.LOAD)
        q.push(Module.COMPUTE, Module.STORE)
        q.pop(Module.COMPUTE, Module.STORE)
        q.emit(Opcode.STORE, buf=Buffer.VEC, sram=VO[c % 2], dram=y_addr + 4 * r0 * N, stride=4 * N, rows=n, cols=N)
        if c + 2 < C or c == C - 1:
            q.push(Module.STORE, Module.COMPUTE)
    return q.program()


__all__ = ["Group", "build_attention_program", "build_program", "build_vec_program", "ins", "kernel_modalities",
           "representative_groups"]
