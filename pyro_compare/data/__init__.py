"""AnnData -> tensors, validation, held-out splits, simulators with ground truth, datasets."""

from .comparative import SOURCES, ComparativeData, ShardBatch, build_design
from .datasets import KANG2018, PAPALEXI2021, data_dir, dataset_path, papalexi2021
from .simulate import simulate_contrastive, simulate_mixture, simulate_sparse_shift
from .splits import (
    apply_split,
    perturbation_labels,
    split_by_cell,
    split_by_combination,
    split_by_perturbation,
)
from .validation import DataValidationError

__all__ = [
    "KANG2018",
    "PAPALEXI2021",
    "SOURCES",
    "ComparativeData",
    "DataValidationError",
    "ShardBatch",
    "apply_split",
    "build_design",
    "data_dir",
    "dataset_path",
    "papalexi2021",
    "perturbation_labels",
    "simulate_contrastive",
    "simulate_mixture",
    "simulate_sparse_shift",
    "split_by_cell",
    "split_by_combination",
    "split_by_perturbation",
]
