#!/usr/bin/env python
"""Train spikec's bundled default model, a tiny LLaVA that answers questions about digits.

    python scripts/train_default_model.py          # --out models/digits-llava

The model is a genuine `LlavaForConditionalGeneration` (CLIP vision tower,
multi_modal_projector, Llama language model) with a word-level tokenizer built
here with `tokenizers`, a `CLIPImageProcessor` for 16x16 images and a
`LlavaProcessor` whose chat template gives the LLaVA-1.5 prompt format

    USER: <image>\\n{question} ASSISTANT:

(the processor expands <image> into 16 image tokens). It is trained from scratch
on the train split of `spikec.datasets.digits` with the loss only on the answer
tokens and </s>: stage 1 (--digit-epochs) asks only which digit is shown, so the
vision tower learns the digits first; stage 2 (--epochs) asks all four question
types. The stage-2 epoch with the best validation exact match (teacher-forced,
which equals exact match of greedy decoding or is stricter) is kept and scored on
validation and test with `model.generate` (greedy). The checkpoint is written
atomically; `training_report.json` inside it records the figures. See
docs/default-model.md.

Deterministic: fixed seeds, fixed thread count, torch.use_deterministic_algorithms.
Nothing is downloaded (HF_HUB_OFFLINE=1 is set before transformers is imported).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spikec.atomic import atomic_path  # noqa: E402
from spikec.datasets import digits as D  # noqa: E402

IMAGE_SIZE = 16  # model input: 8x8 scans upscaled 2x by pixel replication
PATCH_SIZE = 4  # 16 patches -> 16 image tokens (CLS dropped, strategy "default")
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]  # ids 0..4
PROMPT_FORMAT = "USER: <image>\n{question} ASSISTANT:"
# The answer follows the prompt as " {answer}</s>".

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "USER: {% for _ in range(n_images) %}<image>\n{% endfor %}{{ texts | join(' ') }}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "ASSISTANT: {{ texts | join(' ') }}</s>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def format_prompt(question: str) -> str:
    return PROMPT_FORMAT.format(question=question)


# --------------------------------------------------------------------------- processor


def _vocabulary() -> list[str]:
    """Specials, '▁', newline, punctuation, digits, then every template word with and without '▁'."""
    words: set[str] = {"USER", "ASSISTANT"}
    for text in D.all_texts():
        for w in text.replace("?", " ").split():
            if not w.isdigit():
                words.add(w)
    pieces = sorted({p for w in words for p in (w, "▁" + w)})
    return SPECIAL_TOKENS + ["▁", "\n", ":", "?"] + [str(d) for d in range(10)] + pieces


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Newlines are their own token; spaces become '▁' glued to the next word
    # (as in Llama's SentencePiece); every digit and punctuation mark is split off.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n"), "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Punctuation("isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
    return fast


def build_processor():
    from transformers import CLIPImageProcessor, LlavaProcessor
    from transformers.image_utils import PILImageResampling

    image_processor = CLIPImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,  # a no-op for the 16x16 PNGs; 8x8 inputs are pixel-replicated
        resample=PILImageResampling.NEAREST,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,  # grayscale replicated to 3 channels
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by "default"
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
    )


def build_model(tokenizer, args):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=args.vision_hidden,
        intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=args.vision_layers,
        num_attention_heads=4,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_act="gelu",
        projection_dim=args.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.text_hidden,
        intermediate_size=3 * args.text_hidden,
        num_hidden_layers=args.text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_act="silu",
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=NUM_IMAGE_TOKENS,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # the last CLIP layer (no dead layer in a model this small)
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(args.seed)
    model = LlavaForConditionalGeneration(config)
    gc = model.generation_config
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.do_sample = False
    gc.max_new_tokens = 4
    return model


# --------------------------------------------------------------------------- data


def pixel_tensor(pixels8: np.ndarray) -> torch.Tensor:
    """What the processor gives for render_image(pixels8): (3, 16, 16) in [-1, 1]."""
    u8 = D.digit_pixels_to_uint8(pixels8)
    up = np.repeat(np.repeat(u8, IMAGE_SIZE // 8, 0), IMAGE_SIZE // 8, 1)
    # rescale 1/255 then normalize with mean = std = 0.5, in the processor's fused
    # form (x - 127.5) / 127.5 so the float32 values are bit-identical.
    x = (torch.from_numpy(up.astype(np.float32)) - 127.5) / 127.5
    return x.unsqueeze(0).expand(3, -1, -1).contiguous()


def shift(pixels8: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate an 8x8 scan by (dy, dx) pixels, filling with 0 (background)."""
    out = np.zeros_like(pixels8)
    h, w = pixels8.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = pixels8[ys, xs]
    return out


