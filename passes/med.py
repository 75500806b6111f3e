"""med: measure the modality evolution discrepancy (SEMANTICS.md section 4) per layer.

Layers come from the layer-map analysis (passes/analyses.py): the residual stream is the
longest chain of Add nodes Add(h, f(h)) whose one input is an ancestor of the other; a
transformer layer is two consecutive residual Adds (attention, then MLP), so layer l maps
h_l (the stream entering its first Add) to h_(l+1) (the output of its second).

On the calibration data, with the float model's values (the float-activations analysis:
ONNX Runtime, one run shared with the other passes) compute

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
from spikec import ops
from spikec.errors import SpikecError
from spikec.passes.analyses import FLOAT_MODEL, LAYER_MAP
from spikec.passes.manager import register_property
from spikec.passes.options import ContextPass
from spikec.passes.quantize import MODALITY_INPUT, modality_of_graph

log = logging.getLogger(__name__)

MED_KEY = "spikec.med"


def _cos_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64).reshape(-1, a.shape[-1])
    b = b.astype(np.float64).reshape(-1, b.shape[-1])
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1.0 - np.sum(a * b, axis=1) / np.where(den > 0, den, 1.0)


def measure(acts: list[dict], feeds: list[dict], pairs, names: list[str], const_mod: int) -> list[dict]:
    """One row per layer: e[l, m], MED[l] and token counts. `acts[i]` holds the float
    model's stream values (the names in `pairs`, (h_l, h_(l+1)) per layer) on `feeds[i]`."""
    has_mod = any(MODALITY_INPUT in f for f in feeds)
    rows = []
    for l, (h0, h1) in enumerate(pairs):
        sums, counts = np.zeros(len(names)), np.zeros(len(names))
        for feed, a in zip(feeds, acts):
            d = _cos_distance(a[h0], a[h1])
            lead = a[h0].shape[:-1]
            mods = ops.token_modality(feed.get(MODALITY_INPUT) if has_mod else None, const_mod, lead, h0).reshape(-1)
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
        rows.append({"layer": l, "from": h0, "to": h1, "e": e, "med": med,
                     "tokens": {names[m]: int(counts[m]) for m in range(len(names))}})
    return rows


@register_property("med-measured", "the model carries MED per layer (metadata spikec.med) and every spikec op "
                                   "its `layer` attribute")
def check_med_measured(model: ir.Model) -> None:
    """Raises SpikecError naming the missing metadata or the first spikec op without `layer`."""
    if MED_KEY not in model.metadata_props:
        raise SpikecError(f"the model has no '{MED_KEY}' metadata")
    for node in ops.spikec_nodes(model):
        if "layer" not in node.attributes:
            raise SpikecError(f"node '{node.name}' ({node.op_type}) has no 'layer' attribute")


class Med(ContextPass):
    """Measure e[l, m] and MED[l] on the float model; tag spikec ops with their layer."""

    name = "med"
    guarantees = ("med-measured",)

    def float_values(self, model: ir.Model) -> list[str]:
        """The residual stream h_0 .. h_L (the layer map's values)."""
        return self.ctx.analyses.get(LAYER_MAP, model).values() if self.ctx.feeds else []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        layers = self.ctx.analyses.get(LAYER_MAP, model)
        n_layers = layers.assign(model)
        names = ops.modalities(model)
        result = {"layers": [], "num_layers": n_layers, "head_group": n_layers,
                  "definition": "e[l,m] = mean over tokens of modality m of 1 - cos(h_l, h_l+1); "
                                "MED[l] = |e_vision - e_text| / (e_vision + e_text)"}
        if not self.ctx.feeds:
            result["skipped"] = "no calibration data (--calib)"
        elif self.ctx.analyses.get(FLOAT_MODEL, model) is None:
            result["skipped"] = "the float model is not available (med must run before quantize in a standalone pipeline)"
        elif not layers.pairs:
            result["skipped"] = "no residual stream found (no Add(h, f(h)) chain)"
        else:
            _, const_mod = modality_of_graph(model, self.ctx)
            acts = self.ctx.analyses.activations(model, layers.values())
            result["layers"] = measure(acts, self.ctx.feeds, layers.pairs, names, const_mod)
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
