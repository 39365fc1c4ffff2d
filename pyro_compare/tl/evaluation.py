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
    r"""How well each latent predicts ``obs[label_key]`` (kNN, cross-validated).

    A background latent that carries the condition *leaks*; the salient latent should carry
    it. Because composition (e.g. cell types) may differ between conditions, a latent that
    knows the cell type and nothing else still predicts the condition better than chance;
    with ``groups_key`` the table separates that *composition* part from the condition
    information left *within* each group. Rows with NaN latents (cells not fitted) are
    dropped; every accuracy of a row is computed on the same cells.

    Notation: :math:`y_i` = ``obs[label_key]`` (the *condition*), :math:`g_i` =
    ``obs[groups_key]`` (the *label*, e.g. cell type), :math:`n` cells, :math:`n_g` of them
    in group :math:`g`, :math:`n_{g,c}` of those with condition :math:`c`. Cross-validated
    accuracies use the stratified folds of :func:`pyro_compare.metrics.knn_accuracy`
    (``StratifiedKFold(5, shuffle=True, random_state=seed)`` on :math:`y`, at most the
    size of the smallest class) and pool the held-out predictions,
    :math:`\frac1n \sum_i \mathbb 1[\hat y_i = y_i]`, each :math:`\hat y_i` from a
    classifier fitted on the other folds.

    Parameters
    ----------
    obsm_keys
        Latents to evaluate (default: those of the unnamed fit; a fit with ``key_added``
        wrote ``X_<key_added>_<kind>``).
    label_key
        Column of ``obs`` to predict (the condition).
    groups_key
        Column of ``obs`` with the label (e.g. cell type) whose composition may differ
        between conditions; ``None``: the overall columns only.
    k, seed
        Neighbours of every kNN classifier, seed of the folds.

    Returns
    -------
    pandas.DataFrame
        Index ``obsm_keys``; columns

        ``accuracy``
            kNN accuracy of :math:`y` from the latent
            (:func:`~pyro_compare.metrics.knn_accuracy`);
        ``chance``
            majority-class frequency :math:`\max_c n_c / n`;

        and, with ``groups_key``,

        ``accuracy_within``, ``chance_within``
            :func:`~pyro_compare.metrics.knn_accuracy_within`: kNN accuracy of :math:`y`
            cross-validated separately in each group with at least 10 cells and both
            conditions (folds of its own), weighted mean over those groups, and the
            weighted mean of :math:`\max_c n_{g,c}/n_g` over the same groups;
        ``label_accuracy``
            kNN accuracy of :math:`g` from the latent (e.g. cell-type accuracy: what a
            background latent should keep);
        ``condition_composition_floor``
            cross-validated accuracy of a classifier that sees only the label: in each fold
            :math:`\hat y_i = \arg\max_c \#\{j \in \text{train}: g_j = g_i, y_j = c\}`,
            the majority condition of cell :math:`i`'s label among the training cells (the
            training majority if the label is absent from them). Compare with
            ``accuracy``: a latent that encodes the label and nothing about the condition
            beyond it gets ``accuracy`` :math:`\approx` ``condition_composition_floor``;
        ``condition_within_label``
            cross-validated kNN accuracy of :math:`y` with the neighbours restricted to the
            training cells *of the same label*: :math:`\hat y_i` = majority of :math:`y`
            among the :math:`\min(k, n^{\text{train}}_{g_i})` nearest training cells
            :math:`j` with :math:`g_j = g_i` (the floor's prediction for a label absent
            from the training folds). Same folds and all cells, so it is directly
            comparable with ``accuracy`` and ``condition_composition_floor``;
        ``condition_within_label_chance``
            :math:`\sum_g \frac{n_g}{n} \max_c \frac{n_{g,c}}{n_g}`, the accuracy of the
            label-only classifier (in-sample): what ``condition_within_label`` reaches
            when the latent holds no condition information beyond the label. The leakage
            beyond composition is ``condition_within_label - condition_within_label_chance``
            (about 0 for a perfect background latent; up to
            ``1 - condition_within_label_chance`` for a latent that encodes the condition).
    """
    from ..metrics.identifiability import (
        _knn_composition_cv,
        knn_accuracy,
        knn_accuracy_within,
    )

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
            try:
                rec["label_accuracy"] = knn_accuracy(emb, groups, k=k, seed=seed)
            except ValueError:  # one label only, or a label with a single cell
                rec["label_accuracy"] = float("nan")
            beyond = _knn_composition_cv(emb, labels, groups, k=k, seed=seed)
            rec["condition_composition_floor"] = beyond["composition_floor"]
            rec["condition_within_label"] = beyond["within_group"]
            rec["condition_within_label_chance"] = beyond["within_group_chance"]
        records.append(rec)
    return pd.DataFrame.from_records(records).set_index("latent")
