r"""SAMS-VAE: Sparse Additive Mechanism Shift VAE (Bereket & Karaletsos 2023).

Generative model, for perturbations :math:`k = 1..K` and cells :math:`n` with multi-hot
design :math:`d_n` (combinations have several ones):

.. math::

    m_k &\sim \mathrm{Bernoulli}(p)^{d}, \qquad e_k \sim N(0, I_d)
        &&\text{(globals, ``pyro.plate("perturbation", K)``)} \\
    z^{\text{basal}}_n &\sim N(0, I_d), \qquad
        z_n = z^{\text{basal}}_n + \sum_k d_{nk}\, (m_k \odot e_k) \\
    x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n)),\ \theta\big)

The sparse masks :math:`m_k` select the latent dimensions a perturbation acts on; effects
compose additively, which is what lets the model predict unseen combinations.

Guides (``guide=``):

* ``"mean_field"``:
  :math:`q(m_k) = \mathrm{Bernoulli}(\sigma(\lambda_k))` sampled with a relaxed
  straight-through estimator (temperature :math:`\tau`), :math:`q(e_k) = N(\mu_k,
  \sigma_k^2)`, :math:`q(z^{\text{basal}}_n \mid x_n)` an amortised Normal;
* ``"correlated"``: the same globals, but the basal encoder also sees the sampled shift
  :math:`\delta_n = \sum_k d_{nk} (m_k \odot e_k)`:
  :math:`q(z^{\text{basal}}_n \mid x_n, \delta_n) = N(h_\mu(x_n, \delta_n) - \delta_n,
  h_\sigma(x_n, \delta_n))`, i.e. it encodes the full state and removes the shift,
  so the basal posterior is coupled to the global sample.
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

__all__ = ["SAMSVAE"]

_SOFTPLUS_INV_01 = math.log(math.expm1(0.1))  # initial posterior scale 0.1 of the effects


class SAMSVAE(PerturbationVAE):
    """Sparse Additive Mechanism Shift VAE.

    Parameters
    ----------
    n_features
        Number of genes G.
    n_perturbations
        Number of single perturbations K (columns of ``data.design``).
    n_latent
        Latent dimension d.
    hidden
        Hidden widths of the encoder and the (ReLU) decoder.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"gaussian"``.
    guide
        ``"correlated"`` (default) or ``"mean_field"`` (see the module docstring). The
        correlated guide is clearly better on simulated sparse-shift screens (mask recovery
        AUROC 0.94 vs 0.69, unseen-combination ATE Pearson 0.91 vs 0.75;
        ``experiments/perturbation_simulated.py``): with stochastic masks, the shift the
        mean-field encoder removes (the posterior mean) differs from the sampled one.
    mask_prior
        Prior probability :math:`p` that a perturbation targets a latent dimension.
    temperature
        Temperature :math:`\\tau` of the relaxed straight-through mask samples.
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
        guide: str = "correlated",
        mask_prior: float = 0.1,
        temperature: float = 0.5,
        effect_prior_scale: float = 1.0,
        global_lr_scale: float = 10.0,
        initial_mask_probability: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_prior < 1.0:
            raise ValueError("mask_prior must be in (0, 1).")
        hidden = tuple(int(h) for h in hidden)
        self.mask_prior = float(mask_prior)
        self.temperature = float(temperature)
        self.effect_prior_scale = float(effect_prior_scale)
        self._build(
            n_features,
            n_perturbations,
            n_latent,
            hidden,
            likelihood,
            guide=guide,
            global_lr_scale=global_lr_scale,
        )
        k, d = self.n_perturbations, self.n_latent
        # q(m_k) starts mostly on, so that the sampled and the expected shifts agree early
        # (the mean-field guide removes the expected shift) and the prior prunes unused
        # dimensions; q(e_k): small random means break the symmetry between dimensions.
        if not 0.0 < initial_mask_probability < 1.0:
            raise ValueError("initial_mask_probability must be in (0, 1).")
        p0 = float(initial_mask_probability)
        self._global_param("mask_logits", torch.full((k, d), math.log(p0 / (1 - p0))))
        self._global_param("effect_loc", 0.1 * torch.randn(k, d))
        self._global_param("effect_scale_unconstrained", torch.full((k, d), _SOFTPLUS_INV_01))
        self._finish_init(locals())

    # ------------------------------------------------------------------ globals
    def model_globals(self) -> dict[str, torch.Tensor]:
        k, d = self.n_perturbations, self.n_latent
        with pyro.plate("perturbation", k):
            mask = pyro.sample(
                "mask",
                dist.Bernoulli(probs=self._zeros(d) + self.mask_prior).expand([k, d]).to_event(1),
            )
            effect = pyro.sample(
                "effect",
                dist.Normal(self._zeros(d), self.effect_prior_scale).expand([k, d]).to_event(1),
            )
        return {"mask": mask, "effect": effect}

    def guide_globals(self) -> dict[str, torch.Tensor]:
        with pyro.plate("perturbation", self.n_perturbations):
            mask = pyro.sample(
                "mask",
                StraightThroughBernoulli(
                    self.global_param("mask_logits"), self.temperature
                ).to_event(1),
            )
            effect = pyro.sample(
                "effect",
                dist.Normal(
                    self.global_param("effect_loc"),
                    F.softplus(self.global_param("effect_scale_unconstrained")),
                ).to_event(1),
            )
        return {"mask": mask, "effect": effect}

    def mean_globals(self) -> dict[str, torch.Tensor]:
        return {
            "mask": torch.sigmoid(self.global_param("mask_logits")),
            "effect": self.global_param("effect_loc"),
        }

    def effect_matrix(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`m_k \odot e_k`, K x d."""
        return g["mask"] * g["effect"]

    @torch.no_grad()
    def mask_probabilities(self) -> torch.Tensor:
        """q(m_kj = 1), K x d."""
        return torch.sigmoid(self.global_param("mask_logits")).detach().clone()
