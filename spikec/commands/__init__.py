"""The subcommands of `spikec` (spikec/cli.py registers them), and the option types they share."""

from __future__ import annotations

import os
from pathlib import Path

import click

# The most tokens one generation may produce: run, eval and report take the same range.
# Equal to spikec.frontend.manifest.MAX_NEW_TOKENS (a checkpoint's generation_config default,
# as exported; not imported here, which would load onnx_ir for `spikec --help`; a test keeps
# the two equal).
MAX_NEW_TOKENS = 4096
NEW_TOKENS = click.IntRange(1, MAX_NEW_TOKENS)


class OutputFile(click.Path):
    """A file output option: click.Path(path_type=Path, dir_okay=False) that refuses a name
    ending in a path separator (`-o model.sbin/` names a folder; Path() would drop the
    slash and write the file). With `file_suffixes`, the output may be a folder too, and
    the refusal applies only to names with one of those suffixes (compile's -o: a .sbin
    or .onnx file, else a folder). Refusals are click's usage errors (exit 2)."""

    def __init__(self, file_suffixes: tuple[str, ...] | None = None) -> None:
        super().__init__(path_type=Path, dir_okay=file_suffixes is not None)
        self.file_suffixes = file_suffixes

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.endswith(("/", os.sep)) and (
                self.file_suffixes is None or Path(value).suffix in self.file_suffixes):
            self.fail(f"{value!r} ends in a path separator, which names a folder; give the output file's name",
                      param, ctx)
        return super().convert(value, param, ctx)
