"""Simulators with ground truth: shapes, seeds, noise models, and the stated distributions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pyro_compare.data import simulate_contrastive, simulate_mixture
from pyro_compare.data.simulate import random_mixing, sample_observations

# --------------------------------------------------------------------------- mixing maps


def _second_difference(kind: str, seed: int = 0) -> np.ndarray:
    """|f(z + h e) - 2 f(z) + f(z - h e)| for random z, e: zero where f is locally affine."""
    rng = np.random.default_rng(seed)
    f = random_mixing(3, 20, rng, hidden=(32,), kind=kind)
    z = rng.normal(size=(500, 3))
    e = rng.normal(size=(500, 3))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    h = 1e-3
    return np.abs(f(z + h * e) - 2 * f(z) + f(z - h * e)).max(axis=1)


@pytest.mark.parametrize("kind", ["relu", "leaky_relu"])
def test_relu_mixing_is_piecewise_affine(kind):
    # A tiny segment crosses a ReLU kink for only a few points: elsewhere the map is affine.
    d2 = _second_difference(kind)
    assert np.mean(d2 < 1e-9) > 0.9


def test_smooth_mixing_is_not_piecewise_affine():
    d2 = _second_difference("smooth")
    assert np.mean(d2 > 1e-9) > 0.99


def test_random_mixing_standardised_outputs():
    rng = np.random.default_rng(3)
    f = random_mixing(4, 50, rng, output_scale=2.0)
    out = f(np.random.default_rng(4).normal(size=(20000, 4)))
    np.testing.assert_allclose(out.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(out.std(0), 2.0, rtol=0.1)


def test_random_mixing_unknown_kind():
    with pytest.raises(ValueError, match="unknown mixing"):
        random_mixing(2, 3, np.random.default_rng(0), kind="sigmoid")


# --------------------------------------------------------------------------- observations


@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_count_observations_have_the_stated_mean(likelihood):
    rng = np.random.default_rng(0)
    logits = np.tile(rng.normal(size=(1, 8)), (40000, 1))
    x, library, theta = sample_observations(logits, rng, likelihood, library_mean=500.0)
    assert sp.issparse(x) and np.all(x.data == np.round(x.data))
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    # E[x_g / l] = softmax(logits)_g for both count models.
    ratio = np.asarray(x.toarray() / library[:, None]).mean(0)
    np.testing.assert_allclose(ratio, p, rtol=0.05)
    counts = x.toarray()[:, 0]
    mu = library * p[0]
    if likelihood == "poisson":
        # Var[x | l] = mu: the mean squared standardised residual is 1.
        assert abs(np.mean((counts - mu) ** 2 / mu) - 1) < 0.05
    else:
        # Var[x | l] = mu + mu^2 / theta.
        var = mu + mu**2 / theta[0]
        assert abs(np.mean((counts - mu) ** 2 / var) - 1) < 0.05


def test_gaussian_observations():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20000, 3))
    x, library, theta = sample_observations(logits, rng, "gaussian", noise_sd=0.3)
    assert library is None and theta is None and isinstance(x, np.ndarray)
    np.testing.assert_allclose((x - logits).std(0), 0.3, rtol=0.05)


def test_unknown_likelihood():
    with pytest.raises(ValueError, match="unknown likelihood"):
        sample_observations(np.zeros((2, 2)), np.random.default_rng(0), "zip")


# --------------------------------------------------------------------------- contrastive


def test_simulate_contrastive_blocks_and_options():
    adata = simulate_contrastive(60, 80, 40, 3, 2, seed=5, mixing="smooth", likelihood="poisson")
    assert adata.shape == (140, 40)
    assert sp.issparse(adata.X)
    assert adata.obsm["true_background"].shape == (140, 3)
    assert adata.obsm["true_salient"].shape == (140, 2)
    bg = (adata.obs["condition"] == "background").to_numpy()
    assert bg.sum() == 60
    assert np.all(adata.obsm["true_salient"][bg] == 0)
    assert np.all(adata.obsm["true_salient"][~bg] != 0)
    assert adata.uns["simulation"]["mixing"] == "smooth"
    assert adata.uns["simulation"]["likelihood"] == "poisson"
    np.testing.assert_allclose(adata.obs["library_size"], np.asarray(adata.X.sum(1)).ravel())


def test_simulate_contrastive_salient_scale_and_gaussian_noise():
    a = simulate_contrastive(200, 3000, 30, 2, 2, seed=0, likelihood="gaussian", salient_scale=3.0)
    assert isinstance(a.X, np.ndarray) and a.X.dtype == np.float32
    assert "library_size" not in a.obs
    t = a.obsm["true_salient"][200:]
    np.testing.assert_allclose(t.std(0), 3.0, rtol=0.1)


def test_simulate_contrastive_default_unchanged_by_new_options():
    # Defaults of the added options reproduce the original generator exactly.
    a = simulate_contrastive(30, 30, 20, 2, 2, seed=3)
    b = simulate_contrastive(
        30, 30, 20, 2, 2, seed=3, library_sd_log=0.3, noise_sd=0.5, salient_scale=1.0
    )
    assert (a.X != b.X).nnz == 0
    c = simulate_contrastive(30, 30, 20, 2, 2, seed=4)
    assert (a.X != c.X).nnz > 0


# --------------------------------------------------------------------------- mixture


def test_simulate_mixture_ground_truth():
    adata = simulate_mixture(6000, 30, 2, 3, seed=2)
    z = adata.obsm["true_latent"]
    c = adata.obs["component"].cat.codes.to_numpy()
    weights, means, covs = (
        adata.uns[k] for k in ("true_weights", "true_means", "true_covariances")
    )
    assert z.shape == (6000, 2) and means.shape == (3, 2) and covs.shape == (3, 2, 2)
    assert sp.issparse(adata.X) and adata.X.shape == (6000, 30)
    # Standardised latents (one centre, one scalar scale).
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(0).mean(), 1.0, rtol=1e-4)
    # The stored mixture is the one the latents were drawn from.
    np.testing.assert_allclose(np.bincount(c, minlength=3) / 6000, weights, atol=0.03)
    for k in range(3):
        zk = z[c == k]
        np.testing.assert_allclose(zk.mean(0), means[k], atol=0.1)
        np.testing.assert_allclose(np.cov(zk.T), covs[k], atol=0.1)
        assert np.all(np.linalg.eigvalsh(covs[k]) > 0)
    np.testing.assert_allclose(weights.sum(), 1.0)


def test_simulate_mixture_seeded_and_options():
    a = simulate_mixture(100, 20, 3, 2, seed=7)
    b = simulate_mixture(100, 20, 3, 2, seed=7)
    np.testing.assert_array_equal(a.obsm["true_latent"], b.obsm["true_latent"])
    assert (a.X != b.X).nnz == 0
    g = simulate_mixture(100, 20, 3, 2, seed=7, likelihood="gaussian", mixing="smooth")
    assert isinstance(g.X, np.ndarray)
    # Same latent draw, different mixing / noise.
    np.testing.assert_array_equal(g.obsm["true_latent"], a.obsm["true_latent"])
    assert g.uns["simulation"]["mixing"] == "smooth"
    with pytest.raises(ValueError):
        simulate_mixture(10, 5, 2, 0)


def test_simulate_mixture_separation_controls_cluster_overlap():
    def between_over_within(sep):
        a = simulate_mixture(3000, 10, 2, 4, seed=0, separation=sep)
        covs = a.uns["true_covariances"]
        within = np.trace(covs, axis1=1, axis2=2) @ a.uns["true_weights"]
        return (2.0 - within) / within  # total variance is 2 (d = 2, unit average variance)

    assert between_over_within(6.0) > 4 * between_over_within(1.5)
