"""import-qdq: accept a model quantized by another tool as QDQ ONNX.

Input: the QDQ format of onnxruntime.quantization.quantize_static (QuantFormat.QDQ,
per-channel or per-tensor weights), Q/DQ in the default or the com.microsoft domain.

For every MatMul/Gemm whose weight is DequantizeLinear(integer initializer) and whose
activation is DequantizeLinear(QuantizeLinear(x)):
- the integer weight becomes W_q as is (zero point must be 0: spikec weights are
  symmetric; per-channel scales must run along the output axis; a Gemm's transB and
  alpha are folded); codes must lie in +-(2**(b-1) - 1);
- the activation scale s_a becomes a static clip s_a * (2**T - 1) at the imported
  precision T = bits - 1 (7 for 8-bit activations: |q| <= 127, so the one int8 code
  -128 clamps to -127, the only difference from ORT's own QDQ run apart from rounding);
- a zero point z != 0 (uint8 activations) is carried by the rate-IF neuron: the spike
  count is the offset code c = q + z and -z * sum_k W_q[k, j] is folded into the
  integer accumulator (`act_zero_point`); with tc-lif it is an error naming the tensor;
- a bias (float, or DequantizeLinear of an int32/int8 initializer: int32 biases are
  dequantized with their own scale s_a * s_w) is fused when it follows the product;
- the result is a spikec::QuantLinear, exactly as the built-in quantize pass makes.

Other DequantizeLinear nodes of constants (norm weights, biases quantize_static also
quantizes) are folded into float constants; Q/DQ pairs on activations between float ops
(residual adds, norms, softmax) stay as standard ONNX ops, so the model keeps computing
what ORT computes. A constant weight of rank >= 2 quantized for any other op (Conv,
Gather, ...) is inside a quantized region the rewrite cannot handle: an error naming
the node. QOperator-format ops (QLinearMatMul, MatMulInteger, ...) are refused.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx_ir as ir

from spikec import ops
from spikec import reference as R
from spikec.errors import SpikecError
from spikec.passes.analyses import FLOAT_MODEL
from spikec.passes.options import ContextPass
from spikec.passes.quantize import SOURCE_KEY, bias_of, const_array, initializer, modality_of_graph, replace_node

log = logging.getLogger(__name__)

QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")
QOPERATOR_OPS = ("QLinearMatMul", "MatMulInteger", "QLinearConv", "ConvInteger", "MatMulIntegerToFloat",
                 "DynamicQuantizeLinear", "QGemm", "QAttention", "DynamicQuantizeMatMul")


def _is(node: ir.Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and node.domain in QDQ_DOMAINS


def _dq_const(v: ir.Value) -> tuple[ir.Node, np.ndarray] | None:
    """(DQ node, integer array) when v = DequantizeLinear(integer constant)."""
    dq = v.producer()
    if not _is(dq, "DequantizeLinear"):
        return None
    a = const_array(dq.inputs[0])
    if a is None or a.dtype.kind not in "iu":
        return None
    return dq, a


def _scalar(v: ir.Value | None, default=0):
    if v is None:
        return default
    a = const_array(v)
    return default if a is None else a


def _dequant(q: np.ndarray, s: np.ndarray, zp: np.ndarray, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear of a constant: (q - zp) * s, per tensor or along `axis`."""
    s = np.asarray(s, np.float32)
    zp = np.asarray(zp).astype(np.int64)
    if s.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        s, zp = s.reshape(shape), (zp.reshape(shape) if zp.ndim == 1 else zp)
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


def _bits(dtype: np.dtype) -> int:
    return 4 if "4" in str(dtype) else 8 * np.dtype(dtype).itemsize


