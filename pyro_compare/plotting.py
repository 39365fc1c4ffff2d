"""Figures a biologist expects: per-source loss curves, latent scatters, multiplier traces."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["loss_curves", "latent_scatter", "objective_traces"]

_SOURCES = ("background", "target", "global")


def loss_curves(history: pd.DataFrame, ax=None, sources: Sequence[str] = _SOURCES):
    """Per-source training (solid) and validation (dashed) negative ELBO per cell by epoch.

    ``history`` is what :func:`pyro_compare.infer.fit` returns.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    colors = dict(zip(_SOURCES, ("tab:blue", "tab:orange", "tab:gray")))
    for s in sources:
        for split, style in (("train", "-"), ("validation", "--")):
            col = f"{split}_{s}"
            if col in history:
                ax.plot(history["epoch"], history[col], style, color=colors.get(s), label=col)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per cell")
    ax.set_title("loss per source")
    ax.legend(fontsize=7)
    return ax


def objective_traces(history: pd.DataFrame, keys: Sequence[str] | None = None, axes=None):
    """Traces of objective logs (penalty, lambda, MGDA weights) by epoch."""
    if keys is None:
        keys = [
            k
            for k in history.columns
            if k == "penalty" or k == "lambda" or k.startswith("weight_") or k.startswith("penalty")
        ]
    keys = list(keys)
    if not keys:
        raise ValueError("the history holds no objective logs (penalty, lambda, weight_*).")
    if axes is None:
        _, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3), squeeze=False)
        axes = axes[0]
    for ax, k in zip(axes, keys):
        ax.plot(history["epoch"], history[k])
        ax.set_xlabel("epoch")
        ax.set_title(k)
    return axes


def latent_scatter(
    latent: np.ndarray,
    color: np.ndarray | pd.Series,
    ax=None,
    title: str = "",
    dims: tuple[int, int] = (0, 1),
    cmap: str = "viridis",
    s: float = 4.0,
):
    """Scatter of two latent dimensions coloured by a continuous or categorical value."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    latent = np.asarray(latent)
    color = np.asarray(color)
    x, y = latent[:, dims[0]], latent[:, dims[1]] if latent.shape[1] > 1 else np.zeros(len(latent))
    if color.dtype.kind in "fiu":
        sc = ax.scatter(x, y, c=color, s=s, cmap=cmap, linewidths=0)
        plt.colorbar(sc, ax=ax, fraction=0.046)
    else:
        for i, cat in enumerate(pd.unique(color)):
            m = color == cat
            ax.scatter(x[m], y[m], s=s, label=str(cat), color=plt.cm.tab10(i % 10), linewidths=0)
        ax.legend(fontsize=7, markerscale=3)
    ax.set_xlabel(f"dim {dims[0]}")
    ax.set_ylabel(f"dim {dims[1]}")
    ax.set_title(title)
    return ax
