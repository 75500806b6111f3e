"""Validated reading of the JSON and fields spikec takes from files other people made.

Every JSON document spikec reads from a file (an export folder's manifest.json, a .sbin's
manifest and isa/kernels sections, a hardware configuration, a checkpoint's config.json,
data.jsonl rows) goes through `parse_json`,
and every field a reader uses through `get` (or one of the helpers below), so that a
value of the wrong type, out of range, or absent ends in one SpikecError naming the file
and the field -- never a KeyError, TypeError or a huge allocation later:

    doc = parse_json(data, where="model.sbin: section 'manifest'")
    n = get(doc, "lm.num_layers", int, where=where, min=1, max=MAX_LAYERS)

`condense` turns a multi-line message of a library (onnx.checker, ONNX Runtime) into the
one line the CLI prints; the full text stays available with `spikec -v`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from typing import Any, Iterator

from spikec.errors import SpikecError

MISSING: Any = object()
MAX_JSON_BYTES = 64 << 20  # a manifest or kernels document is kilobytes; 64 MiB is generous
MAX_JSON_DEPTH = 64  # deeper nesting than any document spikec writes (and far from RecursionError)
MAX_MESSAGE = 400  # characters of a library's message kept in a one-line error

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean", dict: "an object",
          list: "a list"}


def _walk_ok(value: object, limit: int, where: str) -> bool:
    """Whether `value` nests at most `limit` containers deep (iterative: no recursion);
    SpikecError for a string or key that is not valid Unicode (a lone surrogate from a
    "\\udcff" escape: no name may hold one, protobuf and file systems refuse them)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            _encodable(v, where)
        elif isinstance(v, (dict, list)):
            if d > limit:
                return False
            if isinstance(v, dict):
                for k in v:
                    _encodable(k, where)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return True


