"""The functional simulator against spikec.reference, its synchronisation checks, the
vector-unit numerics, robustness to bad programs, and the cost model by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikec import reference as R
from spikec.errors import SpikecError
from spikec.isa.asm import assemble_program
from spikec.isa.encoding import Instruction, encode_program
from spikec.isa.fields import AccMode, Buffer, EncodeDst, Neuron, Opcode, ScaleMode, VecFunc, WeightFormat
from spikec.isa.hwconfig import HwConfig
from spikec.isa import costmodel
from spikec.runtime.simulator import Simulator
from spikec.reference import vec_exp, vec_gelu, vec_layernorm, vec_rmsnorm, vec_rope, vec_silu, vec_softmax, vec_sum

I = Instruction  # noqa: E741
SMALL = HwConfig.load("small")


def chain(loads, computes, stores=()):
    """Program = loads, computes, stores, FINISH with the minimal tokens: the last load
    releases compute, the last compute releases store, the last store releases FINISH."""
    loads, computes, stores = list(loads), list(computes), list(stores)
    if loads:
        loads[-1] = loads[-1].replace(push_next=1)
        computes[0] = computes[0].replace(pop_prev=1)
    if stores:
        computes[-1] = computes[-1].replace(push_next=1)
        stores[0] = stores[0].replace(pop_prev=1)
        stores[-1] = stores[-1].replace(push_prev=1)
    return loads + computes + stores + [I(Opcode.FINISH, pop_next=int(bool(stores)))]


def run(program, writes, config="default"):
    dev = Simulator(config)
    dev.load_program(program if isinstance(program, bytes) else encode_program(program))
    for addr, array, dtype in writes:
        dev.write_array(addr, array, dtype)
    return dev, dev.run()


def load(buf, sram, dram, rows, cols, stride=None):
    from spikec.isa.fields import ELEMENT_BYTES

    return I(Opcode.LOAD, buf=buf, sram=sram, dram=dram, rows=rows, cols=cols, stride=cols * ELEMENT_BYTES[buf] if stride is None else stride)


def store(buf, sram, dram, rows, cols):
    from spikec.isa.fields import ELEMENT_BYTES

    return I(Opcode.STORE, buf=buf, sram=sram, dram=dram, rows=rows, cols=cols, stride=cols * ELEMENT_BYTES[buf])


# ---------------------------------------------------------------- the spiking linear layer, by hand

LINEAR = """
# A spiking linear layer: 2 vision tokens (t=3) and 3 text tokens (t=4), K=8, M=16.
LOAD   buf=WGT sram=0 dram=0x0    stride=16 rows=8 cols=16              # W_q int8 [8, 16]
LOAD   buf=VEC sram=0 dram=0x1000 stride=32 rows=5 cols=8               # x float32 [5, 8]
LOAD   buf=SCL sram=0 dram=0x2000 stride=0  rows=1 cols=32 deps=push_next  # s_w [16], bias [16]
ENCODE src=0  dst=0  n=2 len=8 t=3 scale=DYNAMIC scl=100 deps=pop_prev
ENCODE src=16 dst=16 n=3 len=8 t=4 scale=DYNAMIC scl=102
SPMM   inp=0  wgt=0 acc=0  n=2 k=8 m=16 acc_stride=16 t=3 neuron=TCLIF wfmt=INT8
SPMM   inp=16 wgt=0 acc=32 n=3 k=8 m=16 acc_stride=16 t=4
VEC    func=DEQ flags=3 dst=100 src0=0 src1=100 src2=0 n=5 len=16 deps=push_next
STORE  buf=VEC sram=100 dram=0x3000 stride=64 rows=5 cols=16 deps=pop_prev,push_prev
FINISH deps=pop_next
"""


def test_hand_written_spiking_linear_matches_reference_bit_for_bit():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5, 8)) * 3).astype(np.float32)
    w = rng.integers(-127, 128, (8, 16)).astype(np.int8)
    s_w = (rng.random(16) * 0.02 + 0.001).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    dev, ctr = run(assemble_program(LINEAR), [(0, w, "i1"), (0x1000, x, "<f4"), (0x2000, np.concatenate([s_w, bias]), "<f4")])
    y = dev.read_array(0x3000, (5, 16), "<f4")
    T = np.array([3, 3, 4, 4, 4])
    s_x = R.scale_per_token(x, T + 1)  # dynamic per-token scale, per-token code width
    expect = R.spiking_linear(x, s_x, w, s_w, bias, T)
    assert y.tobytes() == expect.tobytes()
    # Cost grows with sum_i T_i: 2*3 + 3*4 = 18 token-planes, one k-chunk each.
    assert ctr.spike_vectors + ctr.skipped_vectors == 18
    assert ctr.sops == ctr.spikes * 16 and ctr.instructions == 10
    assert ctr.dram_read_bytes == 8 * 16 + 5 * 8 * 4 + 32 * 4 and ctr.dram_write_bytes == 5 * 16 * 4
    assert ctr.cycles >= max(ctr.busy_load, ctr.busy_compute, ctr.busy_store) > 0
    assert set(ctr.energy_pj) == {"dram", "sram", "pe", "vec"} and ctr.energy_total_pj > 0


# ---------------------------------------------------------------- SPMM and ENCODE against the reference


def _spmm_program(N, K, M, groups, wfmt, wtrans, neuron=Neuron.TCLIF, accumulate=False):
    wbytes = K * M if wfmt == WeightFormat.INT8 else (K * M + 1) // 2
    loads = [load(Buffer.INP, 0, 0, N, K), load(Buffer.WGT, 0, 0x10000, 1, wbytes)]
    if accumulate:
        loads.append(load(Buffer.ACC, 0, 0x20000, N, M))
    comp, row = [], 0
    for n, t in groups:
        comp.append(I(Opcode.SPMM, inp=row * K, wgt=0, acc=row * M, n=n, k=K, m=M, acc_stride=M, t=t,
                      neuron=neuron, wfmt=wfmt, wtrans=wtrans, acc_mode=AccMode.ACCUMULATE if accumulate else AccMode.OVERWRITE))
        row += n
    return chain(loads, comp, [store(Buffer.ACC, 0, 0x30000, N, M)])


def _pack_int4(w):
    nib = (w.ravel().astype(np.int16) & 0xF).astype(np.uint8)
    if nib.size % 2:
        nib = np.append(nib, 0)
    return nib[0::2] | (nib[1::2] << 4)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(1, 15)), min_size=1, max_size=3),
    st.integers(1, 40),
    st.integers(1, 24),
    st.sampled_from(list(WeightFormat)),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_spmm_equals_reference_spike_matmul(groups, K, M, wfmt, wtrans, accumulate, seed):
    rng = np.random.default_rng(seed)
    N = sum(n for n, _ in groups)
    T = np.concatenate([[t] * n for n, t in groups])
    qw = 127 if wfmt == WeightFormat.INT8 else 7
    w = rng.integers(-qw, qw + 1, (K, M)).astype(np.int8)
    qmax = (1 << T) - 1
    q = (rng.integers(-(2**15), 2**15, (N, K)) % (qmax[:, None] + 1) * rng.choice([-1, 1], (N, K))).astype(np.int16)
    q[rng.random((N, K)) < 0.3] = 0  # some sparsity
    stored = w.T if wtrans else w
    wdata = stored.ravel() if wfmt == WeightFormat.INT8 else _pack_int4(stored)
    old = rng.integers(-1000, 1000, (N, M)).astype(np.int32)
    prog = _spmm_program(N, K, M, groups, wfmt, int(wtrans), accumulate=accumulate)
    dev, ctr = run(prog, [(0, q, "<i2"), (0x10000, wdata, "u1"), (0x20000, old, "<i4")])
    got = dev.read_array(0x30000, (N, M), "<i4")
    expect = R.spike_matmul(q, w, T)  # per-token T: groups are one SPMM each
    if accumulate:
        expect = expect + old
    np.testing.assert_array_equal(got, expect)
    assert ctr.spikes == int(np.count_nonzero(R.tclif_encode_tokens(q, T)))


@pytest.mark.parametrize("t", [1, 3, 7])
def test_spmm_rate_if_equals_reference(t):
    rng = np.random.default_rng(t)
    N, K, M = 3, 20, 9
    w = rng.integers(-127, 128, (K, M)).astype(np.int8)
    q = rng.integers(-(2**t - 1), 2**t, (N, K)).astype(np.int16)
    dev, ctr = run(_spmm_program(N, K, M, [(N, t)], WeightFormat.INT8, 0, Neuron.IF), [(0, q, "<i2"), (0x10000, w, "i1")])
    np.testing.assert_array_equal(dev.read_array(0x30000, (N, M), "<i4"), R.rate_if_matmul(q, w, t + 1))
    assert ctr.spikes == int(R.rate_if_encode(q, t + 1).sum())


def test_spmm_saturates_codes_and_wraps_int32():
    # |q| = 100 > 2**3 - 1 counts as 7 (the neuron fires every plane).
    q = np.array([[100, -100]], np.int16)
    w = np.array([[1], [2]], np.int8)
    dev, _ = run(_spmm_program(1, 2, 1, [(1, 3)], WeightFormat.INT8, 0), [(0, q, "<i2"), (0x10000, w, "i1")])
    assert dev.read_array(0x30000, (1, 1), "<i4")[0, 0] == 7 * 1 - 7 * 2
    # An overflowing product wraps like the reference's int32 Horner (the compiler forbids it).
    K = 16384 - 1
    q = np.full((1, K), 2**15 - 1, np.int16)
    w = np.full((K, 1), 127, np.int8)
    dev, _ = run(_spmm_program(1, K, 1, [(1, 15)], WeightFormat.INT8, 0), [(0, q, "<i2"), (0x10000, w, "i1")])
    wide = K * (2**15 - 1) * 127
    assert dev.read_array(0x30000, (1, 1), "<i4")[0, 0] == (wide + 2**31) % 2**32 - 2**31


@pytest.mark.parametrize("static", [False, True])
def test_encode_equals_reference_quantize(static):
    rng = np.random.default_rng(7)
    n, L, t = 6, 37, 4
    x = (rng.standard_normal((n, L)) * 5).astype(np.float32)
    x[2] = 0.0  # an all-zero row gets scale 1.0
    x[3, :5] = [0.5, 1.5, 2.5, -0.5, -2.5]  # ties, half to even
    s_static = np.float32(0.37)
    comp = [I(Opcode.ENCODE, src=0, dst=0, n=n, len=L, t=t, scale=ScaleMode.STATIC if static else ScaleMode.DYNAMIC, scl=0 if static else 10)]
    loads = [load(Buffer.VEC, 0, 0, n, L), load(Buffer.SCL, 0, 0x1000, 1, 1)]
    stores = [store(Buffer.INP, 0, 0x2000, n, L), store(Buffer.SCL, 10, 0x3000, 1, n)] if not static else [store(Buffer.INP, 0, 0x2000, n, L)]
    dev, _ = run(chain(loads, comp, stores), [(0, x, "<f4"), (0x1000, np.array([s_static]), "<f4")])
    s = s_static if static else R.scale_per_token(x, t + 1)
    np.testing.assert_array_equal(dev.read_array(0x2000, (n, L), "<i2"), R.quantize(x, s, 2**t - 1))
    if not static:
        assert dev.read_array(0x3000, (n,), "<f4").tobytes() == s[:, 0].tobytes()


def test_encode_into_wgt_drives_an_activation_product():
    """Q @ K^T: K's codes go to WGT as int8 (ENCODE dst_buf=WGT) and SPMM reads them transposed."""
    rng = np.random.default_rng(3)
    nq, nk, d, t = 3, 5, 8, 3
    qx, kx = rng.standard_normal((nq, d)).astype(np.float32), rng.standard_normal((nk, d)).astype(np.float32)
    comp = [
        I(Opcode.ENCODE, src=0, dst=0, n=nq, len=d, t=t, scl=0),
        I(Opcode.ENCODE, src=nq * d, dst=0, dst_buf=EncodeDst.WGT, n=nk, len=d, t=t, scl=nq),
        I(Opcode.SPMM, inp=0, wgt=0, acc=0, n=nq, k=d, m=nk, acc_stride=nk, t=t, wtrans=1),
    ]
    dev, _ = run(chain([load(Buffer.VEC, 0, 0, nq + nk, d)], comp, [store(Buffer.ACC, 0, 0x1000, nq, nk)]), [(0, np.vstack([qx, kx]), "<f4")])
    cq = R.quantize(qx, R.scale_per_token(qx, t + 1), 2**t - 1)
    ck = R.quantize(kx, R.scale_per_token(kx, t + 1), 2**t - 1)
    np.testing.assert_array_equal(dev.read_array(0x1000, (nq, nk), "<i4"), R.spike_matmul(cq, ck.T, t))


