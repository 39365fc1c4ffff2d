"""Shared machinery for comparative models: batch signature, save/load, latents, predictive."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_

from ..data.comparative import SOURCES, ComparativeData
from ..data.validation import DataValidationError
from ..nn.decoders import COUNT_LIKELIHOODS

__all__ = ["ComparativeModel", "load_model"]

_REGISTRY: dict[str, type[ComparativeModel]] = {}


class ComparativeModel(PyroModule):
    """Base class: a Pyro model/guide pair over the ``"background"`` and ``"target"`` plates.

    Subclasses define ``model(**batch)`` and ``guide(**batch)`` whose keyword arguments are the
    keys of :meth:`ComparativeData.batch` (``x_background``, ``library_background``,
    ``index_background``, ``n_background``, ``design_background`` and the same for
    ``target``), and :meth:`encode` (posterior means / samples of the named latents).

    Networks are converted to :class:`~pyro.nn.PyroModule` so that a plain
    ``pyro.infer.SVI`` loop sees their parameters as ``param`` sites. Each instance gets a
    unique Pyro name prefix (``ContrastiveVAE_1.decoder...``) so that several models (e.g.
    retrained seeds) never share parameters through Pyro's global param store.
    """

    #: Names accepted by :meth:`latent`.
    latent_kinds: tuple[str, ...] = ()
    likelihood: str = "nb"

    _instances = itertools.count()

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name or f"{type(self).__name__}_{next(self._instances)}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def _finish_init(self, local_vars: dict[str, Any]) -> None:
        """Record constructor arguments (for save/load) and pyro-ize the submodules.

        ``local_vars`` is the subclass ``__init__``'s ``locals()`` at its end: the values of
        the parameters of ``type(self).__init__`` are kept (as normalised there, e.g.
        ``hidden`` as a tuple), everything else is ignored.
        """
        params = inspect.signature(type(self).__init__).parameters
        self._init_args = {k: local_vars[k] for k in params if k != "self" and k in local_vars}
        to_pyro_module_(self)
        #: Guide outputs of the last guide call, for leakage penalties (see infer.penalties).
        self.guide_outputs: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ checks
    def check_data(self, data: ComparativeData) -> None:
        """Fail early when the data cannot be used with this model."""
        n_features = self._init_args.get("n_features")
        if n_features is not None and data.n_features != n_features:
            raise DataValidationError(
                f"gene mismatch: the model was built for {n_features} features but the data have "
                f"{data.n_features}. Subset the AnnData to the model's genes (same order) or "
                f"build a new model with n_features={data.n_features}."
            )
        if self.likelihood in COUNT_LIKELIHOODS and not data.counts:
            raise DataValidationError(
                f"likelihood {self.likelihood!r} needs raw counts, but the data were loaded with "
                f"counts=False. Load raw counts, or use likelihood='gaussian'."
            )

    # ------------------------------------------------------------------ latents
    def encode(self, kind: str, batch: dict, source: str, sample: bool = False) -> torch.Tensor:
        """Posterior mean (or one sample) of latent ``kind`` for the cells of one source."""
        raise NotImplementedError

    def _batches(self, data: ComparativeData, batch_size: int) -> Iterator[tuple[str, dict]]:
        for s in SOURCES:
            idx = data.sources[s]
            for start in range(0, len(idx), batch_size):
                rows = {t: np.empty(0, dtype=np.int64) for t in SOURCES}
                rows[s] = idx[start : start + batch_size]
                yield s, data.batch(rows, {t: len(data.sources[t]) for t in SOURCES})

    @torch.no_grad()
    def latent(
        self,
        data: ComparativeData,
        kind: str,
        n_samples: int | None = None,
        batch_size: int = 1024,
    ) -> np.ndarray:
        """Latent representation of every cell of ``data``, in the rows' order.

        Parameters
        ----------
        kind
            One of :attr:`latent_kinds` (e.g. ``"background"`` or ``"salient"``).
        n_samples
            ``None``: the posterior mean, shape (cells, dims); otherwise that many posterior
            samples, shape (n_samples, cells, dims).
        """
        if kind not in self.latent_kinds:
            raise ValueError(f"unknown latent kind {kind!r}; use one of {self.latent_kinds}.")
        self.check_data(data)
        was_training = self.training
        self.eval()
        try:
            out = None
            for s, batch in self._batches(data, batch_size):
                rows = batch[f"index_{s}"].numpy()
                if n_samples is None:
                    value = self.encode(kind, batch, s).cpu().numpy()
                    if out is None:
                        out = np.zeros((data.n_cells, value.shape[-1]), dtype=np.float32)
                    out[rows] = value
                else:
                    value = torch.stack(
                        [self.encode(kind, batch, s, sample=True) for _ in range(n_samples)]
                    ).numpy()
                    if out is None:
                        out = np.zeros((n_samples, data.n_cells, value.shape[-1]), np.float32)
                    out[:, rows] = value
            return out
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def posterior_predictive(
        self,
        data: ComparativeData | dict,
        num_samples: int = 10,
        split: str | None = None,
        return_sites: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive samples via :class:`pyro.infer.Predictive`.

        Observed sites are resampled (``poutine.uncondition``), so ``x_background`` /
        ``x_target`` in the result are replicated data with the observed cells' latents.
        ``data`` is a :class:`ComparativeData` (all cells of ``split``) or a batch dict.
        """
        batch = data.full_batch(split) if isinstance(data, ComparativeData) else data
        if return_sites is None:
            return_sites = tuple(f"x_{s}" for s in SOURCES if batch.get(f"x_{s}") is not None)
        predictive = pyro.infer.Predictive(
            pyro.poutine.uncondition(self.model),
            guide=self.guide,
            num_samples=num_samples,
            return_sites=list(return_sites),
        )
        return predictive(**batch)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save constructor arguments and parameters to ``path`` (a torch file)."""
        torch.save(
            {
                "class": type(self).__name__,
                "init_args": self._init_args,
                "state_dict": self.state_dict(),
                "pyro_compare_version": 1,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> ComparativeModel:
        """Rebuild a model saved with :meth:`save`."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        klass = _REGISTRY.get(state["class"])
        if klass is None:
            raise ValueError(f"unknown model class {state['class']!r} in {path}.")
        if cls is not ComparativeModel and not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {klass.__name__}, not a {cls.__name__}.")
        model = klass(**state["init_args"])
        model.load_state_dict(state["state_dict"])
        return model

    @staticmethod
    def _plate_size(n: int | None, x: torch.Tensor | None, idx: torch.Tensor | None) -> int:
        if n is not None:
            return int(n)
        if idx is not None:
            return int(idx.shape[0])
        return int(x.shape[0])


def load_model(path: str | Path) -> ComparativeModel:
    """Load any model saved with ``save``."""
    return ComparativeModel.load(path)


def batch_signature(fn) -> list[str]:
    """Keyword names of a model's ``model``/``guide`` (for checks and docs)."""
    return [p for p in inspect.signature(fn).parameters if p != "self"]
