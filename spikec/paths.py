"""Paths taken from untrusted files, resolved inside the folder they belong to.

A model folder, a .sbin, a calibration or evaluation folder and a checkpoint are files
made by other people. Every path or name read from them (a graph `file`, the
`processor` folder, a graph role used to name an output, a .sbin FILE section, an
external-data `location`, an image in `data.jsonl`) goes through `resolve_inside` (or
`check_name` for a single file-name component), so that opening such a file can never
read or write outside the folders the user gave.

Refused, with a SpikecError naming `where` (the file and field):
- a value that is not a non-empty string, or contains a NUL byte;
- an absolute path (POSIX `/x`, Windows `C:\\x` or `\\\\server`), or a backslash;
- a `..` component (even one that would come back inside: such paths exist only to
  probe, and refusing them keeps the rule simple to audit);
- a component over 255 bytes or a path over 4096 bytes (NAME_MAX / PATH_MAX on Linux);
- a path whose real location (symlinks followed) is outside the folder.

This is the rule of ONNX's own external-data check since CVE-2022-25882 and
CVE-2024-27318, applied to every path spikec reads from a file, not only to weights.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from spikec.errors import SpikecError

NAME_MAX = 255  # bytes in one path component (Linux NAME_MAX)
PATH_MAX = 4096  # bytes in a whole path (Linux PATH_MAX)


def check_relative(value: object, *, where: str) -> PurePosixPath:
    """`value` as a relative POSIX path with no `..`, or SpikecError naming `where`.

    Pure text checks only (no file-system access): use for names that are joined to a
    folder later, such as .sbin section names.
    """
    if not isinstance(value, str) or not value:
        raise SpikecError(f"{where}: expected a non-empty relative path string, got {value!r:.80}")
    if "\x00" in value:
        raise SpikecError(f"{where}: path {value!r:.80} contains a NUL byte")
    if "\\" in value or (len(value) > 1 and value[1] == ":"):
        raise SpikecError(f"{where}: path {value!r:.80} is a Windows path; use '/'-separated relative paths")
    if len(value.encode("utf-8", "surrogatepass")) > PATH_MAX:
        raise SpikecError(f"{where}: path is {len(value.encode('utf-8', 'surrogatepass'))} bytes, over {PATH_MAX}")
    path = PurePosixPath(value)
    if path.is_absolute():
        raise SpikecError(f"{where}: path {value!r:.80} is absolute; it must be relative to its folder")
    for part in path.parts:
        if part == "..":
            raise SpikecError(f"{where}: path {value!r:.80} escapes its folder (a '..' component)")
        if len(part.encode("utf-8", "surrogatepass")) > NAME_MAX:
            raise SpikecError(f"{where}: a component of path {value!r:.80} is over {NAME_MAX} bytes")
    if path == PurePosixPath("."):
        raise SpikecError(f"{where}: path {value!r} names the folder itself, not a file in it")
    return path


def check_name(value: object, *, where: str) -> str:
    """`value` as one file-name component (no '/', no '.', '..'), or SpikecError."""
    path = check_relative(value, where=where)
    if len(path.parts) != 1 or value != path.parts[0]:
        raise SpikecError(f"{where}: {value!r:.80} must be a plain name (no '/' or '.' components)")
    return str(value)


def resolve_inside(base: str | os.PathLike, value: object, *, where: str) -> Path:
    """`base / value` with symlinks resolved, refused unless it stays inside `base`.

    `base` is trusted (a folder the user gave, or one spikec made); `value` is not.
    The result need not exist. Raises SpikecError naming `where` on any escape.
    """
    rel = check_relative(value, where=where)
    root = Path(base).resolve()
    try:
        target = (root / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, or an unreadable component
        raise SpikecError(f"{where}: cannot resolve path {value!r:.80} ({exc})") from None
    if target == root or not target.is_relative_to(root):
        raise SpikecError(f"{where}: path {value!r:.80} escapes its folder {root} (through a symlink)")
    return target


def files_inside(folder: str | os.PathLike, *, where: str) -> list[tuple[str, Path]]:
    """Every regular file under `folder` as (relative POSIX name, resolved path), sorted.

    A symlinked file whose target lies outside `folder`, and any symlinked folder (a
    loop, or a way out), are refused by name: copying or packing a folder must never pull
    in a file from elsewhere."""
    root = Path(folder).resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            target = resolve_inside(root, rel, where=f"{where} '{rel}'")
            if name in filenames and target.is_file():
                out.append((rel, target))
            elif name in dirnames and Path(dirpath, name).is_symlink():
                raise SpikecError(f"{where} '{rel}': a symlinked folder; copy its files in instead")
    return sorted(out)
