"""One adapter per model family; `adapter_for` picks one from a config's model_type."""

from __future__ import annotations

from spikec.errors import SpikecError
from spikec.frontend.adapters.base import Adapter
from spikec.frontend.adapters.idefics3 import Idefics3Adapter
from spikec.frontend.adapters.internvl import InternVLAdapter
from spikec.frontend.adapters.llava import LlavaAdapter
from spikec.frontend.adapters.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (Qwen2VLAdapter, Qwen2_5_VLAdapter, LlavaAdapter, InternVLAdapter, Idefics3Adapter)
SUPPORTED_MODEL_TYPES = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str, where: str = "config.json") -> type[Adapter]:
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise SpikecError(
        f"{where}: unsupported architecture model_type={model_type!r}; "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def adapter_by_family(family: str) -> type[Adapter]:
    for a in ADAPTERS:
        if a.family == family:
            return a
    raise SpikecError(f"manifest.json: unknown family {family!r}; known: {', '.join(a.family for a in ADAPTERS)}")
