"""Answer metrics as the benchmarks define them: exact match, ANLS (DocVQA), VQA accuracy (TextVQA).

All functions take the model's answer (a str, the decoded new text) and the reference
answer(s) (str), and return a float in [0, 1]. None of them raises on odd text: any str
is scored; a non-str raises TypeError.

* `exact_match(pred, answer)`: 1.0 when the two are equal after stripping surrounding
  whitespace (case and inner spacing count), else 0.0. This is what `spikec eval` has
  always called accuracy.
* `anls(pred, answers, threshold=0.5)`: Average Normalized Levenshtein Similarity of
  DocVQA (Biten et al., 2019; the ST-VQA/DocVQA evaluation code): both strings are
  lower-cased with runs of whitespace collapsed and ends stripped; for each reference
  NL = levenshtein(pred, ref) / max(len(pred), len(ref)); the score is max over the
  references of 1 - NL, set to 0 when NL >= threshold (two empty strings score 1).
* `vqa_accuracy(pred, answers)`: the VQA / TextVQA accuracy (Antol et al., 2015; the
  official `vqaEval.py`): the answer and the references are normalised
  (`normalize_vqa_answer`: punctuation, number words to digits, articles and
  contractions); for each reference, acc = min(1, #(other references equal to pred) / 3)
  over the other references; the score is the mean over the references. With the usual
  ten references an answer given by three or more annotators scores 1. With a single
  reference the score is 1.0 on a match (the formula would give 0: there are no other
  references), so a one-answer data set scores like exact match after normalisation.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["METRICS", "anls", "exact_match", "levenshtein", "normalize_vqa_answer", "score", "vqa_accuracy"]

#: The metric names `score` returns, in the order `spikec eval` prints them.
METRICS: tuple[str, ...] = ("exact_match", "anls", "vqa_accuracy")


def _check(pred, answers) -> list[str]:
    if not isinstance(pred, str):
        raise TypeError(f"the predicted answer must be a str, not {type(pred).__name__}")
    refs = [answers] if isinstance(answers, str) else list(answers)
    if not refs or not all(isinstance(a, str) for a in refs):
        raise TypeError("the reference answers must be a str or a non-empty sequence of str")
    return refs


def exact_match(pred: str, answer: str | Sequence[str]) -> float:
    """1.0 if `pred` equals the reference (any of them, for a sequence) after .strip(), else 0.0."""
    refs = _check(pred, answer)
    return 1.0 if any(pred.strip() == a.strip() for a in refs) else 0.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def anls(pred: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA's ANLS of one answer: max over references of 1 - NL, 0 where NL >= `threshold`."""
    refs = _check(pred, answers)
    p = _anls_norm(pred)
    best = 0.0
    for ref in refs:
        r = _anls_norm(ref)
        n = max(len(p), len(r))
        nl = levenshtein(p, r) / n if n else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


# --- VQA answer normalisation, after the official vqaEval.py (VQA v2 / TextVQA) ---------

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "shouldnt": "shouldn't", "thats": "that's", "theres": "there's", "theyre": "they're", "wasnt": "wasn't",
    "werent": "weren't", "whats": "what's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it.

    Newlines and tabs become spaces; punctuation is removed (or turned into a space when
    it joins two words); a period not inside a number is dropped; the text is
    lower-cased; number words zero..ten become digits; articles (a, an, the) are dropped;
    common contractions written without the apostrophe get it back. E.g. "Three." -> "3",
    "the  Red-Car" -> "red car".
    """
    if not isinstance(text, str):
        raise TypeError(f"an answer must be a str, not {type(text).__name__}")
    s = original = text.replace("\n", " ").replace("\t", " ").strip()
    for p in _PUNCT:  # as vqaEval.py: the test looks at the text before any replacement
        if (p + " " in original or " " + p in original) or _COMMA_STRIP.search(original) is not None:
            s = s.replace(p, "")
        else:
            s = s.replace(p, " ")
    s = _PERIOD_STRIP.sub("", s)
    words = []
    for w in s.lower().split():
        w = _NUMBERS.get(w, w)
        if w in _ARTICLES:
            continue
        words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_accuracy(pred: str, answers: str | Sequence[str]) -> float:
    """VQA accuracy of one answer against its references (normally ten), in [0, 1]."""
    refs = [normalize_vqa_answer(a) for a in _check(pred, answers)]
    p = normalize_vqa_answer(pred)
    if len(refs) == 1:
        return 1.0 if p == refs[0] else 0.0
    accs = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1:]
        accs.append(min(1.0, sum(o == p for o in others) / 3.0))
    return sum(accs) / len(accs)


def score(pred: str, answer: str, answers: Sequence[str] | None = None) -> dict[str, float]:
    """All of METRICS for one item: exact match against `answer`; ANLS and VQA accuracy against
    `answers` when given (the data set's reference list), else against [answer]."""
    refs = list(answers) if answers else [answer]
    return {"exact_match": exact_match(pred, answer), "anls": anls(pred, refs), "vqa_accuracy": vqa_accuracy(pred, refs)}
