"""ORT target speed: spikec (fused) vs float and vs ONNX Runtime's own int8 / int4, one run.

For each shape it exports a multimodal model with random weights, compiles it with spikec,
quantizes the same exported language-model graph (lm.onnx) with onnxruntime's own tools,
and times the language model on onnxruntime, every variant in the same process:

  float      the float32 export (lm.onnx, weights in lm.onnx.data)
  ort-int8   onnxruntime.quantization.quantize_dynamic: int8 weights per output channel
             (weight_type QInt8, per_channel, reduce_range off), activations uint8 per
             tensor, quantized at run time (DynamicQuantizeLinear + MatMulInteger, which the
             session fuses into com.microsoft DynamicQuantizeMatMul); MatMuls with a
             constant weight only (MatMulConstBOnly, the default of dynamic mode)
  ort-int4   matmul_nbits_quantizer.MatMulNBitsQuantizer: com.microsoft MatMulNBits, 4-bit
             symmetric weights in blocks of --block-size along K, --accuracy-level 4 (int8
             activations, MLAS' integer kernel; 0 would dequantize to float32 and SGEMM)
  spikec-w8  `spikec compile EXPORT -o x.sbin --wbits 8` (Tv/Tt = 3/4, dynamic per-token
             scales), run by spikec.runtime.model.load(sbin, mode="fused")
  spikec-w4  the same with --wbits 4; one-token products (decode) run on com.microsoft
             MatMulNBits over the integer codes where that is exact (spikec/ort_lowering.py,
             "nbits"), reading the .sbin's packed 4-bit sections in place; the others on
             MatMulInteger over int8 codes unpacked at load
  spikec-w8-stock, spikec-w4-stock  the same .sbin files with spikec's custom-op library
             off (SPIKEC_ORTOPS=0): stock operators only. spikec-w8 and -w4 use the library
             where it is built (runtime/ortops/: each product by a constant weight, with
             its scales and bias, one SpikeMatMulIntegerToFloat, an integer GEMM that sums
             the low-bit codes in int16; W4 decode steps one SpikeEncodeMatMulNBits per product)
  spikec-w4-nbits  the same .sbin under the runtime's "nbits" weight policy (a W4 model
             too large to prepack int8, runtime/ort_target.py: choose_weight_policy): every
             product with packed weights on MatMulNBits, whatever the token count, no int8
             form of them (MLAS' own 4-bit repacking stays on)

Shapes (--only, one or more; default tiny and large):

  tiny   the built-in tiny LLaVA (hidden 32, 2 layers)
  large  a LLaVA (CLIP + Llama) with hidden 1024, --layers text layers (default 2)
  2b     Qwen2-VL-2B-Instruct's text widths (hidden 1536, intermediate 8960, 12 heads,
         2 KV heads, vocab 151936, tied LM head) with --layers text layers (default 2) and
         1 vision layer, written by benchmarks/make_checkpoint.py (random weights; about
         2 GB of disk under the temporary folder, a few minutes to export and quantize)

Phases: prefill of one sequence of --seq tokens (the first quarter vision tokens), batch 1,
and decode of one text token with a KV cache of --seq tokens. After two warm-up runs of
every variant, the variants are timed round-robin (one run each per repeat, the starting
variant rotating), so machine noise hits them alike; each cell is the median of --repeat
runs on --threads intra-op threads. All sessions get the same SessionOptions, with the
intra-op threads' spinning off (session.intra_op.allow_spinning = 0): five sessions' idle
spinning threads would otherwise take a small machine's cores from the one being timed
(--spin restores onnxruntime's default). spikec's session is the graph that
spikec.runtime.model.load(sbin, mode="fused") runs, built with these options and checked
bit for bit against load()'s output before timing. Ratios are time(other) / time(spikec): > 1 means
spikec is faster. `rel.err` is ||logits - float logits|| / ||float logits|| on the prefill
input, a check that every variant computes the same model.

With --profile DIR, each variant is then run under onnxruntime's profiler
(SessionOptions.enable_profiling; the JSON traces are kept in DIR) and the time of its
nodes is printed by op type, per phase.

    python benchmarks/ort_benchmark.py [--only tiny large 2b] [--layers 2] [--seq 256] [--repeat 20]
        [--threads 2] [--variants float ort-int8 ort-int4 spikec-w8 spikec-w8-stock spikec-w4 spikec-w4-stock
                    spikec-w4-nbits]
        [--block-size 32]
        [--accuracy-level 4] [--spin] [--profile DIR] [--workdir DIR [--reuse]]

--reuse takes the checkpoint, export, quantized models and .sbin files a previous run left
in --workdir instead of building them again (the timing is the same; spikec's .sbin is
lowered for onnxruntime when it is loaded, so a rebuilt spikec needs no recompile).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = ("tiny", "large", "2b")
VARIANTS = ("float", "ort-int8", "ort-int4", "spikec-w8", "spikec-w8-stock", "spikec-w4", "spikec-w4-stock",
            "spikec-w4-nbits")


# ---------------------------------------------------------------- checkpoints


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


def qwen2_vl_2b(folder: Path, layers: int = 2) -> Path:
    """Qwen2-VL-2B-Instruct's widths, `layers` text layers and 1 vision layer, random weights
    (benchmarks/make_checkpoint.py, in a child process so its memory is returned)."""
    subprocess.run([sys.executable, str(HERE / "make_checkpoint.py"), "--model", "qwen2-vl-2b", "-o", str(folder),
                    "--text-layers", str(layers), "--vision-layers", "1", "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    return folder


def checkpoint(shape: str, tmp: Path, layers: int) -> str:
    if shape == "tiny":
        return "tiny-llava"
    if shape == "large":
        return str(large_llava(tmp / "large-ckpt", layers=layers))
    return str(qwen2_vl_2b(tmp / "2b-ckpt", layers))


# ---------------------------------------------------------------- the variants


def ort_int8(lm: Path, out: Path) -> Path:
    """quantize_dynamic of the float lm.onnx: per-channel int8 weights (QInt8: the u8 x s8
    kernels; reduce_range off: this matters only on CPUs without VNNI, where u8 x s8 pairs
    can saturate vpmaddubsw; per_channel: one scale per output column, as spikec's weights)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" warning
    quantize_dynamic(lm, out, per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                     use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
    return out


def ort_int4(lm: Path, out: Path, block_size: int, accuracy_level: int) -> Path:
    """MatMulNBits (4-bit, symmetric, blocks of `block_size` along K) of the float lm.onnx."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    model = onnx.load(str(lm), load_external_data=True)  # the quantizer needs the weights themselves
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level)
    q.process()
    q.model.save_model_to_file(str(out), use_external_data_format=True)  # > 2 GiB protos cannot be saved inline
    return out


def prepare(shape: str, tmp: Path, args) -> tuple[Path, dict[str, Path]]:
    """Export the shape and build every requested variant: (export folder, {variant: file})."""
    from spikec.compiler import compile_path
    from spikec.frontend import manifest as mf
    from spikec.frontend.export import export_quietly
    from spikec.passes.options import SpikeOptions

    def step(what: str, fn, done: Path | None = None):
        if done is not None and getattr(args, "reuse", False) and done.exists():
            print(f"[{shape}] {what}: reusing {done}", flush=True)
            return done
        t = time.perf_counter()
        print(f"[{shape}] {what} ...", end="", flush=True)
        r = fn()
        print(f" {time.perf_counter() - t:.1f} s", flush=True)
        return r

    export_dir = tmp / f"{shape}-export"
    if getattr(args, "reuse", False) and (export_dir / "manifest.json").exists():
        print(f"[{shape}] checkpoint, export: reusing {export_dir}", flush=True)
    else:
        source = step("checkpoint", lambda: checkpoint(shape, tmp, args.layers))
        step("export", lambda: export_quietly(source, export_dir))
    lm = export_dir / mf.read(export_dir)["graphs"]["lm"]["file"]
    files = {"float": lm}
    for v in args.variants:
        if v == "ort-int8":
            out = tmp / f"{shape}-lm-int8.onnx"
            files[v] = step("quantize_dynamic int8", lambda: ort_int8(lm, out), out)
        elif v == "ort-int4":
            out = tmp / f"{shape}-lm-int4-b{args.block_size}-l{args.accuracy_level}.onnx"
            files[v] = step(f"MatMulNBits int4 (block {args.block_size})",
                            lambda: ort_int4(lm, out, args.block_size, args.accuracy_level), out)
        elif v.endswith(("-nbits", "-stock")):
            continue  # the spikec-w4 or -w8 file, run another way (below)
        elif v.startswith("spikec-w"):
            bits = int(v[len("spikec-w"):])
            sbin = tmp / f"{shape}-w{bits}.sbin"
            step(f"spikec compile --wbits {bits}", lambda: compile_path(
                export_dir, sbin, options=SpikeOptions(tv=3, tt=4, wbits=bits).validate()), sbin)
            files[v] = sbin
    for v in ("spikec-w8-stock", "spikec-w4-stock", "spikec-w4-nbits"):
        base = v.rsplit("-", 1)[0]
        if v in args.variants and base in files:
            files[v] = files[base]
    return export_dir, files


def session_options(threads: int, spin: bool = False, profile: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if not spin:
        # Idle sessions' worker threads spin after each run; with five sessions on a small
        # shared machine they take the cores from the session being timed (10x outliers).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return opts


class Runner:
    """One variant's language-model session, all made with the same SessionOptions.

    spikec's is the session that spikec.runtime.model.load(sbin, mode="fused") makes for the
    .sbin's lm (runtime/ort_target.py: StatsSession, with its one-token graph for decode
    steps), built here so that it gets these options too; check_against_load() compares it
    with load()'s session bit for bit."""

    def __init__(self, variant: str, path: Path, threads: int, spin: bool = False, profile: str | None = None) -> None:
        import onnxruntime as ort

        self.variant, self.path, self.threads, self.closer = variant, path, threads, None
        if variant.startswith("spikec"):
            from spikec.package import SbinModel
            from spikec.runtime.ort_target import LM_ROLE, StatsSession

            sbin = SbinModel(path)
            # -nbits: the runtime's "nbits" weight policy (runtime/ort_target.py): W4's packed
            # weights on MatMulNBits for every token count, no int8 form (MLAS still prepacks
            # MatMulNBits' 4-bit weights: without it a decode step is about 100x slower).
            # Otherwise "prepack" with the language model's one-token graph, as load() makes it.
            weights = "nbits" if variant.endswith("-nbits") else "prepack"
            one_token = sbin.model(LM_ROLE) if weights == "prepack" else None
            made = iter(range(10))

            def options():  # one per session; each profiles to a file of its own
                return session_options(threads, spin, profile and f"{profile}-{next(made)}")

            # -stock: the custom-op library off, the one-token graph on stock operators only
            self.session = StatsSession(LM_ROLE, sbin.model(LM_ROLE), "fused", threads, weights, one_token, options,
                                        ortops=not variant.endswith("-stock"))
            self.closer = sbin
        else:
            opts = session_options(threads, spin, profile)
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict) -> list:
        return self.session.run(None, {n: feeds[n] for n in self.inputs})

    def check_against_load(self, feeds: dict, outputs: list) -> None:
        """Raise unless spikec.runtime.model.load(sbin, mode="fused") gives the same outputs."""
        from spikec.runtime.model import load

        with load(self.path, mode="fused", threads=self.threads) as model:
            ref = model.sessions["lm"].run(None, {n: feeds[n] for n in self.inputs})
        for a, b in zip(outputs, ref):
            if not np.array_equal(a, b, equal_nan=True):
                raise SystemExit(f"{self.variant}: the benchmark's session differs from spikec.runtime.model.load()")

    def end_profiling(self) -> list[str]:
        traces = self.session.end_profiling()  # spikec's: one per session (the one-token graph's too)
        return traces if isinstance(traces, list) else [traces]

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()


