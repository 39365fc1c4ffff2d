"""Evaluation on an AnnData: leakage of the latents and posterior predictive checks.

The computations live in :mod:`pyro_compare.metrics`; these functions find their inputs in
the AnnData (``obsm`` keys, ``obs`` labels, the data settings of a fit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..data.comparative import ComparativeData
from ..data.validation import DataValidationError
from ..models.base import ComparativeModel
from ._anndata import align_to_model, fit_name, record, resolve_data

__all__ = ["knn_leakage", "posterior_predictive_check", "ppc_statistics"]


def ppc_statistics(observed_ng, replicated_sng, var_names: Sequence[str] | None = None):
    """Per-gene PPC statistics of observed and replicated arrays.

    The same function as :func:`pyro_compare.metrics.perturbation.ppc_statistics` (one
    implementation), here for the arrays of a custom :class:`pyro.infer.Predictive` call.
    """
    from ..metrics.perturbation import ppc_statistics as _ppc_statistics

    return _ppc_statistics(observed_ng, replicated_sng, var_names)


def posterior_predictive_check(
    adata: ad.AnnData,
    model: ComparativeModel,
    data: ComparativeData | None = None,
    *,
    key: str | None = None,
    split: str | None = None,
    n_samples: int = 5,
    batch_size: int = 1024,
    key_added: str | None = None,
    **data_kwargs: Any,
) -> pd.DataFrame:
    """Observed vs replicated per-gene mean, variance and zero fraction of ``adata``'s cells.

    Calls :func:`pyro_compare.metrics.posterior_predictive_check` on the data of ``adata``
    (found as in :func:`~pyro_compare.tl.latents`) and records its summary
    (:func:`~pyro_compare.metrics.ppc_summary`) in ``uns["pyro_compare"][key_added]["ppc"]``
    (``key_added`` ``None``: the model's fit). ``pc.pl.ppc`` draws the result.

    Parameters
    ----------
    split
        ``None``: every cell; ``"validation"``: the held-out cells of the fit's split.

    Returns
    -------
    pandas.DataFrame
        Genes x the columns of :func:`pyro_compare.metrics.perturbation.ppc_statistics`.
    """
    from ..metrics.perturbation import posterior_predictive_check as _ppc
    from ..metrics.perturbation import ppc_summary

    data = resolve_data(adata, model, data, key, caller="posterior_predictive_check", **data_kwargs)
    data = align_to_model(model, data)
    stats = _ppc(model, data, split=split, n_samples=n_samples, batch_size=batch_size)
    name = key_added if key_added is not None else getattr(model, "key_added_", None)
    record(adata, fit_name(name), {"ppc": {**ppc_summary(stats), "n_samples": n_samples}})
    return stats


def knn_leakage(
    adata: ad.AnnData,
    obsm_keys: Sequence[str] = ("X_background", "X_salient"),
    label_key: str = "condition",
    groups_key: str | None = None,
    k: int = 15,
    seed: int = 0,
) -> pd.DataFrame:
    """How well each latent predicts ``obs[label_key]`` (kNN, cross-validated).

    A background latent that carries the condition *leaks*; the salient latent should carry
    it. Because composition (e.g. cell types) may differ between conditions, the accuracy
    *within* each group of ``groups_key`` is reported too (weighted mean over groups); see
    :func:`pyro_compare.metrics.knn_accuracy` and
    :func:`~pyro_compare.metrics.knn_accuracy_within`. Rows with NaN latents (cells not
    fitted) are dropped.

    Parameters
    ----------
    obsm_keys
        Latents to evaluate (default: those of the unnamed fit; a fit with ``key_added``
        wrote ``X_<key_added>_<kind>``).

    Returns
    -------
    pandas.DataFrame
        Index ``obsm_keys``; columns ``accuracy``, ``chance`` (majority-class frequency) and,
        with ``groups_key``, ``accuracy_within`` and ``chance_within``.
    """
    from ..metrics.identifiability import knn_accuracy, knn_accuracy_within

    missing = [key for key in obsm_keys if key not in adata.obsm]
    if missing:
        raise DataValidationError(
            f"adata.obsm has no {missing} (available: {list(adata.obsm)}). Run pc.tl.fit or "
            f"pc.tl.latents first; a fit with key_added=<name> writes X_<name>_<kind>."
        )
    for key, what in ((label_key, "label_key"), (groups_key, "groups_key")):
        if key is not None and key not in adata.obs:
            raise DataValidationError(
                f"{what} {key!r} is not a column of adata.obs (available: "
                f"{list(adata.obs.columns)[:20]})."
            )
    labels_all = adata.obs[label_key].astype(str).to_numpy()
    groups_all = None if groups_key is None else adata.obs[groups_key].astype(str).to_numpy()
    records = []
    for key in obsm_keys:
        emb = np.asarray(adata.obsm[key])
        ok = np.isfinite(emb).all(axis=1)
        emb, labels = emb[ok], labels_all[ok]
        rec = {
            "latent": key,
            "accuracy": knn_accuracy(emb, labels, k=k, seed=seed),
            "chance": pd.Series(labels).value_counts(normalize=True).iloc[0],
        }
        if groups_all is not None:
            groups = groups_all[ok]
            within = knn_accuracy_within(emb, labels, groups, k=k, seed=seed)
            rec["accuracy_within"] = within["weighted_mean"]
            chance, n = 0.0, 0
            for g in within:
                if g == "weighted_mean":
                    continue
                m = groups == g
                chance += m.sum() * pd.Series(labels[m]).value_counts(normalize=True).iloc[0]
                n += m.sum()
            rec["chance_within"] = chance / max(n, 1)
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("latent")
