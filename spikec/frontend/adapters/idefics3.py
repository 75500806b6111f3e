"""Idefics3 and SmolVLM: SigLIP-style vision with a patch mask, pixel-shuffle connector."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spikec.frontend.adapters.base import Adapter, to_numpy


class _Vision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model.model

    def forward(self, pixel_values, patch_attention_mask):
        # pixel_values: [images, 3, H, W], real sub-images only (padding images are
        # dropped on the host: that selection is data dependent).
        hidden = self.inner.vision_model(pixel_values=pixel_values, patch_attention_mask=patch_attention_mask,
                                         return_dict=True).last_hidden_state
        feats = self.inner.connector(hidden)
        return feats.reshape(-1, feats.shape[-1])


class Idefics3Adapter(Adapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    prompt_layout = "{image}{prompt}"
    images_per_prompt_nested = True

    @classmethod
    def vision_module(cls, model):
        return _Vision(model)

    @classmethod
    def vision_feeds(cls, config, proc_out):
        pv = to_numpy(proc_out["pixel_values"]).astype(np.float32)
        b, n = pv.shape[:2]
        pv = pv.reshape(b * n, *pv.shape[2:])
        pam = proc_out.get("pixel_attention_mask")
        pam = np.ones((b * n,) + pv.shape[2:], bool) if pam is None else to_numpy(pam).reshape(b * n, *pv.shape[2:])
        # Same rule as transformers: an image that is all zeros is batch padding.
        real = (pv == 0.0).reshape(b * n, -1).sum(-1) != pv[0].size
        pv, pam = pv[real], pam[real].astype(bool)
        p = config.vision_config.patch_size
        h, w = pam.shape[1] // p, pam.shape[2] // p
        patch_mask = pam[:, : h * p, : w * p].reshape(-1, h, p, w, p).sum(axis=(2, 4)) > 0
        return {"pixel_values": np.ascontiguousarray(pv), "patch_attention_mask": patch_mask}

    @classmethod
    def vision_dynamic_shapes(cls, feeds):
        n = torch.export.Dim("images", min=1, max=1024)
        return {"pixel_values": {0: n}, "patch_attention_mask": {0: n}}
