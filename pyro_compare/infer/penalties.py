r"""Leakage penalties for comparative models.

A contrastive model splits each cell's representation into a background latent ``z``
(shared by all sources) and a salient latent ``t`` (target-specific). Nothing in the
ELBO alone forbids information from *leaking* across the blocks; the penalties below
measure the two leakage directions on the current minibatch, from the guide's trace of
that step (sites tagged by source and role, see :mod:`pyro_compare.infer.handlers`), and
are differentiable
so that the objectives of :mod:`pyro_compare.infer.objectives` can use them:

* salient latent of background cells should be 0 (the model has :math:`t_n = 0` there):
  :func:`wasserstein_to_zero` (closed form) or :func:`mmd` against the point mass;
* the background latent should not carry the condition: :func:`mmd` between the
  background latents of background and of target cells (as in MM-cVAE), or, when the
  composition of the conditions may differ, :func:`cluster_mmd` (the same comparison
  *within* clusters of the background latent: condition information beyond composition);
* the two blocks should be independent on target cells: :func:`hsic`.

The sample-level estimators (:func:`mmd`, :func:`hsic`) are *unbiased* U-statistics: their
expectation is 0 when the two distributions agree (resp. the blocks are independent), so
a small tolerance :math:`\epsilon` is reachable. (The biased V-statistic of the MMD has a
floor near :math:`2 \bar k / B` for a batch of size :math:`B`, so a constraint
``penalty <= epsilon`` with a smaller epsilon could never be met and its multiplier would
grow without bound.) A U-statistic can be slightly negative on a minibatch.

:data:`PENALTIES` maps names to callables ``penalty(terms) -> Tensor`` (a scalar, ``terms``
the step's :class:`~pyro_compare.infer.elbo.SourceTerms`) used by
:class:`~pyro_compare.infer.objectives.Sum` and
:class:`~pyro_compare.infer.objectives.Constrained`; their units are those of the
estimator, averaged over the minibatch's cells (not multiplied by the number of cells).

Caveat for "mmd" on real data: when the composition of the conditions differs (e.g. more
monocytes among control cells), a perfect background latent still differs in distribution
between the conditions, so forcing the MMD to 0 over-corrects (it mixes cell types).
Choose epsilon above the MMD that composition alone implies, and report condition
accuracy *within* each cell type. :func:`cluster_mmd` (``"cluster_mmd"``) avoids this: it
compares the conditions only inside clusters of the background latent, so a difference of
cluster weights (composition) costs nothing while a shift of the condition inside a
cluster does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro import poutine

from ..data.sources import BACKGROUND, TARGET, sources_to
from .elbo import SourceTerms

__all__ = [
    "ClusterMMD",
    "Penalty",
    "resolve_penalty",
    "PENALTIES",
    "cluster_mmd",
    "evaluate_penalty",
    "hsic",
    "kmeans",
    "hsic_penalty",
    "mmd",
    "mmd_background_penalty",
    "mmd_salient_penalty",
    "rbf_kernel",
    "wasserstein_to_zero",
    "wasserstein_to_zero_penalty",
]

#: Default multipliers of the median-heuristic squared bandwidth (multi-bandwidth kernel).
MEDIAN_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)


# --------------------------------------------------------------------------- estimators


def wasserstein_to_zero(loc_nd: torch.Tensor, scale_nd: torch.Tensor) -> torch.Tensor:
    r"""Squared 2-Wasserstein distance from :math:`N(\mu_n, \mathrm{diag}\,\sigma_n^2)` to the
    point mass at 0, averaged over cells.

    .. math::

        W_2^2\big(N(\mu, \mathrm{diag}\,\sigma^2), \delta_0\big)
            = \mathbb{E}\,\lVert t \rVert^2 = \lVert \mu \rVert^2 + \sum_j \sigma_j^2,
        \qquad
        P = \frac{1}{n} \sum_{n} \Big(\lVert \mu_n \rVert^2 + \sum_j \sigma_{nj}^2\Big).

    Parameters
    ----------
    loc_nd, scale_nd
        Means and standard deviations of q(t | x) for n cells, shape (n, d).

    Returns
    -------
    Tensor
        Scalar, in squared latent units per cell.
    """
    if loc_nd.shape != scale_nd.shape:
        raise ValueError(f"loc and scale shapes differ: {loc_nd.shape} vs {scale_nd.shape}.")
    if loc_nd.shape[0] == 0:
        return loc_nd.new_zeros(())
    return (loc_nd.pow(2) + scale_nd.pow(2)).sum(-1).mean()


def _sq_dists(a_nd: torch.Tensor, b_md: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, shape (n, m), clamped at 0."""
    d = a_nd.pow(2).sum(-1, keepdim=True) - 2.0 * a_nd @ b_md.T + b_md.pow(2).sum(-1)
    return d.clamp_min(0.0)


