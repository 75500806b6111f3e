"""Write a checkpoint folder at a published model's sizes, with random weights, in bounded memory.

    python benchmarks/make_checkpoint.py --model qwen2-vl-2b -o /tmp/qwen2-vl-2b
    python benchmarks/make_checkpoint.py --model qwen2-vl-7b --text-layers 4 --vision-layers 4 -o /tmp/q7
    python benchmarks/make_checkpoint.py --model llava-1.5-7b --dtype fp32 --shard-size 2GB -o /tmp/llava

The folder is in Hugging Face `save_pretrained` layout: config.json, generation_config.json,
model-0000i-of-0000n.safetensors + model.safetensors.index.json (or one model.safetensors),
and processor, tokenizer and chat template files, so that both
`AutoModelForImageTextToText.from_pretrained(OUTDIR)` and `AutoProcessor.from_pretrained(OUTDIR)`
work offline. Nothing is downloaded.

The model is never built with real weights: tensor names, shapes and dtypes come from the
model instantiated on the `meta` device, put through the same steps save_pretrained takes
(drop tied weights, revert transformers' load-time key renamings), and split into shards
the way save_pretrained splits them. Each tensor is then filled with seeded random values
(a per-tensor seed derived from its name: the same arguments give byte-identical files)
and each shard is written with safetensors' `save_file` and freed, so peak memory is about
one shard. The folder is written under a temporary name and renamed when complete.

The tokenizer is the project's small byte-level one (spikec/frontend/tokenizer.py) with
the model family's special tokens; the config's vocab_size stays the published one (the
rows past the tokenizer's size are unused), and the config's image/video/special token ids
are the ones this tokenizer and processor use (not the published ids).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

try:  # run as a script from a checkout without spikec installed
    import spikec  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_SHARD_SIZE = "2GB"  # save_pretrained takes "5GB"-style sizes; smaller keeps peak RSS low
INIT_STD = 0.02  # the published configs' initializer_range

# ---------------------------------------------------------------------------------------------
# Published configurations. The sizes below are the published config.json values of each
# checkpoint on the Hugging Face Hub (typed in here from the published files: no download).
# Token ids are not: they come from the tokenizer this script builds.
# ---------------------------------------------------------------------------------------------

# Qwen/Qwen2-VL-2B-Instruct config.json (published; torch_dtype bfloat16).
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
    initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, use_sliding_window=False,
    sliding_window=32768, max_window_layers=28, attention_dropout=0.0,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
QWEN2_VL_2B_VISION = dict(
    depth=32, embed_dim=1280, hidden_size=1536, hidden_act="quick_gelu", mlp_ratio=4, num_heads=16,
    in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, initializer_range=0.02,
)

# Qwen/Qwen2-VL-7B-Instruct config.json (published; torch_dtype bfloat16, untied embeddings).
QWEN2_VL_7B_TEXT = dict(
    QWEN2_VL_2B_TEXT, vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_window_layers=28,
)
QWEN2_VL_7B_VISION = dict(QWEN2_VL_2B_VISION, hidden_size=3584)  # merger output = text hidden size

# llava-hf/llava-1.5-7b-hf config.json (published; torch_dtype float16): CLIP ViT-L/14 at 336 px
# (openai/clip-vit-large-patch14-336) and Vicuna-7B v1.5 (Llama-2-7B shape), vocab padded to 32064.
LLAVA_15_7B_VISION = dict(
    hidden_size=1024, intermediate_size=4096, projection_dim=768, num_hidden_layers=24,
    num_attention_heads=16, num_channels=3, image_size=336, patch_size=14, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
)
LLAVA_15_7B_TEXT = dict(
    vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, hidden_act="silu", max_position_embeddings=4096,
    initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True, attention_bias=False, mlp_bias=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)
LLAVA_15_7B_TOP = dict(
    projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
    image_seq_length=576, multimodal_projector_bias=True, tie_word_embeddings=False,
)

# The published chat templates (Qwen2-VL-*-Instruct's chat_template.json; llava-hf/llava-1.5-7b-hf's,
# without its `{% generation %}` training markers).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@dataclass(frozen=True)
class Spec:
    description: str
    build: Callable[[int | None, int | None], tuple[Any, Any, Any]]  # -> (model class, config, processor)
    dtype: str  # the published checkpoint's dtype (the --dtype default)
    text_layers: int
    vision_layers: int


def _qwen2_vl(text: dict, vision: dict, tied: bool):
    def build(text_layers: int | None, vision_layers: int | None):
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        from spikec.frontend.tiny import _qwen_ids, _qwen_tokens
        from spikec.frontend.tokenizer import build_tokenizer

        tok = build_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + _qwen_tokens())
        tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"  # as Qwen2-VL-Instruct's tokenizer
        processor = _qwen2_vl_processor(Qwen2VLProcessor, tok)
        ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text_cfg = dict(text, **ids, tie_word_embeddings=tied)
        vision_cfg = dict(vision)
        if text_layers is not None:
            text_cfg["num_hidden_layers"] = text_layers
        if vision_layers is not None:
            vision_cfg["depth"] = vision_layers
        config = Qwen2VLConfig(text_config=text_cfg, vision_config=vision_cfg, tie_word_embeddings=tied,
                               **_qwen_ids(tok), **ids)
        return Qwen2VLForConditionalGeneration, config, processor

    return build


def _qwen2_vl_processor(proc_cls, tok):
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    # Qwen2-VL-*-Instruct preprocessor_config.json (published): min_pixels 56*56, max_pixels 3584*3584,
    # 14 px patches, 2x2 merge, 2 frames per temporal patch, CLIP mean/std.
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    common = dict(size=size, patch_size=14, merge_size=2, temporal_patch_size=2, image_mean=mean, image_std=std)
    return proc_cls(image_processor=Qwen2VLImageProcessor(**common), tokenizer=tok,
                    video_processor=Qwen2VLVideoProcessor(**common), chat_template=QWEN2_VL_CHAT_TEMPLATE)


def _llava_15_7b(text_layers: int | None, vision_layers: int | None):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from spikec.frontend.tokenizer import build_tokenizer

    # Llama's <s> </s> and llava-hf's added <image> and <pad> (build_tokenizer's BOS/EOS/PAD are Llama's).
    tok = build_tokenizer(["<image>"])
    # llava-hf/llava-1.5-7b-hf preprocessor_config.json / processor_config.json (published).
    ip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                            do_center_crop=True, do_resize=True, resample=3, do_rescale=True, do_normalize=True,
                            do_convert_rgb=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                            image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               image_token="<image>", chat_template=LLAVA_CHAT_TEMPLATE)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text_cfg = dict(LLAVA_15_7B_TEXT, **ids)
    vision_cfg = dict(LLAVA_15_7B_VISION)
    if text_layers is not None:
        text_cfg["num_hidden_layers"] = text_layers
    if vision_layers is not None:
        vision_cfg["num_hidden_layers"] = vision_layers
    config = LlavaConfig(vision_config=CLIPVisionConfig(**vision_cfg), text_config=LlamaConfig(**text_cfg),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), **LLAVA_15_7B_TOP)
    config.pad_token_id = tok.pad_token_id
    return LlavaForConditionalGeneration, config, processor


MODELS: dict[str, Spec] = {
    "qwen2-vl-2b": Spec("Qwen2-VL-2B-Instruct: 28-layer Qwen2 1.5B text (hidden 1536, GQA 12/2 heads, "
                        "tied embeddings) + 32-layer 675M ViT (embed 1280)",
                        _qwen2_vl(QWEN2_VL_2B_TEXT, QWEN2_VL_2B_VISION, tied=True), "bf16", 28, 32),
    "qwen2-vl-7b": Spec("Qwen2-VL-7B-Instruct: 28-layer Qwen2 7B text (hidden 3584, GQA 28/4 heads, "
                        "untied) + 32-layer 675M ViT (embed 1280)",
                        _qwen2_vl(QWEN2_VL_7B_TEXT, QWEN2_VL_7B_VISION, tied=False), "bf16", 28, 32),
    "llava-1.5-7b": Spec("LLaVA-1.5-7B (llava-hf): CLIP ViT-L/14-336 (24 layers) + 2-layer GELU projector + "
                         "Vicuna-7B v1.5 / Llama-2-7B text (32 layers, hidden 4096), fp16 as published",
                         _llava_15_7b, "fp16", 32, 24),
}


# ---------------------------------------------------------------------------------------------
# Building blocks (importable)
# ---------------------------------------------------------------------------------------------

def build(model: str, text_layers: int | None = None, vision_layers: int | None = None,
          dtype: str | None = None):
    """(meta-device model, config, processor, torch dtype) for a model name; no weight is allocated."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    for what, n in (("text", text_layers), ("vision", vision_layers)):
        if n is not None and n < 1:
            raise ValueError(f"--{what}-layers must be at least 1, got {n}")
    spec = MODELS[model]
    dtype = dtype or spec.dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    model_cls, config, processor = spec.build(text_layers, vision_layers)
    with torch.device("meta"):
        meta = model_cls._from_config(config, dtype=torch_dtype)
    meta.eval()
    # What save_pretrained records in config.json.
    meta.config.dtype = str(torch_dtype).split(".")[1]
    meta.config.architectures = [model_cls.__name__]
    return meta, meta.config, processor, torch_dtype


