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
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.isa.programs import KERNELS_FORMAT, KERNELS_VERSION, build_program, ins, representative_groups
from spikec.isa.tiling import ISA_MAX_T, TILE_ALIGN, align, kernel_tiles, plan_tiles, weight_bytes

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
    fallback: dict = {"graphs": {}, "note": "host ops run on the host CPU (onnxruntime, as on the ORT target) in the fpga target: "
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
                image += bytes(align(len(image), TILE_ALIGN) - len(image))
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


def representative_program(art: IsaArtifact) -> list[Instruction]:
    groups = representative_groups(art.kernels, len(art.weights))
    if not groups:
        return [ins(Opcode.FINISH)]
    return build_program(groups, art.hwconfig)


__all__ = ["IsaArtifact", "lower_graphs", "representative_program"]
