r"""Evaluation of perturbation models (the SAMS-VAE framework).

(IWELBO, ATEs, masks and PPC share the label/design helpers and the log-normalisation;
kept in one ~600-line module for that reason.)

* :func:`iwelbo` / :func:`iwelbo_per_cell`: importance-weighted ELBO of held-out cells.
* :func:`average_treatment_effect` (model) and :func:`observed_average_treatment_effect`
  (data): :math:`\mathrm{ATE}_k = E[y \mid \mathrm{do}(k)] - E[y \mid \mathrm{control}]` with
  :math:`y = \log(1 + 10^4 x / \sum_g x_g)`; :func:`ate_agreement` compares them (Pearson r
  and :math:`R^2` over all genes and over the top DE genes of each perturbation).
* :func:`mask_recovery`: AUROC / F1 of learned masks against true target sets, latent
  dimensions matched by MCC matching.
* :func:`posterior_predictive_check`: observed vs replicated per-gene mean, variance and
  zero fraction.
* :func:`per_perturbation_loss`: the loss broken down by perturbation (during training:
  the callback :class:`pyro_compare.infer.PerPerturbationLogger`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine

from ..data.comparative import SOURCES, ComparativeData
from ..data.splits import canonical_label, perturbation_labels
from ..infer.handlers import site_tag
from .identifiability import mcc_matching

__all__ = [
    "ate_agreement",
    "average_treatment_effect",
    "iwelbo",
    "iwelbo_per_cell",
    "log_normalize",
    "mask_recovery",
    "observed_average_treatment_effect",
    "per_perturbation_loss",
    "posterior_predictive_check",
    "ppc_statistics",
    "ppc_summary",
]


# ---------------------------------------------------------------------------- helpers
def log_normalize(x_ng: torch.Tensor | np.ndarray, target_sum: float = 1e4):
    r""":math:`\log(1 + 10^4\, x_{ng} / \sum_g x_{ng})` (rows with no counts map to 0)."""
    if isinstance(x_ng, torch.Tensor):
        total = x_ng.sum(-1, keepdim=True).clamp_min(1e-12)
        return torch.log1p(target_sum * x_ng / total)
    x_ng = np.asarray(x_ng, dtype=np.float64)
    total = np.maximum(x_ng.sum(-1, keepdims=True), 1e-12)
    return np.log1p(target_sum * x_ng / total)


def _split_batches(
    data: ComparativeData, split: str | None, batch_size: int
) -> list[tuple[str, dict]]:
    """One-source batches covering every cell of ``split`` (plate sizes = split sizes)."""
    return [
        (s, batch)
        for s in data.source_names
        for batch in data.source_loader(s, batch_size, split=split)
    ]


def _site_plate_dim(site: dict, sources: Sequence[str]) -> tuple[str, int] | None:
    """The source plate of a site (its source tag, else a plate named in ``sources``)."""
    tag = site_tag(site)
    for frame in site["cond_indep_stack"]:
        if frame.name == tag or (tag is None and frame.name in sources):
            return frame.name, frame.dim
    return None


def _per_cell_log_prob(trace, sources: Sequence[str]) -> dict[str, torch.Tensor]:
    """Sum of the *unscaled* log densities of the local sites, per cell, per source."""
    out: dict[str, torch.Tensor] = {}
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        where = _site_plate_dim(site, sources)
        if where is None:  # a global site: conditioned on, not part of the cell's weight
            continue
        s, dim = where
        lp = site["fn"].log_prob(site["value"])
        lp = lp.movedim(dim, 0).reshape(lp.shape[dim], -1).sum(1)
        out[s] = out[s] + lp if s in out else lp
    return out


# ---------------------------------------------------------------------------- IWELBO
@torch.no_grad()
def iwelbo_per_cell(
    model: Callable,
    guide: Callable,
    data: ComparativeData | Mapping[str, Any],
    num_particles: int = 100,
    split: str | None = "validation",
    batch_size: int = 1024,
    sources: Sequence[str] = SOURCES,
) -> np.ndarray:
    r"""Importance-weighted ELBO of each cell, with the global latents drawn from the guide.

    For particles :math:`s = 1..S`: globals :math:`G^s \sim q(G)`, local latents
    :math:`z^s_n \sim q(z_n \mid x_n, G^s)`, and

    .. math::

        \mathrm{IWELBO}_n = \log \frac{1}{S} \sum_{s=1}^S
            \frac{p(x_n, z^s_n \mid G^s)}{q(z^s_n \mid x_n, G^s)}
        \;\le\; \log E_{q(G)}\, p(x_n \mid G),

    a lower bound of the held-out log-likelihood under the fitted posterior of the globals,
    tightening as :math:`S` grows (and equal to it for an exact local posterior). Local sites
    are those under a source plate (tagged by source, or a plate named in ``sources``); their
    log densities are
    taken *unscaled* (no minibatch scale), one value per cell.

    Parameters
    ----------
    model, guide
        A Pyro model/guide pair taking a batch ``{source: SourceBatch}``
        (``model.model, model.guide``).
    data
        A :class:`ComparativeData` (cells of ``split``) or one batch.
    num_particles
        :math:`S`.

    Returns
    -------
    numpy.ndarray
        With ``ComparativeData``: shape (n_cells,), NaN for cells outside ``split``. With a
        batch: the concatenation over the batch's sources of their cells.
    """
    if num_particles < 1:
        raise ValueError("num_particles must be >= 1.")
    owner = getattr(model, "__self__", None)
    was_training = getattr(owner, "training", None)
    if owner is not None:
        owner.eval()
    try:
        if isinstance(data, ComparativeData):
            result = np.full(data.n_cells, np.nan)
            for s, batch in _split_batches(data, split, batch_size):
                values = _iwelbo_batch(model, guide, batch, num_particles, sources)
                result[batch[s].index_n.numpy()] = values[s]
            return result
        values = _iwelbo_batch(model, guide, data, num_particles, sources)
        return np.concatenate([values[s] for s in data if s in values])
    finally:
        if owner is not None and was_training:
            owner.train()


def _iwelbo_batch(model, guide, batch, num_particles, sources) -> dict[str, np.ndarray]:
    log_w: dict[str, list[torch.Tensor]] = {}
    with pyro.validation_enabled(False):
        for _ in range(num_particles):
            guide_tr = poutine.trace(guide).get_trace(batch)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(batch)
            lp = _per_cell_log_prob(model_tr, sources)
            lq = _per_cell_log_prob(guide_tr, sources)
            for s, v in lp.items():
                log_w.setdefault(s, []).append(v - lq.get(s, 0.0))
    out = {}
    for s, ws in log_w.items():
        w = torch.stack(ws).double()
        out[s] = (torch.logsumexp(w, 0) - math.log(num_particles)).numpy()
    return out


def iwelbo(
    model: Callable,
    guide: Callable,
    data: ComparativeData | Mapping[str, Any],
    num_particles: int = 100,
    split: str | None = "validation",
    batch_size: int = 1024,
) -> float:
    """Mean per-cell IWELBO over the cells of ``split`` (see :func:`iwelbo_per_cell`)."""
    values = iwelbo_per_cell(model, guide, data, num_particles, split, batch_size)
    return float(np.nanmean(values))


def per_perturbation_loss(
    model,
    data: ComparativeData,
    split: str | None = "validation",
    num_particles: int = 1,
    batch_size: int = 1024,
) -> pd.DataFrame:
    """Negative (IW)ELBO per cell, averaged within each perturbation label of ``split``.

    With ``num_particles=1`` this is the per-cell local ELBO (globals drawn from the guide),
    i.e. the loss the fit optimises, broken down by perturbation.

    Returns
    -------
    pandas.DataFrame
        Index: labels (control first); columns ``n_cells`` and ``loss``.
    """
    values = iwelbo_per_cell(model.model, model.guide, data, num_particles, split, batch_size)
    labels = perturbation_labels(data)
    keep = ~np.isnan(values)
    frame = pd.DataFrame({"label": labels[keep], "loss": -values[keep]})
    out = frame.groupby("label")["loss"].agg(["size", "mean"])
    out.columns = ["n_cells", "loss"]
    order = [data.background] + sorted(i for i in out.index if i != data.background)
    return out.loc[[o for o in order if o in out.index]]


# ---------------------------------------------------------------------------- ATE
def _lognorm_mean(data: ComparativeData, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    total = np.zeros(data.n_features)
    for start in range(0, len(rows), chunk):
        block = data.matrix[rows[start : start + chunk]]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        total += log_normalize(block).sum(0)
    return total / max(len(rows), 1)


def observed_average_treatment_effect(
    data: ComparativeData,
    perturbations: Sequence[str] | str | None = None,
    split: str | None = "validation",
    control_split: str | None = "same",
) -> pd.DataFrame:
    r"""Observed ATE: mean log-normalised expression of the cells of each label minus controls.

    .. math::

        \widehat{\mathrm{ATE}}_{kg} = \frac{1}{|C_k|} \sum_{n \in C_k} y_{ng}
            - \frac{1}{|C_0|} \sum_{n \in C_0} y_{ng},
        \qquad y_{ng} = \log\big(1 + 10^4 x_{ng} / \textstyle\sum_{g'} x_{ng'}\big)

    with :math:`C_k` the cells of ``split`` whose canonical label is :math:`k` (exact match:
    ``"A"`` does not include ``"A+B"`` cells) and :math:`C_0` the control cells of
    ``control_split`` (``"same"``: ``split``; ``None``: all control cells).

    Returns
    -------
    pandas.DataFrame
        Labels x genes (labels without cells in ``split`` are dropped).
    """
    labels = perturbation_labels(data)
    if control_split == "same":
        control_split = split
    split_rows = np.sort(np.concatenate(list(data.indices(split).values())))
    ctrl = np.asarray(data.indices(control_split)["background"])
    if len(ctrl) == 0:
        raise ValueError(
            f"no control cells in split {control_split!r}; pass control_split=None (all)."
        )
    if perturbations is None:
        perturbations = sorted(set(labels[split_rows]) - {data.background})
    elif isinstance(perturbations, str):
        perturbations = [perturbations]
    base = _lognorm_mean(data, ctrl)
    out = {}
    for p in perturbations:
        lab = canonical_label(data, p)
        rows = split_rows[labels[split_rows] == lab]
        if len(rows):
            out[lab] = _lognorm_mean(data, rows) - base
    return pd.DataFrame.from_dict(out, orient="index", columns=data.var_names)


def average_treatment_effect(
    model,
    data: ComparativeData,
    perturbations: Sequence[str] | str,
    n_samples: int = 10,
    cells="control",
    split: str | None = None,
    basal: str = "control",
    sample_counts: bool = True,
    batch_size: int = 1024,
    library: str = "matched",
) -> pd.DataFrame:
    r"""Model ATE from posterior predictive samples.

    .. math::

        \mathrm{ATE}_{kg} = \frac{1}{S N} \sum_{s, n}
            \big[y(x'^{(s)}_n(d = k))_g - y(x'^{(s)}_n(d = 0))_g\big]

    where :math:`x'^{(s)}_n(d)` is a posterior predictive draw of cell :math:`n` (a control
    cell of ``split`` by default, its basal state abducted from the guide, or a prior draw
    with ``basal="prior"``) under design :math:`d`, with globals drawn from the guide and
    common random numbers across perturbations, and, with ``library="matched"``, library
    sizes scaled to those of each label's training cells (see
    :meth:`~pyro_compare.models.PerturbationVAE.predicted_means`).

    Returns
    -------
    pandas.DataFrame
        Labels x genes.
    """
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    labels = [data.background, *perturbations]
    means = model.predicted_means(
        data,
        labels,
        n_samples=n_samples,
        cells=cells,
        split=split,
        basal=basal,
        sample_counts=sample_counts,
        transform=log_normalize,
        batch_size=batch_size,
        library=library,
    )
    return means.iloc[1:] - means.iloc[0].to_numpy()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _r2(pred: np.ndarray, obs: np.ndarray) -> float:
    ss_tot = ((obs - obs.mean()) ** 2).sum()
    return float(1 - ((obs - pred) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def ate_agreement(
    predicted: pd.DataFrame | np.ndarray,
    observed: pd.DataFrame | np.ndarray,
    top_n: int = 20,
    de_scores: pd.DataFrame | np.ndarray | None = None,
) -> pd.DataFrame:
    r"""Agreement of predicted and observed ATEs, per perturbation.

    For each perturbation (row), Pearson r and :math:`R^2 = 1 - \sum_g (o_g - p_g)^2 /
    \sum_g (o_g - \bar o)^2` (no refitting: a biased prediction is penalised) over all genes
    and over its ``top_n`` DE genes: the largest ``|de_scores|`` (default ``|observed|``; pass
    e.g. the ATE observed on *training* cells to avoid selecting genes on the evaluation
    noise).

    Returns
    -------
    pandas.DataFrame
        One row per perturbation: ``pearson_all``, ``r2_all``, ``pearson_top``, ``r2_top``.
        ``.mean()`` gives the summary.
    """
    if isinstance(predicted, pd.DataFrame) and isinstance(observed, pd.DataFrame):
        common = [i for i in observed.index if i in predicted.index]
        index = common
        pred = predicted.loc[common].to_numpy(float)
        obs = observed.loc[common].to_numpy(float)
        if isinstance(de_scores, pd.DataFrame):
            de_scores = de_scores.reindex(common).to_numpy(float)
    else:
        pred, obs = np.atleast_2d(predicted).astype(float), np.atleast_2d(observed).astype(float)
        index = list(range(pred.shape[0]))
    if pred.shape != obs.shape:
        raise ValueError(f"predicted {pred.shape} and observed {obs.shape} ATEs differ in shape.")
    scores = np.abs(obs) if de_scores is None else np.abs(np.atleast_2d(de_scores))
    scores = np.where(np.isnan(scores), np.abs(obs), scores)
    rows = []
    for p, o, sc in zip(pred, obs, scores):
        top = np.argsort(-sc)[: min(top_n, len(sc))]
        rows.append(
            {
                "pearson_all": _pearson(p, o),
                "r2_all": _r2(p, o),
                "pearson_top": _pearson(p[top], o[top]),
                "r2_top": _r2(p[top], o[top]),
            }
        )
    return pd.DataFrame(rows, index=index)


# ---------------------------------------------------------------------------- masks
def mask_recovery(
    mask_scores: np.ndarray | torch.Tensor,
    true_targets: np.ndarray,
    z_true: np.ndarray | None = None,
    z_learned: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    r"""How well learned masks recover the true target sets of the perturbations.

    Learned latent dimensions are identifiable only up to permutation (and scaling), so
    they are first matched to the true ones by MCC matching (Hungarian assignment on
    :math:`|\mathrm{corr}(z^{\text{true}}_i, z^{\text{learned}}_j)|`,
    :func:`~pyro_compare.metrics.mcc_matching`) when ``z_true`` and ``z_learned`` are given;
    otherwise columns are assumed aligned. True dimensions left unmatched (fewer learned
    than true dimensions) get score 0; unmatched learned dimensions are ignored.

    Parameters
    ----------
    mask_scores
        K x m learned scores (e.g. :math:`q(m_{kj} = 1)`, or :math:`|E_{kj}|` for a mask-free
        model).
    true_targets
        K x d 0/1 true target sets.
    z_true, z_learned
        (n, d) true and (n, m) learned latents of the same cells, for the matching.
    threshold
        Scores above it count as predicted targets (F1).

    Returns
    -------
    dict
        ``auroc``, ``f1``, ``mcc`` (mean matched correlation, NaN without latents) and
        ``matching`` (learned dimension of each true one, -1 if unmatched).
    """
    scores_km = np.asarray(
        mask_scores.detach().cpu() if isinstance(mask_scores, torch.Tensor) else mask_scores,
        dtype=float,
    )
    truth_kd = np.asarray(true_targets).astype(int)
    if scores_km.shape[0] != truth_kd.shape[0]:
        raise ValueError("mask_scores and true_targets must have one row per perturbation.")
    d = truth_kd.shape[1]
    matching = np.full(d, -1)
    corr = float("nan")
    if z_true is not None and z_learned is not None:
        rows, cols, c = mcc_matching(z_true, z_learned)
        matching[rows] = cols
        corr = float(np.mean(c))
    else:
        if scores_km.shape[1] < d:
            raise ValueError("fewer learned than true dimensions: pass latents to match.")
        matching = np.arange(d)
    aligned = np.zeros_like(truth_kd, dtype=float)
    for i, j in enumerate(matching):
        if j >= 0:
            aligned[:, i] = scores_km[:, j]
    y, s = truth_kd.ravel(), aligned.ravel()
    from sklearn.metrics import f1_score, roc_auc_score  # lazy: slow to import

    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")
    f1 = float(f1_score(y, (s > threshold).astype(int), zero_division=0))
    return {"auroc": auroc, "f1": f1, "mcc": corr, "matching": matching}


# ---------------------------------------------------------------------------- PPC
class _PPCStatistics:
    """Running per-gene sums of observed and replicated data, for :func:`ppc_statistics`.

    Observed counts :math:`x_{ng}` and S replicates :math:`x^{(s)}_{ng}` are added in blocks
    of cells; sums, sums of squares and zero counts are kept in float64, so a posterior
    predictive check over many cells needs one block in memory at a time.
    """

    def __init__(self, n_features: int, n_samples: int) -> None:
        self.n = 0
        self.obs = np.zeros((3, n_features))
        self.rep = np.zeros((3, n_samples, n_features))

    def add(self, x_ng: np.ndarray, rep_sng: np.ndarray) -> None:
        self.n += x_ng.shape[0]
        self.obs += np.stack([x_ng.sum(0), (x_ng**2).sum(0), (x_ng == 0).sum(0)])
        self.rep += np.stack([rep_sng.sum(1), (rep_sng**2).sum(1), (rep_sng == 0).sum(1)])

    @staticmethod
    def _stats(sums: np.ndarray, n: int) -> dict[str, np.ndarray]:
        mean = sums[0] / n
        return {"mean": mean, "var": np.maximum(sums[1] / n - mean**2, 0.0), "zero": sums[2] / n}

    def result(self, index=None) -> pd.DataFrame:
        if self.n == 0:
            raise ValueError("a posterior predictive check needs at least one cell.")
        obs = self._stats(self.obs, self.n)
        rep = self._stats(self.rep, self.n)  # each (S, G)
        out = {}
        for name in ("mean", "var", "zero"):
            out[f"observed_{name}"] = obs[name]
            out[f"predicted_{name}"] = rep[name].mean(0)
        for name in ("mean", "var", "zero"):
            out[f"ppp_{name}"] = (rep[name] >= obs[name][None]).mean(0)
        return pd.DataFrame(out, index=index)


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    if sp.issparse(x):
        return x.toarray().astype(np.float64)
    return np.asarray(x, dtype=np.float64)


def ppc_statistics(observed_ng, replicated_sng, var_names: Sequence[str] | None = None):
    r"""Per-gene posterior predictive check statistics of observed and replicated data.

    For observed counts :math:`x_{ng}` (N cells) and S replicated data sets
    :math:`x^{(s)}_{ng}` (e.g. the ``x`` samples of :class:`pyro.infer.Predictive` or of
    ``model.posterior_predictive``), per gene g:

    .. math::

        \bar x_g = \tfrac1N \sum_n x_{ng}, \quad
        v_g = \tfrac1N \sum_n (x_{ng} - \bar x_g)^2, \quad
        z_g = \tfrac1N \sum_n \mathbb 1[x_{ng} = 0],

    and the predicted ones are the same statistics of each replicate, averaged over s.
    ``ppp_<stat>`` is the posterior predictive p-value :math:`P_s(T(x^{(s)}) \ge T(x))`
    (near 0 or 1: the model misses that statistic).

    Parameters
    ----------
    observed_ng
        N x G array, tensor or sparse matrix.
    replicated_sng
        S x N x G (or N x G for one replicate).
    var_names
        Gene names (the index of the result).

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``observed_mean``, ``predicted_mean``, ``observed_var``,
        ``predicted_var``, ``observed_zero``, ``predicted_zero`` (fraction of zeros),
        ``ppp_mean``, ``ppp_var``, ``ppp_zero``.
    """
    x_ng = _as_float64(observed_ng)
    rep_sng = _as_float64(replicated_sng)
    if rep_sng.ndim == 2:
        rep_sng = rep_sng[None]
    if x_ng.ndim != 2 or rep_sng.shape[1:] != x_ng.shape:
        raise ValueError(
            f"replicated data have shape {rep_sng.shape}; expected (S, {x_ng.shape[0]}, "
            f"{x_ng.shape[-1]}) to match the observed {x_ng.shape}."
        )
    acc = _PPCStatistics(x_ng.shape[1], rep_sng.shape[0])
    acc.add(x_ng, rep_sng)
    index = None if var_names is None else pd.Index(np.asarray(var_names).astype(str))
    return acc.result(index)


@torch.no_grad()
def posterior_predictive_check(
    model,
    data: ComparativeData,
    split: str | None = "validation",
    n_samples: int = 5,
    batch_size: int = 1024,
) -> pd.DataFrame:
    r"""Observed vs posterior-predictive per-gene statistics on the cells of ``split``.

    Replicated data :math:`x^{\text{rep}} \sim p(x \mid z_n, G)` with
    :math:`(z_n, G) \sim q` (``model.posterior_predictive``: the observed sites resampled),
    drawn batch by batch; the statistics are those of :func:`ppc_statistics` over every
    cell of ``split``.

    Returns
    -------
    pandas.DataFrame
        Genes x the columns of :func:`ppc_statistics`.
    """
    acc = _PPCStatistics(data.n_features, n_samples)
    for s, batch in _split_batches(data, split, batch_size):
        x = batch[s].x_ng
        pp = model.posterior_predictive(batch, num_samples=n_samples, return_sites=(f"x_{s}",))
        rep = pp[f"x_{s}"].reshape(n_samples, x.shape[0], -1)
        acc.add(_as_float64(x), _as_float64(rep))
    if acc.n == 0:
        raise ValueError(f"split {split!r} has no cells.")
    return acc.result(data.var_names)


def ppc_summary(ppc: pd.DataFrame) -> dict[str, float]:
    """Summary of :func:`posterior_predictive_check`: Pearson r of log1p means / variances and
    of zero fractions, and the mean absolute error of the zero fractions."""
    out = {}
    for stat in ("mean", "var"):
        o, p = np.log1p(ppc[f"observed_{stat}"]), np.log1p(ppc[f"predicted_{stat}"])
        out[f"pearson_log_{stat}"] = _pearson(o.to_numpy(), p.to_numpy())
    o, p = ppc["observed_zero"].to_numpy(), ppc["predicted_zero"].to_numpy()
    out["pearson_zero_fraction"] = _pearson(o, p)
    out["mae_zero_fraction"] = float(np.abs(o - p).mean())
    return out
