"""The Python generation API: prompts with the image token, text-only prompts,
max_new_tokens, EOS first, non-finite logits; SpikecErrors with the CLI's wording."""

from __future__ import annotations

import numpy as np
import pytest

from spike_graphs import exported
from spikec.errors import SpikecError
from spikec.frontend.export import format_prompt, sample_image
from spikec.frontend.generate import OrtGenerator


class Spy:
    """A session wrapper that counts calls and may rewrite the logits."""

    def __init__(self, inner, logits=None):
        self.inner, self.logits, self.calls = inner, logits, 0
        self.input_names = [i.name for i in inner.get_inputs()]

    def get_inputs(self):
        return self.inner.get_inputs()

    def run(self, names, feeds):
        self.calls += 1
        out = self.inner.run(names, feeds)
        if self.logits is not None:
            out[0] = self.logits(out[0])
        return out


def _gen(name="tiny-llava", logits=None):
    gen = OrtGenerator(exported(name))
    gen.sessions = {role: Spy(s, logits if role == "lm" else None) for role, s in gen.sessions.items()}
    return gen


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_format_prompt_image_token(name):
    gen = OrtGenerator(exported(name))
    tok = gen.processor.image_token
    assert format_prompt(gen.adapter, gen.processor, f"look: {tok} what?") == f"look: {tok} what?"
    assert format_prompt(gen.adapter, gen.processor, "what?").count(tok) == 1
    assert tok not in format_prompt(gen.adapter, gen.processor, "what?", images=0)
    with pytest.raises(SpikecError, match=rf"--prompt: the prompt holds the image token '{tok}' 2 times, but one image is given"):
        format_prompt(gen.adapter, gen.processor, f"{tok} and {tok}")
    with pytest.raises(SpikecError, match=rf"'{tok}' 1 time, but no image is given"):
        format_prompt(gen.adapter, gen.processor, f"{tok} what?", images=0)
    with pytest.raises(SpikecError, match="--prompt: the prompt must be a string, not int"):
        format_prompt(gen.adapter, gen.processor, 3)


def test_image_token_once_is_where_the_image_goes():
    gen = _gen()
    tok = gen.processor.image_token
    a = gen.generate(sample_image(), f"{tok}\nwhat is it?", max_new_tokens=3)
    b = gen.generate(sample_image(), "what is it?", max_new_tokens=3)
    assert isinstance(a, str) and isinstance(b, str) and gen.sessions["vision"].calls == 2
    with pytest.raises(SpikecError, match="2 times, but one image is given"):
        gen.generate(sample_image(), f"{tok} {tok} what?")


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
def test_text_only_generation_skips_the_vision_graph(name):
    gen = _gen(name)
    out = gen.generate(None, "hello", max_new_tokens=3)
    assert isinstance(out, str) and gen.sessions["vision"].calls == 0 and gen.sessions["lm"].calls >= 1
    # the same prompt through prepare-less glue: the token ids are those of the bare prompt
    proc = gen.processor(text=["hello"], return_tensors="np")
    assert gen.image_token_id not in proc["input_ids"]


@pytest.mark.parametrize("value,msg", [
    (0, r"max_new_tokens \(--max-new-tokens\): 0 is not in the range 1<=x<=4096"),
    (-2, r"-2 is not in the range 1<=x<=4096"),
    (4097, r"max_new_tokens \(--max-new-tokens\): 4097 is not in the range 1<=x<=4096"),
    (10**9, r"1000000000 is not in the range 1<=x<=4096"),
    (1.5, r"must be an integer >= 1, got 1.5"),
    (True, r"must be an integer >= 1, got True"),
    ("4", r"must be an integer >= 1, got '4'"),
])
def test_max_new_tokens_refused_before_any_graph(value, msg):
    gen = _gen()
    with pytest.raises(SpikecError, match=msg):
        gen.generate(sample_image(), "what?", max_new_tokens=value)
    with pytest.raises(SpikecError, match=msg):
        gen.generate_ids({}, value)
    assert all(s.calls == 0 for s in gen.sessions.values())


def test_prompt_not_a_string():
    gen = _gen()
    for bad in (None, 3, ["what?"]):
        with pytest.raises(SpikecError, match="--prompt: the prompt must be a string"):
            gen.generate(sample_image(), bad)


