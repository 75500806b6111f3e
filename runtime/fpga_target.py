"""The `fpga` target: spiking products and vector kernels on the accelerator (through the
Device interface), everything else on the host.

A .sbin compiled with `--isa` carries `isa/hwconfig`, `isa/weights` (packed weights and
scales), `isa/kernels` (one descriptor per lowered kernel: isa/descriptors.py, each checked once
when the file loads, against its hardware configuration and weights image) and
`isa/program` (a representative program, for `spikec disasm`). At load time the weights
image is written once into device DRAM. Each graph is rewritten so that every lowered
pair becomes one `spikec.fpga::DeviceLinear(x, modality?)` node, and the graph runs on
onnx's reference evaluator with the spikec kernels for whatever spiking op stayed on
the host; a DeviceLinear call writes its activations (rows grouped by modality) into
DRAM, builds the call's instruction stream from the descriptor
(`isa/programs.py: build_program`), runs it on the device and reads the results back.
The device's integer path and DEQ order are the reference's, so the outputs equal
`spikec.reference.spiking_linear` bit for bit (group-wise weight scales: one accumulator,
DEQ and, after the first, VEC ADD per group, `reference.dequantize_acc`'s order). Likewise each vector kernel (`vec_kernels`
in `isa/kernels`, passes/lower_vec.py) becomes one `spikec.fpga::DeviceVec(operands...)`
node replacing the host ops it matched: a call writes the operands, runs
`programs.build_vec_program` (LOAD -> VEC -> STORE per chunk of rows) and reads the rows
back. Each attention kernel (`attn_kernels`, passes/lower_attn.py: Q @ K^T, P @ V with
--spike-attention) becomes one `spikec.fpga::DeviceMatMul(a, modality?, b)` node: a call
writes both operands, runs `programs.build_attention_program` (b ENCODEd into WGT with its
per-tensor scale, each head's rows ENCODEd into INP, SPMM, DEQ, STORE) and reads back, bit
for bit the host's SpikeEncode/SpikeCode/SpikeMatMul.

Counters accumulate over calls: device cycles (calls run one after another, so they
add), energy by component, spikes and SOPs; plus the float MACs and FP16 bytes of the
same products and vector ops, for the modeled GPU comparison (`GpuBaseline`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from spikec import ops as sops
from spikec import reference as R
from spikec import schema
from spikec.isa import programs, tiling
from spikec.isa import container as C
from spikec.isa.descriptors import MAX_MODALITIES, AttentionKernel, KernelsDocument, ProductKernel, VecKernel
from spikec.errors import SpikecError
from spikec.isa.encoding import encode_program
from spikec.isa.fields import VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.runtime.device import Counters, Device
from spikec.runtime.host_segments import SegmentedGraph

DOMAIN = "spikec.fpga"
DEVICES = ("sim", "rtl")


# ---------------------------------------------------------------- the modeled GPU baseline


@dataclass(frozen=True)
class GpuBaseline:
    """An FP16 GPU on a roofline: per product, time = max(2 * MACs / peak, bytes / bandwidth);
    per vector op (elementwise, norms, softmax: bandwidth-bound), time = FP16 bytes read and
    written / bandwidth; energy = power * time (board power at full load: a generous GPU,
    since it is charged only while running these ops). Default: an A100-class part
    (312 TFLOP/s dense FP16 tensor cores, 2.0 TB/s HBM2e, 400 W TDP; NVIDIA A100 80GB SXM
    datasheet)."""

    name: str = "A100-class FP16 (312 TFLOP/s, 2.0 TB/s, 400 W)"
    peak_flops: float = 312e12
    bandwidth: float = 2.0e12
    power_w: float = 400.0


GPU_A100 = GpuBaseline()


@dataclass
class FpgaCounters:
    device: Counters = field(default_factory=Counters)
    calls: int = 0
    tokens: int = 0  # token-rows through the products (a token counts once per product)
    tokens_T: int = 0  # sum over those rows of their T
    possible_spikes: int = 0  # sum over rows of K * planes (T for TC-LIF, 2**(T+1) - 1 for rate IF) * M-tiles
    float_macs: int = 0  # tokens * K * M of the same products
    vec_calls: int = 0  # vector-kernel calls (their cycles and energy are in `device` too)
    vec_elements: int = 0  # result elements of those calls
    vec_cycles: int = 0  # device cycles of those calls
    gpu_bytes: int = 0  # FP16 bytes a GPU moves: per product weights once per call, x and y; per vector op operands and result
    gpu_seconds: float = 0.0  # the roofline time of each product and vector op, summed
    gpu_vec_seconds: float = 0.0  # the vector ops' part of gpu_seconds
    attn_calls: int = 0  # attention-kernel calls on the device (also in calls, tokens, float_macs, gpu_*)
    attn_host_calls: int = 0  # attention-kernel calls whose right operand exceeds one ENCODE row: run on the host

    def add(self, c: Counters) -> None:
        d = self.device
        for f in dataclasses.fields(Counters):
            if f.name == "energy_pj":
                for k, v in c.energy_pj.items():
                    d.energy_pj[k] = d.energy_pj.get(k, 0.0) + v
            else:
                setattr(d, f.name, getattr(d, f.name) + getattr(c, f.name))


class KernelRunner:
    """Runs lowered kernels on a Device: the weights image is written once, then each call
    writes its operands, builds and loads its program, runs it and reads the result.
    `runner(index, x, mods)` calls a spiking product, `runner.vec(index, operands)` a
    vector kernel, `runner.attention(index, a, b, mods)` an attention product."""

    def __init__(self, device: Device, weights: bytes, kernels: Sequence[ProductKernel], gpu: GpuBaseline = GPU_A100,
                 vec_kernels: Sequence[VecKernel] = (), attn_kernels: Sequence[AttentionKernel] = ()) -> None:
        self.device, self.cfg = device, device.config
        self.kernels = list(kernels)
        self.vec_kernels = list(vec_kernels)
        self.attn_kernels = list(attn_kernels)
        self.gpu = gpu
        self.io_base = tiling.align(len(weights), 4096)
        if self.io_base > self.cfg.dram_bytes:
            raise SpikecError(f"isa/weights: {len(weights)} bytes exceed the device DRAM ({self.cfg.dram_bytes} bytes)")
        device.write(0, weights)
        self.stats = FpgaCounters()

    def reset(self) -> None:
        """Start the counters afresh (e.g. between prefill and decode measurements)."""
        self.stats = FpgaCounters()

    def _run(self, prog, writes: list[tuple[int, bytes]], where: str):
        """Write the operands, load and run the program; the call's device counters."""
        for addr, data in writes:
            self.device.write(addr, data)
        self.device.load_program(encode_program(prog))
        try:
            ctr = self.device.run()
        except SpikecError as exc:
            raise SpikecError(f"node '{where}' on the device: {exc}") from None
        self.stats.add(ctr)
        return ctr

    def __call__(self, index: int, x: np.ndarray, mods: np.ndarray, where: str = "") -> np.ndarray:
        k = self.kernels[index]
        K, M = k.K, k.M
        x = np.asarray(x, np.float32)
        lead = x.shape[:-1]
        xf = x.reshape(-1, K)
        mf = np.asarray(mods, np.int64).reshape(-1)
        T = np.asarray(k.timesteps, np.int64)
        names = list(k.modalities)
        if mf.size and (mf.min() < 0 or mf.max() >= len(T)):
            bad = int(mf[(mf < 0) | (mf >= len(T))][0])
            raise SpikecError(f"node '{where}': modality id {bad} has no timesteps (modalities: {names})")
        if xf.shape[0] == 0:
            return np.zeros((*lead, M), np.float32)
        # Non-finite activations (docs/passes.md): a token holding NaN or +-inf fires no spike
        # and its output row is NaN, on every target. The device faults on NaN, so the host
        # sends such rows as zeros and writes NaN over their results.
        bad = ~np.isfinite(xf).all(axis=-1)
        if bad.any():
            xf = np.where(bad[:, None], np.float32(0), xf)
        order = np.argsort(mf, kind="stable")
        xs, ms = xf[order], mf[order]
        x_addr = self.io_base
        y_addr = tiling.align(x_addr + xs.nbytes, 4096)
        if y_addr + 4 * xs.shape[0] * M > self.cfg.dram_bytes:
            raise SpikecError(f"node '{where}': {xs.shape[0]} tokens do not fit the device DRAM")
        groups = []
        for m in np.unique(ms):
            rows = np.flatnonzero(ms == m)
            if k.static and k.static_scales[int(m)] is None:
                raise SpikecError(
                    f"node '{where}': no static scale for modality '{names[int(m)]}': the calibration data had no "
                    f"{names[int(m)]} tokens at this layer; calibrate with such tokens or use --act-scale dynamic")
            groups.append(programs.Group(k, int(m), int(rows[0]), len(rows), x_addr, y_addr))
        prog = programs.build_program(groups, self.cfg)
        self._run(prog, [(x_addr, np.ascontiguousarray(xs, "<f4").tobytes())], where)
        ys = self.device.read_array(y_addr, (xs.shape[0], M), "<f4")
        y = np.empty_like(ys)
        y[order] = ys
        y[bad] = np.nan
        st = self.stats
        n = xs.shape[0]
        st.calls += 1
        st.tokens += n
        st.tokens_T += int(T[ms].sum())
        planes = T[ms] if k.neuron != "if" else (2 ** (T[ms] + 1) - 1)
        # The device counts a spike each time the PE array consumes it, i.e. once per
        # M-tile the kernel is split into; the possible spikes are counted the same way.
        st.possible_spikes += int(planes.sum()) * K * len(k.tiles)
        self._count_product(n, K, M, 1)
        return y.reshape(*lead, M)

    def _count_product(self, n: int, K: int, M: int, heads: int) -> None:
        """Float MACs and the GPU roofline of `heads` products of n rows, [K, M] right operands
        (weights or an activation), each read once per call."""
        st = self.stats
        st.float_macs += n * K * M
        nbytes = 2 * (heads * K * M + n * K + n * M)
        st.gpu_bytes += nbytes
        st.gpu_seconds += max(2.0 * n * K * M / self.gpu.peak_flops, nbytes / self.gpu.bandwidth)

    def attention(self, index: int, a: np.ndarray, b: np.ndarray, modality, modality_id: int = -1,
                  where: str = "") -> np.ndarray:
        """One call of attention kernel `index`: a [..., S, K] @ b [..., K, N] (b [..., N, K] when
        the kernel reads K^T untransposed: wtrans), leading (batch, head) dims broadcast. The
        device codes a per token and b with one per-tensor scale, as the host's SpikeEncode /
        SpikeCode / SpikeMatMul do; a b larger than one ENCODE row runs on the host instead."""
        k = self.attn_kernels[index]
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if k.wtrans:
            b = np.swapaxes(b, -1, -2)
        lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        S, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        if b.shape[-2] != K:
            raise SpikecError(f"node '{where}': cannot multiply {a.shape} by {b.shape}")
        a, b = np.broadcast_to(a, (*lead, S, K)), np.broadcast_to(b, (*lead, K, N))
        mods = sops.token_modality(modality, modality_id, a.shape[:-1], where)
        T = np.asarray(k.timesteps, np.int64)
        if mods.size and (mods.min() < 0 or mods.max() >= len(T)):
            bad = int(mods[(mods < 0) | (mods >= len(T))].flat[0])
            raise SpikecError(f"node '{where}': modality id {bad} has no timesteps (modalities: {list(k.modalities)})")
        H = int(np.prod(lead))
        if H * S * N == 0:
            return np.zeros((*lead, S, N), np.float32)
        T_tok = T[mods]
        R.check_overflow(K, int(T_tok.max()), R.qmax(k.bits), f"node '{where}'")
        # Non-finite operands (docs/passes.md): the right operand has one scale, so a NaN or
        # +-inf anywhere in it makes the whole product NaN; a bad row of the left operand
        # makes its output row NaN. The device never sees them.
        if not np.isfinite(b).all():
            return np.full((*lead, S, N), np.nan, np.float32)
        bad_rows = ~np.isfinite(a).all(axis=-1)
        if bad_rows.any():
            a = np.where(bad_rows[..., None], np.float32(0), a)
        try:
            n_max = tiling.plan_attention(self.cfg, K, N, b.size)
        except tiling.TilingError:
            self.stats.attn_host_calls += 1
            y = host_attention(a, b, T_tok, k.bits, where)
            y[bad_rows] = np.nan
            return y
        # rows grouped per head, then by modality (stable), in chunks of at most n_max
        head = np.repeat(np.arange(H), S)
        mf = mods.reshape(-1)
        order = np.lexsort((mf, head))
        xs = a.reshape(H * S, K)[order]
        key = head[order] * len(T) + mf[order]
        chunks = []
        for r in np.flatnonzero(np.r_[True, key[1:] != key[:-1]]).tolist():
            end = int(np.searchsorted(key, key[r], side="right"))
            chunks += [(int(key[r] // len(T)), r0, min(n_max, end - r0), int(T[key[r] % len(T)]))
                       for r0 in range(r, end, n_max)]
        # operands in this layout: the wtrans kernel's b is [N, K] per head, as the graph made it
        bw = np.swapaxes(b, -1, -2) if k.wtrans else b
        a_addr = self.io_base
        b_addr = tiling.align(a_addr + xs.nbytes, tiling.TILE_ALIGN)
        y_addr = tiling.align(b_addr + 4 * b.size, tiling.TILE_ALIGN)
        scratch = tiling.align(y_addr + 4 * H * S * N, tiling.TILE_ALIGN)
        if scratch + 4 > self.cfg.dram_bytes:
            raise SpikecError(f"node '{where}': the attention operands do not fit the device DRAM")
        prog = programs.build_attention_program(k, chunks, K, N, b.size, (a_addr, b_addr, y_addr, scratch), self.cfg)
        self._run(prog, [(a_addr, np.ascontiguousarray(xs, "<f4").tobytes()),
                         (b_addr, np.ascontiguousarray(bw, "<f4").tobytes())], where)
        ys = self.device.read_array(y_addr, (H * S, N), "<f4")
        y = np.empty_like(ys)
        y[order] = ys
        st = self.stats
        st.calls += 1
        st.attn_calls += 1
        st.tokens += H * S
        st.tokens_T += int(T_tok.sum())
        st.possible_spikes += int(T_tok.sum()) * K
        self._count_product(H * S, K, N, H)
        y = y.reshape(*lead, S, N)
        if bad_rows.any():
            y[bad_rows] = np.nan
        return y

    def vec(self, index: int, operands, where: str = "") -> np.ndarray:
        """One call of vector kernel `index` on the host graph's operands (x, then y1 for
        ADD/MUL or the cos, sin tables for ROPE): the result, shaped like x."""
        k = self.vec_kernels[index]
        func = k.func
        x = np.asarray(operands[0], np.float32)
        L = x.shape[-1] if x.ndim else 1
        if (k.length is not None and L != k.length) or L > k.max_len:
            want = k.length if k.length is not None else f"at most {k.max_len} (VEC of config '{self.cfg.name}')"
            raise SpikecError(f"node '{where}': rows of {L} elements; the {func.name} vector kernel takes {want}")
        n = x.size // L if L else 0
        rows = [x.reshape(n, L)]
        if func in (VecFunc.ADD, VecFunc.MUL):
            y1 = np.asarray(operands[1], np.float32)
            if y1.shape != x.shape:
                raise SpikecError(f"node '{where}': {func.name} operands of shapes {x.shape} and {y1.shape}")
            rows.append(y1.reshape(n, L))
        elif func == VecFunc.ROPE:
            h = L // 2
            for t in operands[1:]:
                try:
                    t = np.broadcast_to(np.asarray(t, np.float32), x.shape)
                except ValueError:
                    raise SpikecError(f"node '{where}': rotary table {np.shape(t)} does not broadcast to {x.shape}") from None
                if not np.array_equal(t[..., :h].view(np.int32), t[..., h:].view(np.int32)):
                    raise SpikecError(f"node '{where}': the rotary table's halves differ (not rotate-half)")
                rows.append(t[..., :h].reshape(n, h))
        if n == 0:
            return np.zeros(x.shape, np.float32)
        writes, addrs, addr = [], [], self.io_base
        for r in rows:
            addrs.append(addr)
            writes.append((addr, np.ascontiguousarray(r, "<f4").tobytes()))
            addr = tiling.align(addr + 4 * r.size, tiling.TILE_ALIGN)
        if addr + 4 * n * L > self.cfg.dram_bytes:
            raise SpikecError(f"node '{where}': {n} rows of {L} elements do not fit the device DRAM")
        ctr = self._run(programs.build_vec_program(k, n, L, addrs, addr, self.cfg), writes, where)
        y = self.device.read_array(addr, (n, L), "<f4").reshape(x.shape)
        st = self.stats
        st.vec_calls += 1
        st.vec_elements += n * L
        st.vec_cycles += ctr.cycles
        nbytes = 2 * (sum(int(np.size(o)) for o in operands) + k.vec_const_len + n * L)  # FP16, read + written
        st.gpu_bytes += nbytes
        st.gpu_seconds += nbytes / self.gpu.bandwidth
        st.gpu_vec_seconds += nbytes / self.gpu.bandwidth
        return y


def host_attention(a: np.ndarray, b: np.ndarray, T_tok: np.ndarray, bits: int, where: str = "") -> np.ndarray:
    """The host's SpikeEncode (dynamic, per token) -> SpikeCode (per tensor) -> SpikeMatMul of
    a [..., S, K] and b [..., K, N], with spikec.reference."""
    s_a = R.scale_per_token(a, T_tok + 1)
    q = R.quantize(a, s_a, ((np.int64(1) << T_tok) - 1)[..., None], where)
    s_b = R.scale_per_tensor(b, bits)
    q_b = R.quantize(b, s_b, R.qmax(bits), where)
    return sops.dequantize_acc(R.spike_matmul(q, q_b, T_tok, where), s_a, np.full(b.shape[-1], s_b, np.float32), None)


def device_call(runner: KernelRunner) -> Callable[[onnx.NodeProto, list], list]:
    """Run one device node of a rewritten graph (DeviceLinear, DeviceVec, DeviceMatMul) on
    `runner`: (node, its input arrays, None for an absent one) -> its outputs."""

    def call(node: onnx.NodeProto, ins: list) -> list:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kernel, mid = int(attrs["kernel"]), int(attrs.get("modality_id", -1))
        if node.op_type == "DeviceVec":
            return [runner.vec(kernel, ins, node.name)]
        if node.op_type == "DeviceLinear":
            x, modality = ins[0], (ins[1] if len(ins) > 1 else None)
            return [runner(kernel, x, sops.token_modality(modality, mid, x.shape[:-1], node.name), node.name)]
        if node.op_type == "DeviceMatMul":
            return [runner.attention(kernel, ins[0], ins[2], ins[1], mid, node.name)]
        raise SpikecError(f"node '{node.name[:80]}': unknown device op {node.op_type[:40]}")

    return call


def rewrite_graph(proto: onnx.ModelProto, kernels: Sequence[ProductKernel], vec_kernels: Sequence[VecKernel] = (),
                  attn_kernels: Sequence[AttentionKernel] = (), where: str = "isa/kernels") -> onnx.ModelProto:
    """Replace each lowered SpikeMatMul (and its SpikeEncode, once unused) by DeviceLinear,
    each lowered attention SpikeMatMul (and its SpikeEncode, SpikeCode and bypassed Transpose,
    once unused) by DeviceMatMul, and the host nodes of each vector kernel by one DeviceVec
    where its output is made."""
    by_node = {k.node: k for k in kernels}
    by_attn = {k.node: k for k in attn_kernels}
    bypassed = {k.transpose for k in attn_kernels if k.transpose}
    by_vec = {k.node: k for k in vec_kernels}
    drop = {name for k in vec_kernels for name in k.nodes}
    missing = drop - {n.name for n in proto.graph.node}
    if missing:
        raise SpikecError(f"{where}: vector kernels for nodes the graph does not have: {sorted(missing)[:3]}")
    g = proto.graph
    producers = {o: n for n in g.node for o in n.output}
    dims = {t.name: [int(d) for d in t.dims] for t in g.initializer}  # shapes only: no weight is read
    new_nodes = []
    for n in g.node:
        v = by_vec.get(n.name)
        if v is not None:
            if list(n.output[:1]) != [v.output]:
                raise SpikecError(f"{where}: vector kernel {v.index} makes '{v.output}', node '{n.name}' another")
            new_nodes.append(helper.make_node("DeviceVec", v.inputs, [v.output], name=n.name, domain=DOMAIN,
                                              kernel=int(v.index)))
            continue
        if n.name in drop:
            continue
        a = by_attn.pop(n.name, None) if n.domain == sops.DOMAIN and n.op_type == sops.SPIKE_MATMUL else None
        if a is not None:
            if len(n.input) < 4:
                raise SpikecError(f"{where}: attention kernel {a.index} is for node '{n.name}', which has "
                                  f"{len(n.input)} inputs, not the 4 of an attention product")
            enc, code = producers.get(n.input[0]), producers.get(n.input[3])
            if enc is None or enc.name != a.encoder or code is None or code.name != a.code:
                raise SpikecError(f"{where}: attention kernel {a.index} names encoders "
                                  f"'{a.encoder}', '{a.code}', the graph has others")
            attrs = {"kernel": int(a.index)}
            if a.modality_id >= 0:
                attrs["modality_id"] = int(a.modality_id)
            new_nodes.append(helper.make_node("DeviceMatMul", [a.a, n.input[2] if len(n.input) > 2 else "", a.b],
                                              list(n.output), name=n.name, domain=DOMAIN, **attrs))
            continue
        k = by_node.pop(n.name, None) if n.domain == sops.DOMAIN and n.op_type == sops.SPIKE_MATMUL else None
        if k is None:
            new_nodes.append(n)
            continue
        enc = producers.get(n.input[0]) if len(n.input) else None
        if enc is None or enc.name != k.encoder or not len(enc.input):
            raise SpikecError(f"{where}: kernel {k.index} names encoder '{k.encoder}', the graph has another")
        _check_kernel_shapes(k, n, dims, where)
        mod = n.input[2] if len(n.input) > 2 else ""
        attrs = {"kernel": int(k.index)}
        if k.modality_id >= 0:
            attrs["modality_id"] = int(k.modality_id)
        new_nodes.append(helper.make_node("DeviceLinear", [enc.input[0], mod], list(n.output), name=n.name,
                                          domain=DOMAIN, **attrs))
    if by_node or by_attn:
        raise SpikecError(f"{where}: kernels for nodes the graph does not have: {sorted({*by_node, *by_attn})[:3]}")
    # every value a node reads is still made by someone (descriptors naming values the graph
    # does not have would otherwise fail inside the evaluator at the first call)
    avail = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in new_nodes for o in n.output}
    for n in new_nodes:
        for name in n.input:
            if name and name not in avail:
                raise SpikecError(f"{where}: after the device rewrite, node '{n.name[:80]}' reads '{name[:80]}', which "
                                  f"nothing in graph '{g.name[:80]}' makes (a kernel names values the graph does not have)")
    for o in g.output:
        if o.name not in avail:
            raise SpikecError(f"{where}: after the device rewrite, nothing in graph '{g.name[:80]}' makes its output "
                              f"'{o.name[:80]}'")
    # drop encoders (and transposes a kernel bypasses) nothing reads any more
    while True:
        used = {i for n in new_nodes for i in n.input} | {o.name for o in g.output}
        keep = [n for n in new_nodes if not (((n.domain == sops.DOMAIN and n.op_type in (sops.SPIKE_ENCODE, sops.SPIKE_CODE))
                                              or n.name in bypassed) and not any(o in used for o in n.output))]
        if len(keep) == len(new_nodes):
            break
        new_nodes = keep
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return out


def _check_kernel_shapes(k: ProductKernel, node: onnx.NodeProto, dims: dict[str, list[int]], where: str) -> None:
    """The kernel's [K, M] and weight-scale groups against the node it replaces (its W_q
    [K, M] and s_w [M] or [n, M] initializers): the ORT target runs the node's weights, the
    device the kernel's, so a .sbin whose sections disagree is refused instead of giving
    the two targets different numbers."""
    w = dims.get(node.input[3]) if len(node.input) > 3 else None
    s = dims.get(node.input[4]) if len(node.input) > 4 else None
    if w is None or s is None:
        return  # computed operands (no such kernel is lowered); nothing to compare
    groups = s[0] if len(s) == 2 else 1
    if w != [k.K, k.M] or s[-1:] != [k.M] or groups != k.n_groups:
        raise SpikecError(f"{where}: kernel {k.index} is [K={k.K}, M={k.M}] with {k.n_groups} weight-scale group(s), "
                          f"but node '{node.name[:80]}' has W_q {w} and s_w {s}")


class FpgaSession:
    """One graph on the fpga target, with onnxruntime's `run(None, feeds)` interface."""

    def __init__(self, role: str, proto: onnx.ModelProto, kernels: Sequence[ProductKernel], runner: KernelRunner,
                 vec_kernels: Sequence[VecKernel] = (), attn_kernels: Sequence[AttentionKernel] = (),
                 where: str = "isa/kernels") -> None:
        self.role = role
        mine = [k for k in kernels if k.graph == role]
        mine_vec = [k for k in vec_kernels if k.graph == role]
        mine_attn = [k for k in attn_kernels if k.graph == role]
        names = sops.DEFAULT_MODALITIES
        for p in proto.metadata_props:
            if p.key == sops.MODALITIES_KEY:
                mw = f"graph '{role}': metadata '{sops.MODALITIES_KEY}'"
                names = tuple(schema.str_list(schema.parse_json(p.value, where=mw), where=mw, length=(1, MAX_MODALITIES),
                                              max_len=64))
        for k in [*mine, *mine_attn]:
            if len(k.timesteps) > len(names):
                raise SpikecError(f"{where}: kernel for node '{k.node}' has timesteps for {len(k.timesteps)} "
                                  f"modalities, graph '{role}' has {len(names)}")
        rewritten = rewrite_graph(proto, mine, mine_vec, mine_attn, where)
        # host ops on onnxruntime, as the ORT target runs them (runtime/host_segments.py)
        self.session = SegmentedGraph(rewritten, DOMAIN, device_call(runner), f"{where}: graph '{role}'")
        self.input_names = list(self.session.inputs)
        self.output_names = list(self.session.outputs)
        self.kernels = len(mine)
        self.vec_kernels = len(mine_vec)
        self.attn_kernels = len(mine_attn)

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise SpikecError(f"graph '{self.role}': missing inputs {missing} (expects {self.input_names})")
        wanted = list(output_names) if output_names else self.output_names
        return self.session.run(wanted, {n: feeds[n] for n in self.input_names})


def make_device(name: str, cfg: HwConfig) -> Device:
    if name == "sim":
        from spikec.runtime.simulator import Simulator

        return Simulator(cfg)
    if name == "rtl":
        from spikec.runtime.rtl_device import RtlDevice

        return RtlDevice(cfg)
    raise SpikecError(f"--device: '{name}' is not available (devices: {', '.join(DEVICES)})")


def create_sessions(sbin, device: str = "sim") -> tuple[dict[str, FpgaSession], KernelRunner]:
    from spikec.isa.encoding import decode_program

    missing = [s for s in C.ISA_SECTIONS if s not in sbin.file.sections]
    if missing:
        raise SpikecError(f"{sbin.path}: no accelerator sections ({', '.join(missing)} missing); "
                          f"compile with `spikec compile --isa -o MODEL.sbin` for --target fpga")
    cfg = HwConfig.from_json(sbin.file.read(C.ISA_HWCONFIG), f"{sbin.path}:{C.ISA_HWCONFIG}")
    where = f"{sbin.path}:isa/kernels"
    weights = sbin.file.read(C.ISA_WEIGHTS)
    # every descriptor checked once here, so that no call can fail on one later
    doc = KernelsDocument.from_bytes(sbin.file.read(C.ISA_KERNELS), where, cfg, len(weights))
    kernels, vec_kernels, attn_kernels = doc.kernels, doc.vec_kernels, doc.attn_kernels
    try:
        decode_program(sbin.file.read(C.ISA_PROGRAM))
    except SpikecError as exc:
        raise SpikecError(f"{sbin.path}: section 'isa/program' is not a valid accelerator program: {exc}") from None
    runner = KernelRunner(make_device(device, cfg), weights, kernels, vec_kernels=vec_kernels,
                          attn_kernels=attn_kernels)
    sessions = {role: FpgaSession(role, sbin.graph(role), kernels, runner, vec_kernels, attn_kernels, where=where)
                for role in sbin.roles}
    return sessions, runner


def report(runner: KernelRunner) -> dict:
    """Device counters, modeled latency and energy, and the modeled GPU comparison; both
    sides count the lowered spiking products and the lowered vector ops (host ops neither)."""
    st, cfg, gpu = runner.stats, runner.cfg, runner.gpu
    d = st.device
    secs = d.cycles / (cfg.clock_mhz * 1e6)
    energy_j = d.energy_total_pj * 1e-12
    possible = d.spike_vectors + d.skipped_vectors
    gpu_j = st.gpu_seconds * gpu.power_w
    return {
        "device": runner.device.label, "hwconfig": cfg.name, "clock_mhz": cfg.clock_mhz, "calls": st.calls, "tokens": st.tokens,
        "effective_timesteps": st.tokens_T / st.tokens if st.tokens else 0.0,
        "cycles": d.cycles, "latency_s": secs, "energy_j": energy_j,
        "energy_pj_by_component": dict(d.energy_pj), "energy_constants": cfg.energy_constants.source,
        "spikes": d.spikes, "sops": d.sops,
        "spike_vectors": d.spike_vectors, "skipped_vectors": d.skipped_vectors,
        "spike_density": d.spikes / st.possible_spikes if st.possible_spikes else 0.0,
        "vector_density": d.spike_vectors / possible if possible else 0.0,
        "float_macs": st.float_macs, "dram_bytes": d.dram_read_bytes + d.dram_write_bytes,
        "vec_calls": st.vec_calls, "vec_elements": st.vec_elements, "vec_cycles": st.vec_cycles,
        "attn_calls": st.attn_calls, "attn_host_calls": st.attn_host_calls,
        "gpu": {"name": gpu.name, "peak_flops": gpu.peak_flops, "bandwidth_Bps": gpu.bandwidth, "power_w": gpu.power_w,
                "seconds": st.gpu_seconds, "vec_seconds": st.gpu_vec_seconds, "energy_j": gpu_j, "bytes": st.gpu_bytes},
        "throughput_ratio": st.gpu_seconds / secs if secs else 0.0,  # > 1: the accelerator is faster
        "efficiency_ratio": gpu_j / energy_j if energy_j else 0.0,  # > 1: the accelerator uses less energy
    }
