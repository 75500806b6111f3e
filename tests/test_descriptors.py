"""Typed kernel descriptors (isa/descriptors.py), the planning functions' TilingError
(isa/tiling.py) and the lower-isa pass (passes/lower_isa.py).

- `from_json` refuses a missing, mistyped or out-of-range field, naming it;
- `to_json(from_json(x)) == x` for the descriptors of compiled models (all three kinds,
  static scales included), and the section's bytes are `to_bytes()` of what it reads;
- a plan that does not fit raises TilingError (a SpikecError);
- lower-isa is a registered pass whose result the dump and the report show, and which
  gives the same artifact as `lower_graphs`, with indices and offsets global over graphs.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from pathlib import Path

import onnx_ir as ir
import pytest

from spike_graphs import exported
from isa_graphs import attention_graph, linear_graph
from spikec.compiler import compile_path
from spikec.errors import SpikecError
from spikec.isa import tiling
from spikec.isa.container import SbinFile
from spikec.isa.descriptors import AttentionKernel, KernelsDocument, ProductKernel, VecKernel
from spikec.isa.fields import VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.passes import PASSES, PassManager, lower_isa
from spikec.passes.options import SpikeOptions

CFG = HwConfig.load("default")


@functools.cache
def compiled_doc() -> tuple[dict, bytes, int]:
    """tiny-llava with --spike-attention, lowered: (isa/kernels as parsed JSON, its bytes, weights length)."""
    out = Path(tempfile.mkdtemp(prefix="spikec-test-desc-")) / "m.sbin"
    compile_path(exported("tiny-llava"), out, options=SpikeOptions(tv=3, tt=4, spike_attention=True).validate(),
                 isa=True)
    with SbinFile(out) as f:
        data = f.read("isa/kernels")
        return json.loads(data), data, len(f.read("isa/weights"))


def _static_product() -> ProductKernel:
    model, *_ = linear_graph(40, 100, [4, 3], 8, "tc-lif", "static", True)
    (k,) = lower_isa.lower_graphs({"g": model}, CFG).kernels
    return k


# ---------------------------------------------------------------- round trips


def test_compiled_descriptors_round_trip():
    obj, data, wlen = compiled_doc()
    doc = KernelsDocument.from_json(obj, "isa/kernels", CFG, wlen)
    assert doc.kernels and doc.vec_kernels and doc.attn_kernels
    assert all(isinstance(k, ProductKernel) for k in doc.kernels)
    assert all(isinstance(k, VecKernel) and isinstance(k.func, VecFunc) for k in doc.vec_kernels)
    assert all(isinstance(k, AttentionKernel) for k in doc.attn_kernels)
    assert doc.to_json() == obj
    assert doc.to_bytes() == data  # what the compile wrote, byte for byte
    for key, kind in (("kernels", ProductKernel), ("vec_kernels", VecKernel), ("attn_kernels", AttentionKernel)):
        for i, k in enumerate(obj[key]):
            assert kind.from_json(k, f"{key}[{i}]", CFG, index=i, weights_len=wlen).to_json() == k


def test_static_scales_round_trip():
    k = _static_product()
    assert k.static and len(k.static_scales) == 2 and k.static_offset is not None
    back = ProductKernel.from_json(json.loads(json.dumps(k.to_json())), "k", CFG)
    assert back == k and back.to_json() == k.to_json()


def test_descriptors_are_frozen():
    k = _static_product()
    with pytest.raises(AttributeError):
        k.K = 1


# ---------------------------------------------------------------- rejections

FAULTS = [  # (kind, mutate, message)
    ("kernels", lambda d: d.pop("K"), "field 'K' is missing"),
    ("kernels", lambda d: d.__setitem__("wbits", "8"), "field 'wbits' must be an integer"),
    ("kernels", lambda d: d.__setitem__("n_max", 0), "field 'n_max' must be in 1.."),
    ("kernels", lambda d: d.__setitem__("m_tile", 10**6), "field 'm_tile' must be in"),
    ("kernels", lambda d: d.__setitem__("tiles", []), "field 'tiles' is not the layout"),
    ("kernels", lambda d: d.__setitem__("timesteps", [4, 99]), "field 'timesteps'[1] must be in"),
    ("kernels", lambda d: d.__setitem__("has_bias", 1), "field 'has_bias' must be a boolean"),
    ("kernels", lambda d: d.__setitem__("weights_offset", 2**40), "field 'weights_offset' must be in"),
    ("vec_kernels", lambda d: d.__setitem__("func", "DEQ"), "field 'func' must be one of"),
    ("vec_kernels", lambda d: d.pop("output"), "field 'output' is missing"),
    ("vec_kernels", lambda d: d.__setitem__("max_len", 10**6), "field 'max_len' must be in"),
    ("vec_kernels", lambda d: d.__setitem__("inputs", []), "field 'inputs' (its length) must be in"),
    ("attn_kernels", lambda d: d.__setitem__("bits", 9), "field 'bits' must be in 2..8"),
    ("attn_kernels", lambda d: d.__setitem__("wtrans", 1), "field 'wtrans' must be a boolean"),
    ("attn_kernels", lambda d: d.pop("code"), "field 'code' is missing"),
]


@pytest.mark.parametrize("key, mutate, message", FAULTS, ids=[f"{f[0]}-{f[2][:24]}" for f in FAULTS])
def test_from_json_names_the_bad_field(key, mutate, message):
    obj, _, wlen = compiled_doc()
    bad = copy.deepcopy(obj)
    mutate(bad[key][0])
    with pytest.raises(SpikecError) as exc:
        KernelsDocument.from_json(bad, "m.sbin:isa/kernels", CFG, wlen)
    assert f"m.sbin:isa/kernels: {key}[0]: " in str(exc.value) and message in str(exc.value), str(exc.value)


def test_a_descriptor_out_of_place_is_refused():
    obj, _, wlen = compiled_doc()
    with pytest.raises(SpikecError, match=r"kernels\[1\]: field 'index' must be one of 1, got 0"):
        ProductKernel.from_json(obj["kernels"][0], "kernels[1]", CFG, index=1, weights_len=wlen)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.__setitem__("version", 99), "not a spikec-isa-kernels v1 document"),
    (lambda d: d.pop("kernels"), "field 'kernels' is missing"),
    (lambda d: d.__setitem__("kernels", {}), "field 'kernels' must be a list"),
])
def test_the_document_is_checked(mutate, message):
    obj, _, wlen = compiled_doc()
    bad = copy.deepcopy(obj)
    mutate(bad)
    with pytest.raises(SpikecError, match=message):
        KernelsDocument.from_json(bad, "isa/kernels", CFG, wlen)


def test_a_kernel_is_checked_against_the_configuration():
    obj, _, _ = compiled_doc()
    big = max(obj["kernels"], key=lambda k: k["n_max"])
    with pytest.raises(SpikecError, match="do not fit the buffers of hardware configuration 'small'"):
        ProductKernel.from_json(big, "k", HwConfig.load("small"))


# ---------------------------------------------------------------- planning


def test_plans_that_do_not_fit_raise_tiling_error():
    assert issubclass(tiling.TilingError, SpikecError)
    with pytest.raises(tiling.TilingError, match="K=16384 exceeds"):
        tiling.plan_tiles(CFG, 16384, 16, 8)
    with pytest.raises(tiling.TilingError, match="even row length"):
        tiling.plan_vec(CFG, VecFunc.ROPE, 3)
    with pytest.raises(tiling.TilingError, match="exceed one ENCODE row"):
        tiling.plan_attention(CFG, 64, 64, 10**6)
    plan = tiling.plan_tiles(CFG, 64, 96, 8)
    assert isinstance(plan, tiling.TilePlan) and plan.k_tile == 64 and plan.n_max >= 1
    assert tiling.plan_vec(CFG, VecFunc.SOFTMAX, 64) >= 1 and tiling.plan_attention(CFG, 8, 8, 64) >= 1


# ---------------------------------------------------------------- the lower-isa pass


def _two_graphs() -> dict[str, ir.Model]:
    a, *_ = linear_graph(40, 100, [4, 3], 8, "tc-lif", "dynamic", True)
    b, *_ = linear_graph(48, 32, [4, 3], 4, "tc-lif", "dynamic", False, seed=1)
    return {"b": b, "a": a}


def test_lower_model_equals_lower_graphs_with_global_indices(tmp_path):
    direct = lower_isa.lower_graphs(_two_graphs(), CFG)
    art, records = lower_isa.lower_model(_two_graphs(), CFG, dump_dir=tmp_path)
    assert art.weights == direct.weights and art.kernels_json() == direct.kernels_json()
    assert [(k.graph, k.index) for k in art.kernels] == [("a", 0), ("b", 1)]  # roles in sorted order, one index space
    assert art.kernels[1].weights_offset == art.kernels[0].weights_offset + art.kernels[0].weights_bytes > 0
    assert [r.name for r in records] == ["a/lower-isa", "b/lower-isa"]
    text = (tmp_path / "b" / records[1].dumps[1]).read_text()
    assert lower_isa.DEVICE_KERNELS_KEY in text and "kernels[1] mm K=48 M=32 wbits=4" in text


def test_lower_isa_is_a_registered_pass():
    cls = PASSES["lower-isa"]
    assert cls is lower_isa.LowerIsa and "isa-lowered" in cls.guarantees
    model = _two_graphs()["a"]
    report = PassManager([cls()]).run(model)
    assert [r.name for r in report.passes] == ["lower-isa"] and report.passes[0].modified
    listing = json.loads(model.metadata_props[lower_isa.DEVICE_KERNELS_KEY])
    assert listing["device_kernels"] == ["kernels[0] mm K=40 M=100 wbits=8 dynamic"]


def test_attention_kernels_go_through_the_pass():
    model = attention_graph(4, 8, 21, [4, 3], True)
    art, _ = lower_isa.lower_model({"g": model}, CFG)
    (k,) = art.attn_kernels
    assert k.wtrans and k.transpose == "kt"
    assert "attn_kernels[0] mm bits=8 wtrans" in model.metadata_props[lower_isa.DEVICE_KERNELS_KEY]


def test_compile_report_and_dump_show_the_lowering(tmp_path):
    out = tmp_path / "m.sbin"
    report = compile_path(exported("tiny-llava"), out, options=SpikeOptions(tv=3, tt=4).validate(), isa=True,
                          dump_dir=tmp_path / "dump")
    mine = [r for r in report.passes if r.name.endswith("/lower-isa")]
    assert [r.name for r in mine] == ["embed/lower-isa", "lm/lower-isa", "vision/lower-isa"]
    n = len(report.passes)
    assert report.passes[-3:] == mine and [r.index for r in mine] == [n - 2, n - 1, n]  # after the pipeline's
    assert report.extra["isa"]["kernels"] == 23 and report.extra["isa"]["graphs"]["lm"]["device_kernels"] == 15
    txt = tmp_path / "dump" / mine[1].dumps[1]
    assert txt.is_file() and "kernels[0] model.language_model.layers.0" in txt.read_text()
