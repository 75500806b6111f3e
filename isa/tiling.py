"""Tiling the accelerator's kernels: the ISA's limits, weight layout in DRAM, and how many
rows of a call fit the on-chip buffers (docs/isa.md section 9).

Shared by the lowering passes (compile time: which kernels fit, the weights image) and the
fpga runtime (per call: chunking), so it belongs to the hardware description, not to
either. Planning functions return a plan or raise `TilingError` saying why it does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from spikec.errors import SpikecError
from spikec.isa.fields import Buffer, Opcode, VecFunc, field
from spikec.isa.hwconfig import HwConfig


class TilingError(SpikecError):
    """A kernel (or one call of it) does not fit the ISA's fields or the on-chip buffers of a
    hardware configuration; the message says which limit."""


class TilePlan(NamedTuple):
    """How a spiking product [K] x [K, M] is tiled (`plan_tiles`)."""

    m_tile: int  # output features per weight tile
    n_max: int  # tokens per chunk
    k_tile: int  # input features per k-piece (== K unless K-tiled)


@dataclass(frozen=True)
class Tile:
    """One M-tile of a kernel's weights image (byte offsets in device DRAM): its k-pieces
    from `w` (piece c at `w + c * w_bytes`, each padded to TILE_ALIGN), then [s_w | bias]
    (float32, 2 * m values) at `sb`; with n > 1 weight-scale groups, [s_w[0] | bias |
    s_w[1] | ... | s_w[n-1]] ((n + 1) * m values, `scale_row_offsets`)."""

    m0: int  # first output feature
    m: int  # output features
    w: int
    w_bytes: int
    sb: int

    def to_json(self) -> dict:
        return {"m0": self.m0, "m": self.m, "w": self.w, "w_bytes": self.w_bytes, "sb": self.sb}

TILE_ALIGN = 64  # weight tiles are padded to 64 bytes in DRAM and loaded as rows of 64 bytes
# the ISA's limits, from the field table (isa/fields.py)
MAX_N = min(field(op, "n").max for op in (Opcode.SPMM, Opcode.ENCODE, Opcode.VEC))  # rows per instruction
MAX_LEN = min(field(Opcode.ENCODE, "len").max, field(Opcode.SPMM, "k").max, field(Opcode.SPMM, "m").max,
              field(Opcode.VEC, "len").max)  # elements per row, reduction length, output features
ISA_MAX_T = min(field(Opcode.SPMM, "t").max, field(Opcode.ENCODE, "t").max)  # TC-LIF timesteps; rate IF: t <= 7


def n_groups(K: int, group_size: int | None) -> int:
    """Weight-scale groups of a K-row product: 1 (per output channel) when `group_size` is
    None or K; K // group_size otherwise (the caller checks that it divides K)."""
    return 1 if not group_size or group_size >= K else K // group_size


def scale_row_offsets(groups: int, m: int) -> list[int]:
    """Float32 offsets of s_w[g] (g = 0 .. groups-1) in a tile's scale block [s_w[0] | bias |
    s_w[1] | ...] of m output features: 0, then (g + 1) * m. Bias at m."""
    return [0] + [(g + 1) * m for g in range(1, groups)]


def scales_per_feature(cfg: HwConfig, K: int, m_tile: int, group_size: int | None) -> int:
    """Float32 scales per output feature in one SCL slot of a tile's scales: 2 ([s_w | bias])
    per channel; with n > 1 weight-scale groups n + 1 (the tile's whole block [s_w[0] | bias
    | s_w[1] | ...], loaded once with the tile's first k-piece) when two such slots take at
    most half of SCL, else 2 (one group's row per slot, [s_w[0] | bias] or s_w[g], loaded
    with the group's first k-piece)."""
    ng = n_groups(K, group_size)
    return ng + 1 if ng > 1 and 4 * (ng + 1) * m_tile <= cfg.buffer_elems(Buffer.SCL) else 2


def _check_group(K: int, group_size: int | None) -> int:
    if group_size is None:
        return K
    if group_size < 1 or group_size > K or K % group_size:
        raise TilingError(f"weight-scale group size {group_size} does not divide K={K}")
    return group_size


