"""Every tutorial (``tutorials/[0-9]*.py``, jupytext percent format) converts to the notebook
that the docs execute and render, and its code cells are valid Python.

The tutorials are *executed* (fast mode, in a Jupyter kernel) by the docs build of
``test_docs.py``, which also checks that each page shows printed outputs and figures; they
are not run a second time here. Adding a tutorial is adding a file.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9]*.py"))

pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
sys.path.insert(0, str(REPO / "docs" / "_ext"))
pytest.importorskip("sphinx")
import pc_docs  # noqa: E402


def test_tutorials_found() -> None:
    assert [p.name for p in pc_docs.tutorial_scripts()] == [p.name for p in TUTORIALS]
    assert len(TUTORIALS) >= 2, "tutorials/ should hold the executed tutorials"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_converts_to_a_notebook(path: Path) -> None:
    nb = nbformat.reads(pc_docs.tutorial_notebook(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.language == "python"
    setup, *cells, note = nb.cells
    assert setup.metadata.tags == ["remove-cell"]
    assert any(c.cell_type == "markdown" and c.source.startswith("# ") for c in cells)
    code = [c for c in cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    for i, cell in enumerate(code):
        ast.parse(cell.source, filename=f"{path.name}[code cell {i}]")
        assert "# pyro-compare-data:" not in cell.source
    # Converting twice gives the same file: an unchanged tutorial is not rebuilt.
    assert pc_docs.tutorial_notebook(path) == pc_docs.tutorial_notebook(path)