def test_encode_nan_is_a_device_fault():
    x = np.array([[1.0, np.nan]], np.float32)
    prog = chain([load(Buffer.VEC, 0, 0, 1, 2)], [I(Opcode.ENCODE, n=1, len=2, t=3)])
    with pytest.raises(SpikecError, match=r"instruction 1 \(ENCODE\): non-finite"):
        run(prog, [(0, x, "<f4")])


# ---------------------------------------------------------------- DMA


def test_dma_strided_and_broadcast_rows():
    src = np.arange(40, dtype=np.float32).reshape(5, 8)
    prog = chain(
        [load(Buffer.VEC, 0, 0, 3, 4, stride=64), load(Buffer.VEC, 12, 4, 2, 3, stride=0)],  # rows 0, 2, 4; then row 0 twice
        [I(Opcode.VEC, func=VecFunc.COPY, dst=100, src0=0, n=1, len=18)],
        [store(Buffer.VEC, 100, 0x1000, 1, 18)],
    )
    dev, _ = run(prog, [(0, src, "<f4")])
    got = dev.read_array(0x1000, (18,), "<f4")
    np.testing.assert_array_equal(got, np.concatenate([src[0, :4], src[2, :4], src[4, :4], src[0, 1:4], src[0, 1:4]]))


# ---------------------------------------------------------------- synchronisation


