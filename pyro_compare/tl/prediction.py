r"""Predictions written to / returned as AnnData: denoised expression and counterfactuals.

* :func:`predict`: the posterior predictive mean of every cell, in ``adata.layers``.
* :func:`counterfactual`: what chosen cells would look like in another condition (a
  contrastive model) or under a perturbation (a perturbation model, through
  :meth:`PerturbationVAE.counterfactual <pyro_compare.models.PerturbationVAE.counterfactual>`),
  as a new AnnData with the input's ``var``.

Random draws use a local seed (``seed=``): the global torch RNG is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pyro import poutine

from ..data.comparative import ComparativeData
from ..models.base import ComparativeModel
from ..models.perturbation_base import PerturbationVAE
from ._anndata import UNS_KEY, align_to_model, columns_in, resolve_data, rows_in, uns_safe

__all__ = ["counterfactual", "predict"]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's RNG for the block and restore the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _observed_site(trace, source: str) -> dict:
    """The observation site of ``source``'s plate in a model trace (``x_<source>`` by the
    models' convention; otherwise its one observed, non-deterministic site)."""
    if f"x_{source}" in trace.nodes:
        return trace.nodes[f"x_{source}"]
    for node in trace.nodes.values():
        if node["type"] != "sample" or not node.get("is_observed"):
            continue
        if node.get("infer", {}).get("_deterministic"):
            continue
        if any(f.name == source for f in node["cond_indep_stack"]):
            return node
    raise RuntimeError(f"the model has no observed site in the plate of source {source!r}.")


@torch.no_grad()
def _expected_counts(
    model: ComparativeModel, data: ComparativeData, n_samples: int, batch_size: int
) -> np.ndarray:
    """Posterior predictive mean :math:`E_q[E_p[x_n \\mid \\text{latents}]]` per cell.

    Generic for any model: the model is replayed under guide samples and the mean of each
    source's observation distribution is averaged over ``n_samples`` draws.
    """
    out = np.zeros((data.n_cells, data.n_features), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        for s in data.sources:
            for batch in data.source_loader(s, batch_size):
                rows = batch[s].index_n.numpy()
                acc = None
                for _ in range(n_samples):
                    guide_trace = poutine.trace(model.guide).get_trace(batch)
                    model_trace = poutine.trace(
                        poutine.replay(model.model, trace=guide_trace)
                    ).get_trace(batch)
                    mean = _observed_site(model_trace, s)["fn"].mean
                    acc = mean if acc is None else acc + mean
                out[rows] = (acc / n_samples).reshape(len(rows), -1).cpu().numpy()
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
    **data_kwargs: Any,
) -> ad.AnnData | None:
    r"""Posterior predictive mean (denoised expression) of every cell.

    .. math::

        \hat x_n = E_{q(\text{latents} \mid x_n)}\big[E_p[x_n \mid \text{latents}, l_n]\big]

    estimated with ``n_samples`` guide draws (the model is replayed under the guide and the
    observation distribution's mean is averaged), at each cell's observed library size.
    Genes are matched to the model's by name.

    Parameters
    ----------
    data, key, **data_kwargs
        Which cells: as in :func:`~pyro_compare.tl.latents` (``condition_key=``,
        ``background=``, ``layer=`` ... for an AnnData the model was not fitted on).
    inplace
        ``True``: write ``adata.layers[layer_added]`` (NaN for excluded cells and for genes
        the model does not know) and return ``None``; ``False``: return a new AnnData (the
        fitted cells, the model's genes) with the prediction in ``X``.
    seed
        Seed of the guide draws (local: the global RNG state is restored).
    """
    data = resolve_data(adata, model, data, key, caller="predict", **data_kwargs)
    data = align_to_model(model, data)
    with _seeded(seed):
        expected = _expected_counts(model, data, n_samples, batch_size)
    if not inplace:
        return ad.AnnData(
            X=expected,
            obs=data.adata.obs.copy(),
            var=data.adata.var.copy(),
            uns={UNS_KEY: {"prediction": {"n_samples": n_samples, "model": type(model).__name__}}},
        )
    rows, cols = rows_in(adata, data), columns_in(adata, data)
    full = np.full(adata.shape, np.nan, dtype=np.float32)
    full[np.ix_(rows, cols)] = expected
    adata.layers[layer_added] = full
    return None


