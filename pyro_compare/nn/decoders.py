"""Decoders that turn latents into observation distributions.

``ObservationDecoder(z) -> p(x | z, l)`` with a ReLU MLP ``f`` and a likelihood head:

* ``nb``:       x_ng ~ NB(mean = l_n softmax(f(z_n))_g, inverse dispersion theta_g)
* ``zinb``:     NB as above with a zero-inflation gate sigmoid(f_gate(z_n))_g
* ``poisson``:  x_ng ~ Poisson(l_n softmax(f(z_n))_g)
* ``gaussian``: x_ng ~ N(f(z_n)_g, sigma_g^2)        (continuous data; no library size)

``theta_g`` and ``sigma_g`` are gene-wise parameters (point estimates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .distributions import SparseNegativeBinomial
from .mlp import MLP

__all__ = ["COUNT_LIKELIHOODS", "LIKELIHOODS", "ObservationDecoder"]

COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")
LIKELIHOODS = (*COUNT_LIKELIHOODS, "gaussian")


class ObservationDecoder(nn.Module):
    """ReLU-MLP decoder with a count (NB / ZINB / Poisson) or Gaussian head."""

    def __init__(
        self,
        n_latent: int,
        n_features: int,
        hidden: Sequence[int] = (128,),
        likelihood: str = "nb",
        activation: str = "relu",
        initial_inverse_dispersion: float = 10.0,
    ) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; use one of {LIKELIHOODS}.")
        self.likelihood = likelihood
        self.n_features = n_features
        n_out = 2 * n_features if likelihood == "zinb" else n_features
        self.net = MLP(n_latent, hidden, n_out, activation=activation)
        if likelihood in ("nb", "zinb"):
            self.log_theta_g = nn.Parameter(
                torch.full((n_features,), math.log(initial_inverse_dispersion))
            )
        if likelihood == "gaussian":
            self.log_scale_g = nn.Parameter(torch.zeros(n_features))

    @property
    def is_count(self) -> bool:
        return self.likelihood in COUNT_LIKELIHOODS

    def _split(self, z_nd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(z_nd)
        if self.likelihood == "zinb":
            return out[..., : self.n_features], out[..., self.n_features :]
        return out, None

    def mean(self, z_nd: torch.Tensor, library_n: torch.Tensor | None = None) -> torch.Tensor:
        """Observation mean: ``l_n softmax(f(z))`` (gene proportions if ``library_n`` is None)
        for counts, ``f(z)`` for the Gaussian head. Differentiable in ``z`` (for geometry)."""
        f_ng, gate_ng = self._split(z_nd)
        if not self.is_count:
            return f_ng
        mu_ng = torch.softmax(f_ng, dim=-1)
        if library_n is not None:
            mu_ng = library_n.unsqueeze(-1) * mu_ng
        if gate_ng is not None:
            mu_ng = mu_ng * torch.sigmoid(-gate_ng)
        return mu_ng

    @property
    def inverse_dispersion(self) -> torch.Tensor | None:
        """theta_g for NB / ZINB."""
        return self.log_theta_g.exp() if hasattr(self, "log_theta_g") else None

    def make_dist(
        self, z_nd: torch.Tensor, library_n: torch.Tensor | None = None
    ) -> dist.TorchDistribution:
        """p(x_n | z_n, l_n) with batch shape (..., n, genes) (call ``.to_event(1)``)."""
        f_ng, gate_ng = self._split(z_nd)
        if self.likelihood == "gaussian":
            return dist.Normal(f_ng, self.log_scale_g.exp())
        if library_n is None:
            raise ValueError("count likelihoods need the library sizes library_n.")
        log_mu_ng = F.log_softmax(f_ng, dim=-1) + library_n.log().unsqueeze(-1)
        if self.likelihood == "poisson":
            return dist.Poisson(log_mu_ng.exp())
        log_theta_g = self.log_theta_g
        # NB(total_count=theta, logits) has mean theta * exp(logits).
        logits_ng = log_mu_ng - log_theta_g
        theta_g = log_theta_g.exp()
        nb = SparseNegativeBinomial(total_count=theta_g, logits=logits_ng)
        if self.likelihood == "nb":
            return nb
        return dist.ZeroInflatedDistribution(nb, gate_logits=gate_ng)
