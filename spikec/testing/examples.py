"""Small built-in ONNX models for demos and tests, made offline by torch's exporter.

`tiny_mlp_block` is a pre-norm MLP block (RMSNorm -> Linear -> SiLU -> Linear ->
residual), the shape of one half of a transformer layer: real exporter output
with MatMuls over weight initializers, which is what the spiking passes rewrite.
"""

from __future__ import annotations

import os
from pathlib import Path

from spikec import ir as spir


def tiny_mlp_block(path: str | os.PathLike, *, hidden: int = 32, ffn: int = 64, seed: int = 0) -> Path:
    """Export the block to `path` (dynamic batch and sequence length) and return it."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.RMSNorm(hidden, eps=1e-6)
            self.up = torch.nn.Linear(hidden, ffn)
            self.down = torch.nn.Linear(ffn, hidden)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(torch.nn.functional.silu(self.up(self.norm(x))))

    torch.manual_seed(seed)
    block = Block().eval()
    x = torch.randn(1, 4, hidden)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    program = torch.onnx.export(
        block,
        (x,),
        dynamo=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_shapes={"x": {0: batch, 1: seq}},
        opset_version=18,
        optimize=False,  # keep the exporter's raw form: the point is to clean it up with spikec's passes
        verbose=False,
    )
    import onnx_ir as ir

    model = ir.from_proto(program.model_proto)
    spir.save_model(model, path)
    return Path(path)
