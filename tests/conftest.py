"""Shared fixtures. Tests marked `slow` run only with SPIKEC_SLOW=1 (`make test-slow`)."""

from __future__ import annotations

import os
import sys

import pytest

from spikec import cli


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SPIKEC_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: opt in with SPIKEC_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Run the real console entry point (`spikec.cli.main`) in-process."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_mlp(tmp_path_factory):
    """A small real ONNX model exported by torch (see spikec.testing.examples)."""
    from spikec.testing.examples import tiny_mlp_block

    return tiny_mlp_block(tmp_path_factory.mktemp("tiny") / "tiny_mlp.onnx")