def saved_tensors(meta_model) -> dict[str, torch.Tensor]:
    """{checkpoint key: meta tensor}, exactly the keys save_pretrained writes, in its order.

    The same steps as `PreTrainedModel.save_pretrained`: the state dict minus
    `_keys_to_ignore_on_save`, minus tied aliases (lm_head.weight when embeddings are tied),
    then transformers' reverse key conversion (`save_original_format=True`).
    """
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = meta_model.state_dict()
    for key in meta_model._keys_to_ignore_on_save or ():
        state.pop(key, None)
    state = remove_tied_weights_from_state_dict(state, meta_model)
    state = revert_weight_conversion(meta_model, state)
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or t.device.type != "meta":
            raise RuntimeError(f"{key}: expected a meta tensor from the meta-device model, got {type(t)}")
    return state


def plan_shards(state: dict[str, torch.Tensor], shard_size: str | int):
    """save_pretrained's shard split (huggingface_hub.split_torch_state_dict_into_shards)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    return split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                              max_shard_size=shard_size)


def tensor_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_kind(name: str, shape: tuple[int, ...]) -> str:
    """'ones' for norm scales, 'zeros' for biases, 'normal' (std INIT_STD) for the rest.

    In these models every 1-D `.weight` is a LayerNorm/RMSNorm scale; CLIP's 1-D
    `class_embedding` and every matrix, conv kernel and embedding table get normal values.
    """
    if name.endswith(".bias"):
        return "zeros"
    if len(shape) == 1 and name.endswith(".weight"):
        return "ones"
    return "normal"


def make_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The tensor's values: deterministic given (seed, name, shape, dtype)."""
    kind = init_kind(name, shape)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    out = torch.empty(shape, dtype=dtype)
    # normal_ fills in place in the tensor's own dtype (no float32 copy), serially from the generator:
    # the values do not depend on the thread count.
    out.normal_(0.0, INIT_STD, generator=torch.Generator().manual_seed(tensor_seed(seed, name)))
    return out


