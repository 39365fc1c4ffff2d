"""Sphinx configuration of the pyro_compare documentation.

Build with ``make docs`` (``sphinx -W``: warnings are errors). API pages and tutorial
notebooks are generated at build time by ``_ext/pc_docs.py``. myst-nb executes the tutorials
and renders their outputs and figures:

* fast mode (``PYRO_COMPARE_FAST=1``, the default here; ``make docs-full`` sets ``0`` for the
  full runs);
* cached with jupyter-cache (``docs/_build/.jupyter_cache-fast`` or ``-full``, or
  ``PYRO_COMPARE_DOCS_CACHE``): a rebuild executes only the notebooks whose code changed.
  The cache is keyed by the code cells, not by the package: after a change to
  ``pyro_compare`` that changes the outputs, ``make docs-refresh`` (or deleting the cache)
  executes them again;
* a cell error fails the build with the cell's traceback (``nb_execution_raise_on_error``);
* ``PYRO_COMPARE_DOCS_EXECUTE=0`` renders code only (quick builds while editing API docs).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The notebook kernels inherit this environment.
os.environ.setdefault("PYRO_COMPARE_FAST", "1")
os.environ.setdefault("PYRO_COMPARE_THREADS", "1")
# No progress bars on the pages: without ipywidgets, tqdm.auto prints every update as text.
os.environ.setdefault("TQDM_DISABLE", "1")
# ipykernel picks its inline backend (plt.show() -> an image output) only when MPLBACKEND
# is unset; a headless "Agg" from the caller would leave the pages without figures.
os.environ.pop("MPLBACKEND", None)

import pyro_compare  # noqa: E402

project = "pyro_compare"
author = "pyro_compare developers"
copyright = "pyro_compare developers"
release = version = pyro_compare.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "pc_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]
root_doc = "index"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Tutorials (myst-nb): see the module docstring.
EXECUTE = os.environ.get("PYRO_COMPARE_DOCS_EXECUTE", "1") == "1"
FAST = os.environ["PYRO_COMPARE_FAST"] == "1"
nb_execution_mode = "cache" if EXECUTE else "off"
nb_execution_cache_path = os.environ.get("PYRO_COMPARE_DOCS_CACHE") or str(
    DOCS / "_build" / (".jupyter_cache-fast" if FAST else ".jupyter_cache-full")
)
nb_execution_timeout = 3600  # seconds per cell: the full-mode fits are long
nb_execution_in_temp = True
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"undoc-members": False}
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# "Attributes" sections as :ivar: fields: no duplicates with the dataclass fields autodoc lists.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = "pyro_compare"
html_theme_options = {"description": "Comparative deep generative models in Pyro"}
