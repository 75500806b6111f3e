"""LLaVA: CLIP or SigLIP vision tower + MLP projector, Llama/Qwen2/... text model."""

from __future__ import annotations

import torch
from torch import nn

from spikec.frontend.adapters.base import Adapter


class _Vision(nn.Module):
    """transformers' get_image_features without its final `list(features)`, which
    would make torch.export specialise the image count."""

    def __init__(self, model):
        super().__init__()
        self.tower = model.model.vision_tower
        self.projector = model.model.multi_modal_projector
        self.layer = model.config.vision_feature_layer
        self.strategy = model.config.vision_feature_select_strategy

    def forward(self, pixel_values):
        hidden = self.tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
        picked = [hidden[i][:, 1:] if self.strategy == "default" else hidden[i] for i in layers]
        feats = self.projector(torch.cat(picked, dim=-1))
        return feats.reshape(-1, feats.shape[-1])


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    prompt_layout = "{image}\n{prompt}"

    @classmethod
    def vision_module(cls, model):
        return _Vision(model)
