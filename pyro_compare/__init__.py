"""pyro_compare: comparative deep generative models in Pyro.

Compare data sources (a background condition against a target one, control cells
against perturbations) with shared and source-specific latent variables.
"""

from . import data, infer, metrics, models, nn, plotting, tools

#: scanpy-style aliases: ``pc.tl`` (fit / annotate AnnData), ``pc.pl`` (figures).
tl = tools
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
