"""Every target gives the same bits: `--target ort`, `--target fpga` on the simulator and on the RTL.

Checkpoints saved by transformers in bf16 and fp16 (Qwen2-VL, InternVL and LLaVA layouts,
random weights) put many activations near rounding ties, where a last-bit difference in a
norm, a softmax or a host op's libm turns into a different spike code and then a
different token (issue 15). Compiled at Tv/Tt = 3/4 with `--isa`, the vision features,
the prefill logits and 8 greedy tokens are identical bit for bit on every target:
spikec.vec functions give the vector functions one numeric (tests/test_vec_numerics.py),
and the fpga target runs its host ops on onnxruntime like the ORT target
(runtime/host_segments.py). Three models in the default suite, the other three and the
RTL co-simulation in the slow one. The bundled model (models/digits-llava, float32
weights) on test images too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikec.compiler import compile_path
from spikec.frontend.export import export, sample_image
from spikec.frontend.tiny import build_tiny
from spikec.passes.options import SpikeOptions
from spikec.runtime.model import load

PROMPT = "describe the image"
FAST = [("tiny-qwen2-vl", "bfloat16"), ("tiny-internvl", "float16"), ("tiny-llava", "bfloat16")]
SLOW = [("tiny-qwen2-vl", "float16"), ("tiny-internvl", "bfloat16"), ("tiny-llava", "float16")]


def _compiled(name: str, dtype: str, spike_attention: bool = False) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"spikec-agree-{name}-{dtype}-"))
    torch.manual_seed(0)
    model, processor = build_tiny(name)
    model.to(getattr(torch, dtype)).save_pretrained(root / "ckpt")
    processor.save_pretrained(root / "ckpt")
    export(str(root / "ckpt"), root / "export")
    out = root / "m.sbin"
    compile_path(root / "export", out, options=SpikeOptions(tv=3, tt=4, spike_attention=spike_attention).validate(),
                 isa=True)
    return out


def _run(path: Path, target: str, device: str = "sim", tokens: int = 8, images=None, prompts=None):
    kw = {"device": device} if target == "fpga" else {}
    with load(path, target=target, **kw) as model:
        g = model.generator()
        po = g.prepare(images or [sample_image()], prompts or [PROMPT])
        embeds, mask, pos, modality, _ = g.prefill_inputs(po)
        logits, _ = g.lm(embeds, mask, pos, modality, g.empty_past(embeds.shape[0]))
        ids = g.generate_ids(po, tokens, stop_at_eos=False)
    return embeds, logits, ids


def _assert_same(a, b, what: str) -> None:
    for x, y, part in zip(a, b, ("vision features in the prompt embeddings", "prefill logits", "tokens")):
        assert x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{what}: {part} differ"


def _check(name: str, dtype: str) -> None:
    path = _compiled(name, dtype)
    ort = _run(path, "ort")
    assert np.isfinite(ort[1]).all() and ort[2].shape == (1, 8)
    _assert_same(ort, _run(path, "fpga"), f"{name} {dtype}: ort vs fpga (simulator)")


@pytest.mark.parametrize("name,dtype", FAST, ids=[f"{n}-{d}" for n, d in FAST])
def test_ort_and_the_simulator_give_the_same_bits(name, dtype):
    _check(name, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("name,dtype", SLOW, ids=[f"{n}-{d}" for n, d in SLOW])
def test_ort_and_the_simulator_give_the_same_bits_slow(name, dtype):
    _check(name, dtype)


def test_the_bundled_model_gives_the_same_bits():
    from spikec.datasets.digits import load_digit_images, make_items, render_image

    root = Path(tempfile.mkdtemp(prefix="spikec-agree-digits-"))
    export(str(Path(__file__).resolve().parents[1] / "models" / "digits-llava"), root / "export")
    path = root / "m.sbin"
    compile_path(root / "export", path, options=SpikeOptions(tv=3, tt=4).validate(), isa=True)
    images = load_digit_images()[0]
    items = make_items("test")[:8:3]  # three questions of different types
    pics, prompts = [render_image(images[i.index]) for i in items], [i.prompt for i in items]
    ort = _run(path, "ort", tokens=3, images=pics, prompts=prompts)
    _assert_same(ort, _run(path, "fpga", tokens=3, images=pics, prompts=prompts), "digits-llava: ort vs fpga")


@pytest.mark.slow
def test_spiking_attention_and_the_rtl_give_the_same_bits():
    path = _compiled("tiny-qwen2-vl", "bfloat16", spike_attention=True)
    ort = _run(path, "ort", tokens=3)
    _assert_same(ort, _run(path, "fpga", tokens=3), "spike attention: ort vs fpga (simulator)")
    _assert_same(ort, _run(path, "fpga", device="rtl", tokens=3), "spike attention: ort vs fpga (RTL)")

