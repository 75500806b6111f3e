"""Lowering the spiking products to the accelerator (docs/isa.md, "Lowering and the fpga target").

Every `SpikeEncode -> SpikeMatMul` pair whose weights are constants (TC-LIF, or rate IF
on a symmetric code) becomes a *kernel*: its weights packed per M-tile into one DRAM
image (int8, or int4 two per byte when wbits = 4), followed by the tile's `s_w` and
`bias` (float32, adjacent, as VEC DEQ with BIAS reads them; with group-wise scales
s_w [n, M], [s_w[0] | bias | s_w[1] | ... ], the kernel K-tiled at group boundaries and
each group DEQed then added in order: docs/isa.md section 9, "Group-wise products") and,
for static activation scales, one float32 scale per modality. A kernel's *descriptor* (isa/descriptors.py,
stored as JSON) says where its data lies and how it is tiled; the instruction stream of one call is a deterministic
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

As a pass (`lower-isa`, `LowerIsa`): `spikec compile --isa` runs it on each compiled graph
(roles in sorted order, one shared `IsaLowering`, so kernel indices and weight offsets are
global over the model's graphs) through a PassManager after the main pipeline, so the
verifier checks each graph after it, `--dump-ir` writes it (`<dump>/lower-isa/<role>/`,
the text listing the graph's device kernels in the metadata `spikec.isa.kernels`) and the
compile report has its records; its `ensures` reads every descriptor back as the runtime
will. The graphs themselves are not rewritten: the .sbin keeps the portable graphs and
the fpga runtime replaces the lowered nodes when it loads them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx_ir as ir

from spikec import ops as sops
from spikec import reference as R
from spikec import schema
from spikec.errors import SpikecError
from spikec.isa.descriptors import AttentionKernel, KernelsDocument, ProductKernel, VecKernel
from spikec.isa.encoding import Instruction
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.isa.programs import build_program, ins, representative_groups
from spikec.isa.tiling import ISA_MAX_T, TILE_ALIGN, TilePlan, TilingError, align, kernel_tiles, plan_tiles, weight_bytes
from spikec.passes.lower_attn import is_attention
from spikec.passes.lower_attn import lower_graph as lower_attn_graph
from spikec.passes.lower_vec import lower_graph as lower_vec_graph
from spikec.passes.manager import PassManager, PassRecord, register_property
from spikec.passes.options import CompileContext, ContextPass

DEVICE_KERNELS_KEY = "spikec.isa.kernels"  # model metadata the pass writes: the graph's device kernels (for dumps)
FALLBACK_NOTE = ("host ops run on the host CPU (onnxruntime, as on the ORT target) in the fpga target: erf GELU, masks, "
                 "shape ops, attention products not spiked or not lowerable, and whatever matches no vector kernel "
                 "(docs/isa.md section 9)")

# ---------------------------------------------------------------- kernels


@dataclass
class IsaArtifact:
    """A model lowered to the accelerator: the weights image (bytes from device DRAM 0), the
    descriptors (indices global over the model's graphs) and the fallback report."""

    hwconfig: HwConfig
    weights: bytes
    kernels: list[ProductKernel]
    fallback: dict
    vec_kernels: list[VecKernel] = dataclasses.field(default_factory=list)
    attn_kernels: list[AttentionKernel] = dataclasses.field(default_factory=list)

    def document(self) -> KernelsDocument:
        """The descriptors as the isa/kernels section holds them."""
        return KernelsDocument(self.hwconfig.name, tuple(self.kernels), tuple(self.vec_kernels), tuple(self.attn_kernels),
                               self.fallback)

    def kernels_json(self) -> bytes:
        """The isa/kernels section (KernelsDocument.to_bytes)."""
        return self.document().to_bytes()


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


class IsaLowering:
    """The accelerator lowering of one model's graphs, shared by the runs of the lower-isa pass
    over each of them in turn (roles in sorted order, as `lower_graphs` takes them): one
    weights image and one index space per kind of kernel, so that indices and DRAM offsets
    are global over the graphs (each graph's part of the image starts 64-byte aligned)."""

    def __init__(self, cfg: HwConfig, vec: bool = True) -> None:
        self.cfg, self.vec = cfg, vec
        self.image = bytearray()
        self.kernels: list[ProductKernel] = []
        self.vec_kernels: list[VecKernel] = []
        self.attn_kernels: list[AttentionKernel] = []
        self.fallback: dict = {"graphs": {}, "note": FALLBACK_NOTE}
        self.checked = False

    def check_fits(self, graphs: dict[str, ir.Model]) -> None:
        """Refuse (SpikecError) before packing anything when the graphs' weights cannot fit the device DRAM."""
        _check_fits_dram(graphs, self.cfg)
        self.checked = True

    def lower(self, model: ir.Model, role: str) -> dict:
        """Lower graph `role`: its kernels appended (constants to the image); returns its
        fallback entry (kernel counts, host ops, refused nodes and why)."""
        attn, not_lowered = lower_attn_graph(model, role, len(self.attn_kernels))
        self.attn_kernels += attn
        products = self._lower_products(model, role, not_lowered)
        vec: list[VecKernel] = []
        if self.vec:
            vec, why = lower_vec_graph(model, role, self.cfg, self.image, len(self.vec_kernels))
            self.vec_kernels += vec
            not_lowered.update(why)
        entry = {"device_kernels": len(products), "attn_kernels": len(attn),
                 "vec_kernels": dict(sorted(collections.Counter(k.func.name for k in vec).items())),
                 "host_ops": _host_ops(model, products, vec, attn), "not_lowered": dict(sorted(not_lowered.items()))}
        self.fallback["graphs"][role] = entry
        return entry

    def _lower_products(self, model: ir.Model, role: str, not_lowered: dict[str, str]) -> list[ProductKernel]:
        names = sops.modalities(model)
        out = []
        for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
            if is_attention(mm):
                continue
            enc = mm.inputs[0].producer()
            why, plan = _product_plan(mm, enc, self.cfg)
            if why is None and len(mm.inputs) > 5 and mm.inputs[5] is not None and mm.inputs[5].const_value is None:
                R.check_overflow(*_overflow_args(mm), f"graph '{role}', node '{mm.name}'")
                why = "bias is not constant"
            if why is not None:
                not_lowered[mm.name] = why
                continue
            out.append(self._product_kernel(mm, enc, role, names, plan))
            self.kernels.append(out[-1])
        return out

    def _product_kernel(self, mm: ir.Node, enc: ir.Node, role: str, names: list[str], plan: TilePlan) -> ProductKernel:
        """Pack one product's weights into the image; its descriptor."""
        w = mm.inputs[3].const_value.numpy()
        K, M = int(w.shape[-2]), int(w.shape[-1])
        wbits, neuron, T = int(sops.attr(mm, "wbits", 8)), sops.attr(mm, "neuron", "tc-lif"), sops.get_timesteps(mm)
        # the int32 accumulator bound, per modality's T (SEMANTICS.md section 3)
        R.check_overflow(*_overflow_args(mm), f"graph '{role}', node '{mm.name}'")
        s_w = mm.inputs[4].const_value.numpy().astype(np.float32)
        bias_v = mm.inputs[5] if len(mm.inputs) > 5 else None
        bias = bias_v.const_value.numpy().astype(np.float32) if bias_v is not None else None
        G = _group_size(mm, f"graph '{role}', node '{mm.name}'")
        base = len(self.image)
        tiles, wimg, _ = kernel_tiles(K, M, plan.m_tile, plan.k_tile, wbits, base, w, s_w, bias, group_size=G)
        self.image += wimg
        scale = sops.attr(enc, "act_scale", "dynamic")
        scales = s_off = None
        if scale == "static":
            scales, s_off = tuple(_static_scales(enc, T, names)), len(self.image)
            self.image += np.asarray([np.nan if s is None else s for s in scales], "<f4").tobytes()
            self.image += bytes(align(len(self.image), TILE_ALIGN) - len(self.image))
        return ProductKernel(
            index=len(self.kernels), graph=role, node=mm.name, encoder=enc.name, layer=sops.attr(mm, "layer"), K=K, M=M,
            wbits=wbits, neuron=neuron, timesteps=tuple(T), modalities=tuple(names),
            modality_id=int(sops.attr(mm, "modality_id", -1)), act_scale=scale, has_bias=bias is not None,
            m_tile=plan.m_tile, n_max=plan.n_max, k_tile=plan.k_tile, tiles=tuple(tiles), weights_offset=base,
            weights_bytes=len(self.image) - base, static_scales=scales, static_offset=s_off, group_size=G)

    def artifact(self) -> IsaArtifact:
        """The lowered model; SpikecError when the image exceeds half the device DRAM."""
        cfg = self.cfg
        if len(self.image) > cfg.dram_bytes // 2:
            raise SpikecError(f"--isa: the packed weights ({len(self.image)} bytes) exceed half of the device DRAM "
                              f"({cfg.dram_bytes} bytes, config '{cfg.name}'); activations need the rest")
        return IsaArtifact(cfg, bytes(self.image), list(self.kernels), self.fallback, list(self.vec_kernels),
                           list(self.attn_kernels))

    def descriptors(self, role: str) -> list[ProductKernel | VecKernel | AttentionKernel]:
        """The kernels of graph `role` so far, in the order the .sbin lists them."""
        return [k for ks in (self.kernels, self.vec_kernels, self.attn_kernels) for k in ks if k.graph == role]


def _overflow_args(mm: ir.Node) -> tuple[int, int, int]:
    """(K, planes, code max) of the int32 accumulator bound of a product with constant weights."""
    K = int(mm.inputs[3].const_value.shape[-2])
    wbits = int(sops.attr(mm, "wbits", 8))
    extra = 1 if sops.attr(mm, "neuron", "tc-lif") == "if" else 0
    return K, max(sops.get_timesteps(mm)) + extra, R.qmax(wbits)


def _group_size(mm: ir.Node, where: str) -> int | None:
    """Rows per weight-scale group of a product with constant weights: None per output
    channel (s_w [M]), else K / n_groups (s_w [n_groups, M], n_groups > 1; SpikecError
    naming `where` unless it divides K)."""
    s_w = mm.inputs[4] if len(mm.inputs) > 4 else None
    shape = s_w.const_value.shape if s_w is not None and s_w.const_value is not None else None
    if shape is None or len(shape) < 2:
        return None
    K = int(mm.inputs[3].const_value.shape[-2])
    G = R.weight_group_size(K, tuple(int(d) for d in shape), where)
    return G if G < K else None


def _product_plan(mm: ir.Node, enc: ir.Node | None, cfg: HwConfig) -> tuple[str | None, TilePlan | None]:
    """(why the product stays on the host, None) or (None, its tiling)."""
    why = _why_not(mm, enc)
    if why is not None:
        return why, None
    w = mm.inputs[3].const_value.numpy()
    wbits = int(sops.attr(mm, "wbits", 8))
    if w.ndim != 2:
        return f"weights of rank {w.ndim}", None
    if wbits not in (4, 8) or R.absmax_int(w) > R.qmax(wbits):
        return f"weights exceed wbits={wbits}", None
    G = _group_size(mm, f"node '{mm.name}'")
    if G is not None and sops.attr(mm, "neuron", "tc-lif") != "tc-lif":
        return "group-wise weight scales need the tc-lif neuron", None
    try:
        return None, plan_tiles(cfg, int(w.shape[-2]), int(w.shape[-1]), wbits, G)
    except TilingError as exc:
        return str(exc), None


def _host_ops(model: ir.Model, products: list[ProductKernel], vec: list[VecKernel],
              attn: list[AttentionKernel]) -> dict[str, int]:
    """Op type -> count of the graph's nodes (subgraphs included) no kernel replaces."""
    lowered = {k.node for k in products}
    on_vec = {name for k in vec for name in k.nodes}
    on_attn = {name for k in attn for name in (k.node, k.encoder, k.code, k.transpose) if name}
    fused_enc = {k.encoder for k in products}
    host = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.name in lowered or node.name in on_vec or node.name in on_attn:
            continue
        if sops.is_spikec(node, sops.SPIKE_ENCODE) and node.name in fused_enc:
            continue  # runs as the kernels' ENCODE (its outputs still feed host ops only if used)
        host[f"{node.domain + '::' if node.domain else ''}{node.op_type}"] += 1
    return dict(sorted(host.items()))


def lower_graphs(graphs: dict[str, ir.Model], cfg: HwConfig, vec: bool = True) -> IsaArtifact:
    """Kernels for every lowerable spiking product of the graphs (roles in sorted order), attention
    kernels for the activation x activation products (passes/lower_attn.py) and,
    with `vec`, vector kernels for the norms, softmax, activations, rotary embeddings and
    elementwise ops whose numerics are the vector unit's (passes/lower_vec.py). The graphs
    are not changed. Raises SpikecError (DRAM too small, an int32 overflow)."""
    lowering = IsaLowering(cfg, vec)
    lowering.check_fits(graphs)
    for role in sorted(graphs):
        lowering.lower(graphs[role], role)
    return lowering.artifact()


# ---------------------------------------------------------------- the pass


class LowerIsa(ContextPass):
    """lower-isa: the graph's kernels for the accelerator (the lowering above), into a shared
    `IsaLowering`. The graph keeps its nodes: the .sbin stores the portable graph and the
    descriptors, and the fpga runtime rewrites the graph from them when it loads. The pass
    records its result where a reader of the pipeline sees it: the model's metadata
    `spikec.isa.kernels` (so `--dump-ir`'s text shows the device kernels) and the context's
    results (the graph's kernel counts and host ops, for the compile report); `ensures`
    re-reads every descriptor it made as the runtime will (descriptors.*.from_json against
    the configuration and the image) and checks that the nodes it names are the graph's.

    Made by `build_pipeline` (name "lower-isa") it lowers the one graph for the default
    configuration, to see what would run on the device; `spikec compile --isa` runs it on
    each graph of the model with one lowering (`lower_model`), which packs the .sbin's
    sections. Raises SpikecError (DRAM too small, an int32 overflow)."""

    name = "lower-isa"
    guarantees = ("isa-lowered",)  # needs nothing a pipeline guarantees: it takes any compiled graph

    def __init__(self, context: CompileContext | None = None, lowering: IsaLowering | None = None,
                 role: str = "model") -> None:
        super().__init__(context)
        self.lowering = lowering if lowering is not None else IsaLowering(HwConfig.load("default"))
        self.role = role

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not self.lowering.checked:
            self.lowering.check_fits({self.role: model})
        entry = self.lowering.lower(model, self.role)
        mine = self.lowering.descriptors(self.role)
        model.metadata_props[DEVICE_KERNELS_KEY] = json.dumps(
            {"hwconfig": self.lowering.cfg.name, "device_kernels": [_describe(k) for k in mine],
             "host_ops": sum(entry["host_ops"].values())}, sort_keys=True)
        self.ctx.results[self.name] = {"graph": self.role, **entry}
        return ir.passes.PassResult(model, modified=bool(mine))

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        names = {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph)}
        wlen, cfg = len(self.lowering.image), self.lowering.cfg
        for k in self.lowering.descriptors(self.role):
            where = f"lower-isa: {_describe(k)}"
            if type(k).from_json(k.to_json(), where, cfg, index=k.index, weights_len=wlen) != k:
                raise SpikecError(f"{where}: does not read back as written")
            missing = sorted(set(_node_names(k)) - names)
            if missing:
                raise SpikecError(f"{where}: names nodes the graph does not have: {missing[:3]}")