def test_pop_of_a_token_never_pushed_is_a_deadlock():
    prog = encode_program([I(Opcode.LOAD, buf=Buffer.VEC, rows=1, cols=1, pop_next=1, push_next=1), I(Opcode.FINISH, pop_prev=1)])
    with pytest.raises(SpikecError, match=r"deadlock: load: instruction 0 \(LOAD\) waits for a token in c2l .*compute: instruction 1 \(FINISH\) waits for a token in l2c"):
        run(prog, [])


def test_full_queues_are_a_deadlock():
    """Finite queues (small config: 4 tokens, 16 commands): five loads push before compute
    could pop, so the fifth waits for room in l2c; 16 more loads fill the load command
    queue, so fetch never reaches the compute instructions that would drain l2c."""
    loads = [I(Opcode.LOAD, buf=Buffer.VEC, sram=i, rows=1, cols=1, push_next=1) for i in range(5)]
    loads += [I(Opcode.LOAD, buf=Buffer.VEC, sram=100 + i, rows=1, cols=1, push_next=int(i == 15)) for i in range(16)]
    comp = [I(Opcode.VEC, func=VecFunc.COPY, dst=10 + i, src0=i, len=1, pop_prev=1) for i in range(5)]
    prog = encode_program(loads + comp + [I(Opcode.FINISH, pop_prev=1)])
    run(prog, [], "default")  # 16 tokens, 256 commands: fine
    with pytest.raises(SpikecError, match=r"deadlock: load: instruction 4 \(LOAD\) waits for room in l2c .*fetch: instruction 20 waits"):
        run(prog, [], "small")


