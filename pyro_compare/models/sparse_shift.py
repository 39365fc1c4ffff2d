r"""sVAE+: sparse mechanism shift VAE (Lopez et al. 2023).

Each intervention :math:`k` changes the *prior* of a sparse set of latent dimensions: its
mean moves by a learned amount :math:`\gamma_k` on the dimensions selected by the mask
:math:`m_k`. Sparsity is a Beta-Bernoulli prior whose rate per latent dimension is shared
across interventions:

.. math::

    \pi_j &\sim \mathrm{Beta}(a, b), \quad j = 1..d
        &&\text{(global; probability that dimension } j \text{ is targeted)} \\
    m_{kj} &\sim \mathrm{Bernoulli}(\pi_j)
        &&\text{(``pyro.plate("perturbation", K)``)} \\
    z_n &\sim N\Big(\sum_k d_{nk}\, (m_k \odot \gamma_k),\ I_d\Big) \\
    x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n)),\ \theta\big)

:math:`\gamma_k` (``shift_loc``) are point estimates, as in sVAE+; the guide is
:math:`q(\pi_j) = \mathrm{Beta}`, :math:`q(m_{kj})` Bernoulli with a relaxed
straight-through estimator, and :math:`q(z_n \mid x_n)` an amortised Normal over the
*shifted* state (the encoder sees only the cell).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from ..nn.distributions import StraightThroughBernoulli
from .perturbation_base import PerturbationVAE

__all__ = ["SparseShiftVAE"]


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class SparseShiftVAE(PerturbationVAE):
    """sVAE+ (sparse mechanism shift of the latent prior).

    Parameters
    ----------
    n_features, n_perturbations, n_latent, hidden, likelihood
        As :class:`~pyro_compare.models.SAMSVAE`.
    sparsity_prior
        :math:`(a, b)` of the Beta prior of the per-dimension targeting rate :math:`\\pi_j`
        (mean :math:`a / (a + b)`).
    temperature
        Temperature of the relaxed straight-through mask samples.
    """

    shift_in_prior = True

    def __init__(
        self,
        n_features: int,
        n_perturbations: int,
        n_latent: int = 20,
        hidden: Sequence[int] = (400,),
        likelihood: str = "nb",
        sparsity_prior: tuple[float, float] = (1.0, 4.0),
        temperature: float = 0.5,
        global_lr_scale: float = 10.0,
        initial_mask_probability: float = 0.5,
    ) -> None:
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        sparsity_prior = (float(sparsity_prior[0]), float(sparsity_prior[1]))
        if min(sparsity_prior) <= 0:
            raise ValueError("sparsity_prior must hold two positive numbers.")
        self.sparsity_prior = sparsity_prior
        self.temperature = float(temperature)
        self._build(
            n_features,
            n_perturbations,
            n_latent,
            hidden,
            likelihood,
            global_lr_scale=global_lr_scale,
        )
        k, d = self.n_perturbations, self.n_latent
        self._global_param("shift_loc", 0.1 * torch.randn(k, d))
        if not 0.0 < initial_mask_probability < 1.0:
            raise ValueError("initial_mask_probability must be in (0, 1).")
        p0 = float(initial_mask_probability)
        self._global_param("mask_logits", torch.full((k, d), math.log(p0 / (1 - p0))))
        # q(pi_j) = Beta(softplus(raw_a), softplus(raw_b)), initialised at the prior.
        a, b = sparsity_prior
        self._global_param("rate_a_unconstrained", torch.full((d,), _softplus_inverse(a)))
        self._global_param("rate_b_unconstrained", torch.full((d,), _softplus_inverse(b)))
        self._finish_init(locals())

    # ------------------------------------------------------------------ globals
    def model_globals(self) -> dict[str, torch.Tensor]:
        k, d = self.n_perturbations, self.n_latent
        a, b = self.sparsity_prior
        zero = self._zeros(d)
        rate = pyro.sample("rate", dist.Beta(zero + a, zero + b).to_event(1))
        with pyro.plate("perturbation", k):
            # rate is (d,), or (particles, 1, d) under vectorised particles: the plate
            # broadcasts it over the K perturbations.
            mask = pyro.sample("mask", dist.Bernoulli(probs=rate.unsqueeze(-2)).to_event(1))
        return {"rate": rate, "mask": mask}

    def guide_globals(self) -> dict[str, torch.Tensor]:
        a = F.softplus(self.global_param("rate_a_unconstrained")) + 1e-3
        b = F.softplus(self.global_param("rate_b_unconstrained")) + 1e-3
        rate = pyro.sample("rate", dist.Beta(a, b).to_event(1))
        with pyro.plate("perturbation", self.n_perturbations):
            mask = pyro.sample(
                "mask",
                StraightThroughBernoulli(
                    self.global_param("mask_logits"), self.temperature
                ).to_event(1),
            )
        return {"rate": rate, "mask": mask}

    def mean_globals(self) -> dict[str, torch.Tensor]:
        return {"mask": torch.sigmoid(self.global_param("mask_logits"))}

    def effect_matrix(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`m_k \odot \gamma_k`, K x d."""
        return g["mask"] * self.global_param("shift_loc")

    @torch.no_grad()
    def mask_probabilities(self) -> torch.Tensor:
        """q(m_kj = 1), K x d."""
        return torch.sigmoid(self.global_param("mask_logits")).detach().clone()
