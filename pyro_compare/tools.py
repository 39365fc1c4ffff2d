r"""AnnData / scanpy layer: fit and annotate ``AnnData`` objects the scanpy way (``pc.tl``).

Every function takes the user's :class:`~anndata.AnnData` and writes its results where a
scanpy user looks for them, without hiding the Pyro objects (the fitted model is returned
and stays a plain model/guide pair):

==========================================  ==================================================
``adata.obsm["X_background"]``              posterior mean of the background latent
                                            :math:`E_q[z_n]` (the latest fit)
``adata.obsm["X_salient"]``                 posterior mean of the salient latent
                                            :math:`E_q[t_n]`
``adata.obsm[f"X_{key}_{kind}"]``           the same, per fitted model (``key_added``)
``adata.layers[layer_added]``               posterior predictive mean :math:`E[x_n \mid x_n]`
``adata.uns["pyro_compare"][key]``          model class and arguments, data settings, fit
                                            settings and the per-epoch history (h5ad-writable)
==========================================  ==================================================

Counterfactuals are returned as a new :class:`~anndata.AnnData` with the same ``var`` as
the input (:func:`counterfactual`).

Examples
--------
>>> import pyro_compare as pc
>>> adata = pc.data.simulate_contrastive(500, 500, 100, 5, 3, seed=0)      # doctest: +SKIP
>>> model = pc.tl.fit(adata, condition_key="condition", background="background",
...                   n_background_latent=5, n_salient_latent=3, max_epochs=30)  # doctest: +SKIP
>>> adata.obsm["X_background"].shape                                       # doctest: +SKIP
(1000, 5)
>>> adata.write_h5ad("fitted.h5ad")                                        # doctest: +SKIP
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine

from .data.comparative import ComparativeData
from .infer.fit import fit as _fit
from .models.base import ComparativeModel

__all__ = [
    "UNS_KEY",
    "comparative_data",
    "counterfactual",
    "fit",
    "history",
    "knn_leakage",
    "latents",
    "ppc_statistics",
    "predict",
]

#: Key of ``adata.uns`` under which every fit records its settings and history.
UNS_KEY = "pyro_compare"


# ---------------------------------------------------------------------------- helpers
def _uns_safe(obj: Any) -> Any:
    """Convert to what ``AnnData.write_h5ad`` accepts in ``uns`` (no ``None``, no tuples of
    mixed types, no arbitrary objects): dicts of str / numbers / bools / arrays / lists."""
    if isinstance(obj, Mapping):
        return {str(k): _uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, pd.DataFrame):
        return {str(c): _uns_safe(obj[c].to_numpy()) for c in obj.columns}
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biuf":
            return obj
        return obj.astype(str)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, str):
        return obj
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            return np.zeros(0, dtype=np.float64)
        if all(isinstance(v, (bool, np.bool_)) for v in obj):
            return np.asarray(obj, dtype=bool)
        if all(isinstance(v, numbers.Real) for v in obj):
            return np.asarray(
                obj,
                dtype=np.float64
                if any(not isinstance(v, numbers.Integral) for v in obj)
                else np.int64,
            )
        return np.asarray([str(v) for v in obj])
    return str(obj)


def _record(adata: ad.AnnData, key: str, update: Mapping[str, Any]) -> None:
    """Merge ``update`` (made h5ad-safe) into ``adata.uns[UNS_KEY][key]``."""
    store = adata.uns.setdefault(UNS_KEY, {})
    entry = dict(store.get(key, {}))
    entry.update(_uns_safe(update))
    store[key] = entry


def _objective_settings(objective) -> dict[str, Any]:
    if objective is None:
        return {"class": "Sum"}
    out: dict[str, Any] = {"class": type(objective).__name__}
    for k, v in vars(objective).items():
        if k.startswith("_"):
            continue
        if isinstance(v, (str, bool, numbers.Real)):
            out[k] = v
        elif callable(v):
            out[k] = getattr(v, "__name__", type(v).__name__)
        elif isinstance(v, Mapping) and all(isinstance(x, numbers.Real) for x in v.values()):
            out[k] = dict(v)
    return out


def comparative_data(
    adata: ad.AnnData,
    condition_key: str | None = None,
    background: str | None = None,
    *,
    key: str | None = None,
    **kwargs,
) -> ComparativeData:
    """:class:`ComparativeData` for ``adata``, from explicit settings or those of a fit.

    With ``key``, the settings recorded by :func:`fit` in ``adata.uns["pyro_compare"][key]
    ["data"]`` (condition key, background value, layer, excluded values) are reused, so the
    latents and predictions of a model fitted earlier line up with the same cells.
    """
    settings: dict[str, Any] = {}
    if key is not None:
        try:
            stored = adata.uns[UNS_KEY][key]["data"]
        except KeyError as err:
            raise KeyError(
                f"adata.uns[{UNS_KEY!r}][{key!r}] holds no data settings: fit with "
                f"pc.tl.fit(..., key_added={key!r}) first, or pass condition_key and background."
            ) from err
        settings = {k: stored[k] for k in ("condition_key", "background", "layer") if k in stored}
        if "exclude" in stored:
            settings["exclude"] = [str(v) for v in np.atleast_1d(stored["exclude"])]
    if condition_key is not None:
        settings["condition_key"] = condition_key
    if background is not None:
        settings["background"] = background
    settings.update(kwargs)
    if "condition_key" not in settings or "background" not in settings:
        raise ValueError("pass condition_key and background (or the key of an earlier fit).")
    return ComparativeData.from_anndata(adata, **settings)


def _rows_in(adata: ad.AnnData, data: ComparativeData) -> np.ndarray:
    """Row of ``adata`` for each cell of ``data`` (``data`` may exclude cells)."""
    if data.adata is adata:
        return np.arange(adata.n_obs)
    rows = adata.obs_names.get_indexer(data.adata.obs_names)
    if (rows < 0).any():
        raise ValueError(
            "the cells of `data` are not all in `adata` (obs_names differ): build the data "
            "from this AnnData object."
        )
    return rows


def _resolve_data(adata, model, data, key) -> ComparativeData:
    if data is not None:
        return data
    if key is None:
        key = getattr(model, "key_added_", None)
    if key is None:
        raise ValueError("pass `data` (a ComparativeData) or the `key` of an earlier pc.tl.fit.")
    return comparative_data(adata, key=key)


# ---------------------------------------------------------------------------- fit / latents
def fit(
    adata: ad.AnnData,
    model: ComparativeModel | None = None,
    condition_key: str = "condition",
    background: str = "control",
    *,
    layer: str | None = None,
    exclude: Sequence[str] = (),
    objective=None,
    key_added: str = "contrastive_vae",
    n_background_latent: int = 10,
    n_salient_latent: int = 10,
    hidden: Sequence[int] = (128,),
    likelihood: str = "nb",
    **fit_kwargs,
) -> ComparativeModel:
    """Fit a comparative model on ``adata`` and write its latents and history into it.

    Builds :class:`~pyro_compare.data.ComparativeData` (cells whose ``obs[condition_key]``
    equals ``background`` are the background source, every other cell a target), fits with
    :func:`pyro_compare.infer.fit`, then calls :func:`latents` and records

    * ``adata.uns["pyro_compare"][key_added]["model"]``: class and constructor arguments,
    * ``...["data"]``: condition key, background value, layer, excluded values,
    * ``...["fit"]``: the fit settings and the objective's settings,
    * ``...["history"]``: one array per column of the history (per-source losses, penalty,
      multipliers, weights) — :func:`history` turns it back into a DataFrame.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or ``layers[layer]``.
    model
        A :class:`~pyro_compare.models.ComparativeModel`; ``None`` builds a
        :class:`~pyro_compare.models.ContrastiveVAE` from ``n_background_latent``,
        ``n_salient_latent``, ``hidden`` and ``likelihood``.
    condition_key, background, layer, exclude
        Passed to :meth:`ComparativeData.from_anndata`.
    objective
        How per-source losses and penalties are combined (default: the plain ELBO), e.g.
        ``pc.infer.Constrained(penalty="mmd", epsilon=0.01)``.
    key_added
        Name of this fit: per-model ``obsm`` keys ``X_{key_added}_{kind}`` and the ``uns``
        entry.
    **fit_kwargs
        Passed to :func:`pyro_compare.infer.fit` (``max_epochs``, ``lr``, ``batch_size``,
        ``seed``, ...).

    Returns
    -------
    ComparativeModel
        The fitted model (``model.history_`` holds the history DataFrame).
    """
    data = ComparativeData.from_anndata(
        adata, condition_key, background, layer=layer, exclude=exclude
    )
    if model is None:
        from .models.contrastive import ContrastiveVAE

        model = ContrastiveVAE(
            data.n_features, n_background_latent, n_salient_latent, hidden, likelihood
        )
    fit_kwargs.setdefault("progress", False)
    hist = _fit(model, data, objective=objective, **fit_kwargs)
    model.key_added_ = key_added
    _record(
        adata,
        key_added,
        {
            "model": {"class": type(model).__name__, **getattr(model, "_init_args", {})},
            "data": {
                "condition_key": condition_key,
                "background": background,
                "layer": layer,
                "exclude": list(exclude),
                "n_background": len(data.sources["background"]),
                "n_target": len(data.sources["target"]),
            },
            "fit": {
                **{k: v for k, v in fit_kwargs.items() if k not in ("elbo",)},
                "stopped_epoch": hist.attrs.get("stopped_epoch", len(hist) - 1),
                "best_loss": hist.attrs.get("best_loss", float("nan")),
            },
            "objective": _objective_settings(objective),
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
    default_keys: bool = True,
) -> dict[str, str]:
    """Write the posterior mean of each latent into ``adata.obsm``.

    Writes ``obsm["X_{kind}"]`` (when ``default_keys``) and ``obsm["X_{key_added}_{kind}"]``
    (when ``key_added`` is given) for each ``kind`` in ``model.latent_kinds``. Cells left out
    of ``data`` (``exclude``) get NaN rows.

    Parameters
    ----------
    data
        The data the model was fitted on; ``None``: rebuilt from the settings of fit ``key``.

    Returns
    -------
    dict
        ``{kind: obsm key}`` of the per-model keys (or the default keys).
    """
    data = _resolve_data(adata, model, data, key)
    rows = _rows_in(adata, data)
    kinds = tuple(kinds or model.latent_kinds)
    written: dict[str, str] = {}
    for kind in kinds:
        value = model.latent(data, kind)
        full = np.full((adata.n_obs, value.shape[1]), np.nan, dtype=np.float32)
        full[rows] = value
        if default_keys:
            adata.obsm[f"X_{kind}"] = full
            written[kind] = f"X_{kind}"
        if key_added is not None:
            adata.obsm[f"X_{key_added}_{kind}"] = full.copy()
            written[kind] = f"X_{key_added}_{kind}"
    if key_added is not None:
        _record(adata, key_added, {"obsm_keys": written})
    return written


def history(adata: ad.AnnData, key: str = "contrastive_vae") -> pd.DataFrame:
    """The per-epoch history of fit ``key`` (as returned by :func:`pyro_compare.infer.fit`),
    read back from ``adata.uns`` (also after an h5ad round trip)."""
    try:
        stored = adata.uns[UNS_KEY][key]["history"]
    except KeyError as err:
        raise KeyError(f"adata.uns[{UNS_KEY!r}][{key!r}] holds no history.") from err
    columns = list(adata.uns[UNS_KEY][key].get("history_columns", stored.keys()))
    columns += [c for c in stored if c not in columns]
    return pd.DataFrame({k: np.asarray(stored[k]) for k in columns if k in stored})


# ---------------------------------------------------------------------------- prediction
@torch.no_grad()
def _expected_counts(
    model: ComparativeModel, data: ComparativeData, n_samples: int, batch_size: int
) -> np.ndarray:
    """Posterior predictive mean E[x_n | x_n] = E_q(latents)[E_p[x_n | latents]] per cell.

    Generic for any model whose observations are the sites ``x_<source>``: the model is
    replayed under guide samples and the mean of the observation distribution is averaged.
    """
    out = np.zeros((data.n_cells, data.n_features), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for s, batch in model._batches(data, batch_size):
            rows = batch[f"index_{s}"].numpy()
            acc = None
            for _ in range(n_samples):
                guide_trace = poutine.trace(model.guide).get_trace(**batch)
                model_trace = poutine.trace(
                    poutine.replay(model.model, trace=guide_trace)
                ).get_trace(**batch)
                mean = model_trace.nodes[f"x_{s}"]["fn"].mean
                acc = mean if acc is None else acc + mean
            out[rows] = (acc / n_samples).cpu().numpy()
    finally:
        model.train(was_training)
    return out


def predict(
    adata: ad.AnnData,
    model: ComparativeModel,
    data: ComparativeData | None = None,
    *,
    key: str | None = None,
    layer_added: str = "pyro_compare_expected",
    n_samples: int = 10,
    batch_size: int = 512,
    inplace: bool = True,
    seed: int = 0,
) -> ad.AnnData | None:
    r"""Posterior predictive mean (denoised expression) of every cell.

    .. math::

        \hat x_n = E_{q(\text{latents} \mid x_n)}\big[E_p[x_n \mid \text{latents}, l_n]\big]

    estimated with ``n_samples`` guide draws (the model is replayed under the guide and the
    observation distribution's mean is averaged), at each cell's observed library size.

    Parameters
    ----------
    inplace
        ``True``: write ``adata.layers[layer_added]`` (NaN rows for excluded cells) and return
        ``None``; ``False``: return a new AnnData (the fitted cells, same ``var``) with the
        prediction in ``X``.
    """
    data = _resolve_data(adata, model, data, key)
    pyro.set_rng_seed(seed)
    expected = _expected_counts(model, data, n_samples, batch_size)
    if not inplace:
        return ad.AnnData(
            X=expected,
            obs=data.adata.obs.copy(),
            var=data.adata.var.copy(),
            uns={UNS_KEY: {"prediction": {"n_samples": n_samples, "model": type(model).__name__}}},
        )
    rows = _rows_in(adata, data)
    full = np.full(adata.shape, np.nan, dtype=np.float32)
    full[rows] = expected
    adata.layers[layer_added] = full
    return None


def _cell_rows(data: ComparativeData, cells, default_source: str) -> np.ndarray:
    if cells is None:
        return np.asarray(data.sources[default_source])
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (data.n_cells,):
            raise ValueError(f"a boolean cell mask must have one entry per cell ({data.n_cells}).")
        return np.flatnonzero(cells)
    if cells.dtype.kind in "iu":
        return cells.astype(np.int64)
    rows = data.adata.obs_names.get_indexer(cells.astype(str))
    if (rows < 0).any():
        missing = cells[rows < 0][:3]
        raise KeyError(f"cells not found in obs_names: {list(missing)}")
    return rows


@torch.no_grad()
def counterfactual(
    adata: ad.AnnData,
    model: ComparativeModel,
    data: ComparativeData | None = None,
    *,
    key: str | None = None,
    cells=None,
    salient: str = "posterior",
    donors=None,
    sample_counts: bool = False,
    seed: int = 0,
    batch_size: int = 1024,
) -> ad.AnnData:
    r"""What would these (background) cells look like in the target condition?

    For a contrastive model (background latent :math:`z`, salient latent :math:`t`), each
    chosen cell :math:`n` keeps its background code and library size and receives a salient
    code from the target condition:

    .. math::

        z_n = E_q[z_n \mid x_n], \quad
        t_n = \begin{cases}
            E_q[t_m \mid x_m],\ m \sim \mathrm{Unif}(\text{donors}) & \text{(posterior)}\\
            t_n \sim N(0, I) & \text{(prior)}
        \end{cases}, \quad
        \hat x_n = E_p[x_n \mid z_n, t_n, l_n].

    Parameters
    ----------
    cells
        Which cells to transform: ``None`` (every background cell), a boolean mask or integer
        positions over the fitted cells, or obs names.
    salient
        ``"posterior"`` (salient codes of random donor target cells: the aggregate
        posterior of the target condition) or ``"prior"``.
    donors
        Donor cells for ``"posterior"`` (same forms as ``cells``; default: every target cell).
    sample_counts
        ``False``: ``X`` holds expected counts; ``True``: counts sampled from the observation
        model (``layers["expected"]`` keeps the expectation).

    Returns
    -------
    anndata.AnnData
        One row per chosen cell with the same ``var`` as the input; ``obs`` copies the cells'
        ``obs`` plus ``counterfactual_donor`` (the donor cell, ``"prior"`` otherwise);
        ``layers["factual"]`` holds the model's expectation with the cell's own salient code
        (:math:`t_n = 0` for background cells), so ``X - layers["factual"]`` is the predicted
        effect; ``uns["pyro_compare"]["counterfactual"]`` records the settings.
    """
    if salient not in ("posterior", "prior"):
        raise ValueError("salient must be 'posterior' or 'prior'.")
    if not ({"background", "salient"} <= set(model.latent_kinds) and hasattr(model, "x_dist")):
        raise NotImplementedError(
            f"counterfactual() needs a contrastive model (latents 'background' and 'salient' "
            f"and x_dist(z, t, library)); {type(model).__name__} has latents "
            f"{model.latent_kinds}."
        )
    data = _resolve_data(adata, model, data, key)
    rows = _cell_rows(data, cells, "background")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        z_nd = torch.from_numpy(model.latent(data, "background")[rows])
        if salient == "posterior":
            donor_rows = _cell_rows(data, donors, "target")
            t_all = model.latent(data, "salient")
            pick = rng.choice(donor_rows, size=len(rows), replace=True)
            t_nd = torch.from_numpy(t_all[pick])
            donor_names = np.asarray(data.adata.obs_names[pick]).astype(str)
        else:
            t_nd = torch.randn(len(rows), model.n_salient_latent, generator=gen)
            donor_names = np.full(len(rows), "prior")
        # The cell's own salient code: 0 in the model for background cells.
        is_bg = np.isin(rows, data.sources["background"])
        t_own = torch.from_numpy(model.latent(data, "salient")[rows])
        t_own[torch.from_numpy(is_bg)] = 0.0
        library_n = torch.from_numpy(data.library[rows])
        x_cf, x_fact, x_sample = [], [], []
        for start in range(0, len(rows), batch_size):
            sl = slice(start, start + batch_size)
            d_cf = model.x_dist(z_nd[sl], t_nd[sl], library_n[sl])
            x_cf.append(d_cf.mean)
            x_fact.append(model.x_dist(z_nd[sl], t_own[sl], library_n[sl]).mean)
            if sample_counts:
                x_sample.append(d_cf.sample())
    finally:
        model.train(was_training)
    expected = torch.cat(x_cf).numpy().astype(np.float32)
    obs = data.adata.obs.iloc[rows].copy()
    obs["counterfactual_donor"] = pd.Categorical(donor_names)
    layers = {"factual": torch.cat(x_fact).numpy().astype(np.float32)}
    if sample_counts:
        layers["expected"] = expected
        X = sp.csr_matrix(torch.cat(x_sample).numpy().astype(np.float32))
    else:
        X = expected
    out = ad.AnnData(X=X, obs=obs, var=data.adata.var.copy(), layers=layers)
    out.uns[UNS_KEY] = _uns_safe(
        {
            "counterfactual": {
                "model": type(model).__name__,
                "salient": salient,
                "sample_counts": sample_counts,
                "seed": seed,
                "n_cells": len(rows),
            }
        }
    )
    return out


# ---------------------------------------------------------------------------- evaluation
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

    Returns
    -------
    pandas.DataFrame
        Index ``obsm_keys``; columns ``accuracy``, ``chance`` (majority-class frequency) and,
        with ``groups_key``, ``accuracy_within`` and ``chance_within``.
    """
    from .metrics.identifiability import knn_accuracy, knn_accuracy_within

    labels_all = adata.obs[label_key].astype(str).to_numpy()
    groups_all = None if groups_key is None else adata.obs[groups_key].astype(str).to_numpy()
    records = []
    for key_ in obsm_keys:
        emb = np.asarray(adata.obsm[key_])
        ok = np.isfinite(emb).all(axis=1)
        emb, labels = emb[ok], labels_all[ok]
        rec = {
            "latent": key_,
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


def ppc_statistics(
    observed_ng,
    replicated_sng,
    var_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    r"""Per-gene posterior predictive check statistics.

    For observed counts :math:`x_{ng}` and S replicated data sets :math:`x^{(s)}_{ng}` (e.g.
    the ``x_<source>`` samples of :class:`pyro.infer.Predictive`), per gene g:

    .. math::

        \bar x_g = \tfrac1N \sum_n x_{ng}, \quad
        v_g = \tfrac1{N-1} \sum_n (x_{ng} - \bar x_g)^2, \quad
        z_g = \tfrac1N \sum_n \mathbb 1[x_{ng} = 0],

    and the predicted ones are the same statistics of each replicate, averaged over s.
    ``ppp_<stat>`` is the posterior predictive p-value :math:`P_s(T(x^{(s)}) \ge T(x))`.

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``observed_mean``, ``predicted_mean``, ``observed_var``,
        ``predicted_var``, ``observed_zero``, ``predicted_zero``, ``ppp_mean``, ``ppp_var``,
        ``ppp_zero``.
    """
    x_ng = _as_array(observed_ng)
    rep_sng = _as_array(replicated_sng)
    if rep_sng.ndim == 2:
        rep_sng = rep_sng[None]
    if rep_sng.shape[1:] != x_ng.shape:
        raise ValueError(
            f"replicated data have shape {rep_sng.shape}; expected (S, {x_ng.shape[0]}, "
            f"{x_ng.shape[1]}) to match the observed {x_ng.shape}."
        )
    ddof = 1 if x_ng.shape[0] > 1 else 0
    stats_obs = {
        "mean": x_ng.mean(0),
        "var": x_ng.var(0, ddof=ddof),
        "zero": (x_ng == 0).mean(0),
    }
    stats_rep = {
        "mean": rep_sng.mean(1),
        "var": rep_sng.var(1, ddof=ddof),
        "zero": (rep_sng == 0).mean(1),
    }
    out = {}
    for name in ("mean", "var", "zero"):
        out[f"observed_{name}"] = stats_obs[name]
        out[f"predicted_{name}"] = stats_rep[name].mean(0)
    for name in ("mean", "var", "zero"):
        out[f"ppp_{name}"] = (stats_rep[name] >= stats_obs[name][None]).mean(0)
    index = None if var_names is None else pd.Index(np.asarray(var_names).astype(str))
    return pd.DataFrame(out, index=index)


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.float64)
    if sp.issparse(x):
        return x.toarray().astype(np.float64)
    return np.asarray(x, dtype=np.float64)
