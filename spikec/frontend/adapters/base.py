"""What every family adapter provides, and the defaults most families share.

An adapter knows two things about one model family:
- torch side (export): which submodules form the text model, the embedding, the
  LM head, and a vision module with a flat tensor signature;
- host side (generation, numpy only, needs just the config): how to turn processor
  outputs into vision-graph feeds, and how to compute position ids.
Everything else (export driver, manifest, generation loop) is shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class Adapter:
    family = ""  # manifest name
    model_types: tuple[str, ...] = ()  # config.model_type values handled
    mrope = False  # position_ids are [3, batch, seq] (multimodal rotary) instead of [batch, seq]
    # Prompt layout when the processor has no chat template; {image} is the processor's image token.
    prompt_layout = "{image}\n{prompt}"
    # The processor wants images as one list per prompt ([[img], [img]]) instead of a flat list.
    images_per_prompt_nested = False
    # Name of the exported vision graph's leading (dynamic) axis of pixel_values.
    image_axis = "images"

    # ---- torch side -------------------------------------------------------------
    @staticmethod
    def text_model(model) -> nn.Module:
        inner = model.model
        return inner.language_model if hasattr(inner, "language_model") else inner.text_model

    @classmethod
    def vision_module(cls, model) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def vision_dynamic_shapes(cls, feeds: dict[str, np.ndarray]) -> dict[str, dict[int, Any]]:
        """Dynamic axes of each vision input, as torch.export dims (default: the image axis
        of a single `pixel_values` input, named `image_axis`)."""
        return {"pixel_values": {0: torch.export.Dim(cls.image_axis, min=1, max=1024)}}

    # ---- host side --------------------------------------------------------------
    @classmethod
    def vision_feeds(cls, config, proc_out: dict) -> dict[str, np.ndarray]:
        """Vision-graph inputs, in graph order, from the processor's outputs (default: the
        processor's `pixel_values` alone, float32)."""
        return {"pixel_values": to_numpy(proc_out["pixel_values"]).astype(np.float32)}

    @classmethod
    def image_token_id(cls, config) -> int:
        return int(config.image_token_id)

    @classmethod
    def prefill_position_ids(cls, config, input_ids: np.ndarray, attention_mask: np.ndarray, proc_out: dict):
        """(position_ids for the prefill, state carried to decode steps)."""
        pos = np.cumsum(attention_mask, axis=-1) - 1
        pos = np.where(attention_mask == 0, 1, pos)  # as transformers' generate does
        return pos.astype(np.int64), None

    @classmethod
    def decode_position_ids(cls, config, attention_mask: np.ndarray, state) -> np.ndarray:
        """Position ids of the one new token per row; attention_mask covers past + new."""
        return (attention_mask.sum(axis=-1, keepdims=True) - 1).astype(np.int64)
