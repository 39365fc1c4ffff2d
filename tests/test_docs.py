"""The Sphinx documentation builds with warnings as errors (as ``make docs`` does).

The build imports every public module (autodoc), so a docstring that does not render, a
broken cross-document link or a tutorial that cannot be converted fails here. The
tutorials are converted without executing them (``PYRO_COMPARE_DOCS_EXECUTE`` unset);
their execution is tested by ``test_tutorials.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("sphinx")
pytest.importorskip("myst_parser")
pytest.importorskip("jupytext")


def test_docs_build_without_warnings(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("PYRO_COMPARE_DOCS_EXECUTE", None)
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(REPO / "docs"),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    # Every tutorial became a page, with its code.
    for tutorial in sorted((REPO / "tutorials").glob("[0-9]*.py")):
        page = out / "tutorials" / f"{tutorial.stem}.html"
        assert page.exists(), f"no page for {tutorial.name}"
        text = re.sub(r"<[^>]+>", "", page.read_text())  # drop the highlighting markup
        assert "import pyro_compare as pc" in text
    # The API reference documents the public functions from their docstrings.
    tools = (out / "api" / "pyro_compare.tools.html").read_text()
    assert "counterfactual" in tools and "Posterior predictive mean" in tools
    models = (out / "api" / "pyro_compare.models.contrastive.html").read_text()
    assert "ContrastiveVAE" in models
    assert (out / "models" / "contrastive.html").exists()
    assert (out / "evaluation.html").exists()
