"""Build-time sources for the pyro_compare docs (a local Sphinx extension).

* ``api/``: one page per public module of ``pyro_compare`` (``automodule``), found by walking
  the package, so a new module appears without editing the docs.
* ``tutorials/``: the jupytext percent-format scripts of ``tutorials/`` converted to MyST
  markdown (markdown cells as text, code cells as code blocks). With
  ``PYRO_COMPARE_DOCS_EXECUTE=1`` each tutorial is executed (full mode unless
  ``PYRO_COMPARE_FAST=1``) and its printed output and figures are embedded after each cell.

Generated files live under ``docs/api`` and ``docs/tutorials`` (ignored by git) and are
rewritten only when their content changes, so incremental builds stay incremental.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pkgutil
import re
import tempfile
import traceback
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
TUTORIALS = REPO / "tutorials"


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
def _cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, source) pairs of a jupytext percent script, header dropped."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    return [(c.cell_type, c.source) for c in nb.cells if c.source.strip()]


def _execute(cells, path: Path, fig_dir: Path) -> list[tuple[str, list[str]]]:
    """Run the code cells in one namespace; per cell, its stdout and saved figure names."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    namespace = {"__name__": "__main__", "__file__": str(path)}
    results = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for i, (kind, source) in enumerate(cells):
                if kind != "code":
                    results.append(("", []))
                    continue
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                    try:
                        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
                    except Exception:
                        traceback.print_exc()
                        raise RuntimeError(
                            f"{path.name}, cell {i} failed:\n{buffer.getvalue()[-3000:]}"
                        ) from None
                figures = []
                for k, num in enumerate(plt.get_fignums()):
                    name = f"cell{i:02d}_{k}.png"
                    plt.figure(num).savefig(fig_dir / name, dpi=90, bbox_inches="tight")
                    figures.append(name)
                plt.close("all")
                results.append((buffer.getvalue(), figures))
        finally:
            os.chdir(cwd)
    return results


def tutorial_markdown(path: Path, execute: bool, fig_dir: Path) -> str:
    cells = _cells(path)
    outputs = _execute(cells, path, fig_dir) if execute else [("", [])] * len(cells)
    parts = []
    for (kind, source), (stdout, figures) in zip(cells, outputs):
        if kind == "markdown":
            parts.append(source)
            continue
        # Comment lines that only steer the test runner stay out of the rendered page.
        code = re.sub(r"^# pyro-compare-data:.*\n", "", source, flags=re.MULTILINE)
        parts.append(f"```python\n{code.rstrip()}\n```")
        if stdout.strip():
            parts.append(f"```text\n{stdout.rstrip()}\n```")
        for name in figures:
            parts.append(f"![]({fig_dir.name}/{name})")
    note = (
        f"\n\n```{{note}}\nThis page is generated from `tutorials/{path.name}`: run it with "
        f"`python tutorials/{path.name}` (add `PYRO_COMPARE_FAST=1` for a quick run) or open "
        f"it as a notebook with jupytext.\n```\n"
    )
    return "\n\n".join(parts) + note


def write_tutorial_pages() -> None:
    execute = os.environ.get("PYRO_COMPARE_DOCS_EXECUTE", "0") == "1"
    out = DOCS / "tutorials"
    for path in sorted(TUTORIALS.glob("[0-9]*.py")):
        fig_dir = out / f"{path.stem}_files"
        _write(out / f"{path.stem}.md", tutorial_markdown(path, execute, fig_dir))


def generate(app=None) -> None:
    write_api_pages()
    write_tutorial_pages()


def setup(app):
    app.connect("builder-inited", generate)
    return {"version": "0.1", "parallel_read_safe": True}
