r"""Evaluation of perturbation models (the SAMS-VAE framework).

* :func:`iwelbo` / :func:`iwelbo_per_cell`: importance-weighted ELBO of held-out cells.
* :func:`average_treatment_effect` (model) and :func:`observed_average_treatment_effect`
  (data): :math:`\mathrm{ATE}_k = E[y \mid \mathrm{do}(k)] - E[y \mid \mathrm{control}]` with
  :math:`y = \log(1 + 10^4 x / \sum_g x_g)`; :func:`ate_agreement` compares them (Pearson r
  and :math:`R^2` over all genes and over the top DE genes of each perturbation).
* :func:`mask_recovery`: AUROC / F1 of learned masks against true target sets, latent
  dimensions matched by MCC matching.
* :func:`posterior_predictive_check`: observed vs replicated per-gene mean, variance and
  zero fraction.
* :func:`per_perturbation_loss` and the :class:`PerPerturbationLogger` objective wrapper: the
  loss broken down by perturbation (logged, not optimised separately).
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
from sklearn.metrics import f1_score, roc_auc_score

from ..data.comparative import SOURCES, ComparativeData
from ..data.splits import canonical_label, labels_from_design, perturbation_labels
from ..infer.objectives import Objective, Sum
from .identifiability import mcc_matching

__all__ = [
    "PerPerturbationLogger",
    "ate_agreement",
    "average_treatment_effect",
    "iwelbo",
    "iwelbo_per_cell",
    "log_normalize",
    "mask_recovery",
    "observed_average_treatment_effect",
    "per_perturbation_loss",
    "posterior_predictive_check",
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
    idx = data.indices(split)
    sizes = {s: max(len(i), 1) for s, i in idx.items()}
    out = []
    for s in SOURCES:
        for start in range(0, len(idx[s]), batch_size):
            rows = {t: np.empty(0, dtype=np.int64) for t in SOURCES}
            rows[s] = idx[s][start : start + batch_size]
            out.append((s, data.batch(rows, sizes)))
    return out


def _site_plate_dim(site: dict, sources: Sequence[str]) -> tuple[str, int] | None:
    for frame in site["cond_indep_stack"]:
        if frame.name in sources:
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
    are those under a source plate (``"background"``/``"target"``); their log densities are
    taken *unscaled* (no minibatch scale), one value per cell.

    Parameters
    ----------
    model, guide
        A Pyro model/guide pair taking the batch keywords (``model.model, model.guide``).
    data
        A :class:`ComparativeData` (cells of ``split``) or one batch dict.
    num_particles
        :math:`S`.

    Returns
    -------
    numpy.ndarray
        With ``ComparativeData``: shape (n_cells,), NaN for cells outside ``split``. With a
        batch dict: the concatenation over ``sources`` of that batch's cells.
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
                result[batch[f"index_{s}"].numpy()] = values[s]
            return result
        values = _iwelbo_batch(model, guide, dict(data), num_particles, sources)
        return np.concatenate([values[s] for s in sources if s in values])
    finally:
        if owner is not None and was_training:
            owner.train()


def _iwelbo_batch(model, guide, batch, num_particles, sources) -> dict[str, np.ndarray]:
    log_w: dict[str, list[torch.Tensor]] = {}
    with pyro.validation_enabled(False):
        for _ in range(num_particles):
            guide_tr = poutine.trace(guide).get_trace(**batch)
            model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(**batch)
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


class PerPerturbationLogger(Objective):
    """Objective wrapper that logs the loss of each perturbation label at every step.

    The perturbation models record, per source, the detached per-cell
    :math:`\\log p(x_n, z_n \\mid G)` (``model.model_outputs``) and
    :math:`\\log q(z_n \\mid \\cdot)` (``model.guide_outputs``) of the step's trace; this wrapper
    groups :math:`\\log q - \\log p` (the per-cell negative local ELBO) by design row and adds
    ``loss_<label>`` entries to the log (thus to :func:`~pyro_compare.infer.fit`'s history).
    The optimised loss is the wrapped objective's, unchanged.

    A label absent from a minibatch repeats its last value, so the epoch averages the fit
    computes stay meaningful.


    Parameters
    ----------
    objective
        The objective to wrap (default :class:`~pyro_compare.infer.Sum`, the plain ELBO).
    data
        Gives the perturbation names and the control label (else ``names`` / ``control``).
    """

    def __init__(
        self,
        objective: Objective | None = None,
        data: ComparativeData | None = None,
        names: Sequence[str] | None = None,
        control: str = "control",
        separator: str = "+",
    ) -> None:
        self.objective = objective or Sum()
        if data is not None:
            names, control = data.perturbation_names, data.background
        self.names = list(names) if names is not None else None
        self.control = control
        self.separator = separator
        self._last: dict[str, float] = {}

    def setup(self, model, params) -> None:
        self.objective.setup(model, params)
        if self.names is None:
            k = getattr(model, "n_perturbations", 0)
            self.names = [f"p{j}" for j in range(k)]

    def parameters(self):
        return list(getattr(self.objective, "parameters", lambda: [])())

    def after_step(self) -> None:
        after = getattr(self.objective, "after_step", None)
        if after is not None:
            after()

    def __call__(self, losses, model):
        loss, log = self.objective(losses, model)
        log = dict(log)
        q_out = getattr(model, "guide_outputs", {})
        p_out = getattr(model, "model_outputs", {})
        for s in SOURCES:
            if s not in q_out or s not in p_out:
                continue
            neg = (q_out[s]["log_q"] - p_out[s]["log_p"]).reshape(-1).cpu().numpy()
            design = q_out[s]["design"].cpu().numpy()
            if neg.shape[0] != design.shape[0]:  # vectorised particles: skip
                continue
            labels = labels_from_design(design, self.names, self.control, self.separator)
            for lab in np.unique(labels):
                self._last[lab] = float(neg[labels == lab].mean())
        for lab, v in self._last.items():
            log[f"loss_{lab}"] = v
        return loss, log

    def state_dict(self) -> dict[str, Any]:
        return {"objective": self.objective.state_dict(), "last": dict(self._last)}

    def load_state_dict(self, state) -> None:
        self.objective.load_state_dict(state.get("objective", {}))
        self._last = dict(state.get("last", {}))


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
) -> pd.DataFrame:
    r"""Model ATE from posterior predictive samples.

    .. math::

        \mathrm{ATE}_{kg} = \frac{1}{S N} \sum_{s, n}
            \big[y(x'^{(s)}_n(d = k))_g - y(x'^{(s)}_n(d = 0))_g\big]

    where :math:`x'^{(s)}_n(d)` is a posterior predictive draw of cell :math:`n` (a control
    cell of ``split`` by default, its basal state abducted from the guide, or a prior draw
    with ``basal="prior"``) under design :math:`d`, with globals drawn from the guide and
    common random numbers across perturbations (see
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
    auroc = float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")
    f1 = float(f1_score(y, (s > threshold).astype(int), zero_division=0))
    return {"auroc": auroc, "f1": f1, "mcc": corr, "matching": matching}


# ---------------------------------------------------------------------------- PPC
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
    :math:`(z_n, G) \sim q` (``model.posterior_predictive``: the observed sites resampled).
    Per gene: mean, variance and fraction of zeros over the cells, for the observed counts
    and for each replicate (averaged over the ``n_samples`` replicates).

    Returns
    -------
    pandas.DataFrame
        Genes x ``observed_mean, predicted_mean, observed_var, predicted_var,
        observed_zero_fraction, predicted_zero_fraction``.
    """
    g = data.n_features
    obs_sum, obs_sq, obs_zero = np.zeros(g), np.zeros(g), np.zeros(g)
    rep_sum, rep_sq, rep_zero = (np.zeros((n_samples, g)) for _ in range(3))
    n = 0
    for s, batch in _split_batches(data, split, batch_size):
        x = batch[f"x_{s}"].double().numpy()
        pp = model.posterior_predictive(batch, num_samples=n_samples, return_sites=(f"x_{s}",))
        rep = pp[f"x_{s}"].double().reshape(n_samples, x.shape[0], g).numpy()
        obs_sum += x.sum(0)
        obs_sq += (x**2).sum(0)
        obs_zero += (x == 0).sum(0)
        rep_sum += rep.sum(1)
        rep_sq += (rep**2).sum(1)
        rep_zero += (rep == 0).sum(1)
        n += x.shape[0]
    if n == 0:
        raise ValueError(f"split {split!r} has no cells.")
    obs_mean = obs_sum / n
    rep_mean = rep_sum / n
    return pd.DataFrame(
        {
            "observed_mean": obs_mean,
            "predicted_mean": rep_mean.mean(0),
            "observed_var": obs_sq / n - obs_mean**2,
            "predicted_var": (rep_sq / n - rep_mean**2).mean(0),
            "observed_zero_fraction": obs_zero / n,
            "predicted_zero_fraction": (rep_zero / n).mean(0),
        },
        index=data.var_names,
    )


def ppc_summary(ppc: pd.DataFrame) -> dict[str, float]:
    """Summary of :func:`posterior_predictive_check`: Pearson r of log1p means / variances and
    of zero fractions, and the mean absolute error of the zero fractions."""
    out = {}
    for stat in ("mean", "var"):
        o, p = np.log1p(ppc[f"observed_{stat}"]), np.log1p(ppc[f"predicted_{stat}"])
        out[f"pearson_log_{stat}"] = _pearson(o.to_numpy(), p.to_numpy())
    o, p = ppc["observed_zero_fraction"].to_numpy(), ppc["predicted_zero_fraction"].to_numpy()
    out["pearson_zero_fraction"] = _pearson(o, p)
    out["mae_zero_fraction"] = float(np.abs(o - p).mean())
    return out
