"""The evaluation harness: exact-match accuracy of a model on an evaluation folder.

An evaluation folder is `DIR/data.jsonl` (one object a line: "image" relative to DIR,
"prompt", "answer", optional "type") plus the images; see docs/default-model.md.
The model under test is any of:

- a Hugging Face checkpoint folder (float, transformers' own `generate`),
- an export folder of `spikec export` (float graphs on onnxruntime),
- a compiled .sbin (spiking graphs on a target: `ort`, fused or exact mode, or `fpga`: the
  spiking products on the accelerator's simulator or RTL co-simulation, a model compiled
  with --isa).

All three see the same inputs: the checkpoint's processor and the front end's prompt
format (`spikec.frontend.export.processor_inputs`), greedy decoding, and the answer is
the decoded new text, stripped. Accuracy is exact match, overall and per type; the
benchmarks' metrics (`spikec.metrics`: exact match, ANLS as DocVQA, VQA accuracy as
TextVQA against the optional "answers" reference list) are kept overall and per type too.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from spikec.errors import SpikecError
from spikec.schema import parse_json
from spikec.paths import resolve_inside

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    model: str
    data: str
    total: int
    correct: int
    by_type: dict[str, list[int]] = field(default_factory=dict)  # type -> [correct, total]
    predictions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # type -> metric name (spikec.metrics.METRICS) -> sum of the per-item scores in [0, 1]
    metric_sums: dict[str, dict[str, float]] = field(default_factory=dict)

    def metrics(self, qtype: str | None = None) -> dict[str, float]:
        """Mean exact match, ANLS and VQA accuracy (each in [0, 1]) over all items, or over one type."""
        from spikec.metrics import METRICS

        types = [qtype] if qtype is not None else list(self.by_type)
        n = sum(self.by_type[t][1] for t in types if t in self.by_type)
        return {m: (sum(self.metric_sums.get(t, {}).get(m, 0.0) for t in types) / n if n else 0.0) for m in METRICS}

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {
            "model": self.model, "data": self.data, "total": self.total, "correct": self.correct,
            "accuracy": self.accuracy, "seconds": round(self.seconds, 3),
            "by_type": {t: {"correct": c, "total": n, "accuracy": c / n if n else 0.0, "metrics": self.metrics(t)}
                        for t, (c, n) in sorted(self.by_type.items())},
            "metrics": self.metrics(),
        }


def load_items(data_dir: str | os.PathLike) -> list[dict]:
    """Read DIR/data.jsonl, checking every line names an existing image, a prompt and an answer.

    Returns the JSON objects in order, each with "image_path" (the image, resolved inside
    DIR) and "line" (its line number in data.jsonl) added. Raises SpikecError naming the
    file and line. The images themselves are read later, by `evaluate`.
    """
    data_dir = Path(data_dir)
    path = data_dir / "data.jsonl"
    if not path.is_file():
        raise SpikecError(f"--data {data_dir}: no data.jsonl (see docs/default-model.md for the layout)")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        obj = parse_json(line, where=f"{path}:{n}")
        if not isinstance(obj, dict):
            raise SpikecError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        for key in ("image", "prompt", "answer"):
            if not isinstance(obj.get(key), str):
                raise SpikecError(f"{path}:{n}: field '{key}' missing or not a string")
        if "answers" in obj:  # optional reference answers (VQA accuracy, ANLS)
            refs = obj["answers"]
            if not isinstance(refs, list) or not refs or not all(isinstance(a, str) for a in refs):
                raise SpikecError(f"{path}:{n}: field 'answers' must be a non-empty list of strings")
        if "type" in obj and not isinstance(obj["type"], str):
            raise SpikecError(f"{path}:{n}: field 'type' must be a string")
        image = resolve_inside(data_dir, obj["image"], where=f"{path}:{n}: field 'image'")
        if not image.is_file():
            raise SpikecError(f"{path}:{n}: image '{obj['image']}' not found inside {data_dir}")
        obj["image_path"] = image
        obj["line"] = n  # for error messages: f"--data {path}:{line}"
        items.append(obj)
    if not items:
        raise SpikecError(f"{path}: no items")
    return items


Predictor = Callable[[object, str], str]


def _float_predictor(folder: Path, max_new_tokens: int) -> Predictor:
    import torch

    from spikec.frontend.export import processor_inputs
    from spikec.frontend.loading import load

    loaded = load(folder)

    def predict(image, prompt: str) -> str:
        inputs = processor_inputs((loaded.adapter, loaded.processor), [image], [prompt])
        with torch.no_grad():
            out = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return loaded.processor.tokenizer.decode(new, skip_special_tokens=True)

    return predict


def _onnx_predictor(folder: Path, max_new_tokens: int) -> Predictor:
    from spikec.frontend.generate import OrtGenerator

    gen = OrtGenerator(folder)
    return lambda image, prompt: gen.generate(image, prompt, max_new_tokens=max_new_tokens)


def predictor_for(model: str | os.PathLike, *, target: str = "ort", mode: str = "fused",
                  max_new_tokens: int = 8, device: str = "sim") -> tuple[Predictor, str, object]:
    """(predict(image, prompt) -> text, kind, handle) for a checkpoint, export folder or .sbin
    (run on `target`, "ort" or "fpga"; `device` "sim" or "rtl" with "fpga"). SpikecError
    when `target` or `device` is given for a model that is not a .sbin."""
    path = Path(model)
    from spikec.isa.container import is_sbin

    if not path.exists():
        raise SpikecError(f"{path}: no such file or folder")

    if path.is_file() and is_sbin(path):
        from spikec.runtime.model import load

        from spikec.schema import naming_file, parse_json

        with naming_file(path):  # a load error names its file, as `spikec run`'s
            compiled = load(path, target=target, mode=mode, device=device)
        kind = f"sbin/{target}/{mode}" + (f"/{device}" if target == "fpga" else "")
        return (lambda image, prompt: compiled.generate(image, prompt, max_new_tokens=max_new_tokens)), kind, compiled
    if target != "ort":
        raise SpikecError(f"{path}: --target {target} runs a compiled .sbin; this is not one")
    if path.is_dir() and (path / "manifest.json").is_file():
        return _onnx_predictor(path, max_new_tokens), "onnx", None
    if path.is_dir() and (path / "config.json").is_file():
        return _float_predictor(path, max_new_tokens), "float", None
    raise SpikecError(f"{path}: not a .sbin, an export folder (manifest.json) or a checkpoint folder (config.json)")


# the per-type row of items whose data.jsonl line has no "type" (not "all": that is the total)
UNTYPED = "untyped"


def evaluate(model: str | os.PathLike, data_dir: str | os.PathLike, *, target: str = "ort", mode: str = "fused",
             limit: int | None = None, max_new_tokens: int = 8,
             progress: Callable[[int, int], None] | None = None, device: str = "sim") -> EvalResult:
    """Exact-match accuracy of `model` on the evaluation folder `data_dir`.

    Each image is read by `spikec.images.load_image`; an image that cannot be read, or
    that the model's processor refuses, raises SpikecError "--data DIR/data.jsonl:N:
    <image file>: ..." naming the line and the file.
    """
    from spikec.images import load_image, naming_image
    from spikec.metrics import score
    from spikec.progress import progress_bar

    items = load_items(data_dir)
    if limit is not None:
        items = items[:limit]
    predict, kind, handle = predictor_for(model, target=target, mode=mode, max_new_tokens=max_new_tokens, device=device)
    result = EvalResult(model=f"{model} ({kind})", data=str(data_dir), total=0, correct=0)
    by_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    start = time.perf_counter()
    bar = progress_bar(len(items), "eval", "item")  # a bar on a terminal only
    try:
        for i, item in enumerate(items):
            where = f"--data {Path(data_dir) / 'data.jsonl'}:{item['line']}"
            image = load_image(item["image_path"], where=where)
            with naming_image(item["image_path"], where=where):
                text = predict(image, item["prompt"]).strip()
            ok = text == item["answer"].strip()
            result.total += 1
            result.correct += ok
            qtype = item.get("type", UNTYPED)
            t = by_type[qtype]
            t[0] += ok
            t[1] += 1
            sums = result.metric_sums.setdefault(qtype, {})
            for name, value in score(text, item["answer"], item.get("answers")).items():
                sums[name] = sums.get(name, 0.0) + value
            result.predictions.append(text)
            bar.update()
            if progress is not None:
                progress(i + 1, len(items))
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    result.by_type = dict(by_type)
    result.seconds = time.perf_counter() - start
    return result


def agreement(a: Iterable[str], b: Iterable[str]) -> tuple[int, int]:
    """(items with identical predictions, items) of two runs over the same data."""
    pairs = list(zip(a, b))
    return sum(x == y for x, y in pairs), len(pairs)
