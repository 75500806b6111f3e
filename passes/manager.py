"""The pass manager: an ordered list of named passes, verified and dumpable.

In the spirit of LLVM/MLIR pipelines (`-print-ir-after-all`, `-verify-each`),
built on onnx_ir's pass infrastructure: every pass is an `onnx_ir.passes.PassBase`
(so its `requires`/`ensures` pre- and post-conditions run with it) that also
carries spikec's pipeline metadata:

- `name`: how the pipeline, the dumps and the report refer to it;
- `needs`: named properties of the model that must hold before it runs
  (e.g. "shapes-inferred", "quantized"), each guaranteed by an earlier pass;
- `guarantees`: properties that hold after it runs;
- `invalidates`: properties it may break.

After each pass the manager runs the verifier (`spikec.ir.verify`), optionally
writes `NN-<pass>.onnx` and `NN-<pass>.txt` to the dump folder, and records a
report entry (wall time, node counts by op type, parameter bytes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import onnx_ir as ir

from spikec import atomic
from spikec import ir as spir
from spikec.errors import SpikecError

log = logging.getLogger(__name__)


class SpikecPass(ir.passes.InPlacePass):
    """An in-place onnx_ir pass with a name and declared needs/guarantees."""

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    guarantees: ClassVar[tuple[str, ...]] = ()
    invalidates: ClassVar[tuple[str, ...]] = ()


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
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        if self.verify_each:
            spir.verify(model, after="(input)")
        for index, p in enumerate(self.passes, start=1):
            self.progress(f"[{index}/{len(self.passes)}] {p.name}")
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
            dumps = self._dump(model, index, p.name) if self.dump_dir is not None else []
            params, nbytes = spir.parameter_stats(model)
            hist = spir.op_histogram(model)
            records.append(
                PassRecord(index, p.name, round(wall, 6), bool(result.modified), sum(hist.values()), hist, params, nbytes, dumps)
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
