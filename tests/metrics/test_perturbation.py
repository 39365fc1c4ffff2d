"""Perturbation metrics: IWELBO, ATEs and their agreement, mask recovery, PPC."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import scipy.sparse as sp
import torch

from pyro_compare.data import ComparativeData
from pyro_compare.data.sources import SourceBatch
from pyro_compare.infer import source_plate
from pyro_compare.metrics import perturbation as pm
from pyro_compare.models.counterfactual import library_scales


# ---------------------------------------------------------------------------- IWELBO
def _normal_log_density(x, var):
    return -0.5 * (np.log(2 * np.pi * var) + x**2 / var)


def _toy(guide_kind: str, global_mu: float | None = None):
    """z_n ~ N(mu, 1), x_n ~ N(z_n, 1) under the "target" source plate; mu global (or 0)."""

    def model(sources):
        src = sources["target"]
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0)) if global_mu is not None else 0.0
        with source_plate("target", src):
            z = pyro.sample("z_target", dist.Normal(mu, 1.0))
            pyro.sample("x_target", dist.Normal(z, 1.0), obs=src.x_ng)

    def guide(sources):
        src = sources["target"]
        mu = 0.0
        if global_mu is not None:
            mu = pyro.sample("mu", dist.Normal(global_mu, 1e-6))
        with source_plate("target", src):
            if guide_kind == "exact":  # the exact posterior given mu
                pyro.sample("z_target", dist.Normal((src.x_ng + mu) / 2, math.sqrt(0.5)))
            else:  # a poor one
                pyro.sample("z_target", dist.Normal(torch.zeros_like(src.x_ng), 2.0))

    return model, guide


def _batch(x, **kwargs):
    return {"target": SourceBatch(x_ng=x, **kwargs)}


def test_iwelbo_is_exact_with_the_exact_posterior():
    x = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    model, guide = _toy("exact")
    values = pm.iwelbo_per_cell(model, guide, _batch(x), num_particles=3)
    np.testing.assert_allclose(values, _normal_log_density(x.numpy(), 2.0), rtol=1e-5)


def test_iwelbo_tightens_with_particles_towards_the_log_likelihood():
    pyro.set_rng_seed(0)
    x = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    model, guide = _toy("poor")
    exact = _normal_log_density(x.numpy(), 2.0)
    few = np.mean([pm.iwelbo_per_cell(model, guide, _batch(x), 1) for _ in range(100)], 0)
    many = pm.iwelbo_per_cell(model, guide, _batch(x), num_particles=2_000)
    assert np.all(few < exact - 0.1)  # the ELBO is loose ...
    np.testing.assert_allclose(many, exact, atol=0.05)  # ... the IWELBO converges
    assert np.all(many > few)


def test_iwelbo_conditions_on_global_samples_and_ignores_minibatch_scale():
    """Global sites are excluded from the per-cell weights; local ones are unscaled."""
    x = torch.tensor([1.0, -1.0, 2.0])
    model, guide = _toy("exact", global_mu=1.5)
    batch = _batch(x, n=1000, index_n=torch.arange(3))
    values = pm.iwelbo_per_cell(model, guide, batch, num_particles=2)
    np.testing.assert_allclose(values, _normal_log_density(x.numpy() - 1.5, 2.0), rtol=1e-4)


# ---------------------------------------------------------------------------- ATE
@pytest.fixture
def tiny():
    """Hand-made counts: 4 controls, 2 cells of A, 2 of B, 2 of A+B; 3 genes."""
    x = np.array(
        [
            [10, 0, 0],
            [5, 5, 0],
            [8, 1, 1],
            [2, 2, 6],
            [0, 10, 0],
            [1, 9, 0],
            [0, 0, 10],
            [3, 3, 4],
            [4, 4, 2],
            [6, 0, 4],
        ],
        dtype=np.float32,
    )
    labels = ["ctrl"] * 4 + ["A", "A", "B", "B", "A+B", "B+A"]
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(10)]),
        var=pd.DataFrame(index=["g0", "g1", "g2"]),
    )
    data = ComparativeData.from_anndata(
        adata, "perturbation", "ctrl", perturbation_key="perturbation"
    )
    data.set_split(np.ones(10, dtype=bool))
    return data, x


def test_observed_ate_by_hand(tiny):
    data, x = tiny
    x = x.astype(np.float64)
    y = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    ate = pm.observed_average_treatment_effect(data, split="train")
    assert list(ate.index) == ["A", "A+B", "B"]
    np.testing.assert_allclose(ate.loc["A"], y[4:6].mean(0) - y[:4].mean(0), rtol=1e-6)
    np.testing.assert_allclose(ate.loc["A+B"], y[8:10].mean(0) - y[:4].mean(0), rtol=1e-6)
    # "B+A" is canonicalised; exact matching: "A" does not include the "A+B" cells.
    one = pm.observed_average_treatment_effect(data, "B+A", split="train")
    np.testing.assert_allclose(one.loc["A+B"], ate.loc["A+B"])
    np.testing.assert_allclose(pm.log_normalize(torch.from_numpy(x)).numpy(), y, rtol=1e-5)


def test_ate_agreement_analytic():
    rng = np.random.default_rng(0)
    obs = pd.DataFrame(rng.normal(size=(3, 50)), index=["a", "b", "c"])
    perfect = pm.ate_agreement(obs, obs, top_n=10)
    np.testing.assert_allclose(perfect.to_numpy(), 1.0)
    # An affine prediction: Pearson 1, R^2 penalises the bias (no refitting).
    biased = pm.ate_agreement(2 * obs + 1, obs)
    np.testing.assert_allclose(biased["pearson_all"], 1.0)
    for k in obs.index:
        o = obs.loc[k].to_numpy()
        r2 = 1 - ((o + 1) ** 2).sum() / ((o - o.mean()) ** 2).sum()
        assert biased.loc[k, "r2_all"] == pytest.approx(r2)
    # Top genes follow de_scores: a prediction right only on the chosen genes.
    scores = np.zeros((3, 50))
    scores[:, :5] = 1.0
    pred = obs.copy()
    pred.iloc[:, 5:] = 0.0
    top = pm.ate_agreement(pred, obs, top_n=5, de_scores=scores)
    np.testing.assert_allclose(top["pearson_top"], 1.0)
    assert (top["pearson_all"] < 0.9).all()
    with pytest.raises(ValueError, match="shape"):
        pm.ate_agreement(np.zeros((2, 3)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------- masks
def test_mask_recovery_matches_permuted_dimensions():
    rng = np.random.default_rng(1)
    truth = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]])
    z_true = rng.normal(size=(500, 4))
    perm = np.array([2, 0, 3, 1])  # learned dim j is true dim perm[j]
    z_learned = 3.0 * z_true[:, perm] + 0.1 * rng.normal(size=(500, 4))
    scores = 0.8 * truth[:, perm] + 0.1  # perfect ranking, in learned order
    res = pm.mask_recovery(scores, truth, z_true, z_learned)
    assert res["auroc"] == 1.0 and res["f1"] == 1.0 and res["mcc"] > 0.99
    np.testing.assert_array_equal(perm[res["matching"]], np.arange(4))
    unmatched = pm.mask_recovery(scores, truth)  # columns assumed aligned: wrong
    assert unmatched["auroc"] < 0.8
    # Extra learned dimensions are ignored; a noisy score lowers the AUROC.
    z_extra = np.concatenate([z_learned, rng.normal(size=(500, 2))], 1)
    noisy = np.concatenate([scores, np.full((4, 2), 0.9)], 1)
    noisy[0, 0] = 0.95  # learned dim 0 = true dim 2, not a target of row 0
    res = pm.mask_recovery(noisy, truth, z_true, z_extra)
    assert 0.8 < res["auroc"] < 1.0


# ---------------------------------------------------------------------------- PPC
class _EchoModel:
    """Posterior predictive = the observed counts (a perfect replicate)."""

    def posterior_predictive(self, batch, num_samples, return_sites):
        (site,) = return_sites
        x = batch[site.removeprefix("x_")].x_ng
        return {site: x.expand(num_samples, *x.shape)}


def test_posterior_predictive_check_statistics(tiny):
    data, x = tiny
    ppc = pm.posterior_predictive_check(_EchoModel(), data, split="train", n_samples=2)
    assert list(ppc.index) == ["g0", "g1", "g2"]
    np.testing.assert_allclose(ppc["observed_mean"], x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ppc["observed_var"], x.var(0), rtol=1e-6)
    np.testing.assert_allclose(ppc["observed_zero"], (x == 0).mean(0))
    for stat in ("mean", "var", "zero"):
        np.testing.assert_allclose(ppc[f"predicted_{stat}"], ppc[f"observed_{stat}"], rtol=1e-6)
    summary = pm.ppc_summary(ppc)
    assert summary["pearson_log_mean"] == pytest.approx(1.0)
    assert summary["mae_zero_fraction"] == 0.0


def test_matched_library_scales_the_predicted_counts_by_the_labels_depth():
    """``library="matched"`` decodes label k at the control cells' depths times the ratio
    of the mean training library of label k to the controls' (1 below 10 training cells,
    e.g. unseen combinations); ``"control"`` keeps each cell's own depth; held-out cells
    are never read."""
    rng = np.random.default_rng(0)
    n_ctrl, n_a = 40, 30
    x = rng.poisson(3.0, size=(n_ctrl + n_a + 4, 5)).astype(np.float32) + 1
    x[n_ctrl : n_ctrl + n_a] *= 2  # knock-out A doubles the depth over this panel
    labels = ["ctrl"] * n_ctrl + ["A"] * n_a + ["B"] * 4
    adata = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(x))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )
    data = ComparativeData.from_anndata(
        adata, "perturbation", "ctrl", perturbation_key="perturbation"
    )
    train = np.ones(len(x), dtype=bool)
    train[n_ctrl : n_ctrl + 5] = False  # held-out A cells: not read by the scales
    data.set_split(train)
    lib = x.sum(1).astype(np.float64)
    scales = library_scales(data, ["ctrl", "A", "B", "A+B"], "matched")
    expected_a = lib[n_ctrl + 5 : n_ctrl + n_a].mean() / lib[:n_ctrl].mean()
    np.testing.assert_allclose(scales, [1.0, expected_a, 1.0, 1.0], rtol=1e-12)
    assert library_scales(data, ["A"], "control") is None
    with pytest.raises(ValueError, match="library"):
        library_scales(data, ["A"], "observed")

    from pyro_compare.models import SAMSVAE

    model = SAMSVAE(data.n_features, data.n_perturbations, n_latent=2, hidden=(8,))
    means = {}
    for library in ("matched", "control"):
        torch.manual_seed(0)
        means[library] = model.predicted_means(
            data, ["ctrl", "A", "B"], n_samples=2, sample_counts=False, library=library
        )
    ratio = means["matched"].to_numpy() / means["control"].to_numpy()
    np.testing.assert_allclose(ratio[0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(ratio[1], expected_a, rtol=1e-5)
    np.testing.assert_allclose(ratio[2], 1.0, rtol=1e-5)
