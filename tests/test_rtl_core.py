"""The RTL core (rtl/spikec_core.sv, Verilator testbench rtl/tb/) against the functional
simulator: hand-written programs run on both, and the final DRAM must be identical byte
for byte. RTL and simulator (cost model) cycles are printed (`pytest -s`).

Each configuration's testbench is built once (runtime/rtl_sim.build caches it under
build/rtl/ by a hash of the sources and parameters; a first build takes minutes).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from spikec.errors import SpikecError
from spikec.isa import svgen
from spikec.isa.asm import assemble_program
from spikec.isa.fields import Buffer, Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.runtime import rtl_sim
from spikec.runtime.simulator import Simulator

CONFIGS = ("small", "default")


@pytest.fixture(scope="module", params=CONFIGS)
def rtl(request):
    cfg = HwConfig.load(request.param)
    return cfg, rtl_sim.build(cfg)


def test_generated_package_is_current():
    path = rtl_sim.rtl_dir() / "generated" / "spikec_isa_pkg.sv"
    assert path.read_text(encoding="utf-8") == svgen.package_text(), "run: python -m spikec.isa.svgen rtl/generated/spikec_isa_pkg.sv"


def test_params_cover_both_configs():
    for name in CONFIGS:
        p = svgen.params(HwConfig.load(name))
        assert p["DRAM_BEAT_BYTES"] >= 4 and p["WGT_BANKS"] > p["PE_COLS"]


def _pkg_constants(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"localparam int (\w+) = (-?\d+);", text)}


def test_testbench_parameters_are_generated_from_the_hwconfig():
    """tb_top.sv states no parameter value: it takes each from the package spikec_cfg_pkg
    that svgen generates per configuration (rtl_sim.build writes it into the build), and
    those values are the hardware configuration's."""
    tb = (rtl_sim.rtl_dir() / "tb" / "tb_top.sv").read_text(encoding="utf-8")
    assert not re.search(r"\bparameter\b", tb), "tb_top must take its parameters from spikec_cfg_pkg"
    core = (rtl_sim.rtl_dir() / "spikec_core.sv").read_text(encoding="utf-8")
    core_params = set(re.findall(r"parameter int (\w+) =", core))
    for name in CONFIGS:
        cfg = HwConfig.load(name)
        p = svgen.params(cfg)
        text = svgen.config_package_text(cfg)
        assert "package spikec_cfg_pkg;" in text
        assert _pkg_constants(text) == p
        hw = {
            "PE_ROWS": cfg.pe_rows,
            "PE_COLS": cfg.pe_cols,
            "VEC_LANES": cfg.vec_lanes,
            "DRAM_LATENCY": cfg.dram_latency_cycles,
            "SPMM_SETUP": cfg.spmm_setup_cycles,
            "VEC_SETUP": cfg.vec_setup_cycles,
            "CMD_QUEUE_DEPTH": cfg.cmd_queue_depth,
            "TOKEN_QUEUE_DEPTH": cfg.token_queue_depth,
            "DRAM_BEAT_BYTES": svgen.dram_beat_bytes(cfg),
            **{f"{b.name}_ELEMS": cfg.buffer_elems(b) for b in Buffer},
        }
        assert {k: p[k] for k in hw} == hw, name
    for k in p:  # every generated parameter reaches the core, by name
        assert k in core_params, k
        assert f".{k}(spikec_cfg_pkg::{k})" in tb, k
    # the fault message's mnemonics are indexed by opcode
    mnemonics = re.search(r"string mnemonics\[[^\]]*\] = '\{([^}]*)\}", tb)[1]
    names = [s.strip().strip('"') for s in mnemonics.split(",")]
    assert names[: len(Opcode)] == [op.name for op in Opcode]


def test_build_takes_the_generated_parameter_package(rtl):
    cfg, binary = rtl
    assert (binary.parent / rtl_sim.CFG_PACKAGE).read_text(encoding="utf-8") == svgen.config_package_text(cfg)


# the signals that carry an instruction word (or a {pc, word} command queue entry)
_WORD_SIGNALS = r"\b(ins|imem_data|lq_head|cq_head|sq_head|l_cur|c_cur|s_cur)\["


