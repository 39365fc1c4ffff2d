"""Leakage penalties: analytic values, unbiasedness, and the model-level registry."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

import pyro_compare as pc
from pyro_compare.infer import SourceTerms
from pyro_compare.infer.penalties import (
    PENALTIES,
    ClusterMMD,
    cluster_mmd,
    evaluate_penalty,
    hsic,
    kmeans,
    mmd,
    wasserstein_to_zero,
)


def _gaussian_mmd2(d: int, s2: float, delta2: float, h2: float) -> float:
    """Population MMD^2 between N(mu1, s2 I) and N(mu2, s2 I), RBF exp(-r^2 / (2 h2))."""
    c = (h2 / (h2 + 2 * s2)) ** (d / 2)
    return 2 * c * (1 - math.exp(-delta2 / (2 * (h2 + 2 * s2))))


def test_wasserstein_to_zero_closed_form():
    loc = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    scale = torch.tensor([[0.5, 0.5], [1.0, 2.0]])
    # cell 1: 1 + 4 + 0.25 + 0.25 = 5.5; cell 2: 0 + 1 + 1 + 4 = 6 -> mean 5.75
    assert wasserstein_to_zero(loc, scale).item() == pytest.approx(5.75)
    # Monte Carlo: E ||t||^2 under N(loc, scale^2)
    g = torch.Generator().manual_seed(0)
    t = loc + scale * torch.randn((20000, 2, 2), generator=g)
    assert t.pow(2).sum(-1).mean().item() == pytest.approx(5.75, rel=0.02)
    assert wasserstein_to_zero(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_mmd_matches_gaussian_closed_form_and_is_unbiased():
    torch.manual_seed(0)
    d, h2, n, reps = 2, 1.0, 32, 400
    shift = torch.tensor([1.0, 0.0])
    vals_diff, vals_same, vals_biased = [], [], []
    for _ in range(reps):
        x, y, y2 = torch.randn(n, d), torch.randn(n, d) + shift, torch.randn(n, d)
        vals_diff.append(mmd(x, y, bandwidths=[h2]).item())
        vals_same.append(mmd(x, y2, bandwidths=[h2]).item())
        # V-statistic for comparison: includes the diagonal, biased upward.
        z = torch.cat([x, y2])
        k = torch.exp(-torch.cdist(z, z).pow(2) / (2 * h2))
        vals_biased.append((k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()).item())
    expected = _gaussian_mmd2(d, 1.0, 1.0, h2)
    assert sum(vals_diff) / reps == pytest.approx(expected, rel=0.08)
    mean_same = sum(vals_same) / reps
    assert abs(mean_same) < 0.004  # unbiased: ~0 (the estimate itself can be negative)
    assert min(vals_same) < 0.0
    assert sum(vals_biased) / reps > 10 * abs(mean_same) + 0.02  # the floor ~ 2(1 - E k)/n


def test_mmd_median_heuristic_is_scale_invariant_and_differentiable():
    # float64: the estimate is a difference of kernel means (cancellation); float32's
    # round-off (1e-6 relative here, CPU-dependent) is not what this checks
    torch.manual_seed(1)
    x = torch.randn(40, 3).double().requires_grad_()
    y = torch.randn(50, 3).double() + 0.5
    v = mmd(x, y)
    assert v.item() == pytest.approx(mmd(10 * x, 10 * y).item(), rel=1e-9)
    v.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hsic_independent_near_zero_dependent_positive():
    torch.manual_seed(0)
    n, reps = 64, 100
    indep, dep = [], []
    for _ in range(reps):
        x = torch.randn(n, 2)
        indep.append(hsic(x, torch.randn(n, 3)).item())
        dep.append(hsic(x, x[:, :1] ** 2 + 0.1 * torch.randn(n, 1)).item())  # nonlinear
    mean_indep = sum(indep) / reps
    assert abs(mean_indep) < 2e-3
    assert sum(dep) / reps > 20 * abs(mean_indep) + 0.004
    # permuting the pairs of a dependent sample destroys the dependence
    x = torch.randn(200, 2)
    y = x + 0.1 * torch.randn(200, 2)
    assert hsic(x, y) > 0.02
    assert abs(hsic(x, y[torch.randperm(200)]).item()) < 0.002
    # symmetric in its arguments (float64: a centred-kernel sum over 200^2 pairs)
    x, y = x.double(), y.double()
    assert hsic(x, y).item() == pytest.approx(hsic(y, x).item(), rel=1e-9)


def _small_model_and_batch():
    adata = pc.data.simulate_contrastive(60, 60, 30, 3, 2, seed=0)
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "background")
    model = pc.models.ContrastiveVAE(data.n_features, 3, 4, hidden=(16,))
    batch = next(iter(data.loader(64, seed=0)))
    return model, data, batch


def _guide_terms(model, batch) -> SourceTerms:
    """The step's terms as a penalty sees them: here only the guide trace matters."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    return SourceTerms({}, [(None, guide_trace)])


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_registry_penalties_are_differentiable_scalars(name):
    torch.manual_seed(0)
    model, _, batch = _small_model_and_batch()
    value = PENALTIES[name](_guide_terms(model, batch))
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_background_salient_penalty_names_what_is_missing():
    model, _, batch = _small_model_and_batch()
    only_target = {"target": batch["target"]}
    with pytest.raises(KeyError, match="t_loc"):
        PENALTIES["wasserstein_to_zero"](_guide_terms(model, only_target))