@register_property("isa-lowered", "the graph's accelerator kernels are listed in its metadata 'spikec.isa.kernels'")
def check_isa_lowered(model: ir.Model) -> None:
    """SpikecError unless the model's metadata lists its device kernels (a JSON object with a
    'device_kernels' list of strings), as the lower-isa pass writes it."""
    text = model.metadata_props.get(DEVICE_KERNELS_KEY)
    if text is None:
        raise SpikecError(f"no metadata '{DEVICE_KERNELS_KEY}'")
    where = f"metadata '{DEVICE_KERNELS_KEY}'"
    schema.str_list(schema.get(schema.parse_json(text, where=where), "device_kernels", list, where=where),
                    where=f"{where}: field 'device_kernels'")


def _describe(k: ProductKernel | VecKernel | AttentionKernel) -> str:
    if isinstance(k, ProductKernel):
        return f"kernels[{k.index}] {k.node} K={k.K} M={k.M} wbits={k.wbits} {k.act_scale}"
    if isinstance(k, VecKernel):
        return f"vec_kernels[{k.index}] {k.func.name} {k.node} len={k.length if k.length is not None else '?'}"
    return f"attn_kernels[{k.index}] {k.node} bits={k.bits}{' wtrans' if k.wtrans else ''}"


def _node_names(k: ProductKernel | VecKernel | AttentionKernel) -> list[str]:
    if isinstance(k, VecKernel):
        return list(k.nodes)
    return [k.node, k.encoder] + ([k.code] + ([k.transpose] if k.transpose else []) if isinstance(k, AttentionKernel)
                                  else [])


