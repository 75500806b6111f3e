"""The ONNX Runtime target: run a .sbin's spiking graphs on stock onnxruntime.

The .sbin stores target-neutral spiking graphs (`spikec` domain, reference
semantics). At load time each graph is lowered for onnxruntime
(`spikec/ort_lowering.py`) in `fused` mode (integer products, fast) or `exact`
mode (explicit spike planes, with spike counts per layer and modality); the two
give bit-identical outputs. Sessions wrap onnxruntime's so that the front end's
generation loop (`spikec.frontend.generate.OrtGenerator`) drives them unchanged.
"""

from __future__ import annotations

import collections
import logging
import os

import numpy as np
import onnx_ir as ir

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.ort_lowering import MODES, STATS_PREFIX, lower_for_ort
from spikec.runtime.ortops import library as ortops_library
from spikec.runtime.ortops import register as register_ortops

log = logging.getLogger(__name__)


class StatsSession:
    """An onnxruntime session that hides the exact mode's stats outputs from callers
    and accumulates them (spikes and tokens per modality, per spiking product).

    one_token_model: a second copy of `model` (the language model, run a token at a time
    while it generates). Where its fused W4 products can run one token on MatMulNBits
    (lower_for_ort(one_token=True)), it becomes a session of its own that every call of one
    token goes to (LoweringStats.one_token_dims all 1 in the feeds), and `model` is lowered
    without MatMulNBits: no If on the token count in either graph, and each weight is held
    in one form per session, as the single graph with the If held both. A W4 decode step at
    Qwen2-VL-2B widths (2 text layers, 2 threads, AVX2) ran at 0.91-0.93x the speed of ORT's
    MatMulNBits model with the If and at 0.97-0.98x so (docs/ort-target.md).
    ortops: in fused mode, where spikec's custom-op library is built and loads
    (spikec.runtime.ortops), both graphs are lowered onto its ops (lower_for_ort(ortops=True):
    encoders and product tails, and in the one-token graph each encoder and product as one
    SpikeEncodeMatMulNBits node; prefill's products SpikeMatMulIntegerToFloat, which holds
    each weight packed as MLAS' prepacking did, so not under the "in-place" policy) and their
    sessions register it; False, or no library, keeps the stock-operator graphs (the same
    numbers).
    options: a function giving fresh onnxruntime SessionOptions (one per session; the
    benchmark's profiling and spinning settings), in place of the default."""

    def __init__(self, role: str, model: ir.Model, mode: str, threads: int | None = None,
                 weights: str = "prepack", one_token_model: ir.Model | None = None, options=None,
                 ortops: bool = True) -> None:
        if weights not in WEIGHT_POLICIES:
            raise SpikecError(f"weights policy '{weights}' is not one of {', '.join(WEIGHT_POLICIES)}")
        self.role, self.weights = role, weights
        # prepack: W4 decode on MatMulNBits over the .sbin's packed sections, prefill on
        # prepacked MatMulInteger; nbits: every packed product on MatMulNBits (MLAS' 4-bit
        # prepacked copy); in-place: MatMulInteger over int8 read in place, nothing
        # prepacked. See choose_weight_policy.
        one_token = None
        library = ortops_library() if ortops and mode == "fused" else None
        if one_token_model is not None and mode == "fused" and weights == "prepack":
            try:
                one_token = lower_for_ort(one_token_model, mode, one_token=True, ortops=library is not None)
            except SpikecError as exc:  # no product takes the one-token path: one graph, as below
                log.debug("graph '%s': no one-token graph (%s)", role, exc)
        if weights == "in-place" or one_token is not None:
            # in place: no weight copied, not even into spikec.ortops' packed layout
            lowered = lower_for_ort(model, mode, nbits=False, ortops=library is not None,
                                    weight_copies=weights != "in-place")
        else:
            lowered = lower_for_ort(model, mode, in_place=weights == "nbits", ortops=library is not None)
        self.layers = lowered.layers or {}
        self.modality_inputs, self.modalities = lowered.modality_inputs, lowered.modalities
        make_options = options or (lambda: _session_options(threads, weights))
        self.session = _ort_session(role, model, self._options(make_options, library))
        self.one_token_session, self.token_axes = None, []
        if one_token is not None:
            self.one_token_session = _ort_session(role, one_token_model, self._options(make_options, library))
            self.token_axes = [(i.name, axis) for i in self.session.get_inputs()
                               for axis, d in enumerate(i.shape) if d in one_token.one_token_dims]
            for name, info in one_token.layers.items():  # which products take one token on MatMulNBits
                if "one_token" in info:
                    self.layers.setdefault(name, dict(info))["one_token"] = info["one_token"]
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = [o for o in outputs if not o.startswith(STATS_PREFIX)]
        self.stats_names = [o for o in outputs if o.startswith(STATS_PREFIX)]
        self.counts: dict[str, np.ndarray] = collections.defaultdict(lambda: 0)
        self.calls = 0

    @staticmethod
    def _options(make_options, library: str | None):
        """Fresh SessionOptions, with spikec's custom-op library registered where it is used."""
        options = make_options()
        if library is not None:
            register_ortops(options, library)
        return options

    def session_for(self, feeds: dict) -> "object":
        """The one-token session for a call whose token axes are all 1, else the main one."""
        if self.one_token_session is not None and all(np.shape(feeds[n])[a] == 1 for n, a in self.token_axes):
            return self.one_token_session
        return self.session

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise SpikecError(f"graph '{self.role}': missing inputs {missing} (expects {self.input_names})")
        for name in self.modality_inputs:  # onnxruntime's Gather would take -1 as the last modality
            ids = np.asarray(feeds[name])
            if ids.size and (ids.min() < 0 or ids.max() >= len(self.modalities)):
                bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
                raise SpikecError(f"graph '{self.role}': input '{name}' holds modality id {bad}; this model's "
                                  f"modalities are 0..{len(self.modalities) - 1} ({', '.join(self.modalities)})")
        wanted = list(output_names) if output_names else self.output_names
        session = self.session_for(feeds)
        try:
            outs = session.run(wanted + self.stats_names, {n: feeds[n] for n in self.input_names})
        except ort_errors() as exc:
            # e.g. a spikec.ortops kernel refusing a weight that does not fit its input: the
            # custom ops' outputs carry no shapes, so onnxruntime finds it only when it runs
            raise SpikecError(f"graph '{self.role}': onnxruntime cannot run it: {exc}") from exc
        for name, value in zip(self.stats_names, outs[len(wanted):]):
            self.counts[name[len(STATS_PREFIX):]] = self.counts[name[len(STATS_PREFIX):]] + value
        self.calls += 1
        return outs[: len(wanted)]

    def end_profiling(self) -> list[str]:
        """onnxruntime's profile files of this session's graphs (where profiling was on)."""
        sessions = [self.session] + ([self.one_token_session] if self.one_token_session is not None else [])
        return [s.end_profiling() for s in sessions]

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return [o for o in self.session.get_outputs() if not o.name.startswith(STATS_PREFIX)]