# ---------------------------------------------------------------- timing


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


def fit_feeds(feeds: dict, session) -> dict:
    """Position ids of the rank the graph declares (Qwen2-VL's M-RoPE takes [3, B, N]: t, h, w)."""
    out = dict(feeds)
    for i in session.get_inputs():
        if i.name == "position_ids" and len(i.shape) != out["position_ids"].ndim:
            pos = out["position_ids"].reshape(1, -1)
            out["position_ids"] = np.broadcast_to(pos, (3, 1, pos.shape[1])).copy() if len(i.shape) == 3 else pos
    return out


def time_round_robin(runners: list[Runner], feeds: dict, repeat: int) -> dict[str, list[float]]:
    """Two warm-up runs each, then `repeat` rounds of one timed run per variant (start rotating)."""
    for r in runners:
        r.run(feeds)
        r.run(feeds)
    samples: dict[str, list[float]] = {r.variant: [] for r in runners}
    for i in range(repeat):
        for k in range(len(runners)):
            r = runners[(i + k) % len(runners)]
            t = time.perf_counter()
            r.run(feeds)
            samples[r.variant].append((time.perf_counter() - t) * 1000)
    return samples


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def bench(shape: str, export_dir: Path, files: dict[str, Path], args) -> dict:
    from spikec.frontend import manifest as mf

    manifest = mf.read(export_dir)
    runners = [Runner(v, files[v], args.threads, args.spin) for v in files]
    rng = np.random.default_rng(0)
    lm = manifest["lm"]
    out = {"shape": shape, "hidden": lm["hidden_size"], "layers": lm["num_layers"],
           "heads": lm["hidden_size"] // lm["head_dim"], "kv_heads": lm["num_kv_heads"],
           "head_dim": lm["head_dim"], "family": manifest.get("family"), "phases": {}, "rel_err": {}}
    phase_feeds = {}
    for phase, (s, past) in {"prefill": (args.seq, 0), "decode": (1, args.seq)}.items():
        feeds = fit_feeds(lm_feeds(manifest, s, past, rng), runners[0].session)
        phase_feeds[phase] = feeds
        if phase == "prefill":
            outs = {r.variant: r.run(feeds) for r in runners}
            for r in runners:
                if r.variant.startswith("spikec"):
                    r.check_against_load(feeds, outs[r.variant])
            ys = {v: o[0] for v, o in outs.items()}
            out["vocab"] = int(ys["float"].shape[-1])
            out["rel_err"] = {v: rel_err(y, ys["float"]) for v, y in ys.items()}
        samples = time_round_robin(runners, feeds, args.repeat)
        out["phases"][phase] = {v: statistics.median(t) for v, t in samples.items()}
    for r in runners:
        r.close()
    if args.profile:
        out["profile"] = profile(shape, files, phase_feeds, args)
    return out


