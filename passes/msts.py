"""msts: modality-specific temporal scales, i.e. the timesteps of every spikec op.

Two modes:
- explicit: --tv/--tt (defaults 3/4) set T per modality on every op;
- --budget B: a search for the least output error under a budget of effective
  timesteps per token. With N_m calibration tokens of modality m, the budget of a
  global choice is sum_m N_m T_m / sum_m N_m (SEMANTICS.md section 4); with per-layer
  choices each layer group's budget is weighted by its share of the multiply-accumulates
  (K * N per token of its spiking ops).

The search, measured on calibration data against the float model:
1. global: every maximal (Pareto) choice of T per modality (1..SEARCH_T) that fits the
   budget is evaluated; the uniform T = floor(B) is always evaluated as the baseline.
   With two modalities that is at most SEARCH_T points.
2. per layer (MED as the guide): for the layers with the largest MED, move one timestep
   from the modality that evolves less in that layer (smaller e[l, m]) to the one that
   evolves more, then the other way; keep a move only if it fits the budget and lowers
   the measured error.
Error: mean KL(softmax(float logits) || softmax(spiking logits)) over the text tokens
for a graph with a `logits` output, else the relative squared error of the first output.
The chosen T lands in the ops' `timesteps` attributes; the report gives T, the budget
used, the error, and the uniform-T error at the same budget.

Layer groups are the ops' `layer` attributes (med's; where med did not run, msts assigns
them from the layer-map analysis); MED per layer, the guide of step 2, is what med
published in the model (metadata `spikec.med`). The float logits come from the
float-activations analysis (passes/analyses.py).
"""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import onnx_ir as ir

from spikec import ir as spir
from spikec import ops
from spikec.errors import SpikecError
from spikec.schema import parse_json
from spikec.passes.analyses import FLOAT_MODEL, LAYER_MAP
from spikec.passes.import_qdq import imported_timesteps
from spikec.passes.manager import register_property
from spikec.passes.med import MED_KEY
from spikec.passes.options import CompileContext, ContextPass
from spikec.passes.quantize import MODALITY_INPUT, modality_of_graph

log = logging.getLogger(__name__)

SEARCH_T = 8
REFINE_LAYERS = 3
MSTS_KEY = "spikec.msts"


def _kl_text(ref: np.ndarray, out: np.ndarray, mods: np.ndarray | None, text_id: int, keep) -> float:
    a = ref.astype(np.float64).reshape(-1, ref.shape[-1])
    b = out.astype(np.float64).reshape(-1, out.shape[-1])
    sel = np.ones(a.shape[0], bool) if keep is None else keep.copy()
    if mods is not None and (sel & (mods == text_id)).any():
        sel &= mods == text_id
    a, b = a[sel], b[sel]
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return float(np.mean(np.sum(np.exp(la) * (la - lb), axis=-1)))


def compared_output(model: ir.Model) -> tuple[str, bool]:
    """(the output msts compares, whether it is logits): `logits` when the graph has it (or
    its first output's name says logits), else the first output."""
    name = model.graph.outputs[0].name
    logits = "logits" in name or any(o.name == "logits" for o in model.graph.outputs)
    return ("logits" if logits else name), logits


BUDGET_NEEDS_CALIB = ("--budget: the timestep search measures output error on calibration data; pass --calib PATH"
                      " (or give --tv/--tt instead of --budget)")
REFERENCE_MAX_BYTES = 64 << 20  # weights above this: errors measured on the ORT lowering (Evaluator._session)