def _session_options(threads: int | None, weights: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if weights == "in-place":
        # (MatMulNBits, which is never run unprepacked -- MLAS then takes a path about 100x
        # slower: decode at 2B widths 922 ms against 9.3 ms -- is not used here)
        opts.add_session_config_entry("session.disable_prepacking", "1")
    return opts


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types onnxruntime raises when a session cannot load or run a graph
    (inputs that do not fit it, a kernel refusing its inputs)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented",
                                               "RuntimeException", "EPFail") if hasattr(state, n))


def _ort_session(role: str, lowered: ir.Model, opts):
    try:
        # weights reach onnxruntime as views of the .sbin's memory map, not copies
        return spir.ort_session(lowered, opts)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SpikecError(f"graph '{role}': onnxruntime cannot load the lowered graph: {exc}") from None


# onnxruntime "prepacks" constant integer weights into its own layout: a copy of every
# weight in anonymous memory, for faster products (Qwen2-VL-2B widths, W8: 500 vs 769 ms
# per decode step on 2 threads; MatMulNBits is about 100x slower unprepacked). What is
# copied is bounded by this share of the memory available (choose_weight_policy); beyond
# it the weights are used where they lie in files, so any model runs in bounded memory.
PREPACK_MEMORY_SHARE = 0.25
LM_ROLE = "lm"  # the manifest's graph role of the language model (spikec/frontend/manifest.py)
WEIGHT_POLICIES = ("prepack", "nbits", "in-place")


def packed_copy_factor() -> int:
    """Bytes the "prepack" policy holds per byte of a packed 4-bit section (two weights): 2
    for the prefill session's int8 form, plus 1 for MLAS' 4-bit copy in the one-token session
    on stock operators (MatMulNBits prepacks); spikec.ortops' SpikeEncodeMatMulNBits reads
    the section in place, so 2 where that library loads."""
    return 2 if ortops_library() is not None else 3


