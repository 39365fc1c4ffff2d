"""AnnData bookkeeping of ``pc.tl``: ``uns`` records, ``obsm`` / ``layers`` keys, row matching.

Nothing here fits or evaluates a model; the public functions of :mod:`pyro_compare.tl`
use these helpers to find their data in, and write their results to, the user's AnnData.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ..data.comparative import ComparativeData
from ..data.validation import DataValidationError

#: Key of ``adata.uns`` under which every fit records its settings and history.
UNS_KEY = "pyro_compare"

#: Name of a fit made without ``key_added`` (its entry in ``adata.uns["pyro_compare"]``).
DEFAULT_KEY = "default"

#: Attribute set on a model by :func:`pyro_compare.tl.fit`: the name of its fit.
MODEL_KEY_ATTR = "key_added_"

#: Attribute set on a model by :func:`pyro_compare.tl.fit`: the data settings of its fit.
MODEL_SETTINGS_ATTR = "data_settings_"


def obsm_key(kind: str, key_added: str | None = None) -> str:
    """The ``obsm`` key of latent ``kind``: ``X_<kind>``, or ``X_<key_added>_<kind>``.

    This is the one ``obsm`` convention of :mod:`pyro_compare.tl` (as scanpy's ``X_pca`` /
    ``key_added``): a fit without ``key_added`` writes ``X_background`` / ``X_salient``
    (``X_basal`` / ``X_latent`` for perturbation models) and the next such fit overwrites
    them, together with its ``uns`` entry ``"default"``; a named fit writes only its prefixed
    keys, so fits compared side by side never overwrite each other. Each fit's ``uns`` entry
    lists the keys it wrote under ``"obsm_keys"``.
    """
    return f"X_{kind}" if key_added is None else f"X_{key_added}_{kind}"


def fit_name(key_added: str | None) -> str:
    """Name of a fit in ``adata.uns["pyro_compare"]``: ``key_added`` or ``"default"``."""
    return DEFAULT_KEY if key_added is None else str(key_added)


def uns_safe(obj: Any) -> Any:
    """Convert ``obj`` to what ``AnnData.write_h5ad`` accepts in ``uns``.

    Dicts of str / numbers / bools / arrays / lists; ``None`` values are dropped, mixed
    lists become string arrays, anything else becomes its ``str``.
    """
    if isinstance(obj, Mapping):
        return {str(k): uns_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, pd.DataFrame):
        return {str(c): uns_safe(obj[c].to_numpy()) for c in obj.columns}
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
            floats = any(not isinstance(v, numbers.Integral) for v in obj)
            return np.asarray(obj, dtype=np.float64 if floats else np.int64)
        return np.asarray([str(v) for v in obj])
    return str(obj)


def record(adata: ad.AnnData, key: str, update: Mapping[str, Any]) -> None:
    """Merge ``update`` (made h5ad-safe) into ``adata.uns["pyro_compare"][key]``."""
    store = adata.uns.setdefault(UNS_KEY, {})
    entry = dict(store.get(key, {}))
    entry.update(uns_safe(update))
    store[key] = entry


# ---------------------------------------------------------------------------- data settings
def _from_anndata_args() -> tuple[str, ...]:
    params = inspect.signature(ComparativeData.from_anndata).parameters
    return tuple(k for k in params if k not in ("cls", "adata"))


def data_settings(data: ComparativeData, **given: Any) -> dict[str, Any]:
    """The :meth:`ComparativeData.from_anndata` settings that rebuild ``data``.

    ``given`` are the arguments the caller passed (they win); the rest is read from
    ``data`` where it keeps them.
    """
    settings = {
        "condition_key": getattr(data, "condition_key", None),
        "background": getattr(data, "background", None),
        "layer": getattr(data, "layer", None),
        "counts": getattr(data, "counts", None),
    }
    settings.update({k: v for k, v in given.items() if v is not None})
    if "exclude" in settings:
        settings["exclude"] = [str(v) for v in settings["exclude"]]
    allowed = _from_anndata_args()
    return {k: v for k, v in settings.items() if k in allowed and v is not None}


def uns_value(value: Any) -> Any:
    """A scalar read back from ``uns`` (a numpy scalar or 0-d array after an h5ad round
    trip) as the Python value; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    return value.item() if isinstance(value, np.generic) else value


def _stored_settings(adata: ad.AnnData, key: str) -> dict[str, Any] | None:
    try:
        stored = adata.uns[UNS_KEY][key]["data"]
    except (KeyError, TypeError):
        return None
    out: dict[str, Any] = {}
    for k in _from_anndata_args():
        if k not in stored:
            continue
        v = stored[k]
        if k == "exclude":
            out[k] = [str(x) for x in np.atleast_1d(v)]
        else:
            out[k] = uns_value(v)
    return out


