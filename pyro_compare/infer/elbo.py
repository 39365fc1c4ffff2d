r"""Per-source ELBO.

For a model whose observed and local latent sites live under *source plates*
(``pyro.plate("background", ...)``, ``pyro.plate("target", ...)``), the usual
single-sample ELBO estimate splits into a sum of terms, one per source, plus a
``"global"`` term for sites outside every source plate (global latents such as
perturbation masks and effects):

.. math::

    \mathcal{L} = \sum_{s} \mathcal{L}_s + \mathcal{L}_{\text{global}}, \qquad
    \mathcal{L}_s = \mathbb{E}_q\Big[\sum_{i \in s} \log q(\cdot_i) - \log p(\cdot_i)\Big]

(as losses, i.e. negative ELBO terms). Each site is assigned to the source plate among its
``cond_indep_stack``; minibatch scaling comes from Pyro's subsample plates, so each term is an
unbiased estimate of the full-data term. :class:`SourceTrace_ELBO` returns the dict of
differentiable surrogate terms, which the objectives in :mod:`pyro_compare.infer.objectives`
combine. Its ordinary ``loss``/``differentiable_loss``/``loss_and_grads`` are those of
:class:`pyro.infer.Trace_ELBO`, so it drops into :class:`pyro.infer.SVI`; the sum of the dict
equals ``Trace_ELBO``'s differentiable loss on the same traces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.util import warn_if_nan

__all__ = ["GLOBAL", "SourceTrace_ELBO", "site_source"]

GLOBAL = "global"


def site_source(site: dict, sources: Sequence[str]) -> str:
    """Name of the source plate a trace site sits in (outermost first), else ``"global"``."""
    for frame in site["cond_indep_stack"]:
        if frame.name in sources:
            return frame.name
    return GLOBAL


class SourceTrace_ELBO(Trace_ELBO):
    """Trace ELBO that also reports one loss per source plate.

    Parameters
    ----------
    sources
        Names of the source plates (default ``("background", "target")``).
    **kwargs
        Passed to :class:`pyro.infer.Trace_ELBO` (``num_particles``,
        ``vectorize_particles``, ...).

    Examples
    --------
    >>> elbo = SourceTrace_ELBO()
    >>> losses = elbo.source_losses(model.model, model.guide, **batch)   # doctest: +SKIP
    >>> sum(losses.values()).backward()                                   # doctest: +SKIP
    """

    def __init__(self, sources: Sequence[str] = ("background", "target"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.sources = tuple(sources)

    def _source_particle(self, model_trace, guide_trace) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}

        def add(source: str, value) -> None:
            if is_identically_zero(value):
                return
            terms[source] = terms[source] + value if source in terms else value

        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                add(site_source(site, self.sources), -site["log_prob_sum"])
        log_r = None
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            source = site_source(site, self.sources)
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(entropy_term):
                add(source, entropy_term.sum())
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                r = log_r.sum_to(site["cond_indep_stack"])
                add(source, -(r * score_function_term).sum())
        return terms

    def source_losses(self, model, guide, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Differentiable per-source losses (negative ELBO terms), averaged over particles.

        Keys are the source plate names present in the trace plus ``"global"`` (only when
        some site lies outside every source plate).
        """
        totals: dict[str, torch.Tensor] = {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            for source, value in self._source_particle(model_trace, guide_trace).items():
                value = value / self.num_particles
                totals[source] = totals[source] + value if source in totals else value
        for source, value in totals.items():
            warn_if_nan(value, f"loss[{source}]")
        return totals
