r"""Shared machinery of comparative models: the plate loop, features, latents, predictives,
save/load.

A comparative model is a Pyro model/guide pair over *sources* (see
:mod:`pyro_compare.data.sources`). The loop over sources is written once, here::

    def model(self, sources, observe=True):
        g = self.model_globals()                      # sites outside every source plate
        for name, src in sources.items():
            with source_plate(name, src):             # pyro.plate(name, n, subsample=idx)
                self.model_source(name, src, g, obs=src.x_ng if observe else None)

and the guide likewise with :meth:`~ComparativeModel.guide_globals` and
:meth:`~ComparativeModel.guide_source`. A model class supplies only its per-source story
(and its globals); the source's ``role`` (``"background"`` / ``"target"``) says which story.

Predictives are plain Pyro:

* prior predictive: ``Predictive(model.model, num_samples=...)(sources)`` with sources that
  carry sizes (and library sizes / designs) but no ``x_ng``
  (:meth:`ComparativeModel.prior_predictive`);
* posterior predictive: ``Predictive(model.model, guide=model.guide,
  num_samples=...)(batch, observe=False)``: the guide encodes the observed cells, the model
  then *samples* the counts instead of conditioning on them
  (:meth:`ComparativeModel.posterior_predictive`). With ``observe=True`` (the default, used
  for training) the ``x`` sites are observed and Predictive would return the data.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_

from ..data.comparative import ComparativeData
from ..data.sources import SourceBatch, Sources
from ..data.validation import DataValidationError
from ..infer.handlers import source_plate
from ..nn.decoders import COUNT_LIKELIHOODS

__all__ = ["ComparativeModel", "load_model"]

_REGISTRY: dict[str, type[ComparativeModel]] = {}
_FORMAT_VERSION = 2


class ComparativeModel(PyroModule):
    """Base class: a Pyro model/guide pair with one plate per source.

    Subclasses implement the per-source story, :meth:`model_source` and
    :meth:`guide_source`, optionally global sites (:meth:`model_globals`,
    :meth:`guide_globals`), and :meth:`encode` (posterior means / samples of the named
    latents).

    Networks are converted to :class:`~pyro.nn.PyroModule` so that a plain
    ``pyro.infer.SVI`` loop sees their parameters as ``param`` sites. Each instance gets a
    unique Pyro name prefix (``ContrastiveVAE_1.decoder...``) so that several models (e.g.
    retrained seeds) never share parameters through Pyro's global param store.

    Attributes
    ----------
    feature_names
        Names of the features the model was fitted on (set by
        :func:`~pyro_compare.infer.fit`, saved with the model); data given later are matched
        to them *by name* (:meth:`prepare_data`).
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
        self.feature_names: list[str] | None = None
        #: True until the model is fitted or loaded: ``fit`` then draws the initial
        #: parameters from its ``seed``.
        self._fresh = True

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`; the model is then no longer fresh
        (``fit`` keeps loaded parameters instead of redrawing them)."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._fresh = False
        return out

    def default_objective(self):
        """The objective ``fit`` uses when given none: the plain negative ELBO
        (:class:`~pyro_compare.infer.Sum`); models with a better-measured default override."""
        from ..infer.objectives import Sum

        return Sum()

    def _zeros(self, *shape: int) -> torch.Tensor:
        """Zeros with the dtype and device of the model's parameters."""
        return next(self.parameters()).new_zeros(shape)

    # ------------------------------------------------------------------ the generative story
    def model_globals(self) -> dict[str, torch.Tensor]:
        """Sample the model's global sites (outside every source plate); returns them."""
        return {}

    def guide_globals(self) -> dict[str, torch.Tensor]:
        """Sample the guide's global sites; returns them by name."""
        return {}

    def model_source(
        self,
        name: str,
        src: SourceBatch,
        globals_: Mapping[str, torch.Tensor],
        obs: torch.Tensor | None,
    ) -> None:
        """The story of one source's cells, inside its plate. ``obs`` is the value of the
        observation site (``None``: sample it, for predictives)."""
        raise NotImplementedError

    def guide_source(
        self, name: str, src: SourceBatch, globals_: Mapping[str, torch.Tensor]
    ) -> None:
        """The guide of one source's cells, inside its plate (``src.x_ng`` is given)."""
        raise NotImplementedError

    def model(self, sources: Sources, observe: bool = True) -> None:
        """Generative model over every source of ``sources`` (``{name: SourceBatch}``).

        ``observe=False`` samples the observations instead of conditioning on ``x_ng``
        (posterior predictive with ``Predictive(..., guide=...)``); sources without
        ``x_ng`` are always sampled (prior predictive).
        """
        g = self.model_globals()
        for name, src in sources.items():
            if src.size == 0:
                continue
            with source_plate(name, src):
                self.model_source(name, src, g, src.x_ng if observe else None)

    def guide(self, sources: Sources, observe: bool = True) -> None:
        """Guide over every source of ``sources`` (``observe`` is accepted and ignored, so
        that model and guide take the same arguments)."""
        g = self.guide_globals()
        for name, src in sources.items():
            if src.size == 0:
                continue
            if src.x_ng is None:
                raise ValueError(
                    f"the guide needs the observed cells of source {name!r} (x_ng is None): "
                    f"a guide encodes data. For the prior predictive run the model alone "
                    f"(model.prior_predictive or Predictive(model.model, ...))."
                )
            with source_plate(name, src):
                self.guide_source(name, src, g)

    # ------------------------------------------------------------------ checks and features
    def prepare_data(self, data: ComparativeData) -> ComparativeData:
        """Check ``data`` against the model and match its features by name.

        With :attr:`feature_names` set (a fitted model), features in another order are
        reordered, missing ones raise an error and extra ones are dropped with a warning
        (:meth:`ComparativeData.align_features`); otherwise the number of features must
        match. Raises :class:`DataValidationError` naming the problem and the fix.
        """
        if self.feature_names is not None:
            data = data.align_features(self.feature_names)
        n_features = self._init_args.get("n_features")
        if n_features is not None and data.n_features != n_features:
            raise DataValidationError(
                f"gene mismatch: the model was built for {n_features} features but the data have "
                f"{data.n_features}. Subset the AnnData to the model's genes or build a new "
                f"model with n_features={data.n_features}."
            )
        if self.likelihood in COUNT_LIKELIHOODS and not data.counts:
            raise DataValidationError(
                f"likelihood {self.likelihood!r} needs raw counts, but the data were loaded with "
                f"counts=False. Load raw counts, or use likelihood='gaussian'."
            )
        return data

    def check_data(self, data: ComparativeData) -> None:
        """Fail early when the data cannot be used with this model (see :meth:`prepare_data`)."""
        self.prepare_data(data)

    def bind_features(self, data: ComparativeData) -> None:
        """Remember the features of the training data (called by ``fit``)."""
        if self.feature_names is None:
            self.feature_names = data.feature_names

    def default_fit_settings(self) -> dict[str, Any]:
        """Settings ``fit`` uses for this model where the caller passes none (see
        :data:`pyro_compare.infer.fit.FIT_DEFAULTS` for the keys); ``{}``: the global ones."""
        return {}

    # ------------------------------------------------------------------ initialisation
    def reinitialize(self, seed: int) -> None:
        """Redraw every parameter as a freshly built model would, from ``seed``.

        Uses a forked torch RNG, so the caller's global RNG state is untouched. ``fit``
        calls it at the start of a model's first fit, which makes ``seed=`` cover the
        initialisation too.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(self)(**self._init_args)
        self.load_state_dict(fresh.state_dict())

    # ------------------------------------------------------------------ latents
    def encode(self, kind: str, src: SourceBatch, sample: bool = False) -> torch.Tensor:
        """Posterior mean (or one sample) of latent ``kind`` for the cells of one source."""
        raise NotImplementedError

    def _source_batches(
        self, data: ComparativeData, batch_size: int
    ) -> Iterator[tuple[str, SourceBatch]]:
        for s in data.source_names:
            for batch in data.source_loader(s, batch_size):
                yield s, batch[s]

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
        data = self.prepare_data(data)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            out = None
            for _, src in self._source_batches(data, batch_size):
                rows = src.index_n.numpy()
                src = src.to(device)
                if n_samples is None:
                    value = self.encode(kind, src).cpu().numpy()
                    if out is None:
                        out = np.zeros((data.n_cells, value.shape[-1]), dtype=np.float32)
                    out[rows] = value
                else:
                    value = (
                        torch.stack([self.encode(kind, src, sample=True) for _ in range(n_samples)])
                        .cpu()
                        .numpy()
                    )
                    if out is None:
                        out = np.zeros((n_samples, data.n_cells, value.shape[-1]), np.float32)
                    out[:, rows] = value
            return out
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ predictives
    def _predict(
        self,
        data: ComparativeData | Sources,
        split: str | None,
        num_samples: int,
        return_sites: tuple[str, ...] | None,
        guide: bool,
    ) -> dict[str, torch.Tensor]:
        """``pyro.infer.Predictive`` on the batch of ``data`` (all cells of ``split``), on the
        model's device; results on the CPU. With ``guide`` the posterior predictive
        (``observe=False``), otherwise the prior predictive (``x_ng`` dropped)."""
        if isinstance(data, ComparativeData):
            batch = self.prepare_data(data).full_batch(split)
        else:
            batch = data
        device = next(self.parameters()).device
        batch = {s: (src if guide else src.without_data()).to(device) for s, src in batch.items()}
        if return_sites is None:
            return_sites = tuple(f"x_{s}" for s, src in batch.items() if src.size > 0)
        predictive = pyro.infer.Predictive(
            self.model,
            guide=self.guide if guide else None,
            num_samples=num_samples,
            return_sites=list(return_sites),
        )
        samples = predictive(batch, observe=False) if guide else predictive(batch)
        return {k: v.cpu() for k, v in samples.items()}

    @torch.no_grad()
    def posterior_predictive(
        self,
        data: ComparativeData | Sources,
        num_samples: int = 10,
        split: str | None = None,
        return_sites: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive samples: ``Predictive(model, guide)(batch, observe=False)``.

        ``data`` is a :class:`ComparativeData` (all cells of ``split``) or a batch
        ``{source: SourceBatch}``. Returns ``{"x_<source>": (num_samples, cells, features)}``
        (replicated data given the observed cells' latents) unless ``return_sites`` says
        otherwise; computed on the model's device, returned on the CPU.
        """
        return self._predict(data, split, num_samples, return_sites, guide=True)

    @torch.no_grad()
    def prior_predictive(
        self,
        data: ComparativeData | Sources,
        num_samples: int = 10,
        split: str | None = None,
        return_sites: tuple[str, ...] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Prior predictive samples with the sizes, library sizes and designs of ``data``
        (its counts are dropped): ``Predictive(model.model, num_samples)(sources)``; computed
        on the model's device, returned on the CPU."""
        return self._predict(data, split, num_samples, return_sites, guide=False)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save constructor arguments, feature names and parameters to ``path``."""
        torch.save(
            {
                "class": type(self).__name__,
                "init_args": self._init_args,
                "feature_names": self.feature_names,
                "state_dict": self.state_dict(),
                "pyro_compare_version": _FORMAT_VERSION,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> ComparativeModel:
        """Rebuild a model saved with :meth:`save` (``torch.load(weights_only=True)``: a
        model file cannot run code)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        klass = _REGISTRY.get(state["class"])
        if klass is None:
            raise ValueError(f"unknown model class {state['class']!r} in {path}.")
        if cls is not ComparativeModel and not issubclass(klass, cls):
            raise TypeError(f"{path} holds a {klass.__name__}, not a {cls.__name__}.")
        model = klass(**state["init_args"])
        model.load_state_dict(state["state_dict"])
        model.feature_names = state.get("feature_names")
        return model


def load_model(path: str | Path) -> ComparativeModel:
    """Load any model saved with ``save``."""
    return ComparativeModel.load(path)
