"""The AnnData / scanpy layer (``pc.tl``) and its figures (``pc.pl``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import pyro_compare as pc
from pyro_compare.tools import UNS_KEY, _uns_safe


@pytest.fixture(scope="module")
def fitted():
    adata = pc.data.simulate_contrastive(400, 400, 60, 4, 2, seed=0)
    model = pc.tl.fit(
        adata,
        condition_key="condition",
        background="background",
        n_background_latent=4,
        n_salient_latent=2,
        key_added="cvae",
        max_epochs=40,
        lr=3e-3,
        seed=0,
    )
    return adata, model


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def test_fit_writes_latents_and_settings(fitted):
    adata, model = fitted
    for kind, dim in (("background", 4), ("salient", 2)):
        for key in (f"X_{kind}", f"X_cvae_{kind}"):
            assert adata.obsm[key].shape == (adata.n_obs, dim)
            assert np.isfinite(adata.obsm[key]).all()
    entry = adata.uns[UNS_KEY]["cvae"]
    assert entry["model"]["class"] == "ContrastiveVAE"
    assert entry["model"]["n_salient_latent"] == 2
    assert entry["data"]["condition_key"] == "condition"
    assert entry["data"]["n_background"] == 400
    assert entry["fit"]["max_epochs"] == 40
    assert entry["objective"]["class"] == "Sum"
    hist = pc.tl.history(adata, "cvae")
    pd.testing.assert_frame_equal(
        hist.reset_index(drop=True), model.history_.reset_index(drop=True), check_dtype=False
    )
    # The fit learned something: the loss went down.
    assert hist["validation_loss"].iloc[-1] < hist["validation_loss"].iloc[0]


def test_latents_recover_ground_truth_and_leakage_table(fitted):
    adata, _ = fitted
    target = (adata.obs["condition"] == "target").to_numpy()
    r2_z = pc.metrics.affine_r2(adata.obsm["true_background"], adata.obsm["X_background"])
    r2_t = pc.metrics.affine_r2(adata.obsm["true_salient"][target], adata.obsm["X_salient"][target])
    assert r2_z > 0.6
    assert r2_t > 0.6
    table = pc.tl.knn_leakage(adata, ["X_cvae_background", "X_cvae_salient"], "condition")
    assert list(table.index) == ["X_cvae_background", "X_cvae_salient"]
    assert table.loc["X_cvae_salient", "accuracy"] > 0.75
    # The background latent carries no condition signal in this simulation.
    assert table.loc["X_cvae_background", "accuracy"] < 0.65
    assert table["chance"].iloc[0] == pytest.approx(0.5)


def test_h5ad_round_trip(fitted, tmp_path):
    adata, model = fitted
    path = tmp_path / "fitted.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_allclose(back.obsm["X_cvae_salient"], adata.obsm["X_cvae_salient"])
    pd.testing.assert_frame_equal(
        pc.tl.history(back, "cvae"), pc.tl.history(adata, "cvae"), check_dtype=False
    )
    # The recorded data settings rebuild the same sources, so a model's latents line up.
    data = pc.tl.comparative_data(back, key="cvae")
    assert len(data.sources["background"]) == 400
    written = pc.tl.latents(back, model, key="cvae", default_keys=False, key_added="again")
    assert written == {"background": "X_again_background", "salient": "X_again_salient"}
    np.testing.assert_allclose(back.obsm["X_again_background"], adata.obsm["X_background"])


def test_predict_matches_observed_gene_means(fitted):
    adata, model = fitted
    pc.tl.predict(adata, model, key="cvae", n_samples=3)
    expected = adata.layers["pyro_compare_expected"]
    assert expected.shape == adata.shape
    observed = _dense(adata.X)
    rel = np.abs(expected.mean(0) - observed.mean(0)) / observed.mean(0)
    assert np.median(rel) < 0.1
    # Per cell, the prediction follows the observed counts (denoised expression).
    per_cell = [np.corrcoef(expected[i], observed[i])[0, 1] for i in range(0, 800, 40)]
    assert np.median(per_cell) > 0.5
    out = pc.tl.predict(adata, model, key="cvae", n_samples=1, inplace=False)
    assert out.shape == adata.shape
    assert out.var_names.equals(adata.var_names)


def test_counterfactual_anndata(fitted, tmp_path):
    adata, model = fitted
    cf = pc.tl.counterfactual(adata, model, key="cvae", seed=1)
    is_bg = (adata.obs["condition"] == "background").to_numpy()
    assert cf.var_names.equals(adata.var_names)
    pd.testing.assert_frame_equal(cf.var, adata.var)
    assert list(cf.obs_names) == list(adata.obs_names[is_bg])
    assert cf.obs["counterfactual_donor"].isin(adata.obs_names[~is_bg]).all()
    assert cf.layers["factual"].shape == cf.shape
    # The predicted stimulation effect matches the observed target-vs-background change.
    x = _dense(adata.X)
    observed_lfc = np.log(x[~is_bg].mean(0) + 0.1) - np.log(x[is_bg].mean(0) + 0.1)
    predicted_lfc = np.log(_dense(cf.X).mean(0) + 0.1) - np.log(cf.layers["factual"].mean(0) + 0.1)
    assert np.corrcoef(observed_lfc, predicted_lfc)[0, 1] > 0.6
    # The factual expectation of background cells agrees with their reconstruction.
    cf.write_h5ad(tmp_path / "cf.h5ad")
    back = ad.read_h5ad(tmp_path / "cf.h5ad")
    assert back.uns[UNS_KEY]["counterfactual"]["salient"] == "posterior"


def test_counterfactual_options(fitted):
    adata, model = fitted
    names = adata.obs_names[:5]
    cf = pc.tl.counterfactual(adata, model, key="cvae", cells=names, salient="prior", seed=0)
    assert list(cf.obs_names) == list(names)
    assert (cf.obs["counterfactual_donor"] == "prior").all()
    sampled = pc.tl.counterfactual(adata, model, key="cvae", cells=names, sample_counts=True)
    values = _dense(sampled.X)
    assert np.all(values == np.round(values)) and np.all(values >= 0)
    assert "expected" in sampled.layers
    # Target cells keep their own salient code in the factual layer: it equals the
    # model's decoder mean at the posterior means.
    target_rows = np.flatnonzero((adata.obs["condition"] == "target").to_numpy())[:5]
    cf_t = pc.tl.counterfactual(adata, model, key="cvae", cells=target_rows)
    assert not np.allclose(cf_t.layers["factual"], cf.layers["factual"])
    with pytest.raises(ValueError, match="salient"):
        pc.tl.counterfactual(adata, model, key="cvae", salient="nope")


def test_exclude_gives_nan_rows():
    adata = pc.data.simulate_contrastive(60, 60, 20, 2, 1, seed=1)
    cond = adata.obs["condition"].astype(str).to_numpy()
    cond[:7] = "unassigned"
    adata.obs["condition"] = cond
    model = pc.tl.fit(
        adata,
        condition_key="condition",
        background="background",
        exclude=["unassigned"],
        n_background_latent=2,
        n_salient_latent=1,
        key_added="small",
        max_epochs=2,
    )
    assert np.isnan(adata.obsm["X_small_background"][:7]).all()
    assert np.isfinite(adata.obsm["X_small_background"][7:]).all()
    pc.tl.predict(adata, model, key="small", n_samples=1)
    assert np.isnan(adata.layers["pyro_compare_expected"][:7]).all()
    table = pc.tl.knn_leakage(adata, ["X_small_salient"], "condition", k=5)
    assert 0.0 <= table["accuracy"].iloc[0] <= 1.0
    with pytest.raises(ValueError, match="condition_key"):
        pc.tl.comparative_data(adata)


def test_ppc_statistics_analytic():
    x = np.array([[0.0, 2.0], [2.0, 4.0]])
    stats = pc.tl.ppc_statistics(x, x[None], var_names=["a", "b"])
    np.testing.assert_allclose(stats["observed_mean"], [1.0, 3.0])
    np.testing.assert_allclose(stats["observed_var"], [2.0, 2.0])
    np.testing.assert_allclose(stats["observed_zero"], [0.5, 0.0])
    np.testing.assert_allclose(stats["predicted_mean"], stats["observed_mean"])
    np.testing.assert_allclose(stats[["ppp_mean", "ppp_var", "ppp_zero"]].to_numpy(), 1.0)
    # Two replicates: a constant one (var 0, more zeros) and a scaled one.
    rep = np.stack([np.zeros_like(x), 2 * x])
    stats = pc.tl.ppc_statistics(x, rep)
    np.testing.assert_allclose(stats["predicted_mean"], [1.0, 3.0])
    np.testing.assert_allclose(stats["predicted_var"], [4.0, 4.0])
    np.testing.assert_allclose(stats["predicted_zero"], [0.75, 0.5])
    np.testing.assert_allclose(stats["ppp_var"], [0.5, 0.5])
    with pytest.raises(ValueError, match="replicated"):
        pc.tl.ppc_statistics(x, np.zeros((3, 2, 3)))


def test_uns_safe_is_h5ad_writable(tmp_path):
    value = _uns_safe(
        {"a": None, "b": (1, 2), "c": [1.5, "x"], "d": [], "e": {"f": np.float32(2)}, "g": object}
    )
    assert "a" not in value
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32), uns={"v": value})
    adata.write_h5ad(tmp_path / "u.h5ad")
    back = ad.read_h5ad(tmp_path / "u.h5ad")
    np.testing.assert_array_equal(back.uns["v"]["b"], [1, 2])
    assert list(back.uns["v"]["c"]) == ["1.5", "x"]


def test_plotting_helpers(fitted):
    adata, _ = fitted
    small = adata[:200].copy()
    axes = pc.pl.latent_umap(small, ["X_background", "X_salient"], color=["condition"])
    assert axes.shape == (2, 1)
    assert small.obsm["X_background_umap"].shape == (200, 2)
    plt.close("all")
    obs = np.array([1.0, -2.0, 0.5, 3.0])
    ax = pc.pl.ate_scatter(2 * obs, obs, gene_names=list("abcd"), n_labels=2)
    assert "r = 1.00" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {"d", "b"}
    stats = pc.tl.ppc_statistics(np.arange(12.0).reshape(4, 3), np.ones((2, 4, 3)))
    assert len(pc.pl.ppc(stats)) == 3
    plt.close("all")
