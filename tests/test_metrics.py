"""The benchmarks' answer metrics (spikec.metrics) on hand-checkable cases, and their use by `spikec eval`."""

from __future__ import annotations

import json

import pytest

from spikec.errors import SpikecError
from spikec.evaluate import EvalResult, load_items
from spikec.frontend.export import sample_image
from spikec.metrics import anls, exact_match, levenshtein, normalize_vqa_answer, score, vqa_accuracy


def test_exact_match_strips_only_the_ends():
    assert exact_match(" tiger\n", "tiger") == 1.0
    assert exact_match("Tiger", "tiger") == 0.0  # case counts
    assert exact_match("ti ger", "tiger") == 0.0
    assert exact_match("b", ["a", "b"]) == 1.0


def test_levenshtein():
    assert levenshtein("", "") == 0
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2


def test_anls_by_hand():
    assert anls("tiger", "tiger") == 1.0
    assert anls(" TIGER  ", "tiger") == 1.0  # lower-cased, whitespace collapsed
    assert anls("tigr", "tiger") == pytest.approx(1 - 1 / 5)  # NL = 0.2
    assert anls("tg", "tiger") == 0.0  # NL = 3/5 >= 0.5
    assert anls("abcd", "abef") == 0.0  # NL = 0.5 exactly: at the threshold, 0
    assert anls("abcd", "abef", threshold=0.6) == pytest.approx(0.5)
    assert anls("tigr", ["lion", "tiger"]) == pytest.approx(0.8)  # best reference
    assert anls("", "") == 1.0


def test_vqa_normalisation():
    assert normalize_vqa_answer("Three.") == "3"
    assert normalize_vqa_answer("the  Red-Car") == "red car"
    assert normalize_vqa_answer("1,000") == "1000"
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("dont know!") == "don't know"


def test_vqa_accuracy_by_hand():
    ten = ["2", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
    # two annotators said "2": 2 of the 10 leave-one-out subsets hold one match (1/3), 8 hold two (2/3)
    assert vqa_accuracy("two", ten) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    assert vqa_accuracy("x", ["x"] * 3 + ["y"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqa_accuracy("x", ["x"] * 4 + ["y"] * 6) == 1.0
    assert vqa_accuracy("z", ["x"] * 10) == 0.0
    assert vqa_accuracy("3", ["3"] * 7 + ["three"] * 3) == 1.0
    assert vqa_accuracy("Red", "red") == 1.0  # one reference: a normalised match


def test_score_and_type_errors():
    assert score("tigr", "tiger") == {"exact_match": 0.0, "anls": pytest.approx(0.8), "vqa_accuracy": 0.0}
    assert score("three", "3", ["3"] * 10)["vqa_accuracy"] == 1.0
    with pytest.raises(TypeError):
        exact_match(3, "3")
    with pytest.raises(TypeError):
        anls("a", [])


def test_eval_result_metrics_per_type():
    r = EvalResult(model="m", data="d", total=3, correct=1, by_type={"a": [1, 2], "b": [0, 1]},
                   metric_sums={"a": {"exact_match": 1.0, "anls": 1.8, "vqa_accuracy": 1.0},
                                "b": {"exact_match": 0.0, "anls": 0.5, "vqa_accuracy": 0.0}})
    assert r.metrics("a") == {"exact_match": 0.5, "anls": 0.9, "vqa_accuracy": 0.5}
    assert r.metrics()["anls"] == pytest.approx(2.3 / 3)
    d = r.to_dict()
    assert d["by_type"]["b"]["metrics"]["anls"] == 0.5 and d["metrics"]["exact_match"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("line, message", [
    ('{"image": "ok.png", "prompt": "p", "answer": "a", "answers": "a"}', "field 'answers' must be a non-empty list"),
    ('{"image": "ok.png", "prompt": "p", "answer": "a", "answers": []}', "field 'answers' must be a non-empty list"),
    ('{"image": "ok.png", "prompt": "p", "answer": "a", "answers": ["a", 3]}', "field 'answers'"),
    ('{"image": "ok.png", "prompt": "p", "answer": "a", "type": 5}', "field 'type' must be a string"),
    ('["ok.png"]', "expected a JSON object"),
])
def test_broken_answers_field_is_named(tmp_path, line, message):
    sample_image().save(tmp_path / "ok.png")
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "ok.png", "prompt": "p", "answer": "a"}) + "\n" + line + "\n")
    with pytest.raises(SpikecError, match=rf"data.jsonl:2: {message}"):
        load_items(tmp_path)


def test_spikec_eval_prints_the_metrics_per_type(run_cli, monkeypatch, tmp_path):
    import spikec.evaluate

    fixed = EvalResult(model="m (float)", data="d", total=3, correct=1, by_type={"count": [1, 2], "word": [0, 1]},
                       predictions=["3", "three", "tigr"],
                       metric_sums={"count": {"exact_match": 1.0, "anls": 1.0, "vqa_accuracy": 2.0},
                                    "word": {"exact_match": 0.0, "anls": 0.8, "vqa_accuracy": 0.0}})
    monkeypatch.setattr(spikec.evaluate, "evaluate", lambda *a, **k: fixed)
    r = run_cli("eval", str(tmp_path), "--data", str(tmp_path), "--json", str(tmp_path / "r.json"))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("m (float): 1/3 = 33.33% exact match")
    assert lines[2].split() == ["count", "1/2", "50.00%", "50.00%", "100.00%"]
    assert lines[3].split() == ["word", "0/1", "0.00%", "80.00%", "0.00%"]
    assert lines[4].split() == ["all", "1/3", "33.33%", "60.00%", "66.67%"]
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["by_type"]["word"]["metrics"]["anls"] == pytest.approx(0.8)


def test_items_without_a_type_are_their_own_row_not_a_second_all(monkeypatch, tmp_path):
    """A data.jsonl line without "type" is counted under "untyped" (it was counted under
    "all", the name the eval command prints for the total: two "all" rows; a newcomer's trial)."""
    import spikec.evaluate as E

    sample_image().save(tmp_path / "ok.png")
    lines = [{"image": "ok.png", "prompt": "p", "answer": "a", "type": "word"},
             {"image": "ok.png", "prompt": "p", "answer": "b"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setattr(E, "predictor_for", lambda *a, **k: ((lambda image, prompt: "a"), "float", None))
    r = E.evaluate(tmp_path, tmp_path)
    assert r.by_type == {"word": [1, 1], E.UNTYPED: [0, 1]} and "all" not in r.to_dict()["by_type"]
