"""Visual questions about scikit-learn's handwritten digits.

The images are the 1,797 8x8 scans of `sklearn.datasets.load_digits` (shipped with
scikit-learn, so nothing is downloaded), 17 gray levels 0..16. Every image gets
questions from four types, and the answer needs both the picture and the text:

=========  ======================================  ===========
type       question (templates)                    answer
=========  ======================================  ===========
digit      what digit is this? / which digit is    "0".."9"
           shown?
parity     is the digit even?                      "yes"/"no"
compare    is the digit greater than N? (N 0..9)   "yes"/"no"
add        what is the digit plus K?    (K 1..9)   "1".."18"
=========  ======================================  ===========

Everything is deterministic: the train/validation/test split is stratified by
digit and drawn from `numpy.random.default_rng(split_seed)`; the template and the
number of each item come from `numpy.random.default_rng((seed, image index, type))`,
so an item does not depend on which other images or types were asked for.

An evaluation folder (`write_eval_folder` / `load_eval_folder`) is::

    DIR/data.jsonl        one JSON object a line:
                          {"image": "images/00012.png", "prompt": "...", "answer": "...",
                           "type": "digit"}
    DIR/images/NNNNN.png  8-bit grayscale PNGs, NNNNN = index in load_digits

`image` is relative to DIR; `type` is optional metadata (readers ignore keys they do
not know). The PNGs are the 8x8 scans upscaled by nearest neighbour (pixel
replication) to the model's input size, gray level g in 0..16 stored as
round(g * 255 / 16), so the 17 levels survive exactly (g = round(p * 16 / 255)).
`prompt` is the bare question; a model wraps it in its own prompt format (for the
bundled model: its processor's chat template, see docs/default-model.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from spikec.atomic import atomic_path
from spikec.errors import SpikecError
from spikec.schema import parse_json
from spikec.paths import resolve_inside

QUESTION_TYPES: tuple[str, ...] = ("digit", "parity", "compare", "add")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
DEFAULT_SEED = 0
DEFAULT_IMAGE_SIZE = 16
#: The data.jsonl keys every line must have.
REQUIRED_FIELDS: tuple[str, ...] = ("image", "prompt", "answer")
MAX_GRAY = 16

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "digit": ("what digit is this?", "which digit is shown?"),
    # One phrasing each for parity and comparison: with an "odd"/"less than"
    # twin the answer is an XOR of template and digit, which a model this small
    # learns far more slowly (tried; see docs/default-model.md).
    "parity": ("is the digit even?",),
    "compare": ("is the digit greater than {n}?",),
    "add": ("what is the digit plus {n}?",),
}
_TYPE_CODE = {t: i for i, t in enumerate(QUESTION_TYPES)}


@dataclass(frozen=True)
class DigitItem:
    """One question about one image of `load_digits`."""

    index: int  # row in sklearn's load_digits
    label: int  # the digit shown
    qtype: str  # one of QUESTION_TYPES
    prompt: str  # the bare question
    answer: str


@dataclass(frozen=True)
class EvalItem:
    """One line of an evaluation folder's data.jsonl."""

    image_path: Path  # absolute (resolved against the folder)
    image: str  # as written in data.jsonl, relative to the folder
    prompt: str
    answer: str
    qtype: str | None = None
    extra: dict = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False)  # "DIR/data.jsonl:N" this item was read from

    def open_image(self):
        """The image as an 8-bit PIL image (fully loaded, file closed), read by `spikec.images.read_image`.

        8-bit images keep their mode (the folders `write_eval_folder` makes give mode "L");
        16-bit, 32-bit integer and float images are scaled to 8-bit "L" (never clipped).
        Raises SpikecError naming `source` and the file for a missing, corrupt or truncated
        image or a decompression bomb.
        """
        from spikec.images import read_image

        return read_image(self.image_path, where=self.source or None)


