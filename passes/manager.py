"""The pass manager: an ordered list of named passes, verified and dumpable.

In the spirit of LLVM/MLIR pipelines (`-print-ir-after-all`, `-verify-each`),
built on onnx_ir's pass infrastructure: every pass is an `onnx_ir.passes.PassBase`
(so its `requires`/`ensures` pre- and post-conditions run with it) that also
carries spikec's pipeline metadata:

- `name`: how the pipeline, the dumps and the report refer to it;
- `needs`: named properties of the model that must hold before it runs
  (e.g. "shapes-inferred", "quantized"), each guaranteed by an earlier pass;
- `guarantees`: properties that hold after it runs;
- `invalidates`: properties it may break, and analyses (passes/analyses.py) whose
  cached results it makes stale.

Properties are checked, not only declared. Each has a check registered with
`register_property` (next to the pass that establishes it) that inspects the model and
raises SpikecError naming the node at fault (a name with no registered check is only
declared, and trusted). `SpikecPass.requires` checks the pass's
`needs` before it runs and `SpikecPass.ensures` its `guarantees` after (onnx_ir's
pre/postcondition hooks); the manager turns a failure into "pass 'NAME': precondition
(postcondition) failed: ...". Before anything runs, the manager refuses a pipeline in which
a pass needs a property no earlier pass guarantees (or a later one invalidated).

After each pass the manager runs the verifier (`spikec.ir.verify`), invalidates the
analyses the pass names in `invalidates`, optionally writes `NN-<pass>.onnx` and
`NN-<pass>.txt` to the dump folder, and records a report entry (wall time, node counts by
op type, parameter bytes, the properties that hold after it). The manager writes into its
dump folder in place; `spikec compile` (spikec/compiler.py, `dump_folder`) gives it a
temporary folder that is renamed onto `--dump-ir DIR` only when the compile succeeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import onnx_ir as ir

from spikec import atomic
from spikec import ir as spir
from spikec.errors import SpikecError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Property:
    """A named property of a model: `check(model)` returns when it holds and raises
    SpikecError naming the node (or field) at fault when it does not."""

    name: str
    doc: str
    check: Callable[[ir.Model], None]


PROPERTIES: dict[str, Property] = {}

# The files of a dump folder: NN-<pass>.onnx (+ .data beside a big one), NN-<pass>.txt, report.json
_DUMP_FILE = re.compile(r"(\d{2,}-[^/]+\.(onnx|onnx\.data|txt)|report\.json)")


def is_dump_folder(path: Path) -> bool:
    """A folder an earlier `--dump-ir` wrote, which a new one may replace: at least one
    report.json, and no file but the dumps' own (NN-<pass>.onnx, .onnx.data, .txt,
    report.json) in it or its subfolders (one per graph, lower-ort/, lower-isa/)."""
    files = [f for f in Path(path).rglob("*") if not f.is_dir() or f.is_symlink()]
    return (any(f.name == "report.json" for f in files)
            and all(not f.is_symlink() and _DUMP_FILE.fullmatch(f.name) for f in files))


def register_property(name: str, doc: str) -> Callable[[Callable[[ir.Model], None]], Callable[[ir.Model], None]]:
    """Decorator: register `check` as the check of property `name` (one per name)."""

    def register(check: Callable[[ir.Model], None]) -> Callable[[ir.Model], None]:
        old = PROPERTIES.get(name)
        if old is not None and (old.check.__module__, old.check.__qualname__) != (check.__module__, check.__qualname__):
            raise TypeError(f"property '{name}' already has a check ({PROPERTIES[name].check.__qualname__})")
        PROPERTIES[name] = Property(name, doc, check)
        return check

    return register


def check_property(name: str, model: ir.Model) -> None:
    """Run the check of property `name` on `model` (SpikecError "NAME: ..." when it does not
    hold). A property nobody registered a check for is only declared: it is trusted (logged)."""
    prop = PROPERTIES.get(name)
    if prop is None:
        log.debug("property '%s' has no registered check: trusted as declared", name)
        return
    try:
        prop.check(model)
    except SpikecError as exc:
        raise SpikecError(f"{name}: {exc}") from None


class SpikecPass(ir.passes.InPlacePass):
    """An in-place onnx_ir pass with a name and declared, checked needs/guarantees."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    guarantees: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()

    def requires(self, model: ir.Model) -> None:
        """Every property in `needs` holds (onnx_ir runs this before `call`)."""
        for name in self.needs:
            check_property(name, model)

    def ensures(self, model: ir.Model) -> None:
        """Every property in `guarantees` holds (onnx_ir runs this after `call`)."""
        for name in self.guarantees:
            check_property(name, model)

    def float_values(self, model: ir.Model) -> list[str]:
        """Names of the float model's values this pass will read on the calibration feeds
        (the float-activations analysis fetches them all in one run; passes/analyses.py)."""
        return []

    def analysis_manager(self) -> Any:
        """The AnalysisManager of the compile this pass belongs to, or None (a pass that
        reads no analysis); the PassManager invalidates through it."""
        return None


