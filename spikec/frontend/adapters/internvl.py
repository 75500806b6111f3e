"""InternVL (transformers' native class): InternViT + pixel shuffle + MLP projector."""

from __future__ import annotations

import torch
from torch import nn

from spikec.frontend.adapters.base import Adapter


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
    image_axis = "tiles"

    @classmethod
    def vision_module(cls, model):
        return _Vision(model)
