"""The Sphinx documentation builds with warnings as errors (as ``make docs`` does), with the
tutorials executed in fast mode, and every tutorial page shows its outputs and figures.

One build serves every test of this module (a module-scoped fixture): it imports every
public module (autodoc), so a docstring that does not render or a broken cross-document
link fails here, and it executes every tutorial (``tutorials/[0-9]*.py``) in a Jupyter kernel
in fast mode (``PYRO_COMPARE_FAST=1``: subsampled cells, few epochs). This is the only place
where the default suite runs the tutorials (``test_tutorials.py`` only checks that they
convert): running them as scripts as well would double the slowest part of the suite, and
the executed build checks more than a script run does (the figures reach the page).

The build uses a fresh jupyter-cache (in the test's temporary folder), not the one of
``make docs``: that cache is keyed by the notebooks' code, not by the package, so reusing it
would test the package as it was when the cache was filled.

A tutorial that needs a real dataset says so in a comment line
``# pyro-compare-data: <file name>``; when the file is not in the data folder, the build
renders it without outputs and its page test is skipped (with the reason).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9]*.py"))
DATA_LINE = re.compile(r"^# pyro-compare-data:\s*(\S+)\s*$", re.MULTILINE)

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("jupytext")
pytest.importorskip("ipykernel")

from pyro_compare.data import data_dir  # noqa: E402

DATA_DIR = data_dir()


def _env(cache: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        PYRO_COMPARE_FAST="1",
        PYRO_COMPARE_DOCS_EXECUTE="1",
        PYRO_COMPARE_DOCS_CACHE=str(cache),
        PYRO_COMPARE_DATA_DIR=str(DATA_DIR),
        PYRO_COMPARE_THREADS=os.environ.get("PYRO_COMPARE_TEST_THREADS", "1"),
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
    )
    env.pop("MPLBACKEND", None)  # the kernels need their inline backend for the figures
    return env


def _sphinx(src: Path, tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(tmp / "doctrees"), str(src), str(tmp / "html")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("docs")
    result = _sphinx(REPO / "docs", tmp, _env(tmp / "jupyter_cache"))
    return result, tmp / "html"


@pytest.fixture
def html(build) -> Path:
    result, out = build
    if result.returncode != 0:
        pytest.fail("the docs build failed: see test_docs_build_without_warnings")
    return out


def test_docs_build_without_warnings(build) -> None:
    result, _ = build
    assert result.returncode == 0, (
        f"sphinx failed:\n{result.stdout[-3000:]}\n{result.stderr[-20000:]}"
    )


def test_api_reference(html: Path) -> None:
    """The API reference documents the public functions from their docstrings."""
    tools = (html / "api" / "pyro_compare.tools.html").read_text()
    assert "counterfactual" in tools and "Posterior predictive mean" in tools
    models = (html / "api" / "pyro_compare.models.contrastive.html").read_text()
    assert "ContrastiveVAE" in models
    assert (html / "models" / "contrastive.html").exists()
    assert (html / "evaluation.html").exists()


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_page_shows_outputs_and_figures(path: Path, html: Path) -> None:
    page = html / "tutorials" / f"{path.stem}.html"
    assert page.exists(), f"no page for {path.name}"
    source = page.read_text()
    text = re.sub(r"<[^>]+>", "", source)  # drop the highlighting markup
    assert "import pyro_compare as pc" in text
    assert "pyro-compare-data" not in text, "the test-runner comment reached the page"
    assert "catch_warnings" not in text, "the hidden set-up cell reached the page"
    assert "epoch/s" not in text, "a progress bar reached the page"
    for name in DATA_LINE.findall(path.read_text()):
        if not (DATA_DIR / name).exists():
            pytest.skip(f"{path.name} needs {DATA_DIR / name} (set PYRO_COMPARE_DATA_DIR)")
    outputs = re.findall(r'<div class="cell_output[^"]*"', source)
    assert outputs, f"{path.name}: no cell output on the page"
    assert re.search(r'<div class="output (stream|text_plain)', source), (
        f"{path.name}: no printed output on the page"
    )
    images = re.findall(r'<img[^>]+src="([^"]+)"', source)
    assert images, f"{path.name}: no figure on the page"
    for src in images:
        assert (page.parent / src).resolve().is_file(), f"{path.name}: missing image {src}"


def test_failing_cell_fails_the_build(tmp_path: Path) -> None:
    """A notebook cell that raises fails the build, and the log shows its traceback: the
    execution settings of ``docs/conf.py`` (``nb_*``) on a one-notebook project."""
    nbformat = pytest.importorskip("nbformat")
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text(
        textwrap.dedent(
            f"""
            import runpy

            conf = runpy.run_path({str(REPO / "docs" / "conf.py")!r})
            globals().update({{k: v for k, v in conf.items() if k.startswith("nb_")}})
            extensions = ["myst_nb"]
            """
        )
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# A failing tutorial"),
            nbformat.v4.new_code_cell("def broken():\n    return 1 / 0\n\nbroken()"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, src / "index.ipynb")
    result = _sphinx(src, tmp_path, _env(tmp_path / "jupyter_cache"))
    log = result.stdout + result.stderr
    assert result.returncode != 0, f"the build passed despite the failing cell:\n{log[-3000:]}"
    assert "ZeroDivisionError" in log and "return 1 / 0" in log, log[-3000:]
