"""spike-rewrite: every quantized product becomes a spike encoder feeding a spiking matmul.

    QuantLinear(x, mod, W_q, s_w, bias)  ->  SpikeEncode(x, mod) -> (q, s_x)
                                              SpikeMatMul(q, s_x, mod, W_q, s_w, bias, acc_bias)
    QuantMatMul(a, b, mod)               ->  SpikeEncode(a, mod) -> (q, s_a)   (dynamic scale)
                                              SpikeCode(b) -> (q_b, s_b)
                                              SpikeMatMul(q, s_a, mod, q_b, s_b)

The neuron (--neuron tc-lif | if) is an attribute of both ops. For rate IF the offset
of the code c = q + 2**(b-1) is folded, in the integer domain, into `acc_bias`
(int32 [n_modalities, N], one row per modality since b = T_m + 1 differs), per
SEMANTICS.md section 2. Attention products with rate IF have no constant weight to
fold and are refused (use tc-lif there).

Numerics are those of the QuantLinear/QuantMatMul it replaces, bit for bit: the
encoder's code is the same quantize() call, and the spiking product equals q @ W_q
(spikec.reference.spike_matmul), dequantized in the reference's fixed float32 order.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from spikec import ops
from spikec.errors import SpikecError
from spikec.passes.manager import register_property
from spikec.passes.options import ContextPass
from spikec.passes.quantize import initializer

log = logging.getLogger(__name__)

_COPY_ENCODE = ("timesteps", "act_scale", "act_clip", "modality_id", "layer", "act_zero_point", "act_unsigned")
_COPY_MATMUL = ("timesteps", "wbits", "modality_id", "layer", "act_zero_point", "act_unsigned")


def _copy(node: ir.Node, names) -> list[ir.Attr]:
    return [node.attributes[n] for n in names if n in node.attributes]


def _value(name: str, dtype: ir.DataType, shape=None) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=shape)


@register_property("spiking", "every quantized product (QuantLinear, QuantMatMul) became a spike encoder "
                              "feeding a spiking matmul")
def check_spiking(model: ir.Model) -> None:
    """Raises SpikecError naming the first QuantLinear/QuantMatMul left."""
    for node in ops.spikec_nodes(model, ops.QUANT_LINEAR, ops.QUANT_MATMUL):
        raise SpikecError(f"node '{node.name}' ({node.op_type}) was not rewritten into spiking ops")


class SpikeRewrite(ContextPass):
    """QuantLinear/QuantMatMul -> SpikeEncode + SpikeMatMul (tc-lif or rate IF)."""

    name = "spike-rewrite"
    needs = ("quantized",)
    guarantees = ("spiking",)
    invalidates = ("shapes-inferred",)
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        neuron = self.ctx.options.neuron
        names = ops.modalities(model)
        count = 0
        for node in list(model.graph):
            if node.domain != ops.DOMAIN:
                continue
            if node.op_type not in (ops.QUANT_LINEAR, ops.QUANT_MATMUL):
                if node.op_type not in ops.OP_TYPES:
                    raise SpikecError(f"spike-rewrite: node '{node.name}' ({node.domain}::{node.op_type}) is not a "
                                      f"spikec op this version can rewrite")
                continue
            self._rewrite(model, node, neuron, names)
            count += 1
        self.ctx.results["spike-rewrite"] = {"neuron": neuron, "rewritten": count}
        return ir.passes.PassResult(model, count > 0)

    def _rewrite(self, model: ir.Model, node: ir.Node, neuron: str, names: list[str]) -> None:
        g = model.graph
        x, mod = node.inputs[0], node.inputs[1] if node.op_type == ops.QUANT_LINEAR else (
            node.inputs[2] if len(node.inputs) > 2 else None)
        lead = None if x.shape is None else ir.Shape(list(x.shape)[:-1] + [1])
        q = _value(f"{node.name}.q", ir.DataType.INT32, x.shape)
        s_x = _value(f"{node.name}.s_x", ir.DataType.FLOAT, lead)
        neuron_attr = ir.AttrString("neuron", neuron)
        if node.op_type == ops.QUANT_LINEAR:
            enc_attrs = _copy(node, _COPY_ENCODE) + [neuron_attr]
            enc = ir.Node(ops.DOMAIN, ops.SPIKE_ENCODE, [x, mod], enc_attrs, outputs=[q, s_x], name=f"{node.name}.encode")
            w_q, s_w = node.inputs[2], node.inputs[3]
            bias = node.inputs[4] if len(node.inputs) > 4 else None
            extra = []
            zp = ops.attr(node, "act_zero_point", 0) if ops.attr(node, "act_unsigned") else None
            if zp is not None and neuron != "if":
                raise SpikecError(f"spike-rewrite: node '{node.name}': activation '{x.name}' is an unsigned code "
                                  f"(zero point {zp}); the {neuron} neuron carries symmetric codes only (use --neuron if)")
            if neuron == "if":
                fold = ops.if_offset_table(w_q.const_value.numpy(), ops.get_timesteps(node), zp)
                extra = [initializer(g, f"{node.name}.acc_bias", fold)]
            mm_inputs = [q, s_x, mod, w_q, s_w, bias] + extra
            new = [enc]
        else:
            if neuron == "if":
                raise SpikecError(f"spike-rewrite: node '{node.name}': --neuron if cannot spike an attention product "
                                  f"(its right operand is not a constant, so the rate-IF offset cannot be folded); "
                                  f"use --neuron tc-lif or drop --spike-attention")
            enc_attrs = _copy(node, _COPY_ENCODE) + [ir.AttrString("act_scale", "dynamic"), neuron_attr]
            enc = ir.Node(ops.DOMAIN, ops.SPIKE_ENCODE, [x, mod], enc_attrs, outputs=[q, s_x], name=f"{node.name}.encode")
            b = node.inputs[1]
            q_b = _value(f"{node.name}.q_b", ir.DataType.INT32, b.shape)
            s_b = _value(f"{node.name}.s_b", ir.DataType.FLOAT, ir.Shape([]))
            code = ir.Node(ops.DOMAIN, ops.SPIKE_CODE, [b], [ir.AttrInt64("bits", ops.attr(node, "bbits", 8))],
                           outputs=[q_b, s_b], name=f"{node.name}.code")
            mm_inputs = [q, s_x, mod, q_b, s_b]
            new = [enc, code]
        mm_attrs = _copy(node, _COPY_MATMUL) + [neuron_attr]
        if node.op_type == ops.QUANT_MATMUL:
            mm_attrs.append(ir.AttrInt64("wbits", ops.attr(node, "bbits", 8)))
        old_out = node.outputs[0]
        mm = ir.Node(ops.DOMAIN, ops.SPIKE_MATMUL, mm_inputs, mm_attrs, name=node.name, num_outputs=1)
        mm.outputs[0].shape, mm.outputs[0].type = old_out.shape, old_out.type
        new.append(mm)
        ir.convenience.replace_nodes_and_values(g, node, [node], new, [old_out], [mm.outputs[0]])
