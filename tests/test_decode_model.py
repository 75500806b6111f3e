"""The deployment-scale decode model (isa/decode.py, isa/configs/deploy.json, docs/isa.md
section 11): the program is well formed, streams each weight exactly once, runs on the
functional simulator without a race or deadlock and bit-exact against the decode step
computed op by op with the ISA's numerics (spikec.reference), gives the same DRAM on the RTL
co-simulation (Verilator) as on the simulator with cycles within 5 % (issue 18 item 5),
costs linearly in layers, and the per-config energy constants leave the built-in
configurations as they were. The prefill program (`build_prefill`: a prompt in chunks of
token rows) leaves the KV cache and logits bit for bit as the same tokens' decode steps do,
on the simulator and on the RTL."""

from __future__ import annotations

import numpy as np
import pytest

from spikec.isa import costmodel
from spikec.isa import decode as D
from spikec.testing.spmm_log import recorded_spmms
from spikec.isa.encoding import encode_program
from spikec.isa.fields import Buffer, Opcode
from spikec.isa.hwconfig import EnergyConstants, HwConfig

TINY = D.LMShape("tiny", hidden=512, intermediate=1024, layers=2, heads=4, kv_heads=2, head_dim=128, vocab=1000)


@pytest.fixture(scope="module")
def cfg() -> HwConfig:
    return HwConfig.load("deploy")


def _weight_loads(p: D.DecodeProgram) -> int:
    return sum(i.rows * i.cols for i in p.program if i.op == Opcode.LOAD and i.buf == Buffer.WGT and i.dram < p.weights_end)


def test_program_is_balanced_and_finishes(cfg):
    p = D.build_decode(TINY, cfg, 8, kv_max=64)  # ProgramBuilder.program() checks the token balance
    assert p.program[-1].op == Opcode.FINISH
    t = D.timeline(p.program, cfg, 0.23)  # raises on a deadlock or leftover tokens
    assert t.cycles > 0 and t.instructions == len(p.program)


# a down product whose K (16896) exceeds one ENCODE row: encoded and accumulated as two halves
HALVES = D.LMShape("halves", hidden=256, intermediate=16896, layers=1, heads=2, kv_heads=1, head_dim=128, vocab=512)


def _run_timed(sim, p: D.DecodeProgram, cfg: HwConfig):
    """Run program p on the simulator; the cost-only timeline, given the simulator's spike
    counts, must be the simulator's timing and energy. Returns the simulator's counters."""
    sim.load_program(encode_program(p.program))
    rec = []
    with recorded_spmms(lambda cfg, ins, vectors, spikes: rec.append((vectors, spikes))):
        ctr = sim.run()
    t = D.timeline(p.program, cfg, 0.0, spmm_counts=lambda i, ins: rec[i])
    assert t.cycles == ctr.cycles and t.energy_total_pj == pytest.approx(ctr.energy_total_pj)
    return ctr