def _generation_config(meta_model, processor):
    gen = meta_model.generation_config
    tok = processor.tokenizer
    gen.bos_token_id, gen.pad_token_id = tok.bos_token_id, tok.pad_token_id
    eos = [tok.eos_token_id]
    if "<|endoftext|>" in tok.get_vocab():  # Qwen2-VL-Instruct stops at <|im_end|> or <|endoftext|>
        eos.append(tok.convert_tokens_to_ids("<|endoftext|>"))
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    return gen


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def write_checkpoint(outdir: str | os.PathLike, model: str, *, text_layers: int | None = None,
                     vision_layers: int | None = None, dtype: str | None = None,
                     shard_size: str | int = DEFAULT_SHARD_SIZE, seed: int = 0, force: bool = False,
                     log: Callable[[str], None] | None = None) -> dict:
    """Write the checkpoint folder; returns a summary (files, tensors, bytes, seconds, peak RSS)."""
    from safetensors.torch import save_file

    from spikec.atomic import atomic_path

    t0 = time.time()
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: folder exists and is not empty (pass --force to replace it)")
    meta, config, processor, torch_dtype = build(model, text_layers, vision_layers, dtype)
    state = saved_tensors(meta)
    split = plan_shards(state, shard_size)
    total_parameters = meta.num_parameters()
    generation_config = _generation_config(meta, processor)
    files = list(split.filename_to_tensors.items())
    with atomic_path(out, is_dir=True) as tmp:
        config.save_pretrained(tmp)
        generation_config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for i, (filename, names) in enumerate(files, 1):
            shard = {}
            for name in names:
                t = state[name]
                shard[name] = make_tensor(name, tuple(t.shape), t.dtype, seed)
            save_file(shard, tmp / filename, metadata={"format": "pt"})
            os.chmod(tmp / filename, 0o644)  # safetensors creates it 0600
            nbytes = sum(v.numel() * v.element_size() for v in shard.values())
            del shard
            if log:
                log(f"  {filename}: {len(names)} tensors, {nbytes / 2**30:.2f} GiB "
                    f"({i}/{len(files)}, {time.time() - t0:.1f}s)")
        if split.is_sharded:
            index = {"metadata": {"total_parameters": total_parameters, **split.metadata},
                     "weight_map": split.tensor_to_filename}
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    total_size = sum(t.numel() * t.element_size() for t in state.values())
    return {"outdir": str(out), "model": model, "dtype": str(torch_dtype).split(".")[1],
            "files": [f for f, _ in files], "tensors": len(state), "total_size": total_size,
            "total_parameters": total_parameters, "seconds": time.time() - t0, "peak_rss": peak_rss_bytes()}


