"""Fit a comparative model on an AnnData and write its latents (``pc.tl.fit``, ``latents``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..data.comparative import ComparativeData
from ..models.base import ComparativeModel
from ._anndata import (
    MODEL_KEY_ATTR,
    MODEL_SETTINGS_ATTR,
    UNS_KEY,
    align_to_model,
    data_settings,
    fit_name,
    objective_settings,
    obsm_key,
    record,
    resolve_data,
    rows_in,
    scatter_rows,
    uns_value,
)

__all__ = ["comparative_data", "fit", "history", "latents", "MODEL_NAMES"]

#: Model classes :func:`fit` builds by name (``model="SAMSVAE"``); the perturbation models
#: need ``perturbation_key``.
MODEL_NAMES = (
    "ContrastiveVAE",
    "SAMSVAE",
    "SparseShiftVAE",
    "AdditiveShiftVAE",
    "ConditionalVAE",
)


def comparative_data(
    adata: ad.AnnData,
    condition_key: str | None = None,
    background: str | None = None,
    *,
    key: str | None = None,
    **kwargs: Any,
) -> ComparativeData:
    """:class:`~pyro_compare.data.ComparativeData` for ``adata``, from settings or a fit's.

    With ``key``, the settings recorded by :func:`fit` in
    ``adata.uns["pyro_compare"][key]["data"]`` (condition key, background value, layer,
    excluded values, ...) are reused, so the latents and predictions of a model fitted
    earlier line up with the same cells; explicit arguments override them.

    Parameters
    ----------
    condition_key, background, **kwargs
        Passed to :meth:`ComparativeData.from_anndata` (``layer``, ``exclude``, ``counts``,
        ``library_key``, ``perturbation_key``, ...).
    key
        Name of an earlier :func:`fit` on ``adata`` (its ``key_added``, or ``"default"``).
    """
    given = dict(kwargs)
    if condition_key is not None:
        given["condition_key"] = condition_key
    if background is not None:
        given["background"] = background
    return resolve_data(adata, None, None, key, caller="comparative_data", **given)


def _build_model(
    name: str, data: ComparativeData, likelihood: str, hidden: Sequence[int], kwargs: Mapping
) -> ComparativeModel:
    from .. import models

    lookup = {n.lower(): n for n in MODEL_NAMES}
    if name.lower() not in lookup:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)}.")
    klass = getattr(models, lookup[name.lower()])
    args: dict[str, Any] = {"hidden": tuple(hidden), "likelihood": likelihood, **kwargs}
    if issubclass(klass, models.PerturbationVAE):
        if data.design is None:
            raise ValueError(
                f"{klass.__name__} models perturbations: pass perturbation_key=<the obs column "
                f"naming each cell's perturbation(s)>."
            )
        args["n_perturbations"] = data.n_perturbations
    return klass(data.n_features, **args)


def fit(
    adata: ad.AnnData,
    model: ComparativeModel | str | None = None,
    condition_key: str = "condition",
    background: str = "control",
    *,
    layer: str | None = None,
    exclude: Sequence[str] = (),
    counts: bool | None = None,
    library_key: str | None = None,
    perturbation_key: str | None = None,
    objective: Any = None,
    key_added: str | None = None,
    n_background_latent: int = 10,
    n_salient_latent: int = 10,
    hidden: Sequence[int] = (128,),
    likelihood: str = "nb",
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    **fit_kwargs: Any,
) -> ComparativeModel:
    """Fit a comparative model on ``adata`` and write its latents and history into it.

    Builds :class:`~pyro_compare.data.ComparativeData` (cells whose ``obs[condition_key]``
    equals ``background`` are the background source, every other cell a target), fits with
    :func:`pyro_compare.infer.fit`, writes the latents with :func:`latents` and records in
    ``adata.uns["pyro_compare"][key_added or "default"]``:

    * ``"model"``: class and constructor arguments,
    * ``"data"``: the data settings (condition key, background value, layer, excluded
      values, counts, ...) and the number of cells per source,
    * ``"fit"``: the fit settings, ``"objective"``: the objective's settings,
    * ``"constraints"``: for a constrained objective, the end-of-fit check of each
      constraint on the full data (penalty, epsilon, value, holds, feasibility epochs;
      see :func:`pyro_compare.infer.fit`),
    * ``"history"``: one array per column of the history (per-source losses, penalties,
      multipliers) — :func:`history` turns it back into a DataFrame,
    * ``"obsm_keys"``: ``{kind: obsm key}`` of the latents written.

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layers[layer]`` (or continuous values with
        ``counts=False`` and ``likelihood="gaussian"``).
    model
        A :class:`~pyro_compare.models.ComparativeModel`, a model class name from
        :data:`MODEL_NAMES` (built for these data with ``hidden``, ``likelihood`` and
        ``model_kwargs``), or ``None``: a :class:`~pyro_compare.models.ContrastiveVAE` with
        ``n_background_latent``, ``n_salient_latent``, ``hidden`` and ``likelihood``.
    condition_key, background, layer, exclude, library_key, perturbation_key
        Passed to :meth:`ComparativeData.from_anndata`.
    counts
        Validate the data as raw counts; ``None``: ``True`` for the count likelihoods
        (``nb``, ``zinb``, ``poisson``), ``False`` for ``gaussian``.
    objective
        How per-source losses and penalties are combined; ``None``: the default objective
        of :func:`pyro_compare.infer.fit`.
    key_added
        Name of this fit. ``None``: latents go to ``obsm["X_<kind>"]`` and the record to
        ``uns["pyro_compare"]["default"]`` (the next unnamed fit overwrites both); a name
        writes ``obsm["X_<key_added>_<kind>"]`` and ``uns["pyro_compare"][key_added]``.
    progress
        Progress bar (terminal, Jupyter) or a line every few epochs (logs); passed to
        :func:`pyro_compare.infer.fit`.
    **fit_kwargs
        Passed to :func:`pyro_compare.infer.fit` (``max_epochs``, ``lr``, ``batch_size``,
        ``seed``, ``device``, ...).

    Returns
    -------
    ComparativeModel
        The fitted model, on the CPU also when fitted on another ``device``
        (``model.history_`` holds the history DataFrame).
    """
    from ..infer.fit import fit as infer_fit
    from ..nn.decoders import COUNT_LIKELIHOODS

    if counts is None:
        lik = getattr(model, "likelihood", likelihood) if not isinstance(model, str) else None
        counts = (lik or likelihood) in COUNT_LIKELIHOODS
    given = {
        "condition_key": condition_key,
        "background": background,
        "layer": layer,
        "exclude": list(exclude),
        "counts": counts,
        "library_key": library_key,
        "perturbation_key": perturbation_key,
    }
    data = ComparativeData.from_anndata(adata, **{k: v for k, v in given.items() if v is not None})
    if model is None:
        model = _build_model(
            "ContrastiveVAE",
            data,
            likelihood,
            hidden,
            {
                "n_background_latent": n_background_latent,
                "n_salient_latent": n_salient_latent,
                **(model_kwargs or {}),
            },
        )
    elif isinstance(model, str):
        model = _build_model(model, data, likelihood, hidden, model_kwargs or {})
    hist = infer_fit(model, data, objective=objective, progress=progress, **fit_kwargs)
    if fit_kwargs.get("device") is not None:
        model.cpu()  # latents and predictions below work on in-memory (CPU) AnnData arrays
    name = fit_name(key_added)
    settings = data_settings(data, **given)
    setattr(model, MODEL_KEY_ATTR, name)
    setattr(model, MODEL_SETTINGS_ATTR, settings)
    used = objective
    if used is None and hasattr(model, "default_objective"):
        used = model.default_objective()  # what pc.infer.fit used: record its settings
    record(
        adata,
        name,
        {
            "model": {"class": type(model).__name__, **getattr(model, "_init_args", {})},
            "data": {
                **settings,
                **{f"n_{s}": len(idx) for s, idx in data.sources.items()},
            },
            "fit": {
                **{k: v for k, v in fit_kwargs.items() if k not in ("elbo",)},
                "stopped_epoch": hist.attrs.get("stopped_epoch", len(hist) - 1),
                "best_loss": hist.attrs.get("best_loss", float("nan")),
                "selected": hist.attrs.get("selected", ""),
            },
            # the end-of-fit check of each constraint on the full data (see pc.infer.fit)
            "constraints": {
                c["name"]: {**c, "feasibility_epochs": hist.attrs["feasibility_epochs"]}
                for c in hist.attrs.get("constraints", [])
            },
            "objective": {**objective_settings(used), "default": objective is None},
            "history": hist,
            "history_columns": list(hist.columns),
        },
    )
    latents(adata, model, data, key_added=key_added)
    return model


def latents(
    adata: ad.AnnData,
    model: ComparativeModel,
    data: ComparativeData | None = None,
    *,
    key: str | None = None,
    key_added: str | None = None,
    kinds: Sequence[str] | None = None,
    **data_kwargs: Any,
) -> dict[str, str]:
    """Write the posterior mean of each latent into ``adata.obsm``.

    For each ``kind`` of ``model.latent_kinds`` writes ``obsm["X_<kind>"]`` (``key_added``
    ``None``) or ``obsm["X_<key_added>_<kind>"]``. Cells left out of the data (``exclude``)
    get NaN rows. Genes are matched to the model's by name.

    Parameters
    ----------
    data
        The cells to encode; ``None``: built from ``adata`` with the settings of fit ``key``
        (default: the model's own fit), or those the model remembers from :func:`fit`,
        updated by ``data_kwargs``.
    key
        Name of an earlier fit on ``adata`` whose data settings to reuse.
    key_added
        Prefix of the ``obsm`` keys (see above); recorded under
        ``uns["pyro_compare"][key_added]["obsm_keys"]``.
    **data_kwargs
        For an AnnData the model was not fitted on: ``condition_key``, ``background``,
        ``layer``, ``exclude``, ``counts``, ... (as :meth:`ComparativeData.from_anndata`).

    Returns
    -------
    dict
        ``{kind: obsm key}`` of the keys written.
    """
    data = resolve_data(adata, model, data, key, caller="latents", **data_kwargs)
    data = align_to_model(model, data)
    rows = rows_in(adata, data)
    kinds = tuple(kinds or model.latent_kinds)
    written: dict[str, str] = {}
    for kind in kinds:
        value = model.latent(data, kind)
        written[kind] = obsm_key(kind, key_added)
        adata.obsm[written[kind]] = scatter_rows(adata.n_obs, rows, value)
    record(adata, fit_name(key_added), {"obsm_keys": written})
    return written


def history(adata: ad.AnnData, key: str | None = None) -> pd.DataFrame:
    """The per-epoch history of fit ``key`` (as returned by :func:`pyro_compare.infer.fit`).

    Read back from ``adata.uns`` (also after an h5ad round trip); ``key`` is the fit's
    ``key_added`` (``None``: the unnamed fit, ``"default"``). ``attrs`` holds what the record
    keeps of the fit's: ``stopped_epoch``, ``best_loss``, ``selected`` and, for a constrained
    fit, ``constraints`` and ``feasibility_epochs`` (see :func:`pyro_compare.infer.fit`).
    """
    name = fit_name(key)
    try:
        stored = adata.uns[UNS_KEY][name]["history"]
    except KeyError as err:
        fits = list(adata.uns.get(UNS_KEY, {}))
        raise KeyError(
            f"adata.uns[{UNS_KEY!r}][{name!r}] holds no history (fits recorded: {fits})."
        ) from err
    entry = adata.uns[UNS_KEY][name]
    columns = list(entry.get("history_columns", stored.keys()))
    columns += [c for c in stored if c not in columns]
    hist = pd.DataFrame({k: np.asarray(stored[k]) for k in columns if k in stored})
    # the attrs pc.infer.fit set that the record keeps (plain Python values after h5ad I/O)
    fit_record = entry.get("fit", {})
    for attr in ("stopped_epoch", "best_loss", "selected"):
        if attr in fit_record:
            hist.attrs[attr] = uns_value(fit_record[attr])
    checks = entry.get("constraints", {})
    if len(checks):
        constraints = [
            {k: uns_value(v) for k, v in c.items() if k != "feasibility_epochs"}
            for c in checks.values()
        ]
        hist.attrs["constraints"] = constraints
        first = next(iter(checks.values()))
        hist.attrs["feasibility_epochs"] = int(first.get("feasibility_epochs", 0))
    return hist
