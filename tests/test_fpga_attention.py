"""The attention products on the accelerator (passes/lower_attn.py, DeviceMatMul in
runtime/fpga_target.py).

- an activation x activation SpikeMatMul (SpikeEncode per token, SpikeCode per tensor) on
  the simulator equals the host evaluation of the same spiking nodes and
  `fpga_target.host_attention` (spikec.reference) bit for bit: several heads, two
  modalities with different T, Q @ K^T through a bypassed Transpose (SPMM wtrans = 1) and
  P @ V (wtrans = 0), chunked on `small`;
- a right operand larger than one ENCODE row runs on the host (same bits, counted apart);
- the int32 bound is a compile error where K is known;
- on tiny-llava compiled with --spike-attention --isa the fpga target generates the ORT
  target's tokens at T = 8, and the report's host fallback no longer lists the attention
  products.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from isa_graphs import attention_graph
from spike_graphs import exported
from spikec import ops as sops
from spikec.compiler import compile_path
from spikec.errors import SpikecError
from spikec.frontend.export import sample_image
from spikec.isa.container import SbinFile
from spikec.isa.descriptors import KernelsDocument
from spikec.isa.hwconfig import HwConfig
from spikec.passes import lower_isa
from spikec.passes.options import SpikeOptions
from spikec.runtime.fpga_target import FpgaSession, KernelRunner, host_attention
from spikec.runtime.model import load
from spikec.runtime.simulator import Simulator

PROMPT = "What is in the image?"



CASES = [  # (config, H, K, N, S, T, transpose)
    ("default", 4, 8, 21, 21, [4, 3], True),  # Q @ K^T: K^T read untransposed (wtrans = 1)
    ("default", 4, 21, 8, 21, [5, 2], False),  # P @ V
    ("small", 3, 12, 20, 30, [6, 3], False),  # many chunks, double-buffered slots
    ("small", 2, 16, 30, 30, [3, 7], True),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{'qk' if c[6] else 'pv'}-h{c[1]}" for c in CASES])
def test_attention_on_the_simulator_equals_the_host(case):
    cfg_name, H, K, N, S, T, transpose = case
    cfg = HwConfig.load(cfg_name)
    model = attention_graph(H, K, N, T, transpose)
    art = lower_isa.lower_graphs({"g": model}, cfg)
    assert len(art.attn_kernels) == 1 and art.attn_kernels[0].wtrans == transpose
    fb = art.fallback["graphs"]["g"]
    assert fb["attn_kernels"] == 1 and fb["host_ops"] == {} and fb["not_lowered"] == {}
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((1, H, S, K)) * 2).astype(np.float32)
    b = rng.standard_normal((1, H, N, K) if transpose else (1, H, K, N)).astype(np.float32)
    b[0, 0, 0, 0] = 7.5  # one outlier sets the per-tensor scale for every head
    mods = rng.integers(0, 2, (1, S))  # mixed, unsorted: the runner groups them per head by modality
    feeds = {"a": a, "modality": mods, "k" if transpose else "b": b}
    want = sops.run_reference(model, feeds)[0]
    runner = KernelRunner(Simulator(cfg), art.weights, art.kernels, attn_kernels=art.attn_kernels)
    y = FpgaSession("g", ir.to_proto(model), art.kernels, runner, attn_kernels=art.attn_kernels).run(None, feeds)[0]
    assert y.dtype == np.float32 and y.shape == (1, H, S, N)
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))  # bit for bit
    T_tok = np.broadcast_to(np.asarray(T)[mods][:, None], (1, H, S))
    ref = host_attention(a, np.swapaxes(b, -1, -2) if transpose else b, T_tok, 8)
    np.testing.assert_array_equal(y.view(np.int32), ref.view(np.int32))
    st = runner.stats
    assert st.attn_calls == 1 and st.attn_host_calls == 0 and st.device.spikes > 0 and st.gpu_seconds > 0
    assert st.tokens == H * S and st.tokens_T == int(T_tok.sum()) and st.float_macs == H * S * K * N
    # decode-shaped call: one query row
    y1 = runner.attention(0, a[:, :, :1], b, mods[:, :1], where="mm")
    np.testing.assert_array_equal(y1, host_attention(a[:, :, :1], np.swapaxes(b, -1, -2) if transpose else b,
                                                     T_tok[:, :, :1], 8))


def test_a_right_operand_beyond_one_encode_row_runs_on_the_host():
    model = attention_graph(1, 8, "n", [4, 4], False)
    art = lower_isa.lower_graphs({"g": model}, HwConfig.load("default"))
    runner = KernelRunner(Simulator("default"), art.weights, art.kernels, attn_kernels=art.attn_kernels)
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((1, 1, 3, 8)).astype(np.float32), rng.standard_normal((1, 1, 8, 2100)).astype(np.float32)
    mods = np.zeros((1, 3), np.int64)
    y = runner.attention(0, a, b, mods, where="mm")  # 8 * 2100 = 16800 elements > 16383
    want = sops.run_reference(model, {"a": a, "b": b, "modality": mods})[0]
    np.testing.assert_array_equal(y.view(np.int32), want.view(np.int32))
    assert runner.stats.attn_host_calls == 1 and runner.stats.attn_calls == 0 and runner.stats.device.cycles == 0


def test_attention_overflow_is_rejected():
    model = attention_graph(1, 4096, 4, [15, 15], False)  # 4096 * (2**15 - 1) * 127 > 2**31 - 1
    with pytest.raises(SpikecError, match="overflow|int32"):
        lower_isa.lower_graphs({"g": model}, HwConfig.load("default"))


# ---------------------------------------------------------------- tiny-llava


@functools.cache
def compiled_attention_isa(tv: int, tt: int) -> str:
    out = Path(tempfile.mkdtemp(prefix="spikec-test-attn-")) / f"tiny-llava-attn-{tv}-{tt}.sbin"
    opts = SpikeOptions(tv=tv, tt=tt, spike_attention=True).validate()
    compile_path(exported("tiny-llava"), out, options=opts, isa=True)
    return str(out)


def test_tiny_llava_generation_with_attention_on_the_device_equals_ort():
    path = compiled_attention_isa(8, 8)
    with SbinFile(path) as f:
        cfg = HwConfig.from_json(f.read("isa/hwconfig"))
        doc = KernelsDocument.from_bytes(f.read("isa/kernels"), "isa/kernels", cfg, len(f.read("isa/weights")))
    assert len(doc.attn_kernels) == 6  # Q @ K^T and P @ V: 2 LM layers, 1 vision layer
    assert sum(k.wtrans for k in doc.attn_kernels) == 2  # the LM's K^T transposes are bypassed
    for role in ("lm", "vision"):
        g = doc.fallback["graphs"][role]
        assert g["attn_kernels"] > 0 and g["not_lowered"].keys().isdisjoint({k.node for k in doc.attn_kernels})
        assert not {"spikec::SpikeMatMul", "spikec::SpikeCode", "spikec::SpikeEncode"} & set(g["host_ops"])
    image = sample_image()
    with load(path, target="fpga") as fpga, load(path) as ort_model:
        g = fpga.generator()
        ids_f = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        g = ort_model.generator()
        ids_o = g.generate_ids(g.prepare([image], [PROMPT]), 5)
        stats = fpga.stats()
    np.testing.assert_array_equal(ids_f, ids_o)
    assert stats["attn_calls"] > 0 and stats["attn_host_calls"] == 0 and stats["cycles"] > 0