def _brackets(text: str, start: int) -> str:
    """The text inside the brackets opening at text[start] (nesting allowed)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"[": 1, "]": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    raise AssertionError("unbalanced brackets")


def test_rtl_cuts_instruction_fields_through_the_generated_package():
    """Every slice of an instruction word in rtl/ names the field's position and width
    from spikec_isa_pkg (`ins[spikec_isa_pkg::SPMM_K_LSB+:spikec_isa_pkg::SPMM_K_W]`), no
    enum value is cast to a literal width, and every register loaded straight from a
    field is declared with a named width: no field width is restated as a number."""
    pkg = _pkg_constants(svgen.package_text())
    P = "spikec_isa_pkg::"
    slices = 0
    for path in sorted(rtl_sim.rtl_dir().glob("*.sv")) + [rtl_sim.rtl_dir() / "tb" / "tb_top.sv"]:
        text = re.sub(r"//[^\n]*", "", path.read_text(encoding="utf-8"))
        compact = re.sub(r"\s+", "", text)
        for m in re.finditer(_WORD_SIGNALS, compact):
            idx = _brackets(compact, m.end() - 1)
            slices += 1
            where = f"{path.name}: {m[1]}[{idx}]"
            if f := re.fullmatch(rf"{P}(\w+)_LSB\+:{P}(\w+)_W", idx):
                assert f[1] == f[2] and f"{f[1]}_LSB" in pkg and f"{f[1]}_W" in pkg, where
            elif f := re.fullmatch(rf"{P}(\w+)_LSB", idx):
                assert pkg.get(f"{f[1]}_W") == 1, f"{where}: a multi-bit field cut as one bit"
            else:
                assert idx in (f"{P}WORD_BITS-1:0", f"{P}WORD_BITS+:{P}PC_W"), f"{where}: not cut through spikec_isa_pkg"
        assert not re.search(r"\d+'\(spikec_isa_pkg::", compact), f"{path.name}: a package constant cast to a literal width"
        # registers loaded straight from a field (or through a cast to a named width) are
        # declared with a named width; 32'(...) widens a field into arithmetic
        decls = {}
        for d in re.finditer(r"logic(?:signed)?\[([^\]]+)\]([\w,]+);", compact):
            for name in d[2].split(","):
                decls[name] = d[1]
        for a in re.finditer(rf"(\w+)(?:<=|=)(?:[A-Za-z_]\w*'\()?{_WORD_SIGNALS}", compact):
            end = a.end() + len(_brackets(compact, a.end() - 1)) + 1
            straight = compact.startswith((";", ");"), end)  # the whole right-hand side
            width = decls.get(a[1])
            if straight and width is not None:
                assert not re.fullmatch(r"\d+:0", width), f"{path.name}: {a[1]} [{width}] holds a field with a literal width"
    assert slices > 60, slices  # the pattern still finds the RTL's field cuts


# ---------------------------------------------------------------- helpers


class Image:
    """A DRAM image built from numpy arrays placed at byte addresses."""

    def __init__(self, size: int = 0x8000) -> None:
        self.data = np.zeros(size, np.uint8)

    def put(self, addr: int, arr) -> None:
        b = np.ascontiguousarray(arr).view(np.uint8).ravel()
        self.data[addr : addr + b.size] = b

    def bytes(self) -> bytes:
        return self.data.tobytes()


def program(loads: list[str], computes: list[str], stores: list[str]) -> str:
    """Loads, then compute, then stores, ordered by one token each way; FINISH last."""

    def deps(line: str, bits: list[str]) -> str:
        return line + (" deps=" + ",".join(bits) if bits else "")

    out = [deps(ln, ["push_next"] if i == len(loads) - 1 else []) for i, ln in enumerate(loads)]
    for i, ln in enumerate(computes):
        out.append(deps(ln, (["pop_prev"] if i == 0 else []) + (["push_next"] if i == len(computes) - 1 else [])))
    for i, ln in enumerate(stores):
        out.append(deps(ln, (["pop_prev"] if i == 0 else []) + (["push_prev"] if i == len(stores) - 1 else [])))
    out.append("FINISH deps=pop_next")
    return "\n".join(out)


def cosim(rtl, asm: str, image: Image, label: str) -> dict:
    cfg, binary = rtl
    prog = assemble_program(asm)
    sim = Simulator(cfg)
    sim.load_program(prog)
    sim.write(0, image.bytes())
    ctr = sim.run()
    out, counters = rtl_sim.run(binary, prog, image.bytes(), cfg.dram_bytes, 5_000_000)
    ref = sim.read(0, len(out))
    print(f"\n[{cfg.name}] {label}: RTL {counters['cycles']} cycles, simulator {ctr.cycles} ({counters['cycles'] / ctr.cycles - 1:+.1%})")
    if out != ref:
        a, b = np.frombuffer(out, np.uint8), np.frombuffer(ref, np.uint8)
        diff = np.flatnonzero(a != b)
        pytest.fail(f"{label}: DRAM differs at {diff.size} bytes, first {[hex(int(d)) for d in diff[:8]]}")
    for name in ("instructions", "dram_read_bytes", "dram_write_bytes", "spikes", "spike_vectors", "skipped_vectors", "vec_elements"):
        assert counters[name] == getattr(ctr, name), name
    counters["sim_cycles"] = ctr.cycles
    return counters


def f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


# ---------------------------------------------------------------- programs

DOC_EXAMPLE = """
LOAD   buf=WGT sram=0 dram=0x0    stride=16 rows=8 cols=16
LOAD   buf=VEC sram=0 dram=0x1000 stride=32 rows=3 cols=8
LOAD   buf=SCL sram=0 dram=0x2000 stride=0  rows=1 cols=32 deps=push_next
ENCODE src=0 dst=0 n=3 len=8 t=3 scale=DYNAMIC scl=100 deps=pop_prev
SPMM   inp=0 wgt=0 acc=0 n=3 k=8 m=16 acc_stride=16 t=3
VEC    func=DEQ flags=3 dst=100 src0=0 src1=100 src2=0 n=3 len=16 deps=push_next
STORE  buf=VEC sram=100 dram=0x3000 stride=64 rows=3 cols=16 deps=pop_prev,push_prev
FINISH deps=pop_next
"""


def test_doc_example(rtl):
    rng = np.random.default_rng(0)
    img = Image()
    img.put(0, rng.integers(-127, 128, 128).astype(np.int8))
    img.put(0x1000, f32(rng.standard_normal(24)))
    img.put(0x2000, f32(np.concatenate([rng.uniform(0.01, 0.1, 16), rng.standard_normal(16)])))
    c = cosim(rtl, DOC_EXAMPLE, img, "docs/isa.md section 6 example")
    assert abs(c["cycles"] / c["sim_cycles"] - 1) < 0.05


def test_dma_broadcast_unaligned_overlapping_store(rtl):
    rng = np.random.default_rng(1)
    img = Image()
    img.put(0x101, f32(rng.standard_normal(5)))
    img.put(0x203, rng.integers(0, 256, 80).astype(np.uint8))
    img.put(0x301, rng.integers(-30000, 30000, 40).astype(np.int16))
    asm = program(
        [
            "LOAD buf=VEC sram=7 dram=0x101 stride=0 rows=3 cols=5",  # one row, broadcast
            "LOAD buf=WGT sram=3 dram=0x203 stride=17 rows=4 cols=13",
            "LOAD buf=INP sram=1 dram=0x301 stride=22 rows=3 cols=9",
        ],
        ["VEC func=COPY dst=40 src0=7 n=3 len=5"],
        [
            "STORE buf=VEC sram=40 dram=0x1001 stride=8 rows=3 cols=5",  # rows overlap: later rows win
            "STORE buf=WGT sram=3 dram=0x1103 stride=13 rows=4 cols=13",
            "STORE buf=INP sram=1 dram=0x1201 stride=16 rows=3 cols=9",
        ],
    )
    cosim(rtl, asm, img, "DMA: stride-0 broadcast, unaligned rows, overlapping STORE")


def test_spmm_tclif_int8_chunks(rtl):
    """Several k- and m-chunks (partial ones too), saturating codes, a silent token,
    acc_stride > m."""
    rng = np.random.default_rng(2)
    n, k, m, t = 5, 37, 23, 4
    q = rng.integers(-20, 21, (n, k)).astype(np.int16)  # beyond qmax = 15: saturate
    q[2] = 0  # no live spike vector at all
    q[3, :4] = 0
    w = rng.integers(-127, 128, (k, m)).astype(np.int8)
    img = Image()
    img.put(0x0, q)
    img.put(0x400, w)
    asm = program(
        [
            f"LOAD buf=INP sram=3 dram=0x0 stride={2 * k} rows={n} cols={k}",
            f"LOAD buf=WGT sram=5 dram=0x400 stride=0 rows=1 cols={k * m}",
            "LOAD buf=ACC sram=0 dram=0x2000 stride=0 rows=1 cols=120",  # zeros, so every element is written
        ],
        [f"SPMM inp=3 wgt=5 acc=0 n={n} k={k} m={m} acc_stride=24 t={t}"],
        ["STORE buf=ACC sram=0 dram=0x3000 stride=0 rows=1 cols=120"],
    )
    # Not held to 5 %: the silent token costs the RTL one cycle per tile (docs/rtl.md, section 5).
    cosim(rtl, asm, img, "SPMM TC-LIF int8, k/m chunks")


def test_spmm_bound_program_matches_cost_model(rtl):
    """An SPMM-dominated program (20 tokens, K = 64, M = 32, sparse codes): RTL cycles
    within 5 % of the cost model's."""
    rng = np.random.default_rng(7)
    n, k, m, t = 20, 64, 32, 4
    q = np.clip(np.rint(rng.standard_normal((n, k)) * 3), -15, 15).astype(np.int16)
    w = rng.integers(-127, 128, (k, m)).astype(np.int8)
    img = Image()
    img.put(0x0, q)
    img.put(0x1000, w)
    asm = program(
        [f"LOAD buf=INP sram=0 dram=0x0 stride=0 rows=1 cols={n * k}", f"LOAD buf=WGT sram=0 dram=0x1000 stride=0 rows=1 cols={k * m}"],
        [f"SPMM inp=0 wgt=0 acc=0 n={n} k={k} m={m} acc_stride={m} t={t}"],
        [f"STORE buf=ACC sram=0 dram=0x2000 stride=0 rows=1 cols={n * m}"],
    )
    c = cosim(rtl, asm, img, "SPMM-bound: n=20 K=64 M=32 t=4")
    assert abs(c["cycles"] / c["sim_cycles"] - 1) < 0.05