# ---------------------------------------------------------------- profiling


def profile(shape: str, files: dict[str, Path], phase_feeds: dict, args, runs: int = 5) -> dict:
    """Per variant and phase: {op type: (microseconds per run, node count)} from onnxruntime's profiler."""
    folder = Path(args.profile)
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    for v, path in files.items():
        for phase, feeds in phase_feeds.items():
            r = Runner(v, path, args.threads, args.spin, profile=str(folder / f"{shape}-{v}-{phase}"))
            r.run(feeds)
            r.run(feeds)  # warm-up, dropped below
            for _ in range(runs):
                r.run(feeds)
            tables = [aggregate(trace, skip_runs=2) for trace in r.end_profiling()]
            r.close()
            result.setdefault(v, {})[phase] = next((t for t in tables if t), {})  # the session that ran
    return result


def aggregate(trace: str, skip_runs: int = 0) -> dict:
    """op type -> [us per run, nodes] over the model_run events after the first `skip_runs`."""
    events = json.loads(Path(trace).read_text())
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) <= skip_runs:
        return {}
    start = runs[skip_runs]
    per_op: dict[str, list] = collections.defaultdict(lambda: [0.0, set()])
    total_run = sum(e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
                    and e["ts"] >= start)
    n = len(runs) - skip_runs
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < start or not e["name"].endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op][0] += e["dur"]
        per_op[op][1].add(e["name"])
    table = {op: (us / n, len(nodes)) for op, (us, nodes) in per_op.items()}
    table["(model_run)"] = (total_run / n, 0)
    return table


