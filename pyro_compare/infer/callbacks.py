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

__all__ = ["Callback", "PerPerturbationLogger"]


class Callback:
    """Base class: ``on_step(batch, terms, log) -> dict of floats`` after each step, and
    ``on_epoch_end(epoch, row)`` after each epoch (``row``: that epoch's history row; a
    callback may add entries to it)."""

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
