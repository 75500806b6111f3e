"""Regenerate docs/accuracy.md: float vs fake-quantized vs spiking across Tv/Tt.

    python scripts/accuracy_table.py [--model models/digits-llava] [--out out/accuracy] [--limit N]

From scratch: exports the bundled model, writes the test split as an evaluation folder
(and a calibration folder from the training split), compiles one .sbin per row and
evaluates it on the ONNX Runtime target. Every row with a quantization is run twice
on the same .sbin: spiking (fused mode, bit-identical to exact spike planes) and the
fake-quantized ANN (fakequant mode: float MatMul over the same codes); the table says
on how many test items their answers agree.

Effective timesteps per token are over the language model's prefill tokens of the test
items: (N_v * T_v + N_t * T_t) / (N_v + N_t), N counted with the processor. Rate-coded IF
carries the same (T + 1)-bit code in 2^(T+1) - 1 timesteps (T = L - 1), so its answers
equal TC-LIF's by construction; its row shows the cost in timesteps.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TV_TT = [(2, 2), (2, 3), (3, 3), (3, 4), (4, 4), (4, 5), (7, 7)]
BUDGETS = [2.5, 3.5, 4.5]
SMOOTH_ALPHAS = [0.3, 0.5, 0.7, 0.85]
# the quantization-methods table (issue 16): each method at each of these, W8 and W4
METHOD_TV_TT = [(2, 3), (3, 4), (4, 5), (7, 7)]
METHODS = ["RTN", "SmoothQuant", "GPTQ", "rotation", "rotation + GPTQ", "rotation, no online Hadamard"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def token_counts(export_dir: Path, data_dir: Path, limit: int | None) -> tuple[int, int]:
    """(vision tokens, text tokens) over the LM prefill of the evaluation items."""
    from spikec.evaluate import load_items
    from spikec.frontend.generate import OrtGenerator
    from spikec.runtime.model import load_image

    gen = OrtGenerator(export_dir)
    n_v = n_t = 0
    for item in load_items(data_dir)[:limit]:
        ids = gen.prepare([load_image(item["image_path"])], [item["prompt"]])["input_ids"]
        vis = int((ids == gen.image_token_id).sum())
        n_v += vis
        n_t += int(ids.numel()) - vis
    return n_v, n_t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "digits-llava"))
    ap.add_argument("--out", default=str(ROOT / "out" / "accuracy"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "accuracy.md"))
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N test items")
    ap.add_argument("--calib-samples", type=int, default=32)
    args = ap.parse_args()

    from spikec import atomic
    from spikec.compiler import compile_path
    from spikec.datasets.digits import make_items, write_eval_folder
    from spikec.evaluate import agreement, evaluate
    from spikec.frontend.export import export
    from spikec.passes.options import SpikeOptions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    export_dir, test_dir, val_dir, calib_dir = out / "export", out / "test", out / "validation", out / "calib"
    log("export + data folders")
    export(args.model, export_dir)
    write_eval_folder(make_items("test"), test_dir)
    write_eval_folder(make_items("validation"), val_dir)
    write_eval_folder(make_items("train")[: args.calib_samples * 4 : 4], calib_dir)  # one question per image
    n_v, n_t = token_counts(export_dir, test_dir, args.limit)

    def eff(tv: float, tt: float) -> float:
        return (n_v * tv + n_t * tt) / (n_v + n_t)

    float_run = evaluate(export_dir, test_dir, limit=args.limit)
    rows: list[dict] = []
    log(f"float: {100 * float_run.accuracy:.2f}%")

    def row(label: str, group: str, opts: SpikeOptions, neuron_T=None) -> dict:
        sbin = out / f"{label.replace('/', '-').replace(' ', '_')}.sbin"
        report = compile_path(export_dir, sbin, options=opts.validate())
        msts = (report.extra.get("graphs", {}).get("lm", {}).get("msts") or {})
        T = msts.get("timesteps") if isinstance(msts.get("timesteps"), dict) else {"vision": opts.tv, "text": opts.tt}
        spk = evaluate(sbin, test_dir, mode="fused", limit=args.limit)
        fq = evaluate(sbin, test_dir, mode="fakequant", limit=args.limit)
        same, total = agreement(spk.predictions, fq.predictions)
        tv, tt = T["vision"], T["text"]
        steps = (neuron_T(tv), neuron_T(tt)) if neuron_T else (tv, tt)
        r = {"group": group, "label": label, "tv": tv, "tt": tt, "timesteps_v": steps[0], "timesteps_t": steps[1],
             "effective_timesteps": eff(*steps), "spiking": spk.accuracy, "fakequant": fq.accuracy,
             "agree": same, "items": total, "gap_points": 100 * (spk.accuracy - float_run.accuracy),
             "msts": {k: msts.get(k) for k in ("budget", "budget_used", "error", "uniform") if k in msts}}
        log(f"{group:<10} {label:<22} spiking {100 * spk.accuracy:.2f}%  fake-quant {100 * fq.accuracy:.2f}%  "
            f"agree {same}/{total}  eff T {r['effective_timesteps']:.2f}")
        rows.append(r)
        return r

    dyn = dict(act_scale="dynamic")
    for tv, tt in TV_TT:
        row(f"Tv/Tt = {tv}/{tt}", "tc-lif", SpikeOptions(tv=tv, tt=tt, **dyn))
    for tv, tt in TV_TT:
        row(f"IF b = {tv + 1}/{tt + 1}", "rate-if", SpikeOptions(tv=tv, tt=tt, neuron="if", **dyn),
            neuron_T=lambda t: 2 ** (t + 1) - 1)
    for b in BUDGETS:
        row(f"MSTS budget {b:g}", "msts", SpikeOptions(budget=b, calib=str(calib_dir), calib_samples=args.calib_samples,
                                                       **dyn))
        row(f"uniform T = {int(b)} (budget {b:g})", "msts", SpikeOptions(tv=int(b), tt=int(b), **dyn))
    # SmoothQuant's alpha is chosen on the validation split, never on the test split.
    smooth = lambda a: SpikeOptions(tv=3, tt=4, smooth=a, calib=str(calib_dir), calib_samples=args.calib_samples, **dyn)
    val_acc = {}
    for a in SMOOTH_ALPHAS:
        sbin = out / f"smooth-{a}.sbin"
        compile_path(export_dir, sbin, options=smooth(a).validate())
        val_acc[a] = evaluate(sbin, val_dir, limit=args.limit).accuracy
        log(f"SmoothQuant alpha {a}: validation {100 * val_acc[a]:.2f}%")
    best = max(SMOOTH_ALPHAS, key=lambda a: (val_acc[a], -abs(a - 0.5)))
    row(f"Tv/Tt = 3/4 + SmoothQuant {best:g}", "smooth", smooth(best))
    row("Tv/Tt = 3/4, static scales", "static", SpikeOptions(tv=3, tt=4, act_scale="static", calib=str(calib_dir),
                                                              calib_samples=args.calib_samples))
    # Quantization methods (passes/quantize.py, gptq.py, rotate.py) at W8 and W4, dynamic scales;
    # SmoothQuant with the alpha chosen above on the validation split, GPTQ calibrated on the
    # training-split pairs. Never tuned on the test split.
    calib = dict(calib=str(calib_dir), calib_samples=args.calib_samples)
    method_opts = {"RTN": {}, "SmoothQuant": dict(smooth=best, **calib), "GPTQ": dict(weight_method="gptq", **calib),
                   "rotation": dict(rotate=True), "rotation + GPTQ": dict(rotate=True, weight_method="gptq", **calib),
                   "rotation, no online Hadamard": dict(rotate=True, online_hadamard=False)}
    for wbits in (8, 4):
        for method in METHODS:
            for tv, tt in METHOD_TV_TT:
                row(f"W{wbits} {method}, Tv/Tt = {tv}/{tt}", f"W{wbits} {method}",
                    SpikeOptions(wbits=wbits, tv=tv, tt=tt, **method_opts[method], **dyn))

    result = {"model": args.model, "items": float_run.total, "float": float_run.accuracy,
              "float_by_type": float_run.to_dict()["by_type"], "tokens": {"vision": n_v, "text": n_t},
              "rows": rows, "smooth_validation": val_acc, "seconds": round(time.time() - start, 1)}
    atomic.write_text(out / "accuracy.json", json.dumps(result, indent=2) + "\n")
    text = render(result, args)
    old = Path(args.doc).read_text(encoding="utf-8") if Path(args.doc).is_file() else ""
    # keep the sections measured apart: the second model's (scripts/scenetext_accuracy.py) and
    # the W4 extra rows (group-wise scales, rotated attention, MSTS per method; docs/accuracy.md)
    for tag in ("w4-extra", "scenetext-qwen2vl"):
        found = re.search(rf"<!-- {tag}:begin.*?<!-- {tag}:end -->", old, flags=re.S)
        if found:
            text += "\n" + found.group(0) + "\n"
    atomic.write_text(args.doc, text)
    log(f"wrote {args.doc} and {out / 'accuracy.json'} in {result['seconds']} s")


def render(r: dict, args) -> str:
    lines = [
        "# Accuracy: float vs fake-quantized vs spiking",
        "",
        f"Bundled model `{Path(r['model']).name}` on the digits test split ({r['items']} items: image + question,",
        "exact-match answer; docs/default-model.md). Spiking runs on the ONNX Runtime target (fused mode,",
        "bit-identical to the exact spike planes); the fake-quantized ANN is the same .sbin in fakequant",
        "mode (float MatMul over the same integer codes). int8 per-channel weights, dynamic per-token",
        "activation scales unless the row says otherwise. Regenerate with:",
        "",
        "    python scripts/accuracy_table.py" + (f" --limit {args.limit}" if args.limit else ""),
        "",
        f"Float (export on onnxruntime): **{100 * r['float']:.2f} %**"
        " (" + ", ".join(f"{t} {100 * v['accuracy']:.1f} %" for t, v in r["float_by_type"].items()) + ").",
        f"Prefill tokens over the test items: {r['tokens']['vision']} vision, {r['tokens']['text']} text;",
        "effective timesteps per token = (N_v T_v + N_t T_t) / (N_v + N_t).",
        "",
        "| group | configuration | timesteps v/t | eff. T/token | spiking | fake-quant ANN | gap to float (points) | same answers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in (x for x in r["rows"] if not x["group"].startswith("W")):
        lines.append(
            f"| {x['group']} | {x['label']}" + (f" (chose Tv/Tt = {x['tv']}/{x['tt']})" if x["group"] == "msts" and "MSTS" in x["label"] else "")
            + f" | {x['timesteps_v']}/{x['timesteps_t']} | {x['effective_timesteps']:.2f} | {100 * x['spiking']:.2f} % "
            f"| {100 * x['fakequant']:.2f} % | {x['gap_points']:+.2f} | {x['agree']}/{x['items']} |")
    methods = [x for x in r["rows"] if x["group"].startswith("W")]
    if methods:
        lines += ["", "## Quantization methods at W8 and W4 (spiking, dynamic activation scales)", "",
                  "Spiking accuracy (fake-quant ANN in brackets where it differs); gap to float in points.", "",
                  "| weights | method | " + " | ".join(f"Tv/Tt = {tv}/{tt}" for tv, tt in METHOD_TV_TT) + " |",
                  "|---|---|" + "---|" * len(METHOD_TV_TT)]
        for group in dict.fromkeys(x["group"] for x in methods):
            cells = []
            for x in (x for x in methods if x["group"] == group):
                fq = "" if x["fakequant"] == x["spiking"] else f" [{100 * x['fakequant']:.2f} %]"
                cells.append(f"{100 * x['spiking']:.2f} %{fq} ({x['gap_points']:+.2f})")
            w, method = group.split(" ", 1)
            lines.append(f"| {w} | {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes:",
        "- `rate-if` rows carry the same codes as the TC-LIF row of the same Tv/Tt in 2^(T+1) - 1",
        "  timesteps instead of T: same answers, many more timesteps (T = L - 1 vs log2(L) - 1).",
        "- `msts` rows: `--budget B` searches Tv/Tt (and per layer) for the least logit KL on calibration",
        "  pairs from the training split, guided by MED; the uniform row spends the same budget with",
        "  Tv = Tt = floor(B), the largest uniform T within it. The search may also move single layers",
        "  off its global choice (per-layer timesteps), so an MSTS row can differ from the fixed row with",
        "  the same global Tv/Tt.",
        "- `smooth`: SmoothQuant's alpha was chosen on the validation split (validation accuracy: "
        + ", ".join(f"alpha {a:g}: {100 * v:.2f} %" for a, v in r["smooth_validation"].items()) + ").",
        "- Quantization methods: `rotation` is QuaRot's residual-stream Hadamard rotation folded into the",
        "  weights with the online Hadamard before each down projection (`--rotate`, passes/rotate.py);",
        "  SmoothQuant uses the alpha chosen on the validation split above; GPTQ is calibrated on the",
        "  same training-split pairs as the static scales (docs/passes.md).",
        f"- Generated in {r['seconds']} s on this machine's CPU.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
