"""Perturbation models: plates, minibatch scaling, fitting, counterfactuals, save/load."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

import pyro_compare as pc
from pyro_compare.data import ComparativeData, DataValidationError
from pyro_compare.data.sources import sources_to
from pyro_compare.infer import SourceTrace_ELBO
from pyro_compare.metrics import perturbation as pm
from pyro_compare.models import (
    SAMSVAE,
    AdditiveShiftVAE,
    ConditionalVAE,
    SparseShiftVAE,
    StraightThroughBernoulli,
)

MODELS = {
    "sams_mean_field": lambda g, k: SAMSVAE(g, k, n_latent=3, hidden=(32,), guide="mean_field"),
    "sams_correlated": lambda g, k: SAMSVAE(g, k, n_latent=3, hidden=(32,), guide="correlated"),
    "svae_plus": lambda g, k: SparseShiftVAE(g, k, n_latent=3, hidden=(32,)),
    "additive": lambda g, k: AdditiveShiftVAE(g, k, n_latent=3, hidden=(32,)),
    "conditional": lambda g, k: ConditionalVAE(g, k, n_latent=3, hidden=(32,)),
}
GLOBAL_SITES = {
    "sams_mean_field": {"mask", "effect"},
    "sams_correlated": {"mask", "effect"},
    "svae_plus": {"rate", "mask"},
    "additive": {"effect"},
    "conditional": set(),
}


@pytest.fixture(scope="module")
def sim():
    return pc.data.simulate_sparse_shift(
        n_control=400,
        n_per_perturbation=200,
        n_perturbations=3,
        n_genes=60,
        n_latent=3,
        seed=0,
        min_targets=1,
        max_targets=2,
        shift_range=(2.0, 3.0),
    )


@pytest.fixture
def data(sim):
    return ComparativeData.from_anndata(
        sim, "perturbation", "control", perturbation_key="perturbation"
    )


def _small_batch(data, b=5, t=7, sizes=None):
    rows = {"background": data.sources["background"][:b], "target": data.sources["target"][:t]}
    sizes = sizes or {s: len(i) for s, i in data.sources.items()}
    return data.batch(rows, sizes)


# ---------------------------------------------------------------------------- distribution
def test_straight_through_bernoulli():
    torch.manual_seed(0)
    logits = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    d = StraightThroughBernoulli(logits, temperature=0.5)
    m = d.rsample((4000,))
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(m.mean(0).detach(), torch.sigmoid(logits).detach(), atol=0.03)
    np.testing.assert_allclose(
        d.log_prob(m).detach(),
        dist.Bernoulli(logits=logits).log_prob(m.detach()).detach(),
        rtol=1e-6,  # float32 values: a few ulps, not numpy's default 1e-7 (< 1 ulp)
    )
    (m * torch.tensor([1.0, 2.0, 3.0])).sum().backward()  # relaxed gradient reaches logits
    assert torch.all(logits.grad > 0)
    assert d.expand((2, 3)).rsample().shape == (2, 3)


# ---------------------------------------------------------------------------- plates
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sites_and_plates(name, data):
    model = MODELS[name](data.n_features, data.n_perturbations)
    batch = _small_batch(data)
    guide_tr = poutine.trace(model.guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(batch)
    sites = {
        n: s
        for n, s in model_tr.nodes.items()
        if s["type"] == "sample" and not site_is_subsample(s)
    }
    frames = {n: [f.name for f in s["cond_indep_stack"]] for n, s in sites.items()}
    globals_ = {n for n, f in frames.items() if not ({"background", "target"} & set(f))}
    assert globals_ == GLOBAL_SITES[name]
    for n in globals_ & {"mask", "effect"}:
        assert frames[n] == ["perturbation"]
        assert sites[n]["value"].shape == (data.n_perturbations, 3)
    for s, size in (("background", 5), ("target", 7)):
        assert frames[f"z_{s}"] == [s] and frames[f"x_{s}"] == [s]
        assert sites[f"z_{s}"]["value"].shape == (size, 3)
        assert sites[f"x_{s}"]["is_observed"]
    # Guide sites mirror the model's.
    guide_sites = {
        n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
    }
    assert guide_sites == {n for n in sites if not sites[n]["is_observed"]}


def test_minibatch_scaling_is_pyro_subsample_semantics(data):
    """Local terms are scaled by N_s / B_s (Pyro's subsample plates), global terms are not.

    In float64: the local terms are sums of ~500 NB log-densities scaled by up to 86 (~1e5),
    added up in a different order by the ELBO and by this test; float32 round-off of such a
    sum depends on the CPU (vector width, threads), float64's is ~1e-16 relative (measured),
    far inside ``assert_close``'s float64 default (rtol 1e-7)."""
    model = SAMSVAE(data.n_features, data.n_perturbations, n_latent=3, hidden=(32,)).double()
    elbo = SourceTrace_ELBO()
    sizes = {"background": 400, "target": 600}
    batch = sources_to(_small_batch(data, 5, 7, sizes), dtype=torch.float64)
    with pyro.validation_enabled(True):
        pyro.set_rng_seed(3)
        losses = elbo.source_losses(model.model, model.guide, batch)
        pyro.set_rng_seed(3)
        guide_tr = poutine.trace(model.guide).get_trace(batch)
        model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(batch)

    def unscaled(tr, names):
        return sum(tr.nodes[n]["fn"].log_prob(tr.nodes[n]["value"]).sum() for n in names)

    for name in ("mask", "effect"):
        assert model_tr.nodes[name]["scale"] == 1.0
    g_expected = unscaled(guide_tr, ["mask", "effect"]) - unscaled(model_tr, ["mask", "effect"])
    torch.testing.assert_close(losses["global"], g_expected)
    assert all(v.dtype == torch.float64 for v in losses.values())
    for s, b in (("background", 5), ("target", 7)):
        scale = sizes[s] / b
        assert model_tr.nodes[f"z_{s}"]["scale"] == pytest.approx(scale)
        assert guide_tr.nodes[f"z_{s}"]["scale"] == pytest.approx(scale)
        expected = scale * (
            unscaled(guide_tr, [f"z_{s}"]) - unscaled(model_tr, [f"z_{s}", f"x_{s}"])
        )
        torch.testing.assert_close(losses[s], expected)
    # Doubling the plate sizes doubles the local terms and leaves the global term unchanged.
    doubled = {s: 2 * n for s, n in sizes.items()}
    batch2 = sources_to(_small_batch(data, 5, 7, doubled), dtype=torch.float64)
    pyro.set_rng_seed(3)
    losses2 = elbo.source_losses(model.model, model.guide, batch2)
    torch.testing.assert_close(losses2["global"], losses["global"])
    for s in ("background", "target"):
        torch.testing.assert_close(losses2[s], 2 * losses[s])


def test_correlated_guide_sees_the_global_sample(data):
    batch = _small_batch(data)
    for guide, coupled in (("correlated", True), ("mean_field", False)):
        model = SAMSVAE(data.n_features, data.n_perturbations, n_latent=3, guide=guide)
        with torch.no_grad():
            model.mask_logits_raw.fill_(10.0)  # masks on
        locs = []
        for seed in (0, 1):
            pyro.set_rng_seed(seed)
            guide_tr = poutine.trace(model.guide).get_trace(batch)
            locs.append(guide_tr.nodes["z_target"]["fn"].base_dist.loc)
        assert (not torch.allclose(locs[0], locs[1])) == coupled


def test_design_is_required_and_checked(data, sim):
    model = SAMSVAE(data.n_features, data.n_perturbations + 1)
    with pytest.raises(DataValidationError, match="perturbations"):
        model.check_data(data)
    plain = ComparativeData.from_anndata(sim, "perturbation", "control")
    with pytest.raises(DataValidationError, match="design"):
        SAMSVAE(data.n_features, 3).model(plain.full_batch())


# ---------------------------------------------------------------------------- fitting
#: Bars of the held-out ATE test per model: (mean Pearson, R^2 gain over the control-mean
#: prediction), each <= mean - 3 sd over training seeds 0-9 (the test is seed 0; another
#: CPU's float32 round-off gives another trajectory, like another seed). Measured by
#: ``experiments/test_thresholds/measure.py`` (case ``perturbation_ate``), mean +- sd:
ATE_BARS = {
    "sams_mean_field": (0.6, 0.15),  # Pearson 0.855 +- 0.063, R2 gain 0.503 +- 0.108
    "sams_correlated": (0.6, 0.15),  # 0.972 +- 0.011, 1.418 +- 0.036
    "svae_plus": (0.6, 0.15),  # 0.966 +- 0.031, 1.391 +- 0.062
    "additive": (0.6, 0.15),  # 0.978 +- 0.005, 1.449 +- 0.037
    # no sparse shift, weaker: was (0.6, 0.15), which seed 1 fails (R2 gain 0.140)
    "conditional": (0.45, 0.08),  # 0.724 +- 0.080, 0.196 +- 0.036
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fits_and_beats_control_mean_on_held_out_ate(name, data):
    """Predicted ATEs (held-out cells) beat the trivial 'no effect' prediction (control mean)."""
    data.set_split(pc.data.split_by_cell(data, validation_fraction=0.3, seed=0))
    pyro.set_rng_seed(0)
    model = MODELS[name](data.n_features, data.n_perturbations)
    history = pc.infer.fit(
        model, data, max_epochs=25, batch_size=128, lr=1e-2, progress=False, early_stopping=False
    )
    assert history["validation_loss"].iloc[-1] < history["validation_loss"].iloc[0]
    observed = pm.observed_average_treatment_effect(data, split="validation")
    predicted = pm.average_treatment_effect(model, data, list(observed.index), n_samples=3)
    agreement = pm.ate_agreement(predicted, observed)
    trivial = pm.ate_agreement(0.0 * observed, observed)  # predicts the control mean
    assert np.isnan(trivial["pearson_all"]).all() and (trivial["r2_all"] <= 0).all()
    min_pearson, min_r2_gain = ATE_BARS[name]
    assert agreement["pearson_all"].mean() > min_pearson, agreement
    assert agreement["r2_all"].mean() > trivial["r2_all"].mean() + min_r2_gain, agreement


def test_per_perturbation_loss_is_logged(data):
    def run(callbacks):
        model = SAMSVAE(data.n_features, data.n_perturbations, n_latent=3, hidden=(32,))
        history = pc.infer.fit(
            model, data, callbacks=callbacks, max_epochs=2, batch_size=256, progress=False
        )
        return model, history

    model, history = run([pc.infer.PerPerturbationLogger(data=data)])
    for lab in ["control", *data.perturbation_names]:
        assert np.isfinite(history[f"loss_{lab}"]).all()
    # Logged, not optimised: the fit is the same as with the plain ELBO.
    _, plain = run([])
    np.testing.assert_allclose(history["train_loss"], plain["train_loss"], rtol=1e-5)
    # The breakdown on a split (evaluation): one row per label, its cells counted.
    table = pm.per_perturbation_loss(model, data, split="validation")
    labels = pc.data.perturbation_labels(data)
    val = np.concatenate(list(data.indices("validation").values()))
    expected = dict(zip(*np.unique(labels[val], return_counts=True)))
    assert table["n_cells"].to_dict() == expected
    assert np.isfinite(table["loss"]).all()


def _sams_mask_recovery(seed: int) -> tuple[dict, dict]:
    """Mask recovery (issue 6, claim 1): K = 10 perturbations each hitting 1-2 of d = 4
    latent dimensions (every dimension hit by several perturbations), model latent dimension
    = true one, latent dimensions matched by MCC matching (the setting of
    ``experiments/perturbation_simulated.py --task masks``; ~15 s a fit). Scores:
    |E_q[m * e]| (the posterior-mean sparse shift) and the mask probabilities q(m = 1)."""
    sim = pc.data.simulate_sparse_shift(
        n_control=1500,
        n_per_perturbation=250,
        n_perturbations=10,
        n_genes=200,
        n_latent=4,
        min_targets=1,
        max_targets=2,
        seed=0,
    )
    data = ComparativeData.from_anndata(
        sim, "perturbation", "control", perturbation_key="perturbation"
    )
    data.set_split(pc.data.split_by_cell(data, validation_fraction=0.1, seed=0))
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)
    model = SAMSVAE(
        data.n_features, data.n_perturbations, n_latent=4, hidden=(128,), guide="correlated"
    )
    pc.infer.fit(
        model,
        data,
        max_epochs=60,
        batch_size=256,
        lr=3e-3,
        seed=seed,
        progress=False,
        early_stopping=False,
    )
    z = model.latent(data, "latent")
    truth, z_true = sim.uns["true_targets"], sim.obsm["true_latent"]
    by_effect = pm.mask_recovery(np.abs(model.effects()), truth, z_true, z)
    by_mask = pm.mask_recovery(model.mask_probabilities(), truth, z_true, z)
    return by_effect, by_mask


def test_sams_recovers_sparse_targets():
    """One fit (seed 0). Over training seeds 0-9 on this simulated screen
    (``experiments/test_thresholds/measure.py``, case ``sams_masks``), mean +- sd: latent
    MCC 0.76 +- 0.06, effect AUROC 0.77 +- 0.10 (0.59-0.93), mask AUROC 0.73 +- 0.12
    (0.52-0.91): the good optimum (AUROC >= 0.9, seeds 0 and 9, also the lowest training
    losses) is reached by 2 seeds in 10, and 150 epochs do not change that (seeds 1, 4, 7).
    The former bars (MCC > 0.8, AUROCs >= 0.9 / 0.85) held for seed 0 only by luck; another
    CPU's round-off (another trajectory) failed them in 8 of 10 cases. A single fit's AUROC
    cannot be bounded away from chance (mean - 3 sd < 0.5), so this test keeps the latent
    MCC (bar <= mean - 3 sd = 0.59) and the multi-seed median test below (``-m slow``)
    checks the recovery."""
    by_effect, by_mask = _sams_mask_recovery(0)
    assert by_effect["mcc"] > 0.55, by_effect
    assert 0.0 <= by_mask["auroc"] <= 1.0 and 0.0 <= by_effect["auroc"] <= 1.0


@pytest.mark.slow
def test_sams_recovers_sparse_targets_median_over_seeds():
    """Median over training seeds 0-4 (five fits, ~75 s). Per-seed effect AUROC 0.77 +- 0.10,
    latent MCC 0.76 +- 0.06 (10 seeds, see above); the median of 5 has sd ~0.06 / ~0.035,
    so the bars 0.6 / 0.65 are ~3 sd below the means."""
    runs = [_sams_mask_recovery(seed) for seed in range(5)]
    effect_auroc = np.median([e["auroc"] for e, _ in runs])
    mcc = np.median([e["mcc"] for e, _ in runs])
    assert effect_auroc > 0.6, [e["auroc"] for e, _ in runs]
    assert mcc > 0.65, [e["mcc"] for e, _ in runs]


# ---------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("name", ["sams_correlated", "svae_plus", "conditional"])
def test_latent_counterfactual_and_save_load(name, data, tmp_path):
    model = MODELS[name](data.n_features, data.n_perturbations)
    pc.infer.fit(model, data, max_epochs=1, batch_size=256, progress=False)
    z = model.latent(data, "latent")
    basal = model.latent(data, "basal")
    assert z.shape == basal.shape == (data.n_cells, 3)
    ctrl = data.sources["background"]
    np.testing.assert_allclose(z[ctrl], basal[ctrl], atol=1e-5)  # controls are unshifted
    cf = model.counterfactual(data, "P1", n_samples=2)
    n_ctrl = len(ctrl)
    assert cf.shape == (2 * n_ctrl, data.n_features)
    assert list(cf.var_names) == list(data.var_names)
    assert set(cf.obs["perturbation"]) == {"P1"}
    assert np.all(cf.X >= 0) and np.all(cf.X == np.round(cf.X))
    model.save(tmp_path / "m.pt")
    loaded = pc.models.load_model(tmp_path / "m.pt")
    assert type(loaded) is type(model)
    np.testing.assert_allclose(loaded.latent(data, "latent"), z, atol=1e-6)
    if hasattr(model, "mask_probabilities"):
        torch.testing.assert_close(loaded.mask_probabilities(), model.mask_probabilities())
    means = loaded.predicted_means(data, ["control", "P0+P1"], n_samples=1, sample_counts=False)
    assert means.shape == (2, data.n_features) and list(means.index) == ["control", "P0+P1"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vectorised_particles_equal_the_loop_in_expectation(name, data):
    """K vectorised particles estimate the same per-source losses as K looped ones: the
    means over repetitions agree within 4 standard errors (float64)."""
    model = MODELS[name](data.n_features, data.n_perturbations).double()
    batch = sources_to(_small_batch(data, 6, 10), dtype=torch.float64)
    draws = {True: [], False: []}
    for vectorize in (True, False):
        elbo = SourceTrace_ELBO(num_particles=4, vectorize_particles=vectorize)
        for rep in range(60):
            pyro.set_rng_seed(rep)
            with torch.no_grad():
                losses = elbo.source_losses(model.model, model.guide, batch)
            draws[vectorize].append([float(losses[k]) for k in ("background", "target")])
    vec, loop = np.array(draws[True]), np.array(draws[False])
    se = np.sqrt(vec.var(0) / len(vec) + loop.var(0) / len(loop))
    assert np.all(np.abs(vec.mean(0) - loop.mean(0)) <= 4 * se + 1e-9), (vec.mean(0), loop.mean(0))


class _StateRecorder(pc.infer.Callback):
    """Keeps a copy of the parameters at the end of every epoch."""

    def setup(self, model, data):
        self.model, self.states = model, []

    def on_epoch_end(self, epoch, row):
        self.states.append({k: v.clone() for k, v in self.model.state_dict().items()})


def test_default_fit_settings_and_best_ate_selection(data):
    """Perturbation models bring their own fit defaults; select='best_ate' keeps the epoch
    with the best held-out ATE agreement, logged every few epochs."""
    data.set_split(pc.data.split_by_cell(data, validation_fraction=0.3, seed=0))
    model = SAMSVAE(data.n_features, data.n_perturbations, n_latent=3, hidden=(32,))
    assert model.default_fit_settings()["select"] == "last"
    recorder = _StateRecorder()
    history = pc.infer.fit(
        model,
        data,
        max_epochs=6,
        select="best_ate",
        callbacks=[pc.infer.ATEAgreementMonitor(every=2, n_samples=1), recorder],
        progress=False,
    )
    settings = history.attrs["settings"]
    assert settings["batch_size"] == 256 and settings["select"] == "best_ate"
    assert settings["lr_schedule"] == "cosine" and settings["early_stopping"] is False
    ate = history["validation_ate_pearson"]
    assert ate.notna().sum() == 3 and np.isfinite(ate.dropna()).all()
    best_epoch = int(ate.idxmax())
    for name, value in model.state_dict().items():
        assert torch.equal(value, recorder.states[best_epoch][name]), name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_distribution_follows_the_model_dtype(name, data):
    """Every parameter of every sample site's distribution (model and guide) has the
    parameters' dtype: a distribution built from Python floats (``Normal(0.0, s)``) makes
    default-dtype CPU tensors, which the float64 check catches on the CPU and which fail a
    fit on CUDA ("Expected all tensors to be on the same device")."""
    model = MODELS[name](data.n_features, data.n_perturbations).double()
    batch = sources_to(_small_batch(data), dtype=torch.float64)
    guide_trace = pyro.poutine.trace(model.guide).get_trace(batch)
    model_trace = pyro.poutine.trace(pyro.poutine.replay(model.model, guide_trace)).get_trace(batch)
    for trace in (guide_trace, model_trace):
        for site_name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            if not hasattr(fn, "arg_constraints"):  # plates' subsample sites
                continue
            while hasattr(fn, "base_dist"):
                fn = fn.base_dist
            for param in fn.arg_constraints:
                value = getattr(fn, param, None)
                if isinstance(value, torch.Tensor):
                    assert value.dtype == torch.float64, (site_name, param, value.dtype)
