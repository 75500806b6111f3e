"""Progress on long work: one policy for the whole tool.

- stderr is a terminal (and no `-q`): progress bars with an ETA (tqdm), drawn on stderr;
- stderr is not a terminal (a pipe, a file, a test's captured output): no bar; the
  commands print the same plain text lines they always did (`[  4.8s] exporting ...`,
  `lm: [6/10] quantize`) and the loops that had none (calibration, quantize per layer,
  eval items) log one line at INFO level (shown with `-v`);
- `-q/--quiet` (`set_quiet`): neither bars nor progress lines. Errors, warnings of
  `-v` runs and the commands' results still print.

Library code calls `progress_bar` / `track` / `step`; the CLI adapts the `progress(msg)` callbacks
of `spikec.frontend.export.export`, `spikec.compiler.compile_path` and the pass manager
with `stage_lines` / `pass_lines`, which keep the callbacks' text off a terminal.
"""

from __future__ import annotations

import abc

import logging
import os
import re
import sys
from typing import Callable

log = logging.getLogger(__name__)

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Set by the CLI's -q/--quiet: no bars, no progress lines."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def on_terminal() -> bool:
    """Bars are drawn: stderr is a terminal and not quiet."""
    if _quiet:
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError, OSError):  # closed or replaced stream
        return False


def lines_wanted() -> bool:
    """The plain progress lines are printed: not quiet and no terminal (a bar shows them there)."""
    return not _quiet and not on_terminal()


class _NoBar:
    """What `progress_bar` returns off a terminal: tqdm's interface, doing nothing."""

    n = 0
    total = None

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, unit: str = "it", *, leave: bool = True, delay: float = 0.0):
    """A tqdm bar on stderr when `on_terminal()`, else a no-op object (and one INFO log line).

    Use as a context manager; `.update(n)` advances it, `.set_postfix_str(s)` names the
    current item. `delay`: seconds before it appears (short loops never show one);
    `leave=False`: cleared when done (a bar nested in another)."""
    if not on_terminal():
        if not _quiet:
            log.info("%s: %s %s", desc, "?" if total is None else total, unit)
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, delay=delay, file=sys.stderr, bar_format=BAR_FORMAT,
                **_size())


# tqdm's default line with a bar of fixed width: a long postfix (the current stage or
# pass) is cut at the terminal's edge instead of squeezing the bar to nothing
BAR_FORMAT = "{l_bar}{bar:24}{r_bar}"


def _size() -> dict:
    """Follow the terminal's width; a terminal that reports no size (a bare pseudo-terminal,
    `script`) would make tqdm hide the bar: 80x24 there."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        size = None
    if size is None or not size.columns or not size.lines:
        return {"ncols": 80, "nrows": 24}
    return {"dynamic_ncols": True}


def track(items, desc: str, unit: str = "it", *, leave: bool = True, delay: float = 0.0):
    """Iterate over `items` (a sized collection) with `progress_bar` advancing after each one;
    the bar closes when the loop ends, breaks or raises."""
    with progress_bar(len(items), desc, unit, leave=leave, delay=delay) as bar:
        for item in items:
            yield item
            bar.update()


def step(desc: str) -> None:
    """A one-off progress message: printed above any bars on a terminal, logged at INFO off one."""
    if _quiet:
        return
    if on_terminal():
        from tqdm import tqdm

        tqdm.write(desc, file=sys.stderr)
    else:
        log.info("%s", desc)


def line(message: str, *, err: bool = True) -> None:
    """A command's plain progress line, printed only off a terminal and without -q."""
    if lines_wanted():
        import click

        click.echo(message, err=err)


class _Adapter(abc.ABC):
    """A `progress(msg)` callback for the existing interfaces (a context manager).

    Off a terminal each message goes to `echo` unchanged; with -q nowhere; on a
    terminal to bars (`_bar_for`). Leaving the `with` block normally completes the
    open bar; an exception leaves it where it stopped."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.bar = None
        self.key: str | None = None

    def __call__(self, message: str) -> None:
        if _quiet:
            return
        if not on_terminal():
            self.echo(message)
            return
        if not self._bar_for(str(message)):
            step(str(message))  # above the open bar, which goes on

    @abc.abstractmethod
    def _bar_for(self, message: str) -> bool:
        """Advance or open the bar this message belongs to; False when it belongs to none."""

    def _open(self, key: str, total: int, desc: str, unit: str) -> None:
        if self.bar is not None and self.key == key and self.bar.total == total:
            return
        self._finish()
        self.key, self.bar = key, progress_bar(total, desc, unit)

    def _advance(self, done: int, current: str) -> None:
        bar = self.bar
        if done > bar.n:
            bar.update(done - bar.n)
        bar.set_postfix_str(current)

    def _finish(self, complete: bool = True) -> None:
        if self.bar is not None:
            if complete and self.bar.total is not None and self.bar.n < self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()
        self.bar, self.key = None, None

    def __enter__(self) -> "_Adapter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish(complete=exc_type is None)


class _Stages(_Adapter):
    """Every message starts the next of `total` stages (`spikec export`)."""

    def __init__(self, echo: Callable[[str], None], total: int, desc: str) -> None:
        super().__init__(echo)
        self.total, self.desc, self.seen = total, desc, 0

    def _bar_for(self, message: str) -> bool:
        self._open("stages", self.total, self.desc, "stage")
        self.seen += 1
        self._advance(min(self.seen - 1, self.total), message)
        return True


# "[6/10] quantize" or "lm: [6/10] quantize", as the pass manager and compile_folder write them
_PASS_LINE = re.compile(r"^(?:(?P<graph>.+?): )?\[(?P<i>\d+)/(?P<n>\d+)\] (?P<name>.+)$")


class _Passes(_Adapter):
    """One bar per graph over its passes (`spikec compile`); other messages as steps."""

    def __init__(self, echo: Callable[[str], None], desc: str) -> None:
        super().__init__(echo)
        self.desc = desc

    def _bar_for(self, message: str) -> bool:
        m = _PASS_LINE.match(message)
        if m is None:
            return False
        graph, i, n = m["graph"] or "", int(m["i"]), int(m["n"])
        if self.key == graph and self.bar is not None and i <= self.bar.n:
            self._finish()  # the same graph again (a second pipeline run): a new bar
        self._open(graph, n, graph or self.desc, "pass")
        self._advance(i - 1, m["name"])
        return True


def stage_lines(echo: Callable[[str], None], total: int, desc: str) -> _Adapter:
    """`with stage_lines(echo, 5, "export") as progress:` a bar over `total` stages on a
    terminal (each message starts the next one), `echo(message)` off it, nothing with -q."""
    return _Stages(echo, total, desc)


def pass_lines(echo: Callable[[str], None], desc: str = "compile") -> _Adapter:
    """`with pass_lines(echo) as progress:` one bar per graph over its passes on a terminal
    (messages "[i/n] pass" or "graph: [i/n] pass"; others printed above the bars),
    `echo(message)` off it, nothing with -q."""
    return _Passes(echo, desc)
