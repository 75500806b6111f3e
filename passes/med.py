"""med: measure the modality evolution discrepancy (SEMANTICS.md section 4) per layer.

Layers are found from the graph itself: the residual stream is the longest chain of
Add nodes Add(h, f(h)) whose one input is an ancestor of the other; a transformer
layer is two consecutive residual Adds (attention, then MLP), so layer l maps
h_l (the stream entering its first Add) to h_(l+1) (the output of its second). If the
chain has an odd length every residual Add is its own layer.

On the calibration data, run the float model (ONNX Runtime) and compute

    e[l, m] = mean over tokens of modality m of 1 - cos(h_l, h_(l+1))
    MED[l]  = |e[l, vision] - e[l, text]| / (e[l, vision] + e[l, text])

(padding tokens, attention_mask == 0, are left out). Every spikec op gets an
integer attribute `layer` (the layer it computes in; ops after the last layer, such as
the LM head or the vision projector, get `layer = L`, the "head" group), which msts
uses for per-layer timesteps. Results go to the report, the model's metadata
(`spikec.med`), and, through the compile driver, a JSON and a PNG per compile.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir

from spikec import atomic
from spikec import calibration as C
from spikec import ops
from spikec.passes.options import ContextPass
from spikec.passes.quantize import MODALITY_INPUT, capture_float, modality_of_graph

log = logging.getLogger(__name__)

MED_KEY = "spikec.med"


def _is_ancestor(a: ir.Value, b: ir.Value, limit: int = 20000) -> bool:
    """True when value `a` is an ancestor of value `b` (backward search from b)."""
    seen, stack = set(), [b]
    while stack and len(seen) < limit:
        v = stack.pop()
        if v is a:
            return True
        p = v.producer()
        if p is None or id(p) in seen:
            continue
        seen.add(id(p))
        stack.extend(i for i in p.inputs if i is not None)
    return False


def residual_chain(graph: ir.Graph) -> list[tuple[ir.Node, ir.Value]]:
    """The longest chain of residual Adds, as (add node, stream input) in order."""
    residual: dict[int, tuple[ir.Node, ir.Value]] = {}  # id(stream input) -> (add, stream)
    for node in graph:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        a, b = node.inputs
        if a is None or b is None or a.const_value is not None or b.const_value is not None:
            continue
        for h, f in ((a, b), (b, a)):
            if _is_ancestor(h, f):
                residual.setdefault(id(h), (node, h))
                break
    outs = {id(n.outputs[0]) for n, _ in residual.values()}
    best: list[tuple[ir.Node, ir.Value]] = []
    for key, (node, h) in residual.items():
        if key in outs:  # not a chain start
            continue
        chain = [(node, h)]
        while id(chain[-1][0].outputs[0]) in residual:
            chain.append(residual[id(chain[-1][0].outputs[0])])
        if len(chain) > len(best):
            best = chain
    return best


def layers_of(graph: ir.Graph) -> tuple[list[tuple[ir.Value, ir.Value]], list[ir.Node]]:
    """([(h_l, h_(l+1))] per layer, [the residual Add that ends each layer])."""
    chain = residual_chain(graph)
    if len(chain) >= 2 and len(chain) % 2 == 0:
        pairs = [(chain[i][1], chain[i + 1][0].outputs[0]) for i in range(0, len(chain), 2)]
        ends = [chain[i + 1][0] for i in range(0, len(chain), 2)]
    else:
        pairs = [(h, n.outputs[0]) for n, h in chain]
        ends = [n for n, _ in chain]
    return pairs, ends


def assign_layers(model: ir.Model, ends: list[ir.Node]) -> int:
    """Set the `layer` attribute of every spikec op; returns the number of layers L."""
    pos = {id(n): i for i, n in enumerate(model.graph)}
    end_pos = [pos[id(n)] for n in ends]
    for node in model.graph:
        if node.domain != ops.DOMAIN:
            continue
        p = pos[id(node)]
        layer = next((l for l, e in enumerate(end_pos) if p < e), len(end_pos))
        node.attributes["layer"] = ir.AttrInt64("layer", layer)
    return len(end_pos)


def _cos_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64).reshape(-1, a.shape[-1])
    b = b.astype(np.float64).reshape(-1, b.shape[-1])
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0)


def measure(float_proto, feeds: list[dict], pairs, names: list[str], const_mod: int) -> list[dict]:
    wanted = [v.name for p in pairs for v in p]
    has_mod = any(MODALITY_INPUT in f for f in feeds)
    acts = C.run_ort(float_proto, feeds, wanted)
    rows = []
    for l, (h0, h1) in enumerate(pairs):
        sums, counts = np.zeros(len(names)), np.zeros(len(names))
        for feed, a in zip(feeds, acts):
            d = _cos_distance(a[h0.name], a[h1.name])
            lead = a[h0.name].shape[:-1]
            mods = ops.token_modality(feed.get(MODALITY_INPUT) if has_mod else None, const_mod, lead, h0.name).reshape(-1)
            keep = np.ones_like(mods, dtype=bool)
            mask = feed.get("attention_mask")
            if mask is not None and int(np.prod(mask.shape)) == mods.size:
                keep = mask.reshape(-1) != 0
            for m in range(len(names)):
                sel = keep & (mods == m)
                sums[m] += d[sel].sum()
                counts[m] += sel.sum()
        e = {names[m]: (float(sums[m] / counts[m]) if counts[m] else None) for m in range(len(names))}
        ev, et = e.get("vision"), e.get("text")
        med = abs(ev - et) / (ev + et) if ev is not None and et is not None and ev + et > 0 else None
        rows.append({"layer": l, "from": h0.name, "to": h1.name, "e": e, "med": med,
                     "tokens": {names[m]: int(counts[m]) for m in range(len(names))}})
    return rows


class Med(ContextPass):
    """Measure e[l, m] and MED[l] on the float model; tag spikec ops with their layer."""

    name = "med"
    guarantees = ("med-measured",)
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        capture_float(model, self.ctx)
        pairs, ends = layers_of(model.graph)
        n_layers = assign_layers(model, ends)
        names = ops.modalities(model)
        result = {"layers": [], "num_layers": n_layers, "head_group": n_layers,
                  "definition": "e[l,m] = mean over tokens of modality m of 1 - cos(h_l, h_l+1); "
                                "MED[l] = |e_vision - e_text| / (e_vision + e_text)"}
        if not self.ctx.feeds:
            result["skipped"] = "no calibration data (--calib)"
        elif self.ctx.float_model is None:
            result["skipped"] = "the float model is not available (med must run before quantize in a standalone pipeline)"
        elif not pairs:
            result["skipped"] = "no residual stream found (no Add(h, f(h)) chain)"
        else:
            _, const_mod = modality_of_graph(model, self.ctx)
            result["layers"] = measure(self.ctx.float_model, self.ctx.feeds, pairs, names, const_mod)
        self.ctx.results["med"] = result
        model.metadata_props[MED_KEY] = json.dumps(
            {"num_layers": n_layers, "med": [r["med"] for r in result["layers"]],
             "e": [r["e"] for r in result["layers"]]}, sort_keys=True)
        return ir.passes.PassResult(model, True)


def write_artifacts(med: dict, prefix: str | Path, title: str = "") -> list[Path]:
    """`<prefix>.med.json` and `<prefix>.med.png` (e[l, m] per modality and MED[l])."""
    prefix = Path(prefix)
    js = prefix.with_name(prefix.name + ".med.json")
    atomic.write_text(js, json.dumps(med, indent=2) + "\n")
    written = [js]
    rows = med.get("layers") or []
    if not rows:
        return written
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ls = [r["layer"] for r in rows]
    for m in rows[0]["e"]:
        ys = [r["e"][m] for r in rows]
        if any(y is not None for y in ys):
            ax1.plot(ls, [np.nan if y is None else y for y in ys], marker="o", label=m)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("e[l, m] = mean 1 - cos(h_l, h_l+1)")
    ax1.legend()
    ax2.bar(ls, [np.nan if r["med"] is None else r["med"] for r in rows], color="tab:purple")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("MED[l]")
    fig.suptitle(title or "modality evolution discrepancy")
    fig.tight_layout()
    png = prefix.with_name(prefix.name + ".med.png")
    tmp = png.with_name(png.name + ".tmp.png")
    fig.savefig(tmp, dpi=90, metadata={"Software": None})  # no timestamp: deterministic bytes
    plt.close(fig)
    tmp.replace(png)
    written.append(png)
    return written
