"""Amortised Gaussian encoders q(z | x)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MLP

__all__ = ["GaussianEncoder"]


class GaussianEncoder(nn.Module):
    r"""``x_n -> (loc_n, scale_n)`` of a diagonal Normal :math:`q(z_n \mid x_n)`.

    Counts are fed as :math:`\log(1 + x)` (``log_input=True``), the usual variance
    stabilisation; ``n_context`` extra inputs (e.g. a perturbation shift or a design
    vector) are concatenated to the transformed input.

    ``scale = softplus(raw) + min_scale`` keeps the posterior scale away from zero.

    The first layer is affine, :math:`W [x; c] + b = W_x x + W_c c + b`, and is evaluated
    in that split form: under vectorised ELBO particles the context (e.g. a sampled shift,
    ``(particles, cells, c)``) carries a particle dimension that the cells ``(cells, genes)``
    do not, so :math:`W_x x` is computed once instead of once per particle (the genes
    dominate the encoder's cost). The parameters are those of one ``Linear`` on the
    concatenation.
    """

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        hidden: Sequence[int] = (128,),
        log_input: bool = True,
        n_context: int = 0,
        min_scale: float = 1e-4,
        layer_norm: bool = True,
    ) -> None:
        super().__init__()
        self.log_input = log_input
        self.n_latent = n_latent
        self.min_scale = min_scale
        self.net = MLP(n_features + n_context, hidden, 2 * n_latent, layer_norm=layer_norm)

    def forward(
        self, x_ng: torch.Tensor, context_nc: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.log1p(x_ng) if self.log_input else x_ng
        if context_nc is None:
            out = self.net(h)
        else:
            first = self.net[0]
            n_x = h.shape[-1]
            pre = F.linear(h, first.weight[:, :n_x], first.bias) + F.linear(
                context_nc, first.weight[:, n_x:]
            )
            out = pre
            for layer in list(self.net)[1:]:
                out = layer(out)
        loc_nd, raw_nd = out.split(self.n_latent, dim=-1)
        return loc_nd, F.softplus(raw_nd) + self.min_scale
