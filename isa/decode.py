"""The batch-1 decode step of a Qwen2-VL-shaped language model as one accelerator program,
costed with the cost model (docs/isa.md section 11).

`build_decode(shape, cfg, L)` builds the instruction stream of one decode step -- every
decoder layer and the LM head -- with `ProgramBuilder`, and `cost_decode` runs it along the
simulator's load/compute/store timeline (`timeline`), instruction by instruction with
isa/costmodel.py. What runs where:

- host: the token's embedding row (float32 [hidden]) written to DRAM, the program's
  per-step fields patched (KV-cache row, rotary-table row, context length), the logits
  (float32 [vocab]) read back and the next token sampled (`host_ops`);
- device, per layer: RMSNorm -> ENCODE -> q|k|v product (one [H, H + 2 kv] matrix, W4,
  bias) -> DEQ -> ROPE (q and k rows) -> new k, v rows quantized to int8 codes (per-channel
  static scales) into the KV-cache tiles and STOREd to the cache in DRAM -> per KV head:
  scores = SPMM(ENCODE(q * s_k), K codes^T) -> DEQ -> SOFTMAX -> SPMM(ENCODE(P), V codes)
  -> DEQ -> o product -> residual ADD -> RMSNorm -> gate|up product (one [H, 2 I] matrix)
  -> SILU(gate) * up -> down product -> residual ADD; then the final RMSNorm and the LM
  head, its logits STOREd in groups.

Weights stream once per step: each product's weights are laid out in DRAM as tiles (an
m-tile of `pe_cols` output features by a k-piece, packed int4 [k, m] row-major, at most
half of WGT), loaded into the two WGT slots alternately (double buffering: a tile's LOAD
waits for the c2l token of the last compute instruction that read the slot two tiles
before, its last LOAD pushes l2c for the SPMM that reads it). The KV-cache tiles of the
attention ([L, head_dim] int8 codes per KV head) go through the same two slots. Per-layer
constants (scales, biases, norm weights) are loaded once per layer into two slots (layer
parity) of SCL and VEC. Every LOAD is shaped (rows x cols) to waste as little of the
per-row burst rounding as possible (`dma_shapes`).

Units: cycles of the configuration's clock; energy in pJ by component (dram = HBM, sram,
pe, vec); bytes. Shapes: `LMShape`. The program is an ordinary ISA program: on the
functional simulator it gives, bit for bit, the decode step computed with the ISA's
numerics (tests/test_decode_model.py, small shapes); at 7B size it is only costed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from spikec.errors import SpikecError
from spikec.isa import costmodel
from spikec.isa.encoding import Instruction
from spikec.isa.fields import (FORMATS, ELEMENT_BYTES, AccMode, Buffer, EncodeDst, Module, Neuron, Opcode, ScaleMode,
                               VecFlag, VecFunc, WeightFormat, field as isa_field)
from spikec.isa.hwconfig import HwConfig
from spikec.isa.programs import ProgramBuilder

MAX_LEN = isa_field(Opcode.VEC, "len").max  # 16383: elements per row of ENCODE / VEC, SPMM k and m
MAX_DMA = isa_field(Opcode.LOAD, "cols").max  # 65535 elements per DMA row (and rows per DMA)


# ---------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class LMShape:
    """A Qwen2-style decoder-only language model: `layers` x (attention with `heads` query
    heads and `kv_heads` key/value heads of `head_dim`, SwiGLU MLP of `intermediate`),
    hidden size `hidden`, LM head [hidden, vocab]; q/k/v carry a bias (Qwen2)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    qkv_bias: bool = True

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, K, M, bias) of one layer's products as the device runs them: q|k|v and
        gate|up concatenated along M (the same weights, one matrix each)."""
        H, I = self.hidden, self.intermediate
        return [("qkv", H, H + 2 * self.kv, self.qkv_bias), ("o", H, H, False), ("gate_up", H, 2 * I, False),
                ("down", I, H, False)]

    def weights(self) -> int:
        """Weights in the linears of all layers and the LM head (embedding excluded: host)."""
        return self.layers * sum(K * M for _, K, M, _ in self.linears()) + self.hidden * self.vocab

    def weight_bytes(self, wbits: int = 4) -> int:
        """Bytes of those weights at `wbits` (4: two per byte), every matrix packed on its own."""
        mats = [(K, M) for _, K, M, _ in self.linears()] * self.layers + [(self.hidden, self.vocab)]
        return sum(-(-K * M * wbits // 8) for K, M in mats)


QWEN2VL_7B = LMShape("Qwen2-VL-7B", hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128,
                     vocab=152064)
QWEN2VL_2B = LMShape("Qwen2-VL-2B", hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, head_dim=128,
                     vocab=151936)


# ---------------------------------------------------------------- DMA shapes


def dma_shapes(n: int, elem: int, cfg: HwConfig) -> list[tuple[int, int]]:
    """(rows, cols) of the LOADs/STOREs that move `n` contiguous elements of `elem` bytes
    (each a packed 2-D transfer, DRAM stride = cols * elem) in the fewest cycles of the cost
    model: latency per instruction + rows * ceil(row bytes / bytes per cycle). One
    transfer with cols dividing n, or a main transfer plus a one-row remainder."""
    bpc, lat = cfg.dram_bytes_per_cycle, cfg.dram_latency_cycles

    def cyc(rows: int, cols: int) -> int:
        return rows * math.ceil(cols * elem / bpc)

    best: tuple[float, list[tuple[int, int]]] | None = None
    d = 1
    while d * d <= n:
        if n % d == 0:
            for cols in (d, n // d):
                rows = n // cols
                if cols <= MAX_DMA and rows <= MAX_DMA:
                    c = lat + cyc(rows, cols)
                    if best is None or c < best[0]:
                        best = (c, [(rows, cols)])
        d += 1
    j = 1
    while True:
        cols = min(n, MAX_DMA, int(j * bpc // elem))
        if cols >= 1:
            rows, rem = divmod(n, cols)
            if rows <= MAX_DMA:
                c = lat * (1 + (rem > 0)) + cyc(rows, cols) + (cyc(1, rem) if rem else 0)
                if best is None or c < best[0]:
                    best = (c, [(rows, cols)] + ([(1, rem)] if rem else []))
        if cols >= min(n, MAX_DMA):
            break
        j += 1
    assert best is not None
    return best[1]


# ---------------------------------------------------------------- program plan


@dataclass
class _Group:
    """Consecutive LOADs of the load module ending in one l2c token."""

    loads: list[dict]
    consumer: int  # compute instruction that pops the l2c token
    needs: list[object] = field(default_factory=list)  # regions it overwrites (released by compute)


@dataclass
class _Compute:
    op: Opcode
    kw: dict
    pop_s2c: bool = False
    stores: list[dict] = field(default_factory=list)  # STOREs fed by this instruction (c2s, in order)
    store_push: bool = False  # its (last) STORE pushes s2c


@dataclass
class DecodeProgram:
    """A decode step's instruction stream and what it moves.

    - `program`: the instructions (FINISH last);
    - `weight_load_bytes`: bytes LOADed into WGT from the weights' region of DRAM (each
      weight once: equals `shape.weight_bytes(4)`); `kv_load_bytes`: KV-cache bytes LOADed;
    - `layers`, `head`: what it covers; `L`: context length (KV rows incl. this token)."""

    shape: LMShape
    cfg: HwConfig
    L: int
    layers: int
    head: bool
    program: list[Instruction]
    weight_load_bytes: int
    kv_load_bytes: int
    weights_end: int  # DRAM bytes [0, weights_end) hold the weights
    layout: dict = field(default_factory=dict)  # where everything lies: DRAM addresses (x_in, logits, consts, KV
    # cache, rope tables, per-layer constants c_scl / c_vec), `tiles` {(layer, product) or ("head",): [(dram, m0, m,
    # k0, k)]}, the constants' offsets (sw_off, sv_off) and the input row's parts per K


class _Planner:
    """Collects compute instructions and load groups, then emits them through ProgramBuilder."""

    def __init__(self, cfg: HwConfig) -> None:
        self.cfg = cfg
        self.compute: list[_Compute] = []
        self.groups: list[_Group] = []
        self.last_use: dict[object, int] = {}  # region -> last compute instruction touching it
        self.pending: list[dict] = []  # loads not yet attached to a consumer
        self.pending_needs: list[object] = []

    # -- building
    def load(self, buf: Buffer, sram: int, dram: int, n: int, needs: object | None = None) -> None:
        """LOAD n contiguous elements of DRAM at `dram` into `buf` from element `sram`."""
        e = ELEMENT_BYTES[buf]
        off = 0
        for rows, cols in dma_shapes(n, e, self.cfg):
            self.pending.append(dict(buf=buf, sram=sram + off, dram=dram + off * e, stride=cols * e, rows=rows, cols=cols))
            off += rows * cols
        if needs is not None:
            self.pending_needs.append(needs)

    def op(self, op: Opcode, uses: tuple = (), pop_s2c: bool = False, **kw) -> int:
        """A compute instruction; it consumes the pending loads (if any) and touches `uses`."""
        i = len(self.compute)
        if self.pending:
            self.groups.append(_Group(self.pending, i, self.pending_needs))
            self.pending, self.pending_needs = [], []
        self.compute.append(_Compute(op, kw, pop_s2c))
        for r in uses:
            self.last_use[r] = i
        return i

    def store(self, i: int, buf: Buffer, sram: int, dram: int, n: int, push: bool) -> None:
        """STOREs of n contiguous elements after compute instruction i (c2s), pushing s2c when `push`."""
        e = ELEMENT_BYTES[buf]
        off = 0
        for rows, cols in dma_shapes(n, e, self.cfg):
            self.compute[i].stores.append(dict(buf=buf, sram=sram + off, dram=dram + off * e, stride=cols * e,
                                               rows=rows, cols=cols))
            off += rows * cols
        self.compute[i].store_push = push

    # -- emission
    def emit(self, release_of: dict[object, int]) -> list[Instruction]:
        """The program: c2l pushes placed at the earliest compute instruction after the
        release of every region a group overwrites, in load order (pushes and pops pair up
        in order, one push per instruction)."""
        assert not self.pending, "loads without a consumer"
        push_at: dict[int, int] = {}  # compute index -> number of c2l pushes (always 1)
        group_pops: list[bool] = []
        last = -1
        for g in self.groups:
            need = max([release_of[r] for r in g.needs if r in release_of], default=None)
            if need is None:
                group_pops.append(False)
                continue
            p = max(need, last + 1)
            if p >= g.consumer:
                raise SpikecError(f"decode program: a load group for compute instruction {g.consumer} cannot be "
                                  f"released before it (release at {p})")
            push_at[p] = 1
            last = p
            group_pops.append(True)
        b = ProgramBuilder()
        gi = 0
        for i, c in enumerate(self.compute):
            while gi < len(self.groups) and self.groups[gi].consumer == i:
                g = self.groups[gi]
                if group_pops[gi]:
                    b.pop(Module.COMPUTE, Module.LOAD)
                for kw in g.loads:
                    b.emit(Opcode.LOAD, **kw)
                b.push(Module.LOAD, Module.COMPUTE)
                b.pop(Module.LOAD, Module.COMPUTE)
                gi += 1
            if c.pop_s2c:
                b.pop(Module.STORE, Module.COMPUTE)
            b.emit(c.op, **c.kw)
            if i in push_at:
                b.push(Module.COMPUTE, Module.LOAD)
            if c.stores:
                b.push(Module.COMPUTE, Module.STORE)
                b.pop(Module.COMPUTE, Module.STORE)
                for kw in c.stores:
                    b.emit(Opcode.STORE, **kw)
                if c.store_push:
                    b.push(Module.STORE, Module.COMPUTE)
        return b.program()


def build_decode(shape: LMShape, cfg: HwConfig, L: int, layers: int | None = None, head: bool = True, t: int = 4,
                 wbits: int = 4, kv_max: int = 4096) -> DecodeProgram:
    """The instruction stream of one batch-1 decode step: `layers` decoder layers (default
    all) and, with `head`, the final norm and LM head. `L`: the context length after this
    token (2 <= L <= kv_max; the KV cache holds kv_max rows per layer and KV head), `t`:
    the text timesteps (TC-LIF planes of the activation codes), `wbits`: 4 (packed int4).

    DRAM layout (bytes): the weight tiles of every layer and the head from 0 (only weights:
    `weights_end`), then per layer the SCL and VEC constants, the KV cache (int8 codes
    [layers, kv_heads, kv_max, head_dim] for K and for V), the rotary tables (float32
    [kv_max, head_dim / 2], cos then sin), the host's input row and the logits."""
    if wbits != 4:
        raise SpikecError("build_decode: only 4-bit weights are modeled")
    layers = shape.layers if layers is None else layers
    if not 2 <= L <= kv_max:
        raise SpikecError(f"build_decode: context length L={L} outside 2..{kv_max}")
    H, I, G, D, KVH = shape.hidden, shape.intermediate, shape.group, shape.head_dim, shape.kv_heads
    KV = shape.kv
    R, C = cfg.pe_rows, cfg.pe_cols
    wgt_slot = cfg.buffer_bytes(Buffer.WGT) // 2
    if kv_max * D > wgt_slot or L > MAX_LEN:
        raise SpikecError(f"build_decode: a KV tile of {kv_max} x {D} codes does not fit half of WGT ({wgt_slot} bytes)")
    WS = (0, wgt_slot)
    P = _Planner(cfg)
    qkv_m = H + 2 * KV

    # ---- buffer layout (elements)
    vec_alloc, scl_alloc, inp_alloc = [0], [0], [0]

    def take(counter: list[int], n: int) -> int:
        a = counter[0]
        counter[0] += n
        return a

    V_x, V_h, V_qkv = take(vec_alloc, H), take(vec_alloc, H), take(vec_alloc, qkv_m)
    V_kvs, V_qs = take(vec_alloc, 2 * KV), take(vec_alloc, G * D)
    V_sc, V_p = take(vec_alloc, G * kv_max), take(vec_alloc, G * kv_max)
    V_att, V_o = take(vec_alloc, H), take(vec_alloc, H)
    V_gu = take(vec_alloc, 2 * I)
    V_dn = take(vec_alloc, 2 * H)
    n_vc = 2 * H + 2 * KV + KV  # gamma1, gamma2, 1/s_k | 1/s_v, s_k
    V_c = (take(vec_alloc, n_vc), take(vec_alloc, n_vc))
    V_cos, V_sin = take(vec_alloc, (shape.heads + KVH) * D // 2), take(vec_alloc, (shape.heads + KVH) * D // 2)
    V_gf = take(vec_alloc, H)
    deq_max = (MAX_LEN // C) * C  # DEQ group: the most whole m-tiles a VEC row holds
    V_lo = (take(vec_alloc, deq_max), take(vec_alloc, deq_max))

    S_one, S_eps = take(scl_alloc, 1), take(scl_alloc, 1)
    S_row = take(scl_alloc, kv_max)  # 1/sqrt(head_dim) per key: DEQ's s_w row of the scores
    S_dyn = take(scl_alloc, 4 * max(G, 2))  # dynamic scales of ENCODE (per row)
    S_dyn2 = S_dyn + 2 * max(G, 2)

    def deq_groups(M: int) -> list[tuple[int, int]]:
        return [(m0, min(deq_max, M - m0)) for m0 in range(0, M, deq_max)]

    lin = shape.linears()
    sw_off: dict[str, list[int]] = {}
    n_sc = 0
    for name, K, M, bias in lin:
        sw_off[name] = []
        for m0, ml in deq_groups(M):
            sw_off[name].append(n_sc)
            n_sc += ml * (2 if bias else 1)
    sv_off = n_sc
    n_sc += KV
    S_c = (take(scl_alloc, n_sc), take(scl_alloc, n_sc))
    S_h = (take(scl_alloc, deq_max), take(scl_alloc, deq_max))  # LM head s_w of a DEQ group
    I_x = take(inp_alloc, max(I, H))
    I_p = take(inp_alloc, G * kv_max)
    for buf, used in ((Buffer.VEC, vec_alloc[0]), (Buffer.SCL, scl_alloc[0]), (Buffer.INP, inp_alloc[0])):
        if used > cfg.buffer_elems(buf):
            raise SpikecError(f"build_decode: {shape.name} needs {used} {buf.name} elements, config '{cfg.name}' "
                              f"has {cfg.buffer_elems(buf)}")
    acc_need = max(2 * I, 2 * H, G * kv_max, deq_max)
    if acc_need > cfg.buffer_elems(Buffer.ACC):
        raise SpikecError(f"build_decode: needs {acc_need} ACC elements, config '{cfg.name}' has "
                          f"{cfg.buffer_elems(Buffer.ACC)}")

    # ---- DRAM layout (bytes)
    kmax = (2 * wgt_slot // C) // R * R  # k-piece rows of a C-wide int4 tile in half of WGT

    def halves_of(K: int) -> list[tuple[int, int]]:
        """(k0, k) of the input row's parts: one, or two (the first a multiple of R) when K
        exceeds what one ENCODE row holds; each part has its own dynamic scale."""
        if K <= MAX_LEN:
            return [(0, K)]
        kh = -(-(-(-K // 2)) // R) * R
        return [(0, kh), (kh, K - kh)]

    def tiles_of(K: int, M: int) -> list[tuple[int, int, int, int]]:
        """(m0, m, k0, k) of the tiles of a [K, M] product: m-tiles of C, k-pieces (multiples
        of R, inside one part of the row, `best_piece`) with m * k / 2 <= half of WGT;
        m-tile outer, k-piece inner."""
        out = []
        for m0 in range(0, M, C):
            m = min(C, M - m0)
            for p0, pl in halves_of(K):
                kp = best_piece(pl, m)
                out += [(m0, m, p0 + k0, min(kp, pl - k0)) for k0 in range(0, pl, kp)]
        return out

    piece_memo: dict[tuple[int, int], int] = {}

    def best_piece(pl: int, m: int) -> int:
        """The k-piece (a multiple of R up to kmax) whose tiles load in the fewest cycles
        (cost model: LOAD latency and per-row burst rounding, `dma_shapes`)."""
        if (pl, m) not in piece_memo:
            def load_cycles(nbytes: int) -> float:
                return sum(cfg.dram_latency_cycles + r * math.ceil(c / cfg.dram_bytes_per_cycle)
                           for r, c in dma_shapes(nbytes, 1, cfg))
            cands = range(R, min(kmax, -(-pl // R) * R) + 1, R)
            piece_memo[(pl, m)] = min(cands, key=lambda kp: (sum(load_cycles(m * min(kp, pl - k0) // 2)
                                                                 for k0 in range(0, pl, kp)), -kp))
        return piece_memo[(pl, m)]

    dram = [0]

    def dalloc(n: int, align: int = 64) -> int:
        a = -(-dram[0] // align) * align
        dram[0] = a + n
        return a

    w_addr: dict[tuple, list[int]] = {}
    for l in range(layers):
        for name, K, M, _ in lin:
            w_addr[(l, name)] = [dalloc(m * k // 2, 1) for _, m, _, k in tiles_of(K, M)]
    if head:
        w_addr[("head",)] = [dalloc(m * k // 2, 1) for _, m, _, k in tiles_of(H, shape.vocab)]
    weights_end = dram[0]
    c_scl = [dalloc(4 * n_sc) for _ in range(layers)]
    c_vec = [dalloc(4 * n_vc) for _ in range(layers)]
    h_scl = dalloc(4 * shape.vocab)
    gf_vec = dalloc(4 * H)
    kcache = dalloc(layers * KVH * kv_max * D)
    vcache = dalloc(layers * KVH * kv_max * D)
    rope = dalloc(4 * kv_max * D)  # cos [kv_max, D/2] then sin
    consts = dalloc(8)  # 1.0, eps
    score_row = dalloc(4 * kv_max)  # 1/sqrt(D), kv_max times
    x_in = dalloc(4 * H)
    logits = dalloc(4 * shape.vocab)
    if dram[0] > cfg.dram_bytes:
        raise SpikecError(f"build_decode: {shape.name} needs {dram[0]:,} bytes of DRAM, config '{cfg.name}' has "
                          f"{cfg.dram_bytes:,}")

    T = t
    TC = int(Neuron.TCLIF)
    wslot = [0]  # WGT stream item counter
    weight_bytes = [0]

    def wgt_item(dram_addr: int, nbytes: int) -> tuple[int, object]:
        """LOAD nbytes into the next WGT slot (after its previous item's release)."""
        u = wslot[0]
        wslot[0] += 1
        slot = WS[u % 2]
        if nbytes:
            P.load(Buffer.WGT, slot, dram_addr, nbytes, needs=("wgt", u - 2) if u >= 2 else None)
        return slot, ("wgt", u)

    def encode(src: int, n: int, length: int, dst: int, scl: int, uses: tuple = ()) -> None:
        P.op(Opcode.ENCODE, uses, src=src, dst=dst, dst_buf=EncodeDst.INP, n=n, len=length, t=T,
             scale=ScaleMode.DYNAMIC, scl=scl)

    def product(key: tuple, K: int, M: int, x_vec: int, out_vec: int, scl_sw: list[int], bias: bool,
                s_region: tuple) -> None:
        """ENCODE x (one row; two half rows when K > MAX_LEN, each with its own scale and
        accumulators), the tiles' SPMMs, DEQ per group of m-tiles into out_vec."""
        bounds = halves_of(K)
        halves = len(bounds)
        for hi, (k0, kl) in enumerate(bounds):
            encode(x_vec + k0, 1, kl, I_x + k0, S_dyn + hi, uses=())
        tl = tiles_of(K, M)
        addrs = w_addr[key]
        assert len(addrs) == len(tl)
        groups = deq_groups(M)
        for (m0, m, k0, k), addr in zip(tl, addrs):
            hi = 0 if k0 < bounds[0][1] else 1
            first = k0 == bounds[hi][0]  # the first piece of its part overwrites ACC
            slot, item = wgt_item(addr, m * k // 2)
            weight_bytes[0] += m * k // 2
            P.op(Opcode.SPMM, (item,), inp=I_x + k0, wgt=slot, acc=hi * M + m0, n=1, k=k, m=m, acc_stride=m, t=T,
                 neuron=TC, wfmt=WeightFormat.INT4, acc_mode=AccMode.OVERWRITE if first else AccMode.ACCUMULATE)
        for gi, (g0, gl) in enumerate(groups):
            for hi in range(halves):
                dst = out_vec + g0 if halves == 1 else V_dn + hi * H + g0
                flags = VecFlag.PER_ROW | (VecFlag.BIAS if bias else 0)
                P.op(Opcode.VEC, s_region, func=VecFunc.DEQ, flags=int(flags), dst=dst, src0=hi * M + g0,
                     src1=S_dyn + hi, src2=scl_sw[gi], n=1, len=gl)
        if halves == 2:
            P.op(Opcode.VEC, (), func=VecFunc.ADD, dst=out_vec, src0=V_dn, src1=V_dn + H, n=1, len=H)

    # ---- once per step: input row, rotary rows, constants, final norm weight
    pos = L - 1
    nrope = shape.heads + KVH
    P.load(Buffer.VEC, V_x, x_in, H)
    P.pending.append(dict(buf=Buffer.VEC, sram=V_cos, dram=rope + 4 * pos * D // 2, stride=0, rows=nrope, cols=D // 2))
    P.pending.append(dict(buf=Buffer.VEC, sram=V_sin, dram=rope + 4 * (kv_max + pos) * D // 2, stride=0, rows=nrope,
                          cols=D // 2))
    P.pending.append(dict(buf=Buffer.SCL, sram=S_one, dram=consts, stride=8, rows=1, cols=2))
    P.load(Buffer.SCL, S_row, score_row, L)
    if head:
        P.load(Buffer.VEC, V_gf, gf_vec, H)
    kv_load = 0
    for l in range(layers):
        par = l % 2
        cr = ("const", l)
        need = ("const", l - 2) if l >= 2 else None
        P.load(Buffer.SCL, S_c[par], c_scl[l], n_sc, needs=need)
        P.load(Buffer.VEC, V_c[par], c_vec[l], n_vc)
        sc, vc = S_c[par], V_c[par]
        g1, g2, inv_kv, s_k = vc, vc + H, vc + 2 * H, vc + 2 * H + 2 * KV
        # attention block
        P.op(Opcode.VEC, (cr,), func=VecFunc.RMSNORM, dst=V_h, src0=V_x, src1=g1, src2=S_eps, n=1, len=H)
        product((l, "qkv"), H, qkv_m, V_h, V_qkv, [sc + o for o in sw_off["qkv"]], shape.qkv_bias, (cr,))
        P.op(Opcode.VEC, (), func=VecFunc.ROPE, dst=V_qkv, src0=V_qkv, src1=V_cos, src2=V_sin, n=nrope, len=D)
        P.op(Opcode.VEC, (cr,), func=VecFunc.MUL_ROW, dst=V_kvs, src0=V_qkv + H, src1=inv_kv, n=1, len=2 * KV)
        for h in range(KVH):
            base = ((l * KVH + h) * kv_max) * D
            # K_h: the cache's L-1 rows, then this token's row ENCODEd into the tile, STOREd to the cache
            kslot, kitem = wgt_item(kcache + base, pos * D)
            vslot, vitem = wgt_item(vcache + base, pos * D)
            kv_load += 2 * pos * D
            i = P.op(Opcode.ENCODE, (kitem,), src=V_kvs + h * D, dst=kslot + pos * D, dst_buf=EncodeDst.WGT, n=1,
                     len=D, t=7, scale=ScaleMode.STATIC, scl=S_one)
            P.store(i, Buffer.WGT, kslot + pos * D, kcache + base + pos * D, D, push=True)
            i = P.op(Opcode.ENCODE, (vitem,), src=V_kvs + KV + h * D, dst=vslot + pos * D, dst_buf=EncodeDst.WGT,
                     n=1, len=D, t=7, scale=ScaleMode.STATIC, scl=S_one)
            P.store(i, Buffer.WGT, vslot + pos * D, vcache + base + pos * D, D, push=True)
            # scores = (q * s_k) K^T / sqrt(D); P = softmax; out = P (V * s_v)
            P.op(Opcode.VEC, (cr,), func=VecFunc.MUL_ROW, dst=V_qs, src0=V_qkv + h * G * D, src1=s_k + h * D, n=G,
                 len=D)
            encode(V_qs, G, D, I_x, S_dyn)
            P.op(Opcode.SPMM, (kitem,), inp=I_x, wgt=kslot, acc=0, n=G, k=D, m=L, acc_stride=L, t=T, neuron=TC,
                 wfmt=WeightFormat.INT8, wtrans=1, acc_mode=AccMode.OVERWRITE)
            P.op(Opcode.VEC, (kitem,), pop_s2c=True, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW), dst=V_sc, src0=0,
                 src1=S_dyn, src2=S_row, n=G, len=L)
            P.op(Opcode.VEC, (), func=VecFunc.SOFTMAX, dst=V_p, src0=V_sc, n=G, len=L)
            encode(V_p, G, L, I_p, S_dyn2)
            P.op(Opcode.SPMM, (vitem,), inp=I_p, wgt=vslot, acc=0, n=G, k=L, m=D, acc_stride=D, t=T, neuron=TC,
                 wfmt=WeightFormat.INT8, acc_mode=AccMode.OVERWRITE)
            P.op(Opcode.VEC, (vitem, cr), pop_s2c=True, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW),
                 dst=V_att + h * G * D, src0=0, src1=S_dyn2, src2=sc + sv_off + h * D, n=G, len=D)
        product((l, "o"), H, H, V_att, V_o, [sc + o for o in sw_off["o"]], False, (cr,))
        P.op(Opcode.VEC, (), func=VecFunc.ADD, dst=V_x, src0=V_x, src1=V_o, n=1, len=H)
        # MLP block
        P.op(Opcode.VEC, (cr,), func=VecFunc.RMSNORM, dst=V_h, src0=V_x, src1=g2, src2=S_eps, n=1, len=H)
        product((l, "gate_up"), H, 2 * I, V_h, V_gu, [sc + o for o in sw_off["gate_up"]], False, (cr,))
        rows = 1 if I <= MAX_LEN else 2
        P.op(Opcode.VEC, (), func=VecFunc.SILU, dst=V_gu, src0=V_gu, n=rows, len=I // rows)
        P.op(Opcode.VEC, (), func=VecFunc.MUL, dst=V_gu, src0=V_gu, src1=V_gu + I, n=rows, len=I // rows)
        product((l, "down"), I, H, V_gu, V_o, [sc + o for o in sw_off["down"]], False, (cr,))
        P.op(Opcode.VEC, (cr,), func=VecFunc.ADD, dst=V_x, src0=V_x, src1=V_o, n=1, len=H)
    if head:
        P.op(Opcode.VEC, (), func=VecFunc.RMSNORM, dst=V_h, src0=V_x, src1=V_gf, src2=S_eps, n=1, len=H)
        encode(V_h, 1, H, I_x, S_dyn)
        groups = deq_groups(shape.vocab)
        tl = tiles_of(H, shape.vocab)
        addrs = w_addr[("head",)]
        per_group = {gi: [j for j, t_ in enumerate(tl) if g0 <= t_[0] < g0 + gl] for gi, (g0, gl) in enumerate(groups)}
        for gi, (g0, gl) in enumerate(groups):
            P.load(Buffer.SCL, S_h[gi % 2], h_scl + 4 * g0, gl, needs=("hs", gi - 2) if gi >= 2 else None)
            for j in per_group[gi]:
                m0, m, k0, k = tl[j]
                slot, item = wgt_item(addrs[j], m * k // 2)
                weight_bytes[0] += m * k // 2
                P.op(Opcode.SPMM, (item,), inp=I_x + k0, wgt=slot, acc=m0 - g0, n=1, k=k, m=m, acc_stride=m, t=T,
                     neuron=TC, wfmt=WeightFormat.INT4, acc_mode=AccMode.OVERWRITE if k0 == 0 else AccMode.ACCUMULATE)
            i = P.op(Opcode.VEC, (("hs", gi),), pop_s2c=gi >= 2, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW),
                     dst=V_lo[gi % 2], src0=0, src1=S_dyn, src2=S_h[gi % 2], n=1, len=gl)
            P.store(i, Buffer.VEC, V_lo[gi % 2], logits + 4 * g0, gl, push=gi + 2 < len(groups) or gi == len(groups) - 1)
    # release points: the last compute instruction touching each region
    release_of = dict(P.last_use)
    prog = P.emit(release_of)
    layout = dict(x_in=x_in, logits=logits, consts=consts, score_row=score_row, rope=rope, kcache=kcache,
                  vcache=vcache, end=dram[0], kv_max=kv_max, c_scl=c_scl, c_vec=c_vec, h_scl=h_scl, gf_vec=gf_vec,
                  sw_off=sw_off, sv_off=sv_off, n_sc=n_sc, n_vc=n_vc,
                  tiles={key: [(a, *tl) for a, tl in zip(addrs, tiles_of(*dims))] for key, addrs, dims in (
                      [((l, name), w_addr[(l, name)], (K, M)) for l in range(layers) for name, K, M, _ in lin]
                      + ([(("head",), w_addr[("head",)], (H, shape.vocab))] if head else []))},
                  parts={K: halves_of(K) for _, K, _, _ in lin})
    return DecodeProgram(shape, cfg, L, layers, head, prog, weight_bytes[0], kv_load, weights_end, layout)


# ---------------------------------------------------------------- timeline

_POP = {Module.LOAD: {"pop_next": "c2l"}, Module.COMPUTE: {"pop_prev": "l2c", "pop_next": "s2c"},
        Module.STORE: {"pop_prev": "c2s"}}
_PUSH = {Module.LOAD: {"push_next": "l2c"}, Module.COMPUTE: {"push_prev": "c2l", "push_next": "c2s"},
         Module.STORE: {"push_prev": "s2c"}}


@dataclass
class Timing:
    """A program costed along the timeline: `cycles` (critical path), `energy_pj` by
    component (dram, sram, pe, vec), busy cycles per module, bytes and counts."""

    cycles: int
    energy_pj: dict[str, float]
    busy: dict[str, int]
    dram_read: int
    dram_write: int
    sops: int
    spmm_cycles: int
    vec_cycles: int
    instructions: int

    @property
    def energy_total_pj(self) -> float:
        return float(sum(self.energy_pj.values()))


def timeline(prog: list[Instruction], cfg: HwConfig, spike_density: float, vector_density: float = 1.0,
             spmm_counts=None) -> Timing:
    """The simulator's timing without its functional work (runtime/simulator.py): each
    module runs its instructions in order, an instruction starting at max(its module's
    free time, the push time of each token it pops); cost per instruction from
    isa/costmodel.py. Each SPMM processes `vector_density` x its dense spike vectors and
    `spike_density` x n*k*t spikes (rounded), or `spmm_counts(i, ins)` -> (vectors,
    spikes) for the i-th SPMM when given. SpikecError on a deadlock."""
    spmm_i = 0
    per_mod = {m: [ins for ins in prog if FORMATS[ins.op].module == m] for m in Module}
    ptr = {m: 0 for m in Module}
    t_free = {m: 0 for m in Module}
    busy = {m: 0 for m in Module}
    tokens: dict[str, deque] = {q: deque() for q in ("l2c", "c2l", "c2s", "s2c")}
    energy = {"dram": 0.0, "sram": 0.0, "pe": 0.0, "vec": 0.0}
    rd = wr = sops = spmm_c = vec_c = 0
    while any(ptr[m] < len(per_mod[m]) for m in Module):
        progressed = False
        for m in Module:
            lst = per_mod[m]
            while ptr[m] < len(lst):
                ins = lst[ptr[m]]
                qs = [q for bit, q in _POP[m].items() if getattr(ins, bit)]
                if any(not tokens[q] for q in qs):
                    break
                start = t_free[m]
                for q in qs:
                    start = max(start, tokens[q].popleft())
                if ins.op == Opcode.SPMM:
                    if spmm_counts is not None:
                        vectors, spikes = spmm_counts(spmm_i, ins)
                    else:
                        vectors = round(vector_density * costmodel.spmm_dense_vectors(cfg, ins))
                        spikes = round(spike_density * ins.n * ins.k * ins.t)
                    spmm_i += 1
                    c = costmodel.instruction_cost(cfg, ins, vectors, spikes)
                    sops += spikes * ins.m
                    spmm_c += c.cycles
                else:
                    c = costmodel.instruction_cost(cfg, ins)
                    if ins.op in (Opcode.VEC, Opcode.ENCODE):
                        vec_c += c.cycles
                for k, v in c.energy_pj(cfg).items():
                    energy[k] += v
                rd += c.dram_read
                wr += c.dram_write
                t_free[m] = start + c.cycles
                busy[m] += c.cycles
                for bit, q in _PUSH[m].items():
                    if getattr(ins, bit):
                        tokens[q].append(t_free[m])
                ptr[m] += 1
                progressed = True
        if not progressed:
            raise SpikecError("timeline: deadlock: " + ", ".join(
                f"{m.name.lower()} at {ptr[m]}/{len(per_mod[m])}" for m in Module))
    left = {q: len(v) for q, v in tokens.items() if v}
    if left:
        raise SpikecError(f"timeline: tokens left over {left}")
    return Timing(max(t_free.values()), energy, {m.name.lower(): busy[m] for m in Module}, rd, wr, sops, spmm_c, vec_c,
                  len(prog))


# ---------------------------------------------------------------- host side


@dataclass(frozen=True)
class HostModel:
    """The host's share of a decode step (seconds), serial with the device: the logits
    read over the host link, the sampling (argmax over the vocabulary, measured or
    assumed), the embedding row written, and a fixed launch/doorbell overhead."""

    link_gbps: float = 25.0  # PCIe 4.0 x16, effective (GB/s)
    launch_s: float = 5e-6  # doorbell + completion interrupt
    argmax_s_per_elem: float = 2e-10  # numpy argmax over float32 (measured in the benchmark)

    def ops(self, shape: LMShape) -> dict[str, float]:
        return {"logits read (float32 [vocab])": 4 * shape.vocab / (self.link_gbps * 1e9),
                "sampling (argmax over vocab)": shape.vocab * self.argmax_s_per_elem,
                "embedding row lookup + write (float32 [hidden])": 4 * shape.hidden / (self.link_gbps * 1e9),
                "per-step program fields (KV row, rotary row, L) + launch": self.launch_s}


# ---------------------------------------------------------------- the whole step


@dataclass
class DecodeCost:
    """Cost of one decode step: device `timing` of the whole program (layers + head),
    `seconds` (device), energy (J) by component, and the program's traffic."""

    prog: DecodeProgram
    timing: Timing

    @property
    def seconds(self) -> float:
        return self.timing.cycles / (self.prog.cfg.clock_mhz * 1e6)

    @property
    def energy_j(self) -> dict[str, float]:
        return {k: v * 1e-12 for k, v in self.timing.energy_pj.items()}


def cost_decode(shape: LMShape, cfg: HwConfig, L: int, spike_density: float, vector_density: float = 1.0,
                layers: int | None = None, head: bool = True) -> DecodeCost:
    prog = build_decode(shape, cfg, L, layers=layers, head=head)
    return DecodeCost(prog, timeline(prog.program, cfg, spike_density, vector_density))


__all__ = ["DecodeCost", "DecodeProgram", "HostModel", "LMShape", "QWEN2VL_2B", "QWEN2VL_7B", "Timing", "build_decode",
           "cost_decode", "dma_shapes", "timeline"]
