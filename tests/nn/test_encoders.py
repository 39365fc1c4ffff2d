import torch

from pyro_compare.nn.encoders import GaussianEncoder
from pyro_compare.nn.mlp import cat_broadcast


def test_split_first_layer_equals_the_network_on_the_concatenation():
    """With a particle-batched context the encoder evaluates its first layer as
    W_x x + W_c c + b; values and gradients equal the MLP on cat(log1p(x), c)."""
    torch.manual_seed(0)
    encoder = GaussianEncoder(30, 5, (16, 8), n_context=4).double()
    x_ng = torch.poisson(torch.rand(7, 30, dtype=torch.float64) * 5)
    c_knc = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    loc, scale = encoder(x_ng, c_knc)
    assert loc.shape == scale.shape == (3, 7, 5)
    out = encoder.net(cat_broadcast(torch.log1p(x_ng), c_knc))
    ref_loc, ref_raw = out.split(5, dim=-1)
    torch.testing.assert_close(loc, ref_loc, rtol=1e-12, atol=0)
    torch.testing.assert_close(scale, torch.nn.functional.softplus(ref_raw) + 1e-4)
    grads = torch.autograd.grad(loc.sum() + scale.sum(), [c_knc, *encoder.parameters()])
    ref_grads = torch.autograd.grad(
        ref_loc.sum() + (torch.nn.functional.softplus(ref_raw) + 1e-4).sum(),
        [c_knc, *encoder.parameters()],
    )
    for g, r in zip(grads, ref_grads):
        assert torch.linalg.norm(g - r) <= 1e-10 * torch.linalg.norm(r)