def print_profile(shape: str, prof: dict, top: int = 12) -> None:
    for v, phases in prof.items():
        for phase, table in phases.items():
            run_us = table.get("(model_run)", (0.0, 0))[0]
            ops = sorted(((op, us, n) for op, (us, n) in table.items() if op != "(model_run)"), key=lambda t: -t[1])
            nodes_us = sum(us for _, us, _ in ops)
            print(f"\n  profile [{shape}] {v} {phase}: model_run {run_us / 1000:.2f} ms, kernels {nodes_us / 1000:.2f} ms")
            for op, us, n in ops[:top]:
                print(f"    {op:<28} {us / 1000:8.3f} ms {100 * us / max(nodes_us, 1e-9):5.1f} %  ({n} nodes)")
            rest = sum(us for _, us, _ in ops[top:])
            if rest:
                print(f"    {'(other ops)':<28} {rest / 1000:8.3f} ms {100 * rest / max(nodes_us, 1e-9):5.1f} %")


# ---------------------------------------------------------------- report


RATIOS = (("spikec-w8", "ort-int8", "w8/int8"), ("spikec-w4", "ort-int4", "w4/nbits"),
          ("spikec-w8-stock", "ort-int8", "w8st/int8"), ("spikec-w4-stock", "ort-int4", "w4st/nbits"),
          ("spikec-w4-nbits", "ort-int4", "w4nb/nbits"),
          ("spikec-w8", "float", "w8/float"), ("spikec-w4", "float", "w4/float"))


