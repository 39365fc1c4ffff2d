r"""The Riemannian metric a decoder pulls back onto the latent space, and its embeddings.

For a decoder mean :math:`\mu: \mathbb{R}^d \to \mathbb{R}^G` with Jacobian
:math:`J(z) = \partial \mu / \partial z` (shape ``(G, d)``) and an observation-space
metric :math:`\operatorname{diag}(w(\mu))`, the pullback metric is

.. math::

    G(z) = J(z)^\top \operatorname{diag}\big(w(\mu(z))\big)\, J(z),

with :math:`w \equiv 1` (Euclidean metric on the mean), :math:`w = 1/\mu` (Fisher--Rao
metric of a Poisson observation model) or :math:`w = \theta/(\mu(\mu+\theta))` (Fisher--Rao
metric of a negative binomial with inverse dispersion :math:`\theta`).

Because these metrics are diagonal and act gene-wise, each has an exact isometric
embedding :math:`e = \phi(\mu)` with :math:`\phi'(\mu)^2 = w(\mu)`
(:func:`fisher_embedding`): the Euclidean pullback of :math:`e` *is* :math:`G(z)`, so
lengths of curves need no Jacobians at all (see
:mod:`pyro_compare.metrics.geometry.curves`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ._inputs import Decoder, as_latents, flat_decode, reference_tensor, resolve_decoder

__all__ = ["MetricKind", "fisher_embedding", "pullback_metric"]

#: Observation-space metric: Euclidean on the mean, or the Fisher--Rao metric of a
#: Poisson / negative-binomial observation model.
MetricKind = Literal["euclidean", "fisher_poisson", "fisher_nb"]
JacobianMode = Literal["forward", "reverse"]

METRIC_KINDS = ("euclidean", "fisher_poisson", "fisher_nb")


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` unless ``kind`` is one of :data:`MetricKind`."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"Unknown metric kind {kind!r}; choose one of {METRIC_KINDS}.")


def _theta_tensor(theta: Tensor | float | None, mu: Tensor) -> Tensor:
    if theta is None:
        raise ValueError("kind='fisher_nb' needs the inverse dispersion `theta` (scalar or (G,)).")
    return torch.as_tensor(theta, dtype=mu.dtype, device=mu.device)


def fisher_weights(mu_ng: Tensor, kind: str, theta: Tensor | float | None, eps: float) -> Tensor:
    r"""Diagonal Fisher information of the mean, :math:`w_g(\mu_g)` (Fisher kinds only).

    :math:`1/\mu` for ``"fisher_poisson"``, :math:`\theta/(\mu(\mu+\theta))` for
    ``"fisher_nb"``; means are clamped to at least ``eps``.
    """
    mu_ng = mu_ng.clamp_min(eps)
    if kind == "fisher_poisson":
        return 1.0 / mu_ng
    theta_t = _theta_tensor(theta, mu_ng)
    return theta_t / (mu_ng * (mu_ng + theta_t))


def fisher_embedding(
    mu_ng: Tensor,
    kind: MetricKind = "euclidean",
    theta: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    r"""Isometric embedding :math:`e = \phi(\mu)` of an observation-space metric, gene-wise.

    The Euclidean metric of the output is the requested metric of the mean:
    :math:`\sum_g w_g(\mu_g)\, d\mu_g^2 = \sum_g d\phi(\mu_g)^2` for :math:`\phi' = \sqrt{w}`.

    * ``"euclidean"``: :math:`\phi(\mu) = \mu` (``mu_ng`` returned unchanged);
    * ``"fisher_poisson"``: :math:`\phi(\mu) = 2\sqrt{\mu}`, since
      :math:`(d\,2\sqrt{\mu})^2 = d\mu^2/\mu`;
    * ``"fisher_nb"``: :math:`\phi(\mu) = 2\sqrt{\theta}\operatorname{arsinh}\sqrt{\mu/\theta}`,
      whose derivative is :math:`\sqrt{\theta/(\mu(\mu+\theta))}`.

    Parameters
    ----------
    mu_ng
        Means, any shape ``(..., G)``; clamped to at least ``eps`` for the Fisher kinds.
    kind
        Which metric.
    theta
        Inverse dispersion (scalar or ``(G,)``, broadcast against ``mu_ng``), required
        for ``"fisher_nb"``. Gradients flow into it if it requires grad.
    eps
        Lower clamp of the mean (Fisher kinds).

    Returns
    -------
    Tensor
        ``e_ng``, same shape as ``mu_ng``.
    """
    check_kind(kind)
    if kind == "euclidean":
        return mu_ng
    mu_ng = mu_ng.clamp_min(eps)
    if kind == "fisher_poisson":
        return 2.0 * mu_ng.sqrt()
    theta_t = _theta_tensor(theta, mu_ng)
    return 2.0 * theta_t.sqrt() * torch.asinh((mu_ng / theta_t).sqrt())


def embedding(
    decoder: Decoder,
    kind: MetricKind = "euclidean",
    theta: Tensor | float | None = None,
    eps: float = 1e-8,
) -> Callable[[Tensor], Tensor]:
    r"""The map ``z_nd -> e_nG`` whose Euclidean pullback is the requested metric.

    :func:`fisher_embedding` of the flattened decoder mean; ``theta`` is checked here,
    once, rather than at every call.
    """
    check_kind(kind)
    fn = resolve_decoder(decoder)
    if kind == "fisher_nb" and theta is None:
        raise ValueError("kind='fisher_nb' needs the inverse dispersion `theta` (scalar or (G,)).")
    if kind == "euclidean":
        return lambda z_nd: flat_decode(fn, z_nd)
    return lambda z_nd: fisher_embedding(flat_decode(fn, z_nd), kind, theta, eps)


def jacobian(
    fn: Callable[[Tensor], Tensor],
    z_nd: Tensor,
    create_graph: bool = False,
    mode: JacobianMode = "forward",
) -> tuple[Tensor, Tensor]:
    r"""Per-row Jacobian of a decoder: ``(mu_ng, J_ngd)`` with
    :math:`J_{ngk} = \partial\mu_{ng}/\partial z_{nk}`.

    ``torch.func.vmap`` over the rows of the Jacobian of one row,
    :math:`z_d \mapsto \mu(z_d)`, so every row is differentiated on its own (rows
    are decoded independently by construction, whatever the decoder does with a
    batch):

    * ``mode="forward"``: ``torch.func.jacfwd``, :math:`d` Jacobian-vector products
      (one per latent direction) vectorised into one forward pass with dual numbers.
      Cheap since :math:`d \ll G`; needs forward-mode derivatives of every operation
      of the decoder (all built-in torch operations have them).
    * ``mode="reverse"``: ``torch.func.jacrev``, :math:`G` vector-Jacobian products.
      Much slower and heavier for large :math:`G`; for decoders with custom autograd
      functions that only define a backward pass.

    Nothing falls back silently: an operation that the chosen mode cannot
    differentiate raises its error.

    The decoder is first run once outside the transform, which gives ``mu_ng`` and
    lets ``PyroModule`` decoders register their parameters in Pyro's parameter store
    (registration calls ``requires_grad_``, which ``torch.func`` transforms forbid).
    With ``create_graph=False`` everything runs under ``torch.no_grad()`` (forward-mode
    derivatives do not need the reverse graph); otherwise the result is
    differentiable with respect to ``z_nd`` (if it requires grad) and the decoder's
    parameters.
    """

    def one_row(z_d: Tensor) -> Tensor:
        return flat_decode(fn, z_d[None])[0]

    if mode not in ("forward", "reverse"):
        raise ValueError(f"Unknown Jacobian mode {mode!r}; choose 'forward' or 'reverse'.")
    transform = torch.func.jacfwd if mode == "forward" else torch.func.jacrev
    with torch.set_grad_enabled(create_graph):
        mu_ng = flat_decode(fn, z_nd)
        J_ngd = torch.func.vmap(transform(one_row))(z_nd)
    return mu_ng, J_ngd


def pullback_metric(
    decoder: Decoder,
    z: Tensor,
    kind: MetricKind = "euclidean",
    *,
    theta: Tensor | float | None = None,
    eps: float = 1e-8,
    create_graph: bool = False,
    jacobian_mode: JacobianMode = "forward",
) -> Tensor:
    r"""Riemannian metric that the decoder pulls back onto the latent space.

    Parameters
    ----------
    decoder
        Callable ``z_nd -> mu_ng`` (decoder mean; see :mod:`pyro_compare.metrics.geometry`)
        or an object with a ``decoder_mean`` method.
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
    jacobian_mode
        ``"forward"`` (default; ``torch.func.jacfwd``, :math:`d` directional
        derivatives per point) or ``"reverse"`` (``torch.func.jacrev``, :math:`G`
        of them: for decoders whose operations lack forward-mode derivatives).
        There is no automatic fallback: an operation the chosen mode cannot
        differentiate raises its error.

    Returns
    -------
    Tensor
        ``G_ndd`` of shape ``(n, d, d)`` (``(d, d)`` for a 1-D ``z``), symmetric
        positive semi-definite.

    Notes
    -----
    The Jacobian is vectorised over points with ``torch.func.vmap``; rows are
    differentiated independently. The first ``torch.func`` call of a process
    imports PyTorch's compiler stack (about a second); later calls cost about
    :math:`d+1` decoder passes.
    """
    check_kind(kind)
    fn = resolve_decoder(decoder)
    single = np.ndim(z) == 1
    z_nd = as_latents(z, reference_tensor(fn), one_d="point", detach=not create_graph)
    mu_ng, J_ngd = jacobian(fn, z_nd, create_graph, jacobian_mode)
    with torch.set_grad_enabled(create_graph):
        if kind == "euclidean":
            G_ndd = torch.einsum("ngi,ngj->nij", J_ngd, J_ngd)
        else:
            w_ng = fisher_weights(mu_ng, kind, theta, eps).expand_as(mu_ng)
            G_ndd = torch.einsum("ngi,ng,ngj->nij", J_ngd, w_ng, J_ngd)
    return G_ndd[0] if single else G_ndd
