r"""Discrete latent curves: their length and energy in a decoder's geometry, and their
parametrisation as the straight line plus a spline offset.

A latent curve is sampled at ``N`` equally spaced times :math:`t_i = i/(N-1)`, giving
points :math:`c_0, \dots, c_{N-1}`; with :math:`e` the isometric embedding of the metric
(:func:`~pyro_compare.metrics.geometry.metric.fisher_embedding` of the decoder mean),

.. math::

    L(c) = \sum_{i=0}^{N-2} \lVert e(c_{i+1}) - e(c_i) \rVert, \qquad
    E(c) = (N-1) \sum_{i=0}^{N-2} \lVert e(c_{i+1}) - e(c_i) \rVert^2 .

By Cauchy--Schwarz :math:`L^2 \le E`, with equality iff all steps have the same length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._inputs import Decoder
from .metric import MetricKind, embedding

__all__ = ["curve_energy", "curve_length"]


def as_curves(curve: Tensor) -> tuple[Tensor, bool]:
    """``(P, n_points, d)`` curves, and whether the input was a single ``(n_points, d)`` one."""
    if curve.ndim == 2:
        return curve[None], True
    if curve.ndim != 3:
        raise ValueError(f"`curve` must have shape (P, n_points, d); got {tuple(curve.shape)}.")
    return curve, False


def segments(embed: Callable[[Tensor], Tensor], curve_pnd: Tensor) -> Tensor:
    """Embedded increments ``e(c_{i+1}) - e(c_i)``, shape ``(P, n_points - 1, G)``."""
    P, N, d = curve_pnd.shape
    e_png = embed(curve_pnd.reshape(P * N, d)).reshape(P, N, -1)
    return e_png[:, 1:] - e_png[:, :-1]


def curve_length(
    decoder: Decoder,
    curve: Tensor,
    *,
    metric: MetricKind = "euclidean",
    theta: Tensor | float | None = None,
) -> Tensor:
    r"""Discrete length of latent curves, :math:`L = \sum_i \lVert e(c_{i+1}) - e(c_i)\rVert`.

    Parameters
    ----------
    decoder
        Decoder callable or object with ``decoder_mean``.
    curve
        ``(P, n_points, d)`` curves (or a single ``(n_points, d)`` curve).
    metric, theta
        ``e`` is the decoder mean for ``"euclidean"``, or its isometric
        embedding for the Fisher metrics (:math:`2\sqrt{\mu}` for Poisson,
        :math:`2\sqrt{\theta}\operatorname{arsinh}\sqrt{\mu/\theta}` for NB); see
        :func:`~pyro_compare.metrics.geometry.metric.fisher_embedding`.

    Returns
    -------
    Tensor
        ``(P,)`` lengths (a scalar for a single curve).
    """
    curve_pnd, single = as_curves(curve)
    lengths_p = segments(embedding(decoder, metric, theta), curve_pnd).norm(dim=-1).sum(-1)
    return lengths_p[0] if single else lengths_p


def curve_energy(
    decoder: Decoder,
    curve: Tensor,
    *,
    metric: MetricKind = "euclidean",
    theta: Tensor | float | None = None,
) -> Tensor:
    r"""Discrete energy :math:`E = (N-1)\sum_i \lVert e(c_{i+1}) - e(c_i)\rVert^2`.

    For a curve sampled at ``N`` equally spaced times of :math:`[0, 1]` this is a
    Riemann sum of :math:`\int_0^1 \lVert \tfrac{d}{dt} e(c(t))\rVert^2 dt`. By
    Cauchy--Schwarz :math:`L^2 \le E`, with equality iff the steps have equal
    length (constant speed), so minimising :math:`E` gives a shortest curve
    traversed at constant speed. Same arguments and shapes as :func:`curve_length`.
    """
    curve_pnd, single = as_curves(curve)
    N = curve_pnd.shape[1]
    dE = segments(embedding(decoder, metric, theta), curve_pnd)
    energy_p = (N - 1) * dE.pow(2).sum((-1, -2))
    return energy_p[0] if single else energy_p


def offset_basis(
    method: str, n_points: int, n_nodes: int, dtype: torch.dtype, device: Any
) -> Tensor | None:
    r"""Basis ``B_nk`` of curve offsets at the interior grid points (``None`` for free points).

    A curve is the straight line plus an offset :math:`\delta(t)` that vanishes at both
    endpoints. ``method="points"``: every interior :math:`\delta_i` is free (``None``
    returned). ``method="spline"``: :math:`\delta` is the not-a-knot cubic spline
    through ``n_nodes`` equally spaced interior control nodes (and zero at the
    endpoints), so :math:`\delta_i = \sum_k B_{ik} w_k` with ``B`` of shape
    ``(n_points - 2, n_nodes)``: column ``k`` is the spline that is 1 at node ``k`` and
    0 at every other knot, evaluated at the interior times.
    """
    if method == "points":
        return None
    if method != "spline":
        raise ValueError(f"Unknown method {method!r}; choose 'spline' or 'points'.")
    if n_nodes < 1:
        raise ValueError(f"`n_nodes` must be >= 1; got {n_nodes}.")
    from scipy.interpolate import CubicSpline  # lazy: scipy.interpolate is slow to import

    knots = np.linspace(0.0, 1.0, n_nodes + 2)
    values = np.zeros((n_nodes + 2, n_nodes))
    values[1:-1] = np.eye(n_nodes)  # k-th basis function: 1 at interior knot k, 0 at others
    t_int = np.linspace(0.0, 1.0, n_points)[1:-1]
    basis = CubicSpline(knots, values, axis=0)(t_int)  # not-a-knot cubic spline
    return torch.as_tensor(basis, dtype=dtype, device=device)
