import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_compare.data import ComparativeData, simulate_contrastive
from pyro_compare.infer import SourceTrace_ELBO
from pyro_compare.models import ContrastiveVAE


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _toy_model(x_background, x_target):
    """A global site (shared mean), local latents per source, observations per source."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for s, x in (("background", x_background), ("target", x_target)):
        with pyro.plate(s, len(x)):
            z = pyro.sample(f"z_{s}", dist.Normal(mu, 1.0))
            pyro.sample(f"x_{s}", dist.Normal(z, 0.5), obs=x)


def _toy_guide(x_background, x_target):
    loc = pyro.param("mu_loc", torch.tensor(0.3))
    pyro.sample("mu", dist.Normal(loc, 0.7))
    for s, x in (("background", x_background), ("target", x_target)):
        with pyro.plate(s, len(x)):
            pyro.sample(f"z_{s}", dist.Normal(0.5 * x, 0.8))


def test_toy_sum_equals_trace_elbo(float64):
    pyro.clear_param_store()
    x_b, x_t = torch.randn(7), torch.randn(5) + 2
    pyro.set_rng_seed(1)
    losses = SourceTrace_ELBO().source_losses(_toy_model, _toy_guide, x_b, x_t)
    pyro.set_rng_seed(1)
    reference = Trace_ELBO().differentiable_loss(_toy_model, _toy_guide, x_b, x_t)
    assert set(losses) == {"background", "target", "global"}
    torch.testing.assert_close(sum(losses.values()), reference, rtol=1e-12, atol=1e-10)


def _sim_batch(n=40, dtype=torch.float64):
    adata = simulate_contrastive(n, n, 20, 3, 2, seed=0, library_mean=300)
    data = ComparativeData.from_anndata(adata, "condition", "background", validation_fraction=0)
    batch = data.full_batch()
    return {
        k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
        for k, v in batch.items()
    }, data


def test_contrastive_sum_equals_trace_elbo(float64):
    batch, data = _sim_batch()
    model = ContrastiveVAE(data.n_features, 3, 2, hidden=(16,)).double()
    for particles in (1, 3):
        pyro.set_rng_seed(2)
        losses = SourceTrace_ELBO(num_particles=particles).source_losses(
            model.model, model.guide, **batch
        )
        pyro.set_rng_seed(2)
        reference = Trace_ELBO(num_particles=particles).differentiable_loss(
            model.model, model.guide, **batch
        )
        assert set(losses) == {"background", "target"}
        torch.testing.assert_close(sum(losses.values()), reference, rtol=1e-12, atol=1e-8)


def test_minibatch_estimate_is_unbiased(float64):
    """Average of subsampled per-source estimates equals the full-data terms."""
    torch.manual_seed(0)
    x_b, x_t = torch.randn(12), torch.randn(9) + 1

    def model(idx_b, idx_t):
        for s, x, idx in (("background", x_b, idx_b), ("target", x_t, idx_t)):
            with pyro.plate(s, len(x), subsample=idx) as i:
                pyro.sample(f"x_{s}", dist.Normal(0.3, 1.2), obs=x[i])

    def guide(idx_b, idx_t):
        pass

    elbo = SourceTrace_ELBO()
    full = elbo.source_losses(model, guide, torch.arange(12), torch.arange(9))
    # Every subsample of size 3 (background) and 3 (target) over a partition: exact average.
    gen = torch.Generator().manual_seed(0)
    acc = {"background": 0.0, "target": 0.0}
    n_rep = 400
    for _ in range(n_rep):
        ib = torch.randperm(12, generator=gen)[:3]
        it = torch.randperm(9, generator=gen)[:3]
        for k, v in elbo.source_losses(model, guide, ib, it).items():
            acc[k] += float(v) / n_rep
    for k in acc:
        # Standard error of the mean of the subsample estimator is ~1% here.
        assert abs(acc[k] - float(full[k])) < 0.05 * abs(float(full[k]))


def test_scaling_matches_plate_size(float64):
    batch, data = _sim_batch()
    model = ContrastiveVAE(data.n_features, 3, 2, hidden=(16,)).double()
    half = dict(batch)
    half["n_background"] = 2 * batch["n_background"]
    pyro.set_rng_seed(0)
    a = SourceTrace_ELBO().source_losses(model.model, model.guide, **batch)
    pyro.set_rng_seed(0)
    b = SourceTrace_ELBO().source_losses(model.model, model.guide, **half)
    torch.testing.assert_close(b["background"], 2 * a["background"])
    torch.testing.assert_close(b["target"], a["target"])


def test_each_term_has_finite_gradients():
    batch, data = _sim_batch(dtype=torch.float32)
    model = ContrastiveVAE(data.n_features, 3, 2, hidden=(16,))
    losses = SourceTrace_ELBO().source_losses(model.model, model.guide, **batch)
    for name, loss in losses.items():
        grads = torch.autograd.grad(
            loss, [p for p in model.parameters()], retain_graph=True, allow_unused=True
        )
        used = [g for g in grads if g is not None]
        assert used, name
        assert all(torch.isfinite(g).all() for g in used), name
    # The background term does not touch the salient encoder (t = 0 for background cells).
    g = torch.autograd.grad(
        losses["background"], list(model.salient_encoder.parameters()), allow_unused=True
    )
    assert all(x is None for x in g)


def test_drops_into_plain_svi():
    pyro.clear_param_store()
    adata = simulate_contrastive(200, 200, 30, 2, 1, seed=3, library_mean=500)
    data = ComparativeData.from_anndata(adata, "condition", "background")
    model = ContrastiveVAE(data.n_features, 2, 1, hidden=(32,))
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), loss=SourceTrace_ELBO())
    first = None
    for _ in range(8):
        for batch in data.loader(batch_size=64):
            loss = svi.step(**batch)
            first = loss if first is None else first
    assert loss < first
    samples = pyro.infer.Predictive(model.model, guide=model.guide, num_samples=3)(**batch)
    assert samples["t_target"].shape == (3, len(batch["index_target"]), 1)
