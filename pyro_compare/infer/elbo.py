r"""Per-source ELBO.

For a model whose observed and local latent sites live under *source plates* (one plate per
source: ``"background"``, ``"target"``, or one per target condition), the single-sample ELBO
estimate splits into a sum of terms, one per source, plus a ``"global"`` term for sites
outside every source plate (global latents such as perturbation masks and effects):

.. math::

    \mathcal{L} = \sum_{s} \mathcal{L}_s + \mathcal{L}_{\text{global}}, \qquad
    \mathcal{L}_s = \mathbb{E}_q\Big[\sum_{i \in s} \log q(\cdot_i) - \log p(\cdot_i)\Big]

(as losses, i.e. negative ELBO terms). A site belongs to the source it was tagged with by
:func:`~pyro_compare.infer.handlers.source_plate` (every model of this package), or else to
the first plate of its ``cond_indep_stack`` named in ``sources`` (plain ``pyro.plate`` models,
e.g. written by hand); minibatch scaling comes from Pyro's subsample plates, so each term is
an unbiased estimate of the full-data term.

Each per-source term is returned as its *value* plus a zero-valued surrogate that carries
the gradient,

.. math:: \ell_s = L_s + (S_s - \operatorname{stop\_grad}(S_s)),

where :math:`L_s` is the negative ELBO of source :math:`s` and :math:`S_s` its surrogate
(score-function terms for non-reparameterised sites), exactly as
:meth:`pyro.infer.Trace_ELBO.differentiable_loss` does for the total. So the values are the
real per-source losses (logging, validation, early stopping and constraints on a loss are
right) and their gradients are those of the surrogate; their sum equals ``Trace_ELBO``'s
``differentiable_loss`` on the same traces in value and gradient.

:class:`SourceTrace_ELBO` drops into :class:`pyro.infer.SVI`: ``loss``/``loss_and_grads`` are
those of :class:`~pyro.infer.Trace_ELBO`, and each call records that step's per-source
losses in :attr:`SourceTrace_ELBO.last_source_losses` (from the same traces, no second run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine import Trace
from pyro.util import warn_if_nan

from .handlers import site_role, site_tag

__all__ = ["GLOBAL", "SourceTerms", "SourceTrace_ELBO", "site_source"]

GLOBAL = "global"


def site_source(site: dict, sources: Sequence[str] = ()) -> str:
    """Source of a trace site: its source tag, else the first plate of its
    ``cond_indep_stack`` named in ``sources``, else ``"global"``."""
    tag = site_tag(site)
    if tag is not None:
        return tag
    for frame in site["cond_indep_stack"]:
        if frame.name in sources:
            return frame.name
    return GLOBAL


def _is_auxiliary(site: dict) -> bool:
    """``pyro.deterministic`` sites: recorded tensors, no term of the ELBO."""
    return bool((site.get("infer") or {}).get("_deterministic"))


@dataclass
class SourceTerms:
    """One step's per-source losses with the traces they were computed from.

    ``losses`` are differentiable (value = real loss, see the module docstring) and averaged
    over particles. ``traces`` holds one ``(model_trace, guide_trace)`` pair per particle
    (a single pair with a leading particle dimension for vectorised particles). Penalties
    and loggers read what they need from the traces (site values, distributions,
    ``pyro.deterministic`` sites), see :meth:`guide_sites`.
    """

    losses: dict[str, torch.Tensor]
    traces: list[tuple[Trace, Trace]] = field(default_factory=list)

    def scaled(self, factor: float) -> SourceTerms:
        """The same terms with every loss multiplied by ``factor`` (e.g. 1 / cells)."""
        return SourceTerms({k: v * factor for k, v in self.losses.items()}, self.traces)

    def guide_sites(
        self, name: str, role: str | None = None, source: str | None = None
    ) -> Iterator[dict]:
        """Guide-trace sites called ``f"{name}_{source}"`` for every tagged source (of the
        given ``role`` / ``source`` when given), over all particles."""
        for _, guide_trace in self.traces:
            for site_name, site in guide_trace.nodes.items():
                if site["type"] != "sample":
                    continue
                tag = site_tag(site)
                if tag is None or site_name != f"{name}_{tag}":
                    continue
                if role is not None and site_role(site) != role:
                    continue
                if source is not None and tag != source:
                    continue
                yield site

    def guide_values(self, name: str, role: str | None = None) -> torch.Tensor | None:
        """Values of the guide sites ``name_<source>`` of ``role``, flattened to (cells, dims)
        over sources and particles; ``None`` when there are none."""
        values = [s["value"] for s in self.guide_sites(name, role)]
        if not values:
            return None
        dim = values[0].shape[-1]
        return torch.cat([v.reshape(-1, dim) for v in values])


class SourceTrace_ELBO(Trace_ELBO):
    """Trace ELBO that also reports one loss per source.

    Parameters
    ----------
    sources
        Plate names treated as sources for sites *without* a source tag (models written with
        plain ``pyro.plate``); tagged sites (:func:`~pyro_compare.infer.handlers.source_plate`)
        need nothing. Default ``("background", "target")``.
    **kwargs
        Passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``,
        ``vectorize_particles``, ``max_plate_nesting``, ...).

    Attributes
    ----------
    last_source_losses
        ``{source: float}`` of the last ``loss`` / ``loss_and_grads`` /
        ``differentiable_loss`` / ``source_terms`` call (the values of that step's traces).

    Examples
    --------
    >>> elbo = SourceTrace_ELBO()
    >>> svi = pyro.infer.SVI(model.model, model.guide, optim, loss=elbo)  # doctest: +SKIP
    >>> svi.step(batch)                                                    # doctest: +SKIP
    >>> elbo.last_source_losses  # {"background": ..., "target": ...}      # doctest: +SKIP
    """

    def __init__(self, sources: Sequence[str] = ("background", "target"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.sources = tuple(sources)
        self.last_source_losses: dict[str, float] = {}

    # ------------------------------------------------------------------ per-source terms
    def _source_particle(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss, surrogate loss) per source for one particle."""
        loss: dict[str, torch.Tensor] = {}
        surrogate: dict[str, torch.Tensor] = {}

        def add(terms: dict, source: str, value) -> None:
            if is_identically_zero(value):
                return
            terms[source] = terms[source] + value if source in terms else value

        for site in model_trace.nodes.values():
            if site["type"] == "sample" and not _is_auxiliary(site):
                source = site_source(site, self.sources)
                add(loss, source, -site["log_prob_sum"])
                add(surrogate, source, -site["log_prob_sum"])
        log_r = None
        for site in guide_trace.nodes.values():
            if site["type"] != "sample" or _is_auxiliary(site):
                continue
            source = site_source(site, self.sources)
            _, score_function_term, entropy_term = site["score_parts"]
            add(loss, source, site["log_prob_sum"])
            if not is_identically_zero(entropy_term):
                add(surrogate, source, entropy_term.sum())
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                r = log_r.sum_to(site["cond_indep_stack"])
                add(surrogate, source, -(r * score_function_term).sum())
        return loss, surrogate

    def source_terms(self, model: Callable, guide: Callable, *args, **kwargs) -> SourceTerms:
        """Per-source differentiable losses (averaged over particles) and their traces.

        Keys of ``losses`` are the sources present in the trace plus ``"global"`` (only
        when some site lies outside every source).
        """
        loss: dict[str, torch.Tensor] = {}
        surrogate: dict[str, torch.Tensor] = {}
        traces = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            traces.append((model_trace, guide_trace))
            particle_loss, particle_surrogate = self._source_particle(model_trace, guide_trace)
            for terms, particle in ((loss, particle_loss), (surrogate, particle_surrogate)):
                for source, value in particle.items():
                    value = value / self.num_particles
                    terms[source] = terms[source] + value if source in terms else value
        losses: dict[str, torch.Tensor] = {}
        for source in loss.keys() | surrogate.keys():
            value = loss.get(source, 0.0)
            value = value.detach() if torch.is_tensor(value) else torch.as_tensor(value)
            s = surrogate.get(source)
            if s is not None and torch.is_tensor(s) and s.requires_grad:
                # Value of the loss, gradient of the surrogate (Trace_ELBO's convention).
                value = value + (s - s.detach())
            warn_if_nan(value, f"loss[{source}]")
            losses[source] = value
        # Order: as the sources appear in the model (background first), then "global".
        order = list(dict.fromkeys(site_source(s, self.sources) for s in _sites(traces)))
        losses = {k: losses[k] for k in sorted(losses, key=lambda k: _rank(order, k))}
        self.last_source_losses = {k: float(v.detach()) for k, v in losses.items()}
        return SourceTerms(losses, traces)

    def source_losses(self, model: Callable, guide: Callable, *args, **kwargs):
        """Differentiable per-source losses (negative ELBO terms), averaged over particles."""
        return self.source_terms(model, guide, *args, **kwargs).losses

    # ------------------------------------------------------------------ Trace_ELBO API
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The total differentiable loss (as :class:`~pyro.infer.Trace_ELBO`)."""
        return _total(self.source_terms(model, guide, *args, **kwargs).losses)

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The ELBO loss estimate (no gradients); records the per-source values."""
        with torch.no_grad():
            return float(_total(self.source_terms(model, guide, *args, **kwargs).losses))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Loss value and ``backward()`` of the surrogate, from one set of traces; records
        the step's per-source losses in :attr:`last_source_losses`."""
        total = _total(self.source_terms(model, guide, *args, **kwargs).losses)
        if total.requires_grad:
            total.backward()
        return float(total.detach())


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    values = list(losses.values())
    return sum(values[1:], values[0]) if values else torch.zeros(())


def _sites(traces) -> Iterator[dict]:
    for model_trace, _ in traces:
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                yield site


def _rank(order: list[str], key: str) -> tuple[int, int]:
    if key == GLOBAL:
        return (1, 0)
    return (0, order.index(key) if key in order else len(order))