@pytest.mark.parametrize("shape, L, kv_max", [(TINY, 8, 64), (HALVES, 5, 16)], ids=["tiny", "halves"])
def test_simulator_runs_the_program(cfg, shape, L, kv_max):
    """The functional simulator checks races, read-before-write, deadlock, FINISH ordering."""
    from spikec.runtime.simulator import Simulator

    p = D.build_decode(shape, cfg, L, kv_max=kv_max)
    sim = Simulator(cfg)
    rng = np.random.default_rng(0)
    sim.write(0, rng.integers(0, 256, p.weights_end, dtype=np.uint8).tobytes())
    sim.write(p.weights_end, (0.1 * rng.standard_normal((p.layout["end"] - p.weights_end) // 4)).astype("<f4").tobytes())
    sim.write(p.layout["consts"], np.array([1.0, 1e-6], "<f4").tobytes())  # ENCODE's unit scale, RMSNorm's eps
    ctr = _run_timed(sim, p, cfg)
    assert 0 < ctr.cycles <= D.timeline(p.program, cfg, 1.0, 1.0).cycles
    logits = np.frombuffer(sim.read(p.layout["logits"], 4 * shape.vocab), "<f4")
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("shape", [TINY, HALVES, D.QWEN2VL_2B], ids=["tiny", "halves", "2b"])
def test_weights_loaded_once_exactly(cfg, shape):
    p = D.build_decode(shape, cfg, 16)
    assert p.weight_load_bytes == _weight_loads(p) == shape.weight_bytes(4)


def test_7b_weight_bytes():
    s = D.QWEN2VL_7B
    assert s.weights() == 28 * (3584 * (3584 + 1024) + 3584 * 3584 + 3584 * 2 * 18944 + 18944 * 3584) + 3584 * 152064
    assert s.weight_bytes(4) == s.weights() // 2 == 3_535_142_912


def test_cycles_linear_in_layers(cfg):
    c = [D.timeline(D.build_decode(D.QWEN2VL_2B, cfg, 256, layers=n, head=False).program, cfg, 0.23).cycles
         for n in (1, 2, 3, 4)]
    steps = [b - a for a, b in zip(c, c[1:])]
    assert max(steps) - min(steps) <= 0.005 * steps[0]
    assert abs(c[0] - steps[0]) <= 0.05 * steps[0]  # one layer alone: the steady-state layer + pipeline fill


def test_energy_split_sums_to_total(cfg):
    p = D.build_decode(TINY, cfg, 8, kv_max=64)
    t = D.timeline(p.program, cfg, 0.23)
    assert set(t.energy_pj) == {"dram", "sram", "pe", "vec"}
    assert sum(t.energy_pj.values()) == pytest.approx(t.energy_total_pj)
    e = cfg.energy_constants
    assert t.energy_pj["dram"] == pytest.approx((t.dram_read + t.dram_write) * 8 * e.dram_pj_per_bit)
    c = D.cost_decode(TINY, cfg, 8, 0.23)
    assert sum(c.energy_j.values()) == pytest.approx(c.timing.energy_total_pj * 1e-12)


def test_dma_shapes_cover_exactly(cfg):
    for n, elem in ((458752, 1), (3584, 4), (1, 4), (65537, 1), (2 * 1024 * 1024 // 3, 1)):
        shapes = D.dma_shapes(n, elem, cfg)
        assert sum(r * c for r, c in shapes) == n and all(1 <= r <= 65535 and 1 <= c <= 65535 for r, c in shapes)


def test_builtin_configs_unchanged_by_the_optional_fields():
    for name in ("default", "small"):
        cfg = HwConfig.load(name)
        assert cfg.pe_load_lines == 1 and cfg.energy is None and cfg.notes == ()
        assert set(cfg.to_dict()) == set(costmodel_fields())
        assert cfg.energy_constants == EnergyConstants() == costmodel.ENERGY
        assert HwConfig.from_json(cfg.to_json()) == cfg
    deploy = HwConfig.load("deploy")
    assert HwConfig.from_json(deploy.to_json()) == deploy
    assert deploy.energy_constants.dram_pj_per_bit == pytest.approx(250 / 64)
    assert deploy.energy_constants.citations


def costmodel_fields() -> list[str]:
    return ["name", "clock_mhz", "pe_rows", "pe_cols", "vec_lanes", "inp_kib", "wgt_kib", "acc_kib", "vec_kib", "scl_kib",
            "dram_mib", "dram_gbps", "dram_latency_cycles", "spmm_setup_cycles", "vec_setup_cycles", "cmd_queue_depth",
            "token_queue_depth"]


def test_pe_load_lines_divides_the_tile_load():
    base = HwConfig.load("default").to_dict()
    fast = HwConfig.from_dict(base | {"pe_load_lines": 4})
    spmm = D.Instruction(Opcode.SPMM, inp=0, wgt=0, acc=0, n=1, k=64, m=32, acc_stride=32, t=4, neuron=0, wfmt=1,
                         wtrans=0, acc_mode=0)
    slow_c = costmodel.spmm_cost(HwConfig.from_dict(base), spmm, vectors=4, spikes=4).cycles
    fast_c = costmodel.spmm_cost(fast, spmm, vectors=4, spikes=4).cycles
    # 2 m-chunks x 4 k-chunks: 16 rows loaded in 16 cycles, or 4 with 4 lines per cycle
    assert slow_c - fast_c == 2 * 4 * (16 - 4)


def test_bad_energy_field_names_it(tmp_path):
    from spikec.errors import SpikecError

    d = HwConfig.load("deploy").to_dict()
    d["energy"]["sram64"] = [[1024, 5.0], [512, 1.0]]
    with pytest.raises(SpikecError, match="energy.*sram64"):
        HwConfig.from_dict(d, "x.json")
    d = HwConfig.load("deploy").to_dict() | {"pe_load_lines": 0}
    with pytest.raises(SpikecError, match="pe_load_lines"):
        HwConfig.from_dict(d, "x.json")


# ---------------------------------------------------------------- bit-exact against a reference


def _model(p: D.DecodeProgram, rng) -> dict:
    """Random parameters of `p.shape` (int4 weight codes, positive scales) and the step's
    inputs (embedding row, rotary tables, previous KV-cache codes)."""
    s, lay = p.shape, p.layout
    f = np.float32
    prm = {"w": {}, "sw": {}, "bias": {}}
    for key in lay["tiles"]:
        K, M = (s.hidden, s.vocab) if key == ("head",) else {n: (k, m) for n, k, m, _ in s.linears()}[key[1]]
        prm["w"][key] = rng.integers(-7, 8, size=(K, M))
        prm["sw"][key] = (rng.random(M) * 0.02 + 0.01).astype(f)
        prm["bias"][key] = (0.1 * rng.standard_normal(M)).astype(f)
    L = p.layers
    prm["g1"] = [(1 + 0.1 * rng.standard_normal(s.hidden)).astype(f) for _ in range(L)]
    prm["g2"] = [(1 + 0.1 * rng.standard_normal(s.hidden)).astype(f) for _ in range(L)]
    prm["s_k"] = [(rng.random(s.kv) * 0.05 + 0.02).astype(f) for _ in range(L)]
    prm["s_v"] = [(rng.random(s.kv) * 0.05 + 0.02).astype(f) for _ in range(L)]
    prm["gf"] = (1 + 0.1 * rng.standard_normal(s.hidden)).astype(f)
    prm["x"] = rng.standard_normal(s.hidden).astype(f)
    kvm, half = lay["kv_max"], s.head_dim // 2
    ang = np.arange(kvm)[:, None] * (10000.0 ** (-np.arange(half) / half))[None]
    prm["cos"], prm["sin"] = np.cos(ang).astype(f), np.sin(ang).astype(f)
    prm["kc"] = rng.integers(-127, 128, size=(L, s.kv_heads, kvm, s.head_dim)).astype(np.int8)
    prm["vc"] = rng.integers(-127, 128, size=(L, s.kv_heads, kvm, s.head_dim)).astype(np.int8)
    return prm


def _write_model(sim, p: D.DecodeProgram, prm: dict) -> None:
    from spikec.isa.tiling import pack_weights

    s, lay = p.shape, p.layout
    f4 = lambda a: np.ascontiguousarray(a, "<f4").tobytes()  # noqa: E731
    for key, tiles in lay["tiles"].items():
        for addr, m0, m, k0, k in tiles:
            sim.write(addr, pack_weights(prm["w"][key][k0:k0 + k, m0:m0 + m], 4))
    deq = (16383 // p.cfg.pe_cols) * p.cfg.pe_cols
    for l in range(p.layers):
        scl = np.zeros(lay["n_sc"], np.float32)
        for name, K, M, bias in s.linears():
            for gi, m0 in enumerate(range(0, M, deq)):
                gl, o = min(deq, M - m0), lay["sw_off"][name][gi]
                scl[o:o + gl] = prm["sw"][(l, name)][m0:m0 + gl]
                if bias:
                    scl[o + gl:o + 2 * gl] = prm["bias"][(l, name)][m0:m0 + gl]
        scl[lay["sv_off"]:lay["sv_off"] + s.kv] = prm["s_v"][l]
        sim.write(lay["c_scl"][l], f4(scl))
        inv = np.float32(1) / np.concatenate([prm["s_k"][l], prm["s_v"][l]])
        sim.write(lay["c_vec"][l], f4(np.concatenate([prm["g1"][l], prm["g2"][l], inv, prm["s_k"][l]])))
    sim.write(lay["h_scl"], f4(prm["sw"][("head",)]))
    sim.write(lay["gf_vec"], f4(prm["gf"]))
    sim.write(lay["rope"], f4(np.concatenate([prm["cos"].ravel(), prm["sin"].ravel()])))
    sim.write(lay["consts"], f4([1.0, 1e-6]))
    sim.write(lay["score_row"], f4(np.full(lay["kv_max"], 1 / np.sqrt(s.head_dim), np.float32)))
    sim.write(lay["x_in"], f4(prm["x"]))
    sim.write(lay["kcache"], prm["kc"].tobytes())
    sim.write(lay["vcache"], prm["vc"].tobytes())


def _reference(p: D.DecodeProgram, prm: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The decode step with the ISA's numerics (spikec.reference), op by op as the program
    orders them: logits [vocab] and the new KV-cache rows [layers, kv_heads, 2, head_dim]."""
    from spikec import reference as R

    s, lay, t = p.shape, p.layout, 4
    f = np.float32
    H, I, G, D_, KVH, KV = s.hidden, s.intermediate, s.group, s.head_dim, s.kv_heads, s.kv
    pos, L = p.L - 1, p.L
    eps = f(1e-6)

    def enc(v):  # dynamic ENCODE of rows v [n, len]
        sc = R.scale_per_token(v, t + 1)
        return R.quantize(v, sc, 2**t - 1), sc

    def spmm(q, w):
        return R.horner(R.tclif_encode(q, t), w)

    def product(key, K, M, xrow, bias):
        outs = []
        for k0, kl in lay["parts"].get(K, [(0, K)]):
            q, sc = enc(xrow[None, k0:k0 + kl])
            y = R.dequantize(spmm(q, prm["w"][key][k0:k0 + kl]), sc) * prm["sw"][key]
            outs.append(y + prm["bias"][key] if bias else y)
        return outs[0][0] if len(outs) == 1 else (outs[0] + outs[1])[0]

    x = prm["x"].copy()
    nrope = s.heads + KVH
    cos, sin = np.repeat(prm["cos"][pos][None], nrope, 0), np.repeat(prm["sin"][pos][None], nrope, 0)
    new_kv = np.zeros((p.layers, KVH, 2, D_), np.int8)
    for l in range(p.layers):
        h = R.vec_rmsnorm(x[None], prm["g1"][l], eps)[0]
        qkv = product((l, "qkv"), H, H + 2 * KV, h, s.qkv_bias)
        qk = R.vec_rope(qkv[:H + KV].reshape(nrope, D_), cos, sin).ravel()
        qkv = np.concatenate([qk, qkv[H + KV:]])
        inv = f(1) / np.concatenate([prm["s_k"][l], prm["s_v"][l]])
        kvs = qkv[H:] * inv
        att = np.zeros(H, f)
        for hh in range(KVH):
            kc, vc = prm["kc"][l, hh, :L].copy(), prm["vc"][l, hh, :L].copy()
            kc[pos] = R.quantize(kvs[hh * D_:(hh + 1) * D_], f(1), 127)
            vc[pos] = R.quantize(kvs[KV + hh * D_:KV + (hh + 1) * D_], f(1), 127)
            new_kv[l, hh] = kc[pos], vc[pos]
            qs = qkv[hh * G * D_:(hh + 1) * G * D_].reshape(G, D_) * prm["s_k"][l][hh * D_:(hh + 1) * D_]
            q, sq = enc(qs)
            sc = R.dequantize(spmm(q, kc.T.astype(np.int64)), sq) * np.full(L, 1 / np.sqrt(D_), f)
            P = R.vec_softmax(sc)
            qp, sp = enc(P)
            o = R.dequantize(spmm(qp, vc.astype(np.int64)), sp) * prm["s_v"][l][hh * D_:(hh + 1) * D_]
            att[hh * G * D_:(hh + 1) * G * D_] = o.ravel()
        x = x + product((l, "o"), H, H, att, False)
        h2 = R.vec_rmsnorm(x[None], prm["g2"][l], eps)[0]
        gu = product((l, "gate_up"), H, 2 * I, h2, False)
        rows = 1 if I <= 16383 else 2
        g = R.vec_silu(gu[:I].reshape(rows, -1)).ravel()
        x = x + product((l, "down"), I, H, g * gu[I:], False)
    hf = R.vec_rmsnorm(x[None], prm["gf"], eps)[0]
    q, sc = enc(hf[None])
    logits = (R.dequantize(spmm(q, prm["w"][("head",)]), sc) * prm["sw"][("head",)])[0]
    return logits, new_kv


@pytest.mark.parametrize("shape, L, kv_max", [(TINY, 8, 64), (HALVES, 5, 16)], ids=["tiny", "halves"])
def test_decode_step_bit_exact(cfg, shape, L, kv_max):
    """The program's logits and new KV-cache rows equal, bit for bit, the decode step
    computed op by op with the ISA's numerics (spikec.reference), on random weights."""
    from spikec.runtime.simulator import Simulator

    p = D.build_decode(shape, cfg, L, kv_max=kv_max)
    prm = _model(p, np.random.default_rng(1))
    sim = Simulator(cfg)
    _write_model(sim, p, prm)
    sim.load_program(encode_program(p.program))
    sim.run()
    logits = np.frombuffer(sim.read(p.layout["logits"], 4 * shape.vocab), "<f4")
    ref_logits, ref_kv = _reference(p, prm)
    lay, D_ = p.layout, shape.head_dim
    for l in range(p.layers):
        for h in range(shape.kv_heads):
            off = ((l * shape.kv_heads + h) * lay["kv_max"] + L - 1) * D_
            k = np.frombuffer(sim.read(lay["kcache"] + off, D_), np.int8)
            v = np.frombuffer(sim.read(lay["vcache"] + off, D_), np.int8)
            np.testing.assert_array_equal(k, ref_kv[l, h, 0])
            np.testing.assert_array_equal(v, ref_kv[l, h, 1])
    assert np.isfinite(ref_logits).all() and np.abs(ref_logits).max() > 0
    np.testing.assert_array_equal(logits, ref_logits.astype(np.float32))


# ---------------------------------------------------------------- on the RTL

# decode steps the RTL co-simulation runs in seconds: on `small` (1 KiB of SCL holds the
# constants of a layer of hidden 8 and intermediate 16 only) and on `default`; both with
# GQA (2 query heads per KV head) and the q/k/v bias
RTL_SMALL = D.LMShape("rtl-small", hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4, vocab=16)
RTL_DEFAULT = D.LMShape("rtl-default", hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                        vocab=256)


@pytest.mark.parametrize("cfg_name, shape, L, kv_max", [
    ("small", RTL_SMALL, 6, 8),
    pytest.param("default", RTL_DEFAULT, 12, 16, marks=pytest.mark.slow),  # a second Verilator build (minutes)
], ids=["small", "default"])
def test_decode_step_rtl_equals_simulator(cfg_name, shape, L, kv_max, capsys):
    """Issue 18 item 5: a decode step of a model the RTL can simulate gives the same DRAM,
    byte for byte (logits, the new KV-cache rows, everything else), on the RTL
    (runtime/rtl_device.RtlDevice, Verilator) as on the functional simulator -- the
    reference's logits -- and the RTL's measured cycles are within 5 % of the simulator's
    (the cost model's) cycles."""
    from spikec.runtime.rtl_device import RtlDevice
    from spikec.runtime.simulator import Simulator

    cfg = HwConfig.load(cfg_name)
    p = D.build_decode(shape, cfg, L, kv_max=kv_max)
    prm = _model(p, np.random.default_rng(2))
    runs = []
    for dev in (Simulator(cfg), RtlDevice(cfg)):
        _write_model(dev, p, prm)
        dev.load_program(encode_program(p.program))
        runs.append((dev, dev.run()))
    (sim, c_sim), (rtl, c_rtl) = runs
    lay, s = p.layout, shape
    assert rtl.read(0, lay["end"]) == sim.read(0, lay["end"])
    ref_logits, ref_kv = _reference(p, prm)
    assert np.isfinite(ref_logits).all() and np.abs(ref_logits).max() > 0
    np.testing.assert_array_equal(np.frombuffer(rtl.read(lay["logits"], 4 * s.vocab), "<f4"), ref_logits)
    for l in range(p.layers):
        for h in range(s.kv_heads):
            off = ((l * s.kv_heads + h) * lay["kv_max"] + p.L - 1) * s.head_dim
            assert rtl.read(lay["kcache"] + off, s.head_dim) == ref_kv[l, h, 0].tobytes()
            assert rtl.read(lay["vcache"] + off, s.head_dim) == ref_kv[l, h, 1].tobytes()
    for k in ("instructions", "spikes", "spike_vectors", "dram_read_bytes", "dram_write_bytes"):
        assert getattr(c_rtl, k) == getattr(c_sim, k), k
    rel = (c_rtl.cycles - c_sim.cycles) / c_sim.cycles
    with capsys.disabled():
        print(f"\n[rtl cosim] decode step of '{s.name}' (L={p.L}, {len(p.program)} instructions) on '{cfg.name}': "
              f"RTL {c_rtl.cycles:,} cycles, simulator (cost model) {c_sim.cycles:,} ({rel:+.2%})")
    assert abs(rel) <= 0.05, f"RTL cycles {c_rtl.cycles:,} vs cost model {c_sim.cycles:,}: {rel:+.2%}"


# ---------------------------------------------------------------- prefill on the device


def _run_prefill(dev, p: D.DecodeProgram, prm: dict, xs: np.ndarray):
    _write_model(dev, p, prm)
    dev.write(p.layout["x_in"], np.ascontiguousarray(xs, "<f4").tobytes())
    dev.load_program(encode_program(p.program))
    return dev.run()


def _decode_steps(cfg, shape, prm: dict, xs: np.ndarray, start: int, kv_max: int):
    """The simulator after len(xs) decode steps from position `start` (the cache rows
    before it as `prm` has them); the last step's program."""
    from spikec.runtime.simulator import Simulator

    sim = Simulator(cfg)
    for r, x in enumerate(xs):
        p = D.build_decode(shape, cfg, start + r + 1, kv_max=kv_max)
        if r == 0:
            _write_model(sim, p, prm)
        sim.write(p.layout["x_in"], x.astype("<f4").tobytes())
        sim.load_program(encode_program(p.program))
        sim.run()
    return sim, p


# Two layers, so that every token's layer-0 output (MLP included) reaches what is compared:
# the layer-1 KV-cache rows.
HALVES2 = D.LMShape("halves2", hidden=256, intermediate=16896, layers=2, heads=2, kv_heads=1, head_dim=128, vocab=512)
# down: K 2560 in k-pieces of 1792 and 768, M 896 with a last m-tile 384 wide (whose own
# best pieces would be 2048 and 512: the pieces must be the same for every m-tile)
WIDE = D.LMShape("wide", hidden=896, intermediate=2560, layers=2, heads=7, kv_heads=1, head_dim=128, vocab=600)


@pytest.mark.parametrize("shape, start, tokens, chunk, kv_max", [
    (TINY, 3, 5, 2, 64),  # chunks of 2, 2, 1
    (HALVES2, 2, 4, 2, 16),  # K of the down product in two parts of several k-pieces; gate|up in several DEQ groups
    (WIDE, 1, 4, 2, 16),
], ids=["tiny", "halves", "wide"])
def test_prefill_equals_decode_steps(cfg, shape, start, tokens, chunk, kv_max):
    """A prefill of `tokens` rows in chunks leaves the KV cache and the last token's logits
    bit for bit as that many decode steps do (each checked against the reference above)."""
    from spikec.runtime.simulator import Simulator

    p = D.build_prefill(shape, cfg, tokens, start=start, chunk=chunk, kv_max=kv_max)
    assert p.chunk == chunk and p.L == start + tokens
    assert any(i.op == Opcode.SPMM and i.n == chunk and i.wfmt == 1 for i in p.program)  # tiles SPMMed with all rows
    prm = _model(p, np.random.default_rng(1))
    xs = np.random.default_rng(5).standard_normal((tokens, shape.hidden)).astype(np.float32)
    pre = Simulator(cfg)
    _run_prefill(pre, p, prm, xs)
    dec, last = _decode_steps(cfg, shape, prm, xs, start, kv_max)
    lay = p.layout
    cache = lay["rope"] - lay["kcache"]
    assert pre.read(lay["kcache"], cache) == dec.read(lay["kcache"], cache)
    logits = np.frombuffer(pre.read(lay["logits"], 4 * shape.vocab), "<f4")
    assert np.abs(logits).max() > 0
    np.testing.assert_array_equal(logits, np.frombuffer(dec.read(last.layout["logits"], 4 * shape.vocab), "<f4"))
    # each chunk streams every layer's weights once; the LM head runs once, on the last token
    from spikec.isa.tiling import weight_bytes

    head = weight_bytes(shape.hidden, shape.vocab, 4)
    assert p.weight_load_bytes == _weight_loads(p) == -(-tokens // chunk) * (shape.weight_bytes(4) - head) + head


def test_prefill_from_position_zero(cfg):
    """A prompt from position 0 (the first token attends to itself alone): its first token
    equals the reference's step at L = 1, the whole prompt equals that token plus decode steps."""
    from types import SimpleNamespace

    from spikec.runtime.simulator import Simulator

    kv_max, tokens = 64, 5
    p = D.build_prefill(TINY, cfg, tokens, chunk=2, kv_max=kv_max)
    prm = _model(p, np.random.default_rng(1))
    xs = np.random.default_rng(5).standard_normal((tokens, TINY.hidden)).astype(np.float32)
    first = D.build_prefill(TINY, cfg, 1, kv_max=kv_max)
    one = Simulator(cfg)
    _run_prefill(one, first, prm, xs[:1])
    ref_logits, ref_kv = _reference(SimpleNamespace(shape=TINY, layout=first.layout, L=1, layers=TINY.layers),
                                    dict(prm, x=xs[0]))
    np.testing.assert_array_equal(np.frombuffer(one.read(first.layout["logits"], 4 * TINY.vocab), "<f4"), ref_logits)
    whole = Simulator(cfg)
    _run_prefill(whole, p, prm, xs)
    lay, D_ = p.layout, TINY.head_dim
    for l in range(TINY.layers):
        for h in range(TINY.kv_heads):
            off = ((l * TINY.kv_heads + h) * kv_max) * D_
            assert one.read(lay["kcache"] + off, D_) == ref_kv[l, h, 0].tobytes() == whole.read(lay["kcache"] + off, D_)
            assert one.read(lay["vcache"] + off, D_) == ref_kv[l, h, 1].tobytes() == whole.read(lay["vcache"] + off, D_)
    prm0 = dict(prm, kc=prm["kc"].copy(), vc=prm["vc"].copy())  # the cache after the first token
    prm0["kc"][:, :, 0], prm0["vc"][:, :, 0] = ref_kv[:, :, 0], ref_kv[:, :, 1]
    rest, last = _decode_steps(cfg, TINY, prm0, xs[1:], 1, kv_max)
    cache = lay["rope"] - lay["kcache"]
    assert whole.read(lay["kcache"], cache) == rest.read(lay["kcache"], cache)
    np.testing.assert_array_equal(np.frombuffer(whole.read(lay["logits"], 4 * TINY.vocab), "<f4"),
                                  np.frombuffer(rest.read(last.layout["logits"], 4 * TINY.vocab), "<f4"))


def test_prefill_rtl_equals_simulator():
    """A prefill in chunks of 2 rows on the RTL co-simulation: the same DRAM, byte for byte,
    as the functional simulator, and cycles within 5 % of the cost model's."""
    from spikec.runtime.rtl_device import RtlDevice
    from spikec.runtime.simulator import Simulator

    small = HwConfig.load("small")
    p = D.build_prefill(RTL_SMALL, small, 5, chunk=2, kv_max=8)
    prm = _model(p, np.random.default_rng(2))
    xs = np.random.default_rng(5).standard_normal((5, RTL_SMALL.hidden)).astype(np.float32)
    sim, rtl = Simulator(small), RtlDevice(small)
    c_sim, c_rtl = _run_prefill(sim, p, prm, xs), _run_prefill(rtl, p, prm, xs)
    assert rtl.read(0, p.layout["end"]) == sim.read(0, p.layout["end"])
    assert abs(c_rtl.cycles - c_sim.cycles) <= 0.05 * c_sim.cycles


def test_prefill_chunk_is_what_the_buffers_hold(cfg):
    from spikec.errors import SpikecError

    n = D.prefill_chunk(D.QWEN2VL_7B, cfg, 1024)
    assert n >= 1
    D.build_prefill(D.QWEN2VL_7B, cfg, 2 * n, chunk=n, layers=1, head=False, kv_max=1024)
    with pytest.raises(SpikecError, match=r"chunks of \d+ tokens.*(VEC|INP|ACC|SCL)"):
        D.build_prefill(D.QWEN2VL_7B, cfg, 2 * n + 2, chunk=n + 1, layers=1, head=False, kv_max=1024)
    with pytest.raises(SpikecError, match="outside the KV cache"):
        D.build_prefill(TINY, cfg, 10, start=60, kv_max=64)


def test_prefill_cost_linear_in_layers(cfg):
    c = [D.cost_prefill(D.QWEN2VL_2B, cfg, 8, 0.23, layers=n, head=False, kv_max=1024).timing.cycles
         for n in (1, 2, 3)]
    assert abs((c[2] - c[1]) - (c[1] - c[0])) <= 0.01 * (c[1] - c[0])


@pytest.mark.parametrize("fields, match", [
    (dict(kv_heads=0), "kv_heads = 0 must be an integer >= 1"),
    (dict(heads=3, kv_heads=2, hidden=384), "not a multiple of kv_heads"),
    (dict(hidden=300), r"heads x head_dim = 2 x 128 != hidden 300"),
    (dict(head_dim=3, hidden=6), "head_dim 3 is odd"),
    (dict(vocab=0), "vocab = 0"),
    (dict(hidden=256.0), "hidden = 256.0 must be an integer"),
])
def test_impossible_shapes_are_refused(fields, match):
    from spikec.errors import SpikecError

    base = dict(name="x", hidden=256, intermediate=512, layers=1, heads=2, kv_heads=1, head_dim=128, vocab=300)
    with pytest.raises(SpikecError, match=match):
        D.LMShape(**(base | fields))


@pytest.mark.parametrize("call, match", [
    (lambda c: D.build_prefill(TINY, c, 3, kv_max=64, layers=-1), "layers = -1 must be an integer 0..2"),
    (lambda c: D.build_prefill(TINY, c, 3, kv_max=64, layers=5), "layers = 5 must be an integer 0..2"),
    (lambda c: D.build_prefill(TINY, c, 3, kv_max=64, layers=0, head=False), "would do nothing"),
    (lambda c: D.build_prefill(TINY, c, 2.0, kv_max=64), "tokens = 2.0 must be an integer"),
    (lambda c: D.build_prefill(TINY, c, 3, chunk=1.5, kv_max=64), "chunk = 1.5 must be an integer"),
    (lambda c: D.build_prefill(TINY, c, 3, chunk=True, kv_max=64), "chunk = True must be an integer"),
    (lambda c: D.build_decode(TINY, c, 16384, kv_max=16384), "context length 16384 exceeds 16383"),
    (lambda c: D.build_decode(TINY, HwConfig.load("small"), 8), "does not fit a WGT slot.*smaller kv_max"),
    (lambda c: D.build_prefill(D.LMShape("hd6", 12, 16, 1, 2, 1, 6, 16), HwConfig.load("small"), 3, kv_max=6),
     "build_prefill: hd6 needs .* SCL elements"),
    (lambda c: D.build_prefill(D.LMShape("big", 4096, 16384, 40, 32, 8, 128, 160000), c, 2, chunk=1, kv_max=16),
     "build_prefill: big needs .* bytes of DRAM"),
    (lambda c: D.cost_decode(TINY, c, 8, -1.0, kv_max=64), r"spike_density = -1.0 must lie in \[0, 1\]"),
], ids=["layers<0", "layers>shape", "nothing", "float-tokens", "float-chunk", "bool-chunk", "L>16383", "kv-tile",
        "no-row-fits", "dram", "density"])
def test_bad_arguments_name_what_is_wrong(cfg, call, match):
    from spikec.errors import SpikecError

    with pytest.raises(SpikecError, match=match):
        call(cfg)


# ---------------------------------------------------------------- the weight FIFO

# How many of a batch's last tiles go through WGT (`_Step.wgt_share`), forced: none (every
# weight tile through the FIFO, the LM head's s_w LOAD then grouped before its first FIFO
# tile) and half; `deploy`'s own estimate is what the tests above run.
SHARES = {"all-fifo": lambda self, tiles: 0, "half": lambda self, tiles: len(tiles) // 2}


@pytest.mark.parametrize("share", SHARES, ids=list(SHARES))
@pytest.mark.parametrize("shape, L, kv_max", [(TINY, 8, 64), (HALVES, 5, 16)], ids=["tiny", "halves"])
def test_decode_step_through_the_weight_fifo_bit_exact(cfg, monkeypatch, share, shape, L, kv_max):
    """With tiles through the weight FIFO the step's logits and KV rows stay the reference's,
    bit for bit, and the cost-only timeline is the simulator's to the cycle."""
    from spikec.runtime.simulator import Simulator

    monkeypatch.setattr(D._Step, "wgt_share", SHARES[share])
    p = D.build_decode(shape, cfg, L, kv_max=kv_max)
    assert p.fifo_load_bytes > 0
    assert p.weight_load_bytes == _weight_loads(p) == shape.weight_bytes(4)
    prm = _model(p, np.random.default_rng(1))
    sim = Simulator(cfg)
    _write_model(sim, p, prm)
    _run_timed(sim, p, cfg)
    logits = np.frombuffer(sim.read(p.layout["logits"], 4 * shape.vocab), "<f4")
    ref_logits, ref_kv = _reference(p, prm)
    np.testing.assert_array_equal(logits, ref_logits.astype(np.float32))
    off = ((shape.kv_heads * (p.layers - 1)) * p.layout["kv_max"] + L - 1) * shape.head_dim
    k = np.frombuffer(sim.read(p.layout["kcache"] + off, shape.head_dim), np.int8)
    np.testing.assert_array_equal(k, ref_kv[p.layers - 1, 0, 0])


@pytest.mark.parametrize("share", SHARES, ids=list(SHARES))
def test_prefill_through_the_weight_fifo_equals_decode_steps(cfg, monkeypatch, share):
    """A prefill in chunks of 2 rows (SPMMs of n = 2 from the FIFO) leaves the KV cache and
    logits as decode steps do (the test above, with the tiles forced through the FIFO)."""
    monkeypatch.setattr(D._Step, "wgt_share", SHARES[share])
    p = D.build_prefill(TINY, cfg, 3, start=3, chunk=2, kv_max=64)
    assert any(i.op == Opcode.SPMM and i.n == 2 and i.wsrc for i in p.program)
    test_prefill_equals_decode_steps(cfg, TINY, 3, 3, 2, 64)