def test_penalties_read_the_trace_of_vectorised_particles():
    """With vectorised ELBO particles the penalty sees every particle's cells."""
    torch.manual_seed(0)
    model, _, batch = _small_model_and_batch()
    elbo = pc.infer.SourceTrace_ELBO(num_particles=3, vectorize_particles=True)
    terms = elbo.source_terms(model.model, model.guide, batch)
    n_target = batch["target"].size
    z, t = terms.guide_values("z", "target"), terms.guide_values("t", "target")
    assert z.shape == (3 * n_target, 3) and t.shape == (3 * n_target, 4)
    for name in PENALTIES:
        assert torch.isfinite(PENALTIES[name](terms))


def test_wasserstein_penalty_matches_encoder_outputs_and_evaluate_penalty():
    model, data, batch = _small_model_and_batch()
    loc, scale = model.salient_encoder(batch["background"].x_ng)
    expected = (loc.pow(2) + scale.pow(2)).sum(-1).mean()
    value = PENALTIES["wasserstein_to_zero"](_guide_terms(model, batch))
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value = evaluate_penalty(model, data, "wasserstein_to_zero", batch_size=1000)
    x_bg = data.full_batch()["background"].x_ng
    loc, scale = model.salient_encoder(x_bg)
    assert value == pytest.approx((loc.pow(2) + scale.pow(2)).sum(-1).mean().item(), rel=1e-4)


# --------------------------------------------------------------------------- cluster_mmd


def _mixture(n, weights, centers, shift=0.0, generator=None):
    """n points of a Gaussian mixture (unit sd around ``centers``) with cluster ``weights``;
    ``shift`` moves every point along the first axis (condition *within* clusters)."""
    idx = torch.multinomial(torch.tensor(weights), n, replacement=True, generator=generator)
    z = centers[idx] + torch.randn(n, centers.shape[1], generator=generator)
    z[:, 0] += shift
    return z


def _cluster_mmd_means(reps=40, n=128, kernel="rbf", **cases):
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(6, 5, generator=g)
    out = {}
    for name, (wx, wy, shift) in cases.items():
        cm, um = [], []
        for _ in range(reps):
            x = _mixture(n, wx, centers, generator=g)
            y = _mixture(n, wy, centers, shift, generator=g)
            cm.append(cluster_mmd(x, y, kernel=kernel).item())
            um.append(mmd(x, y).item())
        out[name] = (sum(cm) / reps, sum(um) / reps)
    return out


def test_cluster_mmd_ignores_composition_and_sees_shifts_within_clusters():
    balanced = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
    skewed = [0.05, 0.1, 0.1, 0.25, 0.25, 0.25]
    means = _cluster_mmd_means(
        same=(balanced, balanced, 0.0),
        composition=(balanced, skewed, 0.0),
        within=(balanced, balanced, 0.75),
        within_and_composition=(balanced, skewed, 0.75),
    )
    # z independent of the source (given the cluster): ~0 in expectation
    assert abs(means["same"][0]) < 2e-3
    # a pure composition difference: the unconditional MMD is large, cluster_mmd ~0
    assert means["composition"][1] > 0.03
    assert abs(means["composition"][0]) < 3e-3
    # the source shifts z inside every cluster: clearly positive, with or without
    # a composition difference on top
    assert means["within"][0] > 0.008
    assert means["within_and_composition"][0] > 0.008
    assert means["within"][0] > 4 * abs(means["composition"][0])


