"""Figures a biologist expects: per-source loss curves, constraint and multiplier traces,
latent scatters, UMAPs of each latent (via scanpy), ATE scatters and posterior predictive
checks.

matplotlib (and scanpy, for UMAPs) are imported when a figure is drawn, not with the
package, and the matplotlib backend is left to the user (``MPLBACKEND``, ``%matplotlib``,
``matplotlib.use``): matplotlib picks a non-interactive one on a machine without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ate_scatter",
    "constraint_trace",
    "latent_scatter",
    "latent_umap",
    "loss_curves",
    "objective_traces",
    "ppc",
]

_SOURCES = ("background", "target", "global")


def _pyplot() -> Any:
    """``matplotlib.pyplot``, imported on first use (keeps ``import pyro_compare`` light)."""
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: pd.DataFrame, ax=None, sources: Sequence[str] = _SOURCES):
    """Per-source training (solid) and validation (dashed) negative ELBO per cell by epoch.

    ``history`` is what :func:`pyro_compare.infer.fit` returns.
    """
    plt = _pyplot()
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
    plt = _pyplot()
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


def constraint_trace(
    history: pd.DataFrame, name: str | None = None, epsilon: float | None = None, ax=None
):
    r"""A :class:`~pyro_compare.infer.Constrained` fit's constraint by epoch: the epoch mean of
    the minibatch penalty :math:`P` against :math:`\epsilon` (dashed), the multiplier
    :math:`\lambda` (right axis, log scale), the end-of-fit check of :math:`P` on all cells
    for the state the fit returned (a diamond at the last epoch, filled if it holds; the
    state is the best-validation epoch's unless ``history.attrs["selected"]`` says
    otherwise) and the feasibility epochs that check added (shaded).

    ``history`` is what :func:`pyro_compare.infer.fit` or :func:`pyro_compare.tl.history`
    returns; ``name`` is the ``Constrained``'s ``name`` (``None``: the unnamed one, log keys
    ``penalty`` and ``lambda``); ``epsilon`` defaults to the one in
    ``history.attrs["constraints"]``. Returns the left axis (the right one is its
    ``twin``).
    """
    plt = _pyplot()
    suffix = "" if name is None else f"_{name}"
    penalty_key, lambda_key = f"penalty{suffix}", f"lambda{suffix}"
    if penalty_key not in history or lambda_key not in history:
        have = [c for c in history.columns if c.startswith(("penalty", "lambda"))]
        raise ValueError(
            f"the history has no {penalty_key!r} / {lambda_key!r} columns (constraint logs: "
            f"{have}); it is not from a Constrained fit, or pass its name= ."
        )
    check = next(
        (c for c in history.attrs.get("constraints", []) if c["name"] == (name or "penalty")),
        None,
    )
    if epsilon is None and check is not None:
        epsilon = float(check["epsilon"])
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    epochs = history["epoch"].to_numpy()
    ax.plot(epochs, history[penalty_key], color="tab:red", label="penalty (minibatch mean)")
    if epsilon is not None:
        ax.axhline(epsilon, color="tab:red", linestyle="--", linewidth=1, label="epsilon")
    extra = int(history.attrs.get("feasibility_epochs", 0) or 0)
    if extra:
        ax.axvspan(epochs[-extra] - 0.5, epochs[-1] + 0.5, color="0.9", label="feasibility epochs")
    if check is not None:
        ax.plot(
            [epochs[-1]], [check["value"]], marker="D", linestyle="none", color="tab:red",
            markerfacecolor="tab:red" if check["holds"] else "white",
            label="all cells, returned model",
        )  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("penalty")
    ax.set_title(f"constraint {penalty_key}")
    twin = ax.twinx()
    twin.plot(epochs, history[lambda_key], color="tab:gray", label="lambda")
    twin.set_yscale("log")
    twin.set_ylabel("lambda")
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7)
    return ax


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
    plt = _pyplot()
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


def latent_umap(
    adata,
    obsm_keys: Sequence[str] = ("X_background", "X_salient"),
    color: str | Sequence[str] = ("condition",),
    n_neighbors: int = 15,
    seed: int = 0,
    key_added: str | None = "umap",
    axes=None,
    **pl_kwargs,
):
    """UMAP of each latent representation, coloured by ``obs`` keys (one row per latent).

    For each ``obsm`` key, a light copy of ``adata`` (``obs`` and that latent only) goes
    through ``sc.pp.neighbors(use_rep=key)``, ``sc.tl.umap`` and ``sc.pl.umap``, so the
    user's neighbour graph and ``X_umap`` are left alone. With ``key_added`` the UMAP
    coordinates are stored as ``adata.obsm[f"{key}_{key_added}"]`` (e.g.
    ``X_background_umap``). Cells with NaN latents (not fitted) are left out.

    Parameters
    ----------
    obsm_keys
        Latent representations to embed.
    color
        ``obs`` column(s) to colour by (one column of panels each).
    n_neighbors, seed
        Passed to ``sc.pp.neighbors`` / ``sc.tl.umap``.
    **pl_kwargs
        Passed to ``sc.pl.umap`` (e.g. ``size``, ``palette``).

    Returns
    -------
    numpy.ndarray
        The axes, shape (len(obsm_keys), len(color)).
    """
    plt = _pyplot()
    import anndata as ad
    import scanpy as sc

    keys = [obsm_keys] if isinstance(obsm_keys, str) else list(obsm_keys)
    colors = [color] if isinstance(color, str) else list(color)
    if axes is None:
        _, axes = plt.subplots(
            len(keys), len(colors), figsize=(4.2 * len(colors), 3.6 * len(keys)), squeeze=False
        )
    axes = np.asarray(axes).reshape(len(keys), len(colors))
    for i, key in enumerate(keys):
        if key not in adata.obsm:
            raise KeyError(f"adata.obsm has no {key!r}; available: {list(adata.obsm)}.")
        latent = np.asarray(adata.obsm[key], dtype=np.float32)
        ok = np.isfinite(latent).all(axis=1)
        light = ad.AnnData(obs=adata.obs.loc[ok, colors].copy(), obsm={key: latent[ok]})
        sc.pp.neighbors(light, n_neighbors=n_neighbors, use_rep=key, random_state=seed)
        sc.tl.umap(light, random_state=seed)
        if key_added is not None:
            full = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)
            full[ok] = light.obsm["X_umap"]
            adata.obsm[f"{key}_{key_added}"] = full
        for j, c in enumerate(colors):
            sc.pl.umap(light, color=c, ax=axes[i, j], show=False, **pl_kwargs)
            axes[i, j].set_title(f"{key.removeprefix('X_')}: {c}")
    return axes


def ate_scatter(
    predicted,
    observed,
    gene_names: Sequence[str] | None = None,
    n_labels: int = 10,
    ax=None,
    title: str = "ATE",
    s: float = 6.0,
):
    r"""Predicted against observed average treatment effects, one point per gene.

    The top ``n_labels`` genes by :math:`|\text{observed}|` are labelled; the title gives the
    Pearson correlation over all genes and the identity line is drawn.
    """
    plt = _pyplot()
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    observed = np.asarray(observed, dtype=np.float64).ravel()
    if predicted.shape != observed.shape:
        raise ValueError(f"predicted {predicted.shape} and observed {observed.shape} differ.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(observed, predicted, s=s, color="tab:blue", linewidths=0, alpha=0.7)
    lo = float(np.nanmin([observed.min(), predicted.min()]))
    hi = float(np.nanmax([observed.max(), predicted.max()]))
    ax.plot([lo, hi], [lo, hi], "--", color="gray", lw=1)
    ax.axhline(0, color="lightgray", lw=0.5)
    ax.axvline(0, color="lightgray", lw=0.5)
    if gene_names is not None and n_labels > 0:
        names = np.asarray(gene_names).astype(str)
        for g in np.argsort(-np.abs(observed))[:n_labels]:
            ax.annotate(names[g], (observed[g], predicted[g]), fontsize=7)
    r = np.corrcoef(observed, predicted)[0, 1] if observed.size > 1 else float("nan")
    ax.set_xlabel("observed")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title} (Pearson r = {r:.2f})")
    return ax


def ppc(stats: pd.DataFrame, axes=None, title: str = "", s: float = 5.0):
    """Posterior predictive check: observed against predicted per-gene statistics.

    ``stats`` is :func:`pyro_compare.tools.ppc_statistics` (columns ``observed_mean``,
    ``predicted_mean``, ``observed_var``, ``predicted_var``, ``observed_zero``,
    ``predicted_zero``). Three panels: mean and variance (log-log) and zero fraction, each
    with the identity line; points on the line mean the model reproduces that statistic.
    """
    plt = _pyplot()
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = (
        ("mean", "per-gene mean", True),
        ("var", "per-gene variance", True),
        ("zero", "zero fraction", False),
    )
    for ax, (name, label, log) in zip(axes, panels):
        obs = stats[f"observed_{name}"].to_numpy(dtype=np.float64)
        pred = stats[f"predicted_{name}"].to_numpy(dtype=np.float64)
        if log:
            keep = (obs > 0) & (pred > 0)
            obs, pred = obs[keep], pred[keep]
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.scatter(obs, pred, s=s, linewidths=0, alpha=0.7)
        if obs.size:
            lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
            ax.plot([lo, hi], [lo, hi], "--", color="gray", lw=1)
        ax.set_xlabel(f"observed {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(f"{title} {label}".strip())
    return axes
