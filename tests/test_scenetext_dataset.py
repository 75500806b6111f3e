"""The synthetic scene-text data set: deterministic, split-disjoint, sized for Qwen2-VL, readable by `spikec eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spikec.datasets import scenetext as S
from spikec.evaluate import load_items


def test_items_are_deterministic_and_independent_of_the_request():
    a = S.make_item("test", 7)
    b = S.make_items("test", 3, start=6)[1]
    assert (a.prompt, a.answer, a.qtype) == (b.prompt, b.answer, b.qtype)
    assert np.array_equal(a.pixels, b.pixels)
    assert not np.array_equal(S.make_item("test", 7, seed=1).pixels, a.pixels)


def test_splits_use_disjoint_streams_and_types_cycle():
    items = {s: S.make_items(s, 10) for s in S.SPLITS}
    for i in range(10):
        assert items["train"][i].qtype == items["test"][i].qtype == S.QUESTION_TYPES[i % 5]
        assert not np.array_equal(items["train"][i].pixels, items["test"][i].pixels)
        assert not np.array_equal(items["validation"][i].pixels, items["test"][i].pixels)


def test_image_sizes_give_hundreds_of_vision_tokens():
    for it in S.make_items("validation", 10):
        h, w, c = it.pixels.shape
        assert c == 3 and it.pixels.dtype == np.uint8
        assert S.MIN_SIDE <= h <= S.MAX_SIDE and S.MIN_SIDE <= w <= S.MAX_SIDE
        assert h % 28 == 0 and w % 28 == 0  # Qwen2-VL keeps the size: (h/28)*(w/28) merged tokens
        assert 64 <= (h // 28) * (w // 28) <= 256


def test_answers_follow_the_question_type():
    for it in S.make_items("test", 25):
        assert len(it.answers) == 10 and it.answer in it.answers
        if it.qtype in ("word", "largest"):
            assert it.answer in S.WORDS
        elif it.qtype == "number":
            assert it.answer.isdigit() and 0 <= int(it.answer) < 1000
        elif it.qtype == "count":
            assert 0 <= int(it.answer) <= 6
        else:
            assert it.answer in S.COLOURS and it.prompt.split()[-1].rstrip("?") in S.WORDS


def test_eval_folder_round_trip(tmp_path):
    items = S.make_items("test", 5)
    S.write_eval_folder(items, tmp_path / "st")
    rows = load_items(tmp_path / "st")
    assert [r["answer"] for r in rows] == [it.answer for it in items]
    assert rows[0]["answers"] == list(items[0].answers) and rows[3]["type"] == "count"
    from PIL import Image

    with Image.open(rows[0]["image_path"]) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), items[0].pixels)


def test_bad_arguments_and_missing_fonts(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        S.make_item("dev", 0)
    with pytest.raises(ValueError, match=">= 0"):
        S.make_item("test", -1)
    monkeypatch.setattr(S, "FONT_DIR", tmp_path)
    S._font.cache_clear()
    try:
        with pytest.raises(S.SpikecError, match="fonts-dejavu-core"):
            S.make_item("test", 0)
    finally:
        monkeypatch.undo()
        S._font.cache_clear()


def test_vocabulary_covers_every_text():
    texts = S.all_texts()
    assert "read the word." in texts and "how many triangles are there?" in texts
    assert all(w in texts for w in S.WORDS)
    json.dumps(texts)
