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
    (float32, 2 * m values) at `sb`."""

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


def plan_tiles(cfg: HwConfig, K: int, M: int, wbits: int) -> TilePlan:
    """(m_tile, n_max, k_tile) for a kernel on this configuration; TilingError when it does not fit.

    Buffers hold two slots of the weight tile (WGT) and of [s_w | bias] (SCL) so the next
    tile loads while this one computes; VEC holds two slots of the input rows and two of
    the output rows; INP one chunk of codes, ACC one chunk of accumulators. `k_tile == K`
    unless no weight tile [K, pe_cols] fits two WGT slots: then K is tiled (docs/isa.md
    section 9, "K-tiling"): each weight tile is split into k-pieces [k_tile, m_tile] (two
    fit WGT), the codes of the whole row stay in INP, and the pieces' SPMMs accumulate
    into ACC (the per-token dynamic scale is still taken over the whole row)."""
    if K > MAX_LEN:
        raise TilingError(f"K={K} exceeds the ISA's {MAX_LEN}")
    wgt, scl = cfg.buffer_elems(Buffer.WGT), cfg.buffer_elems(Buffer.SCL)
    inp, acc, vec = cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC), cfg.buffer_elems(Buffer.VEC)

    def n_of(mt: int) -> int:
        return int(min(MAX_N, inp // K, vec // (2 * K + 2 * mt), acc // mt, scl - 2 - 4 * mt))

    def fits(kt: int, mt: int) -> bool:
        return 2 * align(weight_bytes(kt, mt, wbits), TILE_ALIGN) <= wgt and 4 * mt + 3 <= scl

    mt = min(M, MAX_LEN)
    if not fits(K, mt):
        mt = (mt // cfg.pe_cols) * cfg.pe_cols
        while mt > 0 and not fits(K, mt):
            mt -= cfg.pe_cols
    if mt > 0:
        n = n_of(mt)
        if n < 1:
            raise TilingError(f"one token of K={K}, M-tile={mt} does not fit the on-chip buffers")
        return TilePlan(mt, n, K)
    # K-tiling: among M-tiles (multiples of pe_cols, or M), the one with the fewest weight
    # pieces (SPMMs and LOADs per chunk), then the fewest k-pieces (ENCODEs per token), then
    # the most tokens per chunk
    best = None
    cands = sorted({min(M, MAX_LEN)} | set(range(cfg.pe_cols, min(M, MAX_LEN) + 1, cfg.pe_cols)))
    for mt in cands:
        if 4 * mt + 3 > scl:
            continue
        kt = (K // cfg.pe_rows) * cfg.pe_rows
        while kt > 0 and not fits(kt, mt):
            kt -= cfg.pe_rows
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


def product_fits(cfg: HwConfig, K: int, m_tile: int, k_tile: int, n_max: int, wbits: int) -> bool:
    """Whether a spiking product's tiling fits the configuration's buffers: the fit
    `plan_tiles` checks, for a descriptor read from a file (two WGT slots of a k-piece, two
    SCL slots of [s_w | bias], a chunk of n_max tokens in INP, VEC and ACC)."""
    el = {b: cfg.buffer_elems(b) for b in Buffer}
    return (2 * align(weight_bytes(k_tile, m_tile, wbits), TILE_ALIGN) <= el[Buffer.WGT] and 4 * m_tile + 3 <= el[Buffer.SCL]
            and n_max <= min(el[Buffer.INP] // K, el[Buffer.VEC] // (2 * K + 2 * m_tile), el[Buffer.ACC] // m_tile,
                             el[Buffer.SCL] - 2 - 4 * m_tile))


def kernel_tiles(K: int, M: int, mt: int, kt: int, wbits: int, base: int, w: np.ndarray | None = None,
                 s_w: np.ndarray | None = None, bias: np.ndarray | None = None) -> tuple[list[Tile], bytes | None, int]:
    """The weights image of one kernel from DRAM offset `base`: per M-tile, its k-pieces
    `w[k0:k0+kt, m0:m1]` (row-major, int8 or packed int4, each padded to 64 bytes; one piece,
    the whole tile, when kt == K), then [s_w | bias] (float32). Returns the tiles (piece c
    of a tile at `w + c * w_bytes`), the image bytes (None without `w`) and the end offset."""
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
        off = align(off + 8 * (m1 - m0), TILE_ALIGN)
        if image is not None:
            sb = np.concatenate([s_w[m0:m1], bias[m0:m1] if bias is not None else np.zeros(m1 - m0, np.float32)])
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
    n = min(MAX_N, cfg.buffer_elems(Buffer.INP) // K, cfg.buffer_elems(Buffer.ACC) // N,
            (cfg.buffer_elems(Buffer.VEC) - nb) // (2 * K + 2 * N), cfg.buffer_elems(Buffer.SCL) - 1 - N)
    if n < 1:
        raise TilingError(f"the right operand ({nb} elements) and one row of K={K}, N={N} do not fit the on-chip "
                          f"buffers")
    return int(n)


__all__ = ["CONST_ROWS", "HAS_SCALAR", "ISA_MAX_T", "MAX_LEN", "MAX_N", "TILE_ALIGN", "WGT_MAX_T", "Tile", "TilePlan",
           "TilingError", "align", "product_fits",
           "kernel_tiles", "max_len", "operand_cols", "pack_weights", "plan_attention", "plan_tiles", "plan_vec",
           "weight_bytes"]
