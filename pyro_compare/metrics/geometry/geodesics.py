r"""Geodesics: shortest latent curves between many pairs of points, optimised as one batch.

:func:`geodesic` minimises the discrete curve energy of
:mod:`~pyro_compare.metrics.geometry.curves` over curves written as the straight line
plus a spline offset, for ``P`` pairs at once, with the per-pair optimisers of
:mod:`~pyro_compare.metrics.geometry.optim`. :func:`pairwise_distances` and
:func:`distance_matrix` turn the lengths of these curves into distances (or give the
Euclidean latent distances for comparison).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._inputs import Decoder, as_latents, reference_tensor, resolve_decoder
from .curves import offset_basis
from .metric import MetricKind, embedding
from .optim import BatchedAdam, BatchedLBFGS

__all__ = ["DistanceKind", "GeodesicResult", "distance_matrix", "geodesic", "pairwise_distances"]

#: ``"geodesic"``: length of the optimised curve; ``"euclidean"``: latent distance.
DistanceKind = Literal["geodesic", "euclidean"]


@dataclass
class GeodesicResult:
    """Output of :func:`geodesic` (all tensors detached).

    Attributes
    ----------
    length
        ``(P,)`` discrete length :math:`\\sum_i \\lVert e(c_{i+1}) - e(c_i)\\rVert`.
    energy
        ``(P,)`` discrete energy :math:`(N-1)\\sum_i \\lVert e(c_{i+1}) - e(c_i)\\rVert^2`.
    curve
        ``(P, n_points, d)`` optimised latent curves (endpoints included).
    converged
        ``(P,)`` bool: the pair met the stopping rule before ``max_iter``.
    energy_trace
        Total energy (sum over pairs) of the accepted curves after each
        iteration; non-increasing.
    n_iter
        ``(P,)`` number of energy evaluations spent on each pair.
    """

    length: Tensor
    energy: Tensor
    curve: Tensor
    converged: Tensor
    energy_trace: list[float] = field(default_factory=list)
    n_iter: Tensor | None = None


def geodesic(
    decoder: Decoder,
    z_a: Tensor,
    z_b: Tensor,
    n_points: int = 16,
    method: Literal["spline", "points"] = "spline",
    max_iter: int = 300,
    lr: float = 0.5,
    tol: float = 1e-4,
    metric: MetricKind = "euclidean",
    *,
    theta: Tensor | float | None = None,
    n_nodes: int = 6,
    patience: int = 5,
    optimizer: Literal["lbfgs", "adam"] = "lbfgs",
) -> GeodesicResult:
    r"""Shortest latent curves between ``P`` pairs of points, optimised together.

    Each curve is sampled at ``N = n_points`` equally spaced times
    :math:`t_i = i/(N-1)` and written as the straight line plus an offset that
    vanishes at both endpoints,

    .. math::

        c_i = (1 - t_i)\, z_a + t_i\, z_b + \delta_i, \qquad \delta_0 = \delta_{N-1} = 0,

    with ``method="points"``: every interior :math:`\delta_i` free; or
    ``method="spline"``: :math:`\delta(t)` a cubic spline (not-a-knot) through
    ``n_nodes`` equally spaced interior control nodes and zero at the
    endpoints, :math:`\delta_i = \sum_k B_{ik} w_k` (fewer parameters, smooth
    curves). Starting from the straight line, it minimises the discrete energy

    .. math::

        E(c) = (N-1) \sum_{i=0}^{N-2} \lVert e(c_{i+1}) - e(c_i) \rVert^2,

    where :math:`e` is the decoder mean for ``metric="euclidean"``. For the
    Fisher--Rao metrics (see :func:`~pyro_compare.metrics.geometry.metric.pullback_metric`)
    :math:`e` is an exact isometric embedding of the information geometry, applied
    gene-wise to the mean (:func:`~pyro_compare.metrics.geometry.metric.fisher_embedding`),
    so no Jacobians are needed: the diagonal Fisher metric
    :math:`\sum_g w_g(\mu_g)\, d\mu_g^2` equals :math:`\sum_g d\phi(\mu_g)^2` for
    :math:`\phi' = \sqrt{w}`, i.e. :math:`\phi(\mu) = 2\sqrt{\mu}` (Poisson) and
    :math:`\phi(\mu) = 2\sqrt{\theta}\operatorname{arsinh}\sqrt{\mu/\theta}` (NB).

    All pairs are optimised in one batched tensor, one energy-and-gradient
    evaluation of all active pairs per iteration, with an optimiser written
    out here so that every pair keeps its own state (``torch.optim`` would
    couple the pairs through a shared line search): a pair's trajectory
    depends only on its own energy, so a batch gives the same curves as one
    pair at a time. ``optimizer="lbfgs"`` (default): L-BFGS with per-pair
    history and a backtracking Armijo line search; ``"adam"``: Adam whose
    rejected (energy-increasing) steps are halved and retried. Either way
    the accepted energy of a pair never increases, and the first step moves
    the curve by about ``lr`` times the node spacing (proportional to
    :math:`\lVert z_b - z_a\rVert`, so rescaling the latent space rescales the
    whole optimisation). A pair stops (``converged``) after ``patience``
    consecutive accepted iterations whose relative energy decrease is below
    ``tol``, or once its trial step has been halved 20 times; stopped pairs
    drop out of the batch, so late iterations only pay for the pairs still
    moving.

    The returned ``length`` is that of the optimised discrete curve, so
    incomplete optimisation can only over-estimate the distance; the
    discretisation (chords between decoded points) under-estimates the length
    of a curved image by a relative :math:`O(N^{-2})`. Use more ``n_points``
    when the decoder bends strongly between neighbouring points.

    Parameters
    ----------
    decoder
        Decoder callable ``z_nd -> mu_ng`` or object with ``decoder_mean``.
    z_a, z_b
        ``(P, d)`` start and end points (``(d,)`` for one pair).
    n_points
        Points per curve including both endpoints (``>= 2``).
    method
        ``"spline"`` or ``"points"`` (see above).
    max_iter
        Maximum number of energy/gradient evaluations per pair.
    lr
        Initial step size in units of the spacing of the free nodes along the
        line, :math:`\lVert z_b - z_a\rVert / (K + 1)` with ``K`` the number of
        free nodes (``n_nodes`` or ``n_points - 2``).
    tol
        Relative energy decrease below which an iteration counts as stalled.
    metric
        ``"euclidean"``, ``"fisher_poisson"`` or ``"fisher_nb"``.
    theta
        NB inverse dispersion (scalar or ``(G,)``) for ``"fisher_nb"``.
    n_nodes
        Interior control nodes of the spline.
    patience
        Stalled iterations in a row before a pair counts as converged.
    optimizer
        ``"lbfgs"`` or ``"adam"``.

    Returns
    -------
    GeodesicResult
        Lengths, energies, curves, convergence flags, energy trace.
    """
    if n_points < 2:
        raise ValueError(f"`n_points` must be >= 2; got {n_points}.")
    embed = embedding(decoder, metric, theta)
    fn = resolve_decoder(decoder)
    ref = reference_tensor(fn)
    single = np.ndim(z_a) == 1
    za_pd = as_latents(z_a, ref, "z_a", one_d="point")
    zb_pd = as_latents(z_b, ref, "z_b", one_d="point")
    if za_pd.shape != zb_pd.shape:
        raise ValueError(f"`z_a` {tuple(za_pd.shape)} and `z_b` {tuple(zb_pd.shape)} differ.")
    P, d = za_pd.shape
    N = n_points
    dtype, device = za_pd.dtype, za_pd.device

    t_n = torch.linspace(0.0, 1.0, N, dtype=dtype, device=device)
    basis_nk = offset_basis(method, N, n_nodes, dtype, device) if N > 2 else None
    n_par = N - 2 if basis_nk is None else basis_nk.shape[1]

    with torch.no_grad():
        ea_pg = embed(za_pd)
        eb_pg = embed(zb_pd)

    def interior(idx: Tensor, w_pkd: Tensor) -> Tensor:
        za, zb = za_pd[idx], zb_pd[idx]
        t = t_n[1:-1][None, :, None]
        line = za[:, None, :] + t * (zb - za)[:, None, :]
        if basis_nk is None:
            return line + w_pkd
        return line + torch.einsum("nk,pkd->pnd", basis_nk, w_pkd)

    def energy_and_grad(idx: Tensor, w_pD: Tensor) -> tuple[Tensor, Tensor]:
        r"""Energy ``(Pa,)`` and its gradient w.r.t. the parameters ``(Pa, D)``.

        The gradient w.r.t. the embedded points is written out,
        :math:`\partial E/\partial e_i = 2(N-1)(2e_i - e_{i-1} - e_{i+1})`, and pushed
        through the decoder with one vector-Jacobian product: this saves the
        large temporaries that autograd of the concatenation and slicing of
        ``(Pa, N, G)`` tensors would create.
        """
        w_pD = w_pD.detach().requires_grad_(True)
        with torch.enable_grad():
            c_int = interior(idx, w_pD.view(-1, n_par, d))
            e_int = embed(c_int.reshape(-1, d)).reshape(idx.numel(), N - 2, -1)
        with torch.no_grad():
            seg = torch.diff(e_int, dim=1, prepend=ea_pg[idx][:, None], append=eb_pg[idx][:, None])
            e_p = (N - 1) * seg.pow(2).sum((1, 2))
            grad_e = seg[:, :-1] - seg[:, 1:]
            grad_e.mul_(2 * (N - 1))
        (g_pD,) = torch.autograd.grad(e_int, w_pD, grad_outputs=grad_e)
        return e_p, g_pD

    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose 'lbfgs' or 'adam'.")
    D = n_par * d
    # Initial step length: `lr` times the spacing of the free nodes along the line.
    lr_p = lr * (zb_pd - za_pd).norm(dim=1) / (n_par + 1)
    opt_cls = BatchedLBFGS if optimizer == "lbfgs" else BatchedAdam
    opt = opt_cls(P, D, lr_p, dtype=dtype, device=device)
    stall = torch.zeros(P, dtype=torch.long, device=device)
    converged = torch.zeros(P, dtype=torch.bool, device=device)
    n_iter = torch.zeros(P, dtype=torch.long, device=device)
    trace: list[float] = []
    if D == 0 or P == 0:
        max_iter = 0
        converged[:] = True

    for _ in range(max_iter):
        idx = (~converged).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        w_a = opt.trial[idx]
        e_a, g_a = energy_and_grad(idx, w_a)
        n_iter[idx] += 1

        prev = opt.e_acc[idx]
        accept = opt.acceptable(idx, e_a)
        finite_prev = torch.where(torch.isfinite(prev), prev, torch.zeros_like(prev))
        progress = accept & (~torch.isfinite(prev) | (finite_prev - e_a > tol * finite_prev))
        # Stalled: an accepted step that barely lowered the energy. Rejected trials are
        # retried with half the step; a pair whose step shrank 2^20-fold also stops.
        stall[idx] = torch.where(progress, torch.zeros_like(stall[idx]), stall[idx] + accept.long())
        if accept.any():
            opt.accept(idx[accept], w_a[accept], e_a[accept], g_a[accept])
        if (~accept).any():
            opt.reject(idx[~accept])
        converged[idx] = (stall[idx] >= patience) | opt.exhausted(idx)
        trace.append(float(opt.e_acc.sum()))
    w_acc = opt.w_acc.view(P, n_par, d)

    with torch.no_grad():
        all_idx = torch.arange(P, device=device)
        parts = [za_pd[:, None]]
        if N > 2:
            parts.append(interior(all_idx, w_acc))
        parts.append(zb_pd[:, None])
        curve_pnd = torch.cat(parts, dim=1)
        if N > 2:
            e_int = embed(curve_pnd[:, 1:-1].reshape(-1, d)).reshape(P, N - 2, -1)
            e_png = torch.cat([ea_pg[:, None], e_int, eb_pg[:, None]], dim=1)
        else:
            e_png = torch.stack([ea_pg, eb_pg], dim=1)
        d_png = e_png[:, 1:] - e_png[:, :-1]
        length_p = d_png.norm(dim=-1).sum(-1)
        energy_p = (N - 1) * d_png.pow(2).sum((1, 2))

    if single:
        return GeodesicResult(
            length_p[0], energy_p[0], curve_pnd[0], converged[0], trace, n_iter[0]
        )
    return GeodesicResult(length_p, energy_p, curve_pnd, converged, trace, n_iter)


def pairwise_distances(
    decoder: Decoder | None,
    z_a: Tensor,
    z_b: Tensor,
    kind: DistanceKind = "geodesic",
    *,
    batch_size: int | None = 256,
    **geodesic_kwargs: Any,
) -> Tensor:
    r"""Distances for ``P`` explicit pairs ``(z_a[p], z_b[p])``.

    Parameters
    ----------
    decoder
        Decoder callable or object with ``decoder_mean`` (unused, may be
        ``None``, for ``kind="euclidean"``).
    z_a, z_b
        ``(P, d)`` latent points.
    kind
        ``"geodesic"``: length of the curve from :func:`geodesic` (an upper
        bound on the true distance that the optimisation tightens);
        ``"euclidean"``: :math:`\lVert z_a - z_b\rVert` in latent space.
    batch_size
        Pairs per :func:`geodesic` call (memory: ``batch_size * n_points * G``
        floats per activation). ``None``: all at once. Results do not depend on it.
    **geodesic_kwargs
        Passed to :func:`geodesic` (``n_points``, ``method``, ``max_iter``,
        ``lr``, ``tol``, ``metric``, ``theta``, ...).

    Returns
    -------
    Tensor
        ``(P,)`` detached distances.
    """
    if kind == "euclidean":
        ref = None if decoder is None else reference_tensor(resolve_decoder(decoder))
        za_pd, zb_pd = as_latents(z_a, ref, "z_a"), as_latents(z_b, ref, "z_b")
        return (za_pd - zb_pd).norm(dim=1)
    if kind != "geodesic":
        raise ValueError(f"Unknown distance kind {kind!r}; choose 'geodesic' or 'euclidean'.")
    if decoder is None:
        raise ValueError("kind='geodesic' needs a decoder.")
    ref = reference_tensor(resolve_decoder(decoder))
    za_pd, zb_pd = as_latents(z_a, ref, "z_a"), as_latents(z_b, ref, "z_b")
    P = za_pd.shape[0]
    bs = P if batch_size is None else max(int(batch_size), 1)
    out = [
        geodesic(decoder, za_pd[s : s + bs], zb_pd[s : s + bs], **geodesic_kwargs).length
        for s in range(0, P, bs)
    ]
    return torch.cat(out) if out else za_pd.new_zeros(0)


def distance_matrix(
    decoder: Decoder | None,
    z: Tensor,
    kind: DistanceKind = "geodesic",
    **geodesic_kwargs: Any,
) -> Tensor:
    """All pairwise distances of ``n`` latent points, ``(n, n)`` symmetric, zero diagonal.

    ``kind="euclidean"`` is the latent-space Euclidean distance;
    ``kind="geodesic"`` runs :func:`pairwise_distances` on the
    :math:`n(n-1)/2` pairs ``i < j`` (batched; ``batch_size`` and the
    :func:`geodesic` options go in ``geodesic_kwargs``).
    """
    ref = None if decoder is None else reference_tensor(resolve_decoder(decoder))
    z_nd = as_latents(z, ref)
    n = z_nd.shape[0]
    if kind == "euclidean":
        return torch.cdist(z_nd, z_nd)
    i, j = torch.triu_indices(n, n, offset=1, device=z_nd.device)
    dist_p = pairwise_distances(decoder, z_nd[i], z_nd[j], kind, **geodesic_kwargs)
    D_nn = z_nd.new_zeros(n, n)
    D_nn[i, j] = dist_p.to(D_nn.dtype)
    D_nn[j, i] = dist_p.to(D_nn.dtype)
    return D_nn
