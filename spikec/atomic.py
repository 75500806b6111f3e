"""Outputs appear whole or not at all.

Every file or folder spikec writes goes to a temporary name beside its final path
and is renamed when complete, so an error or an interrupt never leaves a partial
output behind. Before any work, `check_output` refuses an output path that could not be
written whole or whose writing would destroy something else: a folder spikec did not
write, the folder holding an input, the current folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

from spikec.errors import SpikecError


def is_spikec_folder(path: Path) -> bool:
    """A folder spikec wrote and may replace: an export or compiled folder (manifest.json)."""
    return (path / "manifest.json").is_file()


def check_output(path: str | os.PathLike, *, is_dir: bool, inputs: Iterable[str | os.PathLike | None] = (),
                 replaceable: Callable[[Path], bool] | None = None, option: str = "-o") -> None:
    """Raise SpikecError (naming `option` and the path) unless `path` can take an output of
    this kind without destroying anything else:

    - no component of its parent is a file;
    - a file output does not name a folder, a folder output does not name a file;
    - a folder output is not the current folder or one holding it;
    - an existing non-empty folder is replaced only where `replaceable(folder)` says spikec
      wrote it (an earlier output of the same kind);
    - the output is none of `inputs` and holds none of them (replacing it would delete them),
      nor an existing file inside an input folder (a data folder's data.jsonl, an image);
    - a file output's path does not end in a path separator (`model.sbin/` names a folder);
    - its nearest existing folder takes a new file (a temporary one is made and removed
      there: a read-only or virtual file system is refused here, before any work).
    Symlinks are followed for the comparisons."""
    final = Path(path)
    where = f"{option} {path}"
    if not is_dir and str(path).endswith((os.sep, "/")):
        raise SpikecError(f"{where}: ends in a path separator, which names a folder; give the output file's name")
    for parent in final.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SpikecError(f"{where}: {parent} is a file, so nothing can be created under it")
            _check_writable(parent, where)
            break
    if final.exists():
        if is_dir and not final.is_dir():
            raise SpikecError(f"{where}: a file of that name exists; the output is a folder")
        if not is_dir and final.is_dir():
            raise SpikecError(f"{where}: is a folder; give the output file's name")
    resolved = final.resolve()
    for inp in inputs:
        if inp is None:
            continue
        source = Path(inp).resolve()
        if source == resolved or source.is_relative_to(resolved):
            raise SpikecError(f"{where}: the output would replace the input {inp}; give another path")
        if source.is_dir() and final.exists() and resolved.is_relative_to(source):
            raise SpikecError(f"{where}: would replace a file of the input folder {inp}; give another path")
    if is_dir:
        cwd = Path.cwd().resolve()
        if cwd == resolved or cwd.is_relative_to(resolved):
            raise SpikecError(f"{where}: is the current folder or holds it; give a new folder's name")
        if final.is_dir() and any(final.iterdir()) and not (replaceable is not None and replaceable(final)):
            raise SpikecError(f"{where}: the folder exists and is not one spikec wrote; spikec replaces only its own "
                              "outputs: remove it or give another path")


def _check_writable(folder: Path, where: str) -> None:
    """SpikecError unless a file can be created in `folder` (probed: os.access does not see
    read-only mounts, /proc or /sys for root)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".spikec-probe-", dir=folder)
    except OSError as exc:
        raise SpikecError(f"{where}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False,
                replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    The temporary lives in the same folder so the final rename is atomic on one
    file system. On any exception it is removed and `path` is left untouched. An
    existing folder is replaced only where `replaceable` says spikec wrote it
    (`check_output`, which raises SpikecError before anything is written)."""
    check_output(path, is_dir=is_dir, replaceable=replaceable)
    final = Path(path)
    prefix = f".{final.name}.tmp-"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the output is an ordinary folder
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise SpikecError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        yield tmp
        if is_dir:
            if final.exists():
                # A folder cannot be renamed over a non-empty one: move the old one
                # aside first so the swap is still all-or-nothing for readers.
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically. SpikecError naming `path` when it cannot be
    written (`check_output`'s refusals, a full disk)."""
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise SpikecError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))
