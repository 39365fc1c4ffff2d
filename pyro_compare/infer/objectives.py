r"""Objectives: how a step's per-source losses (and penalties) become one backward pass.

The fit loop calls an objective once per step with the dict of per-source losses from
:class:`~pyro_compare.infer.SourceTrace_ELBO`, already divided by the total number of
training cells N (so ``sum(losses.values())`` is the negative ELBO per cell, and the
relative weight of the sources is that of the ELBO). The objective returns the scalar
to backpropagate and a dict of floats to log (weights, penalty values, multipliers).

The interface is deliberately small:

* ``setup(model, params)``: called once before training (e.g. to remember the shared
  parameters on which gradients are compared, or to ask the model to record what a
  penalty needs);
* ``__call__(losses, model) -> (loss, log)``: one step;
* ``state_dict()`` / ``load_state_dict()``: objective state (multipliers) for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["Objective", "Sum"]


class Objective:
    """Base class of the objectives used by :func:`pyro_compare.infer.fit`."""

    def setup(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
        """Called once by ``fit`` before the first step."""

    def __call__(
        self, losses: Mapping[str, torch.Tensor], model: torch.nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Sum(Objective):
    r"""Fixed-weight sum: :math:`\sum_s w_s \mathcal{L}_s + \beta \, P`.

    With the defaults this is the plain negative ELBO (the classical fit, the baseline).

    Parameters
    ----------
    weights
        Weight per loss key (missing keys weigh 1).
    penalty
        Optional leakage penalty: a callable ``penalty(model) -> Tensor`` or the name of one
        in :mod:`pyro_compare.infer.penalties`.
    penalty_weight
        :math:`\beta`, the fixed penalty weight.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        penalty=None,
        penalty_weight: float = 1.0,
    ) -> None:
        self.weights = dict(weights or {})
        self.penalty = penalty
        self.penalty_weight = float(penalty_weight)

    def setup(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
        if self.penalty is not None:
            self._penalty_fn = _resolve_penalty(self.penalty, model)

    def __call__(
        self, losses: Mapping[str, torch.Tensor], model: torch.nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(self.weights.get(k, 1.0) * v for k, v in losses.items())
        log: dict[str, float] = {}
        if self.penalty is not None:
            value = self._penalty_fn(model)
            total = total + self.penalty_weight * value
            log["penalty"] = float(value.detach())
        return total, log


def _resolve_penalty(penalty, model):
    """A callable ``model -> Tensor`` from a name or a callable; asks the model to record
    what the penalty needs."""
    if hasattr(model, "track_background_salient"):
        model.track_background_salient = True
    if callable(penalty):
        return penalty
    from . import penalties as _penalties

    fn = getattr(_penalties, "PENALTIES", {}).get(penalty)
    if fn is None:
        raise ValueError(f"unknown penalty {penalty!r}.")
    return fn
