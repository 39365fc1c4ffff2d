"""Inference: per-source ELBO, objectives (sum / multi-objective / constrained), fit loop."""

from .elbo import GLOBAL, SourceTrace_ELBO, site_source
from .fit import TrainingDivergedError, evaluate_losses, fit
from .objectives import Objective, Sum

__all__ = [
    "GLOBAL",
    "Objective",
    "SourceTrace_ELBO",
    "Sum",
    "TrainingDivergedError",
    "evaluate_losses",
    "fit",
    "site_source",
]