def test_spmm_if_int4_wtrans_accumulate(rtl):
    rng = np.random.default_rng(3)
    n, k, m = 4, 21, 11
    q = rng.integers(-7, 8, (n, k)).astype(np.int16)
    q[1, 3] = 9  # saturates at t = 3
    w8 = rng.integers(-127, 128, (k, m)).astype(np.int8)
    wt = rng.integers(-8, 8, (m, k))  # int4, stored [m, k] (wtrans)
    w4 = rng.integers(-8, 8, (k, m))  # int4, stored [k, m]

    def pack(a):
        nib = (a.ravel() & 0xF).astype(np.uint8)
        nib = np.concatenate([nib, np.zeros(len(nib) % 2, np.uint8)])
        return nib[0::2] | (nib[1::2] << 4)

    img = Image()
    img.put(0x0, q)
    img.put(0x100, w8)
    img.put(0x300, pack(wt))
    img.put(0x400, pack(w4))
    asm = program(
        [
            f"LOAD buf=INP sram=0 dram=0x0 stride=0 rows=1 cols={n * k}",
            f"LOAD buf=WGT sram=0 dram=0x100 stride=0 rows=1 cols={k * m}",
            f"LOAD buf=WGT sram=1001 dram=0x300 stride=0 rows=1 cols={len(pack(wt))}",
            f"LOAD buf=WGT sram=2000 dram=0x400 stride=0 rows=1 cols={len(pack(w4))}",
            "LOAD buf=ACC sram=0 dram=0x2000 stride=0 rows=1 cols=48",
        ],
        [
            f"SPMM inp=0 wgt=0 acc=0 n={n} k={k} m={m} acc_stride=12 t=3",
            f"SPMM inp=0 wgt=1001 acc=0 n={n} k={k} m={m} acc_stride=12 t=3 neuron=IF wfmt=INT4 wtrans=1 acc_mode=ACCUMULATE",
            f"SPMM inp=0 wgt=0 acc=0 n={n} k={k} m={m} acc_stride=12 t=3 neuron=IF acc_mode=ACCUMULATE",
            f"SPMM inp=0 wgt=2000 acc=0 n={n} k={k} m={m} acc_stride=12 t=4 wfmt=INT4 acc_mode=ACCUMULATE",
        ],
        ["STORE buf=ACC sram=0 dram=0x3000 stride=0 rows=1 cols=48"],
    )
    cosim(rtl, asm, img, "SPMM TC-LIF/IF, int8/int4, wtrans, accumulate")


