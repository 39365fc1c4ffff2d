"""Evaluation: identifiability (MCC, affine / block R2), geometry, perturbation metrics."""

from .identifiability import (
    affine_r2,
    block_r2,
    knn_accuracy,
    knn_accuracy_within,
    mcc,
    mcc_matching,
)

__all__ = [
    "affine_r2",
    "block_r2",
    "knn_accuracy",
    "knn_accuracy_within",
    "mcc",
    "mcc_matching",
]
