"""Sphinx configuration of the pyro_compare documentation.

Build with ``make docs`` (``sphinx -W``: warnings are errors). API pages and tutorial pages
are generated at build time by ``_ext/pc_docs.py``; set ``PYRO_COMPARE_DOCS_EXECUTE=1`` to
execute the tutorials and embed their outputs.
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
    "myst_parser",
    "pc_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**/*_files"]
root_doc = "index"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

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