def print_table(r: dict, args) -> None:
    variants = list(r["phases"]["prefill"])
    print(f"\n{r['shape']}: {r['family'] or ''} hidden {r['hidden']}, {r['layers']} text layers, heads "
          f"{r['heads']}/{r['kv_heads']} (head_dim {r['head_dim']}), vocab {r.get('vocab')}; "
          f"prefill {args.seq} tokens ({args.seq // 4} vision), decode 1 token after {args.seq}")
    ratios = [(a, b, label) for a, b, label in RATIOS if a in variants and b in variants]
    width = {v: max(11, len(v) + 1) for v in variants}
    lw = {lab: max(9, len(lab) + 1) for _, _, lab in ratios}
    head = f"{'phase':<8}" + "".join(f"{v:>{width[v]}}" for v in variants) + " |"
    print(head + "".join(f"{lab:>{lw[lab]}}" for _, _, lab in ratios))
    for phase, ms in r["phases"].items():
        line = f"{phase:<8}" + "".join(f"{ms[v]:>{width[v] - 3}.2f} ms" if ms[v] >= 10 else f"{ms[v]:>{width[v] - 3}.3f} ms"
                                       for v in variants)
        line += " |" + "".join(f"{ms[b] / ms[a]:>{lw[lab] - 1}.2f}x" for a, b, lab in ratios)
        print(line)
    print(f"{'rel.err':<8}" + "".join(f"{r['rel_err'][v]:>{width[v]}.4f}" for v in variants) + "    (prefill logits vs float)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=SHAPES, help="shapes to run (default: tiny large)")
    ap.add_argument("--layers", type=int, default=2, help="text layers of the large and 2b shapes (default 2)")
    ap.add_argument("--seq", type=int, default=256, help="prefill length and decode KV-cache length (default 256)")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per variant and phase (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="variants to time (float is always included, as the reference)")
    ap.add_argument("--block-size", type=int, default=32, choices=[32, 128], help="MatMulNBits block size (default 32)")
    ap.add_argument("--accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                    help="MatMulNBits accuracy_level: 4 = int8 activations (default), 0 = float32 compute")
    ap.add_argument("--spin", action="store_true",
                    help="let idle sessions' threads spin (onnxruntime's default; off here, see the docstring)")
    ap.add_argument("--profile", metavar="DIR", help="also profile every variant with onnxruntime's profiler")
    ap.add_argument("--workdir", type=Path, help="keep exports and quantized models here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse what a previous run left in --workdir")
    args = ap.parse_args()
    args.variants = ["float"] + [v for v in VARIANTS if v in args.variants and v != "float"]
    shapes = args.only or ["tiny", "large"]

    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory(prefix="spikec-ortbench-") as tmp:
        tmp = args.workdir or Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        for shape in [s for s in SHAPES if s in shapes]:
            export_dir, files = prepare(shape, tmp, args)
            print(f"[{shape}] timing {', '.join(files)} ...", flush=True)
            rows.append(bench(shape, export_dir, files, args))

    print(f"\nonnxruntime {onnxruntime.__version__}, {args.threads} intra-op threads, median of {args.repeat} "
          f"round-robin runs, spinning {'on' if args.spin else 'off'}; MatMulNBits block {args.block_size}, accuracy_level {args.accuracy_level}; "
          f"spikec Tv/Tt 3/4, fused; ratios = other / spikec (> 1: spikec faster)")
    for r in rows:
        print_table(r, args)
    for r in rows:
        if "profile" in r:
            print_profile(r["shape"], r["profile"])


if __name__ == "__main__":
    main()
