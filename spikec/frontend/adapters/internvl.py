"""InternVL (transformers' native class): InternViT + pixel shuffle + MLP projector."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikec.frontend.adapters.base import Adapter, to_numpy


class _Vision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model.model

    def forward(self, pixel_values):
        # pixel_values: [tiles, 3, H, W] (the processor's crops plus thumbnail).
        feats = self.inner.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return feats.reshape(-1, feats.shape[-1])


class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = ("internvl",)
    prompt_layout = "{image}\n{prompt}"

    @classmethod
    def vision_module(cls, model):
        return _Vision(model)

    @classmethod
    def vision_feeds(cls, config, proc_out):
        return {"pixel_values": to_numpy(proc_out["pixel_values"]).astype(np.float32)}

    @classmethod
    def vision_dynamic_shapes(cls, feeds):
        return {"pixel_values": {0: torch.export.Dim("tiles", min=1, max=1024)}}
