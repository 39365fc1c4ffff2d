"""Inference: per-source ELBO, objectives (sum / multi-objective / constrained), fit loop."""

from . import penalties
from .elbo import GLOBAL, SourceTrace_ELBO, site_source
from .fit import TrainingDivergedError, evaluate_losses, fit
from .objectives import Constrained, MultiObjective, Objective, Sum, min_norm_weights

__all__ = [
    "GLOBAL",
    "Constrained",
    "MultiObjective",
    "Objective",
    "SourceTrace_ELBO",
    "Sum",
    "TrainingDivergedError",
    "evaluate_losses",
    "fit",
    "min_norm_weights",
    "penalties",
    "site_source",
]
