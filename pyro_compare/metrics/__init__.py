"""Evaluation: identifiability (MCC, affine / block R2), geometry, perturbation metrics."""

from typing import Any

from .geometry import (
    DistanceStability,
    GeodesicResult,
    curve_energy,
    curve_length,
    distance_matrix,
    distance_stability,
    fisher_embedding,
    geodesic,
    pairwise_distances,
    pullback_metric,
)
from .identifiability import (
    affine_r2,
    block_r2,
    knn_accuracy,
    knn_accuracy_within,
    mcc,
    mcc_matching,
)

# Perturbation models: IWELBO, ATE agreement, mask recovery, posterior predictive checks.
from .perturbation import (
    ate_agreement,
    average_treatment_effect,
    iwelbo,
    iwelbo_per_cell,
    log_normalize,
    mask_recovery,
    observed_average_treatment_effect,
    per_perturbation_loss,
    posterior_predictive_check,
    ppc_statistics,
    ppc_summary,
)

__all__ = [
    "affine_r2",
    "block_r2",
    "knn_accuracy",
    "knn_accuracy_within",
    "mcc",
    "mcc_matching",
]

__all__ += [
    "ate_agreement",
    "average_treatment_effect",
    "iwelbo",
    "iwelbo_per_cell",
    "log_normalize",
    "mask_recovery",
    "observed_average_treatment_effect",
    "per_perturbation_loss",
    "posterior_predictive_check",
    "ppc_statistics",
    "ppc_summary",
]

# Latent geometry: pullback metrics, geodesics, distance stability across retrainings.
__all__ += [
    "DistanceStability",
    "GeodesicResult",
    "LatentDecoder",
    "curve_energy",
    "curve_length",
    "distance_matrix",
    "distance_stability",
    "fisher_embedding",
    "geodesic",
    "latent_decoder",
    "pairwise_distances",
    "pullback_metric",
]


def __getattr__(name: str) -> Any:
    # LatentDecoder / latent_decoder live in pyro_compare.models.latent_decoder, which
    # imports pyro_compare.metrics.geometry: resolved on first access (no import cycle).
    if name in ("LatentDecoder", "latent_decoder"):
        from . import geometry

        return getattr(geometry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