def _cell_rows(data: ComparativeData, cells: Any, default: np.ndarray) -> np.ndarray:
    """Row positions in ``data`` of ``cells`` (None, a boolean mask, positions, obs names)."""
    if cells is None:
        return np.asarray(default)
    cells = np.asarray(cells)
    if cells.dtype == bool:
        if cells.shape != (data.n_cells,):
            raise ValueError(f"a boolean cell mask must have one entry per cell ({data.n_cells}).")
        return np.flatnonzero(cells)
    if cells.dtype.kind in "iu":
        if cells.size and (cells.min() < 0 or cells.max() >= data.n_cells):
            raise IndexError(f"cell positions must lie in [0, {data.n_cells}).")
        return cells.astype(np.int64)
    rows = data.adata.obs_names.get_indexer(cells.astype(str))
    if (rows < 0).any():
        missing = cells[rows < 0][:3]
        raise KeyError(f"cells not found in obs_names: {list(missing)}")
    return rows


def _target_rows(data: ComparativeData) -> np.ndarray:
    """Row positions of every cell of the target source(s)."""
    parts = [np.asarray(i) for s, i in data.sources.items() if s != "background"]
    return np.sort(np.concatenate(parts))


@torch.no_grad()
def _contrastive_counterfactual(
    model: ComparativeModel,
    data: ComparativeData,
    rows: np.ndarray,
    salient: str,
    donors: Any,
    sample_counts: bool,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Expected (and sampled) counterfactual counts, factual expectation, donor names."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    z_nd = torch.from_numpy(model.latent(data, "background")[rows])
    t_all = model.latent(data, "salient")
    if salient == "posterior":
        donor_rows = _cell_rows(data, donors, _target_rows(data))
        pick = rng.choice(donor_rows, size=len(rows), replace=True)
        t_nd = torch.from_numpy(t_all[pick])
        donor_names = np.asarray(data.adata.obs_names[pick]).astype(str)
    else:
        t_nd = torch.randn(len(rows), t_all.shape[1], generator=gen)
        donor_names = np.full(len(rows), "prior")
    # The cell's own salient code: 0 in the model for background cells.
    t_own = torch.from_numpy(t_all[rows])
    t_own[torch.from_numpy(np.isin(rows, data.sources["background"]))] = 0.0
    library_n = torch.from_numpy(np.asarray(data.library[rows], dtype=np.float32))
    was_training = model.training
    model.eval()
    x_cf, x_fact, x_sample = [], [], []
    try:
        with _seeded(seed):
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
    factual = torch.cat(x_fact).numpy().astype(np.float32)
    sampled = torch.cat(x_sample).numpy().astype(np.float32) if sample_counts else None
    return expected, factual, sampled, donor_names


def counterfactual(
    adata: ad.AnnData,
    model: ComparativeModel,
    data: ComparativeData | None = None,
    *,
    key: str | None = None,
    cells: Any = None,
    perturbation: Any = None,
    salient: str = "posterior",
    donors: Any = None,
    n_samples: int = 1,
    sample_counts: bool = False,
    seed: int = 0,
    batch_size: int = 1024,
    **data_kwargs: Any,
) -> ad.AnnData:
    r"""What would these cells look like in the target condition / under a perturbation?

    *Contrastive model* (background latent :math:`z`, salient latent :math:`t`): each chosen
    cell :math:`n` keeps its background code and library size and receives a salient code
    from the target condition:

    .. math::

        z_n = E_q[z_n \mid x_n], \quad
        t_n = \begin{cases}
            E_q[t_m \mid x_m],\ m \sim \mathrm{Unif}(\text{donors}) & \text{(posterior)}\\
            t_n \sim N(0, I) & \text{(prior)}
        \end{cases}, \quad
        \hat x_n = E_p[x_n \mid z_n, t_n, l_n].

    *Perturbation model* (:class:`~pyro_compare.models.PerturbationVAE`): delegates to
    :meth:`~pyro_compare.models.PerturbationVAE.counterfactual` with ``perturbation``
    (a label such as ``"IFNGR1"`` or ``"A+B"``), ``n_samples`` and ``sample_counts``.

    Parameters
    ----------
    data, key, **data_kwargs
        Which cells: as in :func:`~pyro_compare.tl.latents`.
    cells
        Which cells to transform: ``None`` (every background / control cell), a boolean
        mask or integer positions over the fitted cells, or obs names.
    perturbation
        Perturbation models only: the perturbation to apply.
    salient
        Contrastive models: ``"posterior"`` (salient codes of random donor target cells:
        the aggregate posterior of the target condition) or ``"prior"``.
    donors
        Contrastive models: donor cells for ``"posterior"`` (same forms as ``cells``;
        default: every target cell).
    sample_counts
        ``False``: ``X`` holds expected counts; ``True``: counts sampled from the
        observation model (``layers["expected"]`` keeps the expectation, contrastive
        models).
    seed
        Seed of every random draw (local: the global RNG state is restored).

    Returns
    -------
    anndata.AnnData
        Contrastive model: one row per chosen cell with the same ``var`` as the model's
        genes; ``obs`` copies the cells' ``obs`` plus ``counterfactual_donor`` (the donor
        cell, ``"prior"`` otherwise); ``layers["factual"]`` holds the model's expectation with
        the cell's own salient code (:math:`t_n = 0` for background cells), so
        ``X - layers["factual"]`` is the predicted effect. Perturbation model: as
        :meth:`PerturbationVAE.counterfactual
        <pyro_compare.models.PerturbationVAE.counterfactual>`. Both record the settings in
        ``uns["pyro_compare"]["counterfactual"]``.
    """
    if salient not in ("posterior", "prior"):
        raise ValueError(f"salient must be 'posterior' or 'prior'; got {salient!r}.")
    data = resolve_data(adata, model, data, key, caller="counterfactual", **data_kwargs)
    data = align_to_model(model, data)
    rows = _cell_rows(data, cells, data.sources["background"])
    settings: dict[str, Any] = {"model": type(model).__name__, "seed": seed, "n_cells": len(rows)}
    if isinstance(model, PerturbationVAE):
        if perturbation is None:
            raise ValueError(
                f"{type(model).__name__} predicts perturbations: pass perturbation=<a label, "
                f"e.g. {list(getattr(data, 'perturbation_names', []))[:3]}>."
            )
        with _seeded(seed):
            out = model.counterfactual(
                data,
                perturbation,
                n_samples=n_samples,
                cells=rows,
                sample_counts=sample_counts,
                batch_size=batch_size,
            )
        settings.update(
            perturbation=str(perturbation), n_samples=n_samples, sample_counts=sample_counts
        )
    else:
        if not ({"background", "salient"} <= set(model.latent_kinds) and hasattr(model, "x_dist")):
            raise NotImplementedError(
                f"counterfactual() needs a contrastive model (latents 'background' and "
                f"'salient' and x_dist(z, t, library)) or a PerturbationVAE; "
                f"{type(model).__name__} has latents {model.latent_kinds}."
            )
        if perturbation is not None:
            raise ValueError(
                f"perturbation= applies to perturbation models; {type(model).__name__} moves "
                f"cells to the target condition (use salient= and donors=)."
            )
        expected, factual, sampled, donor_names = _contrastive_counterfactual(
            model, data, rows, salient, donors, sample_counts, seed, batch_size
        )
        obs = data.adata.obs.iloc[rows].copy()
        obs["counterfactual_donor"] = pd.Categorical(donor_names)
        layers = {"factual": factual}
        if sampled is not None:
            layers["expected"] = expected
            X = sp.csr_matrix(sampled)
        else:
            X = expected
        out = ad.AnnData(X=X, obs=obs, var=data.adata.var.copy(), layers=layers)
        settings.update(salient=salient, sample_counts=sample_counts)
    out.uns[UNS_KEY] = uns_safe({"counterfactual": settings})
    return out
