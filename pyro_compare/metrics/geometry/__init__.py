r"""Latent geometry of a decoder: pullback metrics, geodesics, distance stability.

A decoder :math:`f: \mathbb{R}^d \to \mathbb{R}^G` (latent code to the mean of
the observation model) turns the latent space into a Riemannian manifold: the
length of a latent curve :math:`c(t)` is the length of its image,

.. math::

    L(c) = \int_0^1 \lVert \tfrac{d}{dt} f(c(t)) \rVert \, dt
         = \int_0^1 \sqrt{\dot c(t)^\top G(c(t))\, \dot c(t)}\, dt,
    \qquad G(z) = J_f(z)^\top J_f(z),

and the distance between two latent points is the length of the shortest
(geodesic) curve joining them. Syrota et al. (2025) show that these distances
(unlike Euclidean distances between latent codes) are *identifiable*: two
models with the same decoded distribution, whose latent spaces differ by any
smooth invertible reparametrisation :math:`h`, have the same geodesic
distances, because :math:`f_2 = f_1 \circ h^{-1}` maps the curve :math:`h\circ c`
onto the same image as :math:`f_1` maps :math:`c`. So geodesic distances should
be stable across retrainings with different seeds, Euclidean ones need not be.

Contents
--------
One idea per module; every public name is re-exported here and in
:mod:`pyro_compare.metrics`.

* :mod:`~pyro_compare.metrics.geometry.metric` -- :func:`pullback_metric`, :math:`G(z)`
  for the Euclidean metric of the decoder mean or the Fisher--Rao metric of a Poisson /
  negative-binomial observation model (Jacobians by ``torch.func``), and
  :func:`fisher_embedding`, the isometric embedding of these metrics.
* :mod:`~pyro_compare.metrics.geometry.curves` -- :func:`curve_length`,
  :func:`curve_energy` of discrete curves; the spline parametrisation of curves.
* :mod:`~pyro_compare.metrics.geometry.optim` -- batched Adam / L-BFGS with one
  independent state per pair of endpoints.
* :mod:`~pyro_compare.metrics.geometry.geodesics` -- :func:`geodesic` (batched
  minimisation of the discrete curve energy for many pairs at once; returns a
  :class:`GeodesicResult`), :func:`pairwise_distances`, :func:`distance_matrix`.
* :mod:`~pyro_compare.metrics.geometry.stability` -- :func:`distance_stability`:
  coefficient of variation of (normalised) pairwise distances across retrained
  models, geodesic vs Euclidean, with a one-sided Wilcoxon signed-rank test.
* :func:`latent_decoder` / :class:`LatentDecoder` (defined in
  :mod:`pyro_compare.models.latent_decoder`) -- the decoder of a fitted package model
  restricted to one latent block (the background decoder :math:`z \mapsto \mu([z, 0])`
  of a :class:`~pyro_compare.models.ContrastiveVAE`, its salient decoder, a
  perturbation model's decoder under a given design).

Decoders
--------
Every function takes ``decoder``: any callable mapping a latent batch ``z_nd``
(a tensor of shape ``(n, d)``) to the observation-space mean ``mu_ng`` of shape
``(n, G)`` (trailing dimensions are flattened), or any object with a
``decoder_mean(z)`` method (duck typing: ``getattr(obj, "decoder_mean", obj)``).
Rows must be decoded independently of each other (no batch statistics: put
modules in ``eval()`` mode, no dropout). For count models the decoder may
return the mean counts :math:`\mu = l\,\rho` at a chosen library size
:math:`l`, or the gene proportions :math:`\rho` (softmax output). For the
Euclidean metric the two differ by the constant factor :math:`l` in all
lengths; for the Poisson Fisher metric by :math:`\sqrt{l}`; for the NB Fisher
metric the library size changes the geometry, so pass the mean at the library
size of interest (e.g. ``lambda z: 2000 * model.decoder_mean(z)``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .curves import curve_energy, curve_length
from .geodesics import GeodesicResult, distance_matrix, geodesic, pairwise_distances
from .metric import fisher_embedding, pullback_metric
from .stability import DistanceStability, distance_stability

__all__ = [
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

# The model adapters live with the models; imported on first access, so that
# pyro_compare.models.latent_decoder (which imports this package's metric module) can be
# imported first, from either side, without a circular import.
_MODEL_ADAPTERS = ("LatentDecoder", "latent_decoder")


def __getattr__(name: str) -> Any:
    if name in _MODEL_ADAPTERS:
        # import_module, not `from ...models import latent_decoder`: the package may
        # re-export the function under the module's name.
        module = importlib.import_module("pyro_compare.models.latent_decoder")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
