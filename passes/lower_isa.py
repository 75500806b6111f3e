"""Lowering the spiking products to the accelerator (docs/isa.md, "Lowering and the fpga target").

Every `SpikeEncode -> SpikeMatMul` pair whose weights are constants (TC-LIF, or rate IF
on a symmetric code) becomes a *kernel*: its weights packed per M-tile into one DRAM
image (int8, or int4 two per byte when wbits = 4), followed by the tile's `s_w` and
`bias` (float32, adjacent, as VEC DEQ with BIAS reads them) and, for static activation
scales, one float32 scale per modality. A kernel's *descriptor* (JSON) says where its
data lies and how it is tiled; the instruction stream of one call is a deterministic
function of the descriptor and the call's token groups (`build_program`), generated at
run time because the token count varies (prefill vs decode). `representative_program`
is the stream for one token of each modality per kernel, stored in the .sbin for
`spikec disasm` and for checking.

Norms, softmax, SiLU, rotary embeddings and elementwise adds/products become *vector
kernels* (passes/lower_vec.py: one VEC function each, constants in the same image), and
the attention products Q @ K^T, P @ V (with --spike-attention) *attention kernels*
(passes/lower_attn.py: no constants; both operands are ENCODEd on chip per call).
Everything else (erf GELU, masks, reshapes, ...) runs on the host in
the fpga target; the `fallback` report counts those ops per graph.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction
from spikec.isa.fields import (AccMode, Buffer, EncodeDst, Neuron, Opcode, ScaleMode, VecFlag, VecFunc, WeightFormat,
                               field)
from spikec.isa.hwconfig import HwConfig
from spikec.runtime import costmodel

KERNELS_FORMAT = "spikec-isa-kernels"
KERNELS_VERSION = 1
TILE_ALIGN = 64  # weight tiles are padded to 64 bytes in DRAM and loaded as rows of 64 bytes
# the ISA's limits, from the field table (isa/fields.py)
MAX_N = min(field(op, "n").max for op in (Opcode.SPMM, Opcode.ENCODE, Opcode.VEC))  # rows per instruction
MAX_LEN = min(field(Opcode.ENCODE, "len").max, field(Opcode.SPMM, "k").max, field(Opcode.SPMM, "m").max,
              field(Opcode.VEC, "len").max)  # elements per row, reduction length, output features
ISA_MAX_T = min(field(Opcode.SPMM, "t").max, field(Opcode.ENCODE, "t").max)  # TC-LIF timesteps; rate IF: t <= 7


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def weight_bytes(k: int, m: int, wbits: int) -> int:
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


def plan_tiles(cfg: HwConfig, K: int, M: int, wbits: int) -> tuple[int, int, int] | str:
    """(m_tile, n_max, k_tile) for a kernel on this configuration, or the reason it does not fit.

    Buffers hold two slots of the weight tile (WGT) and of [s_w | bias] (SCL) so the next
    tile loads while this one computes; VEC holds two slots of the input rows and two of
    the output rows; INP one chunk of codes, ACC one chunk of accumulators. `k_tile == K`
    unless no weight tile [K, pe_cols] fits two WGT slots: then K is tiled (docs/isa.md
    section 9, "K-tiling"): each weight tile is split into k-pieces [k_tile, m_tile] (two
    fit WGT), the codes of the whole row stay in INP, and the pieces' SPMMs accumulate
    into ACC (the per-token dynamic scale is still taken over the whole row)."""
    if K > MAX_LEN:
        return f"K={K} exceeds the ISA's {MAX_LEN}"
    wgt, scl = cfg.buffer_elems(Buffer.WGT), cfg.buffer_elems(Buffer.SCL)
    inp, acc, vec = cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC), cfg.buffer_elems(Buffer.VEC)

    def n_of(mt: int) -> int:
        return int(min(MAX_N, inp // K, vec // (2 * K + 2 * mt), acc // mt, scl - 2 - 4 * mt))

    def fits(kt: int, mt: int) -> bool:
        return 2 * _align(weight_bytes(kt, mt, wbits), TILE_ALIGN) <= wgt and 4 * mt + 3 <= scl

    mt = min(M, MAX_LEN)
    if not fits(K, mt):
        mt = (mt // cfg.pe_cols) * cfg.pe_cols
        while mt > 0 and not fits(K, mt):
            mt -= cfg.pe_cols
    if mt > 0:
        n = n_of(mt)
        if n < 1:
            return f"one token of K={K}, M-tile={mt} does not fit the on-chip buffers"
        return mt, n, K
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
            best = (key, (mt, n, kt))
    if best is None:
        return (f"K={K} does not fit a {cfg.pe_cols}-column weight tile in WGT ({wgt} bytes, two slots), "
                f"nor does a K-tiled one fit the on-chip buffers")
    return best[1]


def kernel_tiles(K: int, M: int, mt: int, kt: int, wbits: int, base: int, w: np.ndarray | None = None,
                 s_w: np.ndarray | None = None, bias: np.ndarray | None = None) -> tuple[list[dict], bytes | None, int]:
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
                image += pack_weights(w[k0:k1, m0:m1], wbits) + bytes(_align(wlen, TILE_ALIGN) - wlen)
            off += _align(wlen, TILE_ALIGN)
        sb_off = off
        off = _align(off + 8 * (m1 - m0), TILE_ALIGN)
        if image is not None:
            sb = np.concatenate([s_w[m0:m1], bias[m0:m1] if bias is not None else np.zeros(m1 - m0, np.float32)])
            image += sb.astype("<f4").tobytes()
            image += bytes(off - base - len(image))
        tiles.append({"m0": m0, "m": m1 - m0, "w": w_off,
                      "w_bytes": _align(weight_bytes(min(kt, K), m1 - m0, wbits), TILE_ALIGN), "sb": sb_off})
    return tiles, (bytes(image) if image is not None else None), off


# ---------------------------------------------------------------- kernels


@dataclass
class IsaArtifact:
    hwconfig: HwConfig
    weights: bytes
    kernels: list[dict]
    fallback: dict
    vec_kernels: list[dict] = dataclasses.field(default_factory=list)
    attn_kernels: list[dict] = dataclasses.field(default_factory=list)

    def kernels_json(self) -> bytes:
        doc = {"format": KERNELS_FORMAT, "version": KERNELS_VERSION, "hwconfig": self.hwconfig.name,
               "kernels": self.kernels, "vec_kernels": self.vec_kernels, "attn_kernels": self.attn_kernels,
               "fallback": self.fallback}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _static_scales(enc: ir.Node, timesteps: list[int], names: list[str]) -> list[float | None]:
    clip = sops.clip_table(enc, len(names))
    out = []
    for m, T in enumerate(timesteps):
        if T > sops.CLIP_T or np.isnan(clip[m, T - 1]):
            out.append(None)
            continue
        out.append(float(R.static_scale(clip[m, T - 1], T)))  # the one definition, silent layers included
    return out


def _why_not(mm: ir.Node, enc: ir.Node | None) -> str | None:
    if enc is None or not sops.is_spikec(enc, sops.SPIKE_ENCODE):
        return "input is not a SpikeEncode (attention product)"
    if len(mm.inputs) < 5 or mm.inputs[3] is None or mm.inputs[3].const_value is None:
        return "weights are not constant"
    if sops.attr(enc, "act_unsigned") or sops.attr(mm, "act_unsigned"):
        return "imported unsigned activation code (zero point)"
    neuron = sops.attr(mm, "neuron", "tc-lif")
    T = sops.get_timesteps(mm)
    if T != sops.get_timesteps(enc):
        return "encoder and product disagree on timesteps"
    lim = ISA_MAX_T if neuron == "tc-lif" else 7
    if max(T) > lim:
        return f"T={max(T)} exceeds the ISA's {lim} for {neuron}"
    return None


def _check_fits_dram(graphs: dict[str, ir.Model], cfg: HwConfig) -> None:
    """Refuse before packing anything when the spiking products' weights alone (at their
    bits, before tile padding: a lower bound) exceed half the device DRAM, naming the need,
    the capacity and what to change. Reads shapes only: no weight is touched."""
    need, biggest = 0, ("", 0)
    for role in sorted(graphs):
        for mm in sops.spikec_nodes(graphs[role], sops.SPIKE_MATMUL):
            w = mm.inputs[3] if len(mm.inputs) > 3 else None
            if w is None or w.const_value is None or w.shape is None or len(w.shape) != 2:
                continue
            K, M = (int(d) for d in w.shape)
            nbytes = weight_bytes(K, M, int(sops.attr(mm, "wbits", 8)))
            need += nbytes
            biggest = max(biggest, (f"graph '{role}', node '{mm.name}'", nbytes), key=lambda b: b[1])
    if need > cfg.dram_bytes // 2:
        hint = "compile with --wbits 4, or " if any(
            int(sops.attr(mm, "wbits", 8)) == 8 for g in graphs.values() for mm in sops.spikec_nodes(g, sops.SPIKE_MATMUL)) else ""
        raise SpikecError(
            f"--isa: the spiking products' weights need at least {need / 2**20:.1f} MiB of device DRAM (the largest, "
            f"{biggest[0]}, {biggest[1] / 2**20:.1f} MiB), but config '{cfg.name}' has {cfg.dram_mib} MiB, half of it "
            f"for weights; {hint}use a --hwconfig with dram_mib >= {-(-2 * need // 2**20)}")


def lower_graphs(graphs: dict[str, ir.Model], cfg: HwConfig, vec: bool = True) -> IsaArtifact:
    """Kernels for every lowerable spiking product of the graphs (roles in sorted order), attention
    kernels for the activation x activation products (passes/lower_attn.py) and,
    with `vec`, vector kernels for the norms, softmax, activations, rotary embeddings and
    elementwise ops whose numerics are the vector unit's (passes/lower_vec.py)."""
    from spikec.passes import lower_attn, lower_vec

    _check_fits_dram(graphs, cfg)
    image = bytearray()
    kernels: list[dict] = []
    vec_kernels: list[dict] = []
    attn_kernels: list[dict] = []
    fallback: dict = {"graphs": {}, "note": "host ops run on the host CPU (onnx reference evaluator) in the fpga target: "
                      "erf GELU, masks, shape ops, attention products not spiked or not lowerable, and whatever matches no vector kernel "
                      "(docs/isa.md section 9)"}
    for role in sorted(graphs):
        model = graphs[role]
        names = sops.modalities(model)
        lowered: set[str] = set()
        attn, not_lowered = lower_attn.lower_graph(model, role, len(attn_kernels))
        attn_kernels += attn
        for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
            if lower_attn.is_attention(mm):
                continue
            enc = mm.inputs[0].producer()
            why = _why_not(mm, enc)
            where = f"graph '{role}', node '{mm.name}'"
            if why is None:
                w = mm.inputs[3].const_value.numpy()
                K, M = int(w.shape[-2]), int(w.shape[-1])
                wbits = int(sops.attr(mm, "wbits", 8))
                neuron = sops.attr(mm, "neuron", "tc-lif")
                T = sops.get_timesteps(mm)
                qw = R.absmax_int(w)
                if w.ndim != 2:
                    why = f"weights of rank {w.ndim}"
                elif wbits not in (4, 8) or qw > R.qmax(wbits):
                    why = f"weights exceed wbits={wbits}"
                else:
                    plan = plan_tiles(cfg, K, M, wbits)
                    if isinstance(plan, str):
                        why = plan
            if why is not None:
                not_lowered[mm.name] = why
                continue
            # the int32 accumulator bound, per modality's T (SEMANTICS.md section 3)
            R.check_overflow(K, max(T) + (1 if neuron == "if" else 0), R.qmax(wbits), where)
            s_w = mm.inputs[4].const_value.numpy().astype(np.float32)
            bias_v = mm.inputs[5] if len(mm.inputs) > 5 else None
            bias = bias_v.const_value.numpy().astype(np.float32) if bias_v is not None and bias_v.const_value is not None else None
            if bias_v is not None and bias is None:
                not_lowered[mm.name] = "bias is not constant"
                continue
            mt, n_max, kt = plan
            base = len(image)
            tiles, wimg, _ = kernel_tiles(K, M, mt, kt, wbits, base, w, s_w, bias)
            image += wimg
            scale = sops.attr(enc, "act_scale", "dynamic")
            desc = {
                "index": len(kernels), "graph": role, "node": mm.name, "encoder": enc.name,
                "layer": sops.attr(mm, "layer"), "K": K, "M": M, "wbits": wbits, "neuron": neuron,
                "timesteps": T, "modalities": names, "modality_id": int(sops.attr(mm, "modality_id", -1)),
                "act_scale": scale, "has_bias": bias is not None, "m_tile": mt, "n_max": n_max,
                "k_tile": kt, "tiles": tiles, "weights_offset": base,
            }
            if scale == "static":
                desc["static_scales"] = _static_scales(enc, T, names)
                desc["static_offset"] = len(image)
                image += np.asarray([np.nan if s is None else s for s in desc["static_scales"]], "<f4").tobytes()
                image += bytes(_align(len(image), TILE_ALIGN) - len(image))
            desc["weights_bytes"] = len(image) - base
            kernels.append(desc)
            lowered.add(mm.name)
        on_vec: set[str] = set()
        vec_funcs = collections.Counter()
        if vec:
            mine, why = lower_vec.lower_graph(model, role, cfg, image, len(vec_kernels))
            vec_kernels += mine
            not_lowered.update(why)
            for k in mine:
                on_vec.update(k["nodes"])
                vec_funcs[k["func"]] += 1
        host = collections.Counter()
        fused_enc = set()
        for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
            if mm.name in lowered:
                fused_enc.add(mm.inputs[0].producer().name)
        on_attn = {name for k in attn for name in (k["node"], k["encoder"], k["code"], k["transpose"]) if name}
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name in lowered or node.name in on_vec or node.name in on_attn:
                continue
            if sops.is_spikec(node, sops.SPIKE_ENCODE) and node.name in fused_enc:
                continue  # runs as the kernels' ENCODE (its outputs still feed host ops only if used)
            host[f"{node.domain + '::' if node.domain else ''}{node.op_type}"] += 1
        fallback["graphs"][role] = {"device_kernels": len(lowered), "attn_kernels": len(attn),
                                    "vec_kernels": dict(sorted(vec_funcs.items())),
                                    "host_ops": dict(sorted(host.items())), "not_lowered": dict(sorted(not_lowered.items()))}
    if len(image) > cfg.dram_bytes // 2:
        raise SpikecError(f"--isa: the packed weights ({len(image)} bytes) exceed half of the device DRAM "
                          f"({cfg.dram_bytes} bytes, config '{cfg.name}'); activations need the rest")
    return IsaArtifact(cfg, bytes(image), kernels, fallback, vec_kernels, attn_kernels)