def _piece_sizes(K: int, G: int, pe_rows: int) -> list[int]:
    """k-piece sizes to try, best first: multiples of pe_rows below K (per channel); with
    weight-scale groups of G < K rows, divisors of G (a piece never spans two groups),
    multiples of pe_rows first."""
    if G >= K:
        return list(range((K // pe_rows) * pe_rows, 0, -pe_rows))
    divs = [d for d in range(G, 0, -1) if G % d == 0]
    return [d for d in divs if d % pe_rows == 0] + [d for d in divs if d % pe_rows]


def align(n: int, a: int) -> int:
    return -(-n // a) * a


def weight_bytes(k: int, m: int, wbits: int) -> int:
    """Bytes of a [k, m] weight block in the WGT format: int8, or int4 packed two per byte
    (the last byte half-filled when k * m is odd). The one definition (costmodel, decode,
    randprog use it)."""
    return k * m if wbits == 8 else -(-k * m // 2)


def pack_weights(w: np.ndarray, wbits: int) -> bytes:
    """[k, m] integer codes row-major: int8 bytes, or int4 nibbles (element e in byte e // 2,
    low nibble first, two's complement)."""
    flat = np.ascontiguousarray(w, dtype=np.int64).ravel()
    if wbits == 8:
        return flat.astype(np.int8).tobytes()
    if flat.size % 2:
        flat = np.concatenate([flat, [0]])
    nib = (flat & 0xF).astype(np.uint8)
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


# ---------------------------------------------------------------- tiling


def plan_tiles(cfg: HwConfig, K: int, M: int, wbits: int, group_size: int | None = None) -> TilePlan:
    """(m_tile, n_max, k_tile) for a kernel on this configuration; TilingError when it does not fit.

    Buffers hold two slots of the weight tile (WGT) and of [s_w | bias] (SCL) so the next
    tile loads while this one computes; VEC holds two slots of the input rows and two of
    the output rows; INP one chunk of codes, ACC one chunk of accumulators. `k_tile == K`
    unless no weight tile [K, pe_cols] fits two WGT slots: then K is tiled (docs/isa.md
    section 9, "K-tiling"): each weight tile is split into k-pieces [k_tile, m_tile] (two
    fit WGT), the codes of the whole row stay in INP, and the pieces' SPMMs accumulate
    into ACC (the per-token dynamic scale is still taken over the whole row).

    Group-wise weight scales (`group_size` G < K, docs/isa.md section 9, "Group-wise
    products"): always K-tiled with k-pieces that divide G (a piece never spans two groups:
    each group has its own accumulator), SCL slots of (K/G + 1) * m_tile scales, and VEC
    also holds a chunk's running sum and one DEQ result per row (2 * m_tile more)."""
    if K > MAX_LEN:
        raise TilingError(f"K={K} exceeds the ISA's {MAX_LEN}")
    G = _check_group(K, group_size)
    ng = n_groups(K, G)
    extra = 2 if ng > 1 else 0  # VEC: running sum and DEQ result per output feature

    def sb(mt: int) -> int:  # SCL scales per output feature in one [s_w | bias] slot
        return scales_per_feature(cfg, K, mt, G)
    wgt, scl = cfg.buffer_elems(Buffer.WGT), cfg.buffer_elems(Buffer.SCL)
    inp, acc, vec = cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC), cfg.buffer_elems(Buffer.VEC)

    def n_of(mt: int) -> int:
        return int(min(MAX_N, inp // K, vec // (2 * K + (2 + extra) * mt), acc // mt, scl - 2 - 2 * sb(mt) * mt))

    def fits(kt: int, mt: int) -> bool:
        return 2 * align(weight_bytes(kt, mt, wbits), TILE_ALIGN) <= wgt and 2 * sb(mt) * mt + 3 <= scl

    mt = min(M, MAX_LEN)
    if not fits(K, mt):
        mt = (mt // cfg.pe_cols) * cfg.pe_cols
        while mt > 0 and not fits(K, mt):
            mt -= cfg.pe_cols
    if mt > 0:
        n = n_of(mt)
        if n < 1:
            raise TilingError(f"one token of K={K}, M-tile={mt} does not fit the on-chip buffers")
        if ng == 1:
            return TilePlan(mt, n, K)
        return TilePlan(mt, n, next(kt for kt in _piece_sizes(K, G, cfg.pe_rows) if fits(kt, mt)))
    # K-tiling: among M-tiles (multiples of pe_cols, or M), the one with the fewest weight
    # pieces (SPMMs and LOADs per chunk), then the fewest k-pieces (ENCODEs per token), then
    # the most tokens per chunk
    best = None
    cands = sorted({min(M, MAX_LEN)} | set(range(cfg.pe_cols, min(M, MAX_LEN) + 1, cfg.pe_cols)))
    for mt in cands:
        if 2 * sb(mt) * mt + 3 > scl:
            continue
        kt = next((kt for kt in _piece_sizes(K, G, cfg.pe_rows) if fits(kt, mt)), 0)
        n = n_of(mt)
        if kt <= 0 or n < 1:
            continue
        key = (-(-M // mt) * -(-K // kt), -(-K // kt), -n)
        if best is None or key < best[0]:
            best = (key, TilePlan(mt, n, kt))
    if best is None:
        raise TilingError(f"K={K} does not fit a {cfg.pe_cols}-column weight tile in WGT ({wgt} bytes, two slots), "
                          f"nor does a K-tiled one fit the on-chip buffers")
    return best[1]


def product_fits(cfg: HwConfig, K: int, m_tile: int, k_tile: int, n_max: int, wbits: int,
                 group_size: int | None = None) -> bool:
    """Whether a spiking product's tiling fits the configuration's buffers: the fit
    `plan_tiles` checks, for a descriptor read from a file (two WGT slots of a k-piece, two
    SCL slots of [s_w | bias] (and the other groups' s_w rows), a chunk of n_max tokens in
    INP, VEC and ACC). The caller checks that `group_size` divides K and `k_tile` it."""
    el = {b: cfg.buffer_elems(b) for b in Buffer}
    sb, extra = scales_per_feature(cfg, K, m_tile, group_size), (2 if n_groups(K, group_size) > 1 else 0)
    return (2 * align(weight_bytes(k_tile, m_tile, wbits), TILE_ALIGN) <= el[Buffer.WGT]
            and 2 * sb * m_tile + 3 <= el[Buffer.SCL]
            and n_max <= min(el[Buffer.INP] // K, el[Buffer.VEC] // (2 * K + (2 + extra) * m_tile),
                             el[Buffer.ACC] // m_tile, el[Buffer.SCL] - 2 - 2 * sb * m_tile))


def kernel_tiles(K: int, M: int, mt: int, kt: int, wbits: int, base: int, w: np.ndarray | None = None,
                 s_w: np.ndarray | None = None, bias: np.ndarray | None = None,
                 group_size: int | None = None) -> tuple[list[Tile], bytes | None, int]:
    """The weights image of one kernel from DRAM offset `base`: per M-tile, its k-pieces
    `w[k0:k0+kt, m0:m1]` (row-major, int8 or packed int4, each padded to 64 bytes; one piece,
    the whole tile, when kt == K), then [s_w | bias] (float32; with n = K / group_size > 1
    weight-scale groups, s_w [n, M]: [s_w[0] | bias | s_w[1] | ... | s_w[n-1]]). Returns the
    tiles (piece c of a tile at `w + c * w_bytes`), the image bytes (None without `w`) and
    the end offset."""
    ng = n_groups(K, group_size)
    if s_w is not None:
        s_w = np.asarray(s_w, np.float32).reshape(ng, M)
    image = bytearray() if w is not None else None
    off, tiles = base, []
    for m0 in range(0, M, mt):
        m1 = min(M, m0 + mt)
        w_off = off
        for k0 in range(0, K, kt):
            k1 = min(K, k0 + kt)
            wlen = weight_bytes(k1 - k0, m1 - m0, wbits)
            if image is not None:
                image += pack_weights(w[k0:k1, m0:m1], wbits) + bytes(align(wlen, TILE_ALIGN) - wlen)
            off += align(wlen, TILE_ALIGN)
        sb_off = off
        off = align(off + 4 * (ng + 1) * (m1 - m0), TILE_ALIGN)
        if image is not None:
            sb = np.concatenate([s_w[0, m0:m1], bias[m0:m1] if bias is not None else np.zeros(m1 - m0, np.float32),
                                 *(s_w[g, m0:m1] for g in range(1, ng))])
            image += sb.astype("<f4").tobytes()
            image += bytes(off - base - len(image))
        tiles.append(Tile(m0, m1 - m0, w_off, align(weight_bytes(min(kt, K), m1 - m0, wbits), TILE_ALIGN), sb_off))
    return tiles, (bytes(image) if image is not None else None), off



# ---------------------------------------------------------------- vector kernels

CONST_ROWS = {VecFunc.ADD_ROW: 1, VecFunc.MUL_ROW: 1, VecFunc.RMSNORM: 1, VecFunc.LAYERNORM: 2}  # rows of len in VEC
HAS_SCALAR = (VecFunc.SCALE, VecFunc.RMSNORM, VecFunc.LAYERNORM)  # one float32 in SCL
def operand_cols(func: VecFunc, L: int) -> list[int]:
    """Columns of each activation operand of a row: x [L], and y1 [L] (ADD, MUL) or
    cos, sin [L/2] (ROPE)."""
    if func in (VecFunc.ADD, VecFunc.MUL):
        return [L, L]
    if func == VecFunc.ROPE:
        return [L, L // 2, L // 2]
    return [L]


def plan_vec(cfg: HwConfig, func: VecFunc, L: int) -> int:
    """Rows per chunk (two VEC slots of operands and two of results after the constants);
    TilingError when a row of L elements does not fit. A row is never split: the reductions
    need it whole."""
    if L < 1 or L > MAX_LEN:
        raise TilingError(f"rows of {L} elements exceed the VEC len field's {MAX_LEN}")
    if func == VecFunc.ROPE and L % 2:
        raise TilingError(f"ROPE needs an even row length, not {L}")
    vec = cfg.buffer_elems(Buffer.VEC) - CONST_ROWS.get(func, 0) * L
    per_row = sum(operand_cols(func, L)) + L
    n = min(MAX_N, vec // (2 * per_row))
    if n < 1:
        raise TilingError(f"one row of {L} elements does not fit VEC ({cfg.buffer_elems(Buffer.VEC)} elements, config "
                          f"'{cfg.name}': constants and two slots of {per_row} elements per row)")
    return int(n)


def max_len(cfg: HwConfig, func: VecFunc) -> int:
    """The longest row plan_vec accepts (for rows whose length is known only at run time);
    0 when none does."""
    lo, hi = 0, MAX_LEN
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _vec_fits(cfg, func, mid) else (lo, mid - 1)
    return lo


def _vec_fits(cfg: HwConfig, func: VecFunc, L: int) -> bool:
    try:
        plan_vec(cfg, func, L)
    except TilingError:
        return False
    return True


# ---------------------------------------------------------------- attention kernels

WGT_MAX_T = 7  # ENCODE into WGT writes int8 codes



def plan_attention(cfg: HwConfig, K: int, N: int, nb: int) -> int:
    """Rows of the left operand per chunk for heads of [., K] @ [K, N] whose right operands
    have nb elements in all; TilingError when the call does not fit. VEC holds b (nb floats),
    two slots of left rows (K) and two of results (N); WGT b's codes; SCL s_b, the chunk's
    per-token scales and the s_w row of N; INP and ACC one chunk."""
    if nb > MAX_LEN:
        raise TilingError(f"the right operand's {nb} elements exceed one ENCODE row ({MAX_LEN}), which its per-tensor "
                          f"scale needs")
    if max(K, N) > MAX_LEN:
        raise TilingError(f"K={K} or N={N} exceeds the ISA's {MAX_LEN}")
    if nb > cfg.buffer_elems(Buffer.WGT):
        raise TilingError(f"the right operand's {nb} codes exceed WGT")
    if (K * N) % cfg.wgt_addr_bytes:  # head h's codes start at byte h * K * N
        raise TilingError(f"a head's K x N = {K * N} codes are not a whole number of WGT addresses "
                          f"({cfg.wgt_addr_bytes} bytes each)")
    n = min(MAX_N, cfg.buffer_elems(Buffer.INP) // K, cfg.buffer_elems(Buffer.ACC) // N,
            (cfg.buffer_elems(Buffer.VEC) - nb) // (2 * K + 2 * N), cfg.buffer_elems(Buffer.SCL) - 1 - N)
    if n < 1:
        raise TilingError(f"the right operand ({nb} elements) and one row of K={K}, N={N} do not fit the on-chip "
                          f"buffers")
    return int(n)


__all__ = ["CONST_ROWS", "HAS_SCALAR", "ISA_MAX_T", "MAX_LEN", "MAX_N", "TILE_ALIGN", "WGT_MAX_T", "Tile", "TilePlan",
           "TilingError", "align", "n_groups", "product_fits", "scale_row_offsets", "scales_per_feature",
           "kernel_tiles", "max_len", "operand_cols", "pack_weights", "plan_attention", "plan_tiles", "plan_vec",
           "weight_bytes"]
