"""ORT target speed: spiking (fused) vs the float ONNX model, same machine, same run.

For each shape it exports a LLaVA-family model with random weights (the tiny built-in
one, and a larger one with a hidden size of 1024), compiles it to .sbin (Tv/Tt = 3/4,
int8 weights, dynamic per-token scales), and times the language model graph:

- prefill: one sequence of `--seq` tokens (the first quarter vision tokens), batch 1;
- decode: one new text token with a KV cache of `--seq` tokens;

each as the median of `--repeat` runs after warm-up, on `--threads` intra-op threads.
Printed as milliseconds and as float/spiking ratios (> 1: spiking is faster).

    python benchmarks/ort_benchmark.py [--seq 256] [--repeat 20] [--threads 2] [--only tiny|large]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def large_llava(folder: Path, hidden: int = 1024, layers: int = 2) -> Path:
    """A LLaVA (CLIP + Llama) with a 1024-wide language model, random weights, saved to `folder`."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from spikec.frontend.tiny import build_tiny

    _, processor = build_tiny("tiny-llava")  # its tokenizer and CLIP processor (32x32 images, 16 patches)
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                                num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128,
                                max_position_embeddings=4096, tie_word_embeddings=False,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def lm_feeds(manifest: dict, seq: int, past: int, rng) -> dict:
    lm = manifest["lm"]
    n_layers, n_kv, head_dim, hidden = lm["num_layers"], lm["num_kv_heads"], lm["head_dim"], lm["hidden_size"]
    modality = np.zeros((1, seq), np.int64)
    if past == 0:
        modality[0, : seq // 4] = 1  # vision tokens first, as after an image
    feeds = {
        "inputs_embeds": rng.standard_normal((1, seq, hidden)).astype(np.float32),
        "attention_mask": np.ones((1, past + seq), np.int64),
        "position_ids": np.arange(past, past + seq, dtype=np.int64)[None],
        "modality": modality,
    }
    for i in range(n_layers):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = rng.standard_normal((1, n_kv, past, head_dim)).astype(np.float32)
    return feeds


def time_ms(fn, repeat: int) -> float:
    fn()
    fn()  # warm-up: first runs allocate
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def bench(name: str, export_dir: Path, sbin: Path, seq: int, repeat: int, threads: int) -> dict:
    import onnxruntime as ort

    from spikec.frontend import manifest as mf
    from spikec.runtime.model import load

    manifest = mf.read(export_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    float_lm = ort.InferenceSession(str(export_dir / manifest["graphs"]["lm"]["file"]), opts, providers=["CPUExecutionProvider"])
    spiking = load(sbin, mode="fused", threads=threads)
    spiking_lm = spiking.sessions["lm"]
    rng = np.random.default_rng(0)
    out = {"model": name, "hidden": manifest["lm"]["hidden_size"], "layers": manifest["lm"]["num_layers"]}
    for phase, (s, past) in {"prefill": (seq, 0), "decode": (1, seq)}.items():
        feeds = lm_feeds(manifest, s, past, rng)
        f = time_ms(lambda: float_lm.run(None, feeds), repeat)
        q = time_ms(lambda: spiking_lm.run(None, feeds), repeat)
        out[phase] = {"float_ms": f, "spiking_ms": q, "speedup": f / q}
    spiking.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["tiny", "large"])
    args = ap.parse_args()

    from spikec.compiler import compile_path
    from spikec.frontend.export import export
    from spikec.passes.options import SpikeOptions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = {"tiny": lambda: "tiny-llava", "large": lambda: str(large_llava(tmp / "large-ckpt"))}
        for name, source in sources.items():
            if args.only and name != args.only:
                continue
            print(f"[{name}] export, compile ...", flush=True)
            export(source(), tmp / name)
            compile_path(tmp / name, tmp / f"{name}.sbin", options=SpikeOptions(tv=3, tt=4).validate())
            rows.append(bench(name, tmp / name, tmp / f"{name}.sbin", args.seq, args.repeat, args.threads))
    import onnxruntime

    print(f"\nonnxruntime {onnxruntime.__version__}, {args.threads} threads, seq {args.seq}, median of {args.repeat}")
    print(f"{'model':<7} {'hidden':>6} {'layers':>6} | {'prefill float':>13} {'spiking':>8} {'ratio':>6} | "
          f"{'decode float':>12} {'spiking':>8} {'ratio':>6} | decode tok/s float / spiking")
    for r in rows:
        p, d = r["prefill"], r["decode"]
        print(f"{r['model']:<7} {r['hidden']:>6} {r['layers']:>6} | {p['float_ms']:>10.2f} ms {p['spiking_ms']:>5.2f} ms "
              f"{p['speedup']:>5.2f}x | {d['float_ms']:>9.3f} ms {d['spiking_ms']:>5.3f} ms {d['speedup']:>5.2f}x | "
              f"{1000 / d['float_ms']:.0f} / {1000 / d['spiking_ms']:.0f}")


if __name__ == "__main__":
    main()