def test_attention_encode_to_wgt(rtl):
    """Q @ K^T with K ENCODEd into WGT (wtrans), softmax, then P @ V."""
    rng = np.random.default_rng(4)
    nq, nk, d, dv = 3, 6, 20, 9
    img = Image()
    img.put(0x0, f32(rng.standard_normal((nq, d))))
    img.put(0x200, f32(rng.standard_normal((nk, d))))
    img.put(0x400, f32(rng.standard_normal((nk, dv))))
    # SCL: [10] static K scale, [11] static V scale, [20..26) s_w of QK, [50..59) s_w of PV
    scl = np.zeros(64, np.float32)
    scl[10], scl[11] = 0.03, 0.02
    scl[20:26] = 0.03
    scl[50:59] = 0.02
    img.put(0x600, scl)
    asm = program(
        [
            f"LOAD buf=VEC sram=0 dram=0x0 stride=0 rows=1 cols={nq * d}",
            f"LOAD buf=VEC sram=100 dram=0x200 stride=0 rows=1 cols={nk * d}",
            f"LOAD buf=VEC sram=300 dram=0x400 stride=0 rows=1 cols={nk * dv}",
            "LOAD buf=SCL sram=0 dram=0x600 stride=0 rows=1 cols=64",
        ],
        [
            f"ENCODE src=0 dst=0 n={nq} len={d} t=4 scale=DYNAMIC scl=0",
            f"ENCODE src=100 dst=0 dst_buf=WGT n={nk} len={d} t=7 scale=STATIC scl=10",
            f"SPMM inp=0 wgt=0 acc=0 n={nq} k={d} m={nk} acc_stride={nk} t=4 wtrans=1",
            f"VEC func=DEQ flags=1 dst=500 src0=0 src1=0 src2=20 n={nq} len={nk}",
            f"VEC func=SOFTMAX dst=500 src0=500 n={nq} len={nk}",
            f"ENCODE src=500 dst=100 n={nq} len={nk} t=5 scale=DYNAMIC scl=30",
            f"ENCODE src=300 dst=200 dst_buf=WGT n={nk} len={dv} t=6 scale=STATIC scl=11",
            f"SPMM inp=100 wgt=200 acc=100 n={nq} k={nk} m={dv} acc_stride={dv} t=5",
            f"VEC func=DEQ flags=1 dst=600 src0=100 src1=30 src2=50 n={nq} len={dv}",
        ],
        [f"STORE buf=VEC sram=500 dram=0x1000 stride=0 rows=1 cols={nq * nk}", f"STORE buf=VEC sram=600 dram=0x1100 stride=0 rows=1 cols={nq * dv}"],
    )
    cosim(rtl, asm, img, "attention: ENCODE -> WGT, Q@K^T, softmax, P@V")