class Evaluator:
    """Measured output error of the model under a timestep assignment."""

    def __init__(self, model: ir.Model, ctx: CompileContext, names: list[str]) -> None:
        self.model, self.ctx, self.names = model, ctx, names
        self.feeds = ctx.feeds
        self.out_name, self.logits = compared_output(model)
        self.ref = [r[self.out_name] for r in ctx.analyses.activations(model, [self.out_name])]
        self.text_id = names.index("text") if "text" in names else 0
        self.evaluations = 0

    def _session(self):
        """(session, input names): the numpy reference evaluator for a small graph; above
        REFERENCE_MAX_BYTES of weights, the ORT target's `fused` lowering of a clone (the
        same bits by the numeric contract, memory-mapped weights and native kernels: the
        reference evaluator inlines every weight and runs the bit-serial products in numpy,
        hours and gigabytes at 2B widths)."""
        if spir.parameter_stats(self.model)[1] <= REFERENCE_MAX_BYTES:
            sess = ops.evaluator(self.model)
            return sess, set(sess.input_names)
        from spikec.ort_lowering import lower_for_ort

        lowered = self.model.clone()
        lower_for_ort(lowered, "fused", nbits=False)
        sess = spir.ort_session(lowered)
        return sess, {i.name for i in sess.get_inputs()}

    def error(self) -> float:
        self.evaluations += 1
        sess, known = self._session()
        total = 0.0
        for feed, ref in zip(self.feeds, self.ref):
            out = sess.run([self.out_name], {k: v for k, v in feed.items() if k in known})[0]
            if self.logits:
                mods = feed.get(MODALITY_INPUT)
                mods = None if mods is None else np.asarray(mods).reshape(-1)
                mask = feed.get("attention_mask")
                keep = None if mask is None or mask.size != ref.size // ref.shape[-1] else mask.reshape(-1) != 0
                total += _kl_text(ref, out, mods, self.text_id, keep)
            else:
                total += float(np.sum((out.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-30))
        return total / len(self.feeds)


def token_counts(ctx: CompileContext, names: list[str], const_mod: int) -> np.ndarray:
    counts = np.zeros(len(names))
    for feed in ctx.feeds or []:
        mods = feed.get(MODALITY_INPUT)
        if mods is None:
            first = next(iter(v for v in feed.values() if hasattr(v, "shape")))
            n = first.shape[0] if first.ndim else 1
            counts[const_mod] += n
            continue
        mods = np.asarray(mods).reshape(-1)
        mask = feed.get("attention_mask")
        keep = np.ones(mods.shape, bool) if mask is None or mask.size != mods.size else mask.reshape(-1) != 0
        for m in range(len(names)):
            counts[m] += int(np.sum(keep & (mods == m)))
    return counts


@register_property("timesteps-assigned", "every spikec op that spikes has `timesteps`: one T per modality, "
                                         "each in 1..spikec.ops.MAX_T")
def check_timesteps_assigned(model: ir.Model) -> None:
    """Raises SpikecError naming the first timed spikec op whose `timesteps` is missing or out of range."""
    n = len(ops.modalities(model))
    for node in ops.spikec_nodes(model, *ops.TIMED_OPS):
        attr = node.attributes.get("timesteps")
        T = list(attr.value) if attr is not None and attr.type == ir.AttributeType.INTS else None
        if T is None:
            raise SpikecError(f"node '{node.name}' ({node.op_type}) has no integer 'timesteps' attribute")
        if len(T) != n or not all(1 <= int(t) <= ops.MAX_T for t in T):
            raise SpikecError(f"node '{node.name}' ({node.op_type}): timesteps {T} must be {n} value(s) (one per "
                              f"modality) in 1..{ops.MAX_T}")


class Msts(ContextPass):
    """Assign timesteps per modality (and per layer where it pays)."""

    name = "msts"
    needs = ("quantized",)
    guarantees = ("timesteps-assigned",)

    def float_values(self, model: ir.Model) -> list[str]:
        """The float output msts compares against (logits, or the first output)."""
        return [compared_output(model)[0]] if self.ctx.feeds else []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opts = self.ctx.options.validate()
        names = ops.modalities(model)
        timed = ops.spikec_nodes(model, *ops.TIMED_OPS)
        if not timed:
            self.ctx.results["msts"] = {"skipped": "no spikec ops"}
            return ir.passes.PassResult(model, False)
        groups = self._layer_groups(model, timed)
        _, const_mod = modality_of_graph(model, self.ctx)
        can_measure = bool(self.ctx.feeds) and self.ctx.analyses.get(FLOAT_MODEL, model) is not None
        if opts.budget is None and opts.tv is None and opts.tt is None and imported_timesteps(model):
            result = {"mode": "imported", "timesteps": "kept at the imported QDQ precision (--tv/--tt or --budget "
                                                       "override)"}
            if can_measure:
                result["error"] = Evaluator(model, self.ctx, names).error()
            self._finish(model, result)
            return ir.passes.PassResult(model, False)
        if opts.budget is None:
            self._finish(model, self._explicit(model, opts, groups, names, const_mod, can_measure))
            return ir.passes.PassResult(model, True)
        if not can_measure:
            raise SpikecError(BUDGET_NEEDS_CALIB)
        self._finish(model, _BudgetSearch(model, self.ctx, opts, groups, names, const_mod).run())
        return ir.passes.PassResult(model, True)

    def _layer_groups(self, model: ir.Model, timed: list[ir.Node]) -> list[list[ir.Node]]:
        """The timed ops of each layer group 0 .. max(layer), by their `layer` attributes (med's;
        assigned here from the layer-map analysis where an op has none)."""
        if any("layer" not in n.attributes for n in timed):
            self.ctx.analyses.get(LAYER_MAP, model).assign(model)
        n_groups = 1 + max(int(ops.attr(n, "layer", 0)) for n in timed)
        return [[n for n in timed if int(ops.attr(n, "layer", 0)) == g] for g in range(n_groups)]

    def _explicit(self, model: ir.Model, opts, groups: list[list[ir.Node]], names: list[str], const_mod: int,
                  can_measure: bool) -> dict:
        """--tv/--tt (or their defaults) on every layer group; with calibration data, the
        measured error and the budget those T use."""
        T = opts.timesteps(names)
        _apply(model, groups, np.tile(np.asarray(T, np.int64), (len(groups), 1)))
        result = {"mode": "explicit", "timesteps": dict(zip(names, T))}
        if can_measure:
            result["error"] = Evaluator(model, self.ctx, names).error()
            counts = token_counts(self.ctx, names, const_mod)
            if counts.sum():
                result["budget_used"] = float(counts @ np.asarray(T) / counts.sum())
        return result

    def _finish(self, model: ir.Model, result: dict) -> None:
        self.ctx.results["msts"] = result
        keep = {k: result[k] for k in ("mode", "timesteps", "budget", "budget_used", "error", "uniform") if k in result}
        model.metadata_props[MSTS_KEY] = json.dumps(keep, sort_keys=True)


def _apply(model: ir.Model, groups: list[list[ir.Node]], table: np.ndarray) -> None:
    """Set the timesteps of every op of layer group g to table[g] (table [groups, modalities])."""
    for g, nodes in enumerate(groups):
        for n in nodes:
            if not ops.attr(n, "act_unsigned"):  # an imported offset code fixes its own width
                ops.set_timesteps(n, table[g].tolist(), model)


class _BudgetSearch:
    """The --budget search of one graph (module docstring, steps 1 and 2) over timestep tables
    [groups, modalities]. A table's budget weighs each group by its share of the
    multiply-accumulates and each modality by its share of the calibration tokens; its error
    is measured once (`error` caches it by table). Raises SpikecError when the calibration
    data has no tokens."""

    def __init__(self, model: ir.Model, ctx: CompileContext, opts, groups: list[list[ir.Node]], names: list[str],
                 const_mod: int) -> None:
        self.model, self.groups, self.names, self.per_layer = model, groups, names, opts.per_layer
        self.B = float(opts.budget)
        self.counts = token_counts(ctx, names, const_mod)
        self.present = [m for m in range(len(names)) if self.counts[m] > 0]
        if not self.present:
            raise SpikecError("--budget: the calibration data has no tokens")
        weights = np.array([sum(_macs(n) for n in nodes if n.op_type != ops.SPIKE_ENCODE) for nodes in groups], float)
        self.weights = np.where(weights > 0, weights, 1.0)
        self.frac = self.counts / self.counts.sum()
        self.ev = Evaluator(model, ctx, names)
        self.base_T = opts.timesteps(names)
        self.tried: dict[tuple, float] = {}

    def budget(self, table: np.ndarray) -> float:
        return float(np.sum(self.weights[:, None] * table * self.frac[None, :]) / self.weights.sum())

    def error(self, table: np.ndarray) -> float:
        key = tuple(table.reshape(-1).tolist())
        if key not in self.tried:
            _apply(self.model, self.groups, table)
            self.tried[key] = self.ev.error()
        return self.tried[key]

    def global_table(self, choice: dict[int, int]) -> np.ndarray:
        """Every group at T = choice[m] for modality m (the base T for a modality not chosen)."""
        row = np.array([choice.get(m, self.base_T[m]) for m in range(len(self.names))], np.int64)
        return np.tile(row, (len(self.groups), 1))

    def frontier(self) -> list[tuple]:
        """The maximal (Pareto) choices of T per present modality, 1..SEARCH_T, within the budget."""
        feasible = []
        for combo in itertools.product(range(1, SEARCH_T + 1), repeat=len(self.present)):
            if float(np.dot(self.frac[self.present], combo)) <= self.B + 1e-9:
                feasible.append(combo)
        return [c for c in feasible if not any(d != c and all(x >= y for x, y in zip(d, c)) for d in feasible)]

    def search_global(self) -> tuple[dict, list[dict], dict]:
        """Step 1: (the best global choice, every frontier candidate, the uniform baseline T =
        floor(B)); ties in error go to the smaller budget."""
        T_uniform = int(min(SEARCH_T, np.floor(self.B + 1e-9)))
        uniform = self.global_table({m: T_uniform for m in self.present})
        uniform_err = self.error(uniform)
        candidates = []
        for combo in self.frontier():
            table = self.global_table(dict(zip(self.present, combo)))
            candidates.append({"timesteps": {self.names[m]: int(t) for m, t in zip(self.present, combo)},
                               "budget": self.budget(table), "error": self.error(table)})
        best = min(candidates + [{"timesteps": {self.names[m]: T_uniform for m in self.present},
                                  "budget": self.budget(uniform), "error": uniform_err}],
                   key=lambda c: (c["error"], c["budget"]))
        return dict(best), candidates, {"T": T_uniform, "budget_used": self.budget(uniform), "error": uniform_err}

    def refine_per_layer(self, table: np.ndarray, err: float, meds: list, es: list) -> tuple[np.ndarray, float, list]:
        """Step 2, guided by MED: in the REFINE_LAYERS most modality-discrepant layers, move one
        timestep to the modality that evolves more there, then the other way; a move is kept
        only if it fits the budget and lowers the error. (table, error, the moves tried)."""
        names, moves = self.names, []
        order = sorted((l for l in range(min(len(meds), len(self.groups))) if meds[l] is not None),
                       key=lambda l: -meds[l])[:REFINE_LAYERS]
        for l in order:
            hi, lo = sorted(self.present, key=lambda m: -(es[l].get(names[m]) or 0.0))
            for up, down in ((hi, lo), (lo, hi)):
                t = table.copy()
                t[l, up] += 1
                t[l, down] -= 1
                if t[l, down] < 1 or t[l, up] > SEARCH_T or self.budget(t) > self.B + 1e-9:
                    continue
                e = self.error(t)
                accepted = e < err
                moves.append({"layer": l, "med": meds[l], "more": names[up], "less": names[down],
                              "error": e, "accepted": accepted})
                if accepted:
                    table, err = t, e
                    break
        return table, err, moves

    def run(self) -> dict:
        """Search, apply the best table to the ops, and return the report."""
        names = self.names
        global_choice, candidates, uniform = self.search_global()
        best_table = self.global_table({names.index(k): v for k, v in global_choice["timesteps"].items()})
        best_err, moves = global_choice["error"], []
        med = parse_json(self.model.metadata_props.get(MED_KEY, "{}") or "{}", where=f"graph metadata '{MED_KEY}'")
        med = med if isinstance(med, dict) else {}
        meds, es = med.get("med") or [], med.get("e") or []
        if self.per_layer and len(self.present) == 2 and meds:
            best_table, best_err, moves = self.refine_per_layer(best_table, best_err, meds, es)
        _apply(self.model, self.groups, best_table)
        per_layer = [{"layer": g, "timesteps": {names[m]: int(best_table[g, m]) for m in range(len(names))}}
                     for g in range(len(self.groups))]
        return {
            "mode": "budget", "budget": self.B,
            "token_counts": {names[m]: int(self.counts[m]) for m in range(len(names))},
            "timesteps": global_choice["timesteps"], "global_error": global_choice["error"],
            "per_layer": per_layer, "budget_used": self.budget(best_table), "error": best_err,
            "uniform": uniform, "candidates": candidates, "layer_moves": moves, "evaluations": self.ev.evaluations,
            "error_metric": "mean KL(float || spiking) over text-token logits" if self.ev.logits
                            else "relative squared error of the first output",
        }


def _macs(node: ir.Node) -> float:
    w = node.inputs[2] if node.op_type == ops.QUANT_LINEAR else (node.inputs[3] if len(node.inputs) > 3 else None)
    if w is not None and w.shape is not None and all(isinstance(d, int) for d in w.shape):
        return float(np.prod(list(w.shape)[-2:]))
    return 0.0
