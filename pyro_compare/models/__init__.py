"""Comparative models: each a PyroModule with ``model()``, ``guide()`` and helpers."""

from .base import ComparativeModel, load_model
from .contrastive import ContrastiveVAE

__all__ = ["ComparativeModel", "ContrastiveVAE", "load_model"]
