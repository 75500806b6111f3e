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

from spikec.errors import SpikecError
from spikec.frontend import manifest as mf

log = logging.getLogger(__name__)


class Session(Protocol):
    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def create_sessions(outdir: str | Path, manifest: dict | None = None, providers: list[str] | None = None) -> dict:
    """One onnxruntime InferenceSession per graph role in the manifest."""
    import onnxruntime as ort

    outdir = Path(outdir)
    manifest = manifest or mf.read(outdir)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = {}
    for role in manifest["graphs"]:
        path = mf.graph_path(outdir, manifest, role)
        if not path.is_file():
            raise SpikecError(f"{path}: graph file named by manifest.json is missing")
        sessions[role] = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    return sessions


class OrtGenerator:
    def __init__(self, outdir: str | Path, sessions: dict[str, Session] | None = None,
                 providers: list[str] | None = None):
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        from transformers import AutoConfig, AutoProcessor

        from spikec.frontend.adapters import adapter_by_family

        self.outdir = Path(outdir)
        self.manifest = mf.read(self.outdir)
        self.adapter = adapter_by_family(self.manifest["family"])
        proc_dir = mf.processor_path(self.outdir, self.manifest)
        if proc_dir is None or not proc_dir.is_dir():
            raise SpikecError(f"{self.outdir / mf.MANIFEST}: field 'processor' names no processor folder")
        self.processor = AutoProcessor.from_pretrained(proc_dir, local_files_only=True)
        self.config = AutoConfig.from_pretrained(proc_dir, local_files_only=True)
        self.sessions = sessions if sessions is not None else create_sessions(self.outdir, self.manifest, providers)
        lm = self.manifest["lm"]
        self.n_layers, self.n_kv, self.head_dim = lm["num_layers"], lm["num_kv_heads"], lm["head_dim"]
        self.image_token_id = self.manifest["merge"]["image_token_id"]
        self.modality = self.manifest["modality"]

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
        if "pixel_values" in proc_out and is_image.any():
            feats = self.image_features(proc_out)
            if feats.shape[0] != int(is_image.sum()):
                raise SpikecError(f"image features ({feats.shape[0]} rows) do not match the image tokens in the "
                                  f"prompt ({int(is_image.sum())}, token id {self.image_token_id})")
            embeds[is_image] = feats  # boolean indexing is row-major: the merge rule in the manifest
        modality = np.where(is_image, self.modality["vision"], self.modality["text"]).astype(np.int64)
        pos, state = self.adapter.prefill_position_ids(self.config, input_ids, mask, proc_out)
        return embeds, mask, pos, modality, state

    def empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.n_kv, 0, self.head_dim), np.float32) for _ in range(2 * self.n_layers)]

    def generate_ids(self, proc_out: dict, max_new_tokens: int, stop_at_eos: bool = True) -> np.ndarray:
        """Greedy decoding; returns the new token ids [batch, <= max_new_tokens]."""
        embeds, mask, pos, modality, state = self.prefill_inputs(proc_out)
        b = embeds.shape[0]
        logits, past = self.lm(embeds, mask, pos, modality, self.empty_past(b))
        eos = self.manifest.get("eos_token_id")
        eos = set(eos if isinstance(eos, list) else [eos]) if (stop_at_eos and eos is not None) else set()
        pad = self.processor.tokenizer.pad_token_id or 0
        done = np.zeros(b, bool)
        out = []
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1).astype(np.int64)
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
        """Image + prompt -> generated text (greedy)."""
        ids = self.generate_ids(self.prepare([image], [prompt]), max_new_tokens)
        return self.processor.tokenizer.decode(ids[0], skip_special_tokens=True)
