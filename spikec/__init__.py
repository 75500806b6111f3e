"""spikec: a compiler that turns multimodal LLMs into spike-driven models.

See README.md for the workflow (export -> compile -> run) and
docs/ for the design. The numeric contract is in shared/design/SEMANTICS.md,
implemented by `spikec.reference`.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from spikec.errors import SpikecError

try:
    __version__ = _version("spikec")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"



def load(path, *, target: str = "ort", mode: str = "fused", threads: int | None = None):
    """Open a compiled model (.sbin): `spikec.load("model.sbin").generate(image, prompt)`.

    See spikec.runtime.model.CompiledModel."""
    from spikec.runtime.model import load as _load

    return _load(path, target=target, mode=mode, threads=threads)


__all__ = ["SpikecError", "__version__", "load"]
