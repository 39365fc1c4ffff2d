r"""Count distributions tuned for sparse single-cell data.

The negative binomial log-density with mean :math:`\mu` and inverse dispersion
:math:`\theta` (``logits`` :math:`\ell = \log\mu - \log\theta`) is

.. math::

    \log NB(x \mid \mu, \theta)
      = \underbrace{\log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)}_{= 0
        \text{ when } x = 0}
        \; - (\theta + x)\,\mathrm{softplus}(\ell) + x\,\ell .

Single-cell count matrices are mostly zeros (about 95% in the Kang PBMC data), so the three
log-gamma terms, the costly part, are evaluated on the non-zero entries only; the result is
the same as :class:`torch.distributions.NegativeBinomial` (tested), about twice as fast.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F

__all__ = ["SparseNegativeBinomial", "nb_log_prob"]


def nb_log_prob(x: torch.Tensor, theta: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Elementwise NB log-density, log-gamma terms on the non-zero counts only.

    ``x``, ``theta`` and ``logits`` broadcast against each other; the result has their
    broadcast shape.
    """
    shape = torch.broadcast_shapes(x.shape, theta.shape, logits.shape)
    lp = x * logits - (theta + x) * F.softplus(logits)
    if lp.shape != shape:
        lp = lp.expand(shape)
    idx = x.expand(shape).nonzero(as_tuple=True)
    x_nz = x.expand(shape)[idx]
    theta_nz = theta.expand(shape)[idx]
    gamma_terms = torch.lgamma(x_nz + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(x_nz + 1)
    return lp.index_put(idx, gamma_terms, accumulate=True)


class SparseNegativeBinomial(dist.NegativeBinomial):
    """:class:`pyro.distributions.NegativeBinomial` (``total_count`` = theta, ``logits``) whose
    ``log_prob`` skips the log-gamma terms of zero counts (see :func:`nb_log_prob`)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return nb_log_prob(value, self.total_count, self.logits)
