"""Export a real-size model shape and report wall time and peak memory.

    python benchmarks/export_benchmark.py                       # Qwen2-VL-2B shape, all layers
    python benchmarks/export_benchmark.py --text-layers 4 --vision-layers 4   # same widths, fewer layers

Builds a Qwen2-VL-2B-Instruct-shaped model (the published config's sizes, typed in
here: no download) with random weights, saves it with save_pretrained next to a
locally built processor, then runs `spikec export` on that folder in a child
process and reports the child's wall time and peak RSS, against the size of the
float32 weights. The exporter's budget is one extra copy of the weights (peak RSS
should stay near 2x the weight bytes plus a fixed overhead).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

# Qwen/Qwen2-VL-2B-Instruct config.json (sizes only).
TEXT = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
            num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2, in_channels=3)


def build_checkpoint(folder: Path, text_layers: int, vision_layers: int) -> int:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from spikec.frontend.tiny import _qwen_ids, _qwen_processor, _qwen_tokens
    from spikec.frontend.tokenizer import build_tokenizer

    tok = build_tokenizer(_qwen_tokens())
    processor = _qwen_processor(Qwen2VLProcessor, tok)
    config = Qwen2VLConfig(text_config={**TEXT, "num_hidden_layers": text_layers},
                           vision_config={**VISION, "depth": vision_layers}, **_qwen_ids(tok))
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config).eval()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return n_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text-layers", type=int, default=TEXT["num_hidden_layers"])
    ap.add_argument("--vision-layers", type=int, default=VISION["depth"])
    ap.add_argument("--workdir", type=Path, default=None, help="keep the checkpoint and output here")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="spikec-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, out = work / "ckpt", work / "out"
    try:
        t0 = time.time()
        # Build in a child process too, so this process never holds the weights while
        # the export runs (and RUSAGE_CHILDREN's maximum is the larger of the two).
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import export_benchmark as b; "
                f"from pathlib import Path; print(b.build_checkpoint(Path({str(ckpt)!r}), "
                f"{args.text_layers}, {args.vision_layers}))")
        built = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        n_bytes = int(built.stdout.strip().splitlines()[-1])
        build_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(f"checkpoint: text layers {args.text_layers}/28, vision layers {args.vision_layers}/32, "
              f"{n_bytes / 2**30:.2f} GiB float32 weights, built in {time.time() - t0:.1f}s", flush=True)
        t0 = time.time()
        cmd = [sys.executable, "-m", "spikec", "export", str(ckpt), "-o", str(out)]
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB
        if peak <= build_peak:
            print("note: the checkpoint builder's peak RSS was higher; the export peak is at most this figure")
        on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"export wall time {wall:.1f}s, peak RSS {peak / 2**30:.2f} GiB "
              f"({peak / n_bytes:.2f}x the weights), output {on_disk / 2**30:.2f} GiB")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
