import pyro.distributions as dist
import pytest
import torch

from pyro_compare.nn import SparseNegativeBinomial, nb_log_prob


@pytest.mark.parametrize("batch", [(), (3,)])
def test_matches_torch_negative_binomial_values_and_gradients(batch):
    gen = torch.Generator().manual_seed(0)
    theta = (torch.rand(9, generator=gen, dtype=torch.float64) * 5 + 0.05).requires_grad_()
    logits = torch.randn(*batch, 6, 9, generator=gen, dtype=torch.float64).requires_grad_()
    x = torch.poisson(torch.rand(6, 9, generator=gen, dtype=torch.float64) * 2)
    x[0] = 0  # a row of zeros, as in sparse count data
    ours = SparseNegativeBinomial(theta, logits=logits).log_prob(x)
    ref = dist.NegativeBinomial(theta, logits=logits).log_prob(x)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours.sum(), (theta, logits))
    g_ref = torch.autograd.grad(ref.sum(), (theta, logits))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_all_zero_and_all_positive_inputs():
    # float64: the two densities are different formulas (log-gamma on non-zero counts only),
    # their float32 round-off differs by CPU (vectorised lgamma / log1p), not their float64 one
    f64 = dict(dtype=torch.float64)
    theta, logits = torch.tensor([0.5, 2.0], **f64), torch.tensor([[0.1, -1.0]], **f64)
    for x in (torch.zeros(1, 2, **f64), torch.tensor([[3.0, 1.0]], **f64)):
        torch.testing.assert_close(
            nb_log_prob(x, theta, logits),
            dist.NegativeBinomial(theta, logits=logits).log_prob(x),
            rtol=1e-12,
            atol=1e-12,
        )


def test_expanded_distribution_under_particle_plates():
    """Pyro's plates ``expand`` the parameters to the particle-batched shape (stride-0 views):
    the log-gamma terms are then evaluated once per cell and gene; values and gradients
    still equal torch's NB on the full shape (float64)."""
    gen = torch.Generator().manual_seed(1)
    theta = (torch.rand(9, generator=gen, dtype=torch.float64) * 5 + 0.05).requires_grad_()
    logits = torch.randn(4, 6, 9, generator=gen, dtype=torch.float64).requires_grad_()
    x = torch.poisson(torch.rand(6, 9, generator=gen, dtype=torch.float64) * 3)
    ours = SparseNegativeBinomial(theta, logits=logits).expand((2, 4, 6, 9)).log_prob(x)
    ref = dist.NegativeBinomial(theta, logits=logits).expand((2, 4, 6, 9)).log_prob(x)
    assert ours.shape == ref.shape == (2, 4, 6, 9)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad(ours.sum(), (theta, logits))
    g_ref = torch.autograd.grad(ref.sum(), (theta, logits))
    for a, b in zip(g_ours, g_ref):
        assert torch.linalg.norm(a - b) <= 1e-10 * torch.linalg.norm(b)
