"""Reference greedy generation over the exported graphs, on ONNX Runtime.

    gen = OrtGenerator("out/")                       # sessions from out/manifest.json
    text = gen.generate(image, "What digit is this?", max_new_tokens=16)

The graphs are reached only through `sessions` (role -> object with ONNX Runtime's
`run(output_names, feeds)`), so a later target can pass its own compiled graphs
with the same I/O and reuse everything else: processor, merge, positions, cache loop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.frontend import manifest as mf
from spikec.progress import track

log = logging.getLogger(__name__)


class Session(Protocol):
    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def create_sessions(outdir: str | Path, manifest: dict | None = None, providers: list[str] | None = None) -> dict:
    """One onnxruntime InferenceSession per graph role in the manifest."""
    import onnxruntime as ort

    outdir = Path(outdir)
    manifest = manifest or mf.read(outdir)  # checked: roles and files (frontend.manifest.check_manifest)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {}
    for role in manifest["graphs"]:
        path = mf.graph_path(outdir, manifest, role)
        if not path.is_file():
            raise SpikecError(f"{path}: graph file named by manifest.json is missing")
        spir.check_model_file(path)  # external data inside the folder, before onnxruntime reads it
        sessions[role] = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    return sessions


def _input_names(session) -> set[str] | None:
    """A session's input names (onnxruntime's or spikec's own sessions), or None if unknown."""
    names = getattr(session, "input_names", None)
    if names is None and hasattr(session, "get_inputs"):
        names = [i.name for i in session.get_inputs()]
    return None if names is None else set(names)


