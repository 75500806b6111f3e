"""spikec's ONNX Runtime custom-op library (domain `spikec.ortops`), optional.

`SpikeEncodeMatMulNBits` (spikec_ortops.cc) is one token's TC-LIF encoder and one spiking
product over the .sbin's packed 4-bit weights in one kernel, the same bits as the stock
operators' one-token group (spikec/ort_lowering.py, `_one_token_nbits_fn`) in one node
instead of about fifteen. The ORT target uses it for W4 decode steps where the library is
built and loads; everywhere else the stock-operator graph runs, with the same results.

The library is built by `make venv` (runtime/ortops/build.sh, which fetches onnxruntime's
headers from the npm registry) into build/ortops/ of a source checkout. Environment:
SPIKEC_ORTOPS=0 turns it off; SPIKEC_ORTOPS=/path/to/lib.so names another build.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from spikec.ort_lowering import ORTOPS_DOMAIN as DOMAIN  # noqa: F401 - the domain its ops are lowered into

log = logging.getLogger(__name__)

ENV = "SPIKEC_ORTOPS"
# A source checkout's build (the package lives at runtime/ortops/ of the repository).
DEFAULT_LIBRARY = Path(__file__).resolve().parents[2] / "build" / "ortops" / "libspikec_ortops.so"


def library() -> str | None:
    """The path of a custom-op library that onnxruntime registers, or None (not built, turned
    off by SPIKEC_ORTOPS=0, or refused by this onnxruntime: logged at debug level)."""
    choice = os.environ.get(ENV, "")
    if choice.lower() in ("0", "off", "no", "false"):
        return None
    return _checked(choice or str(DEFAULT_LIBRARY))


@functools.lru_cache(maxsize=None)
def _checked(path: str) -> str | None:
    if not Path(path).is_file():
        log.debug("ortops: no library at %s (built by `make venv`)", path)
        return None
    import onnxruntime as ort

    try:
        ort.SessionOptions().register_custom_ops_library(path)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types; any means unusable
        log.warning("ortops: onnxruntime refused %s (%s); running the stock-operator graph", path, exc)
        return None
    return path


def register(options, path: str) -> None:
    """Register the library at `path` (from library()) on onnxruntime SessionOptions."""
    options.register_custom_ops_library(path)
