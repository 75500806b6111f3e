"""Shared fixtures. Tests marked `slow` run only with SPIKEC_SLOW=1 (`make test-slow`)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from spikec import cli


_RUN_TMP: dict[str, object] = {}


def pytest_configure(config):
    """Every temporary file of a test run under one folder, removed when the run ends.

    The tests cache exports and compiled models in `tempfile.mkdtemp` folders (made once
    per run), spikec makes its own temporary files, and CLI subprocesses inherit TMPDIR:
    all of it went to the system's temporary folder and stayed there (about 1.5 GB after
    a few runs). The fuzzers' failure folder stays in the system one, to outlive the run."""
    system_tmp = tempfile.gettempdir()
    os.environ.setdefault("SPIKEC_FUZZ_DIR", str(Path(system_tmp) / "spikec-fuzz-failures"))
    root = tempfile.mkdtemp(prefix="spikec-tests-", dir=system_tmp)
    _RUN_TMP.update(root=root, previous=os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = root
    tempfile.tempdir = root


def pytest_sessionfinish(session, exitstatus):
    _RUN_TMP["failed"] = exitstatus not in (0, 5)


def pytest_unconfigure(config):
    root = _RUN_TMP.get("root")
    if root is None:
        return
    tempfile.tempdir = None
    if _RUN_TMP["previous"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = _RUN_TMP["previous"]
    if _RUN_TMP.get("failed"):
        print(f"\ntemporary files of this run kept for inspection: {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


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


@pytest.fixture(scope="session")
def ortops_library():
    """The path of spikec's onnxruntime custom-op library (spikec.runtime.ortops). `make test`
    builds it and sets SPIKEC_REQUIRE_ORTOPS=1, which turns its absence into a failure; a bare
    pytest run without it skips the tests that need it, saying why."""
    from spikec.runtime import ortops

    path = ortops.library()
    if path is None:
        message = f"spikec's custom-op library is not built or does not load ({ortops.DEFAULT_LIBRARY}; `make ortops`)"
        if os.environ.get("SPIKEC_REQUIRE_ORTOPS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
