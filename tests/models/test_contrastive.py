import numpy as np
import pyro
import pytest
import torch

from pyro_compare.data import ComparativeData, simulate_contrastive
from pyro_compare.infer import fit
from pyro_compare.metrics import affine_r2
from pyro_compare.models import ContrastiveVAE, load_model


@pytest.fixture(scope="module")
def fitted():
    """The foundation claim: 2,000 + 2,000 cells, 200 genes, 5 + 3 latents."""
    adata = simulate_contrastive(2000, 2000, 200, 5, 3, seed=0)
    data = ComparativeData.from_anndata(adata, "condition", "background")
    torch.manual_seed(0)
    model = ContrastiveVAE(data.n_features, 5, 3, hidden=(128,))
    fit(model, data, max_epochs=50, batch_size=128, lr=3e-3, seed=0, progress=False)
    return adata, data, model


def test_recovers_background_and_salient_latents(fitted):
    adata, data, model = fitted
    z, t = model.latent(data, "background"), model.latent(data, "salient")
    target = data.sources["target"]
    true_z, true_t = adata.obsm["true_background"], adata.obsm["true_salient"]
    r2_z = affine_r2(true_z, z)
    r2_t = affine_r2(true_t[target], t[target])
    leak = affine_r2(true_t[target], z[target])
    print(f"R2 background {r2_z:.3f} salient {r2_t:.3f} leakage {leak:.3f}")
    # Over training seeds 0-9 (experiments/test_thresholds/measure.py, case
    # contrastive_recovery; this fit is seed 0; the default objective with its leakage
    # constraint, results/measure_session4.json), mean +- sd: background 0.927 +- 0.003,
    # salient 0.961 +- 0.001, leakage 0.125 +- 0.008: every bar is > 10 sd away.
    assert r2_z >= 0.85
    assert r2_t >= 0.8
    assert leak <= 0.3


def test_latent_shapes_and_samples(fitted):
    _, data, model = fitted
    assert model.latent(data, "background").shape == (data.n_cells, 5)
    samples = model.latent(data, "salient", n_samples=3)
    assert samples.shape == (3, data.n_cells, 3)
    assert samples.std(0).mean() > 0
    with pytest.raises(ValueError, match="unknown latent kind"):
        model.latent(data, "shared")


def test_save_load_round_trip(fitted, tmp_path):
    _, data, model = fitted
    model.save(tmp_path / "m.pt")
    loaded = ContrastiveVAE.load(tmp_path / "m.pt")
    assert loaded is not model
    for kind in ("background", "salient"):
        np.testing.assert_array_equal(model.latent(data, kind), loaded.latent(data, kind))
    assert type(load_model(tmp_path / "m.pt")) is ContrastiveVAE


def test_posterior_predictive_replicates_data(fitted):
    _, data, model = fitted
    # Seeded: the replicates and the untrained model would otherwise depend on the tests run
    # before this one.
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    batch = data.full_batch("validation")
    pp = model.posterior_predictive(batch, num_samples=20)
    x = batch["target"].x_ng
    assert pp["x_target"].shape == (20, *x.shape)
    assert not torch.equal(pp["x_target"][0], x)  # resampled, not the observations

    def mean_log_ratio(m):
        rep = m.posterior_predictive(batch, num_samples=20)["x_target"]
        return (rep.mean((0, 1)) / x.mean(0)).log().abs().median().item()

    # Replicated per-gene means match the observed ones; an untrained model's do not.
    # Over training seeds 0-9 (case contrastive_recovery of
    # experiments/test_thresholds/measure.py, results/measure_session4.json): fitted error
    # 0.047 +- 0.003; fitted / untrained 0.39 +- 0.04 (max 0.47: the untrained model's
    # error varies with its random initialisation), so the ratio bar is 0.65 (>= mean + 3 sd
    # = 0.53; was 0.5).
    fitted_err = mean_log_ratio(model)
    untrained_err = mean_log_ratio(ContrastiveVAE(data.n_features, 5, 3))
    assert fitted_err < 0.1
    assert fitted_err < 0.65 * untrained_err


@pytest.mark.parametrize("likelihood", ["zinb", "poisson", "gaussian"])
def test_other_likelihoods_fit(likelihood):
    """Salient R2 over 5 seeds. With 1 salient dimension and 25 epochs single fits
    are bimodal (a seed can stay near a collapsed salient code). Per-seed R2 over seeds 0-9
    (experiments/test_thresholds/measure.py, case contrastive_likelihoods, the default
    objective with its leakage constraint, results/measure_session4.json): zinb 0.916 +-
    0.061 (min 0.77); poisson 0.937 +- 0.041 (min 0.82); gaussian 0.783 +- 0.361, seeds 4
    and 6 collapsed (0.23, -0.02). Another CPU's round-off is another draw of the seeds:
    with 2 collapsed fits in 10 (p = 0.2), a median of 5 would fail ~6% of the time, so
    the test asks for at least 2 of the 5 seeds above the bar (4 collapses needed: 0.7%).
    Validation-loss drops: 80 +- 3, 559 +- 29, 14.1 +- 1.1 (min 74, 484, 12.0)."""
    counts = likelihood != "gaussian"
    adata = simulate_contrastive(
        300, 300, 30, 2, 1, seed=1, likelihood="nb" if counts else "gaussian"
    )
    data = ComparativeData.from_anndata(adata, "condition", "background", counts=counts)
    target = data.sources["target"]
    r2 = []
    for seed in range(5):
        model = ContrastiveVAE(data.n_features, 2, 1, hidden=(32,), likelihood=likelihood)
        history = fit(
            model, data, max_epochs=25, lr=1e-2, progress=False, early_stopping=False, seed=seed
        )
        assert history["validation_loss"].iloc[-1] < history["validation_loss"].iloc[0]
        t = model.latent(data, "salient")
        r2.append(affine_r2(adata.obsm["true_salient"][target], t[target]))
    assert sum(r > 0.35 for r in r2) >= 2, r2


def test_unknown_likelihood():
    with pytest.raises(ValueError, match="unknown likelihood"):
        ContrastiveVAE(10, likelihood="binomial")


def test_two_instances_do_not_share_parameters():
    a, b = ContrastiveVAE(10, 2, 2), ContrastiveVAE(10, 2, 2)
    with torch.no_grad():
        a.decoder.log_theta_g.fill_(3.0)
    assert not torch.equal(a.decoder.log_theta_g, b.decoder.log_theta_g)
