"""The wheel installs one top-level package, `spikec`, holding passes/, isa/ and runtime/."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    """Every folder with an __init__.py under the mapped roots, as its installed name."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = set()
    for prefix, folder in config.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if any(part.startswith(".") or part == "__pycache__" for part in rel):
                continue
            found.add(".".join((prefix, *rel)))
    return found


def test_every_source_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _source_packages() == listed


def test_wheel_holds_only_spikec(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("spikec-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"spikec", next(t for t in tops if t.endswith(".dist-info"))}
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("passes", "isa", "runtime", "rtl"):
        assert f"spikec/{sub}/__init__.py" in names
    # --device rtl builds the SystemVerilog from the installed package
    from spikec.runtime import rtl_sim

    for src in rtl_sim.sources():
        assert f"spikec/rtl/{src.relative_to(rtl_sim.rtl_dir()).as_posix()}" in names
