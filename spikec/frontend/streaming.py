"""Export in bounded memory: trace a model with no weights, stream the checkpoint's tensors.

A 7B checkpoint in bf16 is 16.6 GB; converted to the float32 the graphs compute in, 33 GB:
more than this machine has. Tracing does not need weight values (torch.export traces
with fake tensors), so the exporter works on two models of the same class and config:

- the *trace model*: float32 parameters allocated uninitialized (`torch.empty`, never
  written, so the kernel backs them with no memory) under transformers' `no_init_weights`,
  with the buffers (rotary `inv_freq` and the like) computed as a float32 load would;
- the *values model*: `from_pretrained(dtype="auto")`, which memory-maps the
  safetensors shards in their stored dtype (zero-copy: file-backed pages only).

After `torch.onnx.export(..., optimize=False)` each ONNX initializer still holds the trace
model's parameter; `CheckpointWeights.bind` recognises it (by storage address), renames
it to the parameter's module path (`model.language_model.layers.0.mlp.down_proj.weight`)
and gives it an `onnx_ir.LazyTensor` that converts the mapped value to float32 when the
graph is saved, one tensor at a time. A weight used only through a 2-D Transpose (every
nn.Linear: the exporter writes `MatMul(x, Transpose(W))`) is stored transposed instead,
which is what torch.onnx's own optimizer would fold (onnxscript always folds Transpose of
a constant); the same optimizer then runs on the bound graph. Peak memory is the largest
tensor in float32 (a transposed one is converted by row blocks into its output), plus
the runtime.

Conversion: bf16 and fp16 to float32 are exact (every value is representable), so the
graph's weights equal a float32 load of the same checkpoint bit for bit.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TRANSPOSE_BLOCK_ELEMENTS = 1 << 22  # 16 MiB of float32 per block of a transposed weight


def trace_model(values_model) -> Any:
    """A model of `values_model`'s class and config whose float parameters are float32 and
    uninitialized (not backed by memory until written), buffers computed for real."""
    import torch
    from transformers.initialization import no_init_weights

    config = values_model.config
    with no_init_weights():
        model = type(values_model)(config)
    model.config._attn_implementation = "eager"
    # Sub-configs may carry the checkpoint's dtype: make every float parameter float32,
    # keeping ties (one new tensor per original tensor).
    replaced: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.is_floating_point() and p.dtype != torch.float32:
                module._parameters[name] = replaced.setdefault(
                    id(p), torch.nn.Parameter(torch.empty(p.shape, dtype=torch.float32), requires_grad=False))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class CheckpointWeights:
    """The values of a trace model's parameters, read from the values model on demand."""

    def __init__(self, trace, values) -> None:
        self._fqn_by_storage: dict[int, str] = {}
        for fqn, p in trace.named_parameters(remove_duplicate=False):
            if p.numel():
                self._fqn_by_storage.setdefault(p.data_ptr(), fqn)
        self._values = dict(values.named_parameters(remove_duplicate=False))
        missing = sorted(set(self._fqn_by_storage.values()) - set(self._values))
        if missing:
            from spikec.errors import SpikecError

            raise SpikecError(f"checkpoint: parameter {missing[0]} of the model has no value "
                              f"(and {len(missing) - 1} more)")

    def _value(self, fqn: str, transpose: bool):
        import onnx_ir as ir
        import torch

        def load() -> ir.Tensor:
            src = self._values[fqn].detach()
            if not transpose:
                return ir.Tensor(src.to(torch.float32).numpy())
            # W.T in float32 without a float32 copy of W: converted and transposed by row blocks
            rows, cols = src.shape
            out = np.empty((cols, rows), np.float32)
            step = max(1, TRANSPOSE_BLOCK_ELEMENTS // max(cols, 1))
            for r in range(0, rows, step):
                out[:, r:r + step] = src[r:r + step].to(torch.float32).numpy().T
            return ir.Tensor(out)

        return load

    def bind(self, model) -> int:
        """Give every initializer that is a trace parameter its checkpoint value (lazy),
        named by its module path; fold 2-D Transposes of those weights; name the node that
        applies a weight after its module (`model.language_model.layers.3.mlp.down_proj`).
        Returns the count of initializers bound."""
        import onnx_ir as ir
        import torch

        graph = model.graph
        taken = set(graph.initializers) | {v.name for v in graph.inputs}
        node_names = {n.name for n in graph}
        bound = 0
        for name, value in list(graph.initializers.items()):
            raw = getattr(value.const_value, "raw", None)
            if not isinstance(raw, torch.Tensor) or raw.numel() == 0:
                continue
            fqn = self._fqn_by_storage.get(raw.data_ptr())
            if fqn is None:
                continue  # a buffer: its real value stays
            uses = list(value.uses())
            node = uses[0].node if len(uses) == 1 else None
            perm = None if node is None else node.attributes.get("perm")
            transpose = (node is not None and node.op_type == "Transpose" and node.domain in ("", "ai.onnx")
                         and raw.dim() == 2 and (perm is None or list(perm.as_ints()) == [1, 0]))
            shape = list(raw.shape)[::-1] if transpose else list(raw.shape)
            lazy = ir.LazyTensor(self._value(fqn, transpose), dtype=ir.DataType.FLOAT, shape=ir.Shape(shape),
                                 name=fqn)
            new_name = fqn if fqn not in taken or fqn == name else f"{fqn}.{bound}"
            taken.add(new_name)
            consumer = node.outputs[0].uses()[0].node if transpose and len(node.outputs[0].uses()) == 1 else node
            if transpose:
                folded = ir.Value(name=f".{new_name}.folding", type=ir.TensorType(ir.DataType.FLOAT),
                                  shape=ir.Shape(shape), const_value=lazy)
                graph.register_initializer(folded)
                node.outputs[0].replace_all_uses_with(folded)
                graph.remove(node, safe=True)
                graph.initializers.pop(name)
                folded.name = new_name
            else:
                value.const_value = lazy
                value.name = new_name
            # The node that applies the weight takes the module's path as its name, so every
            # report row, kernel and dump names the layer a user would look up in the model.
            if consumer is not None and fqn.endswith(".weight"):
                module = fqn[: -len(".weight")]
                if module not in node_names:
                    node_names.discard(consumer.name)
                    consumer.name = module
                    node_names.add(module)
            self._bound(graph, fqn, consumer, transpose)
            bound += 1
        return bound

    def _bound(self, graph, fqn: str, consumer, transpose: bool) -> None:
        """Called for each initializer bound to parameter `fqn`, with the node that applies it
        (after the Transpose fold, when there was one); quantized checkpoints
        (spikec.frontend.quantized.QuantizedWeights) record their layers here."""


# onnxscript's rewrite rules that match a pattern with several output nodes by scanning
# the whole graph once per node (onnxscript 0.7.2, `_matcher.SimplePatternMatcher.match`):
# O(nodes^2), the one part of export that grew faster than the layer count. Measured on
# Qwen2-VL-2B widths (1 vision layer), export CPU time: 4 / 12 / 28 text layers 33.9 /
# 53.9 / 113.2 s with the rule, 28 layers 86.6 s without it; it rewrote nothing in the
# exported graphs of that model (the files are byte-identical with and without it).
QUADRATIC_RULES = ("SlicesSplit",)


def optimize(model) -> None:
    """What torch.onnx.export(optimize=True) runs (torch 2.14 / onnxscript 0.7), on a bound
    graph: the big transposes are already folded, so nothing large is materialised. The
    rewrite rules named in QUADRATIC_RULES are left out for the duration of the call (they
    are looked up from onnxscript's default rule list at call time; where that list is not
    found, the optimizer runs with every rule)."""
    import onnxscript
    from onnxscript import rewriter

    default = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if isinstance(default, tuple):
        rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in default if getattr(r, "name", None) not in QUADRATIC_RULES)
    try:
        onnxscript.optimizer.optimize_ir(model)
    finally:
        if isinstance(default, tuple):
            rewriter._DEFAULT_REWRITE_RULES = default
    onnxscript.rewriter.onnx_fusions.fuse(model)
    name_weight_consumers(model)


def name_weight_consumers(model) -> int:
    """Give a node that applies a module's weight (its second input an initializer named
    `<module>.weight`) the module's path as its name where the optimizer made the node and
    named it (`node_...`): a fused MatMul + Add becomes a `node_Gemm_N`, and the name the
    binding gave the MatMul is lost (Qwen2-VL's vision blocks). Returns the count renamed."""
    graph = model.graph
    names = {n.name for n in graph}
    renamed = 0
    for node in graph:
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or w.name not in graph.initializers or not w.name.endswith(".weight"):
            continue
        module = w.name[: -len(".weight")]
        if node.name.startswith("node_") and module not in names:
            names.discard(node.name)
            node.name = module
            names.add(module)
            renamed += 1
    return renamed
