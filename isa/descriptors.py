"""Kernel descriptors: what the accelerator lowering hands the fpga runtime, typed.

A *descriptor* says where a lowered kernel's data lies in device DRAM, how it is tiled and
which graph nodes it replaces; the instruction stream of one call is a function of it and
the call's rows (isa/programs.py). The lowering passes (passes/lower_*.py) make them, the
.sbin stores them as JSON (section `isa/kernels`, one `KernelsDocument`), and every reader
(the fpga runtime, `spikec disasm`, the co-simulation scripts) gets them back through
`from_json`, which checks each field against the file's hardware configuration and
weights image once, so that no later call fails on a bad descriptor:

    doc = KernelsDocument.from_bytes(data, where="m.sbin:isa/kernels", cfg=cfg, weights_len=len(weights))
    doc.kernels[3].K, doc.vec_kernels[0].func, doc.attn_kernels[1].wtrans

`to_json` writes exactly the JSON `from_json` reads (so a compiled file round-trips).
Bump `KERNELS_VERSION` when the JSON changes (docs/sbin.md). Version 2 adds a product's
`group_size` (group-wise weight scales); a document holding no group-wise product is
still written as version 1, byte for byte as before, and both versions are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from spikec import reference as R
from spikec import schema
from spikec.errors import SpikecError
from spikec.isa import tiling
from spikec.isa.fields import VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.isa.tiling import Tile

KERNELS_FORMAT = "spikec-isa-kernels"
KERNELS_VERSION = 2  # the newest version written (documents without group-wise products are written as v1)
KERNELS_VERSIONS = (1, 2)  # the versions read
MAX_KERNELS = 1 << 16  # descriptors of each kind in one document
MAX_M = 1 << 20  # output features of one product (M-tiles are bounded by the ISA's fields)
MAX_MODALITIES = 256
MAX_NAME = 4096  # characters of a node or value name
VEC_FUNCS = tuple(f.name for f in VecFunc if f not in (VecFunc.DEQ, VecFunc.COPY))  # what lower_vec emits


# ---------------------------------------------------------------- field readers


def _str(obj: dict, key: str, where: str, nullable: bool = False, default=schema.MISSING) -> str | None:
    return schema.get(obj, key, str, where=where, max=MAX_NAME, nullable=nullable, default=default)


def _index(obj: dict, where: str, index: int | None) -> int:
    if index is not None:
        return schema.get(obj, "index", int, where=where, choices=(index,))
    return schema.get(obj, "index", int, where=where, min=0, max=MAX_KERNELS - 1)


def _timesteps(obj: dict, where: str, t_max: int) -> tuple[tuple[int, ...], tuple[str, ...], int]:
    """(timesteps per modality in 1..t_max, modality names as many, modality_id -1..n-1)."""
    T = schema.int_list(schema.get(obj, "timesteps", list, where=where), where=f"{where}: field 'timesteps'", min=1,
                        max=t_max, length=(1, MAX_MODALITIES))
    names = schema.str_list(schema.get(obj, "modalities", list, where=where, min=len(T), max=len(T)),
                            where=f"{where}: field 'modalities'", max_len=64)
    mid = schema.get(obj, "modality_id", int, where=where, min=-1, max=len(T) - 1)
    return tuple(T), tuple(names), mid


def _offset(obj: dict, key: str, where: str, weights_len: int | None, nullable: bool = False) -> int | None:
    """A byte offset into isa/weights (0..weights_len when that is known)."""
    return schema.get(obj, key, int, where=where, min=0, max=weights_len, nullable=nullable,
                      default=None if nullable else schema.MISSING)


# ---------------------------------------------------------------- spiking products


@dataclass(frozen=True)
class ProductKernel:
    """A lowered `SpikeEncode -> SpikeMatMul` pair with constant weights: x [n, K] float32 ->
    y [n, M] float32. Offsets are bytes into isa/weights (device DRAM from 0)."""

    index: int  # position in KernelsDocument.kernels
    graph: str  # the role of the graph holding the nodes
    node: str  # the SpikeMatMul replaced
    encoder: str  # its SpikeEncode
    layer: int | None  # the decoder layer the node belongs to (the med pass numbers them), if any
    K: int  # input features
    M: int  # output features
    wbits: int  # 4 or 8
    neuron: str  # "tc-lif" or "if"
    timesteps: tuple[int, ...]  # T per modality
    modalities: tuple[str, ...]  # modality names, as many
    modality_id: int  # the one modality the graph feeds it, or -1: per token
    act_scale: str  # "static" or "dynamic"
    has_bias: bool
    m_tile: int  # output features per weight tile
    n_max: int  # tokens per chunk
    k_tile: int  # input features per k-piece (== K unless K-tiled)
    tiles: tuple[Tile, ...]  # the M-tiles' layout (tiling.kernel_tiles)
    weights_offset: int  # first byte of the kernel's image
    weights_bytes: int  # bytes of the kernel's image (tiles and static scales)
    static_scales: tuple[float | None, ...] | None = None  # act_scale static: per modality (None: uncalibrated)
    static_offset: int | None = None  # act_scale static: the scales as float32, one per modality
    group_size: int | None = None  # rows per weight-scale group (s_w [K / group_size, M]); None: per channel

    @property
    def static(self) -> bool:
        return self.act_scale == "static"

    @property
    def n_groups(self) -> int:
        """Weight-scale groups: 1 per output channel, else K / group_size."""
        return tiling.n_groups(self.K, self.group_size)

    def to_json(self) -> dict:
        d = {"index": self.index, "graph": self.graph, "node": self.node, "encoder": self.encoder, "layer": self.layer,
             "K": self.K, "M": self.M, "wbits": self.wbits, "neuron": self.neuron, "timesteps": list(self.timesteps),
             "modalities": list(self.modalities), "modality_id": self.modality_id, "act_scale": self.act_scale,
             "has_bias": self.has_bias, "m_tile": self.m_tile, "n_max": self.n_max, "k_tile": self.k_tile,
             "tiles": [t.to_json() for t in self.tiles], "weights_offset": self.weights_offset,
             "weights_bytes": self.weights_bytes}
        if self.static:
            d["static_scales"] = list(self.static_scales)
            d["static_offset"] = self.static_offset
        if self.n_groups > 1:
            d["group_size"] = self.group_size
        return d

    @classmethod
    def from_json(cls, obj: object, where: str, cfg: HwConfig, *, index: int | None = None,
                  weights_len: int | None = None) -> "ProductKernel":
        """A descriptor checked: types and ranges, its tiles exactly the layout
        `tiling.kernel_tiles` gives its shape (inside isa/weights when `weights_len` is
        given), its chunk and tiles within `cfg`'s buffers, its int32 bound; `index`, when
        given, the position it must have. Raises SpikecError naming `where` and the field."""
        k = schema.check(obj, dict, where=where)
        idx = _index(k, where, index)
        names = [_str(k, key, where) for key in ("graph", "node", "encoder")]
        K = schema.get(k, "K", int, where=where, min=1, max=tiling.MAX_LEN)
        M = schema.get(k, "M", int, where=where, min=1, max=MAX_M)
        wbits = schema.get(k, "wbits", int, where=where, choices=(4, 8))
        neuron = schema.get(k, "neuron", str, where=where, choices=("tc-lif", "if"))
        T, mods, mid = _timesteps(k, where, tiling.ISA_MAX_T if neuron == "tc-lif" else 7)
        R.check_overflow(K, max(T) + (1 if neuron == "if" else 0), R.qmax(wbits), where)
        act = schema.get(k, "act_scale", str, where=where, choices=("static", "dynamic"))
        has_bias = schema.get(k, "has_bias", bool, where=where)
        mt = schema.get(k, "m_tile", int, where=where, min=1, max=min(M, tiling.MAX_LEN))
        kt = schema.get(k, "k_tile", int, where=where, min=1, max=K, default=K)
        n_max = schema.get(k, "n_max", int, where=where, min=1, max=tiling.MAX_N)
        G = _group_size(k, where, K, kt, neuron)
        base = _offset(k, "weights_offset", where, weights_len)
        if not tiling.product_fits(cfg, K, mt, kt, n_max, wbits, G):  # as plan_tiles checks when compiling
            raise SpikecError(f"{where}: m_tile {mt}, k_tile {kt}, n_max {n_max}"
                              f"{f', group_size {G}' if G else ''} do not fit the buffers of hardware "
                              f"configuration '{cfg.name}'")
        tiles, _, end = tiling.kernel_tiles(K, M, mt, kt, wbits, base, group_size=G)
        if k.get("tiles") != [t.to_json() for t in tiles]:
            raise SpikecError(f"{where}: field 'tiles' is not the layout of a [{K}, {M}] kernel in M-tiles of {mt} "
                              f"(k_tile {kt}) at offset {base}")
        if weights_len is not None and end > weights_len:
            raise SpikecError(f"{where}: its weights end at byte {end}, past the end of isa/weights ({weights_len} bytes)")
        scales, s_off = _static_scales(k, where, len(T), weights_len) if act == "static" else (None, None)
        nbytes = schema.get(k, "weights_bytes", int, where=where, min=end - base, max=weights_len)
        layer = schema.get(k, "layer", int, where=where, nullable=True, default=None)
        return cls(idx, *names, layer, K, M, wbits, neuron, T, mods, mid, act, has_bias, mt, n_max, kt, tuple(tiles),
                   base, nbytes, scales, s_off, G)


def _group_size(k: dict, where: str, K: int, kt: int, neuron: str) -> int | None:
    """The optional 'group_size' (v2): rows per weight-scale group, dividing K, a multiple of
    k_tile (a k-piece never spans two groups), TC-LIF only; None (and absent) per channel."""
    G = schema.get(k, "group_size", int, where=where, min=1, max=K, default=None)
    if G is None or G == K:
        return None
    if K % G:
        raise SpikecError(f"{where}: field 'group_size' {G} does not divide K={K}")
    if G % kt:
        raise SpikecError(f"{where}: field 'k_tile' {kt} does not divide 'group_size' {G}: a k-piece would span two "
                          f"weight-scale groups")
    if neuron != "tc-lif":
        raise SpikecError(f"{where}: field 'group_size' {G}: group-wise weight scales need the tc-lif neuron, not {neuron}")
    return G


def _static_scales(k: dict, where: str, n: int, weights_len: int | None) -> tuple[tuple[float | None, ...], int]:
    scales = schema.get(k, "static_scales", list, where=where, min=n, max=n)
    out = tuple(schema.check(sc, float, where=f"{where}: field 'static_scales[{m}]'", nullable=True, min=0)
                for m, sc in enumerate(scales))
    off = _offset(k, "static_offset", where, weights_len)
    if weights_len is not None and off + 4 * n > weights_len:
        raise SpikecError(f"{where}: field 'static_offset' {off} + {4 * n} bytes lies past isa/weights "
                          f"({weights_len} bytes)")
    return out, off


# ---------------------------------------------------------------- vector kernels


@dataclass(frozen=True)
class VecKernel:
    """A lowered vector function (passes/lower_vec.py): rows [n, length] float32 of its
    operands -> [n, length] float32, replacing host `nodes` (the last, `node`, makes `output`)."""

    index: int  # position in KernelsDocument.vec_kernels
    graph: str
    func: VecFunc  # never DEQ or COPY
    node: str
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]  # the operand values, in the ISA's order (x, y1 | cos, sin)
    output: str
    length: int | None  # the row length (JSON "len"), or None: known only at run time
    max_len: int  # the longest row the configuration's VEC holds (== length when fixed)
    vec_const: int | None  # byte offset of the VEC constant row(s) (gamma, gamma|beta, the row)
    vec_const_len: int  # its float32 elements
    scl_const: int | None  # byte offset of the SCL constant (eps, the scale)

    def to_json(self) -> dict:
        return {"index": self.index, "graph": self.graph, "func": self.func.name, "node": self.node,
                "nodes": list(self.nodes), "inputs": list(self.inputs), "output": self.output, "len": self.length,
                "max_len": self.max_len, "vec_const": self.vec_const, "vec_const_len": self.vec_const_len,
                "scl_const": self.scl_const}

    @classmethod
    def from_json(cls, obj: object, where: str, cfg: HwConfig, *, index: int | None = None,
                  weights_len: int | None = None) -> "VecKernel":
        """A descriptor checked: a function lower_vec emits, operand names as many as the
        function takes, row lengths `cfg`'s VEC holds, constants inside isa/weights (when
        `weights_len` is given). Raises SpikecError naming `where` and the field."""
        k = schema.check(obj, dict, where=where)
        idx = _index(k, where, index)
        graph = _str(k, "graph", where)
        func = VecFunc[schema.get(k, "func", str, where=where, choices=VEC_FUNCS)]
        node, output = _str(k, "node", where), _str(k, "output", where)
        nodes = schema.str_list(schema.get(k, "nodes", list, where=where), where=f"{where}: field 'nodes'",
                                length=(1, 1024))
        if node not in nodes:
            raise SpikecError(f"{where}: field 'node' {schema.describe(node)} is not one of its 'nodes'")
        length, top = _vec_lengths(k, where, cfg, func)
        n_ops = len(tiling.operand_cols(func, top))
        inputs = schema.str_list(schema.get(k, "inputs", list, where=where, min=n_ops, max=n_ops),
                                 where=f"{where}: field 'inputs'")
        clen, vec_const, scl_const = _vec_constants(k, where, func, length, weights_len)
        return cls(idx, graph, func, node, tuple(nodes), tuple(inputs), output, length, top, vec_const, clen, scl_const)


def _vec_lengths(k: dict, where: str, cfg: HwConfig, func: VecFunc) -> tuple[int | None, int]:
    length = schema.get(k, "len", int, where=where, min=1, max=tiling.MAX_LEN, nullable=True)
    top = schema.get(k, "max_len", int, where=where, min=1, max=tiling.MAX_LEN)
    if length is not None and length != top:
        raise SpikecError(f"{where}: field 'max_len' {top} differs from its fixed 'len' {length}")
    try:
        tiling.plan_vec(cfg, func, top)
    except tiling.TilingError as exc:
        raise SpikecError(f"{where}: rows of 'max_len' {top}: {exc}") from None
    return length, top


def _vec_constants(k: dict, where: str, func: VecFunc, length: int | None,
                   weights_len: int | None) -> tuple[int, int | None, int | None]:
    """(vec_const_len, vec_const, scl_const), each offset required where `func` reads it."""
    rows = tiling.CONST_ROWS.get(func, 0)
    clen = schema.get(k, "vec_const_len", int, where=where, min=0, max=tiling.MAX_LEN * 2)
    if rows and (length is None or clen != rows * length):
        raise SpikecError(f"{where}: {func.name} needs {rows} constant row(s) of a fixed 'len', "
                          f"'vec_const_len' is {clen}")
    vec_const = _offset(k, "vec_const", where, weights_len, nullable=not rows)
    if rows and weights_len is not None and vec_const + 4 * clen > weights_len:
        raise SpikecError(f"{where}: field 'vec_const' {vec_const} + {4 * clen} bytes lies past isa/weights")
    scalar = func in tiling.HAS_SCALAR
    scl_const = _offset(k, "scl_const", where, weights_len, nullable=not scalar)
    if scalar and weights_len is not None and scl_const + 4 > weights_len:
        raise SpikecError(f"{where}: field 'scl_const' {scl_const} lies past isa/weights ({weights_len} bytes)")
    return clen, vec_const, scl_const


# ---------------------------------------------------------------- attention kernels


@dataclass(frozen=True)
class AttentionKernel:
    """A lowered activation x activation product (passes/lower_attn.py): a [.., S, K] (value
    `a`, coded per token) @ b [.., K, N] (value `b`, one per-tensor scale; [.., N, K] read
    transposed when `wtrans`) -> [.., S, N] float32. No constants in isa/weights."""

    index: int  # position in KernelsDocument.attn_kernels
    graph: str
    node: str  # the SpikeMatMul replaced
    encoder: str  # its SpikeEncode (left operand)
    code: str  # its SpikeCode (right operand)
    transpose: str | None  # the Transpose bypassed (wtrans), if any
    a: str
    b: str
    wtrans: bool
    layer: int | None  # as ProductKernel.layer
    timesteps: tuple[int, ...]  # T per modality (TC-LIF)
    modalities: tuple[str, ...]
    bits: int  # the right operand's code bits, 2..8
    modality_id: int

    def to_json(self) -> dict:
        return {"index": self.index, "graph": self.graph, "node": self.node, "encoder": self.encoder,
                "code": self.code, "transpose": self.transpose, "a": self.a, "b": self.b, "wtrans": self.wtrans,
                "layer": self.layer, "timesteps": list(self.timesteps), "modalities": list(self.modalities),
                "bits": self.bits, "modality_id": self.modality_id}

    @classmethod
    def from_json(cls, obj: object, where: str, cfg: HwConfig | None = None, *, index: int | None = None,
                  weights_len: int | None = None) -> "AttentionKernel":
        """A descriptor checked: names, timesteps (TC-LIF, T <= 15), code bits 2..8 (`cfg` and
        `weights_len` are not needed: the kernel has no constants and its call's fit is
        checked per call). Raises SpikecError naming `where` and the field."""
        k = schema.check(obj, dict, where=where)
        idx = _index(k, where, index)
        graph, node, encoder, code, a, b = (_str(k, key, where) for key in ("graph", "node", "encoder", "code", "a", "b"))
        transpose = _str(k, "transpose", where, nullable=True)
        wtrans = schema.get(k, "wtrans", bool, where=where)
        bits = schema.get(k, "bits", int, where=where, min=2, max=8)
        T, mods, mid = _timesteps(k, where, tiling.ISA_MAX_T)
        layer = schema.get(k, "layer", int, where=where, nullable=True, default=None)
        return cls(idx, graph, node, encoder, code, transpose, a, b, wtrans, layer, T, mods, bits, mid)


# ---------------------------------------------------------------- the document


@dataclass(frozen=True)
class KernelsDocument:
    """The .sbin's `isa/kernels` section: every lowered kernel of a model (indices global
    over its graphs), the hardware configuration's name and the fallback report (host ops
    per graph, free-form: for people, not read by the runtime)."""

    hwconfig: str
    kernels: tuple[ProductKernel, ...]
    vec_kernels: tuple[VecKernel, ...] = ()
    attn_kernels: tuple[AttentionKernel, ...] = ()
    fallback: dict | None = None

    def to_json(self) -> dict:
        version = KERNELS_VERSION if any(k.n_groups > 1 for k in self.kernels) else 1  # v1 unless it needs v2
        return {"format": KERNELS_FORMAT, "version": version, "hwconfig": self.hwconfig,
                "kernels": [k.to_json() for k in self.kernels], "vec_kernels": [k.to_json() for k in self.vec_kernels],
                "attn_kernels": [k.to_json() for k in self.attn_kernels], "fallback": self.fallback or {}}

    def to_bytes(self) -> bytes:
        """The section's bytes: to_json() as sorted, indented JSON (deterministic)."""
        return (json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n").encode()

    def for_graph(self, role: str) -> "KernelsDocument":
        """The kernels of graph `role` only (indices unchanged)."""
        return KernelsDocument(self.hwconfig, *(tuple(k for k in ks if k.graph == role)
                                                for ks in (self.kernels, self.vec_kernels, self.attn_kernels)),
                               self.fallback)

    @classmethod
    def from_json(cls, obj: object, where: str, cfg: HwConfig, weights_len: int | None = None) -> "KernelsDocument":
        """The document checked: format and version, then every descriptor against `cfg` and
        (when given) the weights image's length, so that no call can fail on them later.
        `vec_kernels` and `attn_kernels` may be absent (files compiled before those
        lowerings). Raises SpikecError naming `where`, the descriptor ("kernels[3]") and the field."""
        version = obj.get("version") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or obj.get("format") != KERNELS_FORMAT or type(version) is not int \
                or version not in KERNELS_VERSIONS:
            raise SpikecError(f"{where}: not a {KERNELS_FORMAT} v1 document nor a v2 one (v2: group-wise weight scales)")
        lists = []
        for key, kind in (("kernels", ProductKernel), ("vec_kernels", VecKernel), ("attn_kernels", AttentionKernel)):
            items = schema.get(obj, key, list, where=where, max=MAX_KERNELS, default=None if key == "kernels" else [])
            if items is None:
                raise SpikecError(f"{where}: field 'kernels' is missing")
            lists.append(tuple(kind.from_json(k, f"{where}: {key}[{i}]", cfg, index=i, weights_len=weights_len)
                               for i, k in enumerate(items)))
        if version < 2:
            for i, k in enumerate(lists[0]):
                if k.n_groups > 1:
                    raise SpikecError(f"{where}: kernels[{i}]: field 'group_size' needs a v2 document, this is v{version}")
        hw = _str(obj, "hwconfig", where, default=cfg.name)
        fallback = schema.get(obj, "fallback", dict, where=where, default={})
        return cls(hw, *lists, fallback)

    @classmethod
    def from_bytes(cls, data: bytes, where: str, cfg: HwConfig, weights_len: int | None = None) -> "KernelsDocument":
        """`from_json` of a section's bytes (parsed with spikec.schema.parse_json). Raises SpikecError."""
        return cls.from_json(schema.parse_json(data, where=where), where, cfg, weights_len)


Descriptor = ProductKernel | VecKernel | AttentionKernel

__all__ = ["AttentionKernel", "Descriptor", "KERNELS_FORMAT", "KERNELS_VERSION", "KERNELS_VERSIONS", "KernelsDocument",
           "MAX_KERNELS",
           "MAX_MODALITIES", "ProductKernel", "Tile", "VEC_FUNCS", "VecKernel"]
