"""pyro_compare: comparative deep generative models in Pyro.

Compare data sources (a background condition against a target one, control cells
against perturbations) with shared and source-specific latent variables.
"""

from . import data, infer, metrics, models, nn, plotting, tl, tools

#: scanpy-style alias: ``pc.pl`` (figures), next to the ``pc.tl`` package (fit / annotate
#: AnnData; ``pc.tools`` is its former name). Importing the package loads neither
#: matplotlib nor scanpy: the plotting functions import them when they draw.
pl = plotting

__version__ = "0.1.0"

__all__ = [
    "data",
    "infer",
    "metrics",
    "models",
    "nn",
    "pl",
    "plotting",
    "tl",
    "tools",
    "__version__",
]
