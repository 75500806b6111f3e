"""Options and shared state of the spiking passes (quantize ... msts) in one compile.

`SpikeOptions` are the user's choices (the `spikec compile` flags). `CompileContext`
is what the passes of one graph share: the options, the calibration feeds, the
compile's analyses (`analyses`: the float model, its activations on the calibration
feeds and the layer map, each computed once and invalidated by the passes that change
it; passes/analyses.py), and `results`, one entry per pass under its own name, which the
compile driver copies into the report (CompileReport.extra). Passes also write what
later passes need into the model's metadata_props (e.g. `spikec.med`), so a dumped IR
carries it too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import onnx

from spikec import ir as spir

from spikec.errors import SpikecError
from spikec.passes.analyses import FLOAT_MODEL, AnalysisManager
from spikec.passes.manager import SpikecPass
from spikec.ops import ACT_SCALES, MAX_T, NEURONS

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # ignored-option warnings already given in this process

CALIB_METHODS = ("max", "percentile", "mse")
DEFAULT_PERCENTILE, DEFAULT_CALIB_SAMPLES = 99.99, 8
WEIGHT_METHODS = ("rtn", "gptq")
GROUP_SIZES = (0, 32, 64, 128)  # --group-size: GPTQ's and AWQ's usual groups; 0 = per output channel
DEFAULT_TT, DEFAULT_TV = 4, 3  # the paper's operating point Tv/Tt = 3/4


@dataclasses.dataclass
class SpikeOptions:
    wbits: int = 8
    act_scale: str = "auto"  # static | dynamic | auto (static when --calib is given, else dynamic)
    calib: str | None = None
    calib_method: str = "max"
    percentile: float = DEFAULT_PERCENTILE
    calib_samples: int = DEFAULT_CALIB_SAMPLES  # image+prompt pairs (or npz feeds) used at most
    smooth: float | None = None  # SmoothQuant alpha
    neuron: str = "tc-lif"
    tv: int | None = None
    tt: int | None = None
    budget: float | None = None
    spike_attention: bool = False
    per_layer: bool = True  # msts may refine T per layer
    weight_method: str = "rtn"  # rtn | gptq (passes/gptq.py; needs calibration data)
    gptq_damp: float = 0.01  # GPTQ dampening, a fraction of the mean diagonal of H
    gptq_act_order: bool = False  # GPTQ: quantize input rows by decreasing diag(H)
    # weight scales per group of this many input rows (0: per output channel); a layer whose
    # K it does not divide keeps per-channel scales (spikec.reference.dequantize_acc)
    group_size: int = 0
    # norms, softmax and SiLU as spikec.vec functions (the vector-numerics pass): the
    # accelerator's numerics on every target; implied by --isa (spikec.compiler)
    exact_vector: bool = False
    # QuaRot's residual-stream rotation folded into the weights (passes/rotate.py), before
    # quantize; combines with either weight method (rotation + GPTQ as in the paper)
    rotate: bool = False
    online_hadamard: bool = True  # with rotate: QuaRot's online Hadamard before each down projection
    # with rotate and spike_attention: the attention products rotated online (passes/rotate.py)
    attention_hadamard: bool = True

    def validate(self) -> "SpikeOptions":
        if self.wbits not in (4, 8):
            raise SpikecError(f"--wbits {self.wbits}: weights are int8 or int4 (--wbits 8 or 4)")
        if self.act_scale not in ACT_SCALES + ("auto",):
            raise SpikecError(f"--act-scale {self.act_scale}: choose static or dynamic")
        if self.calib_method not in CALIB_METHODS:
            raise SpikecError(f"--calib-method {self.calib_method}: choose one of {', '.join(CALIB_METHODS)}")
        if not 0 < self.percentile <= 100:
            raise SpikecError(f"--percentile {self.percentile}: must be in (0, 100]")
        if self.smooth is not None and not 0 <= self.smooth <= 1:
            raise SpikecError(f"--smooth {self.smooth}: alpha must be in [0, 1]")
        if self.neuron not in NEURONS:
            raise SpikecError(f"--neuron {self.neuron}: choose one of {', '.join(NEURONS)}")
        for flag, t in (("--tv", self.tv), ("--tt", self.tt)):
            if t is not None and not 1 <= t <= MAX_T:
                raise SpikecError(f"{flag} {t}: timesteps must be 1..{MAX_T}" + (" (T = 0 would carry no spikes)" if t == 0 else ""))
        if self.budget is not None:
            if not 1 <= self.budget <= MAX_T:
                raise SpikecError(f"--budget {self.budget}: effective timesteps per token must be in 1..{MAX_T}")
            if self.tv is not None and self.tt is not None:
                raise SpikecError("--budget: give either --budget or both --tv and --tt, not all three")
        if self.act_scale == "static" and not self.calib:
            raise SpikecError("--act-scale static: static activation scales need calibration data; pass --calib PATH "
                              "(a folder of image+prompt pairs or an .npz of graph inputs) or use --act-scale dynamic")
        if self.calib_samples < 1:
            raise SpikecError(f"--calib-samples {self.calib_samples}: must be >= 1")
        if self.weight_method not in WEIGHT_METHODS:
            raise SpikecError(f"--weight-method {self.weight_method}: choose one of {', '.join(WEIGHT_METHODS)}")
        if self.weight_method == "gptq" and not self.calib:
            raise SpikecError("--weight-method gptq: GPTQ needs calibration data (the layers' input activations); "
                              "pass --calib PATH (a folder of image+prompt pairs or an .npz of graph inputs) "
                              "or use --weight-method rtn")
        if self.group_size not in GROUP_SIZES:
            raise SpikecError(f"--group-size {self.group_size}: choose one of {', '.join(map(str, GROUP_SIZES))} "
                              f"(0: one scale per output channel)")
        if self.group_size and self.neuron == "if":
            raise SpikecError("--group-size with --neuron if: the rate-IF offset fold is per output channel; "
                              "use the tc-lif neuron or --group-size 0")
        for msg in self.ignored():
            if msg not in _WARNED:  # validate runs once per graph too: say it once
                _WARNED.add(msg)
                log.warning("%s", msg)
        if not (0 < self.gptq_damp <= 1):  # also refuses NaN
            raise SpikecError(f"--gptq-damp {self.gptq_damp}: must be in (0, 1] (a fraction of the mean diagonal of H)")
        return self

    def ignored(self) -> list[str]:
        """Options given that have no effect with the others (warned by validate, not refused:
        a script may pass them for every run of a sweep)."""
        out = []
        if self.weight_method != "gptq" and (self.gptq_act_order or self.gptq_damp != 0.01):
            out.append("--gptq-act-order / --gptq-damp have no effect without --weight-method gptq")
        if not self.rotate and not (self.online_hadamard and self.attention_hadamard):
            out.append("--no-online-hadamard / --no-attention-hadamard have no effect without --rotate")
        if self.rotate and not self.spike_attention and not self.attention_hadamard:
            out.append("--no-attention-hadamard has no effect without --spike-attention")
        if not self.calib and (self.calib_method != "max" or self.calib_samples != DEFAULT_CALIB_SAMPLES):
            out.append("--calib-method / --calib-samples have no effect without --calib")
        if self.calib_method != "percentile" and self.percentile != DEFAULT_PERCENTILE:
            out.append("--percentile has no effect without --calib-method percentile")
        if self.budget is None and not self.per_layer:
            out.append("--no-per-layer has no effect without --budget")
        return out

    @property
    def static(self) -> bool:
        return self.act_scale == "static" or (self.act_scale == "auto" and bool(self.calib))

    def timesteps(self, names: list[str]) -> list[int]:
        """Per-modality T from --tv/--tt (defaults 3/4); unknown modalities get Tt."""
        tt = self.tt if self.tt is not None else DEFAULT_TT
        tv = self.tv if self.tv is not None else DEFAULT_TV
        return [tv if n == "vision" else tt for n in names]


@dataclasses.dataclass
class CompileContext:
    options: SpikeOptions = dataclasses.field(default_factory=SpikeOptions)
    feeds: list[dict] | None = None  # calibration feeds of this graph (None: no calibration data)
    calib_source: str = ""
    graph_modality: int | None = None  # modality id of every token when the graph has no modality input
    results: dict[str, Any] = dataclasses.field(default_factory=dict)  # pass name -> its report entry
    analyses: AnalysisManager | None = None  # made in __post_init__: reads this context's feeds

    def __post_init__(self) -> None:
        if self.analyses is None:
            self.analyses = AnalysisManager(lambda: self.feeds)

    @property
    def float_model(self) -> spir.Frozen | None:
        """The float graph the compile compares against (the float-model analysis), if taken."""
        return self.analyses.cached(FLOAT_MODEL)

    def quantization(self) -> dict | None:
        """The report entry of the pass that quantized the graph (`quantization_results`)."""
        return quantization_results(self.results)

    def require_feeds(self, who: str) -> list[dict]:
        if not self.feeds:
            raise SpikecError(f"pass '{who}': needs calibration data; pass --calib PATH")
        return self.feeds


QUANTIZING_PASSES = ("quantize", "import-qdq")


def quantization_results(results: dict[str, Any]) -> dict | None:
    """The results (report) entry of whichever pass quantized the graph: `quantize`'s, or
    `import-qdq`'s for a model quantized by another tool (it has `"source": "qdq"`); None
    when neither ran. Both have `layers` (one row per quantized product), `float` (what
    stayed float, with the reason) and `timesteps`. `results` is CompileContext.results or
    a graph's CompileReport.extra; read through this rather than `results["quantize"]`."""
    for name in QUANTIZING_PASSES:
        entry = results.get(name)
        if isinstance(entry, dict):
            return entry
    return None


class ContextPass(SpikecPass):
    """A pass that reads and writes the compile's shared CompileContext (options,
    calibration feeds, the analyses, results for the report)."""

    uses_context = True

    def __init__(self, context: CompileContext | None = None) -> None:
        self.ctx = context or CompileContext()

    def analysis_manager(self) -> AnalysisManager:
        return self.ctx.analyses