def test_missing_token_is_a_race():
    prog = [load(Buffer.VEC, 0, 0, 1, 4), I(Opcode.VEC, func=VecFunc.COPY, dst=8, src0=0, len=4), I(Opcode.FINISH)]
    with pytest.raises(SpikecError, match=r"instruction 1 \(VEC\): reads VEC\[0\] written by instruction 0 .*race"):
        run(prog, [])


def test_overwrite_unordered_with_a_store_is_a_race():
    # LOAD, COPY (releases the store), STORE of VEC[4:8], then a second COPY overwriting
    # VEC[4:8] without waiting for the store: whichever runs first, the pair is a race.
    prog = chain([load(Buffer.VEC, 0, 0, 1, 4)], [I(Opcode.VEC, func=VecFunc.COPY, dst=4, src0=0, len=4)], [store(Buffer.VEC, 4, 0x100, 1, 4)])
    prog.insert(3, I(Opcode.VEC, func=VecFunc.COPY, dst=4, src0=0, len=4))
    with pytest.raises(SpikecError, match="race"):
        run(prog, [])


def test_write_after_read_without_token_is_a_race():
    # The STORE reads VEC[4:8]; COPY2 then overwrites it, ordered after a LOAD but not after the STORE.
    prog = [
        load(Buffer.VEC, 0, 0, 1, 4).replace(push_next=1),
        I(Opcode.VEC, func=VecFunc.COPY, dst=4, src0=0, len=4, pop_prev=1, push_prev=1, push_next=1),
        store(Buffer.VEC, 4, 0x100, 1, 4).replace(pop_prev=1, push_prev=1),
        load(Buffer.VEC, 8, 0, 1, 4).replace(pop_next=1, push_next=1),
        I(Opcode.VEC, func=VecFunc.COPY, dst=4, src0=8, len=4, pop_prev=1),
        I(Opcode.FINISH, pop_next=1),
    ]
    with pytest.raises(SpikecError, match=r"instruction 4 \(VEC\): overwrites VEC\[4\] that the store module reads .*race"):
        run(prog, [])


