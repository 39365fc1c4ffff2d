"""AnnData -> tensors, validation, and simulators with ground truth."""

from .comparative import SOURCES, ComparativeData, build_design
from .simulate import simulate_contrastive, simulate_mixture
from .validation import DataValidationError

__all__ = [
    "SOURCES",
    "ComparativeData",
    "DataValidationError",
    "build_design",
    "simulate_contrastive",
    "simulate_mixture",
]
