"""GPU side of the decode comparison, measured: transformers FP16 `generate` at batch 1 on
Qwen2-VL-shaped language models with random weights (built from a config, no download), the
board power sampled from nvidia-smi in a thread during the timed decode.

Prints, per shape: prefill time, decode tokens/s (new tokens after the first / their
time), mean and peak board power (W) during decode, joules per token, and the FP16
roofline of the GPU for comparison. Needs CUDA, torch and transformers; on a machine
without CUDA it says so and exits with status 2. Nothing else depends on it.

    python benchmarks/gpu_baseline.py [--shapes 7b,2b] [--prompt 1024] [--new 128] [--repeat 2]

The language model alone is measured (Qwen2ForCausalLM with the Qwen2-VL LM's shapes; the
vision tower runs once per request in prefill and does not touch decode). Weights are
random: decode speed of a dense FP16 model does not depend on their values.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time

SHAPES = {
    # Qwen2-VL-7B / 2B language models (config.json of the released checkpoints)
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "2b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}


class PowerSampler(threading.Thread):
    """Samples `nvidia-smi --query-gpu=power.draw` every `period` seconds until stopped."""

    def __init__(self, index: int = 0, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.index, self.period = index, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=power.draw", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append((time.perf_counter(), float(out.splitlines()[0])))
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                pass
            self._stop.wait(self.period)

    def stop(self) -> list[float]:
        self._stop.set()
        self.join(timeout=10)
        return [w for _, w in self.samples]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="7b,2b")
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens (random ids)")
    ap.add_argument("--new", type=int, default=128, help="new tokens to generate (greedy)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_baseline: torch is not installed; this benchmark needs torch, transformers and a CUDA GPU")
        return 2
    if not torch.cuda.is_available():
        print("gpu_baseline: no CUDA device found (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU -- nothing else depends on it")
        return 2
    from transformers import Qwen2Config, Qwen2ForCausalLM

    have_smi = shutil.which("nvidia-smi") is not None
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    print(f"GPU: {name}, {props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}; power from nvidia-smi: "
          f"{'yes' if have_smi else 'NO (nvidia-smi not found: power and J/token not measured)'}")
    for key in args.shapes.split(","):
        shp = SHAPES[key.strip()]
        cfg = Qwen2Config(**shp, head_dim=128, max_position_embeddings=32768, rope_theta=1e6, use_cache=True,
                          torch_dtype="float16")
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(cfg).to(torch.float16).eval()
        n_params = sum(p.numel() for p in model.parameters())
        emb = model.get_input_embeddings().weight.numel()
        streamed = n_params - emb if not shp["tie_word_embeddings"] else n_params  # embedding rows are gathered
        ids = torch.randint(0, shp["vocab_size"], (1, args.prompt), device="cuda")
        gen = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
            torch.cuda.synchronize()
            best = None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
                torch.cuda.synchronize()
                t_prefill = time.perf_counter() - t0
                sampler = PowerSampler() if have_smi else None
                if sampler:
                    sampler.start()
                t0 = time.perf_counter()
                model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, **gen)
                torch.cuda.synchronize()
                t_all = time.perf_counter() - t0
                watts = sampler.stop() if sampler else []
                t_dec = max(t_all - t_prefill, 1e-9)
                r = dict(prefill_s=t_prefill, tok_s=(args.new - 1) / t_dec, watts=watts)
                if best is None or r["tok_s"] > best["tok_s"]:
                    best = r
        w = best["watts"]
        mean_w = sum(w) / len(w) if w else float("nan")
        bw = 2.039e12 if "A100" in name or "A800" in name else None
        roof = f", FP16 roofline at 2.04 TB/s {bw / (2 * streamed):.1f} tokens/s" if bw else ""
        print(f"{key}: {n_params / 1e9:.2f} G parameters (decode streams {streamed / 1e9:.2f} G), prompt {args.prompt}, "
              f"{args.new} new tokens: prefill {best['prefill_s'] * 1e3:.1f} ms, decode {best['tok_s']:.1f} tokens/s"
              + (f", power mean {mean_w:.0f} W / peak {max(w):.0f} W over {len(w)} samples, "
                 f"{mean_w / best['tok_s']:.3f} J/token" if w else "") + roof)
        del model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
