"""Build-time sources for the pyro_compare docs (a local Sphinx extension).

* ``api/``: one page per public module of ``pyro_compare`` (``automodule``), found by walking
  the package, so a new module appears without editing the docs.
* ``tutorials/``: the jupytext percent-format scripts of ``tutorials/`` converted to
  notebooks (``.ipynb``). myst-nb executes them at build time (fast mode by default, see
  ``conf.py``), caches the executed notebooks with jupyter-cache, and renders their text,
  code, printed output and figures.

Generated files live under ``docs/api`` and ``docs/tutorials`` (ignored by git) and are
rewritten only when their content changes, so incremental builds stay incremental.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
from pathlib import Path

from sphinx.util import logging

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
TUTORIALS = REPO / "tutorials"
logger = logging.getLogger(__name__)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# ---------------------------------------------------------------------------- API pages
def public_modules(package: str = "pyro_compare") -> list[str]:
    """Dotted names of the package and its public (sub)modules, sorted."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names)


def _title(text: str) -> str:
    return f"{text}\n{'=' * len(text)}\n"


def write_api_pages() -> None:
    modules = public_modules()
    out = DOCS / "api"
    packages = {m for m in modules if hasattr(importlib.import_module(m), "__path__")}
    lines = [
        _title("API reference"),
        "Generated from the docstrings: one page per module (a new module appears here "
        "without editing the docs). Packages re-export the public names of their modules, "
        "e.g. ``pyro_compare.models.ContrastiveVAE`` is documented under "
        "``pyro_compare.models.contrastive``.\n",
        ".. toctree::\n   :maxdepth: 1\n",
    ]
    lines += [f"   {m}" for m in modules]
    _write(out / "index.rst", "\n".join(lines) + "\n")
    for m in modules:
        if m in packages:
            children = [c for c in modules if c.rsplit(".", 1)[0] == m]
            body = f".. automodule:: {m}\n"
            if children:
                body += "\nModules: " + ", ".join(f":doc:`{c}`" for c in children) + "\n"
        else:
            body = f".. automodule:: {m}\n   :members:\n   :show-inheritance:\n"
        _write(out / f"{m}.rst", _title(f"``{m}``") + "\n" + body)


# ---------------------------------------------------------------------------- tutorials
# Comment lines that only steer the tests (which real dataset a tutorial reads) stay out of
# the rendered pages.
DATA_LINE = re.compile(r"^# pyro-compare-data:\s*(\S+)\s*$", re.MULTILINE)


# A hidden first cell of every docs notebook (the "remove-cell" tag keeps it off the page).
# * pyro_compare.plotting calls matplotlib.use("Agg") on import, which replaces the kernel's
#   inline backend: plt.show() would then produce no figure. Importing the package first
#   and restoring the inline backend (``%matplotlib inline``: the backend and IPython's
#   figure formatters) keeps the figures; a no-op once the import leaves the backend alone.
# * tqdm.auto warns "IProgress not found" (no ipywidgets) on import, into the first cell.
SETUP_CELL = """\
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import tqdm.auto  # noqa: F401

import pyro_compare  # noqa: F401

%matplotlib inline
"""


def tutorial_scripts() -> list[Path]:
    """The tutorials, ``tutorials/[0-9]*.py`` (jupytext percent scripts), sorted."""
    return sorted(TUTORIALS.glob("[0-9]*.py"))


def missing_data(path: Path) -> list[Path]:
    """Dataset files that a tutorial declares (``# pyro-compare-data: <file>``) but that are
    not in the data folder (``PYRO_COMPARE_DATA_DIR``)."""
    from pyro_compare.data import data_dir

    folder = data_dir()
    return [
        folder / name
        for name in DATA_LINE.findall(path.read_text())
        if not (folder / name).exists()
    ]


def tutorial_notebook(path: Path, execute: bool = True) -> str:
    """The notebook (JSON) of one tutorial script, as the docs render and execute it."""
    import jupytext
    import nbformat

    nb = jupytext.read(path, fmt="py:percent")
    nb.cells = [c for c in nb.cells if c.source.strip()]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = DATA_LINE.sub("", cell.source).strip("\n")
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP_CELL, metadata={"tags": ["remove-cell"]}))
    if not execute:
        how = "shown without outputs (execution is off: `PYRO_COMPARE_DOCS_EXECUTE=0`)"
    elif missing_data(path):
        how = "shown without outputs: its dataset was not found when the docs were built"
    else:
        fast = os.environ.get("PYRO_COMPARE_FAST", "0") == "1"
        how = f"executed in {'fast' if fast else 'full'} mode when the docs were built"
        if fast:
            how += " (subsampled cells, few epochs: the numbers are not the converged ones)"
    nb.cells.append(
        nbformat.v4.new_markdown_cell(
            f"```{{note}}\nThis page is generated from `tutorials/{path.name}`, {how}. Run "
            f"it with `python tutorials/{path.name}` (add `PYRO_COMPARE_FAST=1` for a quick "
            f"run) or open it as a notebook with jupytext.\n```"
        )
    )
    # Fixed cell ids (nbformat draws random ones): an unchanged tutorial gives an unchanged
    # file, which Sphinx does not read again.
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"
    # The executed outputs live in the jupyter-cache, keyed by the code cells: a notebook
    # whose code did not change is not executed again.
    nb.metadata.pop("jupytext", None)
    return nbformat.writes(nb) + "\n"


def write_tutorial_pages(app) -> None:
    out = DOCS / "tutorials"
    pages = {out / f"{path.stem}.ipynb": path for path in tutorial_scripts()}
    # Pages of an older layout or of a removed tutorial would be built (or clash) otherwise.
    if out.exists():
        for stale in sorted(out.iterdir()):
            if stale not in pages:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    execute = app.config.nb_execution_mode != "off"
    for page, path in pages.items():
        _write(page, tutorial_notebook(path, execute))


def generate(app) -> None:
    write_api_pages()
    write_tutorial_pages(app)


def exclude_tutorials_without_data(app, config) -> None:
    """Render a tutorial whose dataset is missing as code only (logged), not as a failure."""
    if config.nb_execution_mode == "off":
        return
    for path in tutorial_scripts():
        missing = missing_data(path)
        if missing:
            logger.info(
                "[pc_docs] tutorials/%s is not executed: %s not found (set PYRO_COMPARE_DATA_DIR)",
                path.name,
                ", ".join(map(str, missing)),
            )
            config.nb_execution_excludepatterns = [
                *config.nb_execution_excludepatterns,
                f"tutorials/{path.stem}.ipynb",
            ]


def setup(app):
    app.connect("config-inited", exclude_tutorials_without_data)
    app.connect("builder-inited", generate)
    return {"version": "0.1", "parallel_read_safe": True}
