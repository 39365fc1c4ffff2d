r"""Are pairwise distances reproducible across retrained models? Geodesic vs Euclidean.

Syrota et al. (2025): latent coordinates are identifiable only up to smooth invertible
reparametrisations :math:`h`, but geodesic distances under the decoder's pullback metric
are invariant under them (:math:`f_2 = f_1 \circ h^{-1}` maps the curve :math:`h \circ c`
onto the image of :math:`c` under :math:`f_1`). :func:`distance_stability` measures how
much each kind of distance varies across models fitted with different seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._inputs import Decoder, as_latents, reference_tensor, resolve_decoder
from .geodesics import DistanceKind, pairwise_distances

__all__ = ["DistanceStability", "distance_stability"]


@dataclass
class DistanceStability:
    """Output of :func:`distance_stability`.

    Attributes
    ----------
    cv
        ``kind -> (P,)`` coefficient of variation across models of each pair's
        normalised distance.
    mean_cv
        ``kind -> float``, mean of ``cv[kind]`` over pairs.
    distances
        ``kind -> (M, P)`` normalised distances (model, pair).
    p_value
        One-sided Wilcoxon signed-rank p-value for "geodesic CV < Euclidean CV"
        (paired over pairs); ``None`` unless both kinds were computed, ``nan``
        when all differences are zero.
    statistic
        The Wilcoxon statistic (``None`` / ``nan`` likewise).
    """

    cv: dict[str, np.ndarray]
    mean_cv: dict[str, float]
    distances: dict[str, np.ndarray]
    p_value: float | None = None
    statistic: float | None = None


def distance_stability(
    decoders: Sequence[Decoder],
    z_per_model: Sequence[Any],
    pairs: Any,
    kind: Sequence[DistanceKind] = ("geodesic", "euclidean"),
    normalise: Literal["mean", "median"] | None = "mean",
    **geodesic_kwargs: Any,
) -> DistanceStability:
    r"""How reproducible are pairwise distances across retrained models?

    ``M`` models were fitted to the same cells with different seeds; model
    ``m`` gives a decoder and latent codes ``z_per_model[m]`` of shape
    ``(n, d_m)`` (same cells, same order; ``d_m`` may differ). For each pair of
    cells :math:`p = (i, j)` in ``pairs`` and each kind of distance,

    1. model ``m`` gives :math:`D_{mp}` (geodesic under its own decoder, or
       Euclidean between its latent codes);
    2. normalisation: :math:`\tilde D_{mp} = D_{mp} / s_m` with
       :math:`s_m = \operatorname{mean}_p D_{mp}` (``"mean"``) or the median,
       so that a global rescaling of one model's latent space (which
       identifiability theory cannot pin down for Euclidean distances, and
       which changes nothing about relative distances) does not count as
       instability;
    3. :math:`\mathrm{CV}_p = \operatorname{sd}_m(\tilde D_{mp}) /
       \operatorname{mean}_m(\tilde D_{mp})` (sample standard deviation, ``ddof=1``).

    Syrota et al. (2025) predict geodesic distances to be identifiable, hence
    a lower CV than Euclidean ones; the p-value is the one-sided Wilcoxon
    signed-rank test of :math:`\mathrm{CV}^{geo}_p < \mathrm{CV}^{euc}_p`
    paired over the pairs.

    Parameters
    ----------
    decoders
        ``M`` decoder callables or objects with ``decoder_mean``.
    z_per_model
        ``M`` arrays/tensors ``(n, d_m)`` of latent codes of the same cells.
    pairs
        ``(P, 2)`` integer cell indices.
    kind
        Which distances to compute.
    normalise
        ``"mean"``, ``"median"`` or ``None``.
    **geodesic_kwargs
        Passed to :func:`~pyro_compare.metrics.geometry.geodesics.pairwise_distances` /
        :func:`~pyro_compare.metrics.geometry.geodesics.geodesic`.

    Returns
    -------
    DistanceStability
    """
    M = len(decoders)
    if M != len(z_per_model):
        raise ValueError(f"{M} decoders but {len(z_per_model)} latent matrices.")
    if M < 2:
        raise ValueError("distance_stability needs at least 2 models.")
    pairs_p2 = np.asarray(pairs.detach().cpu() if isinstance(pairs, Tensor) else pairs)
    if pairs_p2.ndim != 2 or pairs_p2.shape[1] != 2:
        raise ValueError(f"`pairs` must have shape (P, 2); got {pairs_p2.shape}.")
    pairs_p2 = pairs_p2.astype(np.int64)
    n_cells = {int(np.shape(z)[0]) for z in z_per_model}
    if len(n_cells) != 1:
        raise ValueError(f"All models must embed the same cells; got row counts {n_cells}.")
    if pairs_p2.size and (pairs_p2.min() < 0 or pairs_p2.max() >= n_cells.pop()):
        raise ValueError("`pairs` contains cell indices out of range.")

    kinds = tuple(kind)
    cv: dict[str, np.ndarray] = {}
    mean_cv: dict[str, float] = {}
    dists: dict[str, np.ndarray] = {}
    for k in kinds:
        rows = []
        for dec, z in zip(decoders, z_per_model, strict=True):
            ref = reference_tensor(resolve_decoder(dec)) if k == "geodesic" else None
            z_nd = as_latents(z, ref)
            i = torch.as_tensor(pairs_p2[:, 0], device=z_nd.device)
            j = torch.as_tensor(pairs_p2[:, 1], device=z_nd.device)
            kw = geodesic_kwargs if k == "geodesic" else {}
            d_p = pairwise_distances(dec if k == "geodesic" else None, z_nd[i], z_nd[j], k, **kw)
            rows.append(d_p.detach().cpu().double().numpy())
        D_mp = np.stack(rows)
        if normalise == "mean":
            D_mp = D_mp / D_mp.mean(axis=1, keepdims=True)
        elif normalise == "median":
            D_mp = D_mp / np.median(D_mp, axis=1, keepdims=True)
        elif normalise is not None:
            raise ValueError(f"Unknown normalise {normalise!r}; choose 'mean', 'median' or None.")
        cv_p = D_mp.std(axis=0, ddof=1) / D_mp.mean(axis=0)
        cv[k], mean_cv[k], dists[k] = cv_p, float(np.mean(cv_p)), D_mp

    p_value = statistic = None
    if "geodesic" in cv and "euclidean" in cv:
        diff = cv["geodesic"] - cv["euclidean"]
        if np.all(diff == 0):
            p_value = statistic = float("nan")
        else:
            from scipy.stats import wilcoxon  # lazy: scipy.stats is slow to import

            res = wilcoxon(cv["geodesic"], cv["euclidean"], alternative="less")
            p_value, statistic = float(res.pvalue), float(res.statistic)
    return DistanceStability(cv, mean_cv, dists, p_value, statistic)
