"""Comparative models: each a PyroModule with ``model()``, ``guide()`` and helpers."""

from .base import ComparativeModel, load_model
from .contrastive import ContrastiveVAE
from .mixture import MixturePriorVAE, single_source_data

__all__ = [
    "ComparativeModel",
    "ContrastiveVAE",
    "load_model",
    "MixturePriorVAE",
    "single_source_data",
]

# Perturbation models (control cells vs many perturbations).
from ..nn.distributions import StraightThroughBernoulli
from .baselines import AdditiveShiftVAE, ConditionalVAE
from .perturbation_base import PerturbationVAE
from .sams import SAMSVAE
from .sparse_shift import SparseShiftVAE

__all__ += [
    "AdditiveShiftVAE",
    "ConditionalVAE",
    "PerturbationVAE",
    "SAMSVAE",
    "SparseShiftVAE",
    "StraightThroughBernoulli",
]
