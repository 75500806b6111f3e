"""Spiking graphs and compiled models shared by the accelerator tests (test_fpga_*.py,
test_descriptors.py, test_layer_names.py): one definition each, imported by name."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from spike_graphs import exported
from spikec import ops as sops
from spikec import reference as R
from spikec.compiler import compile_path
from spikec.passes.options import SpikeOptions


def linear_graph(K, M, T, wbits=8, neuron="tc-lif", scale="dynamic", bias=True, seed=0, group_size=None):
    """x [N, K] + modality [N] -> SpikeEncode -> SpikeMatMul -> y [N, M]."""
    rng = np.random.default_rng(seed)
    qw = R.qmax(wbits)
    w = rng.integers(-qw, qw + 1, size=(K, M)).astype(np.int8)
    # group-wise weight scales [K / group_size, M] when asked for, else one per output channel
    s_w = rng.uniform(0.001, 0.02, (K // group_size, M) if group_size else M).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W_q"), numpy_helper.from_array(s_w, "s_w")]
    mm_in = ["q", "s_x", "modality", "W_q", "s_w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(M).astype(np.float32), "bias"))
        mm_in.append("bias")
    enc_attrs = {"timesteps": T, "act_scale": scale, "neuron": neuron}
    if scale == "static":
        clip = np.full((2, sops.CLIP_T), np.nan, np.float32)
        clip[0], clip[1] = 2.5, 4.0
        enc_attrs["act_clip"] = [float(c) for c in clip.ravel()]
    if neuron == "if":
        if not bias:
            mm_in.append("")
        inits.append(numpy_helper.from_array(sops.if_offset_table(w, T), "acc_bias"))
        mm_in.append("acc_bias")
    nodes = [
        helper.make_node("SpikeEncode", ["x", "modality"], ["q", "s_x"], name="enc", domain=sops.DOMAIN, **enc_attrs),
        helper.make_node("SpikeMatMul", mm_in, ["y"], name="mm", domain=sops.DOMAIN, timesteps=T, neuron=neuron, wbits=wbits),
    ]
    graph = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K]),
                                             helper.make_tensor_value_info("modality", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", M])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(sops.DOMAIN, 1)])
    model = ir.from_proto(proto)
    sops.ensure_opset(model)
    return model, w, s_w, numpy_helper.to_array(inits[2]) if bias else None


def attention_graph(H: int, K: int, N: int | str, T: list[int], transpose: bool):
    """a [1, H, s, K] (+ modality [1, s]) @ b [1, H, K, N]; with `transpose`, b = Transpose(k)
    of k [1, H, N, K] (Q @ K^T), else b is an input (P @ V)."""
    b_in = "k" if transpose else "b"
    b_shape = [1, H, N, K] if transpose else [1, H, K, N]
    nodes = [helper.make_node("SpikeEncode", ["a", "modality"], ["q", "s_x"], name="mm.encode", domain=sops.DOMAIN,
                              timesteps=T, act_scale="dynamic", neuron="tc-lif"),
             helper.make_node("SpikeCode", ["b"], ["q_b", "s_b"], name="mm.code", domain=sops.DOMAIN, bits=8),
             helper.make_node("SpikeMatMul", ["q", "s_x", "modality", "q_b", "s_b"], ["y"], name="mm",
                              domain=sops.DOMAIN, timesteps=T, neuron="tc-lif", wbits=8)]
    if transpose:
        nodes.insert(0, helper.make_node("Transpose", ["k"], ["b"], name="kt", perm=[0, 1, 3, 2]))
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, H, "s", K]),
                                              helper.make_tensor_value_info("modality", TensorProto.INT64, [1, "s"]),
                                              helper.make_tensor_value_info(b_in, TensorProto.FLOAT, b_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, H, "s", N])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(sops.DOMAIN, 1)])
    model = ir.from_proto(proto)
    sops.ensure_opset(model)
    return model


@functools.cache
@functools.lru_cache(maxsize=None)
def compiled_isa(tv: int, tt: int) -> str:
    """The tiny LLaVA compiled with its ISA program at Tv/Tt = tv/tt, once per test process
    (a compile takes 15-30 s; six tests share (3, 4)). Shared: a test that changes it copies it first."""
    out = Path(tempfile.mkdtemp(prefix="spikec-test-isa-")) / f"tiny-llava-{tv}-{tt}.sbin"
    compile_path(exported("tiny-llava"), out, options=SpikeOptions(tv=tv, tt=tt).validate(), isa=True)
    return str(out)


def run_representative_program(cfg, kernels, weights: bytes, program: bytes):
    """The stored representative program of a compiled .sbin (isa/programs.py) checked the
    way the tests share: it equals the one rebuilt from the descriptors, and it runs on the
    simulator over random inputs. Returns the simulator's counters."""
    from spikec.isa import programs
    from spikec.isa.encoding import encode_program
    from spikec.runtime.simulator import Simulator

    groups = programs.representative_groups(kernels, len(weights))
    assert encode_program(programs.build_program(groups, cfg)) == program
    sim = Simulator(cfg)
    sim.write(0, weights)
    rng = np.random.default_rng(0)
    for g in groups:
        sim.write_array(g.x_addr + 4 * g.row0 * g.kernel.K, rng.standard_normal(g.kernel.K), "<f4")
    sim.load_program(program)
    return sim.run()