def test_reading_unwritten_buffer_is_an_error():
    prog = [I(Opcode.VEC, func=VecFunc.COPY, dst=8, src0=0, len=4), I(Opcode.FINISH)]
    with pytest.raises(SpikecError, match=r"reads VEC\[0\], which nothing wrote"):
        run(prog, [])


def test_finish_must_wait_for_the_last_store():
    prog = chain([load(Buffer.VEC, 0, 0, 1, 4)], [I(Opcode.VEC, func=VecFunc.COPY, dst=8, src0=0, len=4)], [store(Buffer.VEC, 8, 0x100, 1, 4)])
    prog[-2] = prog[-2].replace(push_prev=0)
    prog[-1] = I(Opcode.FINISH)
    with pytest.raises(SpikecError, match="FINISH.*does not wait for the last STORE"):
        run(prog, [])


def test_unconsumed_tokens_are_an_error():
    prog = [load(Buffer.VEC, 0, 0, 1, 4).replace(push_next=1), I(Opcode.VEC, func=VecFunc.COPY, dst=8, src0=0, len=4, pop_prev=1, push_next=1), I(Opcode.FINISH)]
    with pytest.raises(SpikecError, match="unconsumed dependency tokens.*1 in c2s"):
        run(prog, [])


def test_bounds_checked_at_load_for_the_configuration():
    prog = encode_program([I(Opcode.LOAD, buf=Buffer.ACC, sram=1000, rows=1, cols=100), I(Opcode.FINISH)])
    Simulator("default").load_program(prog)
    with pytest.raises(SpikecError, match=r"instruction 0 \(LOAD\): ACC elements \[1000, 1100\) exceed .*1024 elements \(config 'small'\)"):
        Simulator("small").load_program(prog)
    with pytest.raises(SpikecError, match="DRAM bytes"):
        Simulator("small").load_program(encode_program([I(Opcode.LOAD, dram=2**32 - 4, rows=1, cols=4), I(Opcode.FINISH)]))


# ---------------------------------------------------------------- robustness


@settings(max_examples=120, deadline=None)
@given(st.binary(min_size=0, max_size=96))
def test_random_bytes_never_crash_the_simulator(data):
    dev = Simulator(SMALL)
    try:
        dev.load_program(data)
        dev.run()
    except SpikecError as e:
        assert str(e)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 127)), min_size=1, max_size=3))
