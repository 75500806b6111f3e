"""The export driver: a loaded model -> vision.onnx, embed.onnx, lm.onnx + manifest.json.

Why these choices:
- torch.onnx.export(dynamo=True): the legacy exporter fails on some vision towers and
  is deprecated.
- opset 18 (DEFAULT_OPSET): linear layers come out as MatMul(x, W) (+Add) with W an
  initializer and attention as explicit MatMul/Softmax/MatMul, which is what the
  compiler's spiking rewrites match. Opset 23 would fuse attention into `Attention`
  and norms into `RMSNormalization`; we avoid it rather than teach every pass both forms.
- Eager attention (set at load time) so Q@K^T and P@V are visible MatMuls.
- One language-model graph for prefill and decode: past length 0 on prefill.
- Weights are written as external data next to each graph and stay initializers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from spikec.atomic import atomic_path, check_output, is_spikec_folder
from spikec.frontend import manifest as mf
from spikec.frontend.loading import Loaded, load

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
PROCESSOR_DIR = "processor"
# transformers' shape assertions (aten._is_all_true) have no ONNX translation; the
# exported graph never needs them (the host checks token counts when it merges).
os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"


def sample_image(width: int = 64, height: int = 48):
    """A deterministic RGB test image (gradient + stripes)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), ((x // 4 + y // 4) % 2) * 255], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def format_prompt(adapter, processor, prompt: str, images: int = 1) -> str:
    """The processor's text for `images` images (1, or 0 for a text-only prompt) + `prompt`.

    The image placeholder typed into a prompt (the processor's image token: `<image>` for
    LLaVA, `<|image_pad|>` for Qwen2-VL, ...) is handled as the processors document it:
    - once, with one image: the prompt is used as is, the image goes where the token is
      (so a prompt can carry its own layout, e.g. "USER: <image>\nwhich digit? ASSISTANT:");
    - more often than images are given (twice for one image, or at all for a text-only
      prompt): SpikecError "--prompt: ... holds the image token ... N times ...";
    - absent: the checkpoint's chat template (if any) lays out the turn, else the family
      default layout (adapter.prompt_layout); a text-only prompt without a chat template
      is used as is.
    Raises SpikecError naming --prompt for a prompt that is not a str.
    """
    from spikec.errors import SpikecError

    if not isinstance(prompt, str):
        raise SpikecError(f"--prompt: the prompt must be a string, not {type(prompt).__name__}")
    image_token = processor.image_token
    count = prompt.count(image_token) if image_token else 0
    if count > images:
        given = "one image is given" if images == 1 else f"{images} images are given" if images else "no image is given"
        allowed = "at most once, where the image goes," if images == 1 else "not at all" if not images else f"at most {images} times"
        raise SpikecError(f"--prompt: the prompt holds the image token {image_token!r} {count} time{'s' if count != 1 else ''}, but {given}; "
                          f"write it {allowed} or leave it out (spikec places the image itself)")
    if count:
        return prompt
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"}] * images + [{"type": "text", "text": prompt}]
        messages = [{"role": "user", "content": content}]
        try:
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # a template that expects other fields: fall back
            log.debug("chat template failed (%s); using the family's default layout", exc)
    if not images:
        return prompt
    return adapter.prompt_layout.format(image=image_token, prompt=prompt)


def processor_inputs(loaded_or_parts, images, prompts: list[str]) -> dict:
    """The checkpoint's processor on one image per prompt: a dict of torch tensors.

    `loaded_or_parts` is (adapter, processor); `images` are PIL images (read files with
    `spikec.images.load_image`), `prompts` the bare questions (see `format_prompt`).
    Raises `spikec.images.ProcessorRefusedImage` (a SpikecError), "image WxH: the
    <family> processor refuses it: <its message>", when the processor raises ValueError
    or TypeError (Qwen2-VL: an aspect ratio over 200, or a side under its factor); a
    caller that knows the file adds its name with `spikec.images.naming_image`.
    """
    adapter, processor = loaded_or_parts
    texts = [format_prompt(adapter, processor, p) for p in prompts]
    flat = list(images) if images is not None else []
    if adapter.images_per_prompt_nested and images is not None:
        images = [[image] for image in images]  # one list of images per prompt (SmolVLM insists)
    try:
        return dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    except (ValueError, TypeError) as exc:
        from spikec.images import ProcessorRefusedImage

        sizes = ", ".join(f"{im.size[0]}x{im.size[1]}" if isinstance(getattr(im, "size", None), tuple)  # PIL: (w, h)
                          else type(im).__name__ for im in flat)
        what = f"image {sizes}" if len(flat) == 1 else f"images {sizes}" if flat else "input without an image"
        family = adapter.family or type(processor).__name__
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ProcessorRefusedImage(f"{what}: the {family} processor refuses it: {message}") from None


def _export_graph(module, kwargs: dict, output_names: list[str], dynamic_shapes, opset: int, weights=None, *,
                  args: tuple = (), input_names: list[str] | None = None):
    """torch.onnx.export (dynamo) of `module`, optimized as torch.onnx would. With `weights`
    (streaming.CheckpointWeights) the module is a trace model without weight values: the
    graph is exported unoptimized, bound to the checkpoint's tensors (lazily), then optimized."""
    import torch

    module.eval()
    with torch.no_grad():
        prog = torch.onnx.export(
            module, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
            input_names=input_names or list(kwargs), output_names=output_names,
            dynamic_shapes=dynamic_shapes, optimize=weights is None, verbose=False,
        )
    model = prog.model
    if weights is not None:
        from spikec.frontend import streaming

        weights.bind(model)
        streaming.optimize(model)
    return model


def _ensure_inputs(model, names_shapes: dict[str, tuple[str, list]]) -> None:
    """Re-add graph inputs that the exporter dropped because the float graph ignores them."""
    import onnx_ir as ir

    have = {v.name for v in model.graph.inputs}
    for name, (dtype, shape) in names_shapes.items():
        if name not in have:
            log.debug("re-adding unused input %s", name)
            model.graph.inputs.append(ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape)))


