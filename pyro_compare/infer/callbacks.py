r"""Training callbacks for :func:`pyro_compare.infer.fit`.

A callback is called after every optimiser step with the batch, the step's
:class:`~pyro_compare.infer.elbo.SourceTerms` (losses *and traces*) and the objective's log,
and returns extra floats to log (they become columns of the history, averaged per epoch).
It reads what it needs from the traces, so nothing is recomputed for logging.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..data.comparative import ComparativeData
from ..data.sources import SourceBatch
from .elbo import SourceTerms
from .handlers import site_tag

__all__ = ["ATEAgreementMonitor", "Callback", "PerPerturbationLogger"]


class Callback:
    """Base class: ``setup(model, data)`` before training, ``on_step(batch, terms, log) ->
    dict of floats`` after each step, and ``on_epoch_end(epoch, row)`` after each epoch
    (``row``: that epoch's history row; a callback may add entries to it)."""

    def setup(self, model, data: ComparativeData) -> None:
        """Called once by ``fit`` before the first step."""

    def on_step(
        self, batch: Mapping[str, SourceBatch], terms: SourceTerms, log: Mapping[str, float]
    ) -> dict[str, float]:
        return {}

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Called with the epoch's history row (mutable)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _per_cell(site: dict) -> torch.Tensor:
    """Unscaled per-cell log-density of a trace site, averaged over vectorised particles."""
    log_prob = site.get("unscaled_log_prob", site["log_prob"]).detach()
    return log_prob.reshape(-1, log_prob.shape[-1]).mean(0) if log_prob.dim() > 1 else log_prob


class PerPerturbationLogger(Callback):
    r"""Logs the loss of each perturbation label at every step.

    For each source of the batch, the per-cell negative local ELBO
    :math:`\log q(z_n \mid \cdot) - \log p(x_n, z_n \mid G)` is read from the step's traces
    (the ``z_<source>`` and ``x_<source>`` sites' ``log_prob``, which the ELBO computed
    anyway), grouped by design row, and logged as ``loss_<label>``.

    A label absent from a minibatch repeats its last value, so the epoch averages the fit
    computes stay meaningful.

    Parameters
    ----------
    data
        Gives the perturbation names and the control label (else ``names`` / ``control``).
    """

    def __init__(
        self,
        data: ComparativeData | None = None,
        names: Sequence[str] | None = None,
        control: str = "control",
        separator: str = "+",
    ) -> None:
        if data is not None:
            names, control = data.perturbation_names, data.background
        if names is None:
            raise ValueError("PerPerturbationLogger needs data= or names=.")
        self.names = list(names)
        self.control = control
        self.separator = separator
        self._last: dict[str, float] = {}

    def on_step(self, batch, terms, log) -> dict[str, float]:
        from ..data.splits import labels_from_design

        for model_trace, guide_trace in terms.traces[:1]:
            for name, src in batch.items():
                z_p, x_p = model_trace.nodes.get(f"z_{name}"), model_trace.nodes.get(f"x_{name}")
                z_q = guide_trace.nodes.get(f"z_{name}")
                if z_p is None or x_p is None or z_q is None or site_tag(z_q) != name:
                    continue
                neg = (_per_cell(z_q) - _per_cell(z_p) - _per_cell(x_p)).cpu().numpy()
                if src.design_nk is None:
                    labels = np.full(neg.shape[0], self.control, dtype=object)
                else:
                    design = src.design_nk.cpu().numpy()
                    labels = labels_from_design(design, self.names, self.control, self.separator)
                for lab in np.unique(labels):
                    self._last[lab] = float(neg[labels == lab].mean())
        return {f"loss_{lab}": v for lab, v in self._last.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self._last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._last = dict(state.get("last", {}))


class ATEAgreementMonitor(Callback):
    r"""Held-out ATE agreement of a perturbation model, every ``every`` epochs.

    On the cells of ``split`` (the validation cells by default), the observed average
    treatment effect of each perturbation :math:`k` with at least ``min_cells`` cells,
    :math:`\mathrm{ATE}_k = \bar y_k - \bar y_{\text{control}}` with
    :math:`y = \log(1 + 10^4 x / \sum_g x_g)`, is compared with the model's
    (:func:`pyro_compare.metrics.perturbation.average_treatment_effect`, ``n_samples``
    posterior predictive draws of the split's control cells); the mean over perturbations of
    the Pearson r over genes is logged as ``validation_ate_pearson`` (``fit(select="best_ate")``
    keeps the epoch where it is highest). The evaluation draws from its own forked RNG, so
    monitoring does not change the fit.
    """

    def __init__(
        self, split: str = "validation", every: int = 5, n_samples: int = 2, min_cells: int = 5
    ) -> None:
        self.split = split
        self.every = int(every)
        self.n_samples = int(n_samples)
        self.min_cells = int(min_cells)
        self._model = None
        self._data: ComparativeData | None = None
        self._observed = None
        self._last_epoch: int | None = None

    def setup(self, model, data: ComparativeData) -> None:
        from ..data.splits import perturbation_labels
        from ..metrics.perturbation import observed_average_treatment_effect

        if data.design is None:
            raise ValueError(
                "ATEAgreementMonitor (select='best_ate') needs perturbation data: build them "
                "with ComparativeData.from_anndata(..., perturbation_key=...)."
            )
        labels = perturbation_labels(data)[np.concatenate(list(data.indices(self.split).values()))]
        names, counts = np.unique(labels, return_counts=True)
        keep = [n for n, c in zip(names, counts) if n != data.background and c >= self.min_cells]
        if not keep:
            raise ValueError(
                f"no perturbation has {self.min_cells} cells in the {self.split!r} split: "
                f"select='best_ate' needs a validation split with perturbed cells."
            )
        self._model, self._data = model, data
        self._observed = observed_average_treatment_effect(data, keep, split=self.split)

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        if (epoch + 1) % self.every != 0:
            return
        from ..metrics.perturbation import ate_agreement, average_treatment_effect

        with torch.random.fork_rng(devices=[]):
            predicted = average_treatment_effect(
                self._model,
                self._data,
                list(self._observed.index),
                n_samples=self.n_samples,
                split=self.split,
            )
        agreement = ate_agreement(predicted, self._observed)
        row["validation_ate_pearson"] = float(np.nanmean(agreement["pearson_all"]))