def test_mutated_programs_end_cleanly(flips):
    """Bit flips in a valid program: a clear SpikecError or a completed run, never a crash or a hang."""
    prog = bytearray(assemble_program(LINEAR))
    for ins, bit in flips:
        prog[ins * 16 + bit // 8] ^= 1 << (bit % 8)
    dev = Simulator(SMALL)
    dev.write(0, bytes(range(256)) * 64)
    try:
        dev.load_program(bytes(prog))
        dev.run()
    except SpikecError as e:
        assert str(e)


# ---------------------------------------------------------------- vector-unit numerics


def test_exp_is_within_one_ulp_and_handles_specials():
    x = np.linspace(-87, 88, 200_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    ulp = np.abs(vec_exp(x).astype(np.float64) - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert ulp.max() < 1.0
    sp = vec_exp(np.array([np.nan, -np.inf, np.inf, -200, 200, 0.0, -0.0], np.float32))
    assert np.isnan(sp[0]) and list(sp[1:]) == [0.0, np.inf, 0.0, np.inf, 1.0, 1.0]
    # Golden bits, so an accidental change of the definition is caught (and the RTL has vectors).
    golden = vec_exp(np.array([1.0, -1.0, 10.0, -50.0], np.float32)).view(np.uint32)
    assert [hex(v) for v in golden] == ["0x402df854", "0x3ebc5ab2", "0x46ac14ee", "0x1b692beb"]


def test_sum_order_is_sixteen_sequential_lanes():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 53)) * 10.0 ** rng.integers(-6, 6, (3, 53))).astype(np.float32)
    for r in range(3):
        lanes = [np.float32(0)] * 16
        for j in range(53):
            lanes[j % 16] = np.float32(lanes[j % 16] + x[r, j])
        total = lanes[0]
        for v in lanes[1:]:
            total = np.float32(total + v)
        assert vec_sum(x[r : r + 1])[0] == total


