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
* :func:`pullback_metric` -- :math:`G(z)` for the Euclidean metric of the
  decoder mean, or the Fisher--Rao metric of a Poisson / negative-binomial
  observation model.
* :func:`geodesic` -- batched minimisation of the discrete curve energy for
  many pairs of endpoints at once; returns a :class:`GeodesicResult`.
* :func:`curve_length`, :func:`curve_energy` -- discrete length / energy.
* :func:`pairwise_distances`, :func:`distance_matrix` -- geodesic or
  Euclidean distances for explicit pairs / all pairs of a point set.
* :func:`distance_stability` -- coefficient of variation of (normalised)
  pairwise distances across retrained models, geodesic vs Euclidean, with a
  one-sided Wilcoxon signed-rank test.
* :func:`latent_decoder` -- the decoder of a fitted package model restricted to
  one latent block (the background decoder :math:`z \mapsto \mu([z, 0])` of a
  :class:`~pyro_compare.models.ContrastiveVAE`, its salient decoder, a
  perturbation model's decoder under a given design), as a :class:`LatentDecoder`.

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

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.stats import wilcoxon
from torch import Tensor

__all__ = [
    "DistanceStability",
    "GeodesicResult",
    "LatentDecoder",
    "curve_energy",
    "curve_length",
    "distance_matrix",
    "distance_stability",
    "geodesic",
    "latent_decoder",
    "pairwise_distances",
    "pullback_metric",
]

MetricKind = Literal["euclidean", "fisher_poisson", "fisher_nb"]
DistanceKind = Literal["geodesic", "euclidean"]
Decoder = Callable[[Tensor], Tensor] | Any

_METRIC_KINDS = ("euclidean", "fisher_poisson", "fisher_nb")
_STOCHASTIC_LAYERS = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)


# --------------------------------------------------------------------------- helpers


def _resolve_decoder(decoder: Decoder) -> Callable[[Tensor], Tensor]:
    """Return the callable ``z_nd -> mu_ng`` (``decoder.decoder_mean`` if it exists)."""
    fn = getattr(decoder, "decoder_mean", decoder)
    if not callable(fn):
        raise TypeError(
            "`decoder` must be a callable z_nd -> mu_ng or an object with a "
            f"`decoder_mean(z)` method; got {type(decoder).__name__}."
        )
    module = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(module, torch.nn.Module) and any(
        m.training and isinstance(m, _STOCHASTIC_LAYERS) for m in module.modules()
    ):
        warnings.warn(
            "The decoder has dropout / batch-norm layers in training mode, which make the "
            "geometry random and couple the rows of a batch; call `.eval()` first.",
            stacklevel=3,
        )
    return fn


def _flat_decode(fn: Callable[[Tensor], Tensor], z_nd: Tensor) -> Tensor:
    """Decode and flatten trailing output dimensions: ``(n, d) -> (n, G)``."""
    out = fn(z_nd)
    if not isinstance(out, Tensor):
        raise TypeError(f"The decoder must return a tensor; got {type(out).__name__}.")
    if out.shape[0] != z_nd.shape[0]:
        raise ValueError(
            f"The decoder returned {out.shape[0]} rows for {z_nd.shape[0]} latent points; it "
            "must map a batch (n, d) to (n, ...)."
        )
    return out.reshape(z_nd.shape[0], -1)


def _reference_tensor(fn: Any) -> Tensor | None:
    """A parameter of the decoder (for its dtype / device), if there is one."""
    for obj in (fn, getattr(fn, "__self__", None)):
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                return p
    return None


def _as_tensor(
    z: Any, like: Tensor | None = None, name: str = "z", one_d: str = "column", detach: bool = True
) -> Tensor:
    """Convert latents to a floating ``(n, d)`` tensor (dtype/device of ``like`` for non-tensors).

    A 1-D input is a column of ``n`` one-dimensional latents (``one_d="column"``)
    or a single ``d``-dimensional point (``one_d="point"``).
    """
    if isinstance(z, Tensor):
        z_t = z.detach() if detach else z
        if not z_t.is_floating_point():
            z_t = z_t.to(torch.get_default_dtype() if like is None else like.dtype)
    else:
        z_arr = np.asarray(z)
        if like is not None:
            dtype, device = like.dtype, like.device
        elif z_arr.dtype in (np.float32, np.float64):
            dtype, device = (torch.float32 if z_arr.dtype == np.float32 else torch.float64), None
        else:
            dtype, device = torch.get_default_dtype(), None
        z_t = torch.as_tensor(z_arr, dtype=dtype, device=device)
    if z_t.ndim == 1:
        z_t = z_t[None, :] if one_d == "point" else z_t[:, None]
    if z_t.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, d); got {tuple(z_t.shape)}.")
    return z_t


def _check_kind(kind: str) -> None:
    if kind not in _METRIC_KINDS:
        raise ValueError(f"Unknown metric kind {kind!r}; choose one of {_METRIC_KINDS}.")


def _fisher_weights(mu_ng: Tensor, kind: str, theta: Tensor | float | None, eps: float) -> Tensor:
    r"""Diagonal Fisher information of the mean, :math:`w_g(\mu_g)`."""
    mu_ng = mu_ng.clamp_min(eps)
    if kind == "fisher_poisson":
        return 1.0 / mu_ng
    theta_t = _theta_tensor(theta, mu_ng)
    return theta_t / (mu_ng * (mu_ng + theta_t))


