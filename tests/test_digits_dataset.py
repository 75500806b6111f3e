"""The digits VQA data set and the bundled default model (models/digits-llava)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest


from spikec.datasets import digits as D  # noqa: E402
from spikec.errors import SpikecError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "digits-llava"


# --------------------------------------------------------------------------- split


def test_images_are_the_17_level_scans():
    images, labels = D.load_digit_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert sorted(set(labels.tolist())) == list(range(10))


def test_split_is_deterministic_disjoint_and_complete():
    a, b = D.split_indices(0), D.split_indices(0)
    for s in D.SPLITS:
        assert np.array_equal(a[s], b[s])
    sets = {s: set(a[s].tolist()) for s in D.SPLITS}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]
    assert set().union(*sets.values()) == set(range(1797))
    assert (len(a["train"]), len(a["validation"]), len(a["test"])) == (1259, 269, 269)
    # A different seed gives a different split.
    assert not np.array_equal(D.split_indices(1)["test"], a["test"])


def test_split_is_stratified():
    _, labels = D.load_digit_images()
    split = D.split_indices(0)
    overall = np.bincount(labels, minlength=10) / len(labels)
    for s in D.SPLITS:
        frac = np.bincount(labels[split[s]], minlength=10) / len(split[s])
        assert np.abs(frac - overall).max() < 0.01, s


# --------------------------------------------------------------------------- items


def _expected(item: D.DigitItem) -> str:
    """The answer recomputed from the question text alone (independent of the generator)."""
    d, q = item.label, item.prompt
    n = int(q.rstrip("?").split()[-1]) if q.rstrip("?").split()[-1].isdigit() else None
    if q in ("what digit is this?", "which digit is shown?"):
        return str(d)
    if q == "is the digit even?":
        return "yes" if d % 2 == 0 else "no"
    if q == "is the digit odd?":
        return "yes" if d % 2 == 1 else "no"
    if q.startswith("is the digit greater than "):
        return "yes" if d > n else "no"
    if q.startswith("is the digit less than "):
        return "yes" if d < n else "no"
    if q.startswith("what is the digit plus "):
        return str(d + n)
    raise AssertionError(f"unexpected question {q!r}")


def test_items_are_well_formed_and_correct():
    images, labels = D.load_digit_images()
    items = D.make_items("test")
    assert len(items) == 269 * len(D.QUESTION_TYPES)
    assert Counter(it.qtype for it in items) == {t: 269 for t in D.QUESTION_TYPES}
    for it in items:
        assert it.label == labels[it.index]
        assert it.prompt and it.prompt.endswith("?") and it.prompt == it.prompt.strip()
        assert it.answer == _expected(it)
    answers = Counter(it.answer for it in items if it.qtype in ("parity", "compare"))
    assert answers["yes"] > 150 and answers["no"] > 150
    assert {it.answer for it in items if it.qtype == "add"} <= {str(i) for i in range(1, 19)}


def test_items_are_deterministic_and_seeded():
    a = D.make_items("validation", seed=0)
    assert a == D.make_items("validation", seed=0)
    assert a != D.make_items("validation", seed=1)
    # An item does not depend on which other images or types were asked for.
    one = D.make_items([a[2].index], seed=0, types=(a[2].qtype,))
    assert one == [a[2]]


# --------------------------------------------------------------------------- eval folders


def test_render_keeps_the_17_levels():
    images, _ = D.load_digit_images()
    im = D.render_image(images[0], 16)
    assert im.mode == "L" and im.size == (16, 16)
    px = np.asarray(im)
    back = np.floor(px.astype(np.float64) * 16 / 255 + 0.5).astype(np.uint8)
    assert np.array_equal(back[::2, ::2], images[0]) and np.array_equal(back[1::2, 1::2], images[0])
    assert set(np.unique(D.digit_pixels_to_uint8(np.arange(17)))) == {
        int(np.floor(g * 255 / 16 + 0.5)) for g in range(17)
    }


def test_eval_folder_round_trips(tmp_path):
    images, _ = D.load_digit_images()
    items = D.make_items("test")[:40]
    out = D.write_eval_folder(items, tmp_path / "ev")
    lines = (out / "data.jsonl").read_text().splitlines()
    assert len(lines) == 40
    first = json.loads(lines[0])
    assert set(first) >= {"image", "prompt", "answer"}
    assert first["image"] == f"images/{items[0].index:05d}.png"
    loaded = D.load_eval_folder(out)
    assert [(e.prompt, e.answer, e.qtype) for e in loaded] == [(i.prompt, i.answer, i.qtype) for i in items]
    for e, it in zip(loaded, items):
        im = e.open_image()
        assert im.size == (16, 16)
        assert np.array_equal(np.asarray(im), np.asarray(D.render_image(images[it.index])))
    # No temporary folders are left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"image": "images/a.png", "prompt": "q"}', "'answer'"),
        ('{"image": "/etc/passwd", "prompt": "q", "answer": "a"}', "is absolute"),
        ('{"image": "../x.png", "prompt": "q", "answer": "a"}', "escapes"),
        ('{"image": "images/missing.png", "prompt": "q", "answer": "a"}', "not found"),
    ],
)
def test_eval_folder_loader_rejects_bad_lines(tmp_path, line, message):
    (tmp_path / "images").mkdir()
    (tmp_path / "data.jsonl").write_text(line + "\n")
    with pytest.raises(SpikecError, match=message) as e:
        D.load_eval_folder(tmp_path)
    assert "data.jsonl:1" in str(e.value)


def test_eval_folder_needs_data_jsonl(tmp_path):
    with pytest.raises(SpikecError, match="data.jsonl"):
        D.load_eval_folder(tmp_path)


# --------------------------------------------------------------------------- bundled model



@pytest.fixture(scope="module")
def bundled():
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(min(2, torch.get_num_threads()))
    processor = AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True)
    model.eval()
    return processor, model


def test_bundled_model_is_a_small_llava(bundled):
    processor, model = bundled
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.model_type == "llama"
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 1024 * 1024
    assert any(MODEL_DIR.glob("*.safetensors"))
    # The processor expands <image> into image_seq_length image tokens itself.
    images, _ = D.load_digit_images()
    x = processor(images=D.render_image(images[0]), text="USER: <image>\nwhat digit is this? ASSISTANT:", return_tensors="pt")
    n_image = int((x["input_ids"] == model.config.image_token_id).sum())
    assert n_image == model.config.image_seq_length == 16
    assert tuple(x["pixel_values"].shape) == (1, 3, 16, 16)
    assert processor.tokenizer.unk_token_id not in x["input_ids"][0].tolist()


def test_bundled_model_chat_template_gives_the_prompt_format(bundled):
    processor, _ = bundled
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "is the digit even?"}]}]
    assert processor.apply_chat_template(msgs, add_generation_prompt=True) == (
        "USER: <image>\nis the digit even? ASSISTANT:"
    )


def test_bundled_model_answers_test_items(bundled, tmp_path):
    import torch

    processor, model = bundled
    # Through an evaluation folder, the way `spikec eval` will read it: 25 test
    # images x 4 question types.
    split = D.split_indices()["test"]
    items = D.make_items(split[::10][:25])
    loaded = D.load_eval_folder(D.write_eval_folder(items, tmp_path / "ev"))
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": e.prompt}]}],
            add_generation_prompt=True,
        )
        for e in loaded
    ]
    inputs = processor(images=[e.open_image() for e in loaded], text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    got = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    right = [g.strip() == e.answer for g, e in zip(got, loaded)]
    assert len(right) == 100
    assert sum(right) / len(right) >= 0.9, list(zip([e.prompt for e in loaded], [e.answer for e in loaded], got))
    # The text matters: the same image gets different answers to different questions.
    by_image: dict[str, set[str]] = {}
    for g, e in zip(got, loaded):
        by_image.setdefault(e.image, set()).add(g.strip())
    assert all(len(v) >= 2 for v in by_image.values())


def test_bundled_model_single_item_generate(bundled):
    """The call from the docs, unbatched: processor(images=..., text=...) then generate."""
    import torch

    processor, model = bundled
    images, _ = D.load_digit_images()
    items = [it for it in D.make_items("test") if it.qtype == "add"][:5]
    right = 0
    for it in items:
        inputs = processor(
            images=D.render_image(images[it.index]),
            text=f"USER: <image>\n{it.prompt} ASSISTANT:",
            return_tensors="pt",
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        right += processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip() == it.answer
    assert right >= 4


def test_unknown_words_in_a_prompt_are_warned_about(tmp_path, caplog):
    """The bundled models' tokenizers are word-level: a word outside the vocabulary becomes
    <unk> without a word. Generation says so (a newcomer's trial: 'READ THE WORD.' and a
    French question were answered as if understood); a known prompt warns nothing."""
    import logging

    from spikec.frontend.export import export
    from spikec.frontend.generate import OrtGenerator

    export(str(MODEL_DIR), tmp_path / "export")
    gen = OrtGenerator(tmp_path / "export")
    images, _ = D.load_digit_images()
    item = D.make_items("test")[0]
    with caplog.at_level(logging.WARNING, logger="spikec"):
        gen.generate(D.render_image(images[item.index]), item.prompt, max_new_tokens=2)
        assert "does not know" not in caplog.text
        gen.generate(D.render_image(images[item.index]), "WHAT DIGIT quelle", max_new_tokens=2)
    assert "the prompt has 3 token(s) the tokenizer does not know (<unk>)" in caplog.text
