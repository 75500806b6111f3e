"""A fuzzing harness for spikec's loaders: seeded mutators, and a runner that feeds each
mutated input to the real CLI (`spikec.cli.main`) in-process and classifies the outcome.

    outcomes = fuzz_loader("sbin", n=300, seed=0, base=inputs)   # -> Counter of outcome kinds
    assert_clean(outcomes)                                        # names the folder of failing inputs

Outcomes (one per input):
- ok: exit 0;
- error: a clean user error: SystemExit(1) and one `error: ...` line on stderr;
- crash: any other exception, or an error message of several lines;
- hang: the command ran past its time limit (signal.setitimer);
- partial: the command failed and left something in its output folder;
- escape: the command opened a file outside the folders it was given (and the interpreter's
  own files, and spikec's private temporary folders), or wrote outside its output folder,
  seen by an audit hook on the "open" event (sys.addaudithook).

Loaders (LOADERS): "sbin" (the container and every section kind, checksums recomputed by
rewriting the section list with `write_sbin`, through inspect / disasm / run), "fpga" (the
isa/kernels, isa/hwconfig and isa/weights sections through `run --target fpga`),
"manifest" (an export folder's manifest.json through `compile`), "onnx" (an ONNX file
through `inspect` and `compile`). Failing inputs are saved under SPIKEC_FUZZ_DIR (default
`<tmp>/spikec-fuzz-failures`), one folder per loader, named in `assert_clean`'s message.

`collect_ops` re-derives the op allow-list of .sbin graphs (spikec.package.SBIN_OPS).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spikec import cli
from spikec.isa.container import SbinFile, SectionKind, write_sbin

LOADERS = ("sbin", "fpga", "manifest", "onnx")
KINDS = ("ok", "error", "crash", "hang", "partial", "escape")
FAILURE_KINDS = ("crash", "hang", "partial", "escape")
FAILURE_DIR = Path(os.environ.get("SPIKEC_FUZZ_DIR", Path(tempfile.gettempdir()) / "spikec-fuzz-failures"))


# ---------------------------------------------------------------- watching file access

class _Watch:
    """The folders the current command may read (`read`) and write (`write`); None: off."""

    read: tuple[str, ...] | None = None
    write: tuple[str, ...] = ()
    escapes: list[str] = []


def _system_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.__file__),
             str(Path(__file__).resolve().parents[1]), "/usr/", "/lib", "/etc/", "/dev/", "/proc/", "/sys/",
             os.path.expanduser("~/.cache/"), os.path.expanduser("~/.config/matplotlib"), "/opt/"}
    roots |= {p for p in sys.path if p}
    return tuple(sorted(os.path.realpath(r) for r in roots))


_SYSTEM: tuple[str, ...] = ()
_TMP = os.path.realpath(tempfile.gettempdir())


def _inside(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _private_tmp(path: str) -> bool:
    """spikec's own temporary folders (SbinModel.folder, mkdtemp of libraries it uses)."""
    if not path.startswith(_TMP + "/"):
        return False
    first = path[len(_TMP) + 1:].split("/", 1)[0]
    return first.startswith(("spikec-sbin-", "tmp", "matplotlib", "torchinductor", "."))