def test_two_token_groups(rtl):
    """A spiking linear layer over two token groups (t = 3 and t = 4) sharing W."""
    rng = np.random.default_rng(5)
    k, m = 24, 10
    img = Image()
    img.put(0x0, rng.integers(-127, 128, (k, m)).astype(np.int8))
    img.put(0x400, f32(rng.standard_normal((7, k)) * 2))
    img.put(0x800, f32(np.concatenate([rng.uniform(0.01, 0.1, m), rng.standard_normal(m)])))
    asm = program(
        [
            f"LOAD buf=WGT sram=0 dram=0x0 stride=0 rows=1 cols={k * m}",
            f"LOAD buf=VEC sram=0 dram=0x400 stride={4 * k} rows=7 cols={k}",
            f"LOAD buf=SCL sram=0 dram=0x800 stride=0 rows=1 cols={2 * m}",
        ],
        [
            f"ENCODE src=0 dst=0 n=3 len={k} t=3 scale=DYNAMIC scl=100",
            f"ENCODE src={3 * k} dst={3 * k} n=4 len={k} t=4 scale=DYNAMIC scl=103",
            f"SPMM inp=0 wgt=0 acc=0 n=3 k={k} m={m} acc_stride={m} t=3",
            f"SPMM inp={3 * k} wgt=0 acc={3 * m} n=4 k={k} m={m} acc_stride={m} t=4",
            f"VEC func=DEQ flags=3 dst=300 src0=0 src1=100 src2=0 n=7 len={m}",
        ],
        [f"STORE buf=VEC sram=300 dram=0x1000 stride={4 * m} rows=7 cols={m}"],
    )
    c = cosim(rtl, asm, img, "two token groups (t = 3, 4)")
    assert abs(c["cycles"] / c["sim_cycles"] - 1) < 0.05


