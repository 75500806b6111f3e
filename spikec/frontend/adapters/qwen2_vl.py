"""Qwen2-VL and Qwen2.5-VL: patch ViT with 2-D rotary, windowed attention (2.5), M-RoPE text.

transformers' vision forward computes patch index tensors with data-dependent Python
(`tolist`, per-image loops) and splits attention per image. Here those tensors are
computed on the host and passed in, and the block-diagonal attention becomes an
additive mask built in the graph from per-patch segment ids, so the patch count is
dynamic. The layers themselves are the model's own modules.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from spikec.frontend.adapters.base import Adapter, to_numpy


def _segment_mask(seg: torch.Tensor) -> torch.Tensor:
    """[N] segment ids -> [N, N] additive mask: 0 within a segment, a large negative across."""
    same = seg[:, None] == seg[None, :]
    return torch.where(same, 0.0, torch.finfo(torch.float32).min)


def _rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _attention(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor, cos, sin) -> torch.Tensor:
    """The model's VisionAttention with a mask instead of a per-image split.

    Q @ K^T and P @ V stay explicit MatMuls (the compiler rewrites them).
    """
    n = x.shape[0]
    q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, N, head_dim]
    scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling + mask
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v).transpose(0, 1).reshape(n, -1)
    return attn.proj(out)


class _Vision(nn.Module):
    def __init__(self, model, windowed: bool):
        super().__init__()
        self.visual = model.model.visual
        self.windowed = windowed
        self.full_layers = set(getattr(self.visual.config, "fullatt_block_indexes", []) or [])

    def forward(self, pixel_values, rotary_pos_ids, segment_ids, window_segment_ids=None, window_index=None,
                reverse_index=None):
        v = self.visual
        h = v.patch_embed(pixel_values)
        cos, sin = v.rotary_pos_emb(h, rotary_pos_ids)
        if self.windowed:
            unit = v.spatial_merge_size**2
            n = h.shape[0]
            # Reorder patches window by window, in groups of one merged token (as transformers does).
            h = h.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
            cos = cos.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
            sin = sin.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
            window_mask = _segment_mask(window_segment_ids)
        full_mask = _segment_mask(segment_ids)
        for i, blk in enumerate(v.blocks):
            mask = full_mask if (not self.windowed or i in self.full_layers) else window_mask
            h = h + _attention(blk.attn, blk.norm1(h), mask, cos, sin)
            h = h + blk.mlp(blk.norm2(h))
        merged = v.merger(h)
        if self.windowed:
            merged = merged[reverse_index]
        return merged


def _vision_index_tensors(config, grid_thw: torch.Tensor, windowed: bool) -> dict[str, np.ndarray]:
    """Host-side patch index tensors, from transformers' own helper functions."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    vc = config.vision_config
    pos = get_vision_position_ids(grid_thw, vc.spatial_merge_size)
    cu = get_vision_cu_seqlens(grid_thw)
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), cu[1:] - cu[:-1])
    out = {"rotary_pos_ids": to_numpy(pos).astype(np.int64), "segment_ids": to_numpy(seg).astype(np.int64)}
    if windowed:
        widx, cu_w = get_vision_window_index(grid_thw, vc.spatial_merge_size, vc.window_size, vc.patch_size)
        wseg = torch.repeat_interleave(torch.arange(len(cu_w) - 1), (cu_w[1:] - cu_w[:-1]).long())
        out["window_segment_ids"] = to_numpy(wseg).astype(np.int64)
        out["window_index"] = to_numpy(widx).astype(np.int64)
        out["reverse_index"] = to_numpy(torch.argsort(widx)).astype(np.int64)
    return out


def _rope_index(config, input_ids, attention_mask, mm_token_type_ids, image_grid_thw):
    """transformers' get_rope_index for images, in numpy: [3, b, s] positions and per-row delta."""
    merge = config.vision_config.spatial_merge_size
    b, s = input_ids.shape
    pos = np.zeros((3, b, s), np.int64)
    deltas = np.zeros((b, 1), np.int64)
    grids = iter([] if image_grid_thw is None else to_numpy(image_grid_thw).tolist())
    for r in range(b):
        keep = attention_mask[r].astype(bool)
        types = mm_token_type_ids[r][keep]
        chunks, cur = [], 0
        for key, grp in itertools.groupby(types.tolist()):
            length = len(list(grp))
            if key == 0:
                chunks.append(np.broadcast_to(np.arange(length) + cur, (3, length)))
                cur += length
            else:
                t, hh, ww = next(grids)
                gt, gh, gw = t, hh // merge, ww // merge
                tt, hg, wg = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
                chunks.append(np.stack([tt + cur, hg + cur, wg + cur]).reshape(3, -1))
                cur += max(hh, ww) // merge
        p = np.concatenate(chunks, axis=1)
        pos[:, r, keep] = p
        deltas[r, 0] = p.max() + 1 - keep.sum()
    return pos, deltas


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    mrope = True
    windowed = False
    prompt_layout = "<|vision_start|>{image}<|vision_end|>{prompt}"

    @classmethod
    def vision_module(cls, model):
        return _Vision(model, cls.windowed)

    @classmethod
    def vision_feeds(cls, config, proc_out):
        grid = proc_out["image_grid_thw"]
        grid = grid if isinstance(grid, torch.Tensor) else torch.as_tensor(grid)
        feeds = {"pixel_values": to_numpy(proc_out["pixel_values"]).astype(np.float32)}
        feeds.update(_vision_index_tensors(config, grid, cls.windowed))
        return feeds

    @classmethod
    def vision_dynamic_shapes(cls, feeds):
        unit = 4  # spatial_merge_size ** 2 patches per merged token (2 in every released config)
        merged = torch.export.Dim("merged_tokens", min=1, max=1 << 20)
        n = unit * merged
        shapes = {"pixel_values": {0: n}, "rotary_pos_ids": {0: n}, "segment_ids": {0: n}}
        if cls.windowed:
            shapes.update(window_segment_ids={0: n}, window_index={0: merged}, reverse_index={0: merged})
        return shapes

    @classmethod
    def prefill_position_ids(cls, config, input_ids, attention_mask, proc_out):
        tt = proc_out.get("mm_token_type_ids")
        grid = proc_out.get("image_grid_thw")
        if tt is None or grid is None:  # text only: plain positions on all three axes
            pos, _ = Adapter.prefill_position_ids(config, input_ids, attention_mask, proc_out)
            return np.broadcast_to(pos, (3,) + pos.shape).copy(), np.zeros((pos.shape[0], 1), np.int64)
        return _rope_index(config, input_ids, attention_mask, to_numpy(tt), grid)

    @classmethod
    def decode_position_ids(cls, config, attention_mask, state):
        text = Adapter.decode_position_ids(config, attention_mask, None) + state
        return np.broadcast_to(text, (3,) + text.shape).copy()


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    windowed = True
