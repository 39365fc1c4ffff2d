"""ReLU MLPs: piecewise-affine maps, the identifiable decoder class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "cat_broadcast"]

_ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "softplus": nn.Softplus}


class MLP(nn.Sequential):
    """``Linear -> [LayerNorm] -> activation -> ... -> Linear``.

    With ``activation="relu"`` or ``"leaky_relu"`` the map is piecewise affine, the class
    for which comparative / mixture-prior VAEs are identifiable (Kivva et al. 2022;
    Lopez et al. 2024).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
        layer_norm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; use one of {sorted(_ACTIVATIONS)}"
            )
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers.append(nn.Linear(a, b))
            if layer_norm:
                layers.append(nn.LayerNorm(b, elementwise_affine=False))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Sequential
        return super().forward(x)


def cat_broadcast(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting the leading (batch) ones,
    e.g. ``x_ng`` (cells, genes) with a shift ``(particles, cells, d)`` under vectorised
    ELBO particles."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*batch, t.shape[-1]) for t in tensors], dim=-1)
