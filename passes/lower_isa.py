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

Everything else (norms, softmax, rotary, attention products, residual adds, ...) runs
on the host in the fpga target; `fallback_report` counts those ops per graph. Lowering
them to the vector unit (VEC RMSNORM/LAYERNORM/SOFTMAX/ROPE/...) is future work.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from spikec import ops as sops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction
from spikec.isa.fields import AccMode, Buffer, EncodeDst, Neuron, Opcode, ScaleMode, VecFlag, VecFunc, WeightFormat
from spikec.isa.hwconfig import HwConfig

KERNELS_FORMAT = "spikec-isa-kernels"
KERNELS_VERSION = 1
TILE_ALIGN = 64  # weight tiles are padded to 64 bytes in DRAM and loaded as rows of 64 bytes
MAX_N = 4095  # SPMM/ENCODE/VEC `n` field
MAX_LEN = 16383  # ENCODE `len`, SPMM `k`/`m`, VEC `len`
ISA_MAX_T = 15  # ENCODE/SPMM `t` field (TC-LIF); rate IF: t <= 7


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


def plan_tiles(cfg: HwConfig, K: int, M: int, wbits: int) -> tuple[int, int] | str:
    """(m_tile, n_max) for a kernel on this configuration, or the reason it does not fit.

    Buffers hold two slots of the weight tile (WGT) and of [s_w | bias] (SCL) so the next
    tile loads while this one computes; VEC holds two slots of the input rows and two of
    the output rows; INP one chunk of codes, ACC one chunk of accumulators."""
    if K > MAX_LEN:
        return f"K={K} exceeds the ISA's {MAX_LEN}"
    wgt, scl = cfg.buffer_elems(Buffer.WGT), cfg.buffer_elems(Buffer.SCL)
    inp, acc, vec = cfg.buffer_elems(Buffer.INP), cfg.buffer_elems(Buffer.ACC), cfg.buffer_elems(Buffer.VEC)
    mt = min(M, MAX_LEN)

    def fits(mt: int) -> bool:
        return 2 * _align(weight_bytes(K, mt, wbits), TILE_ALIGN) <= wgt and 4 * mt + 3 <= scl

    if not fits(mt):
        mt = (mt // cfg.pe_cols) * cfg.pe_cols
        while mt > 0 and not fits(mt):
            mt -= cfg.pe_cols
    if mt <= 0:
        return f"K={K} does not fit a {cfg.pe_cols}-column weight tile in WGT ({wgt} bytes, two slots)"
    n = min(MAX_N, inp // K, vec // (2 * K + 2 * mt), acc // mt, scl - 2 - 4 * mt)
    if n < 1:
        return f"one token of K={K}, M-tile={mt} does not fit the on-chip buffers"
    return mt, int(n)


# ---------------------------------------------------------------- kernels


@dataclass
class IsaArtifact:
    hwconfig: HwConfig
    weights: bytes
    kernels: list[dict]
    fallback: dict

    def kernels_json(self) -> bytes:
        doc = {"format": KERNELS_FORMAT, "version": KERNELS_VERSION, "hwconfig": self.hwconfig.name,
               "kernels": self.kernels, "fallback": self.fallback}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def _static_scales(enc: ir.Node, timesteps: list[int], names: list[str]) -> list[float | None]:
    clip = sops.clip_table(enc, len(names))
    out = []
    for m, T in enumerate(timesteps):
        if T > sops.CLIP_T or np.isnan(clip[m, T - 1]):
            out.append(None)
            continue
        s = np.float32(clip[m, T - 1]) / np.float32(2**T - 1)
        out.append(float(s if s > 0 else np.float32(1.0)))
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


def lower_graphs(graphs: dict[str, ir.Model], cfg: HwConfig) -> IsaArtifact:
    """Kernels for every lowerable spiking product of the graphs (roles in sorted order)."""
    image = bytearray()
    kernels: list[dict] = []
    fallback: dict = {"graphs": {}, "note": "host ops run on the host CPU (onnx reference evaluator) in the fpga "
                      "target; lowering them to the vector unit (VEC RMSNORM/LAYERNORM/SOFTMAX/ROPE/SILU/GELU) is future work"}
    for role in sorted(graphs):
        model = graphs[role]
        names = sops.modalities(model)
        lowered: set[str] = set()
        not_lowered: dict[str, str] = {}
        for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
            enc = mm.inputs[0].producer()
            why = _why_not(mm, enc)
            where = f"graph '{role}', node '{mm.name}'"
            if why is None:
                w = mm.inputs[3].const_value.numpy()
                K, M = int(w.shape[-2]), int(w.shape[-1])
                wbits = int(sops.attr(mm, "wbits", 8))
                neuron = sops.attr(mm, "neuron", "tc-lif")
                T = sops.get_timesteps(mm)
                qw = int(np.abs(w.astype(np.int64)).max(initial=0))
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
            mt, n_max = plan
            s_w = mm.inputs[4].const_value.numpy().astype(np.float32)
            bias_v = mm.inputs[5] if len(mm.inputs) > 5 else None
            bias = bias_v.const_value.numpy().astype(np.float32) if bias_v is not None and bias_v.const_value is not None else None
            if bias_v is not None and bias is None:
                not_lowered[mm.name] = "bias is not constant"
                continue
            base = len(image)
            tiles = []
            for m0 in range(0, M, mt):
                m1 = min(M, m0 + mt)
                wb = pack_weights(w[:, m0:m1], wbits)
                w_off = len(image)
                image += wb + bytes(_align(len(wb), TILE_ALIGN) - len(wb))
                sb = np.concatenate([s_w[m0:m1], bias[m0:m1] if bias is not None else np.zeros(m1 - m0, np.float32)])
                sb_off = len(image)
                image += sb.astype("<f4").tobytes()
                image += bytes(_align(len(image), TILE_ALIGN) - len(image))
                tiles.append({"m0": m0, "m": m1 - m0, "w": w_off, "w_bytes": _align(len(wb), TILE_ALIGN), "sb": sb_off})
            scale = sops.attr(enc, "act_scale", "dynamic")
            desc = {
                "index": len(kernels), "graph": role, "node": mm.name, "encoder": enc.name,
                "layer": sops.attr(mm, "layer"), "K": K, "M": M, "wbits": wbits, "neuron": neuron,
                "timesteps": T, "modalities": names, "modality_id": int(sops.attr(mm, "modality_id", -1)),
                "act_scale": scale, "has_bias": bias is not None, "m_tile": mt, "n_max": n_max,
                "tiles": tiles, "weights_offset": base,
            }
            if scale == "static":
                desc["static_scales"] = _static_scales(enc, T, names)
                desc["static_offset"] = len(image)
                image += np.asarray([np.nan if s is None else s for s in desc["static_scales"]], "<f4").tobytes()
                image += bytes(_align(len(image), TILE_ALIGN) - len(image))
            desc["weights_bytes"] = len(image) - base
            kernels.append(desc)
            lowered.add(mm.name)
        host = collections.Counter()
        fused_enc = set()
        for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
            if mm.name in lowered:
                fused_enc.add(mm.inputs[0].producer().name)
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name in lowered:
                continue
            if sops.is_spikec(node, sops.SPIKE_ENCODE) and node.name in fused_enc:
                continue  # runs as the kernels' ENCODE (its outputs still feed host ops only if used)
            host[f"{node.domain + '::' if node.domain else ''}{node.op_type}"] += 1
        fallback["graphs"][role] = {"device_kernels": len(lowered), "host_ops": dict(sorted(host.items())),
                                    "not_lowered": dict(sorted(not_lowered.items()))}
    if len(image) > cfg.dram_bytes // 2:
        raise SpikecError(f"--isa: the packed weights ({len(image)} bytes) exceed half of the device DRAM "
                          f"({cfg.dram_bytes} bytes, config '{cfg.name}'); activations need the rest")
    return IsaArtifact(cfg, bytes(image), kernels, fallback)


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


def build_program(groups: list[Group], cfg: HwConfig) -> list[Instruction]:
    """The instruction stream for a list of token groups (of one or several kernels).

    Each group is split into chunks of at most the kernel's n_max tokens; each chunk is
    one ENCODE and, per M-tile, one step: LOAD weights tile + [s_w | bias] (slot s % 2),
    SPMM, VEC DEQ (slot s % 2), STORE. Tokens (docs/isa.md section 5): the last LOAD of
    step s pushes l2c, popped by the step's first compute instruction; the step's DEQ
    pushes c2l for the LOADs of step s + 2 (the slot it frees); each STORE pushes s2c for
    the DEQ of step s + 2, which overwrites the STORE's VEC slot, or, for the last
    STORE, for FINISH."""
    steps = []  # (group, chunk row0, chunk n, chunk index, tile, first tile of chunk)
    chunk = 0
    for g in groups:
        for r0 in range(0, g.n, g.kernel["n_max"]):
            n = min(g.kernel["n_max"], g.n - r0)
            for j, tile in enumerate(g.kernel["tiles"]):
                steps.append((g, g.row0 + r0, n, chunk, tile, j == 0))
            chunk += 1
    if not steps:
        raise SpikecError("build_program: no tokens")
    x_slot = max(n * g.kernel["K"] for g, _, n, *_ in steps)
    o_slot = max(n * t["m"] for g, _, n, _, t, _ in steps)
    w_slot = max(t["w_bytes"] for *_, t, _ in steps)
    mt_max = max(t["m"] for *_, t, _ in steps)
    n_max = max(n for _, _, n, *_ in steps)
    VX = (0, x_slot)
    VO = (2 * x_slot, 2 * x_slot + o_slot)
    SX, SST = 0, (n_max, n_max + 1)
    SSB = (n_max + 2, n_max + 2 + 2 * mt_max)
    WS = (0, w_slot)
    if 2 * x_slot + 2 * o_slot > cfg.buffer_elems(Buffer.VEC) or SSB[1] + 2 * mt_max > cfg.buffer_elems(Buffer.SCL) \
            or 2 * w_slot > cfg.buffer_elems(Buffer.WGT):
        raise SpikecError(f"build_program: the kernels' tiles do not fit the buffers of config '{cfg.name}'")
    S = len(steps)
    prog: list[Instruction] = []
    for s, (g, r0, n, c, tile, first) in enumerate(steps):
        k = g.kernel
        K, M, mt = k["K"], k["M"], tile["m"]
        static = k["act_scale"] == "static"
        T = int(k["timesteps"][g.modality])
        # load module
        loads = []
        if first:
            loads.append(dict(buf=Buffer.VEC, sram=VX[c % 2], dram=g.x_addr + 4 * r0 * K, stride=4 * K, rows=n, cols=K))
            if static:
                loads.append(dict(buf=Buffer.SCL, sram=SST[c % 2], dram=k["static_offset"] + 4 * g.modality, stride=4, rows=1, cols=1))
        loads.append(dict(buf=Buffer.WGT, sram=WS[s % 2], dram=tile["w"], stride=TILE_ALIGN, rows=tile["w_bytes"] // TILE_ALIGN, cols=TILE_ALIGN))
        loads.append(dict(buf=Buffer.SCL, sram=SSB[s % 2], dram=tile["sb"], stride=8 * mt, rows=1, cols=2 * mt))
        for i, kw in enumerate(loads):
            prog.append(_ins(Opcode.LOAD, **kw, pop_next=int(i == 0 and s >= 2), push_next=int(i == len(loads) - 1)))
        # compute module
        scl = SST[c % 2] if static else SX
        compute = []
        if first:
            compute.append((Opcode.ENCODE, dict(src=VX[c % 2], dst=0, dst_buf=EncodeDst.INP, n=n, len=K, t=T,
                                                scale=ScaleMode.STATIC if static else ScaleMode.DYNAMIC, scl=scl)))
        compute.append((Opcode.SPMM, dict(inp=0, wgt=WS[s % 2], acc=0, n=n, k=K, m=mt, acc_stride=mt, t=T,
                                          neuron=Neuron.IF if k["neuron"] == "if" else Neuron.TCLIF,
                                          wfmt=WeightFormat.INT4 if k["wbits"] == 4 else WeightFormat.INT8,
                                          acc_mode=AccMode.OVERWRITE)))
        flags = (0 if static else VecFlag.PER_ROW) | (VecFlag.BIAS if k["has_bias"] else 0)
        compute.append((Opcode.VEC, dict(func=VecFunc.DEQ, flags=int(flags), dst=VO[s % 2], src0=0, src1=scl,
                                         src2=SSB[s % 2], n=n, len=mt, pop_next=int(s >= 2),
                                         push_prev=int(s + 2 < S), push_next=1)))
        for i, (op, kw) in enumerate(compute):
            if i == 0:
                kw["pop_prev"] = 1
            prog.append(_ins(op, **kw))
        # store module
        prog.append(_ins(Opcode.STORE, buf=Buffer.VEC, sram=VO[s % 2], dram=g.y_addr + 4 * (r0 * M + tile["m0"]),
                         stride=4 * M, rows=n, cols=mt, pop_prev=1, push_prev=int(s + 2 < S or s == S - 1)))
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