def _rename_dims(model, names: dict[str, dict[int, str]]) -> None:
    """Rename symbolic dims (e.g. torch's s17) everywhere, keyed by graph input/output axes."""
    import onnx_ir as ir

    mapping = {}
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        for axis, new in names.get(v.name, {}).items():
            dim = v.shape[axis] if v.shape is not None else None
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                mapping.setdefault(dim.value, new)
    if not mapping:
        return
    values = list(model.graph.inputs) + list(model.graph.outputs)
    values += [o for node in model.graph for o in node.outputs]
    for v in values:
        if v.shape is None:
            continue
        dims = [mapping.get(d.value, d.value) if isinstance(d, ir.SymbolicDim) else d for d in v.shape]
        if any(isinstance(d, ir.SymbolicDim) and d.value in mapping for d in v.shape):
            v.shape = ir.Shape(dims)


def _write_imported(weights, model, path: Path, imported: dict) -> None:
    """A graph exported from a quantized checkpoint (spikec/frontend/quantized.py): its layers'
    codes and scales beside it (`<graph>.int4.safetensors`, named in its metadata); before _save."""
    write_imported = getattr(weights, "write_imported", None)
    entry = write_imported(model, path) if write_imported is not None else None
    if entry is not None:
        imported[path.stem] = entry


def _save(model, path: Path) -> None:
    import onnx_ir as ir

    # one writer thread: tensors are materialised (converted from the checkpoint) one at a time
    ir.save(model, path, external_data=path.name + ".data", max_workers=1)


