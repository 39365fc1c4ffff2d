r"""A fitted model's decoder as a function of one latent block, for latent geometry.

The geometry functions of :mod:`pyro_compare.metrics.geometry` take a decoder
``u_nk -> mu_ng``; a model often decodes more than the latent whose geometry is of
interest (a background and a salient block, a perturbation design). :func:`latent_decoder`
picks the block, holds the rest fixed, and returns a :class:`LatentDecoder` module.

Models are recognised by duck typing on their attributes (``decoder_mean``,
``n_background_latent`` / ``n_salient_latent``, ``decoder_input`` / ``decoder`` /
``n_perturbations``, ``decoder.inverse_dispersion``, ``n_latent``), so nothing here
imports a model class.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..metrics.geometry._inputs import as_latents
from ..metrics.geometry.metric import MetricKind, check_kind, fisher_embedding

__all__ = ["LatentBlock", "LatentDecoder", "latent_decoder"]

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
        :func:`~pyro_compare.metrics.geometry.metric.fisher_embedding`), so that
        Euclidean geometry of the output *is* the Fisher geometry of the model.
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
        check_kind(metric)
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
        theta_g = self.model.decoder.inverse_dispersion if self.metric == "fisher_nb" else None
        return fisher_embedding(mu_ng, self.metric, theta_g, self.eps)

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

    The functions of :mod:`pyro_compare.metrics.geometry` take a decoder ``u_nk -> mu_ng``; a model
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
        :func:`~pyro_compare.metrics.geometry.stability.distance_stability` compares
        NB--Fisher distances of models with different :math:`\theta` (one set of
        ``geodesic_kwargs`` for all).

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
    check_kind(metric)
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
        v = as_latents(value, ref, name, one_d="point")
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
