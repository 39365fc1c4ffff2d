"""Neural building blocks: ReLU MLPs (piecewise affine), encoders, observation decoders."""

from .decoders import COUNT_LIKELIHOODS, LIKELIHOODS, ObservationDecoder
from .distributions import SparseNegativeBinomial, nb_log_prob
from .encoders import GaussianEncoder
from .mlp import MLP

__all__ = [
    "COUNT_LIKELIHOODS",
    "LIKELIHOODS",
    "MLP",
    "GaussianEncoder",
    "ObservationDecoder",
    "SparseNegativeBinomial",
    "nb_log_prob",
]