# VEC functions: (name, extra instruction fields, rows, len)
N, LEN = 3, 37
VEC_CASES = {
    "COPY": f"func=COPY dst=400 src0=0 n={N} len={LEN}",
    "ADD": f"func=ADD dst=400 src0=0 src1=200 n={N} len={LEN}",
    "MUL": f"func=MUL dst=0 src0=0 src1=200 n={N} len={LEN}",  # in place
    "ADD_ROW": f"func=ADD_ROW dst=400 src0=0 src1=600 n={N} len={LEN}",
    "MUL_ROW": f"func=MUL_ROW dst=400 src0=0 src1=600 n={N} len={LEN}",
    "SCALE": f"func=SCALE dst=400 src0=0 src1=5 n={N} len={LEN}",
    "DEQ": f"func=DEQ flags=0 dst=400 src0=0 src1=5 src2=8 n={N} len={LEN}",
    "DEQ_ROW_BIAS": f"func=DEQ flags=3 dst=400 src0=0 src1=0 src2=8 n={N} len={LEN}",
    "RMSNORM": f"func=RMSNORM dst=400 src0=0 src1=600 src2=6 n={N} len={LEN}",
    "LAYERNORM": f"func=LAYERNORM dst=400 src0=0 src1=600 src2=6 n={N} len={LEN}",
    "SOFTMAX": f"func=SOFTMAX dst=0 src0=0 n={N} len={LEN}",
    "SILU": f"func=SILU dst=400 src0=0 n={N} len={LEN}",
    "GELU": f"func=GELU dst=400 src0=0 n={N} len={LEN}",
    "ROPE": f"func=ROPE dst=400 src0=0 src1=200 src2=300 n={N} len=38",
}


@pytest.mark.parametrize("case", list(VEC_CASES))
def test_vec_function(rtl, case):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(N * 38) * 3
    x[5], x[9], x[11] = 40.0, -95.0, 0.0  # exp range, a zero
    img = Image()
    img.put(0x0, f32(x))
    img.put(0x400, f32(rng.standard_normal(N * 38)))  # second operand / cos (ROPE: [n, 19])
    img.put(0x600, f32(rng.standard_normal(N * 38)))  # sin
    img.put(0x800, f32(rng.standard_normal(2 * LEN)))  # row vector / gamma, beta
    img.put(0xA00, rng.integers(-100000, 100000, N * LEN).astype(np.int32))  # ACC
    scl = np.concatenate([[0.5, 0.25, 2.0], [0.0, 0.0], [1.5, 1e-5, 0.0], rng.uniform(0.01, 0.1, LEN), rng.standard_normal(LEN)])
    img.put(0xC00, f32(scl))
    asm = program(
        [
            f"LOAD buf=VEC sram=0 dram=0x0 stride=0 rows=1 cols={N * 38}",
            f"LOAD buf=VEC sram=200 dram=0x400 stride=0 rows=1 cols={N * 38}",
            f"LOAD buf=VEC sram=300 dram=0x600 stride=0 rows=1 cols={N * 38}",
            f"LOAD buf=VEC sram=600 dram=0x800 stride=0 rows=1 cols={2 * LEN}",
            f"LOAD buf=ACC sram=0 dram=0xA00 stride=0 rows=1 cols={N * LEN}",
            f"LOAD buf=SCL sram=0 dram=0xC00 stride=0 rows=1 cols={len(scl)}",
        ],
        [f"VEC {VEC_CASES[case]}"],
        [f"STORE buf=VEC sram={0 if case in ('MUL', 'SOFTMAX') else 400} dram=0x2000 stride=0 rows=1 cols={N * 38 if case == 'ROPE' else N * LEN}"],
    )
    cosim(rtl, asm, img, f"VEC {case}")


# ---------------------------------------------------------------- faults and timeouts


