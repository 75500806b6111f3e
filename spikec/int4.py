"""4-bit weight codes packed two per byte: the .sbin's TENSOR_INT4 sections (docs/sbin.md).

A W4 weight is int8 codes w [K, N] in -7..7 (symmetric 4-bit: spikec.reference.qmax(4)).
Its packed form is the layout com.microsoft `MatMulNBits` reads for block length 128
(onnxruntime's contrib-op spec: B uint8 [N, K_blocks, block / 2], element k of a block in
the low nibble of byte k // 2 when k is even, the high nibble when odd), holding

    u = w + 8                       (MatMulNBits' default zero point 8; u in 1..15)

with every block of 128 holding CODES_PER_BLOCK = 127 codes of one output column and one
zero-weight slot (u = 8) at its end; codes past K in the last block are zero weights too.
The zero-weight slot is where the ORT back end puts its sentinel activation
(spikec/ort_lowering.py: `nbits_exact`), so onnxruntime can run its decode products on
these bytes where they lie in the memory-mapped .sbin, with no copy. Other readers (the
numpy reference, the accelerator's packer, the prefill's MatMulInteger) unpack.

Size: N * ceil(K / 127) * 64 bytes, about 0.504 bytes per weight.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx_ir as ir

from spikec.errors import SpikecError

BLOCK = 128  # codes per MatMulNBits block, the zero-weight slot included
CODES_PER_BLOCK = BLOCK - 1
ZERO = 8  # the stored nibble of weight code 0 (u = w + 8)
CODE_MAX = 7  # |w| <= 7: symmetric 4-bit codes; u = 0 (w = -8) is never stored
# Columns packed or checked at a time: bounds the temporary arrays to about 16 MiB whatever
# the weight's size.
CHUNK_BYTES = 16 << 20


def blocks(K: int, block: int = BLOCK) -> int:
    """Blocks of `block` nibbles that hold K codes (block - 1 codes and one zero-weight slot each)."""
    return -(-K // (block - 1))


def packed_shape(K: int, N: int) -> tuple[int, int, int]:
    """Shape of the packed bytes of an int8 [K, N] weight: uint8 [N, blocks(K), 64]."""
    return (N, blocks(K), BLOCK // 2)


def packed_nbytes(K: int, N: int) -> int:
    return N * blocks(K) * (BLOCK // 2)


def fits(w: np.ndarray) -> bool:
    """Whether `w` is stored packed: a non-empty int8 matrix [K, N] of codes in -7..7 whose
    packed form is smaller (K of 128 codes or fewer gains nothing: one block is 64 bytes)."""
    if w.dtype != np.int8 or w.ndim != 2 or w.size == 0 or packed_nbytes(*w.shape) >= w.nbytes:
        return False
    return bool(_column_ranges_ok(w))


def _column_ranges_ok(w: np.ndarray) -> bool:
    for n0, n1 in _column_chunks(*w.shape):
        part = w[:, n0:n1]
        if int(part.min()) < -CODE_MAX or int(part.max()) > CODE_MAX:
            return False
    return True


def _column_chunks(K: int, N: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_BYTES // max(1, K))
    for n0 in range(0, N, step):
        yield n0, min(N, n0 + step)


def pack(w: np.ndarray) -> np.ndarray:
    """int8 [K, N] codes in -7..7 -> uint8 [N, blocks(K), 64] (module docstring's layout)."""
    K, N = w.shape
    out = np.empty(packed_shape(K, N), np.uint8)
    for n0, n1 in _column_chunks(K, N):
        out[n0:n1] = _pack_columns(w[:, n0:n1])
    return out


def pack_chunks(w: np.ndarray) -> Iterator[memoryview]:
    """pack(w)'s bytes in order, a few MiB at a time (for writing a file in bounded memory)."""
    K, N = w.shape
    for n0, n1 in _column_chunks(K, N):
        yield memoryview(_pack_columns(w[:, n0:n1])).cast("B")


def _pack_columns(w: np.ndarray) -> np.ndarray:
    K, N = w.shape
    nb = blocks(K)
    u = np.full((N, nb, BLOCK), ZERO, np.uint8)
    ut = np.ascontiguousarray(np.asarray(w).T).astype(np.uint8)  # two's complement bytes
    ut += np.uint8(ZERO)  # w + 8 for -7 <= w <= 7 (modulo 256)
    full = K // CODES_PER_BLOCK
    u[:, :full, :CODES_PER_BLOCK] = ut[:, :full * CODES_PER_BLOCK].reshape(N, full, CODES_PER_BLOCK)
    if K > full * CODES_PER_BLOCK:
        u[:, full, :K - full * CODES_PER_BLOCK] = ut[:, full * CODES_PER_BLOCK:]
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack(b: np.ndarray, K: int) -> np.ndarray:
    """uint8 [N, blocks(K), 64] -> int8 codes [K, N] (a new array; the inverse of pack)."""
    N = b.shape[0]
    out = np.empty((K, N), np.int8)
    for n0, n1 in _column_chunks(K, N):
        part = b[n0:n1]
        u = np.empty(part.shape[:2] + (BLOCK,), np.uint8)
        u[..., 0::2] = part & 15
        u[..., 1::2] = part >> 4
        codes = u[..., :CODES_PER_BLOCK].reshape(n1 - n0, -1)[:, :K]
        out[:, n0:n1] = (codes.astype(np.int8) - np.int8(ZERO)).T
    return out


def check_packed(b: np.ndarray, K: int, *, where: str) -> None:
    """Refuse packed bytes that pack() cannot have written: a nibble 0 (code -8), or a
    nonzero weight in a block's zero-weight slot or past K (onnxruntime's decode product
    would count it, the other readers would not). Reads every byte once, in chunks.
    Raises SpikecError naming `where`."""
    N, nb, half = b.shape
    if nb != blocks(K) or half != BLOCK // 2:
        raise SpikecError(f"{where}: packed shape {list(b.shape)} does not hold K = {K} codes")
    tail = K - (nb - 1) * CODES_PER_BLOCK  # codes in the last block
    for n0, n1 in _column_chunks(K, N):
        part = b[n0:n1]
        if ((part & 15) == 0).any() or ((part >> 4) == 0).any():
            raise SpikecError(f"{where}: a 4-bit code is -8 (stored nibble 0); W4 codes are -7..7")
        if ((part[:, :, -1] >> 4) != ZERO).any():
            raise SpikecError(f"{where}: a block's zero-weight slot (nibble 127) holds a nonzero weight")
        last = np.empty((n1 - n0, BLOCK), np.uint8)
        last[:, 0::2] = part[:, -1] & 15
        last[:, 1::2] = part[:, -1] >> 4
        if (last[:, tail:] != ZERO).any():
            raise SpikecError(f"{where}: weights past K = {K} in the last block are not zero")


class PackedInt4Tensor(ir.LazyTensor):
    """An int8 [K, N] weight whose bytes are `packed` (uint8 [N, blocks(K), 64], usually an
    ir.ExternalTensor over a .sbin's memory map). `.numpy()` unpacks into a new int8 array
    on every call; `.packed` is what a MatMulNBits product reads in place."""

    def __init__(self, packed: ir.TensorProtocol, K: int, name: str | None = None) -> None:
        self.packed = packed
        self.K = int(K)
        N = int(packed.shape[0])
        super().__init__(lambda: ir.Tensor(unpack(packed.numpy(), self.K), name=name), ir.DataType.INT8,
                         ir.Shape([self.K, N]), name=name)
