"""The `spikec` command line.

Each subcommand lives in its own module under spikec/commands/ and is imported
lazily, so `spikec --help` stays fast and a broken optional dependency of one
command cannot break the others. Only commands that work are registered.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys

import click

from spikec import __version__, progress
from spikec.errors import SpikecError
from spikec.schema import condense

# Characters of an error message printed without -v (the whole message with -v).
MAX_ERROR_CHARS = 2000

# name -> "module:attribute" of a click.Command. Register a command here only once
# it works end to end.
COMMANDS: dict[str, str] = {
    "compile": "spikec.commands.compile:compile_command",
    "disasm": "spikec.commands.disasm:disasm_command",
    "eval": "spikec.commands.eval:eval_command",
    "export": "spikec.commands.export:export_command",
    "inspect": "spikec.commands.inspect:inspect_command",
    "report": "spikec.commands.report:report_command",
    "run": "spikec.commands.run:run_command",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        _accept_global_options(command)
        return command


def _apply_verbosity(verbose: int, quiet: bool) -> None:
    """-q / -v wherever they are given: progress output and the root logger's level."""
    if quiet:
        progress.set_quiet(True)
    if verbose or quiet:
        logging.getLogger().setLevel(logging.INFO if verbose == 1 else logging.DEBUG if verbose > 1 else logging.ERROR)


def _subcommand_verbosity(ctx: click.Context, param: click.Parameter, value) -> None:
    if value:
        _apply_verbosity(value if param.name == "verbose" else 0, param.name == "quiet")


def _accept_global_options(command: click.Command) -> None:
    """Let `spikec COMMAND ... -q` (or -v) mean what `spikec -q COMMAND ...` does: users put
    them after the command as often as before it. Added once per command object."""
    if any(p.name in ("quiet", "verbose") for p in command.params):
        return
    command.params += [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_subcommand_verbosity,
                     help="As `spikec -v`: more logging, tracebacks on errors."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_subcommand_verbosity,
                     help="As `spikec -q`: no progress output, no warnings."),
    ]


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spikec")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug); tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or progress lines, no warnings; errors and results still print.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """spikec: compile multimodal LLMs into spike-driven models.

    \b
    Workflow:
      spikec export CHECKPOINT -o OUTDIR     Hugging Face folder -> ONNX graphs + manifest
      spikec compile INPUT -o OUT            quantize, rewrite into spiking ops, lower
      spikec run MODEL --target ort|fpga     run a compiled model
    Every command is listed below; `spikec COMMAND --help` describes it.
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    progress.set_quiet(quiet)  # set on every invocation: main() may run more than once in a process
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if quiet and verbose == 0:
        level = logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line and a non-zero exit."""
    verbose = any(a in ("-v", "-vv", "-vvv", "--verbose") for a in (argv if argv is not None else sys.argv[1:]))
    # SIGTERM (kill, a job scheduler's timeout) unwinds like Ctrl-C, so temporary outputs are removed
    try:
        previous = signal.signal(signal.SIGTERM, _terminated)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        _main(argv, verbose)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None, verbose: bool) -> None:
    try:
        cli.main(args=argv, prog_name="spikec", standalone_mode=False)
    except SpikecError as exc:
        if verbose:
            raise
        # one line, whatever a library put in the message (onnx.checker and ONNX Runtime
        # messages span lines); `-v` re-raises above with the full text and the traceback
        click.echo(f"error: {condense(exc, MAX_ERROR_CHARS)}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