def choose_weight_policy(sbin) -> str:
    """How a .sbin's graphs hold their weights in onnxruntime, the fastest that copies at
    most PREPACK_MEMORY_SHARE of the available memory ("prepack" when that cannot be read):

    - "prepack": everything prepacked; W4 one-token products on MatMulNBits over the packed
      sections, multi-token ones on MatMulInteger over int8 unpacked into a mapped temporary
      file (copies: about 1 byte per int8 weight, 1.5 per packed 4-bit one; 1 where spikec's
      custom ops load, whose one-token kernel reads the packed sections without MLAS' copy:
      packed_copy_factor);
    - "nbits": every product with packed 4-bit weights on MatMulNBits for any token count,
      MLAS' 4-bit prepacked copy only (about half a byte per weight; prefill about 2x
      slower than MatMulInteger);
    - "in-place": nothing copied: MatMulInteger over the .sbin's int8 weights read in place
      (decode about 1.5x slower than prepacked). A .sbin with packed 4-bit weights never
      gets it: their int8 form would have to reach onnxruntime from another file, and
      onnxruntime copies weights it does not map from the model's own folder (1 byte per
      weight, measured), so "nbits" (half a byte) is the least such a model can hold."""
    from spikec.isa.container import SectionKind
    from spikec.memory import available_bytes

    int8 = sum(sbin.file.sections[n].size for n in sbin.file.names(SectionKind.TENSOR))
    packed = sum(sbin.file.sections[n].size for n in sbin.file.names(SectionKind.TENSOR_INT4))
    available = available_bytes()
    if available is None or int8 + packed_copy_factor() * packed <= PREPACK_MEMORY_SHARE * available:
        return "prepack"
    if packed:
        if packed > PREPACK_MEMORY_SHARE * available:
            log.warning("%s: the 4-bit weights (%.1f GiB, held once more by onnxruntime's MatMulNBits) take more than "
                        "%d%% of the available memory (%.1f GiB)", sbin.path, packed / 2**30,
                        round(100 * PREPACK_MEMORY_SHARE), available / 2**30)
        return "nbits"
    return "in-place"


def create_sessions(sbin, mode: str = "fused", threads: int | None = None) -> dict[str, StatsSession]:
    """Lowered sessions for every graph role of an opened .sbin (spikec.package.SbinModel);
    weights are read in place from the .sbin's memory map (prepacked copies only when small,
    see choose_weight_policy)."""
    if mode not in MODES:
        raise SpikecError(f"--mode: '{mode}' is not one of {', '.join(MODES)}")
    policy = choose_weight_policy(sbin)
    log.info("onnxruntime weights: %s", {"prepack": "prepacked", "nbits": "4-bit products on MatMulNBits (prepacked)",
                                         "in-place": "used in place, not prepacked"}[policy])
    sessions = {}
    for role in sbin.roles:
        # the language model generates a token at a time: its one-token calls get a graph of their own
        one_token = sbin.model(role) if role == LM_ROLE else None
        sessions[role] = StatsSession(role, sbin.model(role), mode, threads, policy, one_token)
    return sessions


def spike_stats(sessions: dict[str, StatsSession], modality_names: list[str]) -> dict:
    """Per spiking product and modality: spikes, tokens, spike rate, SOPs, float MACs.

    rate = spikes / (tokens * K * planes), planes = T (TC-LIF) or 2**(T+1) - 1 (rate IF);
    a synaptic operation is one nonzero spike meeting one weight, so SOPs = spikes * M;
    the float model's MACs for the same product are tokens * K * M."""
    layers = []
    totals = collections.Counter()
    for role, sess in sessions.items():
        for name, counts in sess.counts.items():
            info = sess.layers.get(name, {})
            K, M, T = info.get("K"), info.get("M"), info.get("timesteps", [])
            counts = np.asarray(counts)
            if counts.ndim != 2:
                continue
            row = {"graph": role, "layer": name, "K": K, "M": M, "neuron": info.get("neuron"), "modalities": {}}
            for m, mod in enumerate(modality_names):
                spikes, tokens = int(counts[0, m]), int(counts[1, m])
                if tokens == 0:
                    continue
                t = int(T[m]) if m < len(T) else 0
                planes = t if info.get("neuron") != "if" else 2 ** (t + 1) - 1
                possible = tokens * (K or 0) * planes
                sops = spikes * (M or 0)
                macs = tokens * (K or 0) * (M or 0)
                row["modalities"][mod] = {
                    "T": t, "tokens": tokens, "spikes": spikes,
                    "rate": spikes / possible if possible else 0.0, "sops": sops, "float_macs": macs,
                }
                totals[f"{mod}.tokens_T"] += tokens * t
                totals[f"{mod}.tokens"] += tokens
                totals["sops"] += sops
                totals["macs"] += macs
                totals["spikes"] += spikes
                totals["possible"] += possible
            layers.append(row)
    tok = sum(totals[f"{m}.tokens"] for m in modality_names)
    summary = {
        "spiking_products": len(layers),
        "spikes": totals["spikes"],
        "spike_rate": totals["spikes"] / totals["possible"] if totals["possible"] else 0.0,
        "sops": totals["sops"],
        "float_macs": totals["macs"],
        "sops_per_mac": totals["sops"] / totals["macs"] if totals["macs"] else 0.0,
        # token-layer weighted: (sum_i T_i) / N over every spiking product a token passes
        "effective_timesteps": sum(totals[f"{m}.tokens_T"] for m in modality_names) / tok if tok else 0.0,
        "effective_timesteps_by_modality": {
            m: totals[f"{m}.tokens_T"] / totals[f"{m}.tokens"] for m in modality_names if totals[f"{m}.tokens"]
        },
    }
    return {"summary": summary, "layers": layers}


def default_threads() -> int | None:
    value = os.environ.get("SPIKEC_THREADS")
    return int(value) if value else None