class ImportQdq(ContextPass):
    """QDQ products -> spikec::QuantLinear; the rest of the Q/DQ folded or kept as float ops."""

    name = "import-qdq"
    guarantees = ("quantized",)
    invalidates = ("shapes-inferred", "layer-map")
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        g = model.graph
        for node in g:
            if node.op_type in QOPERATOR_OPS:
                raise SpikecError(f"import-qdq: node '{node.name}' ({node.op_type}) is in the QOperator format; "
                                  f"spikec imports QDQ models (quantize_static(..., quant_format=QuantFormat.QDQ))")
        # The QDQ graph as the tool made it is the reference that med/msts compare against
        # (the float-model analysis, taken before anything changes).
        self.ctx.analyses.get(FLOAT_MODEL, model)
        for node in g:  # com.microsoft Q/DQ have the same meaning for 8-bit types
            if node.domain == "com.microsoft" and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                node.domain = ""
        ops.ensure_opset(model)
        names = ops.modalities(model)
        mod_in, const_mod = modality_of_graph(model, self.ctx)
        neuron = self.ctx.options.neuron
        layers, floats = [], []
        for node in list(g):
            if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
                continue
            row = self._linear(model, node, names, mod_in, const_mod, neuron)
            if isinstance(row, dict):
                layers.append(row)
            else:
                floats.append({"name": node.name, "op": node.op_type, "reason": row})
        self._fold_constant_dq(model)
        if not layers:
            raise SpikecError("import-qdq: found no MatMul/Gemm with a DequantizeLinear weight and a quantized "
                              "activation; is the input a QDQ model (quantize_static with QuantFormat.QDQ)?")
        model.metadata_props[SOURCE_KEY] = "qdq"
        # its own entry, shaped like quantize's (options.quantization_results reads either)
        self.ctx.results["import-qdq"] = {"source": "qdq", "layers": layers, "float": floats,
                                          "timesteps": {n: 7 for n in names}}
        return ir.passes.PassResult(model, True)

    def _linear(self, model: ir.Model, node: ir.Node, names, mod_in, const_mod, neuron):
        a, b = node.inputs[0], node.inputs[1]
        w = _dq_const(b)
        if w is None:
            if _is(a.producer(), "DequantizeLinear") and _is(b.producer(), "DequantizeLinear"):
                return "attention product of two quantized activations: kept as float Q/DQ (not spiked on import)"
            return "weight is not a DequantizeLinear of an integer initializer"
        wdq, w_int = w
        where = f"import-qdq: node '{node.name}' ({node.op_type})"
        if w_int.ndim != 2:
            return f"weight of rank {w_int.ndim}"
        adq = a.producer()
        q = adq.inputs[0].producer() if _is(adq, "DequantizeLinear") else None
        if not _is(q, "QuantizeLinear"):
            raise SpikecError(f"{where}: its weight '{wdq.inputs[0].name}' is quantized but its activation "
                              f"'{a.name}' is not (no QuantizeLinear -> DequantizeLinear before it); spikec needs both")
        x = q.inputs[0]
        s_a = np.asarray(_scalar(adq.inputs[1]), np.float32)
        zp_arr = _scalar(adq.inputs[2] if len(adq.inputs) > 2 else None, np.int8(0))
        zp = int(np.asarray(zp_arr).reshape(-1)[0]) if np.size(zp_arr) else 0
        if s_a.size != 1:
            raise SpikecError(f"{where}: activation '{x.name}' has a per-axis scale; spikec takes one scale per tensor")
        a_bits = _bits(np.asarray(zp_arr).dtype) if adq.inputs[2] is not None else 8
        unsigned = np.asarray(zp_arr).dtype.kind == "u"
        if zp != 0 and not unsigned:
            raise SpikecError(f"{where}: activation '{x.name}' is signed with zero point {zp}; spikec carries "
                              f"symmetric codes, or unsigned codes with a zero point (rate IF)")
        if unsigned and neuron != "if":
            raise SpikecError(
                f"{where}: activation '{x.name}' is an unsigned code with zero point {zp} "
                f"({np.asarray(zp_arr).dtype}); the {neuron} neuron carries symmetric codes only. Use --neuron if "
                f"(rate IF carries the offset code, its offset folded into the bias) or quantize activations "
                f"symmetrically (activation_type=QInt8, ActivationSymmetric=True)")
        # Weight: zero point 0, scale per output channel.
        axis = int(ops.attr(wdq, "axis", 1))
        s_w = np.asarray(_scalar(wdq.inputs[1]), np.float32)
        zp_w = _scalar(wdq.inputs[2] if len(wdq.inputs) > 2 else None, 0)
        if np.any(np.asarray(zp_w) != 0):
            raise SpikecError(f"{where}: weight '{wdq.inputs[0].name}' has a nonzero zero point; spikec weights "
                              f"are symmetric (quantize weights with WeightSymmetric=True)")
        alpha = float(ops.attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        trans_b = node.op_type == "Gemm" and bool(ops.attr(node, "transB", 0))
        if node.op_type == "Gemm" and ops.attr(node, "transA", 0):
            return "Gemm with transA=1"
        out_axis = 0 if trans_b else 1
        w_q = (w_int.T if trans_b else w_int).astype(np.int8 if _bits(w_int.dtype) <= 8 else np.int32)
        n = w_q.shape[1]
        if s_w.size == 1:
            s_w = np.full(n, s_w.reshape(()), np.float32)
        elif s_w.ndim != 1 or axis % 2 != out_axis or s_w.size != n:
            raise SpikecError(f"{where}: weight '{wdq.inputs[0].name}' is quantized along axis {axis}; spikec needs "
                              f"one scale per output channel (axis {out_axis})")
        s_w = (s_w * np.float32(alpha)).astype(np.float32)
        wbits = _bits(w_int.dtype)
        qw = R.qmax(wbits)
        if R.absmax_int(w_q) > qw:
            raise SpikecError(f"{where}: weight '{wdq.inputs[0].name}' has code {int(w_q.min())} outside the symmetric "
                              f"range +-{qw} (quantize weights with WeightSymmetric=True)")
        # Bias: Gemm's C, or an Add of a constant / DQ(constant) right after the product.
        bias, old = None, [node]
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            bias = self._bias_value(node.inputs[2], n) * np.float32(ops.attr(node, "beta", 1.0))
        elif node.op_type == "MatMul":
            add = self._bias_add(model, node.outputs[0], n)
            if add is not None:
                add_node, bias = add
                old.append(add_node)
        out = old[-1].outputs[0]
        T = a_bits - 1
        base = node.name or out.name
        inputs = [x, mod_in, initializer(model.graph, f"{base}.W_q", w_q), initializer(model.graph, f"{base}.s_w", s_w)]
        if bias is not None:
            inputs.append(initializer(model.graph, f"{base}.bias", bias.astype(np.float32)))
        clip = [float(np.float32(s_a.reshape(())) * np.float32(2**T - 1))] * ops.CLIP_T
        attrs = [ir.AttrInt64("wbits", wbits), ir.AttrInt64s("timesteps", [T] * len(names)),
                 ir.AttrString("act_scale", "static"), ir.AttrFloat32s("act_clip", clip * len(names))]
        if unsigned:
            attrs.append(ir.AttrInt64("act_zero_point", zp))
            attrs.append(ir.AttrInt64("act_unsigned", 1))
        if mod_in is None:
            attrs.append(ir.AttrInt64("modality_id", const_mod))
        old_inputs = [v for nd in old for v in nd.inputs] + [adq.outputs[0], wdq.outputs[0]]
        new = ir.Node(ops.DOMAIN, ops.QUANT_LINEAR, inputs, attrs, name=node.name, num_outputs=1)
        replace_node(model, old, out, new)
        self._drop_dead_qdq(model, old_inputs)
        return {"name": node.name, "kind": "linear", "K": int(w_q.shape[0]), "N": n, "wbits": wbits,
                "act_scale": "static", "act_scale_value": float(s_a.reshape(())), "act_zero_point": zp,
                "bias": bias is not None, "timesteps": T}

    @staticmethod
    def _bias_value(v: ir.Value, n: int) -> np.ndarray:
        dq = _dq_const(v)
        if dq is not None:
            d, q = dq
            zp = _scalar(d.inputs[2] if len(d.inputs) > 2 else None, 0)
            arr = _dequant(q, _scalar(d.inputs[1]), zp, int(ops.attr(d, "axis", 1)))
        else:
            arr = const_array(v)
            if arr is None:
                raise SpikecError(f"import-qdq: bias '{v.name}' is not a constant")
        return np.broadcast_to(arr.astype(np.float32).reshape(-1), (n,)).copy()

    def _bias_add(self, model, out: ir.Value, n: int):
        b, add = bias_of(model, out, n)
        if add is not None:
            return add, b
        users = [u.node for u in out.uses()]
        if len(users) != 1 or users[0].op_type != "Add" or any(o is out for o in model.graph.outputs):
            return None
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if _dq_const(other) is None:
            return None
        return add, self._bias_value(other, n)

    @staticmethod
    def _drop_dead_qdq(model: ir.Model, values) -> None:
        stack = [v for v in values if v is not None]
        while stack:
            v = stack.pop()
            if v.uses() or any(o is v for o in model.graph.outputs):
                continue
            p = v.producer()
            if p is not None and p.graph is model.graph and p.op_type in ("QuantizeLinear", "DequantizeLinear") \
                    and not any(o.uses() for o in p.outputs):
                inputs = list(p.inputs)
                model.graph.remove(p, safe=True)
                stack.extend(i for i in inputs if i is not None)
            elif v.name in model.graph.initializers:
                model.graph.initializers.pop(v.name)

    @staticmethod
    def _fold_constant_dq(model: ir.Model) -> None:
        """DQ(constant) left over: rank >= 2 feeding another op is an error; the rest folds to float."""
        for node in list(model.graph):
            if not _is(node, "DequantizeLinear"):
                continue
            c = _dq_const(node.outputs[0])
            if c is None:
                continue
            _, q = c
            users = [u.node for u in node.outputs[0].uses()]
            if q.ndim >= 2:
                user = users[0] if users else node
                raise SpikecError(
                    f"import-qdq: node '{user.name}' ({user.op_type}) is inside a quantized region: its input "
                    f"'{node.inputs[0].name}' is a quantized weight, but spikec rewrites only MatMul/Gemm into "
                    f"spiking ops; exclude it from quantization (quantize_static nodes_to_exclude, or "
                    f"op_types_to_quantize=['MatMul', 'Gemm', ...])")
            zp = _scalar(node.inputs[2] if len(node.inputs) > 2 else None, 0)
            arr = _dequant(q, _scalar(node.inputs[1]), zp, int(ops.attr(node, "axis", 1)))
            val = initializer(model.graph, f"{node.outputs[0].name}.float", arr)
            ir.convenience.replace_all_uses_with(node.outputs[0], val)
            ImportQdq._drop_dead_qdq(model, [node.outputs[0]])


def imported_timesteps(model: ir.Model) -> bool:
    return model.metadata_props.get(SOURCE_KEY) == "qdq"


__all__ = ["ImportQdq", "imported_timesteps", "SOURCE_KEY", "json"]
