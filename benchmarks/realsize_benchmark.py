"""Real-size models end to end: checkpoint -> export -> compile W8/W4 -> run, time and memory.

    python benchmarks/realsize_benchmark.py --model qwen2-vl-2b                      # full shape
    python benchmarks/realsize_benchmark.py --model qwen2-vl-2b --text-layers 7 14 28 --vision-layers 2
    python benchmarks/realsize_benchmark.py --model qwen2-vl-7b --wbits 4 --keep-going

For each text-layer count: writes a published-shape checkpoint with random weights
(benchmarks/make_checkpoint.py, bf16 as published, unless --checkpoint gives one), then
runs `spikec export`, `spikec compile -o MODEL.sbin --wbits B` for each --wbits, and
`spikec run MODEL.sbin --image ... --max-new-tokens N`, each in a child process measured
by benchmarks/peak_memory.py: wall time, CPU time (user + system of the tree: what to
compare under load), and the peaks of the process tree's anonymous
memory (RssAnon: what spikec holds) and file-backed memory (RssFile: pages of
memory-mapped checkpoints, exports and .sbin files, which the kernel reclaims under
pressure). Prints one row per step, then the time per text layer between layer counts.
Disk: the export stores float32 (4x the bf16 checkpoint); use --workdir on a big disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peak_memory import gib, measure  # noqa: E402


def spikec_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("spikec")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "spikec"]


def step(rows: list, name: str, layers: int | str, cmd: list[str], log: Path) -> bool:
    with open(log, "w") as f:
        r = measure(cmd, stdout=f, stderr=f)
    rows.append({"step": name, "text_layers": layers, **r})
    status = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']} (see {log})"
    print(f"{name:<14} {layers:>3} layers  {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  RssAnon {gib(r['peak_RssAnon']):>10}  "
          f"RssFile {gib(r['peak_RssFile']):>10}  VmRSS {gib(r['peak_VmRSS']):>10}  {status}", flush=True)
    return r["rc"] == 0


def sample_image(path: Path) -> Path:
    from PIL import Image

    import numpy as np

    y, x = np.mgrid[0:224, 0:224]
    rgb = np.stack([x * 255 // 223, y * 255 // 223, ((x // 16 + y // 16) % 2) * 255], -1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2-vl-2b", help="a make_checkpoint.py model (default qwen2-vl-2b)")
    ap.add_argument("--checkpoint", type=Path, help="use this checkpoint folder instead of writing one")
    ap.add_argument("--text-layers", type=int, nargs="*", default=[None], help="text layer counts (default: all)")
    ap.add_argument("--vision-layers", type=int, default=None, help="vision layers (default: all)")
    ap.add_argument("--wbits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--workdir", type=Path, help="keep the files here (default: a temporary folder, removed)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--keep-going", action="store_true", help="delete each step's input when done (saves disk)")
    ap.add_argument("--compile-args", default="", metavar="ARGS",
                    help="more `spikec compile` options, one string (e.g. \"--rotate --weight-method gptq "
                         "--group-size 128 --calib DIR\"); named in the step's label")
    args = ap.parse_args()
    extra = shlex.split(args.compile_args)
    label = f" {args.compile_args}" if extra else ""

    work = args.workdir or Path(tempfile.mkdtemp(prefix="spikec-realsize-"))
    work.mkdir(parents=True, exist_ok=True)
    image = sample_image(work / "image.png")
    rows: list[dict] = []
    print(f"{args.model}: steps measured with benchmarks/peak_memory.py (peaks of the process tree)")
    for layers in args.text_layers:
        tag = f"{args.model}-{layers or 'all'}"
        ckpt = args.checkpoint or work / f"{tag}-ckpt"
        if args.checkpoint is None and not ckpt.exists():
            cmd = [sys.executable, str(HERE / "make_checkpoint.py"), "--model", args.model, "-o", str(ckpt)]
            if layers is not None:
                cmd += ["--text-layers", str(layers)]
            if args.vision_layers is not None:
                cmd += ["--vision-layers", str(args.vision_layers)]
            if not step(rows, "checkpoint", layers or "all", cmd, work / f"{tag}-checkpoint.log"):
                break
        n_layers = layers or json.loads((ckpt / "config.json").read_text()).get("text_config", {}).get(
            "num_hidden_layers", 0)
        export = work / f"{tag}-export"
        shutil.rmtree(export, ignore_errors=True)
        if not step(rows, "export", n_layers, [*spikec_cmd(), "export", str(ckpt), "-o", str(export)],
                    work / f"{tag}-export.log"):
            break
        if args.keep_going and args.checkpoint is None:
            shutil.rmtree(ckpt)
        for bits in args.wbits:
            sbin = work / f"{tag}-w{bits}.sbin"
            if not step(rows, f"compile W{bits}{label}", n_layers,
                        [*spikec_cmd(), "compile", str(export), "-o", str(sbin), "--wbits", str(bits), *extra],
                        work / f"{tag}-compile-w{bits}.log"):
                continue
            rows[-1]["sbin_bytes"] = sbin.stat().st_size
            print(f"{'':<14} {'':>3}         .sbin {sbin.stat().st_size / 2**30:.2f} GiB ({sbin.name})", flush=True)
            step(rows, f"run W{bits}{label}", n_layers,
                 [*spikec_cmd(), "run", str(sbin), "--image", str(image), "--prompt", "Describe the image.",
                  "--max-new-tokens", str(args.max_new_tokens)], work / f"{tag}-run-w{bits}.log")
            if args.keep_going:
                sbin.unlink(missing_ok=True)
        if args.keep_going:
            shutil.rmtree(export, ignore_errors=True)
    by_step: dict[str, list] = {}
    for r in rows:
        if r["rc"] == 0 and isinstance(r["text_layers"], int):
            by_step.setdefault(r["step"], []).append((r["text_layers"], r["wall_s"], r["cpu_s"]))
    for name, pts in by_step.items():
        pts = sorted(set(pts))
        if len(pts) > 1:
            for i, what in ((1, "wall"), (2, "CPU")):
                per = [(b[i] - a[i]) / (b[0] - a[0]) for a, b in zip(pts, pts[1:]) if b[0] != a[0]]
                print(f"{name}: {what} seconds per text layer between counts {[p[0] for p in pts]}: "
                      f"{', '.join(f'{p:.2f}' for p in per)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
