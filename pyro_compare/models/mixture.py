r"""VAE with a learnable Gaussian-mixture prior (Kivva et al. 2022).

Generative process for cell n with observations :math:`x_n` (counts with library size
:math:`l_n`, or continuous values):

.. math::

    z_n &\sim \sum_{k=1}^{K} \pi_k\, N(\mu_k, \Sigma_k), \qquad
    \pi = \mathrm{softmax}(\alpha), \\
    x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n)),\ \theta\big)
    \quad\text{(or ZINB, Poisson, or } N(f(z_n), \mathrm{diag}(\sigma^2))\text{)}

with :math:`f` a ReLU MLP. The mixture weights :math:`\alpha`, means :math:`\mu_k` and
covariances :math:`\Sigma_k = L_k L_k^\top` (full, or diagonal) are learned point
estimates; the component label is marginalised (``MixtureSameFamily``), so the
prior density :math:`\log p(z) = \operatorname{logsumexp}_k [\log \pi_k + \log N(z; \mu_k,
\Sigma_k)]` enters the ELBO directly and no discrete site needs enumeration.

With a ReLU (piecewise-affine) decoder and :math:`K \geq 2` components the latent space is
identifiable up to an affine map from the data alone (Kivva et al. 2022). ``n_components=1``
is the ordinary VAE with the fixed isotropic prior :math:`N(0, I)` (a learnable single
Gaussian would only be an affine reparametrisation of it).

The model is not comparative: every cell gets the same prior. Cells sit under the
``"background"`` and ``"target"`` plates as :class:`~pyro_compare.data.ComparativeData`
provides them, so ``fit()``, :meth:`latent`, ``save``/``load`` and the per-source losses work
as for the other models; for data without conditions use :func:`single_source_data`, which
splits the cells into two interleaved halves (a bookkeeping split that leaves the ELBO
unchanged).

Guide: amortised diagonal Normal :math:`q(z_n \mid x_n)` from a ReLU encoder. Posterior
component responsibilities :math:`r_{nk} = p(c_n = k \mid z_n)` are available as the latent
kind ``"responsibilities"`` and the hard assignment through :meth:`MixturePriorVAE.assign`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..data.comparative import ComparativeData
from ..data.sources import SourceBatch
from ..data.validation import DataValidationError, check_matrix_values, get_matrix
from ..nn.decoders import COUNT_LIKELIHOODS, ObservationDecoder
from ..nn.encoders import GaussianEncoder
from .base import ComparativeModel

__all__ = ["MixturePriorVAE", "single_source_data"]

_COVARIANCES = ("full", "diagonal")


class MixturePriorVAE(ComparativeModel):
    r"""VAE with a learnable Gaussian-mixture prior over a single latent ``z``.

    Parameters
    ----------
    n_features
        Number of genes / features G.
    n_latent
        Latent dimension d.
    n_components
        Number of mixture components K; ``1`` gives the isotropic prior N(0, I) (no prior
        parameters).
    hidden
        Hidden layer widths of the encoder and the decoder.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` (counts) or ``"gaussian"`` (continuous data).
    covariance
        ``"full"`` (:math:`\Sigma_k = L_k L_k^\top`, :math:`L_k` lower triangular with a positive
        diagonal) or ``"diagonal"``.
    init_spread
        Standard deviation of the random initial component means,
        :math:`\mu_k \sim N(0, \text{init\_spread}^2 I)`; components start with unit scale.

    Attributes
    ----------
    logits_k, loc_kd, raw_scale_kdd
        Prior parameters (only for ``n_components > 1``): mixture logits :math:`\alpha`, means,
        and the unconstrained Cholesky factors (diagonal through ``softplus``).

    Notes
    -----
    The initial means are drawn from the global torch RNG when the model is built; the
    first :func:`~pyro_compare.infer.fit` redraws every parameter from its ``seed``
    (:meth:`~pyro_compare.models.base.ComparativeModel.reinitialize`), so seeded fits are
    reproducible without seeding anything before.
    """

    latent_kinds = ("latent", "responsibilities")

    def __init__(
        self,
        n_features: int,
        n_latent: int = 10,
        n_components: int = 5,
        hidden: Sequence[int] = (128,),
        likelihood: str = "nb",
        covariance: str = "full",
        init_spread: float = 1.0,
    ) -> None:
        super().__init__()
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1; got {n_components}.")
        if covariance not in _COVARIANCES:
            raise ValueError(f"unknown covariance {covariance!r}; use one of {_COVARIANCES}.")
        hidden = tuple(int(h) for h in hidden)
        self.n_features = n_features
        self.n_latent = n_latent
        self.n_components = n_components
        self.covariance = covariance
        self.likelihood = likelihood
        self.encoder = GaussianEncoder(
            n_features, n_latent, hidden, log_input=likelihood in COUNT_LIKELIHOODS
        )
        self.decoder = ObservationDecoder(n_latent, n_features, hidden, likelihood)
        if n_components > 1:
            self.logits_k = nn.Parameter(torch.zeros(n_components))
            self.loc_kd = nn.Parameter(init_spread * torch.randn(n_components, n_latent))
            # softplus(raw) = 1 on the diagonal at initialisation; off-diagonals start at 0.
            raw = torch.zeros(n_components, n_latent, n_latent)
            raw.diagonal(dim1=-2, dim2=-1).fill_(math.log(math.e - 1.0))
            if covariance == "diagonal":
                raw = raw.diagonal(dim1=-2, dim2=-1).clone()
            self.raw_scale_kdd = nn.Parameter(raw)
        self._finish_init(locals())

    # ------------------------------------------------------------------ prior
    def scale_tril(self) -> torch.Tensor:
        r"""Cholesky factors :math:`L_k` (K, d, d), diagonal ``softplus(raw) + 1e-4``."""
        raw = self.raw_scale_kdd
        if self.covariance == "diagonal":
            return torch.diag_embed(F.softplus(raw) + 1e-4)
        diag = F.softplus(raw.diagonal(dim1=-2, dim2=-1)) + 1e-4
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(diag)

    def component_dist(self) -> dist.TorchDistribution:
        """The K Gaussian components, batch shape (K,), event shape (d,)."""
        if self.n_components == 1:
            return dist.Normal(self._zeros(1, self.n_latent), 1.0).to_event(1)
        if self.covariance == "diagonal":
            scale_kd = F.softplus(self.raw_scale_kdd) + 1e-4
            return dist.Normal(self.loc_kd, scale_kd).to_event(1)
        return dist.MultivariateNormal(self.loc_kd, scale_tril=self.scale_tril())

    def mixing_logits(self) -> torch.Tensor:
        """Normalised log weights :math:`\\log \\pi_k`, shape (K,)."""
        if self.n_components == 1:
            return self._zeros(1)
        return torch.log_softmax(self.logits_k, dim=-1)

    def z_dist(self, n: int) -> dist.TorchDistribution:
        r"""Prior :math:`p(z)` with batch shape (n,) and event shape (d,)."""
        if self.n_components == 1:
            return dist.Normal(self._zeros(), 1.0).expand([n, self.n_latent]).to_event(1)
        mixture = dist.MixtureSameFamily(
            dist.Categorical(logits=self.mixing_logits()), self.component_dist()
        )
        return mixture.expand([n])

    def responsibilities_of(self, z_nd: torch.Tensor) -> torch.Tensor:
        r"""Posterior component probabilities given z,
        :math:`r_{nk} = \pi_k N(z_n; \mu_k, \Sigma_k) / \sum_j \pi_j N(z_n; \mu_j, \Sigma_j)`."""
        log_joint_nk = self.component_dist().log_prob(z_nd.unsqueeze(-2)) + self.mixing_logits()
        return torch.softmax(log_joint_nk, dim=-1)

    @torch.no_grad()
    def prior_parameters(self) -> dict[str, np.ndarray]:
        """Learned prior: ``weights`` (K,), ``means`` (K, d), ``covariances`` (K, d, d)."""
        if self.n_components == 1:
            return {
                "weights": np.ones(1),
                "means": np.zeros((1, self.n_latent)),
                "covariances": np.eye(self.n_latent)[None],
            }
        l_kdd = self.scale_tril()
        return {
            "weights": self.mixing_logits().exp().numpy(),
            "means": self.loc_kd.detach().numpy().copy(),
            "covariances": (l_kdd @ l_kdd.transpose(-1, -2)).numpy(),
        }

    # ------------------------------------------------------------------ generative story
    def x_dist(self, z_nd: torch.Tensor, library_n: torch.Tensor | None) -> dist.TorchDistribution:
        """p(x_n | z_n, l_n)."""
        return self.decoder.make_dist(z_nd, library_n)

    def decoder_mean(self, z_nd: torch.Tensor, library_n: torch.Tensor | None = None):
        """Decoder mean as a function of ``z`` (for geometry)."""
        return self.decoder.mean(z_nd, library_n)

    def model_source(self, name, src, globals_, obs) -> None:
        """Every source's cells: ``z ~ p(z)`` (the mixture prior), ``x ~ p(x | z, l)``."""
        z = pyro.sample(f"z_{name}", self.z_dist(src.size))
        pyro.sample(f"x_{name}", self.x_dist(z, src.library_n).to_event(1), obs=obs)

    def guide_source(self, name, src, globals_) -> None:
        """Amortised guide q(z | x) (diagonal Normal)."""
        z_loc, z_scale = self.encoder(src.x_ng)
        pyro.sample(f"z_{name}", dist.Normal(z_loc, z_scale).to_event(1))

    # ------------------------------------------------------------------ helpers
    def encode(self, kind: str, src: SourceBatch, sample: bool = False) -> torch.Tensor:
        """Posterior mean (or a sample) of ``z`` (``"latent"``), or the component
        responsibilities :math:`p(c = k \\mid z)` at that point (``"responsibilities"``)."""
        loc, scale = self.encoder(src.x_ng)
        z = loc + scale * torch.randn_like(loc) if sample else loc
        if kind == "responsibilities":
            return self.responsibilities_of(z)
        return z

    @torch.no_grad()
    def initialize_prior(self, data: ComparativeData, seed: int = 0, n_init: int = 3) -> None:
        r"""Set the prior to a Gaussian mixture fitted to the current posterior means.

        The usual remedy for the local optima of mixture-prior VAEs (as in VaDE): train a few
        epochs, fit a K-component Gaussian mixture (EM, :class:`sklearn.mixture.GaussianMixture`
        with the model's covariance type) to :math:`\{E_q[z_n]\}`, copy its weights, means and
        Cholesky factors into the prior, and continue training. No-op for ``n_components=1``.
        """
        if self.n_components == 1:
            return
        from sklearn.mixture import GaussianMixture

        z_nd = self.latent(data, "latent").astype(np.float64)
        kind = "full" if self.covariance == "full" else "diag"
        gmm = GaussianMixture(
            self.n_components,
            covariance_type=kind,
            n_init=n_init,
            random_state=seed,
            reg_covar=1e-4,
        ).fit(z_nd)

        def inv_softplus(y: torch.Tensor) -> torch.Tensor:
            return y + torch.log(-torch.expm1(-y))

        self.logits_k.copy_(torch.as_tensor(np.log(gmm.weights_), dtype=torch.float32))
        self.loc_kd.copy_(torch.as_tensor(gmm.means_, dtype=torch.float32))
        if self.covariance == "diagonal":
            scale = torch.as_tensor(np.sqrt(gmm.covariances_), dtype=torch.float32)
            self.raw_scale_kdd.copy_(inv_softplus((scale - 1e-4).clamp_min(1e-3)))
        else:
            l_kdd = torch.as_tensor(np.linalg.cholesky(gmm.covariances_), dtype=torch.float32)
            diag = l_kdd.diagonal(dim1=-2, dim2=-1)
            raw = torch.tril(l_kdd, diagonal=-1) + torch.diag_embed(
                inv_softplus((diag - 1e-4).clamp_min(1e-3))
            )
            self.raw_scale_kdd.copy_(raw)

    def assign(self, data: ComparativeData) -> np.ndarray:
        """Hard component assignment ``argmax_k r_nk`` of every cell (at the posterior mean)."""
        return self.latent(data, "responsibilities").argmax(axis=1)


def single_source_data(
    adata,
    layer: str | None = None,
    counts: bool = True,
    library_key: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> ComparativeData:
    """:class:`ComparativeData` for data with no conditions (e.g. for :class:`MixturePriorVAE`).

    The cells are split into two interleaved halves, even rows ``"background"`` and odd rows
    ``"target"``. For a model with the same prior on both sources (such as
    :class:`MixturePriorVAE`) the ELBO is a sum over cells and does not depend on this split;
    it only exists because :class:`ComparativeData` always has two sources. ``adata`` is not
    modified; rows keep their order, so ``model.latent(data, ...)`` lines up with ``adata``.

    Parameters
    ----------
    adata
        Cells x features (at least 2 cells).
    layer, counts, library_key, validation_fraction, seed
        As in :meth:`ComparativeData.from_anndata`.
    """
    matrix = get_matrix(adata, layer)
    n = matrix.shape[0]
    if n < 2:
        raise DataValidationError("single_source_data needs at least 2 cells.")
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_matrix_values(matrix, counts=counts, where=where)
    row_sums = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)
    if library_key is not None:
        library = adata.obs[library_key].to_numpy(dtype=np.float64)
    else:
        library = row_sums
    if counts and (row_sums == 0).any():
        raise DataValidationError(
            f"{int((row_sums == 0).sum())} cell(s) have zero total counts in {where}. Remove "
            f"them first, e.g. scanpy.pp.filter_cells(adata, min_counts=1)."
        )
    condition = np.where(np.arange(n) % 2 == 0, "background", "target")
    return ComparativeData(
        adata,
        matrix,
        condition,
        "background",
        library,
        counts=counts,
        validation_fraction=validation_fraction,
        seed=seed,
    )