def _audit(event: str, args) -> None:
    if event != "open" or _Watch.read is None:
        return
    path, mode, flags = (tuple(args) + (None, None, None))[:3]
    if isinstance(path, int) or path is None:
        return
    try:
        path = os.fsdecode(path)
    except Exception:
        return
    full = os.path.realpath(os.path.abspath(path))
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
        (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    if writing:
        if not (_inside(full, _Watch.write) or _private_tmp(full)):
            _Watch.escapes.append(f"write {full}")
    elif not (_inside(full, _Watch.read) or _inside(full, _SYSTEM) or _private_tmp(full)):
        _Watch.escapes.append(f"read {full}")


_HOOKED = False


def _install_hook() -> None:
    global _HOOKED, _SYSTEM
    if not _HOOKED:
        _SYSTEM = _system_roots()
        sys.addaudithook(_audit)
        _HOOKED = True


# ---------------------------------------------------------------- running one input

class _Hang(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


@dataclass
class Outcome:
    kind: str
    detail: str = ""


def run_cli(argv: list[str], *, read: list[Path], write: Path, timeout: float = 20.0) -> Outcome:
    """Run `spikec argv` in-process; `read`: folders it may read; `write`: its output folder
    (created empty beforehand; anything left in it after a failure is a partial output)."""
    _install_hook()
    write.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(write))
    out, err = io.StringIO(), io.StringIO()
    _Watch.read = tuple(os.path.realpath(p) for p in [*read, write])
    _Watch.write = (os.path.realpath(write),)
    _Watch.escapes = []
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    code, crash = 0, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's overflow warnings are not the CLI's messages
            cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Hang:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return Outcome("hang", f"over {timeout:g} s")
    except BaseException as exc:  # noqa: BLE001 -- every other exception is what we look for
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        crash = f"{type(exc).__name__} at {where}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _Watch.read = None
    if _Watch.escapes:
        return Outcome("escape", _Watch.escapes[0])
    if crash is not None:
        return Outcome("crash", crash)
    if code == 0:
        return Outcome("ok")
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if set(os.listdir(write)) - before:
        return Outcome("partial", f"left {sorted(set(os.listdir(write)) - before)[:3]} after: {errors[:1]}")
    if code == 1 and len(errors) == 1 and lines[-1] == errors[0]:  # (progress lines of compile may precede it)
        return Outcome("error", errors[0][:300])
    return Outcome("crash", f"exit {code}, stderr {err.getvalue()[-300:]!r}")


# ---------------------------------------------------------------- mutators

INTERESTING = [None, True, False, 0, -1, 1, 2, 3, 7, 8, 15, 16, 255, 4095, 16383, 16384, 2**31, 2**63, -2**63,
               10**30, 0.5, -0.0, 1e308, "", "x", "lm", "graph/lm", "../../etc/passwd", "/etc/passwd", "a\x00b",
               [], {}, [0], [1, 2], [[]], {"a": 1}, ["x"], "RMSNORM", "static", "if", "tc-lif", "\udcff"]


def _paths(doc, prefix=()):
    """Every (path, value) in a JSON document."""
    out = [(prefix, doc)]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value


def mutate_json_doc(doc, rng: random.Random):
    """A structural mutation of a parsed JSON document (returns a new document)."""
    doc = copy.deepcopy(doc)
    paths = _paths(doc)
    path, value = rng.choice(paths)
    r = rng.random()
    if not path:
        return rng.choice([[], 0, "x", None, [doc], {"graphs": doc}])
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if r < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif r < 0.3 and isinstance(parent, list):
        del parent[path[-1]]
    elif r < 0.4 and isinstance(parent, list):
        parent.append(copy.deepcopy(value))
    elif r < 0.5 and isinstance(value, (int, float)) and not isinstance(value, bool):
        _set(doc, path, rng.choice([value + 1, value - 1, -value, value * 1000, 0, value * 2**40]))
    elif r < 0.55:
        _set(doc, path, json.loads("[" * 40 + "]" * 40))
    elif r < 0.6 and isinstance(value, dict) and value:
        _set(doc, path, list(value.values()))
    else:
        _set(doc, path, copy.deepcopy(rng.choice(INTERESTING)))
    return doc


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """A byte-level mutation."""
    b = bytearray(data)
    r = rng.random()
    if not b:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    i = rng.randrange(len(b))
    if r < 0.3:
        for _ in range(rng.randrange(1, 8)):
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
    elif r < 0.45:
        b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x01])
    elif r < 0.6:
        del b[i:i + rng.randrange(1, 64)]
    elif r < 0.7:
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    elif r < 0.8:
        j = rng.randrange(len(b))
        b[i:i] = b[j:j + rng.randrange(1, 256)]
    else:
        b = b[:i]
    return bytes(b)