def _bandwidths(
    sq_dists: Sequence[torch.Tensor], bandwidths: Sequence[float] | None
) -> torch.Tensor:
    """Squared bandwidths :math:`h^2`: given, or median heuristic times MEDIAN_FACTORS."""
    like = sq_dists[0]
    if bandwidths is not None:
        h2 = torch.as_tensor(list(bandwidths), dtype=like.dtype, device=like.device)
        if (h2 <= 0).any():
            raise ValueError("bandwidths must be positive.")
        return h2
    pooled = torch.cat([d.detach().reshape(-1) for d in sq_dists])
    pooled = pooled[pooled > 0]
    med = pooled.median() if pooled.numel() else like.new_ones(())
    factors = torch.as_tensor(MEDIAN_FACTORS, dtype=med.dtype, device=med.device)
    return med.clamp_min(1e-12) * factors


def rbf_kernel(sq_dist: torch.Tensor, h2_k: torch.Tensor) -> torch.Tensor:
    r"""Multi-bandwidth RBF kernel from squared distances:
    :math:`k(a, b) = \frac{1}{K} \sum_k \exp\!\big(-\lVert a - b \rVert^2 / (2 h_k^2)\big)`."""
    return torch.exp(-sq_dist.unsqueeze(-1) / (2.0 * h2_k)).mean(-1)


