"""The program builder (isa/programs.py: ProgramBuilder) owns the dependency tokens.

Every kernel emitter (spiking products, vector functions, attention) builds its stream
through it; the simulator checks those programs for deadlocks and races in the fpga tests.
Here: the flags land where the protocol of docs/isa.md section 5 puts them, and protocol
mistakes are refused when the program is built rather than found as a deadlock.
"""

from __future__ import annotations

import pytest

from spikec.errors import SpikecError
from spikec.isa.encoding import encode_program
from spikec.isa.fields import Buffer, Module, Opcode, VecFunc
from spikec.isa.programs import ProgramBuilder
from spikec.runtime.simulator import Simulator

L, C = Module.LOAD, Module.COMPUTE
S = Module.STORE


def _copy_program(chunks: int) -> list:
    """LOAD -> VEC COPY -> STORE per chunk, double-buffered, tokens by the builder."""
    b = ProgramBuilder()
    for c in range(chunks):
        if c >= 2:
            b.pop(C, L)
        b.emit(Opcode.LOAD, buf=Buffer.VEC, sram=64 * (c % 2), dram=256 * c, stride=64, rows=1, cols=16)
        b.push(L, C)
        b.pop(L, C)
        if c >= 2:
            b.pop(S, C)
        b.emit(Opcode.VEC, func=VecFunc.COPY, dst=128 + 64 * (c % 2), src0=64 * (c % 2), n=1, len=16)
        if c + 2 < chunks:
            b.push(C, L)
        b.push(C, S)
        b.pop(C, S)
        b.emit(Opcode.STORE, buf=Buffer.VEC, sram=128 + 64 * (c % 2), dram=4096 + 64 * c, stride=64, rows=1, cols=16)
        if c + 2 < chunks or c == chunks - 1:
            b.push(S, C)
    return b.program()


def test_flags_follow_the_protocol_and_the_simulator_runs_it():
    prog = _copy_program(5)
    assert prog[-1].op == Opcode.FINISH and prog[-1].pop_next == 1
    loads = [i for i in prog if i.op == Opcode.LOAD]
    vecs = [i for i in prog if i.op == Opcode.VEC]
    stores = [i for i in prog if i.op == Opcode.STORE]
    assert [i.push_next for i in loads] == [1] * 5 and [i.pop_next for i in loads] == [0, 0, 1, 1, 1]
    assert [i.pop_prev for i in vecs] == [1] * 5 and [i.push_prev for i in vecs] == [1, 1, 1, 0, 0]
    assert [i.pop_next for i in vecs] == [0, 0, 1, 1, 1] and [i.push_next for i in vecs] == [1] * 5
    assert [i.pop_prev for i in stores] == [1] * 5 and [i.push_prev for i in stores] == [1, 1, 1, 0, 1]
    sim = Simulator("small")
    sim.write(0, bytes(range(256)) * 5)
    sim.load_program(encode_program(prog))
    assert sim.run().cycles > 0
    assert sim.read(4096, 64 * 5) == b"".join(bytes(range(256))[:64] for _ in range(5))


def test_protocol_mistakes_are_refused_when_building():
    b = ProgramBuilder()
    with pytest.raises(SpikecError, match="LOAD has no instruction to push"):
        b.push(L, C)
    b = ProgramBuilder()
    b.pop(L, C)
    with pytest.raises(SpikecError, match="two pending pops"):
        b.pop(L, C)
    b = ProgramBuilder()
    b.emit(Opcode.LOAD, buf=Buffer.VEC, rows=1, cols=1)
    b.push(L, C)
    with pytest.raises(SpikecError, match="already pushes"):
        b.push(L, C)
    with pytest.raises(SpikecError, match="unbalanced"):
        b.program()  # the token to COMPUTE is never popped
