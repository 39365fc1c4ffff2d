"""Packaging promises of the README: the local CPU torch satisfies the requirement."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name: r for r in reqs}


def test_torch_requirement_admits_local_cpu_build():
    # `pip install -e .` next to torch 2.13.0 must not pull another (CUDA) build.
    torch_req = _requirements()["torch"]
    assert Version("2.13.0") in torch_req.specifier
    assert torch_req.specifier, "an unpinned torch would let pip pick the newest CUDA build"


def test_makefile_installs_torch_first_and_ci_calls_make_test():
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.index("torch==2.13.0") < makefile.index("pip install -e .")
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_console_script_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["pyro-compare"] == "pyro_compare.cli:main"