def _check_data_kwargs(data_kwargs: Mapping[str, Any], caller: str) -> None:
    allowed = _from_anndata_args()
    unknown = sorted(set(data_kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {unknown}; the data of a new "
            f"AnnData are built from: {', '.join(allowed)} (see ComparativeData.from_anndata)."
        )


def resolve_data(
    adata: ad.AnnData,
    model: Any = None,
    data: ComparativeData | None = None,
    key: str | None = None,
    caller: str = "pc.tl",
    **data_kwargs: Any,
) -> ComparativeData:
    """The :class:`ComparativeData` of ``adata`` that a ``pc.tl`` function works on.

    In order of precedence: ``data`` itself; else the settings recorded in
    ``adata.uns["pyro_compare"][key]`` (``key`` defaults to the name of the model's fit)
    or, for an AnnData the model was not fitted on, the data settings the model remembers
    from :func:`pyro_compare.tl.fit` (excluded values absent from ``adata`` are ignored),
    updated by ``data_kwargs`` (``condition_key``, ``background``, ``layer``, ...).
    """
    _check_data_kwargs(data_kwargs, caller)
    if data is not None:
        if data_kwargs:
            raise TypeError(
                f"{caller}(): pass either data= or the settings {sorted(data_kwargs)}, not both."
            )
        return data
    settings: dict[str, Any] = {}
    model_key = getattr(model, MODEL_KEY_ATTR, None) if model is not None else None
    stored = _stored_settings(adata, key if key is not None else model_key or DEFAULT_KEY)
    if key is not None and stored is None and not data_kwargs:
        raise KeyError(
            f"adata.uns[{UNS_KEY!r}][{key!r}] holds no data settings: fit with "
            f"pc.tl.fit(..., key_added={key!r}) first, or pass condition_key=... and "
            f"background=... (and layer=... if the counts are not in X)."
        )
    if stored is not None:
        settings.update(stored)
    else:
        remembered = getattr(model, MODEL_SETTINGS_ATTR, None) if model is not None else None
        if remembered:
            settings.update(remembered)
            if settings.get("exclude") and settings.get("condition_key") in adata.obs:
                present = set(adata.obs[settings["condition_key"]].astype(str))
                settings["exclude"] = [v for v in settings["exclude"] if v in present]
    settings.update(data_kwargs)
    if settings.get("condition_key") is None or settings.get("background") is None:
        raise ValueError(
            f"{caller}() cannot tell which cells are background and which are target in "
            f"this AnnData: pass condition_key=... and background=... (and layer=... if the "
            f"counts are not in X), data=<a ComparativeData>, or key=<the key_added of an "
            f"earlier pc.tl.fit on this AnnData>."
        )
    return ComparativeData.from_anndata(adata, **settings)


def align_to_model(model: Any, data: ComparativeData) -> ComparativeData:
    """``data`` checked against the model, its genes matched to the model's by name.

    ``model.prepare_data`` reorders genes by name, raises on missing genes (how many, the
    first names), drops extra genes with a warning and checks the likelihood against
    ``data.counts``.
    """
    prepare = getattr(model, "prepare_data", None)
    return data if prepare is None else prepare(data)


# ---------------------------------------------------------------------------- rows / columns
def rows_in(adata: ad.AnnData, data: ComparativeData) -> np.ndarray:
    """Row of ``adata`` for each cell of ``data`` (``data`` may exclude cells)."""
    if data.adata is adata:
        return np.arange(adata.n_obs)
    if not adata.obs_names.is_unique:
        raise DataValidationError(
            "adata.obs_names are not unique, so results cannot be matched to cells: call "
            "adata.obs_names_make_unique() first."
        )
    rows = adata.obs_names.get_indexer(data.adata.obs_names)
    if (rows < 0).any():
        raise ValueError(
            "the cells of `data` are not all in `adata` (obs_names differ): build the data "
            "from this AnnData object."
        )
    return rows


def columns_in(adata: ad.AnnData, data: ComparativeData) -> np.ndarray:
    """Column of ``adata`` for each gene of ``data`` (``data`` may hold a subset of genes)."""
    names = data.var_names
    if names.equals(adata.var_names):
        return np.arange(adata.n_vars)
    if not adata.var_names.is_unique:
        raise DataValidationError(
            "adata.var_names are not unique, so genes cannot be matched by name: call "
            "adata.var_names_make_unique() first."
        )
    cols = adata.var_names.get_indexer(names)
    if (cols < 0).any():
        raise ValueError("the genes of `data` are not all in `adata` (var_names differ).")
    return cols


def scatter_rows(n_obs: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A float32 ``(n_obs, ...)`` array with ``values`` at ``rows`` and NaN elsewhere."""
    full = np.full((n_obs, *values.shape[1:]), np.nan, dtype=np.float32)
    full[rows] = values
    return full


def objective_settings(objective: Any) -> dict[str, Any]:
    """The scalar settings of an objective, for ``uns`` (``None``: the default objective)."""
    if objective is None:
        return {"class": "default"}
    out: dict[str, Any] = {"class": type(objective).__name__}
    for k, v in vars(objective).items():
        if k.startswith("_"):
            continue
        if isinstance(v, (str, bool, numbers.Real)):
            out[k] = v
        elif callable(v):
            # a function by its name, an object with its own repr (e.g. a penalty's settings)
            # by it, any other object by its class (a default repr has a memory address)
            own_repr = type(v).__repr__ is not object.__repr__
            out[k] = getattr(v, "__name__", None) or (repr(v) if own_repr else type(v).__name__)
        elif isinstance(v, Mapping) and all(isinstance(x, numbers.Real) for x in v.values()):
            out[k] = dict(v)
    return out
