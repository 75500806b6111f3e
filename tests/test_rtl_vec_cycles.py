"""The vector unit's cycles, measured on the RTL (Verilator), against the cost model.

rtl/spikec_vecu.sv is iterative and pipelined (one float32 operation per lane issued per
cycle, each with a latency of 2: float32 add and multiply in two stages; microprograms
per function and pass that wait for the results they read; docs/rtl.md section 2);
isa/costmodel.py `vec_pass_steps` states its steps. For each ENCODE mode and VEC function, `randprog.kind_program` makes
programs whose compute module runs only that kind (random n, len, operands); the RTL's
busy cycles of the compute module must be within 5 % of the cost model's (the
simulator's busy counter) and the results bit-identical. `small` in the default suite;
SPIKEC_SLOW=1 adds `default`. Printed with `pytest -s`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from spikec.isa.encoding import decode_program
from spikec.isa.fields import Opcode
from spikec.isa.hwconfig import HwConfig
from spikec.testing.randprog import KINDS, kind_program

ROOT = Path(__file__).resolve().parents[1]
SLOW = os.environ.get("SPIKEC_SLOW") == "1"
CONFIGS = ["small", "default"] if SLOW else ["small"]
VEC_KINDS = [k for k in KINDS if k.startswith(("VEC.", "ENCODE."))]
PROGRAMS = 2  # programs of 4 instructions per kind


def _cosim():
    spec = importlib.util.spec_from_file_location("rtl_cosim_script", ROOT / "scripts" / "rtl_cosim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.cosim


@pytest.fixture(scope="module")
def cosim():
    return _cosim()  # Verilator is a test extra (make test installs it): a missing one fails, not skips


@pytest.mark.parametrize("cfg_name", CONFIGS)
@pytest.mark.parametrize("kind", VEC_KINDS)
def test_vec_cycles_match_cost_model(cosim, cfg_name, kind):
    cfg = HwConfig.load(cfg_name)
    model = rtl = n = 0
    for seed in range(PROGRAMS):
        prog, img = kind_program(seed, cfg, kind, count=4)
        r = cosim(cfg, prog, img)
        assert r["error"] is None, r["error"]
        assert r["ok"], f"{kind} seed {seed}: DRAM differs from the simulator at byte {r['mismatch']}"
        assert not r["counters"], f"{kind} seed {seed}: counters differ: {r['counters']}"
        op = Opcode[kind.split(".")[0]]
        n += sum(1 for i in decode_program(prog) if i.op == op)
        model += r["sim"].busy_compute
        rtl += r["rtl"].busy_compute
    rel = rtl / model - 1
    print(f"\n[{cfg_name}] {kind}: {n} instructions, compute busy cycles RTL {rtl:,}, cost model {model:,} ({rel:+.2%})")
    assert abs(rel) <= 0.05, f"{kind}: RTL {rtl:,} vs cost model {model:,} cycles ({rel:+.2%})"
