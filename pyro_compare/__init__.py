"""pyro_compare: comparative deep generative models in Pyro.

Compare data sources (a background condition against a target one, control cells
against perturbations) with shared and source-specific latent variables.
"""

import pyro

from . import data, infer, metrics, models, nn

# Parameters of PyroModules stay local to their module instead of the global param store,
# so several models (e.g. retrained seeds) never share parameters by name.
pyro.settings.set(module_local_params=True)

__version__ = "0.1.0"

__all__ = ["data", "infer", "metrics", "models", "nn", "__version__"]