def mutate_json_bytes(data: bytes, rng: random.Random) -> bytes:
    """JSON text mutated: mostly structurally, sometimes as text (deep nesting, 5,000-digit
    numbers, invalid UTF-8, NaN) or as bytes."""
    r = rng.random()
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        doc = None
    if doc is not None and r < 0.7:
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            doc = mutate_json_doc(doc, rng)
        return json.dumps(doc).encode("utf-8", "surrogatepass")
    text = data.decode("utf-8", "replace")
    if r < 0.75:
        return ("[" * 100_000 + "]" * 100_000).encode() if rng.random() < 0.5 else ("{\"a\":" * 5000 + "1" + "}" * 5000).encode()
    if r < 0.8:
        i = rng.randrange(len(text) + 1)
        return (text[:i] + "9" * 5000 + text[i:]).encode()
    if r < 0.85:
        return data[: len(data) // 2] + b"\xff\xfe\xc3" + data[len(data) // 2:]
    if r < 0.9:
        return text.replace("1", "NaN", 1).replace("2", "Infinity", 1).encode()
    return mutate_bytes(data, rng)


OP_POOL = ["Loop", "Scan", "If", "ConstantOfShape", "Expand", "Reshape", "Tile", "Range", "Identity", "Relu",
           "NoSuchOp", "SpikeEncode", "SpikeMatMul", "Gather", "Softmax", "MatMul", "Add"]


def _big_const_node(rng: random.Random, name: str) -> list[onnx.NodeProto]:
    op = rng.choice(["ConstantOfShape", "Expand", "Tile", "Range", "Reshape"])
    shape = numpy_helper.from_array(np.array([2**31, 2**31], np.int64), f"{name}.shape")
    c = helper.make_node("Constant", [], [f"{name}.s"], value=shape, name=f"{name}.c")
    if op == "ConstantOfShape":
        n = helper.make_node(op, [f"{name}.s"], [f"{name}.y"], name=name)
    elif op == "Range":
        lim = numpy_helper.from_array(np.array(2**62, np.int64), f"{name}.l")
        d = numpy_helper.from_array(np.array(rng.choice([0, 1]), np.int64), f"{name}.d")
        return [helper.make_node("Constant", [], [f"{name}.l"], value=lim, name=f"{name}.cl"),
                helper.make_node("Constant", [], [f"{name}.d"], value=d, name=f"{name}.cd"),
                helper.make_node(op, [f"{name}.d", f"{name}.l", f"{name}.d"], [f"{name}.y"], name=name)]
    else:
        n = helper.make_node(op, [f"{name}.s", f"{name}.s"], [f"{name}.y"], name=name)
    return [c, n]


def mutate_model(proto: onnx.ModelProto, rng: random.Random) -> bytes:
    """A structural mutation of an ONNX model, serialized (sometimes byte-mutated after)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    r = rng.random()
    nodes, inits = g.node, g.initializer
    if r < 0.12 and len(nodes):
        nodes[rng.randrange(len(nodes))].op_type = rng.choice(OP_POOL)
    elif r < 0.2 and len(nodes):
        n = nodes[rng.randrange(len(nodes))]
        if len(n.input):
            del n.input[rng.randrange(len(n.input))]
    elif r < 0.28 and len(nodes) >= 2:
        a, b = rng.sample(range(len(nodes)), 2)
        if len(nodes[b].output):
            nodes[a].output.append(nodes[b].output[0])  # a value made twice
    elif r < 0.34 and len(g.output):
        g.output.append(g.output[rng.randrange(len(g.output))])  # a duplicate output
    elif r < 0.46 and len(inits):
        t = inits[rng.randrange(len(inits))]
        t.data_type = rng.choice([TensorProto.STRING, TensorProto.UNDEFINED, 99, TensorProto.INT4, TensorProto.FLOAT16,
                                  TensorProto.INT64, TensorProto.COMPLEX64])
    elif r < 0.56 and len(inits):
        t = inits[rng.randrange(len(inits))]
        dims = list(t.dims) or [1]
        dims[rng.randrange(len(dims))] = rng.choice([0, -1, 2**40, 2**62, 3, 10**6])
        del t.dims[:]
        t.dims.extend(dims)
    elif r < 0.64 and len(inits):
        t = inits[rng.randrange(len(inits))]
        if t.HasField("raw_data"):
            t.raw_data = t.raw_data[: len(t.raw_data) // 2] if rng.random() < 0.7 else t.raw_data + b"\0" * 4
        else:
            t.raw_data = b"\1\2\3"
    elif r < 0.72:
        name = f"fuzz{rng.randrange(1000)}"
        new = _big_const_node(rng, name)
        for n in reversed(new):
            g.node.insert(0, n)
        g.output.append(helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, None))
    elif r < 0.77:
        body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                                 [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                  helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                                 [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
        t = numpy_helper.from_array(np.array(True), "fuzz.cond")
        g.node.insert(0, helper.make_node("Constant", [], ["fuzz.cond"], value=t, name="fuzz.c"))
        g.node.insert(1, helper.make_node("Loop", ["", "fuzz.cond"], ["fuzz.done"], body=body, name="fuzz.loop"))
    elif r < 0.82 and len(m.opset_import):
        m.opset_import[0].version = rng.choice([0, 1, 7, 99, 2**40])
    elif r < 0.86 and len(nodes):
        n = nodes[rng.randrange(len(nodes))]
        if len(n.attribute):
            a = n.attribute[rng.randrange(len(n.attribute))]
            if a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 2**62, 99])
            elif a.type == onnx.AttributeProto.INTS:
                a.ints.append(rng.choice([0, -1, 2**62]))
            else:
                a.type = onnx.AttributeProto.INT
    elif r < 0.9 and len(g.input):
        v = g.input[rng.randrange(len(g.input))]
        v.type.tensor_type.elem_type = rng.choice([TensorProto.STRING, TensorProto.INT8, 0])
    elif r < 0.93:
        m.ClearField("graph") if rng.random() < 0.3 else m.ClearField("ir_version")
    data = m.SerializeToString()
    if r >= 0.93 or rng.random() < 0.1:
        data = mutate_bytes(data, rng)
    return data


# ---------------------------------------------------------------- the loaders

@dataclass
class Base:
    """The valid inputs mutations start from: a .sbin without and one with accelerator
    sections, an export folder, ONNX files and the feeds `run --inputs` uses."""

    sbin: Path
    sbin_isa: Path
    export: Path
    onnx_files: list[Path]
    embed_npz: Path
    vision_npz: Path
    work: Path
    _sections: dict = field(default_factory=dict)

    def sections(self, path: Path) -> list[tuple[str, int, bytes]]:
        if path not in self._sections:
            with SbinFile(path) as f:
                self._sections[path] = [(s.name, int(s.kind), bytes(f.read(s.name))) for s in f.sections.values()]
        return self._sections[path]


def _mutate_section(name: str, kind: int, data: bytes, rng: random.Random) -> bytes:
    if kind == SectionKind.ONNX and rng.random() < 0.85:
        try:
            return mutate_model(onnx.load_from_string(data), rng)
        except Exception:  # noqa: BLE001
            return mutate_bytes(data, rng)
    if kind in (SectionKind.MANIFEST, SectionKind.JSON, SectionKind.HWCONFIG) or name.endswith(".json"):
        return mutate_json_bytes(data, rng)
    return mutate_bytes(data, rng)


def mutate_sbin(sections: list, rng: random.Random, only: tuple[str, ...] | None = None) -> list:
    """A mutated section list: one (or a few) sections' payloads mutated by kind, or the list
    itself (a section dropped, duplicated under another name, renamed, re-kinded)."""
    secs = list(sections)
    choices = [i for i, s in enumerate(secs) if only is None or s[0] in only]
    r = rng.random()
    if only is None and r < 0.15:
        i = rng.randrange(len(secs))
        op = rng.randrange(4)
        name, kind, data = secs[i]
        if op == 0:
            del secs[i]
        elif op == 1:
            secs.append((name + "x", kind, data))
        elif op == 2:
            secs[i] = (rng.choice(["manifest", "graph/lm", "files/../x", "isa/kernels", "files/a/" + name]), kind, data)
            if len({s[0] for s in secs}) != len(secs):
                del secs[i]
        else:
            secs[i] = (name, rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 99]), data)
        return secs
    for _ in range(rng.choice([1, 1, 1, 2])):
        i = rng.choice(choices)
        name, kind, data = secs[i]
        secs[i] = (name, kind, _mutate_section(name, kind, data, rng))
    return secs


def one_input(loader: str, i: int, base: Base, rng: random.Random) -> tuple[list[str], list[Path], Path, dict]:
    """(argv, folders to read, output folder, {file name: bytes} written) for input `i`."""
    case = base.work / loader / f"{i}"
    if case.exists():
        shutil.rmtree(case)
    inp, out = case / "in", case / "out"
    inp.mkdir(parents=True)
    files: dict[str, bytes] = {}
    if loader in ("sbin", "fpga"):
        src = base.sbin_isa if loader == "fpga" or rng.random() < 0.3 else base.sbin
        only = ("isa/kernels", "isa/hwconfig", "isa/weights") if loader == "fpga" else None
        path = inp / "m.sbin"
        write_sbin(path, mutate_sbin(base.sections(src), rng, only))
        files["m.sbin"] = path.read_bytes()
        if loader == "fpga":
            shutil.copy(base.vision_npz, inp / "x.npz")
            argv = ["run", str(path), "--target", "fpga", "--inputs", str(inp / "x.npz"), "--graph", "vision"]
        else:
            shutil.copy(base.embed_npz, inp / "x.npz")
            argv = rng.choice([["inspect", str(path)], ["inspect", str(path), "--json"], ["disasm", str(path)],
                               ["run", str(path), "--inputs", str(inp / "x.npz"), "--graph", "embed", "-o",
                                str(out / "y.npz")],
                               ["run", str(path), "--inputs", str(inp / "x.npz"), "--graph", "embed"]])
    elif loader == "manifest":
        folder = inp / "export"
        shutil.copytree(base.export, folder)
        data = mutate_json_bytes((base.export / "manifest.json").read_bytes(), rng)
        (folder / "manifest.json").write_bytes(data)
        files["manifest.json"] = data
        target = rng.choice(["folder", "m.sbin"])
        argv = ["compile", str(folder), "-o", str(out / target), "--passes", rng.choice(
            ["fold-constants", "quantize,spike-rewrite", "shape-inference"])]
    else:
        src = rng.choice(base.onnx_files)
        data = mutate_model(onnx.load(str(src)), rng)
        path = inp / "m.onnx"
        path.write_bytes(data)
        files["m.onnx"] = data
        argv = rng.choice([["inspect", str(path)],
                           ["compile", str(path), "-o", str(out / "y.onnx")],
                           ["compile", str(path), "-o", str(out / "y.sbin"), "--passes", "quantize,spike-rewrite"]])
    return argv, [inp], out, files


def fuzz_loader(loader: str, n: int, seed: int, base: Base, timeout: float = 20.0,
                log: list | None = None) -> collections.Counter:
    """Feed `n` mutated inputs (seeded) to one loader; failing inputs are saved under
    FAILURE_DIR/<loader>/. Returns the outcome counts (and appends (i, outcome) to `log`)."""
    rng = random.Random(f"{loader}-{seed}")
    counts: collections.Counter = collections.Counter({k: 0 for k in KINDS})
    for i in range(n):
        argv, read, out, files = one_input(loader, i, base, rng)
        outcome = run_cli(argv, read=read, write=out, timeout=timeout)
        counts[outcome.kind] += 1
        if outcome.kind in FAILURE_KINDS:
            keep = FAILURE_DIR / loader / f"{seed}-{i}-{outcome.kind}"
            keep.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                (keep / name).write_bytes(data)
            (keep / "outcome.txt").write_text(f"spikec {' '.join(argv)}\n{outcome.kind}: {outcome.detail}\n")
        if log is not None:
            log.append((i, outcome))
        shutil.rmtree(read[0].parent, ignore_errors=True)
    return counts


def assert_clean(loader: str, counts: collections.Counter, log: list) -> None:
    bad = [(i, o) for i, o in log if o.kind in FAILURE_KINDS]
    if bad:
        kinds = collections.Counter(f"{o.kind}: {o.detail[:120]}" for _, o in bad)
        shown = "\n  ".join(f"{c} x {k}" for k, c in kinds.most_common(12))
        raise AssertionError(f"fuzzing '{loader}': {dict(counts)}; failing inputs saved under "
                             f"{FAILURE_DIR / loader}:\n  {shown}")


# ---------------------------------------------------------------- base inputs

def tiny_graph(path: Path) -> Path:
    """A small float graph with constant weights: x [b, 8] -> MatMul -> Add -> Relu -> MatMul."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([-1, 4], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y0"], name="mm2"),
             helper.make_node("Reshape", ["y0", "shape"], ["y"], name="reshape")]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def make_base(work: Path, export_folder: Path, sbin: Path, sbin_isa: Path) -> Base:
    """The base inputs in `work`: the given compiled models, a copy of the export folder whose
    graphs are replaced by one tiny graph (so a compile takes milliseconds), ONNX files."""
    work.mkdir(parents=True, exist_ok=True)
    exp = work / "export"
    if exp.exists():
        shutil.rmtree(exp)
    exp.mkdir()
    manifest = json.loads((export_folder / "manifest.json").read_text())
    tiny_graph(exp / "lm.onnx")
    manifest["graphs"] = {"lm": {"file": "lm.onnx", "role": "lm", "inputs": [
        {"name": "x", "dtype": "float32", "shape": ["b", 8]}], "outputs": [{"name": "y", "dtype": "float32",
                                                                          "shape": ["b", 4]}]}}
    shutil.copytree(export_folder / "processor", exp / "processor")
    (exp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    onnx_files = [tiny_graph(work / "tiny.onnx")]
    vision = onnx.load(str(export_folder / "vision.onnx"))
    onnx.save(vision, str(work / "vision.onnx"), save_as_external_data=False)
    onnx_files.append(work / "vision.onnx")
    np.savez(work / "embed.npz", input_ids=np.array([[1, 2, 3, 4]], np.int64))
    np.savez(work / "vision.npz", pixel_values=np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    return Base(sbin, sbin_isa, exp, onnx_files, work / "embed.npz", work / "vision.npz", work)


COLLECT_OPTIONS = ({}, {"spike_attention": True}, {"neuron": "if", "wbits": 4, "tv": 2, "tt": 3},
                   {"wbits": 4, "group_size": 32, "rotate": True, "spike_attention": True})


def collect_ops(names=("tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "tiny-internvl", "tiny-idefics3",
                       "models/digits-llava"),
                work: Path | None = None) -> set[tuple[str, str]]:
    """(domain, op_type) of every graph `spikec export` writes for `names` (every family's
    tiny model and the bundled one) and `spikec compile` makes of them (COLLECT_OPTIONS:
    default; --spike-attention; --neuron if --wbits 4; W4, groups of 32, --rotate
    --spike-attention), compiled to folders so that nothing is refused on the way: how
    spikec.package.SBIN_OPS was derived."""
    from spikec.compiler import compile_path
    from spikec.frontend.export import export
    from spikec.passes.options import SpikeOptions

    work = Path(work or tempfile.mkdtemp(prefix="spikec-ops-"))
    found: set[tuple[str, str]] = set()

    def add(proto: onnx.ModelProto) -> None:
        for n in proto.graph.node:
            found.add(("" if n.domain == "ai.onnx" else n.domain, n.op_type))

    root = Path(__file__).resolve().parents[1]
    for name in names:
        src = str(root / name) if "/" in name else name
        exp = work / Path(name).name
        export(src, exp)
        for f in exp.glob("*.onnx"):
            add(onnx.load(str(f), load_external_data=False))
        for i, opts in enumerate(COLLECT_OPTIONS):
            out = work / f"{Path(name).name}-{i}"
            compile_path(exp, out, options=SpikeOptions(**opts).validate())
            for f in out.glob("*.onnx"):
                add(onnx.load(str(f), load_external_data=False))
    return found
