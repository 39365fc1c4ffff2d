"""Simulators with ground truth.

(Three simulators sharing the random mixing and observation helpers: one file.)

Every simulator is seeded and returns an AnnData object whose ``X`` holds the
observations (sparse integer counts for count noise) and whose ``obsm``/``uns`` hold
the ground truth, so that identifiability metrics can be computed on the fit.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "random_mixing",
    "simulate_contrastive",
    "simulate_mixture",
    "sample_observations",
]


def random_mixing(
    n_latent: int,
    n_features: int,
    rng: np.random.Generator,
    hidden: tuple[int, ...] = (64,),
    kind: str = "relu",
    output_scale: float = 1.0,
):
    """A random MLP ``R^{n_latent} -> R^{n_features}`` with standardised outputs.

    ``kind="relu"`` gives a piecewise-affine map (the identifiable case of
    Kivva et al. 2022 / Lopez et al. 2024); ``"leaky_relu"`` also piecewise affine and
    injective with probability one for wide layers; ``"smooth"`` uses softplus/tanh layers
    (no piecewise-affine guarantee).

    Returns a function mapping ``(n, n_latent)`` arrays to ``(n, n_features)`` arrays whose
    outputs have roughly unit standard deviation times ``output_scale`` per feature.
    """
    sizes = (n_latent, *hidden)
    weights = [rng.normal(0, 1 / np.sqrt(a), size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    biases = [rng.normal(0, 0.5, size=b) for b in sizes[1:]]
    w_out = rng.normal(0, 1 / np.sqrt(sizes[-1]), size=(sizes[-1], n_features))
    acts = {
        "relu": lambda h: np.maximum(h, 0.0),
        "leaky_relu": lambda h: np.where(h > 0, h, 0.2 * h),
        "smooth": lambda h: np.tanh(h) + 0.5 * np.log1p(np.exp(h)),
    }
    if kind not in acts:
        raise ValueError(f"unknown mixing kind {kind!r}; use one of {sorted(acts)}.")
    act = acts[kind]

    def hidden_of(z):
        h = z
        for w, b in zip(weights, biases):
            h = act(h @ w + b)
        return h

    # Standardise each output on a reference sample so every gene carries signal.
    ref = hidden_of(rng.normal(size=(4096, n_latent))) @ w_out
    mean, std = ref.mean(0), ref.std(0) + 1e-8

    def f(z: np.ndarray) -> np.ndarray:
        return output_scale * (hidden_of(z) @ w_out - mean) / std

    return f


def sample_observations(
    logits_ng: np.ndarray,
    rng: np.random.Generator,
    likelihood: str = "nb",
    library_mean: float = 2000.0,
    library_sd_log: float = 0.3,
    inverse_dispersion: tuple[float, float] = (5.0, 20.0),
    noise_sd: float = 0.5,
):
    """Turn decoder outputs into observations.

    Counts (``nb``/``poisson``): ``x_ng ~ NB(l_n softmax(logits_n)_g, theta_g)`` with
    ``l_n ~ LogNormal(log library_mean, library_sd_log)`` and ``theta_g`` uniform in
    ``inverse_dispersion``.  ``gaussian``: ``x_ng = logits_ng + noise_sd * eps``.

    Returns ``(X, library_n, theta_g)`` with ``X`` a CSR matrix for counts.
    """
    n, g = logits_ng.shape
    if likelihood == "gaussian":
        x = logits_ng + noise_sd * rng.normal(size=(n, g))
        return x.astype(np.float32), None, None
    p = np.exp(logits_ng - logits_ng.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    library = np.exp(rng.normal(np.log(library_mean), library_sd_log, size=n))
    mu = library[:, None] * p
    theta = rng.uniform(*inverse_dispersion, size=g)
    if likelihood == "poisson":
        x = rng.poisson(mu)
    elif likelihood == "nb":
        # NB as a Gamma-Poisson mixture: rate ~ Gamma(theta, mu / theta).
        x = rng.poisson(rng.gamma(theta[None, :], mu / theta[None, :]))
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; use 'nb', 'poisson' or 'gaussian'.")
    x = x.astype(np.float32)
    # Guarantee no empty cell (rare at these library sizes): one count in the top gene.
    empty = np.flatnonzero(x.sum(1) == 0)
    x[empty, p[empty].argmax(1)] = 1.0
    return sp.csr_matrix(x), library, theta


def _random_covariance(d: int, rng: np.random.Generator, scale_range: tuple[float, float]):
    """Random SPD matrix ``Q diag(s^2) Q^T`` with ``Q`` Haar-orthogonal, ``s`` uniform."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    q = q * np.sign(np.diag(r))
    s = rng.uniform(*scale_range, size=d)
    return (q * s**2) @ q.T


