"""The compile driver: load, run the pass pipeline, save.

`compile_onnx` is what `spikec compile` calls; it is also the Python API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

from spikec import ir as spir
from spikec.errors import SpikecError
from spikec.passes import GENERIC_PIPELINE, PASSES, CompileReport, PassManager, SpikecPass

log = logging.getLogger(__name__)


def build_pipeline(names: Sequence[str]) -> list[SpikecPass]:
    """Instantiate passes by name; an unknown name is a user error listing the known ones."""
    passes = []
    for name in names:
        cls = PASSES.get(name)
        if cls is None:
            raise SpikecError(f"--passes: unknown pass '{name}' (known: {', '.join(sorted(PASSES))})")
        passes.append(cls())
    return passes


def compile_onnx(
    input_path: str | Path,
    output_path: str | Path,
    *,
    pipeline: Sequence[str] = GENERIC_PIPELINE,
    dump_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompileReport:
    """Compile one ONNX file through `pipeline` and write the result to `output_path`."""
    output_path = Path(output_path)
    if output_path.suffix != ".onnx":
        raise SpikecError(f"-o {output_path}: unsupported output type '{output_path.suffix}' (this version writes .onnx)")
    if Path(input_path).resolve() == output_path.resolve():
        raise SpikecError(f"-o {output_path}: the output would overwrite the input; choose another path")
    model = spir.load_model(input_path)
    manager = PassManager(build_pipeline(pipeline), dump_dir=dump_dir, progress=progress)
    report = manager.run(model, input_name=str(input_path))
    spir.save_model(model, output_path)
    return report
