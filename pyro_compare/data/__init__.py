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

# Perturbation screens: sparse-shift simulator and held-out splits.
from .simulate import simulate_sparse_shift
from .splits import (
    apply_split,
    perturbation_labels,
    split_by_cell,
    split_by_combination,
    split_by_perturbation,
)

__all__ += [
    "apply_split",
    "perturbation_labels",
    "simulate_sparse_shift",
    "split_by_cell",
    "split_by_combination",
    "split_by_perturbation",
]
