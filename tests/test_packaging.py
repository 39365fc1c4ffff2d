"""Packaging promises of the README: the local CPU torch satisfies the requirement, and
`import pyro_compare` stays light (no plotting / machine-learning libraries at import)."""

import os
import subprocess
import sys
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


def test_import_does_not_load_plotting_or_machine_learning_libraries():
    # `import pyro_compare` costs torch + pyro + anndata; matplotlib, scikit-learn, scanpy
    # (and scipy.stats) are imported by the functions that need them (issue 11).
    code = (
        "import sys, pyro_compare, pyro_compare.metrics, pyro_compare.plotting; "
        "heavy = ('matplotlib', 'sklearn', 'scanpy', 'umap', 'seaborn', 'statsmodels', "
        "'scipy.stats'); print(' '.join(m for m in heavy if m in sys.modules))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MPLBACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [], f"imported at `import pyro_compare`: {out.stdout}"


def test_library_code_does_not_choose_the_matplotlib_backend():
    # No `matplotlib.use(...)` in the package: the backend is the user's choice (the
    # command-line program, an application rather than a library, may pick one).
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "pyro_compare").rglob("*.py")
        if path.name != "cli.py" and "matplotlib.use(" in path.read_text()
    ]
    assert offenders == []
