"""Analyses: facts about the model that several passes read, computed once per compile.

In the manner of LLVM's analysis manager: an analysis is named, computed lazily the first
time a pass asks for it (`AnalysisManager.get`), cached in the compile's `AnalysisManager`
(`CompileContext.analyses`), and dropped when a pass whose `invalidates` names it (or an
analysis it depends on) has run; the next request computes it again. The `PassManager`
does the invalidation after every pass. No pass stores its own copy.

The analyses:

- `float-model` (`spikec.ir.Frozen` or None): the float graph, serialised without copying
  its weights: what `med` and `msts` compare the spiking graph against and what the
  calibration activations come from. Computed from the current model while it has no
  spikec op (None otherwise); `quantize` and `import-qdq` ask for it before they change
  anything. Once the `quantized` property holds it is the reference of the compile and
  nothing invalidates it any more (the passes after quantization change the spiking graph,
  not the float one).
- `float-activations` (`FloatActivations`, depends on float-model): the float model's
  values on the calibration feeds. The first request runs the float model on ONNX Runtime
  once, fetching every value the pipeline's remaining passes declare
  (`SpikecPass.float_values`: quantize's layer inputs, med's residual stream, msts's
  output); later requests are served from the cache. Values no remaining pass declared are
  dropped after each pass (`AnalysisManager.after_pass`), so activations are held only
  while a pass still needs them.
- `layer-map` (`LayerMap`): the transformer layers of the current graph, found from the
  residual stream (below), as value names.

Layers: the residual stream is the longest chain of Add nodes Add(h, f(h)) whose one
input is an ancestor of the other; a transformer layer is two consecutive residual Adds
(attention, then MLP), so layer l maps h_l (the stream entering its first Add) to
h_(l+1) (the output of its second). If the chain has an odd length every residual Add is
its own layer.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx_ir as ir

from spikec import calibration as C
from spikec import ir as spir
from spikec import ops
from spikec.errors import SpikecError

log = logging.getLogger(__name__)

FLOAT_MODEL = "float-model"
FLOAT_ACTIVATIONS = "float-activations"
LAYER_MAP = "layer-map"


# ---------------------------------------------------------------- the layer map


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


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """The layers of a graph as value names: `pairs[l]` = (h_l, h_(l+1)), the stream
    entering layer l and the output of the residual Add that ends it."""

    pairs: tuple[tuple[str, str], ...]

    @property
    def num_layers(self) -> int:
        return len(self.pairs)

    def values(self) -> list[str]:
        """Every stream value named by the map, in layer order (no repeats)."""
        return list(dict.fromkeys(n for p in self.pairs for n in p))

    def assign(self, model: ir.Model) -> int:
        """Set the integer attribute `layer` of every spikec op of `model`: the layer it
        computes in (the first layer whose ending Add follows it in graph order), or
        `num_layers` for ops after the last layer (the "head" group: LM head, projector).
        Returns `num_layers`. SpikecError when a stream value is not in the graph (a map
        of another graph: the pass that changed it should have invalidated the analysis)."""
        pos = {}
        for i, node in enumerate(model.graph):
            for out in node.outputs:
                pos[out.name] = i
        missing = [h1 for _, h1 in self.pairs if h1 not in pos]
        if missing:
            raise SpikecError(f"layer map: value '{missing[0]}' is not produced in this graph (a stale layer map)")
        end_pos = [pos[h1] for _, h1 in self.pairs]
        for i, node in enumerate(model.graph):
            if node.domain != ops.DOMAIN:
                continue
            layer = next((l for l, e in enumerate(end_pos) if i < e), len(end_pos))
            node.attributes["layer"] = ir.AttrInt64("layer", layer)
        return len(end_pos)


def layer_map(graph: ir.Graph) -> LayerMap:
    """The layers of `graph` from its residual stream (module doc)."""
    chain = residual_chain(graph)
    if len(chain) >= 2 and len(chain) % 2 == 0:
        pairs = [(chain[i][1], chain[i + 1][0].outputs[0]) for i in range(0, len(chain), 2)]
    else:
        pairs = [(h, n.outputs[0]) for n, h in chain]
    return LayerMap(tuple((h0.name, h1.name) for h0, h1 in pairs))


# ---------------------------------------------------------------- float activations


class FloatActivations:
    """Values of the float model on the calibration feeds, fetched from ONNX Runtime.

    `get(names)` returns one {name: array} per feed (graph inputs are returned as fed).
    Names not yet held are fetched in one ORT run (`spikec.calibration.run_ort`); the first
    run also fetches everything `plan()` names (what the remaining passes will ask for), so
    that a compile runs the float model once. `keep=False` is for a streaming reader
    (GPTQ's Hessians, one chunk of layer inputs at a time): what it fetches beyond the plan
    is returned but not held."""

    def __init__(self, model: spir.Frozen, feeds: Sequence[dict], plan: Callable[[], dict[int, list[str]]],
                 on_run: Callable[[], None]) -> None:
        self.model = model
        self.feeds = list(feeds)
        self.plan = plan
        self.on_run = on_run
        self.runs = 0
        self.values: dict[str, list[np.ndarray]] = {}  # name -> one array per feed
        self.planned_by: dict[int, list[str]] = {}  # id(pass) -> the names it declared
        self.planned: set[str] = set()

    def get(self, names: Sequence[str], *, keep: bool = True) -> list[dict[str, np.ndarray]]:
        names = list(dict.fromkeys(names))
        missing = [n for n in names if n not in self.values]
        extra: list[str] = []
        if self.runs == 0:
            self.planned_by = self.plan()
            self.planned = {n for declared in self.planned_by.values() for n in declared}
            extra = [n for n in sorted(self.planned) if n not in self.values and n not in missing]
        fetched: list[dict[str, np.ndarray]] = [{} for _ in self.feeds]
        if missing or extra:
            fetched = C.run_ort(self.model, self.feeds, missing + extra)
            self.runs += 1
            self.on_run()
            log.info("float-activations: ORT run %d fetched %d value(s)", self.runs, len(missing) + len(extra))
            for n in missing + extra:
                if keep or n in self.planned:
                    self.values[n] = [f[n] for f in fetched]
        return [{n: (self.values[n][i] if n in self.values else fetched[i][n]) for n in names}
                for i in range(len(self.feeds))]

    def keep_only(self, names: Iterable[str]) -> None:
        """Drop every held value not in `names`."""
        wanted = set(names)
        for n in [n for n in self.values if n not in wanted]:
            del self.values[n]


# ---------------------------------------------------------------- the manager


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A named analysis: `compute(model, manager)` gives its value; invalidating one of
    `depends` invalidates it too; once the property `kept_once` holds, nothing invalidates it."""

    name: str
    compute: Callable[[ir.Model, "AnalysisManager"], Any]
    depends: tuple[str, ...] = ()
    kept_once: str | None = None


def _float_model(model: ir.Model, manager: "AnalysisManager") -> spir.Frozen | None:
    return None if ops.spikec_nodes(model) else spir.freeze(model)


def _float_activations(model: ir.Model, manager: "AnalysisManager") -> FloatActivations:
    frozen = manager.get(FLOAT_MODEL, model)
    if frozen is None:
        raise SpikecError("float-activations: the float model is not available (the graph already holds spikec ops "
                          "and no pass took the float graph before quantization)")
    feeds = manager.feeds()
    if not feeds:
        raise SpikecError("float-activations: needs calibration data; pass --calib PATH")

    def counted() -> None:
        manager.ort_runs += 1

    return FloatActivations(frozen, feeds, lambda: manager.plan(model), counted)


def _layer_map(model: ir.Model, manager: "AnalysisManager") -> LayerMap:
    return layer_map(model.graph)


ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    Analysis(FLOAT_MODEL, _float_model, kept_once="quantized"),
    Analysis(FLOAT_ACTIVATIONS, _float_activations, depends=(FLOAT_MODEL,)),
    Analysis(LAYER_MAP, _layer_map),
)}