def test_eos_first_gives_empty_answer():
    gen = _gen()
    gen.eos = gen.eos or {3}  # the tiny model's manifest may name none
    eos = min(gen.eos)

    def force_eos(logits):
        out = np.zeros_like(logits)
        out[..., eos] = 1.0
        return out

    gen.sessions["lm"].logits = force_eos
    assert gen.generate(sample_image(), "what?", max_new_tokens=5) == ""
    assert gen.generate(None, "what?", max_new_tokens=1) == ""
    assert gen.sessions["lm"].calls == 2  # stopped at the EOS: no decode step


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_logits_are_an_error(bad):
    def poison(logits):
        logits = logits.copy()
        logits[..., -1, 1] = bad
        return logits

    gen = _gen(logits=poison)
    with pytest.raises(SpikecError, match=r"graph 'lm': the logits of the prefill hold NaN or \+inf"):
        gen.generate(sample_image(), "what?", max_new_tokens=2)


def test_compiled_model_api():
    from test_ort_target import compiled

    from spikec.runtime.model import load

    with load(compiled("tiny-llava")) as model:
        assert isinstance(model.generate(None, "hello", max_new_tokens=2), str)
        with pytest.raises(SpikecError, match=r"max_new_tokens \(--max-new-tokens\): 0 is not in the range"):
            model.generate(sample_image(), "what?", max_new_tokens=0)
        with pytest.raises(SpikecError, match="2 times, but one image is given"):
            model.generate(sample_image(), "<image><image> what?")


def test_cli_text_only_prompt_matches_the_api(run_cli):
    """`spikec run M --prompt P` without --image generates text-only, as generate(None, P) does."""
    from test_ort_target import compiled

    from spikec.runtime.model import load

    path = compiled("tiny-llava")
    r = run_cli("run", path, "--prompt", "What is in the image?", "--max-new-tokens", "4")
    assert r.code == 0, r.err
    with load(path) as model:
        assert r.out.rstrip("\n") == model.generate(None, "What is in the image?", max_new_tokens=4)
    r = run_cli("run", path, "--image", str(sample_image_path(run_cli)), "--max-new-tokens", "4")
    assert r.code == 1 and "needs --prompt" in r.err


def sample_image_path(_run_cli):
    import tempfile
    from pathlib import Path

    p = Path(tempfile.mkdtemp(prefix="spikec-test-img-")) / "img.png"
    sample_image().save(p)
    return p


def test_generate_takes_arrays_and_lists():
    """generate: a uint8 array equals the same image as PIL; a list gives one answer per image;
    bad arrays and mismatched prompt lists are SpikecErrors."""
    from test_ort_target import compiled

    from spikec.runtime.model import load

    img = sample_image()
    with load(compiled("tiny-llava")) as model:
        one = model.generate(img, "What is in the image?", max_new_tokens=3)
        assert model.generate(np.asarray(img), "What is in the image?", max_new_tokens=3) == one
        assert model.generate([img, np.asarray(img)], "What is in the image?", max_new_tokens=3) == [one, one]
        assert model.generate([img], ["What is in the image?"], max_new_tokens=3) == [one]
        for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8)):
            with pytest.raises(SpikecError, match="image array"):
                model.generate(bad, "x")
        with pytest.raises(SpikecError, match="2 prompts for 1 images"):
            model.generate([img], ["a", "b"])


def test_prompt_longer_than_the_context_is_refused_before_running():
    """A prompt over the model's max_position_embeddings (512 for the tiny models) is a
    SpikecError before any graph runs (it ended in a 25 GB allocation failure)."""
    gen = _gen("tiny-llava")
    with pytest.raises(SpikecError, match=r"the prompt is \d+ tokens .* context of 512 tokens"):
        gen.generate(None, "a " * 3000, max_new_tokens=2)
    assert gen.sessions["lm"].calls == 0


def test_broken_tokenizer_names_the_processor_folder(tmp_path):
    import shutil

    out = tmp_path / "ex"
    shutil.copytree(exported("tiny-llava"), out)
    (out / "processor" / "tokenizer.json").write_text('{"model": 5}')
    with pytest.raises(SpikecError, match=r"processor: cannot load the processor, tokenizer or config files"):
        OrtGenerator(out)