def lower_model(graphs: dict[str, ir.Model], cfg: HwConfig, *, dump_dir: str | Path | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[IsaArtifact, list[PassRecord]]:
    """The lower-isa pass over every graph of a model (roles in sorted order) with one shared
    lowering, each run by a PassManager (verified; dumped to `<dump_dir>/<role>/`): the
    artifact, byte for byte what `lower_graphs` gives, and the passes' records (named
    "<role>/lower-isa"). The graphs gain only the metadata `spikec.isa.kernels`.
    Raises SpikecError."""
    lowering = IsaLowering(cfg)
    lowering.check_fits(graphs)
    records: list[PassRecord] = []
    for role in sorted(graphs):
        sub = Path(dump_dir) / role if dump_dir is not None else None
        say = (lambda msg, r=role: progress(f"{r}: {msg}")) if progress is not None else None
        done = PassManager([LowerIsa(None, lowering, role)], dump_dir=sub, progress=say).run(graphs[role], input_name=role)
        for rec in done.passes:
            rec.name = f"{role}/{rec.name}"
            records.append(rec)
    return lowering.artifact(), records


def representative_program(art: IsaArtifact) -> list[Instruction]:
    groups = representative_groups(art.kernels, len(art.weights))
    if not groups:
        return [ins(Opcode.FINISH)]
    return build_program(groups, art.hwconfig)


__all__ = ["DEVICE_KERNELS_KEY", "check_isa_lowered", "IsaArtifact", "IsaLowering", "LowerIsa", "lower_graphs", "lower_model", "representative_program"]