class AnalysisManager:
    """The analyses of one compile (module doc): `get(name, model)` computes on first
    request and caches; `invalidate(names, properties)` drops them. `computed[name]` counts
    how often each was computed and `ort_runs` how often the float model ran on ONNX
    Runtime (for tests and the log). `feeds()` gives the compile's calibration feeds."""

    def __init__(self, feeds: Callable[[], list[dict] | None] = lambda: None) -> None:
        self.feeds = feeds
        self.cache: dict[str, Any] = {}
        self.computed: collections.Counter[str] = collections.Counter()
        self.ort_runs = 0
        self.remaining: list = []  # the passes not yet finished, current first (set by the PassManager)

    def get(self, name: str, model: ir.Model) -> Any:
        """The analysis `name` of `model`, computed now if it is not cached. KeyError for an
        unknown name."""
        if name in self.cache:
            return self.cache[name]
        spec = ANALYSES[name]
        value = spec.compute(model, self)
        self.cache[name] = value
        self.computed[name] += 1
        log.info("analysis %s computed (%d time(s) this compile)", name, self.computed[name])
        return value

    def cached(self, name: str) -> Any:
        """The cached value of `name`, or None (computes nothing)."""
        return self.cache.get(name)

    def activations(self, model: ir.Model, names: Sequence[str], *, keep: bool = True) -> list[dict[str, np.ndarray]]:
        """Values `names` of the float model on each calibration feed (float-activations)."""
        return self.get(FLOAT_ACTIVATIONS, model).get(names, keep=keep)

    def plan(self, model: ir.Model) -> dict[int, list[str]]:
        """The float values each remaining pass declares it will read (SpikecPass.float_values),
        by id of the pass."""
        return {id(p): list(p.float_values(model)) for p in self.remaining}

    def invalidate(self, names: Iterable[str], properties: Iterable[str] = ()) -> list[str]:
        """Drop the analyses `names` and those depending on them, except an analysis whose
        `kept_once` property is in `properties`. Returns the names dropped."""
        holds = set(properties)
        todo, dropped = [n for n in names if n in ANALYSES], []
        while todo:
            n = todo.pop()
            spec = ANALYSES[n]
            if spec.kept_once is not None and spec.kept_once in holds:
                continue
            if self.cache.pop(n, None) is not None:
                dropped.append(n)
            todo.extend(a.name for a in ANALYSES.values() if n in a.depends)
        return dropped

    def before_pass(self, remaining: Sequence) -> None:
        """Called by the PassManager before each pass: `remaining` = that pass and those after it."""
        self.remaining = list(remaining)

    def after_pass(self, invalidates: Iterable[str], properties: Iterable[str], remaining: Sequence) -> None:
        """Called by the PassManager after each pass: drop what it invalidated, and the float
        activations no remaining pass planned to read."""
        self.invalidate(invalidates, properties)
        self.remaining = list(remaining)
        acts = self.cache.get(FLOAT_ACTIVATIONS)
        if acts is not None and acts.runs:
            if not remaining:
                del self.cache[FLOAT_ACTIVATIONS]
            else:
                acts.keep_only(n for p in remaining for n in acts.planned_by.get(id(p), ()))
