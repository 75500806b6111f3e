"""The batch-1 decode step of a Qwen2-VL-shaped language model as one accelerator program,
costed with the cost model (docs/isa.md section 11).

`build_decode(shape, cfg, L)` builds the instruction stream of one decode step -- every
decoder layer and the LM head -- with `ProgramBuilder`, and `cost_decode` runs it along the
simulator's load/compute/store timeline (`timeline`), instruction by instruction with
isa/costmodel.py. `build_prefill(shape, cfg, tokens)` / `cost_prefill` do the same for a
prompt: its tokens in chunks of rows that stay on the device through every layer, each
weight tile streamed once per chunk and SPMMed with all its rows. `build_decode` checks its arguments, lays out the buffers
(`_sram_layout`) and DRAM (`_dram_layout`), plans the step piece by piece with `_Step`
(inputs, per layer `attention` -> `cache_rows` / `attend` and `mlp`, `lm_head`; each linear
`product` streaming its weight tiles) into a `_Planner`, which schedules the c2l tokens and
emits the program (docs/isa.md section 11). What runs where:

- host: the token's embedding row (float32 [hidden]) written to DRAM, the program's
  per-step fields patched (KV-cache row, rotary-table row, context length), the logits
  (float32 [vocab]) read back and the next token sampled (`HostModel.ops`);
- device, per layer: RMSNorm -> ENCODE -> q|k|v product (one [H, H + 2 kv] matrix, W4,
  bias) -> DEQ -> ROPE (q and k rows) -> new k, v rows quantized to int8 codes (per-channel
  static scales) into the KV-cache tiles and STOREd to the cache in DRAM -> per KV head:
  scores = SPMM(ENCODE(q * s_k), K codes^T) -> DEQ -> SOFTMAX -> SPMM(ENCODE(P), V codes)
  -> DEQ -> o product -> residual ADD -> RMSNorm -> gate|up product (one [H, 2 I] matrix)
  -> SILU(gate) * up -> down product -> residual ADD; then the final RMSNorm and the LM
  head, its logits STOREd in groups.

Weights stream once per step: each product's weights are laid out in DRAM as tiles (an
m-tile of `pe_cols` output features by a k-piece, packed int4 [k, m] row-major, at most
one WGT slot), loaded into the WGT slots in turn (`wgt_slots`: WGT cut into slots of at
most WGT_SLOT_MAX bytes, at least two; a tile's LOAD waits for the c2l token of the last
compute instruction that read its slot, the item as many tiles before as there are slots,
and its last LOAD pushes l2c for the SPMM that reads it), so the load module runs up to a
whole WGT ahead of the PE array while the vector unit works. The KV-cache tiles of the
attention ([L, head_dim] int8 codes per KV head) go through the same slots. WGT
addresses count the configuration's wgt_addr_bytes (`HwConfig.wgt_address`). Per-layer
constants (scales, biases, norm weights) are loaded once per layer into two slots (layer
parity) of SCL and VEC. Every LOAD is shaped (rows x cols) to waste as little of the
per-row burst rounding as possible (`dma_shapes`).

Units: cycles of the configuration's clock; energy in pJ by component (dram = HBM, sram,
pe, vec); bytes. Shapes: `LMShape`. The program is an ordinary ISA program: on the
functional simulator it gives, bit for bit, the decode step computed with the ISA's
numerics (tests/test_decode_model.py, small shapes); at 7B size it is only costed.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass, field

from spikec.errors import SpikecError
from spikec.isa import costmodel
from spikec.isa.encoding import Instruction
from spikec.isa.fields import (FORMATS, ELEMENT_BYTES, AccMode, Buffer, EncodeDst, Module, Neuron, Opcode, ScaleMode,
                               VecFlag, VecFunc, WeightFormat, WeightSource, field as isa_field)
from spikec.isa.hwconfig import HwConfig
from spikec.isa.programs import ProgramBuilder
from spikec.isa.tiling import weight_bytes

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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

    def __post_init__(self) -> None:
        for f in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim", "vocab"):
            v = getattr(self, f)
            if not _is_int(v) or v < 1:
                raise SpikecError(f"LMShape '{self.name}': {f} = {v!r} must be an integer >= 1")
        if self.heads % self.kv_heads:
            raise SpikecError(f"LMShape '{self.name}': heads {self.heads} is not a multiple of kv_heads "
                              f"{self.kv_heads} (grouped-query attention shares each KV head among heads / kv_heads)")
        if self.heads * self.head_dim != self.hidden:
            raise SpikecError(f"LMShape '{self.name}': heads x head_dim = {self.heads} x {self.head_dim} != hidden "
                              f"{self.hidden} (the program's attention rows are [hidden])")
        if self.head_dim % 2:
            raise SpikecError(f"LMShape '{self.name}': head_dim {self.head_dim} is odd (rotary embedding pairs halves)")

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
        return sum(weight_bytes(K, M, wbits) for K, M in mats)


QWEN2VL_7B = LMShape("Qwen2-VL-7B", hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, head_dim=128,
                     vocab=152064)
QWEN2VL_2B = LMShape("Qwen2-VL-2B", hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, head_dim=128,
                     vocab=151936)


# ---------------------------------------------------------------- DMA shapes


def dma_shapes(n: int, elem: int, cfg: HwConfig, align: int = 1) -> list[tuple[int, int]]:
    """(rows, cols) of the LOADs/STOREs that move `n` contiguous elements of `elem` bytes
    (each a packed 2-D transfer, DRAM stride = cols * elem) in the fewest cycles of the cost
    model: latency per instruction + rows * ceil(row bytes / bytes per cycle). One
    transfer with cols dividing n, or a main transfer plus a one-row remainder, which
    starts at a multiple of `align` elements (a buffer address: `HwConfig.buffer_unit`)."""
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
        full = min(n, MAX_DMA, int(j * bpc // elem))
        cols = full if full == n else full - full % align  # the remainder's start is an address
        if cols >= 1:
            rows, rem = divmod(n, cols)
            if rows <= MAX_DMA:
                c = lat * (1 + (rem > 0)) + cyc(rows, cols) + (cyc(1, rem) if rem else 0)
                if best is None or c < best[0]:
                    best = (c, [(rows, cols)] + ([(1, rem)] if rem else []))
        if full >= min(n, MAX_DMA):
            break
        j += 1
    assert best is not None
    return best[1]


# ---------------------------------------------------------------- weight tiles


def _parts(cfg: HwConfig, K: int) -> list[tuple[int, int]]:
    """(k0, k) of the input row's parts: one, or two (the first a multiple of pe_rows) when
    K exceeds what one ENCODE row holds; each part has its own dynamic scale."""
    if K <= MAX_LEN:
        return [(0, K)]
    R = cfg.pe_rows
    kh = -(-(-(-K // 2)) // R) * R
    return [(0, kh), (kh, K - kh)]


# The largest WGT slot: a weight tile of 512 KiB is 180 cycles of `deploy`'s HBM stream
# against its 4-cycle LOAD latency, so larger tiles gain nothing; a larger WGT is cut into
# more slots, which lets the load module run further ahead (docs/isa.md section 11).
WGT_SLOT_MAX = 512 * 1024


def wgt_slots(cfg: HwConfig) -> tuple[int, int]:
    """(number, bytes) of the WGT slots the weight and KV-cache tiles stream through: WGT
    cut into at least two slots of at most WGT_SLOT_MAX bytes, each a whole number of WGT
    addresses (wgt_addr_bytes)."""
    total = cfg.buffer_bytes(Buffer.WGT)
    n = max(2, -(-total // WGT_SLOT_MAX))
    size = total // n // cfg.wgt_addr_bytes * cfg.wgt_addr_bytes
    return n, size


def load_cycles(cfg: HwConfig, nbytes: int, align: int = 1) -> int:
    """Cost-model cycles (costmodel.dma_cost) of the LOADs (`dma_shapes`) that move nbytes
    contiguous bytes."""
    return sum(costmodel.dma_cost(cfg, Instruction(Opcode.LOAD, buf=Buffer.WGT, stride=c, rows=r, cols=c)).cycles
               for r, c in dma_shapes(nbytes, 1, cfg, align))


@functools.cache
def _best_piece(cfg: HwConfig, pl: int, m: int) -> int:
    """The k-piece (rows: a multiple of pe_rows, int4 [k, m] in one WGT slot) of a part of
    `pl` rows whose m-wide tiles load in the fewest cycles (cost model: LOAD latency and
    per-row burst rounding, `dma_shapes`)."""
    R = cfg.pe_rows
    kmax = (2 * wgt_slots(cfg)[1] // cfg.pe_cols) // R * R  # rows of a C-wide int4 tile in one slot

    cands = range(R, min(kmax, -(-pl // R) * R) + 1, R)
    return min(cands, key=lambda kp: (sum(load_cycles(cfg, m * min(kp, pl - k0) // 2) for k0 in range(0, pl, kp)), -kp))


def _tiles(cfg: HwConfig, K: int, M: int) -> list[tuple[int, int, int, int]]:
    """(m0, m, k0, k) of the tiles of a [K, M] product: m-tiles of pe_cols, k-pieces
    (`_best_piece` of the widest m-tile, inside one part of the row; the same for every
    m-tile, since a prefill lays out its rows' codes per k-piece) with m * k / 2 bytes <=
    one WGT slot; m-tile outer, k-piece inner."""
    C, out = cfg.pe_cols, []
    pieces = [(p0, pl, _best_piece(cfg, pl, min(C, M))) for p0, pl in _parts(cfg, K)]
    for m0 in range(0, M, C):
        m = min(C, M - m0)
        for p0, pl, kp in pieces:
            out += [(m0, m, p0 + k0, min(kp, pl - k0)) for k0 in range(0, pl, kp)]
    return out


def _interleave(nf: int, nw: int) -> list[bool]:
    """The order a batch's SPMMs run in: nf FIFO tiles (False) and nw WGT tiles (True), a FIFO
    tile first and the WGT tiles spread evenly among the rest, so that the PE array works
    on a WGT tile while the FIFO fills with the next FIFO tile's bytes."""
    out: list[bool] = []
    f = g = 0
    while f + g < nf + nw:
        take_w = g < nw and (f == nf or (g + 1) * nf <= f * nw)
        out.append(take_w)
        g, f = (g + 1, f) if take_w else (g, f + 1)
    return out


def _deq_max(cfg: HwConfig) -> int:
    """Outputs of a DEQ group: the most whole m-tiles one VEC row holds."""
    return (MAX_LEN // cfg.pe_cols) * cfg.pe_cols


def _deq_groups(cfg: HwConfig, M: int) -> list[tuple[int, int]]:
    """(m0, m) of the DEQ groups of M outputs."""
    g = _deq_max(cfg)
    return [(m0, min(g, M - m0)) for m0 in range(0, M, g)]


# ---------------------------------------------------------------- buffer and DRAM layout


class _Alloc:
    """A bump allocator: consecutive regions of one buffer (elements) or of DRAM (bytes)."""

    def __init__(self) -> None:
        self.used = 0

    def __call__(self, n: int, align: int = 1) -> int:
        a = -(-self.used // align) * align
        self.used = a + n
        return a


@dataclass(frozen=True)
class _Sram:
    """Where the step's operands lie on chip (element indices). VEC (float32): the residual
    row V_x [H], normed row V_h [H], q|k|v V_qkv [H + 2 KV], k|v scaled for the cache V_kvs
    [2 KV], scaled queries V_qs [G, D], scores V_sc and probabilities V_p [G, kv_max], the
    attention row V_att [H], a product's output V_o [H], gate|up V_gu [2 I], two half-row
    products V_dn [2, H], per-layer constants V_c (two slots: gamma1, gamma2, 1/s_k | 1/s_v,
    s_k: n_vc), rotary rows V_cos / V_sin [heads + kv_heads, D / 2], the final norm weight
    V_gf [H], the logits of a DEQ group of the LM head V_lo (two slots). SCL (float32): 1.0 and eps,
    S_row [kv_max] (1 / sqrt(D)), dynamic scales S_dyn / S_dyn2, per-layer constants S_c
    (two slots: each product's s_w (and bias) per DEQ group at sw_off[name], s_v at sv_off;
    n_sc), the LM head's s_w of a DEQ group S_h (two slots). INP (codes): the encoded row
    I_x [max(I, H)], the encoded probabilities I_p [G, kv_max]."""

    V_x: int
    V_h: int
    V_qkv: int
    V_kvs: int
    V_qs: int
    V_sc: int
    V_p: int
    V_att: int
    V_o: int
    V_gu: int
    V_dn: int
    V_c: tuple[int, int]
    V_cos: int
    V_sin: int
    V_gf: int
    V_lo: tuple[int, int]
    S_one: int
    S_eps: int
    S_row: int
    S_dyn: int
    S_dyn2: int
    S_c: tuple[int, int]
    S_h: tuple[int, int]
    I_x: int
    I_p: int
    sw_off: dict[str, list[int]]
    sv_off: int
    n_sc: int
    n_vc: int


def _scl_constants(shape: LMShape, cfg: HwConfig) -> tuple[dict[str, list[int]], int, int]:
    """A layer's SCL constants: (sw_off: each product's offset per DEQ group of its s_w,
    followed by its bias when it has one; sv_off: s_v [KV]; n_sc: elements in all)."""
    sw_off: dict[str, list[int]] = {}
    n_sc = 0
    for name, K, M, bias in shape.linears():
        sw_off[name] = []
        for m0, ml in _deq_groups(cfg, M):
            sw_off[name].append(n_sc)
            n_sc += ml * (2 if bias else 1)
    return sw_off, n_sc, n_sc + shape.kv


def _acc_need(shape: LMShape, cfg: HwConfig, kv_max: int, n: int) -> int:
    """ACC elements a step of n token rows needs: a product's accumulators (one row: all M
    of each part; n rows: each part's n rows of one DEQ group at a time), the scores of a
    KV head's queries, the LM head's DEQ group."""
    lo = min(_deq_max(cfg), shape.vocab)
    if n == 1:
        prods = max(len(_parts(cfg, K)) * M for _, K, M, _ in shape.linears())
    else:
        prods = max(len(_parts(cfg, K)) * n * min(M, _deq_max(cfg)) for _, K, M, _ in shape.linears())
    return max(prods, shape.group * kv_max, lo)


def _sram_layout(shape: LMShape, cfg: HwConfig, kv_max: int, n: int = 1, what: str = "build_decode") -> _Sram:
    """The on-chip layout (`_Sram`) for chunks of up to n token rows (decode: 1), checked
    against the configuration's buffers (SpikecError starting with `what`)."""
    H, I, G, D, KV = shape.hidden, shape.intermediate, shape.group, shape.head_dim, shape.kv
    v, s, i = _Alloc(), _Alloc(), _Alloc()
    n_vc = 2 * H + 2 * KV + KV  # gamma1, gamma2, 1/s_k | 1/s_v, s_k
    nrope = shape.heads + shape.kv_heads
    lo = min(_deq_max(cfg), shape.vocab)  # the LM head's DEQ group
    vec = dict(V_x=v(n * H), V_h=v(n * H), V_qkv=v(n * (H + 2 * KV)), V_kvs=v(n * 2 * KV), V_qs=v(G * D),
               V_sc=v(G * kv_max), V_p=v(G * kv_max), V_att=v(n * H), V_o=v(n * H), V_gu=v(n * 2 * I),
               V_dn=v(n * 2 * H), V_c=(v(n_vc), v(n_vc)), V_cos=v(n * nrope * D // 2), V_sin=v(n * nrope * D // 2),
               V_gf=v(H), V_lo=(v(lo), v(lo)))
    S_one, S_eps, S_row = s(1), s(1), s(kv_max)
    w = max(G, 2 * n)  # dynamic scales of ENCODE (per row: a product's n rows x 2 parts, or G query rows)
    S_dyn = s(4 * w)  # the second half: S_dyn2 (the attention's probabilities)
    sw_off, sv_off, n_sc = _scl_constants(shape, cfg)
    scl = dict(S_one=S_one, S_eps=S_eps, S_row=S_row, S_dyn=S_dyn, S_dyn2=S_dyn + 2 * w,
               S_c=(s(n_sc), s(n_sc)), S_h=(s(lo), s(lo)))
    inp = dict(I_x=i(n * max(I, H)), I_p=i(G * kv_max))
    what = what if n == 1 else f"{what} (chunks of {n} tokens)"
    for buf, used in ((Buffer.VEC, v.used), (Buffer.SCL, s.used), (Buffer.INP, i.used)):
        if used > cfg.buffer_elems(buf):
            raise SpikecError(f"{what}: {shape.name} needs {used} {buf.name} elements, config '{cfg.name}' "
                              f"has {cfg.buffer_elems(buf)}")
    acc_need = _acc_need(shape, cfg, kv_max, n)
    if acc_need > cfg.buffer_elems(Buffer.ACC):
        raise SpikecError(f"{what}: needs {acc_need} ACC elements, config '{cfg.name}' has "
                          f"{cfg.buffer_elems(Buffer.ACC)}")
    return _Sram(**vec, **scl, **inp, sw_off=sw_off, sv_off=sv_off, n_sc=n_sc, n_vc=n_vc)


@dataclass(frozen=True)
class _Dram:
    """The DRAM layout (byte addresses): `w_addr` {(layer, product) or ("head",): the
    address of each tile (`_tiles` order)} from 0 up to `weights_end` (only weights), then
    per layer the SCL and VEC constants (c_scl, c_vec), the LM head's s_w (h_scl) and the
    final norm weight (gf_vec), the KV cache (int8 codes [layers, kv_heads, kv_max, D], K
    then V), the rotary tables (float32 [kv_max, D / 2], cos then sin), the constants 1.0
    and eps, the score row [kv_max], the host's input rows (x_in: float32 [tokens, hidden])
    and the logits (of the last token); `end`."""

    w_addr: dict[tuple, list[int]]
    weights_end: int
    c_scl: list[int]
    c_vec: list[int]
    h_scl: int
    gf_vec: int
    kcache: int
    vcache: int
    rope: int
    consts: int
    score_row: int
    x_in: int
    logits: int
    end: int


def _dram_layout(shape: LMShape, cfg: HwConfig, layers: int, head: bool, kv_max: int, sram: _Sram,
                 tokens: int = 1, what: str = "build_decode") -> _Dram:
    """The DRAM layout (`_Dram`), checked against the configuration's DRAM."""
    H, D, KVH = shape.hidden, shape.head_dim, shape.kv_heads
    d = _Alloc()
    w_addr: dict[tuple, list[int]] = {}
    for l in range(layers):
        for name, K, M, _ in shape.linears():
            w_addr[(l, name)] = [d(m * k // 2) for _, m, _, k in _tiles(cfg, K, M)]
    if head:
        w_addr[("head",)] = [d(m * k // 2) for _, m, _, k in _tiles(cfg, H, shape.vocab)]
    weights_end = d.used
    lay = dict(c_scl=[d(4 * sram.n_sc, 64) for _ in range(layers)], c_vec=[d(4 * sram.n_vc, 64) for _ in range(layers)],
               h_scl=d(4 * shape.vocab, 64), gf_vec=d(4 * H, 64), kcache=d(layers * KVH * kv_max * D, 64),
               vcache=d(layers * KVH * kv_max * D, 64), rope=d(4 * kv_max * D, 64), consts=d(8, 64),
               score_row=d(4 * kv_max, 64), x_in=d(4 * tokens * H, 64), logits=d(4 * shape.vocab, 64))
    if d.used > cfg.dram_bytes:
        raise SpikecError(f"{what}: {shape.name} needs {d.used:,} bytes of DRAM, config '{cfg.name}' has "
                          f"{cfg.dram_bytes:,}")
    return _Dram(w_addr, weights_end, **lay, end=d.used)


# ---------------------------------------------------------------- program plan


@dataclass
class _Group:
    """Consecutive LOADs of the load module ending in one l2c token."""

    loads: list[dict]
    consumer: int  # compute instruction that pops the l2c token
    needs: list[object] = field(default_factory=list)  # regions it overwrites (released by compute)
    at: int = -1  # emitted before this compute instruction (default: its consumer)

    @property
    def position(self) -> int:
        return self.consumer if self.at < 0 else self.at


@dataclass
class _Compute:
    op: Opcode
    kw: dict
    pop_s2c: bool = False
    fifo: list[dict] = field(default_factory=list)  # LOADs into the weight FIFO that this SPMM reads
    stores: list[dict] = field(default_factory=list)  # STOREs fed by this instruction (c2s, in order)
    store_push: bool = False  # its (last) STORE pushes s2c


@dataclass
class DecodeProgram:
    """A decode step's (or a prefill's: `build_prefill`) instruction stream and what it moves.

    - `program`: the instructions (FINISH last);
    - `weight_load_bytes`: bytes LOADed into WGT or the weight FIFO from the weights' region
      of DRAM (a decode step of every layer and the head: each weight once,
      `shape.weight_bytes(4)`; a prefill: every layer's weights once per chunk, the head's
      once); `fifo_load_bytes`: those of them through the weight FIFO; `kv_load_bytes`:
      KV-cache bytes LOADed;
    - `layers`, `head`: what it covers; `L`: context length (KV rows incl. this token or
      the prefill's last)."""

    shape: LMShape
    cfg: HwConfig
    L: int
    layers: int
    head: bool
    program: list[Instruction]
    weight_load_bytes: int
    kv_load_bytes: int
    fifo_load_bytes: int  # of weight_load_bytes, those streamed through the weight FIFO
    weights_end: int  # DRAM bytes [0, weights_end) hold the weights
    layout: dict = field(default_factory=dict)  # where everything lies: DRAM addresses (x_in, logits, consts, KV
    # cache, rope tables, per-layer constants c_scl / c_vec), `tiles` {(layer, product) or ("head",): [(dram, m0, m,
    # k0, k)]}, the constants' offsets (sw_off, sv_off) and the input row's parts per K
    start: int = 0  # position of the first token (a decode step: L - 1)
    tokens: int = 1  # token rows the program runs (x_in holds them; decode: 1)
    chunk: int = 1  # token rows per chunk (each weight is streamed once per chunk)


class _Planner:
    """Collects compute instructions and load groups (the plan), schedules the c2l tokens
    that release buffer regions to later loads, then emits them through ProgramBuilder."""

    def __init__(self, cfg: HwConfig) -> None:
        self.cfg = cfg
        self.compute: list[_Compute] = []
        self.groups: list[_Group] = []
        self.last_use: dict[object, int] = {}  # region -> last compute instruction touching it
        self.pending: list[dict] = []  # loads not yet attached to a consumer
        self.pending_needs: list[object] = []
        self.fifo_pending: list[dict] = []  # weight-FIFO loads for the next SPMM
        # What the weight-FIFO split (`_Step.tile_batch`) estimates with: each compute
        # instruction's cost-model cycles (dense SPMMs), and the DMA cycles of the loads so far.
        self.est: list[int] = []
        self.load_cycles = 0

    # -- building
    def address(self, buf: Buffer, elem: int) -> int:
        """The buffer address of element `elem` (WGT: HwConfig.wgt_address of the byte)."""
        return self.cfg.wgt_address(elem) if buf == Buffer.WGT else elem

    def load(self, buf: Buffer, sram: int, dram: int, n: int, needs: object | None = None) -> None:
        """LOAD n contiguous elements of DRAM at `dram` into `buf` from element `sram`."""
        e = ELEMENT_BYTES[buf]
        off = 0
        for rows, cols in dma_shapes(n, e, self.cfg, self.cfg.buffer_unit(buf)):
            self.load_rows(buf, sram + off, dram + off * e, cols * e, rows, cols)
            off += rows * cols
        if needs is not None:
            self.pending_needs.append(needs)

    def load_rows(self, buf: Buffer, sram: int, dram: int, stride: int, rows: int, cols: int) -> None:
        """One 2-D LOAD as given (e.g. stride 0: one DRAM row repeated)."""
        kw = dict(buf=buf, sram=self.address(buf, sram), dram=dram, stride=stride, rows=rows, cols=cols)
        self.pending.append(kw)
        if self.cfg.wfifo_bytes:
            self.load_cycles += costmodel.dma_cost(self.cfg, Instruction(Opcode.LOAD, **kw)).cycles

    def fifo_load(self, dram: int, n: int) -> None:
        """LOADs of n contiguous DRAM bytes into the weight FIFO, for the next SPMM (which
        reads them with wsrc FIFO)."""
        off = 0
        for rows, cols in dma_shapes(n, 1, self.cfg):
            self.fifo_pending.append(dict(buf=Buffer.WGT, sram=0, dram=dram + off, stride=cols, rows=rows, cols=cols,
                                          wfifo=1))
            off += rows * cols

    def close_group(self, consumer: int, at: int) -> None:
        """The pending loads become one group popped by compute instruction `consumer` (a
        later one) and emitted before instruction `at` (<= consumer): so a load can be
        queued ahead of weight-FIFO loads whose SPMMs run before its consumer."""
        assert self.pending and at <= consumer
        self.groups.append(_Group(self.pending, consumer, self.pending_needs, at))
        self.pending, self.pending_needs = [], []

    def op(self, op: Opcode, uses: tuple = (), pop_s2c: bool = False, **kw) -> int:
        """A compute instruction; it consumes the pending loads (if any) and touches `uses`."""
        i = len(self.compute)
        if self.pending:
            self.groups.append(_Group(self.pending, i, self.pending_needs))
            self.pending, self.pending_needs = [], []
        self.compute.append(_Compute(op, kw, pop_s2c, self.fifo_pending))
        self.fifo_pending = []
        if self.cfg.wfifo_bytes:
            self.est.append(costmodel.instruction_cost(self.cfg, Instruction(op, **kw)).cycles)
        for r in uses:
            self.last_use[r] = i
        return i

    def store(self, i: int, buf: Buffer, sram: int, dram: int, n: int, push: bool) -> None:
        """STOREs of n contiguous elements after compute instruction i (c2s), pushing s2c when `push`."""
        e = ELEMENT_BYTES[buf]
        off = 0
        for rows, cols in dma_shapes(n, e, self.cfg, self.cfg.buffer_unit(buf)):
            self.compute[i].stores.append(dict(buf=buf, sram=self.address(buf, sram + off), dram=dram + off * e,
                                               stride=cols * e, rows=rows, cols=cols))
            off += rows * cols
        self.compute[i].store_push = push

    # -- schedule
    def schedule(self, release_of: dict[object, int]) -> tuple[set[int], list[bool]]:
        """(compute instructions that push c2l, whether each load group pops c2l): a push at
        the earliest compute instruction after the release of every region the group
        overwrites, in load order (pushes and pops pair up in order, one push per
        instruction)."""
        assert not self.pending and not self.fifo_pending, "loads without a consumer"
        assert all(a.consumer < b.consumer and a.position <= b.position for a, b in zip(self.groups, self.groups[1:]))
        push_at: set[int] = set()
        group_pops: list[bool] = []
        last = -1
        for g in self.groups:
            need = max([release_of[r] for r in g.needs if r in release_of], default=None)
            # A group queued ahead of its consumer (`close_group`: several at one place) needs
            # no token of its own when the one an earlier group popped already orders it (the
            # load module runs in order, so the compute module had finished `need`): one
            # push per compute instruction could otherwise not fit before its place.
            if need is None or (g.at >= 0 and need <= last):
                group_pops.append(False)
                continue
            p = max(need, last + 1)
            # Before the group's place in the load queue: weight-FIFO loads queued after it
            # feed SPMMs from there on, which could not run while it waits.
            if p >= g.position:
                raise SpikecError(f"decode program: a load group for compute instruction {g.consumer} cannot be "
                                  f"released before it (release at {p})")
            push_at.add(p)
            last = p
            group_pops.append(True)
        return push_at, group_pops

    # -- emission
    def emit(self, release_of: dict[object, int]) -> list[Instruction]:
        """The program: each load group before its consumer, each compute instruction with its
        tokens, its STOREs after it (`schedule` places the c2l pushes)."""
        push_at, group_pops = self.schedule(release_of)
        consumers = {g.consumer for g in self.groups}
        b = ProgramBuilder()
        gi = 0
        for i, c in enumerate(self.compute):
            while gi < len(self.groups) and self.groups[gi].position == i:
                if group_pops[gi]:
                    b.pop(Module.COMPUTE, Module.LOAD)
                for kw in self.groups[gi].loads:
                    b.emit(Opcode.LOAD, **kw)
                b.push(Module.LOAD, Module.COMPUTE)
                gi += 1
            for kw in c.fifo:
                b.emit(Opcode.LOAD, **kw)
            if i in consumers:
                b.pop(Module.LOAD, Module.COMPUTE)
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


# ---------------------------------------------------------------- the step, piece by piece


class _Step:
    """Plans a decode step, or a prefill, into a `_Planner`, piece by piece: the program's
    inputs; per chunk of token rows (decode: one row) the chunk's rows, and per layer its
    constants, the attention block (per KV head: the chunk's new cache rows, then per
    token the attention over the cache up to its position) and the MLP block; then the LM
    head on the last token. Weight tiles and KV-cache tiles stream through the WGT slots in
    turn (`wgt_item`), once per chunk; counts the bytes they move."""

    def __init__(self, shape: LMShape, cfg: HwConfig, L: int, kv_max: int, t: int, sram: _Sram, dram: _Dram,
                 start: int | None = None) -> None:
        self.shape, self.cfg, self.L, self.kv_max, self.t = shape, cfg, L, kv_max, t
        self.s, self.d = sram, dram
        self.start = L - 1 if start is None else start  # position of the program's first token (x_in row 0)
        self.P = _Planner(cfg)
        n, size = wgt_slots(cfg)
        self.slots = tuple(range(0, n * size, size))  # byte offsets
        self.items = 0  # WGT stream items so far
        self.weight_bytes = 0  # weight bytes LOADed (into WGT or the weight FIFO)
        self.fifo_bytes = 0  # of which through the weight FIFO
        # Where the compute work that the load module can fill with WGT loads began: (compute
        # instruction, the planner's load_cycles then); see tile_batch.
        self.mark = (0, 0)
        self.kv_load = 0  # KV-cache bytes LOADed
        self.chunk, self.p0, self.rows = 0, self.start, 1  # the chunk being planned: index, first position, rows
        self.layers_done = 0  # decoder layers planned so far, over all chunks (constant slots by parity)

    def wgt_item(self, dram_addr: int, nbytes: int) -> tuple[int, object]:
        """(slot, region) of the next WGT stream item: LOAD nbytes into the next slot (its
        byte offset), after the release of the item that used it before."""
        u, n = self.items, len(self.slots)
        self.items += 1
        slot = self.slots[u % n]
        if nbytes:
            self.P.load(Buffer.WGT, slot, dram_addr, nbytes, needs=("wgt", u - n) if u >= n else None)
        return slot, ("wgt", u)

    def encode(self, src: int, n: int, length: int, dst: int, scl: int) -> None:
        """ENCODE n rows of `length` VEC elements into INP codes of t planes, dynamic scales at scl."""
        self.P.op(Opcode.ENCODE, (), src=src, dst=dst, dst_buf=EncodeDst.INP, n=n, len=length, t=self.t,
                  scale=ScaleMode.DYNAMIC, scl=scl)

    def spmm_fields(self, inp: int, acc: int, n: int, m: int, k: int, acc_stride: int, overwrite: bool) -> dict:
        """The fields of a weight tile's SPMM (int4 [k, m], TC-LIF of t planes) but its weight source."""
        return dict(inp=inp, acc=acc, n=n, k=k, m=m, acc_stride=acc_stride, t=self.t, neuron=int(Neuron.TCLIF),
                    wfmt=WeightFormat.INT4, acc_mode=AccMode.OVERWRITE if overwrite else AccMode.ACCUMULATE)

    def tile_batch(self, tiles: list[tuple[int, dict]]) -> None:
        """SPMM the weight tiles of one accumulation in order: (DRAM address, `spmm_fields`)
        each; each tile streams once. Without a weight FIFO every tile goes through the next
        WGT slot (`wgt_item`), its LOAD just before its SPMM in the program. With one
        (cfg.wfifo_bytes), the last `wgt_share` tiles still go through WGT slots, but their
        LOADs are queued before this batch, so the load module fetches them during the
        compute work before it (vector functions, attention), when the FIFO could not take
        them; the others stream through the FIFO, which saves a WGT write and read per byte.
        The SPMMs run in `_interleave` order (the WGT tiles among the FIFO ones, so the FIFO
        fills while the PE array works on a WGT tile); the first of each accumulator region
        in that order overwrites it (docs/isa.md section 11)."""
        P, cfg = self.P, self.cfg
        w = self.wgt_share(tiles)
        nf = len(tiles) - w
        for _, kw in tiles:
            self.weight_bytes += weight_bytes(kw["k"], kw["m"], 4)
        if nf == 0:
            for addr, kw in tiles:
                slot, item = self.wgt_item(addr, weight_bytes(kw["k"], kw["m"], 4))
                P.op(Opcode.SPMM, (item,), wgt=cfg.wgt_address(slot), **kw)
            return
        i0 = len(P.compute)
        if P.pending:  # loads for this batch's first instruction (e.g. the head's s_w)
            P.close_group(i0, i0)
        order = _interleave(nf, w)  # False: the next FIFO tile, True: the next WGT tile
        wpos = [p for p, is_w in enumerate(order) if is_w]
        slots = []
        for j, (addr, kw) in enumerate(tiles[nf:]):
            slots.append(self.wgt_item(addr, weight_bytes(kw["k"], kw["m"], 4)))
            P.close_group(i0 + wpos[j], i0)
        last_fifo = max(p for p, is_w in enumerate(order) if not is_w)
        self.mark = (i0 + last_fifo + 1, P.load_cycles)  # the next window starts after the last FIFO tile
        fifo, wgt = iter(tiles[:nf]), iter(zip(slots, tiles[nf:]))
        started: set[int] = set()  # ACC regions written so far: the first tile of each overwrites
        for is_w in order:
            if is_w:
                (slot, item), (_, kw) = next(wgt)
                uses, src = (item,), dict(wgt=cfg.wgt_address(slot))
            else:
                addr, kw = next(fifo)
                nbytes = weight_bytes(kw["k"], kw["m"], 4)
                P.fifo_load(addr, nbytes)
                self.fifo_bytes += nbytes
                uses, src = (), dict(wsrc=int(WeightSource.FIFO))
            mode = AccMode.ACCUMULATE if kw["acc"] in started else AccMode.OVERWRITE
            started.add(kw["acc"])
            P.op(Opcode.SPMM, uses, **(kw | src | dict(acc_mode=mode)))

    def wgt_share(self, tiles: list[tuple[int, dict]]) -> int:
        """How many of a batch's last tiles go through WGT: all without a weight FIFO; with
        one, as many as the load module can fetch in the compute instructions planned since
        the last FIFO tile (`mark`; their cost-model cycles, SPMMs dense) less the other
        loads planned since (KV-cache tiles, constants), rounded up to whole tiles (a tile
        too few leaves the DRAM idle, one too many costs only its WGT write and read), at
        most the WGT slots. (Where the window outgrows what WGT holds, the last of these
        LOADs wait for slots that the window's own work releases, as without a FIFO.)"""
        if not self.cfg.wfifo_bytes:
            return len(tiles)
        P, (c0, l0) = self.P, self.mark
        window = sum(P.est[c0:]) - (P.load_cycles - l0)
        w = got = 0
        for _, kw in reversed(tiles):
            if got >= window or w >= len(self.slots):
                break
            got += load_cycles(self.cfg, weight_bytes(kw["k"], kw["m"], 4), self.cfg.wgt_addr_bytes)
            w += 1
        return w

    def product(self, key: tuple, K: int, M: int, x_vec: int, out_vec: int, scl_sw: list[int], bias: bool,
                s_region: tuple, x_pitch: int | None = None) -> None:
        """out_vec [rows, M] = x_vec [rows, K] (rows x_pitch apart, default K) @ W (+ bias)
        for the chunk's token rows (`product_rows` when there are several)."""
        if self.rows > 1:
            self.product_rows(key, K, M, x_vec, out_vec, scl_sw, bias, s_region, x_pitch or K)
            return
        self.product_row(key, K, M, x_vec, out_vec, scl_sw, bias, s_region)

    def product_row(self, key: tuple, K: int, M: int, x_vec: int, out_vec: int, scl_sw: list[int], bias: bool,
                    s_region: tuple) -> None:
        """out_vec [M] = x_vec [K] @ W (+ bias): ENCODE x (one row; two half rows when K >
        MAX_LEN, each with its own scale and accumulators), the tiles' SPMMs, DEQ per group
        of m-tiles (s_w, bias from SCL at scl_sw[group]) into out_vec."""
        s = self.s
        bounds = _parts(self.cfg, K)
        for hi, (k0, kl) in enumerate(bounds):
            self.encode(x_vec + k0, 1, kl, s.I_x + k0, s.S_dyn + hi)
        tl = _tiles(self.cfg, K, M)
        addrs = self.d.w_addr[key]
        assert len(addrs) == len(tl)
        batch = []
        for (m0, m, k0, k), addr in zip(tl, addrs):
            hi = 0 if k0 < bounds[0][1] else 1
            batch.append((addr, self.spmm_fields(s.I_x + k0, hi * M + m0, 1, m, k, m, overwrite=k0 == bounds[hi][0])))
        self.tile_batch(batch)
        flags = int(VecFlag.PER_ROW | (VecFlag.BIAS if bias else 0))
        for gi, (g0, gl) in enumerate(_deq_groups(self.cfg, M)):
            for hi in range(len(bounds)):
                dst = out_vec + g0 if len(bounds) == 1 else s.V_dn + hi * self.shape.hidden + g0
                self.P.op(Opcode.VEC, s_region, func=VecFunc.DEQ, flags=flags, dst=dst, src0=hi * M + g0,
                          src1=s.S_dyn + hi, src2=scl_sw[gi], n=1, len=gl)
        if len(bounds) == 2:
            H = self.shape.hidden
            self.P.op(Opcode.VEC, (), func=VecFunc.ADD, dst=out_vec, src0=s.V_dn, src1=s.V_dn + H, n=1, len=H)

    def product_rows(self, key: tuple, K: int, M: int, x_vec: int, out_vec: int, scl_sw: list[int], bias: bool,
                     s_region: tuple, x_pitch: int) -> None:
        """out_vec [rows, M] = x_vec [rows, K] @ W (+ bias) for rows > 1 token rows, each
        weight tile LOADed once and SPMMed with all rows (n = rows). Per row and part of K
        (`_parts`) a dynamic ENCODE gives the row's scale; an SPMM reads [rows, k] codes
        packed, so where a part has several k-pieces each piece's rows are ENCODEd again,
        statically with the same scale (the same codes: q = clamp(rint(x / s))), into INP
        [rows, k] at I_x + rows * k0. Per DEQ group of m-tiles: its tiles' SPMMs into ACC
        [part, rows, group] (acc_stride = the group's width), then DEQ into out_vec."""
        s, n, cfg = self.s, self.rows, self.cfg
        bounds = _parts(cfg, K)
        tl = _tiles(cfg, K, M)
        for hi, (k0, kl) in enumerate(bounds):
            for r in range(n):
                self.encode(x_vec + r * x_pitch + k0, 1, kl, s.I_x + n * k0 + r * kl, s.S_dyn + hi * n + r)
            pieces = sorted({(tk0, tk) for _, _, tk0, tk in tl if k0 <= tk0 < k0 + kl})
            if len(pieces) > 1:
                for pk0, pk in pieces:
                    for r in range(n):
                        self.P.op(Opcode.ENCODE, (), src=x_vec + r * x_pitch + pk0, dst=s.I_x + n * pk0 + r * pk,
                                  dst_buf=EncodeDst.INP, n=1, len=pk, t=self.t, scale=ScaleMode.STATIC,
                                  scl=s.S_dyn + hi * n + r)
        addrs = self.d.w_addr[key]
        assert len(addrs) == len(tl)
        flags = int(VecFlag.PER_ROW | (VecFlag.BIAS if bias else 0))
        groups = _deq_groups(cfg, M)
        for gi, (g0, gl) in enumerate(groups):
            batch = []
            for (m0, m, k0, k), addr in zip(tl, addrs):
                if not g0 <= m0 < g0 + gl:
                    continue
                hi = 0 if k0 < bounds[0][1] else 1
                batch.append((addr, self.spmm_fields(s.I_x + n * k0, hi * n * gl + m0 - g0, n, m, k, gl,
                                                     overwrite=k0 == bounds[hi][0])))
            self.tile_batch(batch)
            for hi in range(len(bounds)):
                dst = out_vec if len(bounds) == 1 else s.V_dn + hi * n * M
                if len(groups) == 1:  # the rows of ACC and of out_vec are both M apart
                    self.P.op(Opcode.VEC, s_region, func=VecFunc.DEQ, flags=flags, dst=dst, src0=hi * n * gl,
                              src1=s.S_dyn + hi * n, src2=scl_sw[gi], n=n, len=gl)
                    continue
                for r in range(n):
                    self.P.op(Opcode.VEC, s_region, func=VecFunc.DEQ, flags=flags, dst=dst + r * M + g0,
                              src0=hi * n * gl + r * gl, src1=s.S_dyn + hi * n + r, src2=scl_sw[gi], n=1, len=gl)
        if len(bounds) == 2:
            self.P.op(Opcode.VEC, (), func=VecFunc.ADD, dst=out_vec, src0=s.V_dn, src1=s.V_dn + n * M, n=n, len=M)

    def inputs(self, head: bool) -> None:
        """Once per program: the first chunk's rows (`chunk_rows`), 1.0 and eps, the score
        row, the final norm weight."""
        s, d, P = self.s, self.d, self.P
        self.chunk_rows()
        P.load_rows(Buffer.SCL, s.S_one, d.consts, 8, 1, 2)
        P.load(Buffer.SCL, s.S_row, d.score_row, self.L)
        if head:
            P.load(Buffer.VEC, s.V_gf, d.gf_vec, self.shape.hidden)

    def chunk_rows(self) -> None:
        """The chunk's input rows (x_in rows p0 - start ...) and each token's rotary rows
        (one DRAM row repeated for every head); a later chunk's overwrite the previous
        chunk's once its last instruction has run."""
        s, d, P = self.s, self.d, self.P
        D, nrope, H = self.shape.head_dim, self.shape.heads + self.shape.kv_heads, self.shape.hidden
        needs = ("rows", self.chunk - 1) if self.chunk else None
        P.load(Buffer.VEC, s.V_x, d.x_in + 4 * (self.p0 - self.start) * H, self.rows * H, needs=needs)
        for r in range(self.rows):
            pos, off = self.p0 + r, r * nrope * D // 2
            P.load_rows(Buffer.VEC, s.V_cos + off, d.rope + 4 * pos * D // 2, 0, nrope, D // 2)
            P.load_rows(Buffer.VEC, s.V_sin + off, d.rope + 4 * (self.kv_max + pos) * D // 2, 0, nrope, D // 2)

    def next_chunk(self, p0: int, rows: int) -> None:
        """Start the next chunk of token rows at position p0, after the last instruction of
        this one (which releases its row buffers)."""
        self.P.last_use[("rows", self.chunk)] = len(self.P.compute) - 1
        self.chunk, self.p0, self.rows = self.chunk + 1, p0, rows
        self.chunk_rows()

    def layer(self, l: int) -> None:
        """Decoder layer l: its constants into the slots of its parity, attention, MLP."""
        g = self.layers_done  # constants slots and regions count layers over all chunks
        self.layers_done += 1
        par, s = g % 2, self.s
        self.P.load(Buffer.SCL, s.S_c[par], self.d.c_scl[l], s.n_sc, needs=("const", g - 2) if g >= 2 else None)
        self.P.load(Buffer.VEC, s.V_c[par], self.d.c_vec[l], s.n_vc)
        self.attention(l, g, s.S_c[par], s.V_c[par])
        self.mlp(l, g, s.S_c[par], s.V_c[par])

    def sw(self, sc: int, name: str) -> list[int]:
        """SCL addresses of product `name`'s s_w per DEQ group, in the constants slot at sc."""
        return [sc + o for o in self.s.sw_off[name]]

    def attention(self, l: int, g: int, sc: int, vc: int) -> None:
        """x += o(attention(rope(qkv(rmsnorm(x, gamma1))))) for the chunk's rows: the new K, V
        rows scaled by 1 / s_k, 1 / s_v into V_kvs, then per KV head the cache rows and
        each token's attention. `g`: the layer's index over all chunks (its constants)."""
        shape, s, P, cr, n = self.shape, self.s, self.P, ("const", g), self.rows
        H, KV, D, nrope = shape.hidden, shape.kv, shape.head_dim, shape.heads + shape.kv_heads
        P.op(Opcode.VEC, (cr,), func=VecFunc.RMSNORM, dst=s.V_h, src0=s.V_x, src1=vc, src2=s.S_eps, n=n, len=H)
        self.product((l, "qkv"), H, H + 2 * KV, s.V_h, s.V_qkv, self.sw(sc, "qkv"), shape.qkv_bias, (cr,))
        for r in range(n):  # a token's q and k heads, with its own position's rotary rows
            row, rot = s.V_qkv + r * (H + 2 * KV), r * nrope * D // 2
            P.op(Opcode.VEC, (), func=VecFunc.ROPE, dst=row, src0=row, src1=s.V_cos + rot, src2=s.V_sin + rot,
                 n=nrope, len=D)
        for r in range(n):
            P.op(Opcode.VEC, (cr,), func=VecFunc.MUL_ROW, dst=s.V_kvs + r * 2 * KV, src0=s.V_qkv + r * (H + 2 * KV) + H,
                 src1=vc + 2 * H, n=1, len=2 * KV)
        for h in range(shape.kv_heads):
            k, v = self.cache_rows(l, h)
            for r in range(n):
                self.attend(g, h, r, k, v, sc, vc)
        self.product((l, "o"), H, H, s.V_att, s.V_o, self.sw(sc, "o"), False, (cr,))
        P.op(Opcode.VEC, (), func=VecFunc.ADD, dst=s.V_x, src0=s.V_x, src1=s.V_o, n=n, len=H)

    def cache_rows(self, l: int, h: int) -> tuple[tuple[int, object], tuple[int, object]]:
        """KV head h of layer l: its K and V tiles ([kv_max, D] int8 codes) stream into WGT
        (the p0 rows cached before the chunk), the chunk's rows are ENCODEd (static unit
        scale, int8) into the tiles after them and STOREd to the cache. Returns the (slot,
        region) of K and of V."""
        D, p0, n, s, d, P = self.shape.head_dim, self.p0, self.rows, self.s, self.d, self.P
        base = ((l * self.shape.kv_heads + h) * self.kv_max) * D
        k = self.wgt_item(d.kcache + base, p0 * D)
        v = self.wgt_item(d.vcache + base, p0 * D)
        self.kv_load += 2 * p0 * D
        rows = ((k, s.V_kvs + h * D, d.kcache), (v, s.V_kvs + self.shape.kv + h * D, d.vcache))
        for (slot, item), src, cache in rows:
            for r in range(n):
                i = P.op(Opcode.ENCODE, (item,), src=src + r * 2 * self.shape.kv,
                         dst=self.cfg.wgt_address(slot + (p0 + r) * D), dst_buf=EncodeDst.WGT, n=1, len=D, t=7,
                         scale=ScaleMode.STATIC, scl=s.S_one)
            P.store(i, Buffer.WGT, slot + p0 * D, cache + base + p0 * D, n * D, push=True)
        return k, v

    def attend(self, g: int, h: int, r: int, k: tuple[int, object], v: tuple[int, object], sc: int, vc: int) -> None:
        """Token r of the chunk (position p = p0 + r), the G query heads of KV head h: scores
        [G, p + 1] = ENCODE(q * s_k) K^T / sqrt(D) over the cache rows up to its own (the
        causal mask: later rows are not read), P = softmax, its V_att rows [G, D] =
        ENCODE(P) V * s_v (the codes times their scales)."""
        shape, s, P, cr, L = self.shape, self.s, self.P, ("const", g), self.p0 + r + 1
        G, D, H, KV, t, TC = shape.group, shape.head_dim, shape.hidden, shape.kv, self.t, int(Neuron.TCLIF)
        (kslot, kitem), (vslot, vitem) = k, v
        P.op(Opcode.VEC, (cr,), func=VecFunc.MUL_ROW, dst=s.V_qs, src0=s.V_qkv + r * (H + 2 * KV) + h * G * D,
             src1=vc + 2 * H + 2 * KV + h * D, n=G, len=D)
        self.encode(s.V_qs, G, D, s.I_x, s.S_dyn)
        P.op(Opcode.SPMM, (kitem,), inp=s.I_x, wgt=self.cfg.wgt_address(kslot), acc=0, n=G, k=D, m=L, acc_stride=L, t=t, neuron=TC,
             wfmt=WeightFormat.INT8, wtrans=1, acc_mode=AccMode.OVERWRITE)
        P.op(Opcode.VEC, (kitem,), pop_s2c=r == 0, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW), dst=s.V_sc, src0=0,
             src1=s.S_dyn, src2=s.S_row, n=G, len=L)
        P.op(Opcode.VEC, (), func=VecFunc.SOFTMAX, dst=s.V_p, src0=s.V_sc, n=G, len=L)
        self.encode(s.V_p, G, L, s.I_p, s.S_dyn2)
        P.op(Opcode.SPMM, (vitem,), inp=s.I_p, wgt=self.cfg.wgt_address(vslot), acc=0, n=G, k=L, m=D, acc_stride=D, t=t, neuron=TC,
             wfmt=WeightFormat.INT8, acc_mode=AccMode.OVERWRITE)
        P.op(Opcode.VEC, (vitem, cr), pop_s2c=r == 0, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW),
             dst=s.V_att + r * H + h * G * D, src0=0, src1=s.S_dyn2, src2=sc + s.sv_off + h * D, n=G, len=D)

    def mlp(self, l: int, g: int, sc: int, vc: int) -> None:
        """x += down(silu(gate) * up), gate|up = gate_up(rmsnorm(x, gamma2)) ([rows, 2 I];
        per token the SiLU and MUL over two rows of I / 2 when I exceeds one VEC row)."""
        shape, s, P, cr, n = self.shape, self.s, self.P, ("const", g), self.rows
        H, I = shape.hidden, shape.intermediate
        P.op(Opcode.VEC, (cr,), func=VecFunc.RMSNORM, dst=s.V_h, src0=s.V_x, src1=vc + H, src2=s.S_eps, n=n, len=H)
        self.product((l, "gate_up"), H, 2 * I, s.V_h, s.V_gu, self.sw(sc, "gate_up"), False, (cr,))
        rows = 1 if I <= MAX_LEN else 2
        for r in range(n):
            gu = s.V_gu + r * 2 * I
            P.op(Opcode.VEC, (), func=VecFunc.SILU, dst=gu, src0=gu, n=rows, len=I // rows)
            P.op(Opcode.VEC, (), func=VecFunc.MUL, dst=gu, src0=gu, src1=gu + I, n=rows, len=I // rows)
        self.product((l, "down"), I, H, s.V_gu, s.V_o, self.sw(sc, "down"), False, (cr,), x_pitch=2 * I)
        P.op(Opcode.VEC, (cr,), func=VecFunc.ADD, dst=s.V_x, src0=s.V_x, src1=s.V_o, n=n, len=H)

    def lm_head(self) -> None:
        """logits [vocab] = ENCODE(rmsnorm(x, gamma_f)) @ W_head * s_w of the last token, per
        DEQ group: its s_w into an S_h slot, its tiles' SPMMs, DEQ into a V_lo slot, STOREd
        to the logits."""
        shape, s, d, P = self.shape, self.s, self.d, self.P
        H = shape.hidden
        last, self.rows = self.rows - 1, 1  # one row from here: the chunk's last token
        P.op(Opcode.VEC, (), func=VecFunc.RMSNORM, dst=s.V_h, src0=s.V_x + last * H, src1=s.V_gf, src2=s.S_eps, n=1,
             len=H)
        self.encode(s.V_h, 1, H, s.I_x, s.S_dyn)
        groups, tl = _deq_groups(self.cfg, shape.vocab), _tiles(self.cfg, H, shape.vocab)
        for gi, (g0, gl) in enumerate(groups):
            P.load(Buffer.SCL, s.S_h[gi % 2], d.h_scl + 4 * g0, gl, needs=("hs", gi - 2) if gi >= 2 else None)
            self.tile_batch([(addr, self.spmm_fields(s.I_x + k0, m0 - g0, 1, m, k, m, overwrite=k0 == 0))
                             for (m0, m, k0, k), addr in zip(tl, d.w_addr[("head",)]) if g0 <= m0 < g0 + gl])
            i = P.op(Opcode.VEC, (("hs", gi),), pop_s2c=gi >= 2, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW),
                     dst=s.V_lo[gi % 2], src0=0, src1=s.S_dyn, src2=s.S_h[gi % 2], n=1, len=gl)
            P.store(i, Buffer.VEC, s.V_lo[gi % 2], d.logits + 4 * g0, gl,
                    push=gi + 2 < len(groups) or gi == len(groups) - 1)


def _layout(shape: LMShape, cfg: HwConfig, layers: int, head: bool, kv_max: int, s: _Sram, d: _Dram) -> dict:
    """`DecodeProgram.layout`: where the host finds and puts everything."""
    keys = [((l, name), (K, M)) for l in range(layers) for name, K, M, _ in shape.linears()]
    keys += [(("head",), (shape.hidden, shape.vocab))] if head else []
    return dict(x_in=d.x_in, logits=d.logits, consts=d.consts, score_row=d.score_row, rope=d.rope, kcache=d.kcache,
                vcache=d.vcache, end=d.end, kv_max=kv_max, c_scl=d.c_scl, c_vec=d.c_vec, h_scl=d.h_scl,
                gf_vec=d.gf_vec, sw_off=s.sw_off, sv_off=s.sv_off, n_sc=s.n_sc, n_vc=s.n_vc,
                tiles={key: [(a, *tl) for a, tl in zip(d.w_addr[key], _tiles(cfg, *dims))] for key, dims in keys},
                parts={K: _parts(cfg, K) for _, K, _, _ in shape.linears()})


def _check_args(what: str, shape: LMShape, cfg: HwConfig, L: int, kv_max: int, layers: int, head: bool, t: int,
                wbits: int) -> None:
    """SpikecError naming the argument that the program cannot be built with."""
    if not isinstance(shape, LMShape):
        raise SpikecError(f"{what}: shape must be an LMShape, not {type(shape).__name__}")
    if wbits != 4:
        raise SpikecError(f"{what}: only 4-bit weights are modeled (wbits={wbits!r})")
    for name, v, lo, hi in (("kv_max", kv_max, 1, None), ("layers", layers, 0, shape.layers), ("t", t, 1, None)):
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise SpikecError(f"{what}: {name} = {v!r} must be an integer {rng}")
    if layers == 0 and not head:
        raise SpikecError(f"{what}: layers=0 and head=False: the program would do nothing")
    if L > MAX_LEN:
        raise SpikecError(f"{what}: context length {L} exceeds {MAX_LEN}, the most scores one SOFTMAX row holds")
    wgt_slot = wgt_slots(cfg)[1]
    if kv_max * shape.head_dim > wgt_slot:
        raise SpikecError(f"{what}: a KV tile of kv_max x head_dim = {kv_max} x {shape.head_dim} codes does not fit a "
                          f"WGT slot of config '{cfg.name}' ({wgt_slot} bytes): pass a smaller kv_max")
    if shape.head_dim % cfg.wgt_addr_bytes:
        raise SpikecError(f"{what}: head_dim {shape.head_dim} is not a multiple of wgt_addr_bytes "
                          f"{cfg.wgt_addr_bytes}: a KV-cache row has no WGT address")


def _build(shape: LMShape, cfg: HwConfig, start: int, tokens: int, chunk: int, layers: int, head: bool, t: int,
           kv_max: int, what: str) -> DecodeProgram:
    """The program of `tokens` token rows from position `start`, in chunks of `chunk` rows
    (decode: one token, one chunk); see build_decode and build_prefill."""
    L = start + tokens
    sram = _sram_layout(shape, cfg, kv_max, chunk, what)
    dram = _dram_layout(shape, cfg, layers, head, kv_max, sram, tokens, what)
    step = _Step(shape, cfg, L, kv_max, t, sram, dram, start)
    step.rows = min(chunk, tokens)
    step.inputs(head)
    for p0 in range(start, L, chunk):
        if p0 > start:
            step.next_chunk(p0, min(chunk, L - p0))
        for l in range(layers):
            step.layer(l)
    if head:
        step.lm_head()
    prog = step.P.emit(dict(step.P.last_use))  # release points: the last compute instruction touching each region
    return DecodeProgram(shape, cfg, L, layers, head, prog, step.weight_bytes, step.kv_load, step.fifo_bytes, dram.weights_end,
                         _layout(shape, cfg, layers, head, kv_max, sram, dram), start=start, tokens=tokens, chunk=chunk)


def build_decode(shape: LMShape, cfg: HwConfig, L: int, layers: int | None = None, head: bool = True, t: int = 4,
                 wbits: int = 4, kv_max: int = 4096) -> DecodeProgram:
    """The instruction stream of one batch-1 decode step: `layers` decoder layers (default
    all) and, with `head`, the final norm and LM head. `L`: the context length after this
    token (2 <= L <= kv_max; the KV cache holds kv_max rows per layer and KV head), `t`:
    the text timesteps (TC-LIF planes of the activation codes), `wbits`: 4 (packed int4).

    Layouts: `_sram_layout` (on chip), `_dram_layout` (DRAM: the weights from 0, then
    constants, KV cache, rotary tables, input row, logits). Plan: `_Step`, piece by piece,
    into a `_Planner`; then the c2l tokens are scheduled and the program emitted."""
    layers = shape.layers if layers is None else layers
    if not _is_int(L) or not _is_int(kv_max) or not 2 <= L <= kv_max:
        raise SpikecError(f"build_decode: context length L={L!r} outside 2..{kv_max!r}")
    _check_args("build_decode", shape, cfg, L, kv_max, layers, head, t, wbits)
    return _build(shape, cfg, L - 1, 1, 1, layers, head, t, kv_max, "build_decode")


def build_prefill(shape: LMShape, cfg: HwConfig, tokens: int, start: int = 0, chunk: int | None = None,
                  layers: int | None = None, head: bool = True, t: int = 4, wbits: int = 4,
                  kv_max: int = 4096) -> DecodeProgram:
    """The instruction stream of a batch-1 prefill: `tokens` prompt tokens at positions
    start .. start + tokens - 1 (start > 0: a prompt continued after `start` cached rows)
    through `layers` decoder layers and, with `head`, the LM head of the last token; the
    activations stay on the device between layers and the KV cache in DRAM.

    The host writes the tokens' embedding rows (float32 [tokens, hidden] at
    layout["x_in"]); the program runs them in chunks of `chunk` rows (default: the most
    the configuration's buffers hold, `prefill_chunk`), streaming every weight once per
    chunk and SPMMing each tile with all the chunk's rows. Per chunk and layer: the new K, V
    rows go into the cache first, then each token attends to the cache rows up to its own
    position (the causal mask is the SPMM's length: no masked score is computed). Each
    token's numerics are a decode step's, so the program's KV cache and logits equal, bit
    for bit, `tokens` decode steps' (tests/test_decode_model.py). Raises SpikecError when
    the arguments or the buffers do not fit."""
    what = "build_prefill"
    layers = shape.layers if layers is None else layers
    for name, v in (("tokens", tokens), ("start", start), ("kv_max", kv_max)):
        if not _is_int(v):
            raise SpikecError(f"{what}: {name} = {v!r} must be an integer")
    if tokens < 1 or start < 0 or start + tokens > kv_max:
        raise SpikecError(f"{what}: tokens {tokens} from position {start} outside the KV cache's {kv_max} rows")
    _check_args(what, shape, cfg, start + tokens, kv_max, layers, head, t, wbits)
    if chunk is None:
        chunk = prefill_chunk(shape, cfg, kv_max)
        if chunk == 0:  # not even one row fits: the layout's own message says which buffer
            _sram_layout(shape, cfg, kv_max, 1, what)
    if not _is_int(chunk) or chunk < 1:
        raise SpikecError(f"{what}: chunk = {chunk!r} must be an integer >= 1")
    return _build(shape, cfg, start, tokens, min(chunk, tokens), layers, head, t, kv_max, what)


def prefill_chunk(shape: LMShape, cfg: HwConfig, kv_max: int = 4096, most: int = 256) -> int:
    """The most token rows (at most `most`) whose buffers (`_sram_layout`) fit `cfg`; 0 when
    not even one does."""
    best = 0
    for n in range(1, most + 1):
        try:
            _sram_layout(shape, cfg, kv_max, n)
        except SpikecError:
            break
        best = n
    return best


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
    isa/costmodel.py; an SPMM that reads the weight FIFO runs with the LOADs that fill it
    (costmodel.fifo_times). Each SPMM processes `vector_density` x its dense spike vectors and
    `spike_density` x n*k*t spikes (rounded), or `spmm_counts(i, ins)` -> (vectors,
    spikes) for the i-th SPMM when given. SpikecError on a deadlock, or on a density
    outside [0, 1]."""
    for name, v in (("spike_density", spike_density), ("vector_density", vector_density)):
        if not 0.0 <= v <= 1.0:
            raise SpikecError(f"timeline: {name} = {v!r} must lie in [0, 1] (a fraction of spikes or spike vectors)")
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
                if ins.op == Opcode.LOAD and ins.wfifo:
                    break  # it runs with the SPMM that reads it, below
                qs = [q for bit, q in _POP[m].items() if getattr(ins, bit)]
                if any(not tokens[q] for q in qs):
                    break
                feed: list[Instruction] = []
                if costmodel.fifo_weight_bytes(ins):
                    loads = per_mod[Module.LOAD]
                    n = costmodel.fifo_feeders(loads[ptr[Module.LOAD]:], costmodel.fifo_weight_bytes(ins), "timeline: SPMM")
                    feed = loads[ptr[Module.LOAD]:ptr[Module.LOAD] + n] if n else []
                    if not feed or sum(x.pop_next for x in feed) > len(tokens["c2l"]):
                        break
                start = t_free[m]
                for q in qs:
                    start = max(start, tokens[q].popleft())
                fifo_loads = []
                for lins in feed:  # the LOADs that fill the weight FIFO for this SPMM
                    lc = costmodel.instruction_cost(cfg, lins)
                    fifo_loads.append((tokens["c2l"].popleft() if lins.pop_next else 0, lc.cycles, lins.rows * lins.cols))
                    for k, v in lc.energy_pj(cfg).items():
                        energy[k] += v
                    rd += lc.dram_read
                    ptr[Module.LOAD] += 1
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
                if feed:
                    spans, end = costmodel.fifo_times(cfg, t_free[Module.LOAD], fifo_loads, start, c.cycles)
                    t_free[Module.LOAD] = spans[-1][1]
                    busy[Module.LOAD] += sum(e0 - s0 for s0, e0 in spans)
                    t_free[m], busy[m] = end, busy[m] + end - start
                else:
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
    """Cost of a program of `build_decode` (one decode step) or `build_prefill` (a whole
    prompt): device `timing` of the whole program, `seconds` (device, the whole program),
    energy (J) by component, and the program's traffic."""

    prog: DecodeProgram
    timing: Timing

    @property
    def seconds(self) -> float:
        return self.timing.cycles / (self.prog.cfg.clock_mhz * 1e6)

    @property
    def energy_j(self) -> dict[str, float]:
        return {k: v * 1e-12 for k, v in self.timing.energy_pj.items()}


def cost_decode(shape: LMShape, cfg: HwConfig, L: int, spike_density: float, vector_density: float = 1.0,
                layers: int | None = None, head: bool = True, t: int = 4, kv_max: int = 4096) -> DecodeCost:
    """Cost of one decode step at context length L (`build_decode`, then `timeline` with
    the given spike and spike-vector densities, each in [0, 1])."""
    prog = build_decode(shape, cfg, L, layers=layers, head=head, t=t, kv_max=kv_max)
    return DecodeCost(prog, timeline(prog.program, cfg, spike_density, vector_density))


def cost_prefill(shape: LMShape, cfg: HwConfig, tokens: int, spike_density: float, vector_density: float = 1.0,
                 kv_max: int = 4096, chunk: int | None = None, layers: int | None = None,
                 head: bool = True, start: int = 0, t: int = 4) -> DecodeCost:
    """Cost of a prefill of `tokens` prompt tokens from position `start` (`build_prefill`;
    the chunk the buffers hold unless given): `seconds` for the whole prompt."""
    prog = build_prefill(shape, cfg, tokens, start=start, chunk=chunk, layers=layers, head=head, t=t, kv_max=kv_max)
    return DecodeCost(prog, timeline(prog.program, cfg, spike_density, vector_density))


__all__ = ["DecodeCost", "DecodeProgram", "HostModel", "LMShape", "QWEN2VL_2B", "QWEN2VL_7B", "Timing", "build_decode",
           "build_prefill", "WGT_SLOT_MAX", "cost_decode", "cost_prefill", "dma_shapes", "prefill_chunk", "timeline", "wgt_slots"]
