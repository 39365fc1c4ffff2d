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