def _theta_tensor(theta: Tensor | float | None, mu: Tensor) -> Tensor:
    if theta is None:
        raise ValueError("kind='fisher_nb' needs the inverse dispersion `theta` (scalar or (G,)).")
    return torch.as_tensor(theta, dtype=mu.dtype, device=mu.device)


def _embedding(
    decoder: Decoder,
    kind: str = "euclidean",
    theta: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Callable[[Tensor], Tensor]:
    r"""Map ``z_nd -> e_nG`` whose Euclidean pullback is the requested metric.

    * ``euclidean``: :math:`e = \mu`.
    * ``fisher_poisson``: :math:`e = 2\sqrt{\mu}` since
      :math:`(d\,2\sqrt{\mu})^2 = d\mu^2/\mu`.
    * ``fisher_nb``: :math:`e = 2\sqrt{\theta}\,\operatorname{arsinh}\sqrt{\mu/\theta}`
      since its derivative is :math:`\sqrt{\theta/(\mu(\mu+\theta))}`.
    """
    _check_kind(kind)
    fn = _resolve_decoder(decoder)
    if kind == "euclidean":
        return lambda z_nd: _flat_decode(fn, z_nd)
    if kind == "fisher_poisson":
        return lambda z_nd: 2.0 * _flat_decode(fn, z_nd).clamp_min(eps).sqrt()
    if theta is None:
        raise ValueError("kind='fisher_nb' needs the inverse dispersion `theta` (scalar or (G,)).")

    def nb_embed(z_nd: Tensor) -> Tensor:
        mu_ng = _flat_decode(fn, z_nd).clamp_min(eps)
        theta_t = _theta_tensor(theta, mu_ng)
        return 2.0 * theta_t.sqrt() * torch.asinh((mu_ng / theta_t).sqrt())

    return nb_embed


def _jacobian(
    fn: Callable[[Tensor], Tensor], z_nd: Tensor, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Per-row Jacobian of ``fn``: returns ``(mu_ng, J_ngd)``.

    Jacobian-vector products by the double-backward trick,
    :math:`J v = \partial_u \langle J^\top u, v\rangle`: one forward and one
    backward pass build :math:`J^\top u` as a function of a dummy ``u``, then one
    cheap backward pass per latent direction gives a column :math:`J e_k` for all
    rows at once (``d`` is small, ``G`` large, so this beats ``G`` reverse passes).
    It needs no forward-mode support and avoids the slow first call of
    ``torch.func`` (which imports the compiler stack); ``torch.func.jvp`` is the
    fallback for operations without double backward.
    """
    n, d = z_nd.shape
    eye_dd = torch.eye(d, dtype=z_nd.dtype, device=z_nd.device)
    try:
        with torch.enable_grad():
            z = z_nd if (create_graph and z_nd.requires_grad) else z_nd.detach().requires_grad_()
            mu_ng = _flat_decode(fn, z)
            u_ng = torch.zeros_like(mu_ng, requires_grad=True)
            (jtu_nd,) = torch.autograd.grad(
                mu_ng, z, grad_outputs=u_ng, create_graph=True, allow_unused=True
            )
            if jtu_nd is None or not jtu_nd.requires_grad:  # fn does not depend on z
                return mu_ng, mu_ng.new_zeros(*mu_ng.shape, d)
            cols = []
            for k in range(d):
                (col_ng,) = torch.autograd.grad(
                    jtu_nd,
                    u_ng,
                    grad_outputs=eye_dd[k].expand(n, d),
                    retain_graph=k < d - 1 or create_graph,
                    create_graph=create_graph,
                    allow_unused=True,
                )
                cols.append(torch.zeros_like(mu_ng) if col_ng is None else col_ng)
        J_ngd = torch.stack(cols, dim=-1)
        return (mu_ng, J_ngd) if create_graph else (mu_ng.detach(), J_ngd.detach())
    except (RuntimeError, NotImplementedError):  # pragma: no cover - depends on the decoder
        cols = []
        mu_ng = None
        for k in range(d):
            v_nd = eye_dd[k].expand(n, d)
            mu_ng, jv_ng = torch.func.jvp(lambda x: _flat_decode(fn, x), (z_nd,), (v_nd,))
            cols.append(jv_ng)
        assert mu_ng is not None
        return mu_ng, torch.stack(cols, dim=-1)


# --------------------------------------------------------------------------- metric


def pullback_metric(
    decoder: Decoder,
    z: Tensor,
    kind: MetricKind = "euclidean",
    *,
    theta: Tensor | float | None = None,
    eps: float = 1e-8,
    create_graph: bool = False,
) -> Tensor:
    r"""Riemannian metric that the decoder pulls back onto the latent space.

    Parameters
    ----------
    decoder
        Callable ``z_nd -> mu_ng`` (decoder mean; see the module docstring) or an
        object with a ``decoder_mean`` method.
    z
        Latent points, shape ``(n, d)`` (or ``(d,)`` for a single point).
    kind
        ``"euclidean"``: :math:`G(z) = J(z)^\top J(z)` with :math:`J = \partial\mu/\partial z`
        the Jacobian of the decoder mean, i.e. the squared length of a latent
        step is the squared Euclidean length of the step it causes in the mean.

        ``"fisher_poisson"``: Fisher--Rao metric of
        :math:`x_g \sim \mathrm{Poisson}(\mu_g(z))` (genes independent). The
        Fisher information of a Poisson mean is :math:`1/\mu`, and by the chain
        rule :math:`G(z) = J^\top \operatorname{diag}(1/\mu)\, J`.

        ``"fisher_nb"``: Fisher--Rao metric of
        :math:`x_g \sim \mathrm{NB}(\mu_g(z), \theta_g)` with the inverse
        dispersion held fixed. With
        :math:`\log p = x\log\frac{\mu}{\mu+\theta} + \theta\log\frac{\theta}{\mu+\theta} + c`
        the score is :math:`\partial_\mu \log p = \theta (x-\mu)/(\mu(\mu+\theta))`
        and :math:`\operatorname{Var} x = \mu + \mu^2/\theta`, so the information is
        :math:`\theta^2 \operatorname{Var} x / (\mu(\mu+\theta))^2 = \theta/(\mu(\mu+\theta))` and
        :math:`G(z) = J^\top \operatorname{diag}\big(\theta/(\mu(\mu+\theta))\big) J`.
        It tends to the Poisson metric as :math:`\theta\to\infty`.
    theta
        Inverse dispersion (scalar or per gene, broadcastable to ``(n, G)``);
        required for ``"fisher_nb"``.
    eps
        Means are clamped to at least ``eps`` in the Fisher weights.
    create_graph
        Keep the result differentiable (w.r.t. ``z`` if it requires grad, and
        the decoder's parameters), e.g. to regularise the metric; by default
        the result is detached.

    Returns
    -------
    Tensor
        ``G_ndd`` of shape ``(n, d, d)`` (``(d, d)`` for a 1-D ``z``), symmetric
        positive semi-definite.

    Notes
    -----
    The Jacobian is built column by column, one Jacobian-vector product per
    latent dimension on the whole batch (the latent dimension is small, the
    observation dimension large, so this is much cheaper than one reverse pass
    per output). Rows are assumed to be decoded independently.
    """
    _check_kind(kind)
    fn = _resolve_decoder(decoder)
    single = np.ndim(z) == 1
    z_nd = _as_tensor(z, _reference_tensor(fn), one_d="point", detach=not create_graph)
    mu_ng, J_ngd = _jacobian(fn, z_nd, create_graph)
    if kind == "euclidean":
        G_ndd = torch.einsum("ngi,ngj->nij", J_ngd, J_ngd)
    else:
        w_ng = _fisher_weights(mu_ng, kind, theta, eps).expand_as(mu_ng)
        G_ndd = torch.einsum("ngi,ng,ngj->nij", J_ngd, w_ng, J_ngd)
    return G_ndd[0] if single else G_ndd


# --------------------------------------------------------------------------- curves


def _as_curves(curve: Tensor) -> tuple[Tensor, bool]:
    if curve.ndim == 2:
        return curve[None], True
    if curve.ndim != 3:
        raise ValueError(f"`curve` must have shape (P, n_points, d); got {tuple(curve.shape)}.")
    return curve, False


def _segments(embed: Callable[[Tensor], Tensor], curve_pnd: Tensor) -> Tensor:
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
        :func:`geodesic`.

    Returns
    -------
    Tensor
        ``(P,)`` lengths (a scalar for a single curve).
    """
    curve_pnd, single = _as_curves(curve)
    lengths_p = _segments(_embedding(decoder, metric, theta), curve_pnd).norm(dim=-1).sum(-1)
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
    curve_pnd, single = _as_curves(curve)
    N = curve_pnd.shape[1]
    dE = _segments(_embedding(decoder, metric, theta), curve_pnd)
    energy_p = (N - 1) * dE.pow(2).sum((-1, -2))
    return energy_p[0] if single else energy_p


# --------------------------------------------------------------------------- geodesics


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


def _offset_basis(
    method: str, n_points: int, n_nodes: int, dtype: torch.dtype, device: Any
) -> Tensor | None:
    """Basis ``B_nk`` of offsets at the interior grid points (``None`` for free points)."""
    if method == "points":
        return None
    if method != "spline":
        raise ValueError(f"Unknown method {method!r}; choose 'spline' or 'points'.")
    if n_nodes < 1:
        raise ValueError(f"`n_nodes` must be >= 1; got {n_nodes}.")
    knots = np.linspace(0.0, 1.0, n_nodes + 2)
    values = np.zeros((n_nodes + 2, n_nodes))
    values[1:-1] = np.eye(n_nodes)  # k-th basis function: 1 at interior knot k, 0 at others
    t_int = np.linspace(0.0, 1.0, n_points)[1:-1]
    basis = CubicSpline(knots, values, axis=0)(t_int)  # not-a-knot cubic spline
    return torch.as_tensor(basis, dtype=dtype, device=device)


class _BatchedAdam:
    """Adam with one independent state per pair (rows of ``(P, D)`` tensors).

    A trial that raises the pair's energy is rejected; the step towards it is
    halved (for good: the pair's step size is halved too) and retried, so the
    accepted energy never increases. Adam's epsilon is relative to the pair's
    gradient scale, so coordinates whose gradient is round-off (by symmetry,
    say) are not blown up to full steps.
    """

    beta1, beta2, eps = 0.9, 0.999, 1e-3

    def __init__(self, P: int, D: int, lr_p: Tensor, dtype: torch.dtype, device: Any) -> None:
        z = torch.zeros(P, D, dtype=dtype, device=device)
        self.trial, self.w_acc, self.step = z, z.clone(), z.clone()
        self.m1, self.m2 = z.clone(), z.clone()
        self.e_acc = torch.full((P,), math.inf, dtype=dtype, device=device)
        self.t = torch.zeros(P, dtype=dtype, device=device)
        self.lr_p = lr_p.clone()
        self.lr_min = lr_p * 2.0**-20
        self.tiny = torch.finfo(dtype).tiny

    def acceptable(self, idx: Tensor, e: Tensor) -> Tensor:
        return e <= self.e_acc[idx]

    def accept(self, idx: Tensor, w: Tensor, e: Tensor, g: Tensor) -> None:
        self.w_acc[idx], self.e_acc[idx] = w, e
        self.m1[idx] = self.beta1 * self.m1[idx] + (1 - self.beta1) * g
        self.m2[idx] = self.beta2 * self.m2[idx] + (1 - self.beta2) * g * g
        self.t[idx] += 1
        t = self.t[idx][:, None]
        m_hat = self.m1[idx] / (1 - self.beta1**t)
        v_hat = self.m2[idx] / (1 - self.beta2**t)
        rms = v_hat.mean(1, keepdim=True).sqrt()
        denom = v_hat.sqrt() + self.eps * rms + self.tiny
        self.step[idx] = self.lr_p[idx][:, None] * m_hat / denom
        self.trial[idx] = w - self.step[idx]

    def reject(self, idx: Tensor) -> None:
        self.step[idx] = 0.5 * self.step[idx]
        self.lr_p[idx] = 0.5 * self.lr_p[idx]
        self.trial[idx] = self.w_acc[idx] - self.step[idx]

    def exhausted(self, idx: Tensor) -> Tensor:
        return self.lr_p[idx] < self.lr_min[idx]


class _BatchedLBFGS:
    """L-BFGS with one independent state per pair and a backtracking Armijo search.

    The two-loop recursion runs on all active pairs at once (per-pair dot
    products); each pair keeps its own history of the last ``m`` steps. Trials
    start at the full quasi-Newton step and are halved until the pair's energy
    decreases by at least ``c1 * alpha * g^T p`` (so the accepted energy never
    increases). Without history the direction is steepest descent scaled so
    that the largest coordinate moves by the pair's ``lr_p``.
    """

    m, c1 = 10, 1e-4

    def __init__(self, P: int, D: int, lr_p: Tensor, dtype: torch.dtype, device: Any) -> None:
        z = torch.zeros(P, D, dtype=dtype, device=device)
        self.trial, self.w_acc, self.g_acc, self.dirn = z, z.clone(), z.clone(), z.clone()
        self.e_acc = torch.full((P,), math.inf, dtype=dtype, device=device)
        self.alpha = torch.ones(P, dtype=dtype, device=device)
        self.S = torch.zeros(P, self.m, D, dtype=dtype, device=device)
        self.Y = torch.zeros_like(self.S)
        self.rho = torch.zeros(P, self.m, dtype=dtype, device=device)  # 0 = empty slot
        self.lr_p = lr_p
        self.tiny = torch.finfo(dtype).tiny

    def acceptable(self, idx: Tensor, e: Tensor) -> Tensor:
        slope = (self.g_acc[idx] * self.dirn[idx]).sum(1)  # g^T p <= 0
        return e <= self.e_acc[idx] + self.c1 * self.alpha[idx] * slope

    def _direction(self, idx: Tensor, g: Tensor) -> Tensor:
        S, Y, rho = self.S[idx], self.Y[idx], self.rho[idx]
        q = g.clone()
        a = torch.zeros_like(rho)
        for i in range(self.m):  # newest first
            a[:, i] = rho[:, i] * (S[:, i] * q).sum(1)
            q = q - a[:, i, None] * Y[:, i]
        has_hist = rho[:, 0] > 0
        sy = (S[:, 0] * Y[:, 0]).sum(1)
        yy = (Y[:, 0] * Y[:, 0]).sum(1).clamp_min(self.tiny)
        gmax = g.abs().amax(1).clamp_min(self.tiny)
        gamma = torch.where(has_hist, sy / yy, self.lr_p[idx] / gmax)
        r = gamma[:, None] * q
        for i in reversed(range(self.m)):  # oldest first
            b = rho[:, i] * (Y[:, i] * r).sum(1)
            r = r + (a[:, i] - b)[:, None] * S[:, i]
        p = -r
        # Not a descent direction (round-off, kinks of a ReLU decoder): forget the
        # history and fall back to scaled steepest descent.
        bad = (p * g).sum(1) >= 0
        if bad.any():
            self.rho[idx[bad]] = 0
            p[bad] = -(self.lr_p[idx[bad]] / gmax[bad])[:, None] * g[bad]
        return p

    def accept(self, idx: Tensor, w: Tensor, e: Tensor, g: Tensor) -> None:
        had = torch.isfinite(self.e_acc[idx])
        s = w - self.w_acc[idx]
        y = g - self.g_acc[idx]
        sy = (s * y).sum(1)
        keep = had & (sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1)) & (sy > 0)
        if keep.any():
            k = idx[keep]
            self.S[k] = torch.cat([s[keep, None], self.S[k, :-1]], 1)
            self.Y[k] = torch.cat([y[keep, None], self.Y[k, :-1]], 1)
            self.rho[k] = torch.cat([(1 / sy[keep])[:, None], self.rho[k, :-1]], 1)
        self.w_acc[idx], self.e_acc[idx], self.g_acc[idx] = w, e, g
        self.dirn[idx] = self._direction(idx, g)
        self.alpha[idx] = 1.0
        self.trial[idx] = w + self.dirn[idx]

    def reject(self, idx: Tensor) -> None:
        self.alpha[idx] = 0.5 * self.alpha[idx]
        self.trial[idx] = self.w_acc[idx] + self.alpha[idx, None] * self.dirn[idx]

    def exhausted(self, idx: Tensor) -> Tensor:
        return self.alpha[idx] < 2.0**-20


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
    Fisher--Rao metrics (see :func:`pullback_metric`) :math:`e` is an exact
    isometric embedding of the information geometry, applied gene-wise to the
    mean, so no Jacobians are needed: the diagonal Fisher metric
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
    embed = _embedding(decoder, metric, theta)
    fn = _resolve_decoder(decoder)
    ref = _reference_tensor(fn)
    single = np.ndim(z_a) == 1
    za_pd = _as_tensor(z_a, ref, "z_a", one_d="point")
    zb_pd = _as_tensor(z_b, ref, "z_b", one_d="point")
    if za_pd.shape != zb_pd.shape:
        raise ValueError(f"`z_a` {tuple(za_pd.shape)} and `z_b` {tuple(zb_pd.shape)} differ.")
    P, d = za_pd.shape
    N = n_points
    dtype, device = za_pd.dtype, za_pd.device

    t_n = torch.linspace(0.0, 1.0, N, dtype=dtype, device=device)
    basis_nk = _offset_basis(method, N, n_nodes, dtype, device) if N > 2 else None
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
    opt_cls = _BatchedLBFGS if optimizer == "lbfgs" else _BatchedAdam
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


# --------------------------------------------------------------------------- distances


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
        ref = None if decoder is None else _reference_tensor(_resolve_decoder(decoder))
        za_pd, zb_pd = _as_tensor(z_a, ref, "z_a"), _as_tensor(z_b, ref, "z_b")
        return (za_pd - zb_pd).norm(dim=1)
    if kind != "geodesic":
        raise ValueError(f"Unknown distance kind {kind!r}; choose 'geodesic' or 'euclidean'.")
    if decoder is None:
        raise ValueError("kind='geodesic' needs a decoder.")
    ref = _reference_tensor(_resolve_decoder(decoder))
    za_pd, zb_pd = _as_tensor(z_a, ref, "z_a"), _as_tensor(z_b, ref, "z_b")
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
    ref = None if decoder is None else _reference_tensor(_resolve_decoder(decoder))
    z_nd = _as_tensor(z, ref)
    n = z_nd.shape[0]
    if kind == "euclidean":
        return torch.cdist(z_nd, z_nd)
    i, j = torch.triu_indices(n, n, offset=1, device=z_nd.device)
    dist_p = pairwise_distances(decoder, z_nd[i], z_nd[j], kind, **geodesic_kwargs)
    D_nn = z_nd.new_zeros(n, n)
    D_nn[i, j] = dist_p.to(D_nn.dtype)
    D_nn[j, i] = dist_p.to(D_nn.dtype)
    return D_nn


@dataclass
class DistanceStability:
    """Output of :func:`distance_stability`.

    Attributes
    ----------
    cv
        ``kind -> (P,)`` coefficient of variation across models of each pair's
        normalised distance.
    mean_cv
        ``kind -> float``, mean of ``cv[kind]`` over pairs.
    distances
        ``kind -> (M, P)`` normalised distances (model, pair).
    p_value
        One-sided Wilcoxon signed-rank p-value for "geodesic CV < Euclidean CV"
        (paired over pairs); ``None`` unless both kinds were computed, ``nan``
        when all differences are zero.
    statistic
        The Wilcoxon statistic (``None`` / ``nan`` likewise).
    """

    cv: dict[str, np.ndarray]
    mean_cv: dict[str, float]
    distances: dict[str, np.ndarray]
    p_value: float | None = None
    statistic: float | None = None


def distance_stability(
    decoders: Sequence[Decoder],
    z_per_model: Sequence[Any],
    pairs: Any,
    kind: Sequence[DistanceKind] = ("geodesic", "euclidean"),
    normalise: Literal["mean", "median"] | None = "mean",
    **geodesic_kwargs: Any,
) -> DistanceStability:
    r"""How reproducible are pairwise distances across retrained models?

    ``M`` models were fitted to the same cells with different seeds; model
    ``m`` gives a decoder and latent codes ``z_per_model[m]`` of shape
    ``(n, d_m)`` (same cells, same order; ``d_m`` may differ). For each pair of
    cells :math:`p = (i, j)` in ``pairs`` and each kind of distance,

    1. model ``m`` gives :math:`D_{mp}` (geodesic under its own decoder, or
       Euclidean between its latent codes);
    2. normalisation: :math:`\tilde D_{mp} = D_{mp} / s_m` with
       :math:`s_m = \operatorname{mean}_p D_{mp}` (``"mean"``) or the median,
       so that a global rescaling of one model's latent space (which
       identifiability theory cannot pin down for Euclidean distances, and
       which changes nothing about relative distances) does not count as
       instability;
    3. :math:`\mathrm{CV}_p = \operatorname{sd}_m(\tilde D_{mp}) /
       \operatorname{mean}_m(\tilde D_{mp})` (sample standard deviation, ``ddof=1``).

    Syrota et al. (2025) predict geodesic distances to be identifiable, hence
    a lower CV than Euclidean ones; the p-value is the one-sided Wilcoxon
    signed-rank test of :math:`\mathrm{CV}^{geo}_p < \mathrm{CV}^{euc}_p`
    paired over the pairs.

    Parameters
    ----------
    decoders
        ``M`` decoder callables or objects with ``decoder_mean``.
    z_per_model
        ``M`` arrays/tensors ``(n, d_m)`` of latent codes of the same cells.
    pairs
        ``(P, 2)`` integer cell indices.
    kind
        Which distances to compute.
    normalise
        ``"mean"``, ``"median"`` or ``None``.
    **geodesic_kwargs
        Passed to :func:`pairwise_distances` / :func:`geodesic`.

    Returns
    -------
    DistanceStability
    """
    M = len(decoders)
    if M != len(z_per_model):
        raise ValueError(f"{M} decoders but {len(z_per_model)} latent matrices.")
    if M < 2:
        raise ValueError("distance_stability needs at least 2 models.")
    pairs_p2 = np.asarray(pairs.detach().cpu() if isinstance(pairs, Tensor) else pairs)
    if pairs_p2.ndim != 2 or pairs_p2.shape[1] != 2:
        raise ValueError(f"`pairs` must have shape (P, 2); got {pairs_p2.shape}.")
    pairs_p2 = pairs_p2.astype(np.int64)
    n_cells = {int(np.shape(z)[0]) for z in z_per_model}
    if len(n_cells) != 1:
        raise ValueError(f"All models must embed the same cells; got row counts {n_cells}.")
    if pairs_p2.size and (pairs_p2.min() < 0 or pairs_p2.max() >= n_cells.pop()):
        raise ValueError("`pairs` contains cell indices out of range.")

    kinds = tuple(kind)
    cv: dict[str, np.ndarray] = {}
    mean_cv: dict[str, float] = {}
    dists: dict[str, np.ndarray] = {}
    for k in kinds:
        rows = []
        for dec, z in zip(decoders, z_per_model, strict=True):
            ref = _reference_tensor(_resolve_decoder(dec)) if k == "geodesic" else None
            z_nd = _as_tensor(z, ref)
            i = torch.as_tensor(pairs_p2[:, 0], device=z_nd.device)
            j = torch.as_tensor(pairs_p2[:, 1], device=z_nd.device)
            kw = geodesic_kwargs if k == "geodesic" else {}
            d_p = pairwise_distances(dec if k == "geodesic" else None, z_nd[i], z_nd[j], k, **kw)
            rows.append(d_p.detach().cpu().double().numpy())
        D_mp = np.stack(rows)
        if normalise == "mean":
            D_mp = D_mp / D_mp.mean(axis=1, keepdims=True)
        elif normalise == "median":
            D_mp = D_mp / np.median(D_mp, axis=1, keepdims=True)
        elif normalise is not None:
            raise ValueError(f"Unknown normalise {normalise!r}; choose 'mean', 'median' or None.")
        cv_p = D_mp.std(axis=0, ddof=1) / D_mp.mean(axis=0)
        cv[k], mean_cv[k], dists[k] = cv_p, float(np.mean(cv_p)), D_mp

    p_value = statistic = None
    if "geodesic" in cv and "euclidean" in cv:
        diff = cv["geodesic"] - cv["euclidean"]
        if np.all(diff == 0):
            p_value = statistic = float("nan")
        else:
            res = wilcoxon(cv["geodesic"], cv["euclidean"], alternative="less")
            p_value, statistic = float(res.pvalue), float(res.statistic)
    return DistanceStability(cv, mean_cv, dists, p_value, statistic)


# --------------------------------------------------------------------------- model decoders

LatentBlock = Literal["background", "salient", "full"]


class LatentDecoder(torch.nn.Module):
    r"""A fitted model's decoder mean as a function of one latent block.

    Built by :func:`latent_decoder`; maps ``u_nk`` (the free latent
    coordinates) to the observation mean

    .. math::

        \mu(u) = l \cdot m\big(\iota(u)\big),

    where :math:`\iota` inserts the free coordinates into the model's full
    decoder input (the other block held at the fixed value ``fixed_k``),
    :math:`m` is the model's decoder mean (gene proportions for count
    likelihoods) and :math:`l` the library size (``1`` when ``library`` is
    ``None``). The model is a registered submodule, so its parameters give the
    dtype / device and ``.eval()`` / ``.train()`` reach it; nothing is copied:
    the decoder follows the model's current parameters.

    Attributes
    ----------
    model
        The wrapped model.
    kind
        ``"background"``, ``"salient"`` or ``"full"``.
    n_latent
        Dimension of the free coordinates ``u`` (the decoder's input here);
        ``None`` when the model does not say (then it is not checked).
    library
        Library size multiplying the mean, or ``None``.
    metric
        ``"euclidean"``: the module returns the mean :math:`\mu`; a Fisher
        metric: it returns the isometric embedding of that metric (see
        :func:`geodesic`), so that Euclidean geometry of the output *is* the
        Fisher geometry of the model.
    """

    fixed_k: Tensor | None
    design_k: Tensor | None

    def __init__(
        self,
        model: Any,
        kind: LatentBlock,
        n_latent: int | None,
        fixed_k: Tensor | None,
        library: float | None,
        design_k: Tensor | None,
        metric: MetricKind = "euclidean",
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        _check_kind(metric)
        self.metric = metric
        self.eps = float(eps)
        self.model = model
        self.kind = kind
        self.n_latent = None if n_latent is None else int(n_latent)
        self.library = None if library is None else float(library)
        self.register_buffer("fixed_k", fixed_k)
        self.register_buffer("design_k", design_k)

    @property
    def inverse_dispersion(self) -> Tensor | None:
        """The model's NB inverse dispersion :math:`\\theta_g` (detached), e.g. for
        ``metric="fisher_nb"``; ``None`` when the model has none."""
        theta = getattr(getattr(self.model, "decoder", None), "inverse_dispersion", None)
        return None if theta is None else theta.detach()

    def full_input(self, u_nk: Tensor) -> Tensor:
        """Insert the free coordinates into the full latent: ``[u, t0]``, ``[z0, u]`` or ``u``."""
        if self.n_latent is not None and u_nk.shape[-1] != self.n_latent:
            raise ValueError(
                f"the {self.kind} decoder takes {self.n_latent}-d latents; got shape "
                f"{tuple(u_nk.shape)}."
            )
        if self.fixed_k is None:
            return u_nk
        fixed_nk = self.fixed_k.to(u_nk.dtype).expand(*u_nk.shape[:-1], -1)
        parts = [u_nk, fixed_nk] if self.kind == "background" else [fixed_nk, u_nk]
        return torch.cat(parts, dim=-1)

    def forward(self, u_nk: Tensor) -> Tensor:
        zt_nd = self.full_input(u_nk)
        if self.design_k is None:
            mu_ng = self.model.decoder_mean(zt_nd)
        else:
            design_nk = self.design_k.to(zt_nd.dtype).expand(*zt_nd.shape[:-1], -1)
            mu_ng = self.model.decoder.mean(self.model.decoder_input(zt_nd, design_nk))
        if self.library is not None:
            mu_ng = self.library * mu_ng
        if self.metric == "euclidean":
            return mu_ng
        mu_ng = mu_ng.clamp_min(self.eps)
        if self.metric == "fisher_poisson":
            return 2.0 * mu_ng.sqrt()
        theta_g = self.model.decoder.inverse_dispersion.to(mu_ng.dtype)
        return 2.0 * theta_g.sqrt() * torch.asinh((mu_ng / theta_g).sqrt())

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, n_latent={self.n_latent}, library={self.library}, "
            f"metric={self.metric!r}"
        )


def _has_blocks(model: Any) -> bool:
    return hasattr(model, "n_background_latent") and hasattr(model, "n_salient_latent")


def latent_decoder(
    model: Any,
    kind: LatentBlock | None = None,
    *,
    fixed: Any = None,
    library: float | None = None,
    design: Any = None,
    metric: MetricKind = "euclidean",
) -> LatentDecoder:
    r"""Decoder of a fitted model as a function of one latent block, for geometry.

    The functions of this module take a decoder ``u_nk -> mu_ng``; a model
    often decodes more than the latent whose geometry is of interest. This
    picks the block and holds the rest fixed.

    * Models with a background latent :math:`z` (``n_background_latent``) and a
      salient latent :math:`t` (``n_salient_latent``), decoded together as
      ``model.decoder_mean([z, t])`` (:class:`~pyro_compare.models.ContrastiveVAE`):

      - ``kind="background"`` (default): :math:`z \mapsto \mu([z, t_0])` with
        :math:`t_0` = ``fixed`` (default :math:`0`: the background
        manifold, on which the model puts every background cell);
      - ``kind="salient"``: :math:`t \mapsto \mu([z_0, t])` with
        :math:`z_0` = ``fixed`` (default :math:`0`, the prior mean of
        :math:`z`): how the target-specific variation moves a cell of a
        given background state;
      - ``kind="full"``: :math:`[z, t] \mapsto \mu([z, t])`.

    * Any other model with ``decoder_mean(z)`` (e.g.
      :class:`~pyro_compare.models.MixturePriorVAE`): ``kind`` must be
      ``None`` or ``"full"``, and the decoder is ``decoder_mean``.

    * Perturbation models whose decoder sees ``decoder_input(z, design)``
      (``pyro_compare.models.perturbation_base``; the conditional VAE appends
      the design to :math:`z`): pass ``design`` (multi-hot ``(K,)``) to decode
      :math:`z \mapsto \mu(\text{decoder\_input}(z, d))`, i.e. the
      decoder of perturbation condition :math:`d`. Without ``design`` such a
      model uses its ``decoder_mean`` if it has one, else the control
      design :math:`d = 0`.

    Parameters
    ----------
    model
        A fitted model (in ``eval()`` mode for geometry).
    kind
        Which latent block varies (see above).
    fixed
        Value of the block held fixed, a ``(k,)`` vector shared by all rows.
    library
        Library size :math:`l`: the decoder returns :math:`l \cdot m(\cdot)`
        (count models' ``decoder_mean`` gives gene proportions). ``None``:
        proportions. It rescales Euclidean and Poisson--Fisher lengths by
        :math:`l` and :math:`\sqrt{l}` and changes the NB--Fisher geometry (see
        the module docstring), so set it to a typical library size for
        ``metric="fisher_nb"``.
    design
        Perturbation design vector ``(K,)`` (see above).
    metric
        ``"euclidean"`` (default): return the mean :math:`\mu(u)`.
        ``"fisher_poisson"`` / ``"fisher_nb"``: return the isometric embedding
        of that Fisher metric, :math:`2\sqrt{\mu}` or
        :math:`2\sqrt{\theta_g}\operatorname{arsinh}\sqrt{\mu_g/\theta_g}` with the
        model's own inverse dispersion :math:`\theta_g`. The Euclidean geometry
        of this output is the model's Fisher geometry, so use it with the
        functions' default ``metric="euclidean"``: this is how
        :func:`distance_stability` compares NB--Fisher distances of models
        with different :math:`\theta` (one set of ``geodesic_kwargs`` for all).

    Returns
    -------
    LatentDecoder
        A module ``u_nk -> mu_ng``; ``.n_latent`` is the dimension of ``u``
        and ``.inverse_dispersion`` the model's :math:`\theta_g` (for
        ``metric="fisher_nb"``).

    Examples
    --------
    >>> dec = latent_decoder(model, "background", library=2000.0)     # doctest: +SKIP
    >>> z = model.latent(data, "background")                          # doctest: +SKIP
    >>> d = pairwise_distances(dec, z[i], z[j], metric="fisher_nb",   # doctest: +SKIP
    ...                        theta=dec.inverse_dispersion)
    >>> emb = latent_decoder(model, library=2000.0, metric="fisher_nb")  # same geometry
    >>> d2 = pairwise_distances(emb, z[i], z[j])                      # doctest: +SKIP
    """
    _check_kind(metric)
    if (
        metric == "fisher_nb"
        and getattr(getattr(model, "decoder", None), "inverse_dispersion", None) is None
    ):
        raise ValueError(
            f"metric='fisher_nb' needs the model's NB inverse dispersion "
            f"(`model.decoder.inverse_dispersion`); {type(model).__name__} has none."
        )
    kinds = ("background", "salient", "full")
    if kind is not None and kind not in kinds:
        raise ValueError(f"Unknown latent block {kind!r}; choose one of {kinds}.")
    ref = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None

    def vector(value: Any, size: int, name: str) -> Tensor:
        v = _as_tensor(value, ref, name, one_d="point")
        if v.shape != (1, size):
            raise ValueError(f"`{name}` must be a vector of length {size}; got {tuple(v.shape)}.")
        return v[0]

    design_k = None
    if design is not None:
        if not (hasattr(model, "decoder_input") and hasattr(model, "decoder")):
            raise TypeError(
                f"`design` needs a perturbation model with `decoder_input(z, design)` and a "
                f"`decoder`; {type(model).__name__} has none."
            )
        n_pert = getattr(model, "n_perturbations", np.size(design))
        design_k = vector(design, int(n_pert), "design")
    elif not hasattr(model, "decoder_mean"):
        if hasattr(model, "decoder_input") and hasattr(model, "n_perturbations"):
            design_k = torch.zeros(int(model.n_perturbations))
            if ref is not None:
                design_k = design_k.to(ref)
        else:
            raise TypeError(
                f"{type(model).__name__} has no `decoder_mean(z)`; pass a callable decoder to the "
                "geometry functions instead."
            )

    if not _has_blocks(model):
        if kind not in (None, "full"):
            raise ValueError(
                f"{type(model).__name__} has no background/salient latent blocks; use kind='full' "
                "(or None)."
            )
        if fixed is not None:
            raise ValueError("`fixed` only applies to models with background/salient blocks.")
        n_latent = getattr(model, "n_latent", None)
        return LatentDecoder(model, "full", n_latent, None, library, design_k, metric)

    d_z, d_t = int(model.n_background_latent), int(model.n_salient_latent)
    kind = kind or "background"
    if kind == "full":
        if fixed is not None:
            raise ValueError("`fixed` does not apply to kind='full'.")
        return LatentDecoder(model, kind, d_z + d_t, None, library, design_k, metric)
    n_free, n_fixed = (d_z, d_t) if kind == "background" else (d_t, d_z)
    fixed_k = torch.zeros(n_fixed) if fixed is None else vector(fixed, n_fixed, "fixed")
    if ref is not None:
        fixed_k = fixed_k.to(ref)
    return LatentDecoder(model, kind, n_free, fixed_k, library, design_k, metric)