def test_cluster_mmd_is_differentiable_scale_free_and_handles_small_samples():
    # float64: k-means assignments and the kernel-mean differences of x and 10 x must not
    # hinge on float32 round-off (CPU-dependent); measured difference ~1e-16
    torch.manual_seed(0)
    x = torch.randn(60, 3).double().requires_grad_()
    y = torch.randn(70, 3).double() + 0.5
    v = cluster_mmd(x, y, n_clusters=4)
    assert v.item() == pytest.approx(cluster_mmd(10 * x, 10 * y, n_clusters=4).item(), rel=1e-9)
    v.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # fewer than 2 cells on a side, or one cluster only: defined, finite
    assert cluster_mmd(torch.randn(1, 3), torch.randn(5, 3)).item() == 0.0
    one = cluster_mmd(x.detach(), y, n_clusters=1)
    assert one.item() == pytest.approx(mmd(x.detach(), y, bandwidths=None).item(), abs=0.05)


def test_kmeans_is_deterministic_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    centers = 5.0 * torch.randn(3, 2, generator=g)
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centers])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    c1 = kmeans(x, 3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(c1, kmeans(x, 3))
    # recovers well-separated centres
    d = torch.cdist(c1, centers).min(0).values
    assert (d < 0.1).all()
    assert kmeans(x[:2], 5).shape == (2, 2)  # capped at the number of points


def test_cluster_mmd_penalty_is_pure_and_registered():
    assert isinstance(PENALTIES["cluster_mmd"], ClusterMMD)
    torch.manual_seed(0)
    model, _, batch = _small_model_and_batch()
    terms = _guide_terms(model, batch)
    penalty = ClusterMMD(n_clusters=3)
    state = torch.get_rng_state()
    a, b = penalty(terms), penalty(terms)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.item() == b.item() and penalty.state_dict() == {}
    with pytest.raises(ValueError):
        ClusterMMD(n_clusters=0)


def test_anchored_cluster_mmd_moves_only_the_target_cells():
    """``anchor="background"``: same value, but the gradient reaches the background encoder
    only through the target cells (whose background latents it also encodes)."""
    torch.manual_seed(0)
    model, _, batch = _small_model_and_batch()
    free, anchored = ClusterMMD(n_clusters=3), ClusterMMD(n_clusters=3, anchor="background")
    terms = _guide_terms(model, batch)
    assert anchored(terms).item() == pytest.approx(free(terms).item(), rel=1e-6)

    def loc(role):
        (site,) = terms.guide_sites("z", role)
        fn = site["fn"]
        while not hasattr(fn, "loc"):
            fn = fn.base_dist
        return fn.loc

    x, y = loc("background"), loc("target")
    gx, gy = torch.autograd.grad(anchored(terms), [x, y], allow_unused=True)
    assert gx is None or torch.count_nonzero(gx) == 0
    assert torch.count_nonzero(gy) > 0
    gx_free = torch.autograd.grad(free(terms), [x])[0]
    assert torch.count_nonzero(gx_free) > 0
    assert "anchor='background'" in repr(anchored)
    with pytest.raises(ValueError, match="anchor"):
        ClusterMMD(anchor="target")


def test_linear_cluster_mmd_is_the_u_statistic_of_the_mean_difference():
    # One cluster: every membership is 1, so the estimate is the unbiased squared distance
    # between the two samples' means over the mean squared pairwise distance (float64).
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 4, generator=g, dtype=torch.float64) + 0.7
    n, m = len(x), len(y)
    xx = (x.sum(0).pow(2).sum() - x.pow(2).sum()) / (n * (n - 1))
    yy = (y.sum(0).pow(2).sum() - y.pow(2).sum()) / (m * (m - 1))
    xy = x.sum(0) @ y.sum(0) / (n * m)
    pooled = torch.cat([x, y])
    d2 = torch.cdist(pooled, pooled).pow(2)
    h2 = d2.sum() / (len(pooled) * (len(pooled) - 1))
    expected = (xx + yy - 2 * xy) / h2
    got = cluster_mmd(x, y, n_clusters=1, kernel="linear")
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    with pytest.raises(ValueError, match="unknown kernel"):
        ClusterMMD(kernel="cosine")


def test_linear_cluster_mmd_ignores_composition_and_sees_shifts():
    balanced = [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
    skewed = [0.05, 0.1, 0.1, 0.25, 0.25, 0.25]
    means = _cluster_mmd_means(
        kernel="linear",
        composition=(balanced, skewed, 0.0),
        within=(balanced, balanced, 0.75),
    )
    # measured (means over 40 minibatches of 128 + 128): composition 0.0042 (soft
    # memberships let neighbouring clusters' mass move a cluster's mean), within 0.040;
    # the unconditional MMD: 0.049 and 0.0032
    assert abs(means["composition"][0]) < 0.01
    assert means["within"][0] > 0.025
    assert means["within"][0] > 5 * abs(means["composition"][0])
