"""`spikec.load(path)`: one Python API over a compiled model, whatever the target.

    model = spikec.load("model.sbin")                 # target "ort", fused mode
    print(model.generate(image, "What digit is this?"))
    outputs = model.run({"inputs_embeds": ...}, graph="lm")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from spikec import ops as sops
from spikec.errors import SpikecError

TARGETS = ("ort", "fpga")


class CompiledModel:
    """A .sbin opened on a target. Close it (or use `with`) to release the file."""

    def __init__(self, path: str | os.PathLike, *, target: str = "ort", mode: str = "fused",
                 threads: int | None = None, device: str = "sim") -> None:
        from spikec.package import SbinModel
        from spikec.runtime import ort_target

        if target not in TARGETS:
            raise SpikecError(f"--target: '{target}' is not available (targets: {', '.join(TARGETS)})")
        self.path = Path(path)
        self.target, self.mode = target, mode
        self.sbin = SbinModel(self.path)
        self.manifest = self.sbin.manifest
        self.runner = None
        try:
            if target == "fpga":
                from spikec.runtime import fpga_target

                self.sessions, self.runner = fpga_target.create_sessions(self.sbin, device)
            else:
                self.sessions = ort_target.create_sessions(self.sbin, mode, threads or ort_target.default_threads())
        except BaseException:
            self.sbin.close()
            raise
        self._generator = None

    @property
    def modality_names(self) -> list[str]:
        table = self.manifest.get("modality") or sops.MODALITY_IDS
        return [name for name, _ in sorted(table.items(), key=lambda kv: kv[1])]

    def check_generates(self) -> None:
        """SpikecError unless this model can generate text: a .sbin compiled from an export
        folder (vision, embed and lm graphs, a processor). One compiled from a single ONNX
        file holds one graph and no processor: it runs raw tensors only (`run`, --inputs)."""
        from spikec.frontend.manifest import FORMAT

        if self.manifest.get("format") != FORMAT:
            source = self.manifest.get("source")
            raise SpikecError(
                f"{self.path}: holds {'a single graph' if len(self.sessions) == 1 else 'graphs'} "
                f"({', '.join(sorted(self.sessions))}) compiled from one ONNX file"
                f"{f' ({source})' if isinstance(source, str) else ''}, not from an export folder, so it cannot "
                "generate text from an image and a prompt: run it on raw tensors (--inputs FILE.npz), or compile "
                "the export folder of `spikec export` for generation")

    def generator(self):
        """The front end's greedy generation loop, driven by this target's sessions.
        Raises SpikecError for a model that cannot generate (`check_generates`)."""
        if self._generator is None:
            self.check_generates()
            from spikec.frontend.generate import OrtGenerator

            # the manifest and processor are read from a temporary folder: errors name the .sbin
            with self.sbin.naming_files():
                self._generator = OrtGenerator(self.sbin.folder(), sessions=self.sessions)
        return self._generator

    @property
    def default_max_new_tokens(self) -> int:
        """The checkpoint's generation_config `max_new_tokens` as exported (manifest field,
        1..4096), else 32."""
        value = self.manifest.get("max_new_tokens")
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 32

    def generate(self, image: Any, prompt: str | list[str], max_new_tokens: int | None = None) -> str | list[str]:
        """Image (a PIL image, a path, a uint8 array, or None for a text-only prompt) + prompt
        -> text, greedy. A list of images (with one prompt, or a list of as many) gives a
        list of answers, generated one after the other. max_new_tokens None: the
        checkpoint's own (`default_max_new_tokens`).

        The text before the first EOS: "" when the model answers EOS first. A path is read by
        `spikec.images.load_image` (8-bit RGB; high-depth images scaled, decompression bombs
        and corrupt files refused). None: the prompt alone, the vision graph is not called
        (`OrtGenerator.generate`). Raises SpikecError, with the CLI's wording, for: a file
        that cannot be read or that the processor refuses ("--image PATH: ..."); a prompt
        that is not a str, or that holds the image token more often than images are given
        ("--prompt: ..."); max_new_tokens that is not an int in 1..4096 ("max_new_tokens
        (--max-new-tokens): ..."; 0 and 4097 are refused, as by the CLI); a processor that needs an
        image when image is None (naming the family); logits that hold NaN or +inf; a model
        compiled from a single ONNX file, which runs raw tensors only (`check_generates`),
        before the image is read.
        """
        self.check_generates()
        if max_new_tokens is None:
            max_new_tokens = self.default_max_new_tokens
        if isinstance(image, (list, tuple)):
            # a batch: generated one after the other (the same answers as one at a time)
            prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt] * len(image)
            if len(prompts) != len(image):
                raise SpikecError(f"--prompt: {len(prompts)} prompts for {len(image)} images; give one prompt, or "
                                  f"one per image")
            return [self.generate(i, p, max_new_tokens) for i, p in zip(image, prompts)]
        if isinstance(image, np.ndarray):
            image = image_from_array(image)
        if isinstance(image, (str, os.PathLike)):
            from spikec.images import naming_image

            path = image
            image = load_image(path)
            with naming_image(path, where=f"--image {path}"), self.sbin.naming_files():
                return self.generator().generate(image, prompt, max_new_tokens=max_new_tokens)
        with self.sbin.naming_files():  # an error about the processor's files names the .sbin
            return self.generator().generate(image, prompt, max_new_tokens=max_new_tokens)

    def run(self, feeds: dict[str, np.ndarray], graph: str | None = None) -> dict[str, np.ndarray]:
        """Raw tensors through one graph (by role; the only graph if there is one)."""
        if graph is None:
            if len(self.sessions) != 1:
                raise SpikecError(f"--graph: choose one of {', '.join(sorted(self.sessions))}")
            graph = next(iter(self.sessions))
        sess = self.sessions.get(graph)
        if sess is None:
            raise SpikecError(f"--graph: no graph '{graph}' (graphs: {', '.join(sorted(self.sessions))})")
        outs = sess.run(None, feeds)
        return dict(zip(sess.output_names, outs))

    def stats(self) -> dict:
        """Spike statistics accumulated so far (exact mode records them)."""
        from spikec.runtime.ort_target import spike_stats

        if self.target == "fpga":
            from spikec.runtime.fpga_target import report

            return report(self.runner)
        if self.mode != "exact":
            raise SpikecError("spike statistics need mode='exact' (bit-identical to fused, but it counts spikes)")
        return spike_stats(self.sessions, self.modality_names)

    def close(self) -> None:
        self.sbin.close()

    def __enter__(self) -> "CompiledModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_from_array(a: np.ndarray):
    """A numpy image as a PIL RGB image: uint8 [H, W] (grayscale), [H, W, 3] (RGB) or
    [H, W, 4] (RGBA), H and W at least 1. Raises SpikecError for any other dtype or shape
    (scale float images to 0..255 uint8 first)."""
    from PIL import Image

    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise SpikecError(f"image array: expected uint8 [H, W], [H, W, 3] or [H, W, 4], got {a.dtype} {list(a.shape)}")
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


def load_image(path: str | os.PathLike, *, where: str | None = None):
    """An image file as an 8-bit RGB PIL image: `spikec.images.load_image`.

    Kept here for the code that imports it from this module. `where` defaults to
    "--image PATH"; errors are SpikecErrors naming the file (see spikec.images).
    """
    from spikec import images

    return images.load_image(path, where=f"--image {path}" if where is None else where)


def load(path: str | os.PathLike, *, target: str = "ort", mode: str = "fused", threads: int | None = None,
         device: str = "sim") -> CompiledModel:
    """Open a compiled model (.sbin) on a target ("fpga": spiking products on `device`)."""
    return CompiledModel(path, target=target, mode=mode, threads=threads, device=device)
