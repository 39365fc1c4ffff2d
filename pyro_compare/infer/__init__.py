"""Inference: per-source ELBO, objectives (sum / multi-objective / constrained), the fit
loop and its callbacks, data-parallel fitting on torch.distributed, and the poutine
handlers that tag sites by source."""

from . import distributed, penalties
from .callbacks import ATEAgreementMonitor, Callback, PerPerturbationLogger
from .distributed import reduce_mean
from .elbo import GLOBAL, SourceTerms, SourceTrace_ELBO, site_source
from .fit import (
    FIT_DEFAULTS,
    SELECT,
    ConstraintWarning,
    TrainingDivergedError,
    evaluate_losses,
    fit,
)
from .handlers import SourceMessenger, source_plate
from .objectives import Constrained, MultiObjective, Objective, Sum, min_norm_weights

__all__ = [
    "FIT_DEFAULTS",
    "GLOBAL",
    "SELECT",
    "ATEAgreementMonitor",
    "Callback",
    "Constrained",
    "MultiObjective",
    "Objective",
    "PerPerturbationLogger",
    "SourceMessenger",
    "SourceTerms",
    "SourceTrace_ELBO",
    "Sum",
    "ConstraintWarning",
    "TrainingDivergedError",
    "evaluate_losses",
    "fit",
    "min_norm_weights",
    "distributed",
    "penalties",
    "reduce_mean",
    "site_source",
    "source_plate",
]
