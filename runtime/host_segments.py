"""The fpga target's host side on onnxruntime, so both targets compute host ops alike.

A graph rewritten for the fpga target (runtime/fpga_target.py `rewrite_graph`) holds
device nodes (DeviceLinear, DeviceVec, DeviceMatMul, run by the KernelRunner on the
simulator or the RTL) among host nodes: the float ops nothing lowers (the rotary tables'
Cos/Sin, a patch-embedding Conv, float attention products, masks, the erf GELU), and
spiking or vector ops a kernel could not take. The ORT target runs those host ops with
onnxruntime; numpy (onnx's reference evaluator) gives other last bits for Cos, Conv or a
float MatMul, and a spike encoder downstream turns such a difference into other codes.
So the fpga target runs each maximal run of consecutive host nodes as one onnxruntime
session, lowered and configured exactly as the ORT target's (spikec/ort_lowering.py,
spikec.ir.ort_session), and the device nodes between them on the device: every value a
host op makes is the ORT target's bit for bit, and every value the device makes is the
reference's (the kernels' contract), so the two targets give the same logits.

Sessions are built on first use, when the inputs' dtypes and ranks are known (segment
inputs are values made at run time; one session per dtype/rank signature).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.ort_lowering import lower_for_ort

DeviceCall = Callable[[onnx.NodeProto, list], list]


@dataclass
class _Step:
    nodes: list[onnx.NodeProto]
    device: bool
    reads: list[str] = field(default_factory=list)  # values made before this step (not initializers)
    makes: list[str] = field(default_factory=list)  # values later steps or the graph outputs read
    sessions: dict = field(default_factory=dict)


class SegmentedGraph:
    """Run `proto` (a rewritten graph) with its device nodes (domain `device_domain`) through
    `device_call(node, inputs) -> outputs` and every run of host nodes on onnxruntime."""

    def __init__(self, proto: onnx.ModelProto, device_domain: str, device_call: DeviceCall, where: str) -> None:
        self.proto, self.device_call, self.where = proto, device_call, where
        g = proto.graph
        self.inputs = [v.name for v in g.input]
        self.outputs = [v.name for v in g.output]
        self.initializers = {t.name: t for t in g.initializer}
        # value types and ranks, not dims: an export's value_info may hold dims of the traced
        # example (batch 1), which onnxruntime would plan buffers with; the lowering of
        # spikec ops needs only ranks
        self.value_info = {}
        for v in g.value_info:
            t = v.type.tensor_type
            if v.type.HasField("tensor_type") and t.HasField("shape"):
                self.value_info[v.name] = helper.make_tensor_value_info(v.name, t.elem_type, [None] * len(t.shape.dim))
        steps: list[_Step] = []
        for n in g.node:
            dev = n.domain == device_domain
            if dev or not steps or steps[-1].device:
                steps.append(_Step([n], dev))
            else:
                steps[-1].nodes.append(n)
        live = set(self.outputs)
        for s in reversed(steps):
            made = {o for n in s.nodes for o in n.output if o}
            s.makes = [o for n in s.nodes for o in n.output if o and o in live]
            reads = [i for n in s.nodes for i in n.input if i and i not in made and i not in self.initializers]
            s.reads = list(dict.fromkeys(reads))
            live = (live - made) | set(s.reads)
        self.steps = steps

    def _segment(self, step: _Step, feeds: list[np.ndarray]) -> onnx.ModelProto:
        g = self.proto.graph
        used = {i for n in step.nodes for i in n.input}
        inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
                  for name, a in zip(step.reads, feeds)]
        outputs = []
        for name in step.makes:
            vi = onnx.ValueInfoProto()
            vi.name = name
            outputs.append(vi)
        made = {o for n in step.nodes for o in n.output}
        graph = helper.make_graph(step.nodes, f"{g.name}.host", inputs, outputs,
                                  initializer=[self.initializers[i] for i in used if i in self.initializers],
                                  value_info=[self.value_info[v] for v in made if v in self.value_info])
        seg = helper.make_model(graph, opset_imports=[o for o in self.proto.opset_import],
                                functions=list(self.proto.functions), ir_version=self.proto.ir_version)
        seg.metadata_props.extend(self.proto.metadata_props)
        return seg

    def _session(self, step: _Step, feeds: list[np.ndarray]):
        key = tuple((a.dtype.str, a.ndim) for a in feeds)
        if key not in step.sessions:
            model = ir.from_proto(self._segment(step, feeds))
            lower_for_ort(model)
            try:
                step.sessions[key] = spir.ort_session(model)
            except Exception as e:  # onnxruntime's own exception types
                first = step.nodes[0].name
                raise SpikecError(f"{self.where}: onnxruntime refused the host ops from node '{first[:80]}': "
                                  f"{str(e).splitlines()[0][:300]}") from e
        return step.sessions[key]

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = {n: feeds[n] for n in self.inputs if n in feeds}
        for step in self.steps:
            args = [env[i] if i in env else None for i in step.reads]
            if step.device:
                node = step.nodes[0]
                ins = [env.get(i) if i else None for i in node.input]
                for o, v in zip(node.output, self.device_call(node, ins)):
                    env[o] = v
                continue
            if not step.makes:
                continue
            missing = [i for i, a in zip(step.reads, args) if a is None]
            if missing:
                raise SpikecError(f"{self.where}: host ops from node '{step.nodes[0].name[:80]}' read "
                                  f"'{missing[0][:80]}', which nothing made")
            env.update(zip(step.makes, self._session(step, args).run(step.makes, dict(zip(step.reads, args)))))
        wanted = list(output_names) if output_names else self.outputs
        return [env[n] for n in wanted]


__all__ = ["SegmentedGraph"]