# ---------------------------------------------------------------- programs


@dataclass
class Group:
    """Consecutive rows of one kernel call sharing one modality (hence one t)."""

    kernel: dict
    modality: int
    row0: int  # first row in the call's x / y arrays
    n: int
    x_addr: int  # DRAM byte address of the call's x [rows, K] float32
    y_addr: int  # DRAM byte address of the call's y [rows, M] float32


def _ins(op: Opcode, **kw) -> Instruction:
    return Instruction(op, **{k: int(v) for k, v in kw.items()})


@dataclass
class _Step:
    """One (chunk, M-tile) step of a program: SPMM + VEC DEQ + STORE, plus the loads it needs.
    With K-tiling, one (chunk, M-tile, k-piece) step: SPMM (accumulating after the first
    piece), and DEQ + STORE only on the last piece."""

    g: Group
    r0: int  # first row of the chunk in the call's x / y arrays
    n: int
    tile: dict
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
    ("reencode", chunks), whichever costs less energy by the cost model (runtime/costmodel.py:
    the weight loads against the rows' loads and ENCODEs; DRAM dominates both).

    resident: the chunks (at most n_max tokens, as before) are packed in order into blocks
    whose codes INP holds (`rows_cap` rows; static scales: at most `chunks_cap` chunks);
    per block, every chunk is LOADed and ENCODEd once into its own INP rows, then each
    weight tile is loaded once and all the block's chunks run against it. Weights move
    once per block, rows once.
    reencode: each weight tile is loaded once per call; per tile, every chunk's rows are
    LOADed and ENCODEd again into INP 0. Weights move once, rows once per M-tile."""
    k = groups[0].kernel
    K, n_max, tiles = k["K"], k["n_max"], k["tiles"]
    chunks = [(g, g.row0 + r, min(n_max, g.n - r)) for g in groups for r in range(0, g.n, n_max)]
    static = k["act_scale"] == "static"
    if k.get("k_tile", K) < K:
        # K-tiled: re-encoding would reload every k-piece per chunk, so the codes stay resident
        return "resident", _pack_chunks(chunks, rows_cap, chunks_cap)

    def energy(*ins: Instruction) -> float:
        return sum(sum(costmodel.instruction_cost(cfg, i).energy_pj(cfg).values()) for i in ins)

    W = energy(*(_ins(Opcode.LOAD, buf=Buffer.WGT, rows=t["w_bytes"] // TILE_ALIGN, cols=TILE_ALIGN, stride=TILE_ALIGN)
                 for t in tiles), *(_ins(Opcode.LOAD, buf=Buffer.SCL, rows=1, cols=2 * t["m"]) for t in tiles))
    X = sum(energy(_ins(Opcode.LOAD, buf=Buffer.VEC, rows=n, cols=K, stride=4 * K),
                   _ins(Opcode.ENCODE, n=n, len=K, t=1, scale=ScaleMode.STATIC if static else ScaleMode.DYNAMIC),
                   *([_ins(Opcode.LOAD, buf=Buffer.SCL, rows=1, cols=1)] if static else [])) for _, _, n in chunks)
    blocks = _pack_chunks(chunks, rows_cap, chunks_cap)
    if W + len(tiles) * X <= len(blocks) * W + X:
        return "reencode", chunks
    return "resident", blocks


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

    def rows_cap(k: dict) -> int:  # rows whose codes (and, K-tiled, accumulators) a block keeps on chip
        return inp_elems // k["K"] if k.get("k_tile", k["K"]) >= k["K"] else min(inp_elems // k["K"], acc_elems // k["m_tile"])

    mt_max = max(t["m"] for seg in segs for t in seg[0].kernel["tiles"])
    budget = scl_elems - 4 * mt_max  # SCL left for dynamic scales and static-scale slots
    n_dyn = max([min(g.n, g.kernel["n_max"]) for seg in segs for g in seg if g.kernel["act_scale"] != "static"], default=0)
    chunks_cap = max(1, (budget - n_dyn) // 2)
    plans: list[tuple[list[Group], str, list]] = [None] * len(segs)
    # static segments first: their slots per scale set bound the rows of dynamic blocks
    for i, seg in enumerate(segs):
        k = seg[0].kernel
        if k["act_scale"] == "static":
            plans[i] = (seg, *_plan_segment(seg, cfg, rows_cap(k), chunks_cap))
    n_static = max([len(b) for seg, mode, blocks in filter(None, plans) if mode == "resident" for b in blocks]
                   + [1 for p in plans if p is not None], default=0)
    for i, seg in enumerate(segs):
        if plans[i] is None:
            k = seg[0].kernel
            plans[i] = (seg, *_plan_segment(seg, cfg, max(1, min(rows_cap(k), budget - 2 * n_static)), None))
    steps: list[_Step] = []
    u = e = q = 0
    for seg, mode, blocks in plans:
        tiles, K = seg[0].kernel["tiles"], seg[0].kernel["K"]
        if mode == "reencode":
            for tile in tiles:
                for ci, (g, r0, n) in enumerate(blocks):
                    steps.append(_Step(g, r0, n, tile, u, ci == 0, True, e, q, 0, 0, 0))
                    e, q = e + 1, q + 1
                u += 1
            continue
        kt, mtk = seg[0].kernel.get("k_tile", K), seg[0].kernel["m_tile"]
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
                        steps.append(_Step(g, r0, n, tile, u, ci == 0, ti == 0 and kc == 0, e + ci, q, ci, offs[ci] * K,
                                           offs[ci], kc, k0, kl, offs[ci] * mtk, k0 + kl >= K))
                    u += 1
            e, q = e + len(block), q + 1
    x_slot = max(st.n * st.g.kernel["K"] for st in steps)
    o_slot = max(st.n * st.tile["m"] for st in steps)
    w_slot = max(st.tile["w_bytes"] for st in steps)
    n_sx = max([st.row + st.n for st in steps if st.g.kernel["act_scale"] != "static"], default=0)
    VX = (0, x_slot)
    VO = (2 * x_slot, 2 * x_slot + o_slot)
    SX, SST = 0, n_sx
    SSB = (n_sx + 2 * n_static, n_sx + 2 * n_static + 2 * mt_max)
    WS = (0, w_slot)
    if 2 * x_slot + 2 * o_slot > cfg.buffer_elems(Buffer.VEC) or SSB[1] + 2 * mt_max > scl_elems \
            or 2 * w_slot > cfg.buffer_elems(Buffer.WGT) or max(st.inp + st.n * st.g.kernel["K"] for st in steps) > inp_elems \
            or max(st.acc + st.n * st.tile["m"] for st in steps) > acc_elems:
        raise SpikecError(f"build_program: the kernels' tiles do not fit the buffers of config '{cfg.name}'")
    outs = np.cumsum([0] + [int(st.last_k) for st in steps]).tolist()  # output (DEQ/STORE) index of each step
    S = outs[-1]  # outputs (VEC output slot o % 2)
    # c2l: a load group pops a token only if it overwrites a slot some earlier step read; the
    # token comes from the DEQ of the last such step (later if that DEQ already pushes for
    # an earlier group: pushes and pops pair up in order), never later than the step before
    # the previous load group's, so the load module runs up to two groups ahead.
    pops: set[int] = set()  # steps whose load group pops c2l
    pushers: set[int] = set()  # steps whose DEQ pushes c2l
    last_w, last_x, last_st = [-1, -1], [-1, -1], [-1, -1]  # last step reading each WGT/SSB, VEC x, static slot
    last_push = -1
    for s, st in enumerate(steps):
        static = st.g.kernel["act_scale"] == "static"
        if st.load_x or st.load_tile:
            need = max(last_x[st.e % 2] if st.load_x else -1, last_st[st.q % 2] if st.load_x and static else -1,
                       last_w[st.u % 2] if st.load_tile else -1)
            if need >= 0:
                last_push = max(need, last_push + 1)
                assert last_push < s, "c2l token pushed after the load group that waits for it"
                pops.add(s)
                pushers.add(last_push)
        last_w[st.u % 2] = s
        if st.load_x:
            last_x[st.e % 2] = s
        if static:
            last_st[st.q % 2] = s
    prog: list[Instruction] = []
    for s, st in enumerate(steps):
        g, r0, n, tile = st.g, st.r0, st.n, st.tile
        k = g.kernel
        K, M, mt = k["K"], k["M"], tile["m"]
        o = outs[s]
        ktiled = st.kl > 0
        static = k["act_scale"] == "static"
        T = int(k["timesteps"][g.modality])
        scl = SST + (st.q % 2) * n_static + st.idx if static else SX + st.row
        # load module
        loads = []
        if st.load_x:
            loads.append(dict(buf=Buffer.VEC, sram=VX[st.e % 2], dram=g.x_addr + 4 * r0 * K, stride=4 * K, rows=n, cols=K))
            if static:
                loads.append(dict(buf=Buffer.SCL, sram=scl, dram=k["static_offset"] + 4 * g.modality, stride=4, rows=1, cols=1))
        if st.load_tile:
            w_rows = (_align(weight_bytes(st.kl, mt, k["wbits"]), TILE_ALIGN) if ktiled else tile["w_bytes"]) // TILE_ALIGN
            loads.append(dict(buf=Buffer.WGT, sram=WS[st.u % 2], dram=tile["w"] + st.kc * tile["w_bytes"],
                              stride=TILE_ALIGN, rows=w_rows, cols=TILE_ALIGN))
            if st.last_k:
                loads.append(dict(buf=Buffer.SCL, sram=SSB[st.u % 2], dram=tile["sb"], stride=8 * mt, rows=1, cols=2 * mt))
        for i, kw in enumerate(loads):
            prog.append(_ins(Opcode.LOAD, **kw, pop_next=int(i == 0 and s in pops), push_next=int(i == len(loads) - 1)))
        # compute module
        compute = []
        mode = ScaleMode.STATIC if static else ScaleMode.DYNAMIC
        if st.load_x and ktiled and n > 1:
            # K-tiled codes: piece c of the chunk is its own packed block [n, kl_c] at inp + n * k0_c.
            # The dynamic scale needs the whole row: one dynamic ENCODE of the rows (its codes, in
            # the same INP rows, are overwritten), then per token and piece a static ENCODE with
            # that token's scale from SCL (x / s with the same s: the same codes).
            if not static:
                compute.append((Opcode.ENCODE, dict(src=VX[st.e % 2], dst=st.inp, dst_buf=EncodeDst.INP, n=n, len=K,
                                                    t=T, scale=ScaleMode.DYNAMIC, scl=scl)))
            for i in range(n):
                for k0 in range(0, K, k["k_tile"]):
                    kl = min(k["k_tile"], K - k0)
                    compute.append((Opcode.ENCODE, dict(src=VX[st.e % 2] + i * K + k0, dst=st.inp + n * k0 + i * kl,
                                                        dst_buf=EncodeDst.INP, n=1, len=kl, t=T, scale=ScaleMode.STATIC,
                                                        scl=scl if static else scl + i)))
        elif st.load_x:  # (one row: its [1, K] codes are already the pieces' blocks)
            compute.append((Opcode.ENCODE, dict(src=VX[st.e % 2], dst=st.inp, dst_buf=EncodeDst.INP, n=n, len=K, t=T,
                                                scale=mode, scl=scl)))
        compute.append((Opcode.SPMM, dict(inp=st.inp + n * st.k0, wgt=WS[st.u % 2], acc=st.acc, n=n,
                                          k=st.kl if ktiled else K, m=mt, acc_stride=mt, t=T,
                                          neuron=Neuron.IF if k["neuron"] == "if" else Neuron.TCLIF,
                                          wfmt=WeightFormat.INT4 if k["wbits"] == 4 else WeightFormat.INT8,
                                          acc_mode=AccMode.ACCUMULATE if st.kc > 0 else AccMode.OVERWRITE)))
        if st.last_k:
            flags = (0 if static else VecFlag.PER_ROW) | (VecFlag.BIAS if k["has_bias"] else 0)
            compute.append((Opcode.VEC, dict(func=VecFunc.DEQ, flags=int(flags), dst=VO[o % 2], src0=st.acc, src1=scl,
                                             src2=SSB[st.u % 2], n=n, len=mt, pop_next=int(o >= 2), push_next=1)))
        compute[-1][1]["push_prev"] = int(s in pushers)  # after the step's last read of its slots
        for i, (op, kw) in enumerate(compute):
            if i == 0 and loads:
                kw["pop_prev"] = 1
            prog.append(_ins(op, **kw))
        # store module
        if st.last_k:
            prog.append(_ins(Opcode.STORE, buf=Buffer.VEC, sram=VO[o % 2], dram=g.y_addr + 4 * (r0 * M + tile["m0"]),
                             stride=4 * M, rows=n, cols=mt, pop_prev=1, push_prev=int(o + 2 < S or o == S - 1)))
    prog.append(_ins(Opcode.FINISH, pop_next=1))
    return prog


def kernel_modalities(k: dict) -> list[int]:
    """The modalities a kernel's graph feeds it: the constant one, or every one."""
    return [k["modality_id"]] if k["modality_id"] >= 0 else list(range(len(k["timesteps"])))


def representative_groups(kernels: list[dict], io_base: int) -> list[Group]:
    """One token of each modality per kernel (modalities without a usable static scale
    skipped), x and y of each kernel at their own DRAM addresses from io_base."""
    groups, addr = [], _align(io_base, 4096)
    for k in kernels:
        mods = [m for m in kernel_modalities(k) if k["act_scale"] != "static" or k["static_scales"][m] is not None]
        if not mods:
            continue
        x_addr = addr
        y_addr = _align(x_addr + 4 * len(mods) * k["K"], TILE_ALIGN)
        addr = _align(y_addr + 4 * len(mods) * k["M"], TILE_ALIGN)
        for i, m in enumerate(mods):
            groups.append(Group(k, m, i, 1, x_addr, y_addr))
    return groups


def representative_program(art: IsaArtifact) -> list[Instruction]:
    groups = representative_groups(art.kernels, len(art.weights))
    if not groups:
        return [_ins(Opcode.FINISH)]
    return build_program(groups, art.hwconfig)


def load_kernels(data: bytes, where: str = "isa/kernels") -> dict:
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpikecError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != KERNELS_FORMAT or doc.get("version") != KERNELS_VERSION:
        raise SpikecError(f"{where}: not a {KERNELS_FORMAT} v{KERNELS_VERSION} document")
    return doc


__all__ = ["Group", "IsaArtifact", "build_program", "load_kernels", "lower_graphs", "pack_weights", "plan_tiles",
           "representative_program"]
