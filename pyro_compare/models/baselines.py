r"""Baselines for the perturbation models: CPA-style additive shifts and a conditional VAE.

``AdditiveShiftVAE`` (CPA-style, Lotfollahi et al. 2023, without the adversary): every
perturbation shifts *all* latent dimensions, no mask:

.. math::

    e_k \sim N(0, I_d) \;\text{(``pyro.plate("perturbation", K)``)}, \quad
    z^{\text{basal}}_n \sim N(0, I_d), \quad
    z_n = z^{\text{basal}}_n + \sum_k d_{nk} e_k, \quad
    x_n \sim NB\big(l_n\, \mathrm{softmax}(f(z_n)), \theta\big)

with :math:`q(e_k) = N(\mu_k, \sigma_k^2)` and :math:`q(z^{\text{basal}}_n \mid x_n)`.

``ConditionalVAE``: no latent shift; the decoder (and the encoder) see the design vector:

.. math::

    z_n \sim N(0, I_d), \quad x_n \sim NB\big(l_n\, \mathrm{softmax}(f([z_n, d_n])), \theta\big),
    \quad q(z_n \mid x_n, d_n).

A combination is then the input ``[z, d_A + d_B]``, a design the decoder never saw in
training: the baseline for unseen combinations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from ..nn.mlp import cat_broadcast
from .perturbation_base import PerturbationVAE

__all__ = ["AdditiveShiftVAE", "ConditionalVAE"]


class AdditiveShiftVAE(PerturbationVAE):
    """CPA-style VAE: dense additive latent shifts per perturbation (no masks).

    Parameters
    ----------
    n_features, n_perturbations, n_latent, hidden, likelihood
        As :class:`~pyro_compare.models.SAMSVAE`.
    effect_prior_scale
        Scale of the Normal prior of the effects :math:`e_k`.
    """

    def __init__(
        self,
        n_features: int,
        n_perturbations: int,
        n_latent: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str = "nb",
        effect_prior_scale: float = 1.0,
        global_lr_scale: float = 10.0,
        guide: str = "mean_field",
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self.effect_prior_scale = float(effect_prior_scale)
        self._build(
            n_features,
            n_perturbations,
            n_latent,
            hidden,
            likelihood,
            global_lr_scale=global_lr_scale,
            guide=guide,
        )
        k, d = self.n_perturbations, self.n_latent
        self._global_param("effect_loc", 0.1 * torch.randn(k, d))
        self._global_param(
            "effect_scale_unconstrained", torch.full((k, d), math.log(math.expm1(0.1)))
        )
        self._finish_init(locals())

    def model_globals(self) -> dict[str, torch.Tensor]:
        k, d = self.n_perturbations, self.n_latent
        with pyro.plate("perturbation", k):
            effect = pyro.sample(
                "effect",
                dist.Normal(self._zeros(d), self.effect_prior_scale).expand([k, d]).to_event(1),
            )
        return {"effect": effect}

    def guide_globals(self) -> dict[str, torch.Tensor]:
        with pyro.plate("perturbation", self.n_perturbations):
            effect = pyro.sample(
                "effect",
                dist.Normal(
                    self.global_param("effect_loc"),
                    F.softplus(self.global_param("effect_scale_unconstrained")),
                ).to_event(1),
            )
        return {"effect": effect}

    def mean_globals(self) -> dict[str, torch.Tensor]:
        return {"effect": self.global_param("effect_loc")}

    def effect_matrix(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        return g["effect"]


class ConditionalVAE(PerturbationVAE):
    """Conditional VAE: encoder and decoder see the multi-hot design; no global latents.

    Parameters
    ----------
    n_features, n_perturbations, n_latent, hidden, likelihood
        As :class:`~pyro_compare.models.SAMSVAE`.
    """

    def __init__(
        self,
        n_features: int,
        n_perturbations: int,
        n_latent: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str = "nb",
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        self._build(
            n_features,
            n_perturbations,
            n_latent,
            hidden,
            likelihood,
            encoder_context=n_perturbations,
            decoder_context=n_perturbations,
        )
        self._finish_init(locals())

    def effect_matrix(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._zeros(self.n_perturbations, self.n_latent)

    def encode_site(
        self, x_ng: torch.Tensor, design_nk: torch.Tensor, shift_nd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x_ng, design_nk)

    def decoder_input(self, z_nd: torch.Tensor, design_nk: torch.Tensor) -> torch.Tensor:
        return cat_broadcast(z_nd, design_nk)