def _encodable(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpikecError(f"{where}: string {describe(text)} is not valid Unicode (a lone surrogate)") from None


def parse_json(data: bytes | bytearray | memoryview | str, *, where: str, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON document read from a file; every failure is a SpikecError naming `where`.

    Refused: more than `max_bytes`, invalid UTF-8, invalid JSON, integers beyond Python's
    digit limit (ValueError), NaN/Infinity literals, a key that appears twice in one object
    (naming the key), nesting deeper than `max_depth`, strings holding lone surrogates.
    Raises: SpikecError."""
    if len(data) > max_bytes:
        raise SpikecError(f"{where}: {len(data)} bytes of JSON, over the limit of {max_bytes}")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpikecError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        # json keeps the last of two equal keys; another reader may keep the first, so which
        # value applies would depend on the reader: refused
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise SpikecError(f"{where}: key {describe(key)} appears twice in one object")
                seen.add(key)
        return obj

    try:
        doc = json.loads(text, parse_constant=no_constant, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise SpikecError(f"{where}: not valid JSON (nested too deeply)") from None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, the int digit limit, NaN/Infinity
        text = str(exc)
        if "int_max_str_digits" in text:  # Python's advice to raise its limit is not the user's to take
            text = f"a number of more than {sys.get_int_max_str_digits()} digits"
        raise SpikecError(f"{where}: not valid JSON ({condense(text, 200)})") from None
    if not _walk_ok(doc, max_depth, where):
        raise SpikecError(f"{where}: not valid JSON for spikec (nested more than {max_depth} deep)")
    return doc


def _bound(v: float) -> str:
    """A range bound as people read it: integers in full (1048576, not 1.04858e+06)."""
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def describe(value: object) -> str:
    """A short representation of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def get(obj: object, field: str, kind: type | tuple[type, ...], *, where: str, default: Any = MISSING,
        min: float | None = None, max: float | None = None, choices: tuple | list | set | None = None,
        nullable: bool = False) -> Any:
    """Field `field` (dotted: "lm.num_layers") of a parsed JSON object, checked.

    `kind` is int (a JSON integer, not a boolean), float (any finite number, returned as
    float), str, bool, dict or list, or a tuple of those. `min`/`max` bound numbers (and the
    length of strings, lists and objects); `choices` lists the allowed values; `nullable`
    lets null through as None; `default` is returned when the field (or an object on its
    path) is absent. Raises SpikecError naming `where` and the field."""
    cur = obj
    parts = field.split(".")
    for i, part in enumerate(parts):
        if not isinstance(cur, dict):
            parent = ".".join(parts[:i]) or "document"
            raise SpikecError(f"{where}: field '{parent}' must be an object, got {describe(cur)}")
        if part not in cur:
            if default is not MISSING:
                return default
            raise SpikecError(f"{where}: field '{field}' is missing")
        cur = cur[part]
    return check(cur, kind, where=f"{where}: field '{field}'", min=min, max=max, choices=choices, nullable=nullable)


def check(value: object, kind: type | tuple[type, ...], *, where: str, min: float | None = None,
          max: float | None = None, choices: tuple | list | set | None = None, nullable: bool = False) -> Any:
    """`value` checked as `get` checks a field (`where` names the field). Raises SpikecError."""
    if value is None and nullable:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = None
    for k in kinds:
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            ok = k
        elif k is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            ok = k
        elif k not in (int, float) and isinstance(value, k):
            ok = k
        if ok is not None:
            break
    if ok is None:
        want = " or ".join(_NAMES.get(k, k.__name__) for k in kinds) + (" or null" if nullable else "")
        raise SpikecError(f"{where} must be {want}, got {describe(value)}")
    if ok is float:
        value = float(value)
    if choices is not None:
        try:
            allowed = value in choices
        except TypeError:
            allowed = False
        if not allowed:
            shown = ", ".join(map(repr, list(choices)[:12]))
            raise SpikecError(f"{where} must be one of {shown}, got {describe(value)}")
    if min is not None or max is not None:
        size = value if ok in (int, float) else len(value) if ok in (str, list, dict) else None
        if size is not None and ((min is not None and size < min) or (max is not None and size > max)):
            what = "" if ok in (int, float) else " (its length)"
            lo = "" if min is None else _bound(min)
            hi = "" if max is None else _bound(max)
            raise SpikecError(f"{where}{what} must be in {lo}..{hi}, got {describe(value if size is value else size)}")
    return value


def int_list(value: object, *, where: str, min: int | None = None, max: int | None = None,
             length: tuple[int, int] = (0, 1 << 20)) -> list[int]:
    """`value` as a list of integers in min..max with a length in `length`. Raises SpikecError."""
    items = check(value, list, where=where, min=length[0], max=length[1])
    return [check(v, int, where=f"{where}[{i}]", min=min, max=max) for i, v in enumerate(items)]


def str_list(value: object, *, where: str, length: tuple[int, int] = (0, 1 << 20), max_len: int = 4096) -> list[str]:
    """`value` as a list of strings of at most `max_len` characters. Raises SpikecError."""
    items = check(value, list, where=where, min=length[0], max=length[1])
    return [check(v, str, where=f"{where}[{i}]", max=max_len) for i, v in enumerate(items)]


_SPACE = re.compile(r"\s+")


def condense(message: object, limit: int = MAX_MESSAGE) -> str:
    """A library's message (onnx.checker, shape inference, ONNX Runtime) as one line: line
    breaks and runs of whitespace become one space, ONNX's "==> Context:" marker a "; ",
    and the result is cut at `limit` characters (the full text is kept on the exception's
    cause and shown with `spikec -v`)."""
    text = str(message).replace("==> Context:", "; ")
    lines = [ln.strip() for ln in text.splitlines()]
    text = "; ".join(ln for ln in lines if ln)
    text = _SPACE.sub(" ", text).replace(";  ;", ";").replace("; ;", ";").strip(" ;")
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


@contextlib.contextmanager
def naming_file(path: str | os.PathLike) -> Iterator[None]:
    """Prefix `path` to a SpikecError raised inside that does not name the file already
    (e.g. a verifier's or ONNX Runtime's message about a graph of that file); the original
    stays the new error's cause (`spikec -v`)."""
    try:
        yield
    except SpikecError as exc:
        # a message about an option's file (--calib x.png, --image y) names that file instead
        if str(path) in str(exc) or str(exc).startswith("-"):
            raise
        raise SpikecError(f"{path}: {exc}") from exc


# An .npz is a zip archive (numpy.savez); anything else numpy.load would try to read as a
# pickle, and with allow_pickle=False say "contains pickled (object) data", which misleads.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


class Npz:
    """An opened untrusted .npz (`open_npz`): `files`, `keys()`, `in`, iteration and
    `npz[name]` as numpy's NpzFile, and a context manager; a member that cannot be read
    (a corrupt zip entry, a bad CRC, a truncated or pickled array) is a SpikecError naming
    the file and the member, never zipfile's or zlib's exception."""

    def __init__(self, data, where: str) -> None:
        self._data = data
        self._where = where
        self.files: list[str] = list(data.files)

    def keys(self) -> list[str]:
        return list(self.files)

    def __contains__(self, name: object) -> bool:
        return name in self.files

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, name: str):
        if name not in self.files:
            raise SpikecError(f"{self._where}: no array {describe(name)}")
        try:
            return self._data[name]
        except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy raise many kinds on a corrupt member
            raise SpikecError(f"{self._where}: array {describe(name)} cannot be read "
                              f"({type(exc).__name__}: {condense(exc, 200)})") from None

    def close(self) -> None:
        self._data.close()

    def __enter__(self) -> "Npz":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_npz(path: str | os.PathLike, *, where: str) -> Npz:
    """numpy.load of an untrusted .npz, pickles refused: returns an `Npz` (a context
    manager). Raises SpikecError starting with `where` when the file is missing, is not a
    zip archive, or numpy cannot read it (a corrupt archive: zipfile.BadZipFile and the
    like); reading a corrupt member later raises SpikecError too (`Npz.__getitem__`)."""
    import numpy as np

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise SpikecError(f"{where}: cannot read ({exc.strerror})") from None
    if head not in ZIP_MAGICS:
        raise SpikecError(f"{where}: not an .npz file (numpy.savez writes a zip archive; this file does not start like one)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError...
        raise SpikecError(f"{where}: not a readable .npz ({type(exc).__name__}: {condense(exc, 200)})") from None
    if not hasattr(data, "files"):  # np.load of a zip always gives an NpzFile; anything else is not an .npz
        raise SpikecError(f"{where}: not an .npz file")
    return Npz(data, where)