class Encoder:
    """Token ids for prompt + answer, with labels only on the answer and </s>."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    def expand(self, text: str) -> str:
        return text.replace("<image>", "<image>" * NUM_IMAGE_TOKENS)

    def __call__(self, question: str, answer: str) -> tuple[list[int], list[int]]:
        key = (question, answer)
        if key not in self.cache:
            prompt = self.expand(format_prompt(question))
            p = self.tok(prompt)["input_ids"]
            full = self.tok(prompt + " " + answer)["input_ids"] + [self.tok.eos_token_id]
            if full[: len(p)] != p:
                raise RuntimeError(f"prompt tokens are not a prefix of prompt+answer for {key}")
            if self.tok.unk_token_id in full:
                raise RuntimeError(f"unknown token in {prompt + ' ' + answer!r}")
            if p.count(self.image_id) != NUM_IMAGE_TOKENS:
                raise RuntimeError("wrong number of image tokens")
            labels = [-100] * len(p) + full[len(p) :]
            self.cache[key] = (full, labels)
        return self.cache[key]


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int):
    n = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), n), pad_id, dtype=torch.long)
    lab = torch.full((len(encoded), n), -100, dtype=torch.long)
    att = torch.zeros((len(encoded), n), dtype=torch.long)
    for i, (a, b) in enumerate(encoded):  # right padding (causal: pads never attended)
        ids[i, : len(a)] = torch.tensor(a)
        lab[i, : len(b)] = torch.tensor(b)
        att[i, : len(a)] = 1
    return ids, att, lab


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def teacher_forced_exact(model, encoder, items, images, batch_size=256) -> dict[str, float]:
    """Exact match of every answer token and </s> under teacher forcing, by type.

    Equal to or stricter than greedy-decoding exact match: greedy decoding emits
    the answer then </s> exactly when each of these argmaxes is right.
    """
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        ids, att, lab = collate([encoder(it.prompt, it.answer) for it in chunk], encoder.tok.pad_token_id)
        pix = torch.stack([pixel_tensor(images[it.index]) for it in chunk])
        logits = model(input_ids=ids, attention_mask=att, pixel_values=pix).logits
        pred = logits[:, :-1].argmax(-1)
        tgt = lab[:, 1:]
        ok = ((pred == tgt) | (tgt == -100)).all(-1)
        for it, o in zip(chunk, ok.tolist()):
            hits[it.qtype].append(int(o))
    return _summarise(hits)


def _summarise(hits: dict[str, list[int]]) -> dict[str, float]:
    allh = [h for v in hits.values() for h in v]
    out = {"overall": sum(allh) / len(allh), "n": len(allh)}
    for t in D.QUESTION_TYPES:
        if hits.get(t):
            out[t] = sum(hits[t]) / len(hits[t])
    return out


@torch.no_grad()
def generate_exact(model, processor, items, images, batch_size=128, max_new_tokens=4):
    """Exact match of greedy `model.generate` through the processor (left padding)."""
    model.eval()
    hits: dict[str, list[int]] = defaultdict(list)
    wrong = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        pics = [D.render_image(images[it.index], IMAGE_SIZE) for it in chunk]
        texts = [format_prompt(it.prompt) for it in chunk]
        inputs = processor(images=pics, text=texts, return_tensors="pt", padding=True)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for it, a in zip(chunk, answers):
            ok = a.strip() == it.answer
            hits[it.qtype].append(int(ok))
            if not ok and len(wrong) < 20:
                wrong.append({"index": it.index, "label": it.label, "prompt": it.prompt, "answer": it.answer, "got": a})
    res = _summarise(hits)
    res["examples_wrong"] = wrong
    return res


# --------------------------------------------------------------------------- training


def parse_repeats(spec: str) -> dict[str, int]:
    out = {t: 1 for t in D.QUESTION_TYPES}
    for part in filter(None, spec.split(",")):
        k, _, v = part.partition("=")
        if k not in out or not v.isdigit() or int(v) < 1:
            raise SystemExit(f"--repeats: bad entry {part!r}")
        out[k] = int(v)
    return out


def _publishable(folder: Path) -> None:
    """Folders 0755, files 0644 (mkdtemp makes the temporary folder 0700)."""
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def train(args) -> dict:
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    processor = build_processor()
    tok = processor.tokenizer
    model = build_model(tok, args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}  vocab: {len(tok)}", flush=True)

    images, _ = D.load_digit_images()
    split = D.split_indices(args.split_seed)
    train_idx = split["train"]
    val_items = D.make_items("validation", seed=args.item_seed, split_seed=args.split_seed)
    test_items = D.make_items("test", seed=args.item_seed, split_seed=args.split_seed)
    encoder = Encoder(tok)

    # A sanity check that the training pixels are the processor's pixels.
    check = processor(images=D.render_image(images[0]), text=format_prompt("what digit is this?"), return_tensors="pt")
    if not torch.allclose(check["pixel_values"][0], pixel_tensor(images[0]), atol=1e-6, rtol=0):
        raise RuntimeError("training pixel tensor differs from the processor's")
    if not torch.equal(check["input_ids"][0], torch.tensor(encoder("what digit is this?", "0")[0][: check["input_ids"].shape[1]])):
        raise RuntimeError("training token ids differ from the processor's")

    vision_params = [p for n, p in model.named_parameters() if "vision_tower" in n or "multi_modal_projector" in n]
    text_params = [p for n, p in model.named_parameters() if not ("vision_tower" in n or "multi_modal_projector" in n)]
    opt = torch.optim.AdamW(
        [
            {"params": vision_params, "lr": args.lr * args.vision_lr_mult},
            {"params": text_params, "lr": args.lr},
        ],
        betas=(0.9, 0.98),
        weight_decay=args.weight_decay,
    )
    base_lrs = [g["lr"] for g in opt.param_groups]
    # Curriculum: the first --digit-epochs epochs ask only "what digit is this?" so
    # the vision tower learns the digits before the language model has to combine
    # them with the text (parity/comparison flip with the template: XOR-like, and
    # slow to learn from weak visual features).
    def epoch_types(epoch: int) -> tuple[str, ...]:
        return ("digit",) if epoch < args.digit_epochs else D.QUESTION_TYPES

    # After it, every image gets `repeats[type]` questions of each type per epoch
    # (more of the slow ones to learn: comparison and "plus K"), each with its
    # own item seed.
    repeats = parse_repeats(args.repeats)

    def epoch_items(epoch: int) -> list:
        items = D.make_items(train_idx, seed=1000 + epoch, types=epoch_types(epoch))
        if epoch >= args.digit_epochs:
            for t in D.QUESTION_TYPES:
                for r in range(1, repeats[t]):
                    items += D.make_items(train_idx, seed=100_000 + 100 * epoch + r, types=(t,))
        return items

    n_epochs = args.digit_epochs + args.epochs
    n_train = len(train_idx)
    steps1 = args.digit_epochs * math.ceil(n_train / args.batch_size)
    steps2 = args.epochs * math.ceil(n_train * sum(repeats.values()) / args.batch_size)

    def lr_factors(step: int) -> list[float]:
        """Stage 1: warm-up then constant base rates; stage 2: warm-up then cosine to 0 from --stage2-lr."""
        if step < steps1:
            f = min(1.0, (step + 1) / 100)
            return [lr * f for lr in base_lrs]
        s = step - steps1
        f = min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / max(1, steps2)))
        return [args.stage2_lr * f for _ in base_lrs]

    gen = np.random.default_rng(args.seed)
    best = (-1.0, -1)
    best_state = None
    history = []
    step = 0
    val_digit = [it for it in val_items if it.qtype == "digit"]
    for epoch in range(n_epochs):
        model.train()
        # Fresh numbers/templates every epoch (item seed 1000+epoch), images shuffled.
        items = epoch_items(epoch)
        order = gen.permutation(len(items))
        shifts = gen.integers(-1, 2, size=(len(items), 2))
        do_aug = gen.random(len(items)) < args.aug_prob
        ep_loss = 0.0
        for s in range(0, len(items), args.batch_size):
            sel = order[s : s + args.batch_size]
            batch = [items[i] for i in sel]
            ids, att, lab = collate([encoder(it.prompt, it.answer) for it in batch], tok.pad_token_id)
            pix = torch.stack(
                [
                    pixel_tensor(shift(images[items[i].index], *shifts[i]) if do_aug[i] else images[items[i].index])
                    for i in sel
                ]
            )
            for g, lr in zip(opt.param_groups, lr_factors(step)):
                g["lr"] = lr
            loss = model(input_ids=ids, attention_mask=att, pixel_values=pix, labels=lab).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ep_loss += loss.item() * len(sel)
            step += 1
        stage1 = epoch < args.digit_epochs
        val = teacher_forced_exact(model, encoder, val_digit if stage1 else val_items, images)
        history.append({"epoch": epoch + 1, "loss": ep_loss / len(items), "val": val, "elapsed_s": time.perf_counter() - t0})
        per = " ".join(f"{t}={val[t]:.3f}" for t in D.QUESTION_TYPES if t in val)
        print(
            f"epoch {epoch + 1:3d}  loss {ep_loss / len(items):.4f}  val {val['overall']:.4f} ({per})"
            f"  {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
        if not stage1 and val["overall"] > best[0]:
            best = (val["overall"], epoch + 1)
            best_state = copy.deepcopy(model.state_dict())
    train_s = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    print(f"selected epoch {best[1]} (val teacher-forced exact {best[0]:.4f}); training took {train_s:.0f}s", flush=True)

    val_gen = generate_exact(model, processor, val_items, images)
    test_gen = generate_exact(model, processor, test_items, images)
    for name, r in (("validation", val_gen), ("test", test_gen)):
        per = " ".join(f"{t}={r[t]:.4f}" for t in D.QUESTION_TYPES)
        print(f"{name} greedy exact match {r['overall']:.4f} on {r['n']} items ({per})", flush=True)

    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "args": vars(args),
        "parameters": n_params,
        "selected_epoch": best[1],
        "train_wall_s": round(train_s, 1),
        "validation_teacher_forced_best": best[0],
        "validation_greedy": val_gen,
        "test_greedy": test_gen,
        "history": history,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    out = Path(args.out)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        report["total_wall_s"] = round(time.perf_counter() - t0, 1)
        (tmp / "training_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        _publishable(tmp)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {report['total_wall_s']:.0f}s total", flush=True)
    verify(out, test_items[:40], images)
    return report


def verify(path: Path, items, images) -> None:
    """Reload offline the way a user would and answer a few test items."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True)
    model.eval()
    ok = 0
    for it in items:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": it.prompt}]}]
        text = processor.apply_chat_template(msgs, add_generation_prompt=True)
        assert text == format_prompt(it.prompt), (text, format_prompt(it.prompt))
        inputs = processor(images=D.render_image(images[it.index]), text=text, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        ok += processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() == it.answer
    print(f"reload check: {ok}/{len(items)} test items right via AutoProcessor + generate", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="models/digits-llava")
    p.add_argument("--seed", type=int, default=0, help="init, shuffling and augmentation seed")
    p.add_argument("--split-seed", type=int, default=D.DEFAULT_SEED)
    p.add_argument("--item-seed", type=int, default=D.DEFAULT_SEED, help="item seed of the val/test questions")
    p.add_argument("--digit-epochs", type=int, default=20, help="stage 1: epochs on digit questions only")
    p.add_argument("--epochs", type=int, default=20, help="stage 2: epochs on all question types")
    p.add_argument(
        "--repeats", default="digit=1,parity=1,compare=2,add=3", help="stage 2 questions per image per epoch, by type"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3, help="stage 1 rate of the language model")
    p.add_argument("--vision-lr-mult", type=float, default=2.0, help="stage 1 rate of vision tower + projector, x --lr")
    p.add_argument("--stage2-lr", type=float, default=1e-3, help="stage 2 peak rate (all parameters), cosine to 0")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--aug-prob", type=float, default=0.5, help="chance of a random +-1 pixel shift")
    p.add_argument("--vision-hidden", type=int, default=64)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-hidden", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: bit-reproducible anywhere)")
    args = p.parse_args(argv)
    train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
