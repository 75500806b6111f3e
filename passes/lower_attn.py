"""Lowering the attention products to the accelerator (docs/isa.md section 9, "Attention kernels").

With `--spike-attention`, Q @ K^T and P @ V are `SpikeEncode(a) -> SpikeMatMul <- SpikeCode(b)`:
both operands are activations. The reference (spikec/ops.py) codes them as

    left  a: per token, dynamic:  s_a[i] = max_k |a_ik| / (2**T_i - 1),  q = quantize(a, s_a, 2**T_i - 1)
    right b: ONE dynamic scale for the whole tensor (every batch and head):
             s_b = max |b| / Qb (Qb = 2**(bits-1) - 1),  q_b = quantize(b, s_b, Qb)
    y = (f32(q @ q_b) * s_a[i]) * s_b          (per head, the reference's float32 order)

On the device: the whole of b is ONE ENCODE row (n = 1, len = b's elements, t = bits - 1,
dynamic, dst_buf = WGT), which is exactly `scale_per_tensor` and writes every head's int8
codes into WGT, flat, so head h's [K, N] (or [N, K]: wtrans) block starts at byte h*K*N;
s_b lands in SCL and is copied into an s_w row of N elements for DEQ (a STORE of the one
float and a broadcasting LOAD, stride 0). The left operand's rows are ENCODEd per chunk
(one head, one modality, so one t) into INP with their per-token scales, SPMM against the
head's block, DEQ with PER_ROW, STORE. A per-row ENCODE cannot give a per-tensor scale
(each row would get its own), so b must fit one ENCODE row: at most 16383 elements (the
`len` field) and the VEC/WGT room of `plan_attention`; a call whose b is larger is run by
the runtime on the host (counted apart), since b's size is only known at run time.

When b is a Transpose of the last two axes of a tensor that nothing else reads (K^T in
the language model), the kernel reads the Transpose's input instead and SPMM uses
`wtrans = 1`, so the host transpose disappears.
"""

from __future__ import annotations

import onnx_ir as ir

from spikec import ops as sops
from spikec import reference as R
from spikec.isa.descriptors import AttentionKernel
from spikec.isa.tiling import ISA_MAX_T, WGT_MAX_T



def is_attention(mm: ir.Node) -> bool:
    """A SpikeMatMul whose right operand is a SpikeCode (an activation x activation product)."""
    p = mm.inputs[3].producer() if len(mm.inputs) > 3 and mm.inputs[3] is not None else None
    return p is not None and sops.is_spikec(p, sops.SPIKE_CODE)


def _why_not(mm: ir.Node, enc: ir.Node | None, code: ir.Node) -> str | None:
    if enc is None or not sops.is_spikec(enc, sops.SPIKE_ENCODE):
        return "attention product whose left operand is not a SpikeEncode"
    if mm.inputs[1] is not enc.outputs[1] or mm.inputs[4] is not code.outputs[1]:
        return "attention product whose scales are not its encoders'"
    if len(mm.inputs) > 5 and any(v is not None for v in mm.inputs[5:]):
        return "attention product with a bias"
    if sops.attr(mm, "neuron", "tc-lif") != "tc-lif" or sops.attr(enc, "neuron", "tc-lif") != "tc-lif":
        return "attention product with the rate-IF neuron"
    if sops.attr(enc, "act_unsigned") or sops.attr(mm, "act_unsigned"):
        return "imported unsigned activation code (zero point)"
    if sops.attr(enc, "act_scale", "dynamic") != "dynamic":
        return "attention product with a static left scale (the reference's is per-token dynamic)"
    T = sops.get_timesteps(mm)
    if T != sops.get_timesteps(enc):
        return "encoder and product disagree on timesteps"
    if max(T) > ISA_MAX_T:
        return f"T={max(T)} exceeds the ISA's {ISA_MAX_T}"
    bits = int(sops.attr(code, "bits", 8))
    if not 2 <= bits <= WGT_MAX_T + 1:
        return f"right operand of {bits} bits: ENCODE into WGT writes int8 codes (t <= {WGT_MAX_T}, bits <= 8)"
    return None


def _transposed_source(b: ir.Value) -> ir.Value | None:
    """The input of a Transpose swapping the last two axes that makes b, if b is its only use."""
    p = b.producer()
    if p is None or p.domain != "" or p.op_type != "Transpose" or len(list(b.uses())) != 1 or b.is_graph_output():
        return None
    perm = sops.attr(p, "perm")
    if perm is None:
        return None
    perm = [int(i) for i in perm]
    n = len(perm)
    if n < 2 or perm != list(range(n - 2)) + [n - 1, n - 2]:
        return None
    return p.inputs[0]


def _dim(v: ir.Value, i: int) -> int | None:
    if v.shape is None or len(v.shape) <= abs(i):
        return None
    d = v.shape[i]
    return d if isinstance(d, int) else None


def lower_graph(model: ir.Model, role: str, first_index: int) -> tuple[list[AttentionKernel], dict[str, str]]:
    """Attention-kernel descriptors for a graph's lowerable attention products, and the
    refused ones (node name -> reason). The int32 bound is a compile error where K is known
    (Q @ K^T: the head size) and is checked per call otherwise (P @ V: K = key length)."""
    names = sops.modalities(model)
    kernels, not_lowered = [], {}
    for mm in sops.spikec_nodes(model, sops.SPIKE_MATMUL):
        if not is_attention(mm):
            continue
        enc, code = mm.inputs[0].producer(), mm.inputs[3].producer()
        why = _why_not(mm, enc, code)
        if why is not None:
            not_lowered[mm.name] = why
            continue
        T, bits = sops.get_timesteps(mm), int(sops.attr(code, "bits", 8))
        K = _dim(enc.inputs[0], -1)
        if K is not None:
            R.check_overflow(K, max(T), R.qmax(bits), f"graph '{role}', node '{mm.name}'")
        b = code.inputs[0]
        src = _transposed_source(b)
        kernels.append(AttentionKernel(
            index=first_index + len(kernels), graph=role, node=mm.name, encoder=enc.name, code=code.name,
            transpose=b.producer().name if src is not None else None, a=enc.inputs[0].name,
            b=(src if src is not None else b).name, wtrans=src is not None, layer=sops.attr(mm, "layer"),
            timesteps=tuple(T), modalities=tuple(names), bits=bits, modality_id=int(sops.attr(mm, "modality_id", -1))))
    return kernels, not_lowered


__all__ = ["is_attention", "lower_graph"]
