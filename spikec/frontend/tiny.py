"""Built-in tiny models: random weights (seeded), a real processor and tokenizer.

Each builder returns (model, processor) small enough to export in seconds, with the
same classes a real checkpoint uses, so the whole path (processor -> vision graph ->
merge -> language model) is exercised without a download.
"""

from __future__ import annotations

import torch

from spikec.errors import SpikecError
from spikec.frontend.tokenizer import build_tokenizer

SEED = 0
# Text model shared by all tiny configs: 2 layers, grouped-query attention (4 heads,
# 2 kv heads), head_dim 8.
_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _vocab(tok) -> int:
    return len(tok)


def _finish(model_cls, config, processor):
    torch.manual_seed(SEED)
    config.text_config.bos_token_id = processor.tokenizer.bos_token_id
    config.text_config.eos_token_id = processor.tokenizer.eos_token_id
    config.text_config.pad_token_id = processor.tokenizer.pad_token_id
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, attr, None) is not None:
            setattr(config, attr, getattr(processor.tokenizer, attr))
    model = model_cls(config).eval()
    # Random init of a 2-layer model gives small logits whose argmax ties easily;
    # a larger lm_head spread makes greedy decoding comparisons meaningful.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = None  # generate exactly max_new_tokens
    return model, processor


def tiny_llava():
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    tok = build_tokenizer(["<image>"])
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=_vocab(tok), **_TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    return _finish(LlavaForConditionalGeneration, config, proc)


def _qwen_tokens():
    return ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _qwen_text(tok):
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
    return dict(vocab_size=_vocab(tok), rope_parameters=rope, **_TEXT)


def _qwen_ids(tok):
    return dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))


def _qwen_processor(proc_cls, tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    ip = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    vp = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return proc_cls(image_processor=ip, tokenizer=tok, video_processor=vp)


def tiny_qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    tok = build_tokenizer(_qwen_tokens())
    proc = _qwen_processor(Qwen2VLProcessor, tok)
    config = Qwen2VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        **_qwen_ids(tok))
    return _finish(Qwen2VLForConditionalGeneration, config, proc)


def tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    tok = build_tokenizer(_qwen_tokens())
    proc = _qwen_processor(Qwen2_5_VLProcessor, tok)
    # window_size 56 -> 2x2 merged-token windows, so an 8x8-patch image has 4 windows
    # and layer 0 (windowed) differs from layer 1 (full attention).
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tok),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=56, fullatt_block_indexes=[1]),
        **_qwen_ids(tok))
    return _finish(Qwen2_5_VLForConditionalGeneration, config, proc)


def tiny_internvl():
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, Qwen2Config)
    names = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = build_tokenizer(list(names.values()), names)
    ip = GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=2)
    vp = InternVLVideoProcessor(size={"height": 32, "width": 32})
    proc = InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=4)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[32, 32], patch_size=[8, 8]),
        text_config=Qwen2Config(vocab_size=_vocab(tok), **_TEXT),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    return _finish(InternVLForConditionalGeneration, config, proc)


def tiny_idefics3():
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, LlamaConfig)
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = build_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + rows)
    ip = Idefics3ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=_vocab(tok), **_TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    return _finish(Idefics3ForConditionalGeneration, config, proc)


def tiny_smolvlm():
    """Not a built-in name (the CLI's list is fixed); used by the tests of the idefics3 adapter."""
    from transformers import (LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor,
                              SmolVLMProcessor, SmolVLMVideoProcessor)
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = build_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>",
                           "<video>"] + rows)
    ip = SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                               do_image_splitting=True)
    proc = SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=SmolVLMVideoProcessor(),
                            image_seq_len=4)
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=_vocab(tok), **_TEXT),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    return _finish(SmolVLMForConditionalGeneration, config, proc)


TINY = {
    "tiny-qwen2-vl": tiny_qwen2_vl,
    "tiny-qwen2.5-vl": tiny_qwen2_5_vl,
    "tiny-llava": tiny_llava,
    "tiny-internvl": tiny_internvl,
    "tiny-idefics3": tiny_idefics3,
}


def build_tiny(name: str):
    """(model, processor) for a built-in tiny config name."""
    if name not in TINY:
        raise SpikecError(f"unknown built-in model {name!r}; built-in names: {', '.join(TINY)}")
    return TINY[name]()