# --------------------------------------------------------------------------- images


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images, dtype=np.uint8)  # (1797, 8, 8), 0..16
    labels = np.asarray(d.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All of load_digits: images (N, 8, 8) uint8 in 0..16 and labels (N,) int64."""
    images, labels = _digits()
    return images, labels


def digit_pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map gray levels 0..16 to 0..255 (round(g * 255 / 16)); exact and invertible."""
    g = np.asarray(pixels)
    if g.min() < 0 or g.max() > MAX_GRAY:
        raise ValueError(f"digit gray levels must lie in 0..{MAX_GRAY}")
    return np.floor(g.astype(np.float64) * 255.0 / MAX_GRAY + 0.5).astype(np.uint8)


def render_image(pixels: np.ndarray, size: int = DEFAULT_IMAGE_SIZE):
    """An 8x8 scan (0..16) as a `size` x `size` 8-bit grayscale PIL image.

    Upscaling is nearest neighbour: pixel replication when `size` is a multiple
    of 8 (the default 16 gives 2x2 blocks), PIL's NEAREST otherwise.
    """
    from PIL import Image

    p = digit_pixels_to_uint8(pixels)
    h, w = p.shape
    if size % h == 0 and size % w == 0:
        up = np.repeat(np.repeat(p, size // h, axis=0), size // w, axis=1)
        return Image.fromarray(np.ascontiguousarray(up), mode="L")
    return Image.fromarray(p, mode="L").resize((size, size), Image.Resampling.NEAREST)


# --------------------------------------------------------------------------- split


def split_indices(
    seed: int = DEFAULT_SEED, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, np.ndarray]:
    """Stratified, disjoint train/validation/test indices into load_digits.

    For each digit its indices are shuffled with one `default_rng(seed)` (digits
    in order 0..9); the first round(n * test_fraction) go to test, the next
    round(n * val_fraction) to validation, the rest to train. Each split is
    returned sorted.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("fractions must be in (0, 1) and sum to less than 1")
    _, labels = _digits()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["validation"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {s: np.sort(np.concatenate(parts[s])).astype(np.int64) for s in SPLITS}


# --------------------------------------------------------------------------- items


def _answer(qtype: str, template: int, label: int, n: int) -> str:
    if qtype == "digit":
        return str(label)
    if qtype == "parity":
        even = label % 2 == 0
        return "yes" if (even if template == 0 else not even) else "no"
    if qtype == "compare":
        return "yes" if (label > n if template == 0 else label < n) else "no"
    if qtype == "add":
        return str(label + n)
    raise ValueError(f"unknown question type {qtype!r}")


def make_item(index: int, qtype: str, seed: int = DEFAULT_SEED) -> DigitItem:
    """The question of type `qtype` about image `index` for item seed `seed`."""
    if qtype not in _TEMPLATES:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")
    _, labels = _digits()
    label = int(labels[index])
    rng = np.random.default_rng((int(seed), int(index), _TYPE_CODE[qtype]))
    templates = _TEMPLATES[qtype]
    t = int(rng.integers(len(templates)))
    n = int(rng.integers(1, 10)) if qtype == "add" else int(rng.integers(0, 10))
    prompt = templates[t].format(n=n)
    return DigitItem(index=int(index), label=label, qtype=qtype, prompt=prompt, answer=_answer(qtype, t, label, n))


def make_items(
    split: str | Sequence[int] | np.ndarray,
    *,
    seed: int = DEFAULT_SEED,
    split_seed: int = DEFAULT_SEED,
    types: Iterable[str] = QUESTION_TYPES,
) -> list[DigitItem]:
    """One item per (image, type) for a split name or an explicit list of indices.

    Ordered by image index, then by type in the order given.
    """
    types = tuple(types)
    if isinstance(split, str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        indices = split_indices(split_seed)[split]
    else:
        indices = np.asarray(split, dtype=np.int64)
    return [make_item(int(i), t, seed) for i in indices for t in types]


def all_texts() -> list[str]:
    """Every question and answer string the templates can produce (for vocabularies)."""
    out: list[str] = []
    for qtype, templates in _TEMPLATES.items():
        for t in templates:
            for n in range(10):
                out.append(t.format(n=n))
    out += [str(i) for i in range(19)] + ["yes", "no"]
    return sorted(set(out))


# --------------------------------------------------------------------------- eval folders


def write_eval_folder(
    items: Sequence[DigitItem], directory: str | os.PathLike, *, image_size: int = DEFAULT_IMAGE_SIZE
) -> Path:
    """Write `items` as DIR/data.jsonl plus DIR/images/NNNNN.png, atomically.

    One PNG per distinct image (named by its load_digits index); an existing DIR
    is replaced whole.
    """
    images, _ = _digits()
    final = Path(directory)
    with atomic_path(final, is_dir=True, replaceable=lambda d: (d / "data.jsonl").is_file()) as tmp:
        (tmp / "images").mkdir()
        written: set[int] = set()
        lines = []
        for it in items:
            rel = f"images/{it.index:05d}.png"
            if it.index not in written:
                render_image(images[it.index], image_size).save(tmp / rel, format="PNG")
                written.add(it.index)
            rec = {"image": rel, "prompt": it.prompt, "answer": it.answer, "type": it.qtype}
            lines.append(json.dumps(rec, ensure_ascii=False))
        (tmp / "data.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return final


def load_eval_folder(directory: str | os.PathLike) -> list[EvalItem]:
    """Read an evaluation folder written by `write_eval_folder` (or by hand).

    Checks every line: a JSON object with string `image`, `prompt` and `answer`,
    the image path relative, inside DIR and existing. Blank lines are skipped;
    unknown keys are kept in `EvalItem.extra`.
    """
    root = Path(directory)
    data = root / "data.jsonl"
    if not data.is_file():
        raise SpikecError(f"{data}: no such file (an evaluation folder needs data.jsonl)")
    out: list[EvalItem] = []
    with data.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{data}:{lineno}"
            rec = parse_json(line, where=where)
            if not isinstance(rec, dict):
                raise SpikecError(f"{where}: expected a JSON object")
            for key in REQUIRED_FIELDS:
                if not isinstance(rec.get(key), str):
                    raise SpikecError(f"{where}: missing or non-string {key!r}")
            rel = rec["image"]
            path = resolve_inside(root, rel, where=f"{where}: field 'image'")
            if not path.is_file():
                raise SpikecError(f"{where}: image {rel!r} not found")
            qtype = rec.get("type")
            extra = {k: v for k, v in rec.items() if k not in (*REQUIRED_FIELDS, "type")}
            out.append(
                EvalItem(
                    image_path=path,
                    image=rel,
                    prompt=rec["prompt"],
                    answer=rec["answer"],
                    qtype=qtype if isinstance(qtype, str) else None,
                    extra=extra,
                    source=where,
                )
            )
    return out