def test_vector_functions_are_close_to_float64():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 64)) * 3).astype(np.float32)
    x64 = x.astype(np.float64)
    g = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    eps = np.float32(1e-6)
    sm = np.exp(x64 - x64.max(1, keepdims=True))
    np.testing.assert_allclose(vec_softmax(x), sm / sm.sum(1, keepdims=True), rtol=2e-6, atol=1e-9)
    np.testing.assert_allclose(vec_silu(x), x64 / (1 + np.exp(-x64)), rtol=2e-6, atol=1e-7)
    gelu = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_allclose(vec_gelu(x), gelu, rtol=1e-5, atol=1e-6)
    rms = x64 / np.sqrt((x64**2).mean(1, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(vec_rmsnorm(x, g, eps), rms, rtol=1e-5, atol=1e-5)
    ln = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-6) * g + b
    np.testing.assert_allclose(vec_layernorm(x, g, b, eps), ln, rtol=1e-5, atol=1e-5)
    # ROPE is exactly Hugging Face's float32 x*cos + rotate_half(x)*sin.
    c, s = np.cos(x[:, :32]).astype(np.float32), np.sin(x[:, 32:]).astype(np.float32)
    cc, ss = np.concatenate([c, c], 1), np.concatenate([s, s], 1)
    hf = x * cc + np.concatenate([-x[:, 32:], x[:, :32]], 1) * ss
    assert vec_rope(x, c, s).tobytes() == hf.tobytes()


def test_vec_program_matches_the_vec_functions():
    rng = np.random.default_rng(11)
    n, L = 3, 20
    x = rng.standard_normal((n, L)).astype(np.float32)
    gamma = rng.standard_normal(L).astype(np.float32)
    eps = np.float32(1e-5)
    comp = [
        I(Opcode.VEC, func=VecFunc.RMSNORM, dst=100, src0=0, src1=60, src2=0, n=n, len=L),
        I(Opcode.VEC, func=VecFunc.SILU, dst=200, src0=100, n=n, len=L),
        I(Opcode.VEC, func=VecFunc.ADD, dst=200, src0=200, src1=0, n=n, len=L),  # residual, in place
        I(Opcode.VEC, func=VecFunc.SOFTMAX, dst=300, src0=200, n=n, len=L),
        I(Opcode.VEC, func=VecFunc.SCALE, dst=300, src0=300, src1=0, n=n, len=L),
    ]
    loads = [load(Buffer.VEC, 0, 0, 1, n * L + L), load(Buffer.SCL, 0, 0x1000, 1, 1)]
    dev, ctr = run(chain(loads, comp, [store(Buffer.VEC, 300, 0x2000, n, L)]), [(0, np.concatenate([x.ravel(), gamma]), "<f4"), (0x1000, np.array([eps]), "<f4")])
    expect = vec_softmax(vec_silu(vec_rmsnorm(x, gamma, eps)) + x) * eps
    assert dev.read_array(0x2000, (n, L), "<f4").tobytes() == expect.tobytes()
    assert ctr.vec_elements == 5 * n * L


# ---------------------------------------------------------------- cost model, by hand


def test_cost_model_hand_example():
    cfg = SMALL  # 4x4 PEs, 100 MHz, 0.8 GB/s = 8 bytes/cycle, DMA latency 32, SPMM setup 4
    # One token, K=8 (2 k-chunks), M=4 (1 m-chunk), t=3; the only nonzero code is q[0]=1:
    # planes 001 -> one live spike vector (plane 2, chunk 0) of 1*3*2 = 6.
    q = np.array([[1, 0, 0, 0, 0, 0, 0, 0]], np.int16)
    w = np.arange(32, dtype=np.int8).reshape(8, 4)
    spmm = I(Opcode.SPMM, inp=0, wgt=0, acc=0, n=1, k=8, m=4, acc_stride=4, t=3)
    prog = chain([load(Buffer.INP, 0, 0, 1, 8), load(Buffer.WGT, 0, 0x100, 1, 32)], [spmm], [store(Buffer.ACC, 0, 0x200, 1, 4)])
    dev, ctr = run(prog, [(0, q, "<i2"), (0x100, w, "i1")], "small")
    assert ctr.spike_vectors == 1 and ctr.skipped_vectors == 5 and ctr.spikes == 1 and ctr.sops == 4
    # SPMM: setup 4 + ceil(4/4) * (ceil(8/4) * 4 weight-load cycles + 1 live vector) = 13.
    c = costmodel.spmm_cost(cfg, spmm, vectors=1, spikes=1)
    assert c.cycles == 13
    assert costmodel.spmm_cost(cfg, spmm).cycles == 4 + 8 + 6  # dense: all 6 vectors
    # LOAD INP 1 x 16 bytes: latency 32 + ceil(16 / 8) = 34; LOAD WGT 32 bytes: 32 + 4 = 36;
    # STORE ACC 16 bytes: 34 + 1 (the write acknowledgement). Timeline: the loads run back
    # to back (70), the SPMM waits for the second one's token (70 + 13 = 83), the store for
    # the SPMM's (83 + 35 = 118), then FINISH (1).
    assert (ctr.busy_load, ctr.busy_compute, ctr.busy_store) == (70, 13 + 1, 35)
    assert ctr.cycles == 119
    # Energy (pJ, Horowitz 45 nm): DRAM 64 bytes = 8 words x 1300; SRAM: every buffer of the
    # small config is <= 8 KiB -> 10 pJ per 8 bytes; PE: 4 SOPs + 1 vector x 4 columns = 8 int32 adds x 0.1.
    assert ctr.energy_pj["dram"] == pytest.approx((16 + 32 + 16) / 8 * 1300)
    # SRAM bytes: the LOADs write 16 + 32, the STORE reads 16; the SPMM reads INP 16 and
    # WGT 32 and read-modify-writes ACC once per k-chunk after the first (16 read, 2 x 16 written).
    assert ctr.sram_read_bytes + ctr.sram_write_bytes == 48 + 16 + 16 + 32 + 16 + 32
    assert ctr.energy_pj["sram"] == pytest.approx((48 + 16 + 16 + 32 + 16 + 32) / 8 * 10)
    assert ctr.energy_pj["pe"] == pytest.approx(0.8)
    assert ctr.energy_pj["vec"] == 0
    # Cycles scale with sum_i T_i: the dense SPMM of two groups (n=2, t=3) + (n=2, t=5)
    # processes (2*3 + 2*5) * 2 chunks = 32 vectors, not 4 * 5 * 2 = 40.
    groups = [I(Opcode.SPMM, n=2, k=8, m=4, acc_stride=4, t=t) for t in (3, 5)]
    assert sum(costmodel.spmm_dense_vectors(cfg, g) for g in groups) == 32
    assert costmodel.ENERGY.source.startswith("Horowitz")
