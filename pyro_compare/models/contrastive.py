r"""Contrastive VAE (contrastive analysis: background vs target).

Generative process (Lopez et al. 2024; contrastiveVI-like), for cell n with counts
:math:`x_n \in \mathbb{N}^G` and library size :math:`l_n`:

.. math::

    z_n &\sim N(0, I_{d_z})                     &&\text{(background latent, all cells)} \\
    t_n &= 0 \;\text{(background cells)}, \quad
    t_n \sim N(0, I_{d_t}) \;\text{(target cells)} &&\text{(salient latent)} \\
    x_n &\sim NB\big(l_n\, \mathrm{softmax}(f([z_n, t_n])),\ \theta\big)

with :math:`f` a ReLU MLP (piecewise affine: the identifiable case) and gene-wise inverse
dispersion :math:`\theta_g`. Cells of each source live under their own plate,
``pyro.plate("background", N_b)`` and ``pyro.plate("target", N_t)``, with minibatch
subsampling, so the ELBO splits by source (:class:`pyro_compare.infer.SourceTrace_ELBO`).

Guide: amortised :math:`q(z_n \mid x_n)` for every cell and :math:`q(t_n \mid x_n)` for
target cells (diagonal Normals from ReLU encoders).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from ..nn.decoders import COUNT_LIKELIHOODS, ObservationDecoder
from ..nn.encoders import GaussianEncoder
from .base import ComparativeModel

__all__ = ["ContrastiveVAE"]


class ContrastiveVAE(ComparativeModel):
    """Contrastive VAE with background latent ``z`` and salient latent ``t``.

    Parameters
    ----------
    n_features
        Number of genes / features G.
    n_background_latent, n_salient_latent
        Dimensions of ``z`` (shared) and ``t`` (target-specific).
    hidden
        Hidden layer widths of the encoders and the decoder.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` (counts) or ``"gaussian"`` (continuous data).
    """

    latent_kinds = ("background", "salient")

    def __init__(
        self,
        n_features: int,
        n_background_latent: int = 10,
        n_salient_latent: int = 10,
        hidden: Sequence[int] = (128,),
        likelihood: str = "nb",
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self.n_features = n_features
        self.n_background_latent = n_background_latent
        self.n_salient_latent = n_salient_latent
        self.likelihood = likelihood
        log_input = likelihood in COUNT_LIKELIHOODS
        self.background_encoder = GaussianEncoder(
            n_features, n_background_latent, hidden, log_input=log_input
        )
        self.salient_encoder = GaussianEncoder(
            n_features, n_salient_latent, hidden, log_input=log_input
        )
        self.decoder = ObservationDecoder(
            n_background_latent + n_salient_latent, n_features, hidden, likelihood
        )
        #: When True the guide also records q(t | x) for background cells (not a sample
        #: site: t = 0 there in the model), which the leakage penalties need.
        self.track_background_salient = False
        self._finish_init(locals())

    # ------------------------------------------------------------------ generative story
    def z_dist(self, n: int) -> dist.TorchDistribution:
        """Prior of the background latent, N(0, I), batch shape (n,)."""
        return dist.Normal(torch.zeros(()), torch.ones(())).expand([n, self.n_background_latent])

    def t_dist(self, n: int) -> dist.TorchDistribution:
        """Prior of the salient latent of target cells, N(0, I)."""
        return dist.Normal(torch.zeros(()), torch.ones(())).expand([n, self.n_salient_latent])

    def x_dist(
        self, z_nd: torch.Tensor, t_nd: torch.Tensor, library_n: torch.Tensor | None
    ) -> dist.TorchDistribution:
        """p(x_n | z_n, t_n, l_n)."""
        return self.decoder.make_dist(torch.cat([z_nd, t_nd], dim=-1), library_n)

    def decoder_mean(self, zt: torch.Tensor, library_n: torch.Tensor | None = None):
        """Decoder mean as a function of the concatenated latent ``[z, t]`` (for geometry)."""
        return self.decoder.mean(zt, library_n)

    def model(
        self,
        x_background: torch.Tensor | None = None,
        x_target: torch.Tensor | None = None,
        library_background: torch.Tensor | None = None,
        library_target: torch.Tensor | None = None,
        index_background: torch.Tensor | None = None,
        index_target: torch.Tensor | None = None,
        n_background: int | None = None,
        n_target: int | None = None,
        design_background: torch.Tensor | None = None,
        design_target: torch.Tensor | None = None,
    ) -> None:
        """Generative model; ``design_*`` are accepted (shared batch signature) and ignored."""
        if x_background is not None and x_background.shape[0] > 0:
            n = self._plate_size(n_background, x_background, index_background)
            with pyro.plate("background", n, subsample=index_background) as idx:
                m = len(idx)
                z = pyro.sample("z_background", self.z_dist(m).to_event(1))
                t = z.new_zeros(z.shape[:-1] + (self.n_salient_latent,))
                pyro.sample(
                    "x_background",
                    self.x_dist(z, t, library_background).to_event(1),
                    obs=x_background,
                )
        if x_target is not None and x_target.shape[0] > 0:
            n = self._plate_size(n_target, x_target, index_target)
            with pyro.plate("target", n, subsample=index_target) as idx:
                m = len(idx)
                z = pyro.sample("z_target", self.z_dist(m).to_event(1))
                t = pyro.sample("t_target", self.t_dist(m).to_event(1))
                pyro.sample("x_target", self.x_dist(z, t, library_target).to_event(1), obs=x_target)

    def guide(
        self,
        x_background: torch.Tensor | None = None,
        x_target: torch.Tensor | None = None,
        library_background: torch.Tensor | None = None,
        library_target: torch.Tensor | None = None,
        index_background: torch.Tensor | None = None,
        index_target: torch.Tensor | None = None,
        n_background: int | None = None,
        n_target: int | None = None,
        design_background: torch.Tensor | None = None,
        design_target: torch.Tensor | None = None,
    ) -> None:
        """Amortised mean-field guide q(z|x) q(t|x); records its outputs in ``guide_outputs``."""
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        if x_background is not None and x_background.shape[0] > 0:
            n = self._plate_size(n_background, x_background, index_background)
            with pyro.plate("background", n, subsample=index_background):
                z_loc, z_scale = self.background_encoder(x_background)
                z = pyro.sample("z_background", dist.Normal(z_loc, z_scale).to_event(1))
            rec = {"z_loc": z_loc, "z_scale": z_scale, "z": z}
            if self.track_background_salient:
                rec["t_loc"], rec["t_scale"] = self.salient_encoder(x_background)
            outputs["background"] = rec
        if x_target is not None and x_target.shape[0] > 0:
            n = self._plate_size(n_target, x_target, index_target)
            with pyro.plate("target", n, subsample=index_target):
                z_loc, z_scale = self.background_encoder(x_target)
                t_loc, t_scale = self.salient_encoder(x_target)
                z = pyro.sample("z_target", dist.Normal(z_loc, z_scale).to_event(1))
                t = pyro.sample("t_target", dist.Normal(t_loc, t_scale).to_event(1))
            outputs["target"] = {
                "z_loc": z_loc,
                "z_scale": z_scale,
                "z": z,
                "t_loc": t_loc,
                "t_scale": t_scale,
                "t": t,
            }
        self.guide_outputs = outputs

    # ------------------------------------------------------------------ helpers
    def encode(self, kind: str, batch: dict, source: str, sample: bool = False) -> torch.Tensor:
        """Posterior mean (or a sample) of ``z`` (``"background"``) or ``t`` (``"salient"``).

        The salient encoder is applied to every cell, background cells included, as in
        contrastiveVI: a well-fitted model gives background cells salient codes near 0.
        """
        x = batch[f"x_{source}"]
        encoder = self.background_encoder if kind == "background" else self.salient_encoder
        loc, scale = encoder(x)
        if sample:
            return loc + scale * torch.randn_like(loc)
        return loc