@dataclasses.dataclass
class PassRecord:
    index: int
    name: str
    wall_s: float
    modified: bool
    nodes: int
    ops: dict[str, int]
    parameters: int
    parameter_bytes: int
    dumps: list[str]
    properties: list[str] = dataclasses.field(default_factory=list)  # what holds after the pass


@dataclasses.dataclass
class CompileReport:
    input: str
    passes: list[PassRecord]
    properties: list[str]
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"


class PassManager:
    """Runs `passes` in order with verification, dumps and a report."""

    def __init__(
        self,
        passes: Sequence[SpikecPass],
        *,
        dump_dir: str | Path | None = None,
        verify_each: bool = True,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        names = [p.name for p in passes]
        for p in passes:
            if not p.name:
                raise TypeError(f"{type(p).__name__} has no pass name")
        if len(set(names)) != len(names):
            # Dump files and report rows are keyed by index, but repeated names
            # usually mean a mistaken pipeline: allow it only explicitly.
            log.info("pipeline repeats pass names: %s", names)
        self.passes = list(passes)
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.verify_each = verify_each
        self.progress = progress or (lambda msg: None)
        self._check_order()

    def _check_order(self) -> None:
        """Every `needs` must be guaranteed by an earlier pass: fail before running anything."""
        have: set[str] = set()
        for p in self.passes:
            missing = [n for n in p.needs if n not in have]
            if missing:
                raise SpikecError(
                    f"pipeline: pass '{p.name}' needs {', '.join(missing)}, which no earlier pass guarantees"
                )
            have.difference_update(p.invalidates)
            have.update(p.guarantees)

    def run(self, model: ir.Model, *, input_name: str = "") -> CompileReport:
        records: list[PassRecord] = []
        have: set[str] = set()
        managers = list({id(m): m for m in (p.analysis_manager() for p in self.passes) if m is not None}.values())
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        if self.verify_each:
            spir.verify(model, after="(input)")
        for index, p in enumerate(self.passes, start=1):
            self.progress(f"[{index}/{len(self.passes)}] {p.name}")
            for m in managers:
                m.before_pass(self.passes[index - 1:])
            start = time.perf_counter()
            try:
                result = p(model)
            except (ir.passes.PreconditionError, ir.passes.PostconditionError) as exc:
                kind = "precondition" if isinstance(exc, ir.passes.PreconditionError) else "postcondition"
                detail = exc.__cause__ if isinstance(exc.__cause__, SpikecError) else exc
                raise SpikecError(f"pass '{p.name}': {kind} failed: {detail}") from exc
            except ir.passes.PassError as exc:
                # onnx_ir wraps errors raised inside a pass; surface user errors as they are.
                cause = exc.__cause__
                if isinstance(cause, SpikecError):
                    raise cause from None
                raise
            wall = time.perf_counter() - start
            model = result.model
            if self.verify_each:
                spir.verify(model, after=p.name)
            have.difference_update(p.invalidates)
            have.update(p.guarantees)
            for m in managers:
                m.after_pass(p.invalidates, have, self.passes[index:])
            dumps = self._dump(model, index, p.name) if self.dump_dir is not None else []
            params, nbytes = spir.parameter_stats(model)
            hist = spir.op_histogram(model)
            records.append(
                PassRecord(index, p.name, round(wall, 6), bool(result.modified), sum(hist.values()), hist, params, nbytes, dumps,
                           sorted(have))
            )
            log.info("pass %s: %.3f s, modified=%s, %d nodes", p.name, wall, result.modified, sum(hist.values()))
        report = CompileReport(input=input_name, passes=records, properties=sorted(have))
        if self.dump_dir is not None:
            atomic.write_text(self.dump_dir / "report.json", report.to_json())
        return report

    def _dump(self, model: ir.Model, index: int, name: str) -> list[str]:
        stem = f"{index:02d}-{name}"
        onnx_path = self.dump_dir / f"{stem}.onnx"
        txt_path = self.dump_dir / f"{stem}.txt"
        spir.save_model(model, onnx_path)
        atomic.write_text(txt_path, spir.to_text(model))
        return [onnx_path.name, txt_path.name]