def mmd(
    x_nd: torch.Tensor,
    y_md: torch.Tensor,
    bandwidths: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Unbiased estimate of the squared maximum mean discrepancy between two samples.

    With the multi-bandwidth RBF kernel :func:`rbf_kernel`,

    .. math::

        \widehat{\mathrm{MMD}}^2_u = \frac{1}{n(n-1)} \sum_{i \ne i'} k(x_i, x_{i'})
            + \frac{1}{m(m-1)} \sum_{j \ne j'} k(y_j, y_{j'})
            - \frac{2}{nm} \sum_{i, j} k(x_i, y_j)

    (Gretton et al. 2012, eq. 3): unbiased for :math:`\mathrm{MMD}^2 \ge 0`, which is 0 iff
    the distributions agree (characteristic kernel); the estimate itself can be negative.

    Parameters
    ----------
    x_nd, y_md
        The two samples (n, d) and (m, d); n, m >= 2.
    bandwidths
        Squared bandwidths :math:`h_k^2`. ``None``: the median heuristic, the median of the
        pooled pairwise squared distances (detached) times (1/4, 1/2, 1, 2, 4). Fixed
        bandwidths are needed when one sample is a point mass (the median heuristic would
        make the estimate invariant to a common rescaling).

    Returns
    -------
    Tensor
        Scalar in kernel units (between -1 and 2).
    """
    n, m = x_nd.shape[0], y_md.shape[0]
    if n < 2 or m < 2:
        return x_nd.new_zeros(()) + 0.0 * (x_nd.sum() + y_md.sum())
    d_xx, d_yy, d_xy = _sq_dists(x_nd, x_nd), _sq_dists(y_md, y_md), _sq_dists(x_nd, y_md)
    h2 = _bandwidths((d_xx, d_yy, d_xy), bandwidths).to(x_nd)
    k_xx, k_yy, k_xy = rbf_kernel(d_xx, h2), rbf_kernel(d_yy, h2), rbf_kernel(d_xy, h2)
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return sum_xx / (n * (n - 1)) + sum_yy / (m * (m - 1)) - 2.0 * k_xy.mean()


def kmeans(
    x_nd: torch.Tensor, n_clusters: int, iterations: int = 10, seed: int = 0
) -> torch.Tensor:
    r"""Centroids of Lloyd's k-means on ``x_nd`` (no gradients), k-means++ initialisation.

    Deterministic for given inputs: the k-means++ draws use a private generator seeded with
    ``seed`` (the global torch RNG is untouched, so calling it inside a training step
    changes nothing else). ``n_clusters`` is capped at the number of rows. An empty cluster
    keeps its previous centroid.

    Returns
    -------
    Tensor
        Centroids, shape (K, d).
    """
    x = x_nd.detach()
    n = x.shape[0]
    k = max(1, min(int(n_clusters), n))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = x[first : first + 1]
    d2 = _sq_dists(x, centroids).squeeze(-1)
    for _ in range(1, k):
        probs = d2.clamp_min(0).cpu().double()
        if float(probs.sum()) <= 0:
            probs = torch.ones(n, dtype=torch.float64)
        j = int(torch.multinomial(probs, 1, generator=gen))
        centroids = torch.cat([centroids, x[j : j + 1]])
        d2 = torch.minimum(d2, _sq_dists(x, x[j : j + 1]).squeeze(-1))
    for _ in range(iterations):
        assign = _sq_dists(x, centroids).argmin(-1)
        onehot = torch.nn.functional.one_hot(assign, k).to(x.dtype)
        counts = onehot.sum(0)
        sums = onehot.T @ x
        keep = counts > 0
        new = torch.where(keep.unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1), centroids)
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids


def cluster_mmd(
    x_nd: torch.Tensor,
    y_md: torch.Tensor,
    n_clusters: int = 8,
    bandwidths: Sequence[float] | None = None,
    iterations: int = 10,
    min_effective_size: float = 2.0,
    seed: int = 0,
    kernel: str = "rbf",
) -> torch.Tensor:
    r"""Cluster-conditional MMD²: how much the two samples differ *within* clusters of the
    pooled sample, ignoring how much weight each sample puts on each cluster.

    The pooled sample :math:`\{x_i\} \cup \{y_j\}` (detached) is clustered by k-means
    (:func:`kmeans`, :math:`K` centroids :math:`c_k`); each point gets soft memberships
    :math:`r_k(u) \propto \exp(-\lVert u - c_k \rVert^2 / 2 s^2)`, the E-step of an isotropic
    Gaussian mixture with equal weights and per-dimension variance :math:`s^2` = the mean
    squared distance of the points to their nearest centroid divided by :math:`d`
    (memberships are constants for autograd). Inside cluster :math:`k`, with weights
    :math:`a_i = r_k(x_i)`, :math:`b_j = r_k(y_j)`, the weighted U-statistic

    .. math::

        \widehat{\mathrm{MMD}}^2_k =
            \frac{\sum_{i \ne i'} a_i a_{i'} k(x_i, x_{i'})}{\sum_{i \ne i'} a_i a_{i'}}
          + \frac{\sum_{j \ne j'} b_j b_{j'} k(y_j, y_{j'})}{\sum_{j \ne j'} b_j b_{j'}}
          - 2 \frac{\sum_{i, j} a_i b_j k(x_i, y_j)}{\sum_i a_i \sum_j b_j}

    estimates the MMD² between the two samples' distributions restricted (softly) to the
    cluster, and the penalty is its average over clusters weighted by the clusters' pooled
    mass, :math:`\sum_k \pi_k \widehat{\mathrm{MMD}}^2_k`, over the clusters where both samples
    have an effective size :math:`(\sum a)^2 / \sum a^2 \ge` ``min_effective_size``.

    If the two samples are mixtures of the same within-cluster distributions with
    different cluster weights (a *composition* difference: more monocytes among controls),
    every :math:`\mathrm{MMD}^2_k` is ~0 and so is the penalty, while :func:`mmd` is not;
    if a sample is shifted inside the clusters (the condition is encoded beyond
    composition) it is positive. The kernel is :func:`rbf_kernel` with squared bandwidths
    = the mean squared distance between two points of the same cluster (pairs weighted by
    their joint membership, detached) times (1/4, 1/2, 1, 2, 4), so the comparison is at the
    scale of the clusters (a global median bandwidth would be flat inside them); fixed
    ``bandwidths`` override. One kernel matrix serves every cluster (the cost is that of
    :func:`mmd` on the pooled sample plus the k-means).

    Parameters
    ----------
    x_nd, y_md
        The two samples (n, d) and (m, d).
    n_clusters
        :math:`K` (capped at the pooled size).
    bandwidths
        Fixed squared bandwidths, or ``None`` (within-cluster scale, above).
    iterations, seed
        Lloyd iterations and the seed of the k-means++ draws (:func:`kmeans`).
    min_effective_size
        Clusters where either sample has a smaller effective size are skipped (no
        unbiased within-cluster estimate there).
    kernel
        ``"rbf"`` (above; characteristic: any within-cluster difference) or ``"linear"``:
        :math:`k(u, v) = \langle u, v \rangle / h^2` with :math:`h^2` the within-cluster
        mean squared distance, so each cluster's term is the unbiased squared distance
        between the two samples' means in it (only mean shifts; cheaper to satisfy).

    Returns
    -------
    Tensor
        Scalar in kernel units (0 when no cluster holds both samples).
    """
    n, m = x_nd.shape[0], y_md.shape[0]
    zero = x_nd.new_zeros(()) + 0.0 * (x_nd.sum() + y_md.sum())
    if n < 2 or m < 2:
        return zero
    pooled = torch.cat([x_nd, y_md])
    centroids = kmeans(pooled, n_clusters, iterations=iterations, seed=seed)
    with torch.no_grad():
        d2c = _sq_dists(pooled.detach(), centroids)
        s2 = d2c.min(-1).values.mean().clamp_min(1e-12) / pooled.shape[-1]
        r_nk = torch.softmax(-d2c / (2.0 * s2), dim=-1)
    d_all = _sq_dists(pooled, pooled)
    a_nk, b_mk = r_nk[:n], r_nk[n:]
    sa, sb = a_nk.sum(0), b_mk.sum(0)
    eff_a = sa.pow(2) / a_nk.pow(2).sum(0).clamp_min(1e-30)
    eff_b = sb.pow(2) / b_mk.pow(2).sum(0).clamp_min(1e-30)
    use = (eff_a >= min_effective_size) & (eff_b >= min_effective_size)
    if not bool(use.any()):
        return zero
    with torch.no_grad():
        # pairs (i != i') weighted by their joint membership, per cluster: sum_k r_ik r_i'k
        gram = r_nk[:, use] @ r_nk[:, use].T
        gram.fill_diagonal_(0.0)
        h2_within = (gram * d_all.detach()).sum() / gram.sum().clamp_min(1e-30)
    if bandwidths is None:
        factors = torch.as_tensor(MEDIAN_FACTORS, dtype=pooled.dtype, device=pooled.device)
        h2 = h2_within.clamp_min(1e-12) * factors
    else:
        h2 = _bandwidths((d_all,), bandwidths).to(pooled)
    if kernel == "linear":
        # <u, v> / h2_within: the MMD² is the squared distance between the two samples' means
        # in the cluster, in units of the cluster's mean squared pairwise distance (centred
        # first: the U-statistics are shift-invariant, large coordinates only cost precision).
        centred = pooled - pooled.detach().mean(0)
        kern = centred @ centred.T / h2_within.clamp_min(1e-12)
    else:
        kern = rbf_kernel(d_all, h2)
    kern = kern - torch.diag_embed(kern.diagonal())  # U-statistics: no i = i' terms
    a_nk, b_mk, sa, sb = a_nk[:, use], b_mk[:, use], sa[use], sb[use]
    xx = ((kern[:n, :n] @ a_nk) * a_nk).sum(0) / (sa.pow(2) - a_nk.pow(2).sum(0))
    yy = ((kern[n:, n:] @ b_mk) * b_mk).sum(0) / (sb.pow(2) - b_mk.pow(2).sum(0))
    xy = ((kern[:n, n:] @ b_mk) * a_nk).sum(0) / (sa * sb)
    pi = sa + sb
    return ((xx + yy - 2.0 * xy) * pi).sum() / pi.sum()


def hsic(
    x_nd: torch.Tensor,
    y_nm: torch.Tensor,
    bandwidths_x: Sequence[float] | None = None,
    bandwidths_y: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""Unbiased estimate of the Hilbert–Schmidt independence criterion between paired samples.

    With RBF Gram matrices :math:`K_{ii'} = k(x_i, x_{i'})`, :math:`L_{ii'} = l(y_i, y_{i'})`
    whose diagonals are set to 0 (:math:`\tilde K, \tilde L`), the estimator of
    Song et al. (2012) is

    .. math::

        \widehat{\mathrm{HSIC}}_u = \frac{1}{n(n-3)} \Big[ \mathrm{tr}(\tilde K \tilde L)
            + \frac{\mathbf 1^\top \tilde K \mathbf 1 \; \mathbf 1^\top \tilde L \mathbf 1}
                   {(n-1)(n-2)}
            - \frac{2}{n-2} \mathbf 1^\top \tilde K \tilde L \mathbf 1 \Big],

    unbiased for :math:`\mathrm{HSIC} = \lVert C_{xy} \rVert_{HS}^2 \ge 0`, which is 0 iff
    x and y are independent (characteristic kernels).

    Parameters
    ----------
    x_nd, y_nm
        Paired samples (same n >= 4 rows).
    bandwidths_x, bandwidths_y
        Squared bandwidths per block; ``None``: median heuristic per block (see :func:`mmd`).
    """
    n = x_nd.shape[0]
    if y_nm.shape[0] != n:
        raise ValueError(f"hsic needs paired samples; got {n} and {y_nm.shape[0]} rows.")
    if n < 4:
        return x_nd.new_zeros(()) + 0.0 * (x_nd.sum() + y_nm.sum())
    d_x, d_y = _sq_dists(x_nd, x_nd), _sq_dists(y_nm, y_nm)
    eye = torch.eye(n, dtype=torch.bool, device=x_nd.device)
    k = rbf_kernel(d_x, _bandwidths((d_x,), bandwidths_x).to(x_nd)).masked_fill(eye, 0.0)
    l = rbf_kernel(d_y, _bandwidths((d_y,), bandwidths_y).to(y_nm)).masked_fill(eye, 0.0)
    k1, l1 = k.sum(1), l.sum(1)
    trace_kl = (k * l).sum()  # tr(K L) for symmetric K, L
    term2 = k1.sum() * l1.sum() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (k1 @ l1)
    return (trace_kl + term2 - term3) / (n * (n - 3))


# --------------------------------------------------------------------------- model penalties


def _guide_normal(terms: SourceTerms, name: str, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Location and scale of the guide's Normal sites ``name_<source>`` of ``role``,
    flattened to (cells, dims) over sources and particles."""
    locs, scales = [], []
    for site in terms.guide_sites(name, role):
        fn = site["fn"]
        while not hasattr(fn, "loc") and hasattr(fn, "base_dist"):
            fn = fn.base_dist
        d = site["value"].shape[-1]
        locs.append(fn.loc.reshape(-1, d))
        scales.append(fn.scale.expand_as(fn.loc).reshape(-1, d))
    if not locs:
        raise _missing(terms, name, role)
    return torch.cat(locs), torch.cat(scales)


def _guide_values(terms: SourceTerms, name: str, role: str) -> torch.Tensor:
    value = terms.guide_values(name, role)
    if value is None:
        raise _missing(terms, name, role)
    return value


def _missing(terms: SourceTerms, name: str, role: str) -> KeyError:
    have = sorted({n for _, g in terms.traces for n, s in g.nodes.items() if s["type"] == "sample"})
    return KeyError(
        f"the guide trace has no site {name!r}_<source> for {role!r} cells (guide sites: "
        f"{have}). This penalty needs a contrastive model (ContrastiveVAE) and a batch "
        f"holding {role} cells."
    )


def wasserstein_to_zero_penalty(terms: SourceTerms) -> torch.Tensor:
    r""":func:`wasserstein_to_zero` of q(t | x) of the minibatch's background cells (read from
    the guide's ``t_loc_<source>`` / ``t_scale_<source>`` sites)."""
    return wasserstein_to_zero(
        _guide_values(terms, "t_loc", BACKGROUND), _guide_values(terms, "t_scale", BACKGROUND)
    )


def mmd_background_penalty(
    terms: SourceTerms, key: str = "z_loc", bandwidths: Sequence[float] | None = None
) -> torch.Tensor:
    r""":func:`mmd` between the background latents of background and of target cells.

    Uses the posterior means (``key="z_loc"``, the representation users read) by default;
    ``key="z"`` compares posterior samples (aggregate posteriors, noisier). Bandwidths by
    the median heuristic, so the value does not change with a rescaling of the latent.
    """
    if key == "z_loc":
        x = _guide_normal(terms, "z", BACKGROUND)[0]
        y = _guide_normal(terms, "z", TARGET)[0]
    else:
        x, y = _guide_values(terms, "z", BACKGROUND), _guide_values(terms, "z", TARGET)
    return mmd(x, y, bandwidths)


def mmd_salient_penalty(
    terms: SourceTerms, bandwidths: Sequence[float] | None = None
) -> torch.Tensor:
    r""":func:`mmd` between posterior samples of t for background cells and the point mass 0.

    Fixed squared bandwidths :math:`h^2 \in d_t \cdot (1/4, 1, 4)` (the prior's
    :math:`\mathbb{E}\lVert t - t' \rVert^2 = 2 d_t`) unless given.
    """
    loc = _guide_values(terms, "t_loc", BACKGROUND)
    scale = _guide_values(terms, "t_scale", BACKGROUND)
    t_nd = loc + scale * torch.randn_like(loc)
    if bandwidths is None:
        d_t = t_nd.shape[-1]
        bandwidths = (0.25 * d_t, 1.0 * d_t, 4.0 * d_t)
    return mmd(t_nd, torch.zeros_like(t_nd), bandwidths)


def hsic_penalty(terms: SourceTerms, key: str = "loc") -> torch.Tensor:
    r""":func:`hsic` between background and salient latents of the minibatch's target cells
    (posterior means by default; ``key=""`` for posterior samples)."""
    if key:
        z, t = _guide_normal(terms, "z", TARGET)[0], _guide_normal(terms, "t", TARGET)[0]
    else:
        z, t = _guide_values(terms, "z", TARGET), _guide_values(terms, "t", TARGET)
    return hsic(z, t)


class ClusterMMD:
    r""":func:`cluster_mmd` between the background latents (posterior means) of background and
    of target cells: the condition information left in the background latent *beyond*
    composition (registered as ``"cluster_mmd"``).

    The clusters are recomputed on each minibatch from the detached latents (k-means, a
    fixed seed), so the penalty is a pure function of the step's trace: no state, nothing
    changed by calling it (``state_dict`` is empty; the methods exist for objectives that
    checkpoint their penalties). Calling it twice on the same terms gives the same value.

    Parameters
    ----------
    n_clusters
        Clusters per minibatch (default 8: more than the handful of composition groups a
        minibatch of 2 x 128 cells resolves, few enough for ~30 cells per cluster).
    key
        ``"z_loc"`` (posterior means, the representation users read) or ``"z"``
        (posterior samples).
    bandwidths, min_effective_size
        See :func:`cluster_mmd`.
    kernel
        ``"rbf"`` or ``"linear"`` (within-cluster mean differences only); see
        :func:`cluster_mmd`.
    anchor
        ``None``: the penalty's gradient moves the background latents of both sources;
        ``"background"``: the background cells' latents are constants for it (detached),
        so only the target cells are moved onto the background cells' distribution within
        each cluster and the background source's latent structure (e.g. its cell types) is
        learnt from its ELBO alone.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        key: str = "z_loc",
        bandwidths: Sequence[float] | None = None,
        min_effective_size: float = 2.0,
        anchor: str | None = None,
        kernel: str = "rbf",
    ) -> None:
        if n_clusters < 1:
            raise ValueError("n_clusters must be >= 1.")
        if key not in ("z_loc", "z"):
            raise ValueError(f"unknown key {key!r}; use 'z_loc' or 'z'.")
        self.n_clusters = int(n_clusters)
        self.key = key
        self.bandwidths = bandwidths
        self.min_effective_size = float(min_effective_size)
        if anchor not in (None, "background"):
            raise ValueError(f"unknown anchor {anchor!r}; use None or 'background'.")
        self.anchor = anchor
        if kernel not in ("rbf", "linear"):
            raise ValueError(f"unknown kernel {kernel!r}; use 'rbf' or 'linear'.")
        self.kernel = kernel

    def __call__(self, terms: SourceTerms) -> torch.Tensor:
        if self.key == "z_loc":
            x = _guide_normal(terms, "z", BACKGROUND)[0]
            y = _guide_normal(terms, "z", TARGET)[0]
        else:
            x, y = _guide_values(terms, "z", BACKGROUND), _guide_values(terms, "z", TARGET)
        if self.anchor == "background":
            x = x.detach()
        return cluster_mmd(
            x,
            y,
            n_clusters=self.n_clusters,
            bandwidths=self.bandwidths,
            min_effective_size=self.min_effective_size,
            kernel=self.kernel,
        )

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        """Nothing to restore (the clusters are recomputed on every minibatch)."""

    def __repr__(self) -> str:
        anchor = "" if self.anchor is None else f", anchor={self.anchor!r}"
        kernel = "" if self.kernel == "rbf" else f", kernel={self.kernel!r}"
        return f"ClusterMMD(n_clusters={self.n_clusters}, key={self.key!r}{anchor}{kernel})"


#: A penalty maps one step's :class:`~pyro_compare.infer.elbo.SourceTerms` (losses and
#: traces) to a scalar tensor.
Penalty = Callable[[SourceTerms], torch.Tensor]

#: Named penalties for ``Sum(penalty=...)`` and ``Constrained(penalty=...)``.
PENALTIES: dict[str, Penalty] = {
    "wasserstein_to_zero": wasserstein_to_zero_penalty,
    "mmd": mmd_background_penalty,
    "mmd_salient": mmd_salient_penalty,
    "hsic": hsic_penalty,
    "cluster_mmd": ClusterMMD(),
}


def resolve_penalty(penalty: str | Penalty) -> Penalty:
    """A penalty callable from its name in :data:`PENALTIES` or a callable."""
    if callable(penalty):
        return penalty
    fn = PENALTIES.get(penalty)
    if fn is None:
        raise ValueError(f"unknown penalty {penalty!r}; use one of {sorted(PENALTIES)}.")
    return fn


@torch.no_grad()
def evaluate_penalty(
    model,
    data,
    penalty: str | Penalty,
    split: str | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> float:
    """Average of a penalty over the minibatches of one pass through ``data`` (no gradients).

    Uses the same minibatch construction as training (every source in each batch), so the
    value is comparable to the ``epsilon`` of a :class:`~.objectives.Constrained` fit. The
    guide is traced in eval mode (batches moved to ``device`` when given) and the penalty
    reads that trace.
    """
    fn = resolve_penalty(penalty)
    was_training = model.training
    model.eval()
    values = []
    try:
        for batch in data.loader(batch_size, shuffle=True, split=split, seed=seed):
            if device is not None:
                batch = sources_to(batch, device)
            guide_trace = poutine.trace(model.guide).get_trace(batch)
            values.append(float(fn(SourceTerms({}, [(None, guide_trace)]))))
    finally:
        model.train(was_training)
    return float(sum(values) / len(values))