def lm_sample(config, adapter, batch=2, seq=5, past=3):
    """Sample LM inputs for tracing: every dynamic axis gets a distinct size > 1."""
    import torch

    tc = config.get_text_config()
    n_kv = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    pos = torch.arange(past, past + seq).expand(batch, seq)
    if adapter.mrope:
        pos = pos.expand(3, batch, seq)
    kw = {
        "inputs_embeds": torch.randn(batch, seq, tc.hidden_size),
        "attention_mask": torch.ones(batch, past + seq, dtype=torch.long),
        "position_ids": pos.contiguous(),
        "modality": torch.zeros(batch, seq, dtype=torch.long),
    }
    past_kv = []
    for _ in range(tc.num_hidden_layers):
        past_kv += [torch.randn(batch, n_kv, past, head_dim), torch.randn(batch, n_kv, past, head_dim)]
    return kw, past_kv, (tc.num_hidden_layers, n_kv, head_dim)


def export_loaded(loaded: Loaded, outdir: Path, *, opset: int = DEFAULT_OPSET,
                  progress: Callable[[str], None] = lambda s: None, bind_weights: bool = True) -> dict:
    """Export a loaded model into `outdir` (written atomically). Returns the manifest."""
    import torch

    from spikec.frontend.wrappers import EmbedWrapper, LMWrapper

    from spikec.frontend.streaming import CheckpointWeights

    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    # One path for every model: a loaded model with real weights is its own value source,
    # so its graphs too get module-path names and the same transpose folding.
    # (bind_weights=False keeps torch.onnx's own optimizer: the reference tests compare to.)
    weights = loaded.weights if loaded.weights is not None else CheckpointWeights(model, model) if bind_weights else None
    config = model.config
    text_model = adapter.text_model(model)
    graphs, imported = {}, {}
    with atomic_path(outdir, is_dir=True, replaceable=is_spikec_folder) as tmp:
        # 1. Vision encoder + projector, traced on the processor's output for a sample image.
        t0 = time.time()
        progress("exporting vision encoder + projector")
        # Two images of different sizes, so no dynamic axis is traced at size 1 (torch.export
        # would specialise it) and variable-resolution families see two grids.
        images = [sample_image(64, 48), sample_image(48, 64)]
        proc_out = processor_inputs((adapter, processor), images, ["What is in the image?", "Describe it."])
        feeds = adapter.vision_feeds(config, proc_out)
        vkw = {k: torch.from_numpy(v) for k, v in feeds.items()}
        vision = _export_graph(adapter.vision_module(model), vkw, ["image_features"],
                               adapter.vision_dynamic_shapes(feeds), opset, weights)
        _write_imported(weights, vision, tmp / "vision.onnx", imported)
        _save(vision, tmp / "vision.onnx")
        graphs["vision"] = mf.graph_entry("vision.onnx", "vision encoder + projector: image -> features, one row per "
                                          "image token", vision)
        del vision
        log.info("vision graph in %.1fs", time.time() - t0)

        # 2. Token embedding (a Gather over the embedding table).
        t0 = time.time()
        progress("exporting token embedding")
        ids = torch.zeros(2, 5, dtype=torch.long)
        b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
        embed = _export_graph(EmbedWrapper(text_model.get_input_embeddings()), {"input_ids": ids},
                              ["inputs_embeds"], {"input_ids": {0: b, 1: s}}, opset, weights)
        _write_imported(weights, embed, tmp / "embed.onnx", imported)
        _save(embed, tmp / "embed.onnx")
        graphs["embed"] = mf.graph_entry("embed.onnx", "token embedding: input_ids -> inputs_embeds", embed)
        del embed
        log.info("embed graph in %.1fs", time.time() - t0)

        # 3. Language model with KV cache; one graph for prefill (past = 0) and decode.
        t0 = time.time()
        progress("exporting language model (prefill + decode, KV cache)")
        kw, past_kv, (n_layers, n_kv, head_dim) = lm_sample(config, adapter)
        past_names = mf.past_names(n_layers)
        present_names = mf.present_names(n_layers)
        for name, t in zip(past_names, past_kv):
            kw[name] = t
        # past and total (= past + seq) cannot be two named Dims: torch.export cannot
        # state the sum relation and rejects the guard it derives. Let it infer them,
        # then give the ONNX dims readable names.
        past = total = torch.export.Dim.DYNAMIC
        pos_dims = {1: b, 2: s} if adapter.mrope else {0: b, 1: s}
        dyn = {"inputs_embeds": {0: b, 1: s}, "attention_mask": {0: b, 1: total}, "position_ids": pos_dims,
               "modality": {0: b, 1: s}}
        dyn["past"] = tuple({0: b, 2: past} for _ in past_names)
        wrapper = LMWrapper(text_model, model.lm_head, n_layers)
        # The wrapper takes past tensors as *past; pass them positionally in that order.
        lm = _export_lm(wrapper, kw, past_names, ["logits"] + present_names, dyn, opset, weights)
        import onnx_ir as ir

        _ensure_inputs(lm, {"modality": (ir.DataType.INT64, ["batch", "seq"])})
        names = {"attention_mask": {1: "total"}, **{n: {2: "past"} for n in past_names},
                 **{n: {2: "total"} for n in present_names}}
        _rename_dims(lm, names)
        _write_imported(weights, lm, tmp / "lm.onnx", imported)
        _save(lm, tmp / "lm.onnx")
        graphs["lm"] = mf.graph_entry("lm.onnx", "language model: inputs_embeds + modality + past -> logits + "
                                      "present (prefill: past length 0; decode: one token)", lm)
        del lm
        log.info("language model graph in %.1fs", time.time() - t0)

        # 4. Processor, tokenizer and config for the host side.
        progress("writing processor files and manifest")
        processor.save_pretrained(tmp / PROCESSOR_DIR)
        config.save_pretrained(tmp / PROCESSOR_DIR)
        manifest = mf.build(loaded, graphs, opset, PROCESSOR_DIR, (n_layers, n_kv, head_dim))
        spec = getattr(getattr(weights, "ckpt", None), "spec", None)
        if spec is not None:  # spikec/frontend/quantized.py: what was imported, per graph
            from spikec.frontend.quantized import describe

            manifest["quantization"] = {**describe(spec), "graphs": imported}
        mf.write(tmp / mf.MANIFEST, manifest)
    return manifest