def _run_fault(rtl, asm: str, image: Image) -> str:
    cfg, binary = rtl
    with pytest.raises(SpikecError) as e:
        rtl_sim.run(binary, assemble_program(asm), image.bytes(), cfg.dram_bytes, 100_000)
    return str(e.value)


@pytest.mark.parametrize(
    "case, encode, value, reason",
    [
        ("nan", "scale=DYNAMIC scl=0", np.nan, "NaN"),
        ("nan-static", "scale=STATIC scl=8", np.nan, "NaN"),
        ("inf-dynamic", "scale=DYNAMIC scl=0", np.inf, "inf"),
        ("bad-static-scale", "scale=STATIC scl=9", 1.0, "static scale"),
    ],
)
def test_encode_faults(rtl, case, encode, value, reason):
    img = Image()
    x = np.ones(40, np.float32)
    x[27] = value
    img.put(0x0, x)
    img.put(0x100, f32([0.5, 0.0]))  # SCL[8] = 0.5, SCL[9] = 0.0
    asm = program(
        ["LOAD buf=VEC sram=0 dram=0x0 stride=0 rows=1 cols=40", "LOAD buf=SCL sram=8 dram=0x100 stride=0 rows=1 cols=2"],
        [f"ENCODE src=0 dst=0 n=4 len=10 t=3 {encode}"],
        ["STORE buf=INP sram=0 dram=0x1000 stride=0 rows=1 cols=40"],
    )
    msg = _run_fault(rtl, asm, img)
    assert msg.startswith("FAULT: instruction 2 (ENCODE):") and reason in msg, msg
    if case != "inf-dynamic":  # the simulator stops on the same instruction
        sim = Simulator(rtl[0])
        sim.load_program(assemble_program(asm))
        sim.write(0, img.bytes())
        with pytest.raises(SpikecError, match="instruction 2 .ENCODE."):
            sim.run()


def test_vec_overlap_fault(rtl):
    """Partial overlap of a VEC destination and source is illegal (the decoder refuses
    it); the RTL stops with a fault rather than computing garbage if it gets one."""
    cfg, binary = rtl
    asm = program(["LOAD buf=VEC sram=0 dram=0x0 stride=0 rows=1 cols=40"], ["VEC func=ADD dst=100 src0=0 src1=20 n=2 len=10"], ["STORE buf=VEC sram=100 dram=0x1000 stride=0 rows=1 cols=20"])
    prog = bytearray(assemble_program(asm))
    word = int.from_bytes(prog[16:32], "little")
    lsb, width = spikec_isa_pkg_field("VEC_DST")
    word = (word & ~(((1 << width) - 1) << lsb)) | (1 << lsb)  # dst = 1: overlaps src0 = 0
    prog[16:32] = word.to_bytes(16, "little")
    with pytest.raises(SpikecError) as e:
        rtl_sim.run(binary, bytes(prog), Image().bytes(), cfg.dram_bytes, 100_000)
    assert str(e.value).startswith("FAULT: instruction 1 (VEC):") and "overlaps" in str(e.value), str(e.value)


@pytest.mark.parametrize("asm", [
    "LOAD buf=WGT sram=0 dram=0x0 stride=16 rows=1 cols=16 wfifo=1",
    "SPMM inp=0 wgt=0 acc=0 n=1 k=4 m=4 acc_stride=4 t=1 wsrc=FIFO",
], ids=["load", "spmm"])
def test_weight_fifo_is_a_fault(rtl, asm):
    """The weight FIFO is modeled only (docs/isa.md section 3): the RTL stops with a fault
    at an instruction that uses it rather than running it as a WGT access."""
    msg = _run_fault(rtl, asm + "\nFINISH", Image(64))
    assert msg.startswith("FAULT: instruction 0 (") and "weight FIFO" in msg, msg


def spikec_isa_pkg_field(name: str) -> tuple[int, int]:
    """(lsb, width) of a field as the generated package states it."""
    text = svgen.package_text()
    get = lambda suffix: int(text.split(f"localparam int {name}_{suffix} = ")[1].split(";")[0])  # noqa: E731
    return get("LSB"), get("W")


def test_deadlock_times_out(rtl):
    asm = "LOAD buf=VEC sram=0 dram=0x0 rows=1 cols=4 deps=pop_next,push_next\nFINISH deps=pop_prev"
    msg = _run_fault(rtl, asm, Image(64))
    assert msg == "TIMEOUT after 100000 cycles", msg