def simulate_mixture(
    n_cells: int = 3000,
    n_genes: int = 200,
    n_latent: int = 5,
    n_components: int = 5,
    seed: int = 0,
    likelihood: str = "nb",
    mixing: str = "relu",
    hidden: tuple[int, ...] = (64,),
    separation: float = 3.0,
    component_scale: tuple[float, float] = (0.4, 1.0),
    library_mean: float = 2000.0,
    library_sd_log: float = 0.3,
    output_scale: float = 1.0,
    noise_sd: float = 0.5,
) -> ad.AnnData:
    r"""Data from a Gaussian-mixture latent pushed through a random MLP (Kivva et al. 2022).

    .. math::

        c_n &\sim \mathrm{Categorical}(\pi), \qquad
        z_n \mid c_n \sim N(\mu_{c_n}, \Sigma_{c_n}), \\
        x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n)), \theta\big)
        \quad\text{(or Poisson, or } x_n = f(z_n) + \sigma \varepsilon_n\text{)}

    with :math:`\pi \sim \mathrm{Dirichlet}(5 \cdot 1_K)`, means
    :math:`\mu_k \sim N(0, \text{separation}^2 I / d)` (so the expected distance between two
    means is about ``separation * sqrt(2)``), covariances
    :math:`\Sigma_k = Q_k \operatorname{diag}(s_k^2) Q_k^\top` with random rotations
    :math:`Q_k` and :math:`s_{kj}` uniform in ``component_scale``, and :math:`f` a random
    ReLU MLP (``mixing="relu"``, piecewise affine: identifiable up to an affine map) or a
    smooth one (``mixing="smooth"``). The latents are then centred and divided by one global
    scalar so their average variance is 1 (an affine change; the stored means and
    covariances are those of the standardised latents).

    Parameters
    ----------
    n_cells, n_genes
        Data size.
    n_latent, n_components
        Latent dimension :math:`d` and number of mixture components :math:`K`.
    seed
        Seed of everything (:func:`numpy.random.default_rng`).
    likelihood
        ``"nb"``, ``"poisson"`` or ``"gaussian"``.
    mixing, hidden, output_scale
        The random mixing MLP, see :func:`random_mixing`.
    separation, component_scale
        Spread of the component means and range of the components' standard deviations.
    library_mean, library_sd_log, noise_sd
        Observation noise, see :func:`sample_observations`.

    Returns
    -------
    AnnData
        ``X``: counts (CSR) or continuous values; ``obs["component"]`` (categorical
        :math:`c_n`), ``obs["library_size"]`` (counts); ``obsm["true_latent"]`` (:math:`z`,
        shape (n_cells, n_latent)); ``uns["true_weights"]`` (K,), ``uns["true_means"]``
        (K, d), ``uns["true_covariances"]`` (K, d, d); ``uns["simulation"]``: the settings.
    """
    if n_cells < 1 or n_components < 1 or n_latent < 1:
        raise ValueError("n_cells, n_latent and n_components must be positive.")
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(0.0, separation / np.sqrt(n_latent), size=(n_components, n_latent))
    covs = np.stack([_random_covariance(n_latent, rng, component_scale) for _ in weights])
    c = rng.choice(n_components, size=n_cells, p=weights)
    chol = np.linalg.cholesky(covs)
    z = means[c] + np.einsum("nij,nj->ni", chol[c], rng.normal(size=(n_cells, n_latent)))
    # Standardise with one centre and one scalar scale (an affine map, so nothing is lost).
    centre = z.mean(0)
    scale = np.sqrt(z.var(0).mean())
    z = (z - centre) / scale
    means = (means - centre) / scale
    covs = covs / scale**2
    f = random_mixing(n_latent, n_genes, rng, hidden=hidden, kind=mixing, output_scale=output_scale)
    x, library, theta = sample_observations(
        f(z),
        rng,
        likelihood,
        library_mean=library_mean,
        library_sd_log=library_sd_log,
        noise_sd=noise_sd,
    )
    obs = pd.DataFrame(
        {"component": pd.Categorical(c, categories=np.arange(n_components))},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    if library is not None:
        obs["library_size"] = np.asarray(x.sum(1)).ravel()
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obsm["true_latent"] = z.astype(np.float32)
    adata.uns["true_weights"] = weights
    adata.uns["true_means"] = means
    adata.uns["true_covariances"] = covs
    adata.uns["simulation"] = {
        "kind": "mixture",
        "seed": seed,
        "likelihood": likelihood,
        "mixing": mixing,
        "n_latent": n_latent,
        "n_components": n_components,
        "hidden": list(hidden),
        "separation": separation,
        "component_scale": list(component_scale),
        "library_mean": library_mean,
        "library_sd_log": library_sd_log,
        "output_scale": output_scale,
        "noise_sd": noise_sd,
    }
    if theta is not None:
        adata.var["true_inverse_dispersion"] = theta
    return adata


def simulate_contrastive(
    n_background: int = 2000,
    n_target: int = 2000,
    n_genes: int = 200,
    n_background_latent: int = 5,
    n_salient_latent: int = 3,
    seed: int = 0,
    likelihood: str = "nb",
    mixing: str = "relu",
    hidden: tuple[int, ...] = (64,),
    library_mean: float = 2000.0,
    output_scale: float = 1.0,
    library_sd_log: float = 0.3,
    noise_sd: float = 0.5,
    salient_scale: float = 1.0,
) -> ad.AnnData:
    r"""Contrastive data with known background and salient latents.

    .. math::

        z_n \sim N(0, I_{d_z}), \quad
        t_n = 0 \text{ (background)}, \; t_n \sim N(0, I_{d_t}) \text{ (target)}, \\
        x_n \sim NB\big(l_n \,\mathrm{softmax}(f([z_n, t_n])), \theta\big)

    with ``f`` a random ReLU MLP (piecewise affine) or a smooth MLP (``mixing="smooth"``).

    Parameters
    ----------
    n_background, n_target
        Number of background and target cells.
    n_genes
        Number of features G.
    n_background_latent, n_salient_latent
        Dimensions of the two latent blocks, :math:`d_z` and :math:`d_t`.
    likelihood
        ``"nb"``, ``"poisson"`` (counts) or ``"gaussian"`` (``x = f([z, t]) + noise_sd * eps``).
    mixing
        ``"relu"`` / ``"leaky_relu"`` (piecewise affine: the identifiable case) or ``"smooth"``
        (tanh + softplus layers: no identifiability guarantee).
    hidden
        Hidden widths of the random mixing MLP.
    library_mean, library_sd_log
        Library sizes :math:`l_n \sim \mathrm{LogNormal}(\log(\text{library\_mean}),
        \text{library\_sd\_log})`.
    output_scale
        Standard deviation of each gene's logit across cells (signal strength).
    noise_sd
        Noise standard deviation for ``likelihood="gaussian"``.
    salient_scale
        Standard deviation of the salient latent of target cells, :math:`t_n \sim
        N(0, \text{salient\_scale}^2 I)` (effect size of the target condition).

    Returns
    -------
    AnnData
        ``X``: counts (CSR, integer-valued float32) or continuous values (gaussian);
        ``obs["condition"]`` in {"background", "target"}; ``obs["library_size"]``;
        ``obsm["true_background"]`` (z), ``obsm["true_salient"]`` (t, zeros for
        background cells); ``uns["simulation"]``: the settings.
    """
    if min(n_background, n_target) < 1:
        raise ValueError("n_background and n_target must be positive.")
    rng = np.random.default_rng(seed)
    n = n_background + n_target
    z = rng.normal(size=(n, n_background_latent))
    t = np.zeros((n, n_salient_latent))
    t[n_background:] = salient_scale * rng.normal(size=(n_target, n_salient_latent))
    f = random_mixing(
        n_background_latent + n_salient_latent,
        n_genes,
        rng,
        hidden=hidden,
        kind=mixing,
        output_scale=output_scale,
    )
    logits = f(np.concatenate([z, t], axis=1))
    x, library, theta = sample_observations(
        logits,
        rng,
        likelihood,
        library_mean=library_mean,
        library_sd_log=library_sd_log,
        noise_sd=noise_sd,
    )
    condition = np.array(["background"] * n_background + ["target"] * n_target)
    obs = pd.DataFrame(
        {"condition": pd.Categorical(condition, categories=["background", "target"])},
        index=[f"cell{i}" for i in range(n)],
    )
    if library is not None:
        obs["library_size"] = np.asarray(x.sum(1)).ravel()
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obsm["true_background"] = z.astype(np.float32)
    adata.obsm["true_salient"] = t.astype(np.float32)
    adata.uns["simulation"] = {
        "kind": "contrastive",
        "seed": seed,
        "likelihood": likelihood,
        "mixing": mixing,
        "n_background_latent": n_background_latent,
        "n_salient_latent": n_salient_latent,
        "hidden": list(hidden),
        "library_mean": library_mean,
        "library_sd_log": library_sd_log,
        "output_scale": output_scale,
        "noise_sd": noise_sd,
        "salient_scale": salient_scale,
    }
    if theta is not None:
        adata.var["true_inverse_dispersion"] = theta
    return adata


# ---------------------------------------------------------------------------- sparse shifts
__all__ += ["simulate_sparse_shift"]


def _perturbation_names(n: int) -> list[str]:
    """``P0, P1, ...`` zero-padded so that alphabetical order is numerical order."""
    width = len(str(max(n - 1, 0)))
    return [f"P{k:0{width}d}" for k in range(n)]


def _combination_pairs(
    combinations, n_perturbations: int, names: list[str], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Normalise ``combinations`` (a count or explicit pairs) to sorted index pairs."""
    if isinstance(combinations, (int, np.integer)):
        all_pairs = [(i, j) for i in range(n_perturbations) for j in range(i + 1, n_perturbations)]
        if combinations > len(all_pairs):
            raise ValueError(
                f"combinations={combinations} but only {len(all_pairs)} pairs of "
                f"{n_perturbations} perturbations exist."
            )
        chosen = rng.choice(len(all_pairs), size=int(combinations), replace=False)
        return sorted(all_pairs[c] for c in chosen)
    pairs = []
    for pair in combinations:
        if len(pair) != 2:
            raise ValueError(f"a combination must name two perturbations, got {pair!r}.")
        idx = [names.index(p) if isinstance(p, str) else int(p) for p in pair]
        if idx[0] == idx[1] or not all(0 <= i < n_perturbations for i in idx):
            raise ValueError(f"invalid combination {pair!r}.")
        pairs.append(tuple(sorted(idx)))
    return sorted(set(pairs))


def simulate_sparse_shift(
    n_control: int = 2000,
    n_per_perturbation: int = 300,
    n_perturbations: int = 8,
    n_genes: int = 200,
    n_latent: int = 6,
    seed: int = 0,
    combinations=0,
    likelihood: str = "nb",
    n_per_combination: int | None = None,
    min_targets: int = 1,
    max_targets: int = 3,
    shift_range: tuple[float, float] = (1.5, 3.0),
    mixing: str = "leaky_relu",
    hidden: tuple[int, ...] = (64,),
    library_mean: float = 2000.0,
    output_scale: float = 1.0,
    control_label: str = "control",
    separator: str = "+",
) -> ad.AnnData:
    r"""Control cells and perturbations that shift a sparse set of latent dimensions.

    The generative process of SAMS-VAE / sVAE+ with known ground truth:

    .. math::

        z^{\text{basal}}_n &\sim N(0, I_d), \qquad
        z_n = z^{\text{basal}}_n + \sum_k d_{nk}\, (m_k \odot e_k), \\
        x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n)), \theta\big)

    Perturbation :math:`k` targets a random set of ``min_targets``..``max_targets`` latent
    dimensions (:math:`m_k \in \{0, 1\}^d`) and shifts each by a fixed amount
    :math:`e_{kj} = \pm U(\text{shift\_range})`. Combinations of two perturbations add their
    shifts (:math:`d_n` has two ones). :math:`f` is a random (leaky-)ReLU MLP, i.e.
    piecewise affine, and counts are drawn by
    :func:`sample_observations` (gene softmax times library size).

    Parameters
    ----------
    n_control, n_per_perturbation
        Number of control cells and of cells per single perturbation.
    n_perturbations, n_genes, n_latent
        K, G and d.
    combinations
        ``0``: none; an int ``c``: ``c`` random pairs; or explicit pairs of perturbation
        indices / names, e.g. ``[(0, 1), ("P2", "P5")]``. Labelled ``"P0+P1"``.
    n_per_combination
        Cells per combination (default ``n_per_perturbation``).
    likelihood
        ``"nb"``, ``"poisson"`` or ``"gaussian"``.

    Returns
    -------
    AnnData
        ``X`` counts (CSR); ``obs["perturbation"]`` (``control_label``, ``"P3"``,
        ``"P1+P4"``), ``obs["library_size"]``; ``obsm["true_latent"]`` (z),
        ``obsm["true_basal"]``, ``obsm["true_shift"]`` (z - z_basal), ``obsm["design"]``
        (multi-hot, K columns); ``uns["true_targets"]`` (K x d 0/1 matrix, rows in the order
        of ``uns["perturbation_names"]``, which is also the column order of
        :func:`~pyro_compare.data.build_design`), ``uns["true_effects"]`` (K x d, zero off
        target), ``uns["combinations"]`` (labels), ``uns["simulation"]`` (settings).
    """
    if n_perturbations < 1 or n_latent < 1:
        raise ValueError("n_perturbations and n_latent must be positive.")
    if not 1 <= min_targets <= max_targets <= n_latent:
        raise ValueError("need 1 <= min_targets <= max_targets <= n_latent.")
    rng = np.random.default_rng(seed)
    names = _perturbation_names(n_perturbations)
    targets_kd = np.zeros((n_perturbations, n_latent), dtype=np.int8)
    for k in range(n_perturbations):
        n_t = rng.integers(min_targets, max_targets + 1)
        targets_kd[k, rng.choice(n_latent, size=n_t, replace=False)] = 1
    sign_kd = rng.choice([-1.0, 1.0], size=targets_kd.shape)
    effects_kd = targets_kd * sign_kd * rng.uniform(*shift_range, size=targets_kd.shape)
    pairs = _combination_pairs(combinations, n_perturbations, names, rng)
    n_comb = n_per_perturbation if n_per_combination is None else n_per_combination

    labels = [control_label] * n_control
    rows = [np.zeros(n_perturbations)] * n_control
    for k in range(n_perturbations):
        labels += [names[k]] * n_per_perturbation
        rows += [np.eye(n_perturbations)[k]] * n_per_perturbation
    comb_labels = []
    for i, j in pairs:
        label = f"{names[i]}{separator}{names[j]}"
        comb_labels.append(label)
        labels += [label] * n_comb
        rows += [np.eye(n_perturbations)[i] + np.eye(n_perturbations)[j]] * n_comb
    design_nk = np.asarray(rows, dtype=np.float32).reshape(-1, n_perturbations)
    n = design_nk.shape[0]

    basal_nd = rng.normal(size=(n, n_latent))
    shift_nd = design_nk @ effects_kd
    z_nd = basal_nd + shift_nd
    f = random_mixing(n_latent, n_genes, rng, hidden=hidden, kind=mixing, output_scale=output_scale)
    x, library, theta = sample_observations(f(z_nd), rng, likelihood, library_mean=library_mean)

    categories = [control_label, *names, *comb_labels]
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels, categories=categories)},
        index=[f"cell{i}" for i in range(n)],
    )
    if library is not None:
        obs["library_size"] = np.asarray(x.sum(1)).ravel()
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.obsm["true_latent"] = z_nd.astype(np.float32)
    adata.obsm["true_basal"] = basal_nd.astype(np.float32)
    adata.obsm["true_shift"] = shift_nd.astype(np.float32)
    adata.obsm["design"] = design_nk
    adata.uns["true_targets"] = targets_kd
    adata.uns["true_effects"] = effects_kd.astype(np.float32)
    adata.uns["perturbation_names"] = list(names)
    adata.uns["combinations"] = list(comb_labels)
    adata.uns["simulation"] = {
        "kind": "sparse_shift",
        "seed": seed,
        "likelihood": likelihood,
        "mixing": mixing,
        "n_latent": n_latent,
        "n_perturbations": n_perturbations,
        "control_label": control_label,
        "separator": separator,
    }
    if theta is not None:
        adata.var["true_inverse_dispersion"] = theta
    return adata