def _export_lm(wrapper, kw, past_names, output_names, dyn, opset, weights=None):
    """Export LMWrapper: named inputs first, then the past tensors as the *past varargs."""
    fixed = ["inputs_embeds", "attention_mask", "position_ids", "modality"]
    args = tuple(kw[n] for n in fixed) + tuple(kw[n] for n in past_names)
    shapes = tuple(dyn[n] for n in fixed) + (dyn["past"],)
    return _export_graph(wrapper, {}, output_names, shapes, opset, weights, args=args, input_names=fixed + past_names)


def export(source: str, outdir: str | os.PathLike, *, allow_pickle: bool = False, opset: int = DEFAULT_OPSET,
           progress: Callable[[str], None] = lambda s: None) -> dict:
    """Load SOURCE (folder or built-in tiny name) and export it into OUTDIR."""
    check_output(outdir, is_dir=True, inputs=[source] if Path(source).exists() else [], replaceable=is_spikec_folder)
    progress(f"loading {source}")
    loaded = load(source, allow_pickle=allow_pickle, stream=True)
    return export_loaded(loaded, Path(outdir), opset=opset, progress=progress)


def export_quietly(source: str, outdir: str | os.PathLike) -> Path:
    """`export` with torch's exporter chatter (stdout, warnings, log records) silenced, for
    scripts and benchmarks that print figures of their own. Returns OUTDIR."""
    import contextlib
    import io
    import logging
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            export(source, outdir)
        finally:
            logging.disable(logging.NOTSET)
    return Path(outdir)