class OrtGenerator:
    def __init__(self, outdir: str | Path, sessions: dict[str, Session] | None = None,
                 providers: list[str] | None = None):
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoConfig, AutoProcessor

        from spikec.frontend.adapters import adapter_by_family

        self.outdir = Path(outdir)
        self.manifest = mf.read(self.outdir)
        # every field read below, checked once (type and range), naming the file and field
        fields = mf.generation_fields(self.manifest, where=str(self.outdir / mf.MANIFEST))
        self.adapter = adapter_by_family(fields["family"])
        proc_dir = mf.processor_path(self.outdir, self.manifest)
        if proc_dir is None or not proc_dir.is_dir():
            raise SpikecError(f"{self.outdir / mf.MANIFEST}: field 'processor' names no processor folder")
        try:  # files someone else made: a broken tokenizer.json is a KeyError deep in transformers
            self.processor = AutoProcessor.from_pretrained(proc_dir, local_files_only=True)
            self.config = AutoConfig.from_pretrained(proc_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
            raise SpikecError(f"{proc_dir}: cannot load the processor, tokenizer or config files "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from None
        self.sessions = sessions if sessions is not None else create_sessions(self.outdir, self.manifest, providers)
        self.n_layers, self.n_kv, self.head_dim = fields["num_layers"], fields["num_kv_heads"], fields["head_dim"]
        self.image_token_id = fields["image_token_id"]
        self.modality = fields["modality"]
        self.eos = fields["eos"]
        self._check_graphs()

    def _check_graphs(self) -> None:
        """The graphs the generation loop calls exist, the LM takes the KV-cache inputs the
        manifest's `lm.num_layers` implies, and each graph has the inputs the manifest's
        `family` feeds it (a SpikecError naming the manifest field, rather than an error of
        the runtime or a KeyError of an adapter at the first call)."""
        where = f"{self.outdir / mf.MANIFEST}"
        for role in ("embed", "lm"):
            if role not in self.sessions:
                raise SpikecError(f"{where}: field 'graphs' has no '{role}' graph, which generation needs")
        names = _input_names(self.sessions["lm"])
        if names is not None:
            missing = [n for n in mf.past_names(self.n_layers) if n not in names]
            if missing:
                raise SpikecError(f"{where}: field 'lm.num_layers' = {self.n_layers} implies KV-cache inputs the "
                                  f"'lm' graph does not have (e.g. '{missing[0]}')")
        # the graphs themselves (not only the manifest's declaration of them, checked by
        # check_manifest) take what this family's adapter feeds them
        family = self.manifest["family"]
        for role, wanted in (("vision", mf.VISION_INPUTS.get(family, ())), ("embed", mf.EMBED_INPUTS),
                             ("lm", mf.LM_INPUTS)):
            names = _input_names(self.sessions[role]) if role in self.sessions else None
            missing = [n for n in wanted if n not in names] if names is not None else []
            if missing:
                raise SpikecError(f"{where}: field 'family' = {family!r} feeds the '{role}' graph an input "
                                  f"{missing[0]!r} it does not have (its inputs: {sorted(names)[:8]})")

    # ---- inputs -------------------------------------------------------------------
    def prepare(self, images: list, prompts: list[str]) -> dict:
        """Processor outputs for a batch of (image, prompt) pairs (one image per prompt)."""
        from spikec.frontend.export import processor_inputs

        return processor_inputs((self.adapter, self.processor), images, prompts)

    # ---- graph calls --------------------------------------------------------------
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed"].run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def image_features(self, proc_out: dict) -> np.ndarray:
        feeds = self.adapter.vision_feeds(self.config, proc_out)
        return self.sessions["vision"].run(None, feeds)[0]

    def lm(self, embeds, attention_mask, position_ids, modality, past: list[np.ndarray]):
        feeds = {"inputs_embeds": embeds.astype(np.float32), "attention_mask": attention_mask.astype(np.int64),
                 "position_ids": position_ids.astype(np.int64), "modality": modality.astype(np.int64)}
        feeds.update(zip(mf.past_names(self.n_layers), past))
        out = self.sessions["lm"].run(None, feeds)
        return out[0], out[1:]

    # ---- host glue ----------------------------------------------------------------
    def prefill_inputs(self, proc_out: dict):
        """(inputs_embeds, attention_mask, position_ids, modality, position state) for the prefill."""
        from spikec.frontend.adapters.base import to_numpy

        input_ids = to_numpy(proc_out["input_ids"]).astype(np.int64)
        mask = to_numpy(proc_out.get("attention_mask", np.ones_like(input_ids))).astype(np.int64)
        embeds = self.embed(input_ids)
        is_image = input_ids == self.image_token_id
        if is_image.any() and "pixel_values" not in proc_out:
            raise SpikecError(f"the prompt holds {int(is_image.sum())} image token(s) (id {self.image_token_id}) "
                              "but no image was given")
        if "pixel_values" in proc_out and is_image.any():
            feats = self.image_features(proc_out)
            if feats.shape[0] != int(is_image.sum()):
                raise SpikecError(f"image features ({feats.shape[0]} rows) do not match the image tokens in the "
                                  f"prompt ({int(is_image.sum())}, token id {self.image_token_id})")
            embeds[is_image] = feats  # boolean indexing is row-major: the merge rule in the manifest
        modality = np.where(is_image, self.modality["vision"], self.modality["text"]).astype(np.int64)
        pos, state = self.adapter.prefill_position_ids(self.config, input_ids, mask, proc_out)
        return embeds, mask, pos, modality, state

    def _check_context(self, prompt: int, new: int) -> None:
        """SpikecError when the prompt (tokens, image tokens included) is longer than the
        language model's context (its config's max_position_embeddings), before any graph
        runs: those positions were never trained, and a long prompt's attention scores can
        need more memory than the machine has. A prompt that fits but leaves less room than
        --max-new-tokens gets a warning (generation often stops at EOS well before)."""
        text = getattr(self.config, "text_config", None) or self.config
        limit = getattr(text, "max_position_embeddings", None)
        if not isinstance(limit, int) or limit <= 0:
            return
        if prompt > limit:
            raise SpikecError(f"the prompt is {prompt} tokens (image tokens included), more than this model's context "
                              f"of {limit} tokens (max_position_embeddings); shorten the prompt")
        if prompt + new > limit:
            log.warning("the prompt (%d tokens) and --max-new-tokens %d pass this model's context of %d tokens: "
                        "tokens beyond it use positions the model was not trained on", prompt, new, limit)

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.n_kv, 0, self.head_dim), np.float32) for _ in range(2 * self.n_layers)]

    def generate_ids(self, proc_out: dict, max_new_tokens: int, stop_at_eos: bool = True) -> np.ndarray:
        """Greedy decoding; returns the new token ids int64 [batch, 1 .. max_new_tokens]
        (the EOS that stopped a row included; rows done earlier are padded).

        max_new_tokens: an int in 1..MAX_NEW_TOKENS (4096, the CLI's range); anything else (0,
        negative, above the range, a float, a bool, a str) raises SpikecError
        "max_new_tokens (--max-new-tokens): ...", as the CLI refuses it.
        Logits holding NaN or +inf (a non-finite activation propagated through the model,
        docs/passes.md "Non-finite activations") raise SpikecError naming the step, instead
        of an argmax over NaN picking an arbitrary token."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
            raise SpikecError(f"max_new_tokens (--max-new-tokens): must be an integer >= 1, got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise SpikecError(f"max_new_tokens (--max-new-tokens): {int(max_new_tokens)} is not in the range "
                              f"1<=x<={mf.MAX_NEW_TOKENS} (generation makes at least one token; an EOS first gives "
                              "an empty answer)")
        if max_new_tokens > mf.MAX_NEW_TOKENS:
            raise SpikecError(f"max_new_tokens (--max-new-tokens): {int(max_new_tokens)} is not in the range "
                              f"1<=x<={mf.MAX_NEW_TOKENS}")

        def checked(logits: np.ndarray, step: int) -> np.ndarray:
            last = np.asarray(logits)[:, -1]
            if np.isnan(last).any() or np.isposinf(last).any():
                where = "prefill" if step == 0 else f"decode step {step}"
                raise SpikecError(f"graph 'lm': the logits of the {where} hold NaN or +inf (a non-finite activation "
                                  "reached the output; see docs/passes.md, 'Non-finite activations'); no token chosen")
            return logits

        embeds, mask, pos, modality, state = self.prefill_inputs(proc_out)
        b = embeds.shape[0]
        self._check_context(embeds.shape[1], max_new_tokens)
        logits, past = self.lm(embeds, mask, pos, modality, self.empty_past(b))
        eos = self.eos if stop_at_eos else set()
        pad = self.processor.tokenizer.pad_token_id or 0
        done = np.zeros(b, bool)
        out = []
        # a bar over the tokens on a terminal when decoding is slow (the fpga target's
        # simulator or RTL, a 7B model): shown after 1 s, cleared when done
        for step in track(range(max_new_tokens), "generate", "token", leave=False, delay=1.0):
            nxt = checked(logits, step)[:, -1].argmax(-1).astype(np.int64)
            nxt = np.where(done, pad, nxt)
            out.append(nxt)
            done |= np.isin(nxt, list(eos)) if eos else False
            if done.all() or step == max_new_tokens - 1:
                break
            mask = np.concatenate([mask, np.ones((b, 1), np.int64)], axis=1)
            pos = self.adapter.decode_position_ids(self.config, mask, state)
            text = np.full((b, 1), self.modality["text"], np.int64)
            logits, past = self.lm(self.embed(nxt[:, None]), mask, pos, text, past)
            log.debug("decode step %d", step + 1)
        return np.stack(out, axis=1)

    def generate(self, image: Any, prompt: str, max_new_tokens: int = 32) -> str:
        """Image + prompt -> generated text (greedy); the text before the first EOS ("" when
        EOS comes first).

        image: a PIL image, or None for a text-only prompt: the prompt is laid out without an
        image (spikec.frontend.export.format_prompt with images=0) and the vision graph is
        not called. Every family's processor here takes text alone (LLaVA, Qwen2-VL,
        Qwen2.5-VL, InternVL, Idefics3); one that refuses raises SpikecError naming the family.
        prompt: a str (SpikecError otherwise); the image token typed into it is handled as
        format_prompt documents (once: where the image goes; more often: SpikecError).
        max_new_tokens: an int >= 1 (SpikecError otherwise; see generate_ids).
        """
        from spikec.frontend.export import format_prompt

        if not isinstance(prompt, str):
            raise SpikecError(f"--prompt: the prompt must be a string, not {type(prompt).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or not 1 <= max_new_tokens <= mf.MAX_NEW_TOKENS:
            self.generate_ids({}, max_new_tokens)  # raises its message, before any graph runs
        if image is None:
            text = format_prompt(self.adapter, self.processor, prompt, images=0)
            try:
                proc = dict(self.processor(text=[text], return_tensors="pt", padding=True))
            except (ValueError, TypeError) as exc:
                family = self.adapter.family or type(self.processor).__name__
                raise SpikecError(f"the {family} processor needs an image (give one; text-only prompts are refused "
                                  f"there): {' '.join(str(exc).split())[:200]}") from None
        else:
            proc = self.prepare([image], [prompt])
        unk = getattr(self.processor.tokenizer, "unk_token_id", None)
        unknown = int((np.asarray(proc["input_ids"]) == unk).sum()) if unk is not None and "input_ids" in proc else 0
        if unknown:
            # a word-level vocabulary (the bundled models') maps unknown words to <unk> silently;
            # the answer to such a prompt is not one the model was trained to give
            log.warning("the prompt has %d token(s) the tokenizer does not know (%s): the model sees them as one "
                        "unknown token", unknown, self.processor.tokenizer.unk_token)
        row = [int(t) for t in self.generate_ids(proc, max_new_tokens)[0]]
        eos = set(self.eos)
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        return self.processor.tokenizer.decode(row[:cut], skip_special_tokens=True)