def main(argv: list[str] | None = None) -> int:
    models = "\n".join(f"  {name:13s} {spec.description}" for name, spec in MODELS.items())
    ap = argparse.ArgumentParser(
        description=__doc__ + "\nmodels:\n" + models, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(MODELS), help="published model shape")
    ap.add_argument("-o", "--outdir", required=True, type=Path, help="checkpoint folder to write")
    ap.add_argument("--text-layers", type=int, default=None,
                    help="text decoder layers (default: the published count)")
    ap.add_argument("--vision-layers", type=int, default=None,
                    help="vision encoder layers (default: the published count)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="weight dtype (default: as published: bf16 for Qwen2-VL, fp16 for LLaVA-1.5)")
    ap.add_argument("--shard-size", default=DEFAULT_SHARD_SIZE,
                    help=f"maximum shard size, save_pretrained syntax such as 2GB or 500MB "
                         f"(default {DEFAULT_SHARD_SIZE})")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--force", action="store_true", help="replace an existing non-empty OUTDIR")
    args = ap.parse_args(argv)
    try:
        summary = write_checkpoint(args.outdir, args.model, text_layers=args.text_layers,
                                   vision_layers=args.vision_layers, dtype=args.dtype,
                                   shard_size=args.shard_size, seed=args.seed, force=args.force,
                                   log=lambda s: print(s, flush=True))
    except (ValueError, FileExistsError) as exc:
        print(f"make_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary['outdir']}: {summary['model']}, {summary['dtype']}, {summary['tensors']} tensors, "
          f"{summary['total_parameters'] / 1e9:.3f}B parameters, {summary['total_size'] / 2**30:.2f} GiB in "
          f"{len(summary['files'])} file(s)")
    print(f"wall time {summary['seconds']:.1f}s, peak RSS {summary['peak_rss'] / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
