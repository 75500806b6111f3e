#!/usr/bin/env python
"""Train spikec's second bundled model, a small Qwen2-VL that reads scene text and counts shapes.

    python scripts/train_scenetext_model.py          # --out models/scenetext-qwen2vl

The model is transformers' own `Qwen2VLForConditionalGeneration` (patch-14 ViT with 2-D
rotary and the 2x2 patch merger, a Qwen2 language model with M-RoPE), sized to train
from scratch on 2 CPU cores in about an hour, with a word-level tokenizer built here
with `tokenizers` (every word of the data set one token, digits one token each), the
`Qwen2VLImageProcessor` (dynamic resolution: 224..448 px images give 64..256 vision
tokens) and a ChatML chat template:

    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n

and the model continues with `{answer}<|im_end|>`.

Data: `spikec.datasets.scenetext`, generated on the fly: training step s uses train
items s*B .. s*B+B-1 (never repeated), so the data are fixed by the seed. The loss is on
the answer tokens and `<|im_end|>` only. Every --eval-every steps the model is scored on
the first --val-items validation items (teacher-forced exact match, equal to or stricter
than greedy); the best is kept, scored with greedy `model.generate` on the validation and
test splits (exact match, per type), saved atomically with `save_pretrained`, reloaded and
checked. The float accuracy it reached is printed and kept in training_report.json.

Status: the defaults (600 steps, about 45 minutes on one busy core) do NOT reach the
issue's target; the bundled checkpoint made with them answers from the question's
priors (8.2 % test exact match, 1.7 % on reading; docs/scenetext-model.md). The recipe
that makes this model read is still to be found (longer runs, a curriculum).

Deterministic: fixed seeds, one torch thread by default, torch.use_deterministic_algorithms.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from spikec.atomic import atomic_path  # noqa: E402
from spikec.datasets import scenetext as S  # noqa: E402

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]  # ids 0..7; <|endoftext|> is also the pad token
MIN_PIXELS, MAX_PIXELS = S.MIN_SIDE * S.MIN_SIDE, S.MAX_SIDE * S.MAX_SIDE

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for _ in range(n_images) %}<|vision_start|><|image_pad|><|vision_end|>{% endfor %}"
    "{{ texts | join(' ') }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT_FORMAT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"


def format_prompt(question: str) -> str:
    return PROMPT_FORMAT.format(question=question)


# --------------------------------------------------------------------------- processor


def _vocabulary() -> list[str]:
    words: set[str] = {"user", "assistant", "system"}
    for text in S.all_texts():
        for w in text.replace("?", " ").replace(".", " ").split():
            if not w.isdigit():
                words.add(w)
    pieces = sorted({p for w in words for p in (w, "▁" + w)})
    return SPECIAL_TOKENS + ["▁", "\n", "?", ".", ","] + [str(d) for d in range(10)] + pieces


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_processor():
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    ip = Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    vp = Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2VLProcessor(image_processor=ip, tokenizer=build_tokenizer(), video_processor=vp,
                            chat_template=CHAT_TEMPLATE)


def build_model(tok, args):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    head_dim = args.text_hidden // args.text_heads
    half = head_dim // 2  # M-RoPE splits the rotary pairs t:h:w in Qwen2-VL's 2:3:3 ratio
    hw = half * 3 // 8
    mrope = [half - 2 * hw, hw, hw]
    text = dict(
        vocab_size=len(tok), hidden_size=args.text_hidden, intermediate_size=3 * args.text_hidden,
        num_hidden_layers=args.text_layers, num_attention_heads=args.text_heads, num_key_value_heads=args.text_heads,
        max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    vision = dict(depth=args.vision_layers, embed_dim=args.vision_hidden, hidden_size=args.text_hidden,
                  num_heads=args.vision_heads, mlp_ratio=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(
        text_config=text, vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    config.eos_token_id = tok.eos_token_id
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(args.seed)
    model = Qwen2VLForConditionalGeneration(config)
    gc = model.generation_config
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id
    gc.bos_token_id = None
    gc.do_sample = False
    gc.max_new_tokens = 6
    return model


# --------------------------------------------------------------------------- batches


def encode_batch(processor, items, with_answers: bool):
    """Processor inputs for `items` (right padding when training); labels on answer + <|im_end|>."""
    tok = processor.tokenizer
    texts = [format_prompt(it.prompt) + (it.answer + "<|im_end|>" if with_answers else "") for it in items]
    tok.padding_side = "right" if with_answers else "left"
    try:
        inputs = processor(images=[it.image() for it in items], text=texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"
    if with_answers:
        ids = inputs["input_ids"]
        labels = torch.full_like(ids, -100)
        lengths = inputs["attention_mask"].sum(1)
        for i, it in enumerate(items):
            ans = tok(it.answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            n = int(lengths[i])
            if ids[i, n - len(ans) : n].tolist() != ans:
                raise RuntimeError(f"answer tokens not at the end for {it.prompt!r} / {it.answer!r}")
            if tok.unk_token_id in ids[i, :n].tolist():
                raise RuntimeError(f"unknown token in {texts[i]!r}")
            labels[i, n - len(ans) : n] = ids[i, n - len(ans) : n]
        inputs["labels"] = labels
    return inputs


@torch.no_grad()
def teacher_forced_exact(model, processor, items, batch_size=16) -> dict:
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        inputs = encode_batch(processor, chunk, with_answers=True)
        lab = inputs.pop("labels")
        logits = model(**inputs).logits
        pred = logits[:, :-1].argmax(-1)
        tgt = lab[:, 1:]
        ok = ((pred == tgt) | (tgt == -100)).all(-1)
        for it, o in zip(chunk, ok.tolist()):
            hits[it.qtype].append(int(o))
    return summarise(hits)


def summarise(hits) -> dict:
    allh = [h for v in hits.values() for h in v]
    out = {"overall": sum(allh) / max(1, len(allh)), "n": len(allh)}
    read = [h for t in S.READING_TYPES for h in hits.get(t, [])]
    if read:
        out["reading"] = sum(read) / len(read)
    for t in S.QUESTION_TYPES:
        if hits.get(t):
            out[t] = sum(hits[t]) / len(hits[t])
    return out


@torch.no_grad()
def generate_exact(model, processor, items, batch_size=16, max_new_tokens=6) -> dict:
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    wrong = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        inputs = encode_batch(processor, chunk, with_answers=False)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for it, a in zip(chunk, answers):
            ok = a.strip() == it.answer
            hits[it.qtype].append(int(ok))
            if not ok and len(wrong) < 30:
                wrong.append({"index": it.index, "type": it.qtype, "prompt": it.prompt, "answer": it.answer, "got": a})
    res = summarise(hits)
    res["examples_wrong"] = wrong
    return res


def _fmt(r: dict) -> str:
    keys = ["reading", *S.QUESTION_TYPES]
    return " ".join(f"{k}={r[k]:.3f}" for k in keys if k in r)


def _publishable(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


# --------------------------------------------------------------------------- training


def train(args) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(tok, args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,} ({4 * n_params / 1e6:.1f} MB float32)  vocab: {len(tok)}", flush=True)

    val_items = S.make_items("validation", args.val_items, seed=args.data_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / args.warmup)
        return args.lr * warm * 0.5 * (1 + math.cos(math.pi * step / args.steps))

    history = []
    best = (-1.0, -1)
    best_state = None
    run_loss, run_n = 0.0, 0
    stopped_early = None
    for step in range(args.steps):
        if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes:
            # The wall-clock guard (a busy machine): keep what was learned, say so in the report.
            stopped_early = step
            print(f"--max-minutes {args.max_minutes}: stopping after {step} of {args.steps} steps", flush=True)
            val = teacher_forced_exact(model, processor, val_items)
            history.append({"step": step, "val": val, "elapsed_s": round(time.perf_counter() - t0, 1)})
            print(f"  val@{step}: {val['overall']:.4f} ({_fmt(val)})", flush=True)
            if val["overall"] >= best[0]:
                best = (val["overall"], step)
                best_state = copy.deepcopy(model.state_dict())
            break
        model.train()
        items = [S.make_item("train", step * args.batch_size + j, args.data_seed) for j in range(args.batch_size)]
        inputs = encode_batch(processor, items, with_answers=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(**inputs).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += loss.item()
        run_n += 1
        if (step + 1) % args.log_every == 0:
            print(f"step {step + 1:5d}  loss {run_loss / run_n:.4f}  lr {lr_at(step):.2e}  {time.perf_counter() - t0:.0f}s",
                  flush=True)
            run_loss, run_n = 0.0, 0
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            val = teacher_forced_exact(model, processor, val_items)
            history.append({"step": step + 1, "val": val, "elapsed_s": round(time.perf_counter() - t0, 1)})
            print(f"  val@{step + 1}: {val['overall']:.4f} ({_fmt(val)})  {time.perf_counter() - t0:.0f}s", flush=True)
            if val["overall"] >= best[0]:
                best = (val["overall"], step + 1)
                best_state = copy.deepcopy(model.state_dict())
    train_s = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    print(f"selected step {best[1]} (val teacher-forced exact {best[0]:.4f}); training took {train_s:.0f}s", flush=True)

    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": vars(args),
        "parameters": n_params,
        "selected_step": best[1],
        "stopped_early_at_step": stopped_early,
        "train_wall_s": round(train_s, 1),
        "validation_teacher_forced_best": best[0],
        "history": history,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    for split, n in (("validation", args.val_items), ("test", args.test_items)):
        r = generate_exact(model, processor, S.make_items(split, n, seed=args.data_seed))
        report[f"{split}_greedy"] = r
        print(f"{split} greedy exact match {r['overall']:.4f} on {r['n']} items ({_fmt(r)})", flush=True)
    print(f"FLOAT ACCURACY (test, greedy exact match): overall {report['test_greedy']['overall']:.4f}, "
          f"reading questions {report['test_greedy']['reading']:.4f}", flush=True)

    out = Path(args.out)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        report["total_wall_s"] = round(time.perf_counter() - t0, 1)
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _publishable(tmp)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {report['total_wall_s']:.0f}s total", flush=True)
    verify(out, S.make_items("test", 20, seed=args.data_seed))
    return report


def verify(path: Path, items) -> None:
    """Reload offline the way a user would and answer a few test items."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, local_files_only=True).eval()
    ok = 0
    for it in items:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.prompt}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True)
        assert text == format_prompt(it.prompt), (text, format_prompt(it.prompt))
        inputs = processor(images=it.image(), text=text, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        ok += processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() == it.answer
    print(f"reload check: {ok}/{len(items)} test items right via AutoProcessor + generate", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/scenetext-qwen2vl")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed")
    p.add_argument("--data-seed", type=int, default=S.DEFAULT_SEED, help="seed of the generated data (all splits)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--val-items", type=int, default=100, help="validation items scored during training")
    p.add_argument("--test-items", type=int, default=S.SPLIT_SIZES["test"])
    p.add_argument("--vision-hidden", type=int, default=96)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--vision-heads", type=int, default=4)
    p.add_argument("--text-hidden", type=int, default=192)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: bit-reproducible anywhere)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock guard: stop training after this many minutes (the report says so)")
    args = p.parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
