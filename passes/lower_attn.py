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
from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction
from spikec.isa.fields import AccMode, Buffer, EncodeDst, Neuron, Opcode, ScaleMode, VecFlag, VecFunc, WeightFormat
from spikec.isa.hwconfig import HwConfig
from spikec.passes.lower_isa import ISA_MAX_T, MAX_LEN, MAX_N, _ins

WGT_MAX_T = 7  # ENCODE into WGT writes int8 codes


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


def lower_graph(model: ir.Model, role: str, first_index: int) -> tuple[list[dict], dict[str, str]]:
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
        kernels.append({
            "index": first_index + len(kernels), "graph": role, "node": mm.name, "encoder": enc.name,
            "code": code.name, "transpose": b.producer().name if src is not None else None,
            "a": enc.inputs[0].name, "b": (src if src is not None else b).name, "wtrans": src is not None,
            "layer": sops.attr(mm, "layer"), "timesteps": T, "modalities": names, "bits": bits,
            "modality_id": int(sops.attr(mm, "modality_id", -1)),
        })
    return kernels, not_lowered


# ---------------------------------------------------------------- programs


def plan_attention(cfg: HwConfig, K: int, N: int, nb: int) -> int | str:
    """Rows of the left operand per chunk for heads of [., K] @ [K, N] whose right operands
    have nb elements in all, or the reason the call does not fit. VEC holds b (nb floats),
    two slots of left rows (K) and two of results (N); WGT b's codes; SCL s_b, the chunk's
    per-token scales and the s_w row of N; INP and ACC one chunk."""
    if nb > MAX_LEN:
        return f"the right operand's {nb} elements exceed one ENCODE row ({MAX_LEN}), which its per-tensor scale needs"
    if max(K, N) > MAX_LEN:
        return f"K={K} or N={N} exceeds the ISA's {MAX_LEN}"
    if nb > cfg.buffer_elems(Buffer.WGT):
        return f"the right operand's {nb} codes exceed WGT"
    n = min(MAX_N, cfg.buffer_elems(Buffer.INP) // K, cfg.buffer_elems(Buffer.ACC) // N,
            (cfg.buffer_elems(Buffer.VEC) - nb) // (2 * K + 2 * N), cfg.buffer_elems(Buffer.SCL) - 1 - N)
    if n < 1:
        return f"the right operand ({nb} elements) and one row of K={K}, N={N} do not fit the on-chip buffers"
    return int(n)


def build_attention_program(k: dict, chunks: list[tuple[int, int, int, int]], K: int, N: int, nb: int,
                            addrs: tuple[int, int, int, int], cfg: HwConfig) -> list[Instruction]:
    """The instruction stream of one attention call. `chunks`: (head, first row, rows, t), the
    rows of one head sharing t (rows of the left operand are packed [rows, K] float32 at
    a_addr, results [rows, N] at y_addr); `addrs` = (a_addr, b_addr: b's nb float32,
    y_addr, scratch: 4 bytes for s_b).

    VEC: b at 0, left-row slots, result slots (chunk c uses slot c % 2); WGT: b's codes at 0;
    SCL: s_b at 0, the chunk's per-token scales at 1, the s_w row at 1 + n_max; INP, ACC at 0.
    Tokens (docs/isa.md section 5): LOAD b pushes l2c for ENCODE b, which pushes c2s for the
    STORE of s_b to the scratch word, which pushes s2c for SPMM 0; SPMM 0 pushes c2l for the
    LOAD of the s_w row (stride 0: N copies of s_b; it follows chunk 0's LOAD), which pushes
    l2c for DEQ 0. Per chunk as in build_vec_program: its LOAD pushes l2c for its ENCODE
    (and, for c >= 2, pops c2l from DEQ c - 2, the slot's last reader); DEQ pops s2c from
    STORE c - 2 for c >= 2 and pushes c2s for its STORE, which pushes s2c for DEQ c + 2 or,
    last, for FINISH."""
    a_addr, b_addr, y_addr, scratch = addrs
    n_max = plan_attention(cfg, K, N, nb)
    if isinstance(n_max, str):
        raise SpikecError(f"attention kernel {k['index']}: {n_max}")
    VX = (nb, nb + n_max * K)
    VO = (nb + 2 * n_max * K, nb + 2 * n_max * K + n_max * N)
    SB, SX, SW = 0, 1, 1 + n_max
    C = len(chunks)
    prog: list[Instruction] = [
        _ins(Opcode.LOAD, buf=Buffer.VEC, sram=0, dram=b_addr, stride=4 * nb, rows=1, cols=nb, push_next=1),
        _ins(Opcode.ENCODE, src=0, dst=0, dst_buf=EncodeDst.WGT, n=1, len=nb, t=k["bits"] - 1,
             scale=ScaleMode.DYNAMIC, scl=SB, pop_prev=1, push_next=1),
        _ins(Opcode.STORE, buf=Buffer.SCL, sram=SB, dram=scratch, stride=4, rows=1, cols=1, pop_prev=1, push_prev=1),
    ]
    for c, (h, r0, n, t) in enumerate(chunks):
        assert n <= n_max
        prog.append(_ins(Opcode.LOAD, buf=Buffer.VEC, sram=VX[c % 2], dram=a_addr + 4 * r0 * K, stride=4 * K,
                         rows=n, cols=K, pop_next=int(c >= 2), push_next=1))
        if c == 0:
            prog.append(_ins(Opcode.LOAD, buf=Buffer.SCL, sram=SW, dram=scratch, stride=0, rows=N, cols=1,
                             pop_next=1, push_next=1))
        prog.append(_ins(Opcode.ENCODE, src=VX[c % 2], dst=0, dst_buf=EncodeDst.INP, n=n, len=K, t=t,
                         scale=ScaleMode.DYNAMIC, scl=SX, pop_prev=1))
        prog.append(_ins(Opcode.SPMM, inp=0, wgt=h * K * N, acc=0, n=n, k=K, m=N, acc_stride=N, t=t,
                         neuron=Neuron.TCLIF, wfmt=WeightFormat.INT8, wtrans=int(k["wtrans"]),
                         acc_mode=AccMode.OVERWRITE, pop_next=int(c == 0), push_prev=int(c == 0)))
        prog.append(_ins(Opcode.VEC, func=VecFunc.DEQ, flags=int(VecFlag.PER_ROW), dst=VO[c % 2], src0=0, src1=SX,
                         src2=SW, n=n, len=N, pop_prev=int(c == 0), pop_next=int(c >= 2), push_prev=int(c + 2 < C),
                         push_next=1))
        prog.append(_ins(Opcode.STORE, buf=Buffer.VEC, sram=VO[c % 2], dram=y_addr + 4 * r0 * N, stride=4 * N, rows=n,
                         cols=N, pop_prev=1, push_prev=int(c + 2 < C or c == C - 1)))
    prog.append(_ins(Opcode.FINISH, pop_next=1))
    return prog


__all__ = ["build_attention_program", "is_attention", "lower_graph", "plan_attention"]
