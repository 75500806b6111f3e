"""Torch modules with flat tensor signatures, the shapes the ONNX graphs take.

The Hugging Face classes take dicts, cache objects and Python ints; these wrappers
take and return plain tensors so `torch.onnx.export` sees one fixed signature. They
hold references to the model's own submodules (no weight copies).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import DynamicCache


class EmbedWrapper(nn.Module):
    """input_ids [batch, seq] -> inputs_embeds [batch, seq, hidden]."""

    def __init__(self, embed_tokens: nn.Module):
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class LMWrapper(nn.Module):
    """One graph for prefill and decode.

    Inputs: inputs_embeds [b, s, h], attention_mask [b, past + s], position_ids
    ([b, s], or [3, b, s] for multimodal rotary), modality [b, s], then
    past_key_values.{i}.key / .value [b, kv_heads, past, head_dim] per layer (past = 0
    on prefill). Outputs: logits [b, s, vocab], present.{i}.key / .value.

    `modality` is not used numerically by the float model; it is kept as an input
    because the compiler's passes give vision and text tokens different timesteps.
    """

    def __init__(self, text_model: nn.Module, lm_head: nn.Module, num_layers: int):
        super().__init__()
        self.text_model = text_model
        self.lm_head = lm_head
        self.num_layers = num_layers

    def forward(self, inputs_embeds, attention_mask, position_ids, modality, *past):
        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)])
        out = self.text_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
        )
        logits = self.lm_head(out.last_hidden_state)
        presents = []
        for layer in out.cache.layers:
            presents += [layer.keys, layer.values]
        return (logits, *presents)
