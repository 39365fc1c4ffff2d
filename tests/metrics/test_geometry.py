"""Tests for pyro_compare.metrics.geometry (pullback metrics, geodesics, stability)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from pyro_compare.metrics.geometry import (
    curve_energy,
    curve_length,
    distance_matrix,
    distance_stability,
    fisher_embedding,
    geodesic,
    latent_decoder,
    pairwise_distances,
    pullback_metric,
)

torch.set_num_threads(1)
DT = torch.float64


def _line(z_a: torch.Tensor, z_b: torch.Tensor, n: int) -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, n, dtype=z_a.dtype)[None, :, None]
    return z_a[:, None, :] + t * (z_b - z_a)[:, None, :]


def _polar(z_nd: torch.Tensor) -> torch.Tensor:
    """(r, phi) -> (r cos phi, r sin phi): straight latent lines at fixed r map to arcs."""
    r, phi = z_nd[:, 0], z_nd[:, 1]
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=1)


def _mlp(d: int = 2, g: int = 12, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh()
    )
    net.append(torch.nn.Linear(32, g))
    return net.double().eval()


# --------------------------------------------------------------------------- linear decoder


def test_linear_decoder_metric_and_straight_geodesic():
    torch.manual_seed(1)
    A = torch.randn(7, 3, dtype=DT)
    b = torch.randn(7, dtype=DT)

    def decoder(z):
        return z @ A.T + b

    z = torch.randn(5, 3, dtype=DT)
    G = pullback_metric(decoder, z)
    assert G.shape == (5, 3, 3)
    torch.testing.assert_close(G, (A.T @ A).expand(5, 3, 3), rtol=1e-12, atol=1e-12)

    z_a, z_b = torch.randn(4, 3, dtype=DT), torch.randn(4, 3, dtype=DT)
    for method in ("spline", "points"):
        res = geodesic(decoder, z_a, z_b, n_points=12, method=method)
        assert res.curve.shape == (4, 12, 3)
        expected = ((z_b - z_a) @ A.T).norm(dim=1)
        torch.testing.assert_close(res.length, expected, rtol=1e-3, atol=0)
        deviation = (res.curve - _line(z_a, z_b, 12)).norm(dim=-1).max()
        assert deviation < 1e-3 * (z_b - z_a).norm(dim=1).min()
        assert res.converged.all()
        # Constant speed in the output: L^2 = E for the discrete curve.
        torch.testing.assert_close(res.energy, res.length**2, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- curved decoders


def test_geodesic_length_on_a_cylinder_equals_unrolled_distance():
    """A 2-d latent, sheared then rolled onto a cylinder of radius R (one direction curls).

    The cylinder is flat: with arc coordinate R*u and height v, the geodesic between
    two points is a helix of length sqrt((R du)^2 + dv^2). The shear makes the
    latent geodesic a curve, so the optimiser has to find it.
    """
    R, shear = 1.5, 0.5

    def decoder(s):
        u = s[:, 0] + shear * s[:, 1] ** 2
        v = s[:, 1]
        return torch.stack([R * torch.cos(u), R * torch.sin(u), v], dim=1)

    z_a = torch.tensor([[-0.8, -1.0], [0.6, -1.1], [0.0, 1.2]], dtype=DT)
    z_b = torch.tensor([[0.5, 1.0], [-0.5, 1.2], [0.4, -1.0]], dtype=DT)
    du = (z_b[:, 0] + shear * z_b[:, 1] ** 2) - (z_a[:, 0] + shear * z_a[:, 1] ** 2)
    true = torch.sqrt((R * du) ** 2 + (z_b[:, 1] - z_a[:, 1]) ** 2)
    res = geodesic(decoder, z_a, z_b, n_points=32)
    torch.testing.assert_close(res.length, true, rtol=1e-2, atol=0)
    straight = curve_length(decoder, _line(z_a, z_b, 32))
    assert (straight > 1.05 * true).all()  # the test is not passed by the initial line


def test_geodesic_length_of_a_circle_arc_1d_latent():
    """1-d latent s -> R (cos w(s), sin w(s)) with a non-uniform speed w(s) = s + s^3/3."""
    R = 2.0

    def decoder(s):
        w = s[:, 0] + s[:, 0] ** 3 / 3
        return R * torch.stack([torch.cos(w), torch.sin(w)], dim=1)

    z_a = torch.tensor([[-0.9]], dtype=DT)
    z_b = torch.tensor([[1.1]], dtype=DT)
    arc = R * ((1.1 + 1.1**3 / 3) - (-0.9 - 0.9**3 / 3))  # = R * angle (< pi)
    for method in ("spline", "points"):
        res = geodesic(decoder, z_a, z_b, n_points=32, method=method)
        assert abs(res.length.item() / arc - 1) < 1e-2
        # the energy is minimised by a constant-speed parametrisation: L^2 ~ E
        assert abs(res.energy.item() / res.length.item() ** 2 - 1) < 1e-3


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("method", ["spline", "points"])
def test_geodesic_shortcuts_a_stretched_region_and_energy_decreases(method, optimizer):
    """Polar map: the latent straight line at r=1 maps to an arc; the geodesic to the chord."""
    theta = 1.2
    z_a = torch.tensor([[1.0, -theta]], dtype=DT)
    z_b = torch.tensor([[1.0, theta]], dtype=DT)
    straight = curve_length(_polar, _line(z_a, z_b, 16))
    torch.testing.assert_close(straight, torch.tensor([2 * theta], dtype=DT), rtol=2e-3, atol=0)
    res = geodesic(_polar, z_a, z_b, n_points=16, method=method, optimizer=optimizer)
    assert res.length.item() < 0.9 * straight.item()
    assert abs(res.length.item() / (2 * math.sin(theta)) - 1) < 5e-3  # the chord
    assert res.curve[0, :, 0].min() < 0.6  # the latent curve dips towards the origin
    trace = np.asarray(res.energy_trace)
    assert len(trace) >= 5
    assert np.all(np.diff(trace) <= 1e-9 * trace[0])
    assert trace[-1] < 0.7 * trace[0]
    assert res.converged.all()


# Outcome tolerances (relative length, curve deviation / latent distance) for two runs of
# the same pair that took different accept / stall decisions: measured by starting the
# single-pair run with other step sizes (lr 0.3 to 0.7, i.e. entirely different paths), the
# worst gaps were 6e-9 / 5e-5 (L-BFGS) and 5e-5 / 5e-3 (Adam) at tol=1e-6.
_SAME_GEODESIC = {"lbfgs": (1e-6, 1e-3), "adam": (2e-4, 2e-2)}


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_batched_and_one_pair_at_a_time_reach_the_same_geodesics(optimizer):
    """Every pair keeps its own optimiser state, so a batch gives each pair the curve it
    gets alone.

    Asserted on the outcome, with relative tolerances, not bit for bit: the batched and
    the single runs decode differently shaped batches, whose round-off can differ in the
    last bits (it does here: the degenerate pair has length 0 in the batch, 7e-16 alone)
    and, on some CPUs, flip a borderline accept / stall decision. The two runs then follow
    different, equally valid paths to the same geodesic; they must agree within the
    tolerances above (a coupling bug, e.g. a line search shared by the pairs, stops pairs
    early or late and breaks them), be converged, and be no longer than the straight line."""
    net = _mlp()
    torch.manual_seed(3)
    z_a, z_b = 1.5 * torch.randn(5, 2, dtype=DT), 1.5 * torch.randn(5, 2, dtype=DT)
    z_b[2] = z_a[2]  # a degenerate pair (zero distance) in the batch
    kw = dict(n_points=12, optimizer=optimizer, tol=1e-6)
    rtol_length, rtol_curve = _SAME_GEODESIC[optimizer]
    batched = geodesic(net, z_a, z_b, **kw)
    assert batched.converged.all()
    assert batched.n_iter.max() > batched.n_iter.min()  # pairs really stop at different times
    assert batched.length[2] == 0
    with torch.no_grad():
        straight = curve_length(net, _line(z_a, z_b, 12))
    scale_p = (z_b - z_a).norm(dim=1)
    atol = 1e-12 * float(straight.max())  # round-off floor (the degenerate pair)
    assert torch.all(batched.length <= straight + atol)
    assert batched.length[0] < (1 - 3e-3) * straight[0]  # the curves do bend
    for p in range(5):
        single = geodesic(net, z_a[p], z_b[p], **kw)
        assert single.curve.shape == (12, 2)
        assert bool(single.converged)
        torch.testing.assert_close(single.length, batched.length[p], rtol=rtol_length, atol=atol)
        deviation = (single.curve - batched.curve[p]).norm(dim=-1).max()
        assert deviation <= rtol_curve * scale_p[p] + atol
    # chunking inside pairwise_distances does not change the answer either
    chunked = pairwise_distances(net, z_a, z_b, batch_size=2, **kw)
    torch.testing.assert_close(chunked, batched.length, rtol=rtol_length, atol=atol)


# --------------------------------------------------------------------------- Fisher metrics


def test_fisher_poisson_metric_matches_explicit_and_finite_difference_formulas():
    torch.manual_seed(4)
    A = 0.5 * torch.randn(6, 2, dtype=DT)
    b = torch.randn(6, dtype=DT)

    def log_linear(z):  # mu = exp(Az + b): J = diag(mu) A, so G = A^T diag(mu) A
        return torch.exp(z @ A.T + b)

    z = torch.randn(3, 2, dtype=DT)
    G = pullback_metric(log_linear, z, kind="fisher_poisson")
    mu = log_linear(z)
    torch.testing.assert_close(G, torch.einsum("gi,ng,gj->nij", A, mu, A))
    assert not G.requires_grad
    # create_graph=True keeps G differentiable in z
    z_req = z.clone().requires_grad_(True)
    G_req = pullback_metric(log_linear, z_req, kind="fisher_poisson", create_graph=True)
    (dz,) = torch.autograd.grad(G_req.sum(), z_req)
    z_ref = z.clone().requires_grad_(True)
    G_ref = torch.einsum("gi,ng,gj->nij", A, log_linear(z_ref), A)
    torch.testing.assert_close(dz, torch.autograd.grad(G_ref.sum(), z_ref)[0])

    # A softmax MLP with a library size; central finite differences for J.
    net = _mlp(g=8, seed=5)

    def counts(z):
        return 50.0 * torch.softmax(net(z), dim=-1)

    z0 = torch.tensor([0.3, -0.2], dtype=DT)
    h = 1e-6
    J = torch.stack(
        [
            (counts((z0 + h * e)[None]) - counts((z0 - h * e)[None]))[0] / (2 * h)
            for e in torch.eye(2, dtype=DT)
        ],
        dim=1,
    )
    mu0 = counts(z0[None])[0]
    G_fd = J.T @ torch.diag(1 / mu0) @ J
    torch.testing.assert_close(
        pullback_metric(counts, z0, "fisher_poisson"), G_fd, rtol=1e-6, atol=1e-9
    )
    G_e = pullback_metric(counts, z0)
    torch.testing.assert_close(G_e, J.T @ J, rtol=1e-6, atol=1e-9)

    # NB: explicit formula, Poisson limit, and differs from Poisson at small theta
    theta = torch.tensor(3.0, dtype=DT)
    w = theta / (mu0 * (mu0 + theta))
    G_nb = pullback_metric(counts, z0, "fisher_nb", theta=theta)
    torch.testing.assert_close(G_nb, J.T @ torch.diag(w) @ J, rtol=1e-6, atol=1e-9)
    G_big = pullback_metric(counts, z0, "fisher_nb", theta=1e9)
    torch.testing.assert_close(G_big, G_fd, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="theta"):
        pullback_metric(counts, z0, "fisher_nb")


def test_nb_fisher_information_of_the_mean_is_theta_over_mu_mu_plus_theta():
    """Check the derivation: E[(d/dmu log p)^2] summed exactly over the support."""
    mu = torch.tensor(4.0, dtype=DT, requires_grad=True)
    theta = torch.tensor(2.5, dtype=DT)
    x = torch.arange(0, 3000, dtype=DT)
    logits = torch.log(mu) - torch.log(theta)  # torch NB: mean = total_count * exp(logits)
    log_p = torch.distributions.NegativeBinomial(total_count=theta, logits=logits).log_prob(x)
    score = torch.stack([torch.autograd.grad(lp, mu, retain_graph=True)[0] for lp in log_p[:200]])
    info = (log_p[:200].exp().detach() * score**2).sum()
    assert abs(info.item() - (theta / (mu * (mu + theta))).item()) < 1e-8

    # ...and the metric G of a 1-d "decoder" mu(z) = z is exactly that information
    G = pullback_metric(lambda z: z, torch.tensor([[4.0]], dtype=DT), "fisher_nb", theta=theta)
    assert abs(G.item() - info.item()) < 1e-8


def test_fisher_geodesic_length_agrees_with_metric_along_curve():
    """Geodesic under the Poisson Fisher metric: the embedding-based length equals the
    length integrated with pullback_metric(kind='fisher_poisson') along the curve."""
    net = _mlp(g=10, seed=6)

    def counts(z):
        return 30.0 * torch.softmax(net(z), dim=-1)

    z_a = torch.tensor([[-1.0, 0.5]], dtype=DT)
    z_b = torch.tensor([[1.2, -0.4]], dtype=DT)
    res = geodesic(counts, z_a, z_b, n_points=40, metric="fisher_poisson")
    c = res.curve[0]
    mid, step = 0.5 * (c[1:] + c[:-1]), c[1:] - c[:-1]
    G = pullback_metric(counts, mid, "fisher_poisson")
    riemann = torch.einsum("ni,nij,nj->n", step, G, step).sqrt().sum()
    assert abs(res.length.item() / riemann.item() - 1) < 1e-3
    # the NB embedding 2 sqrt(theta) asinh(sqrt(mu / theta)) is an isometry for the NB metric
    G_nb = pullback_metric(counts, mid, "fisher_nb", theta=2.0)
    riemann_nb = torch.einsum("ni,nij,nj->n", step, G_nb, step).sqrt().sum()
    nb_len = curve_length(counts, c, metric="fisher_nb", theta=2.0)
    assert abs(nb_len.item() / riemann_nb.item() - 1) < 1e-3
    assert nb_len.item() < 0.9 * res.length.item()  # overdispersion shrinks distances
    # a different metric gives a different geodesic length (the metric kwarg is used)
    euc = geodesic(counts, z_a, z_b, n_points=40).length
    assert abs(euc.item() - res.length.item()) > 0.1 * res.length.item()
    # and the Fisher geodesic is no longer than the straight line in that metric
    straight = curve_length(counts, _line(z_a, z_b, 40), metric="fisher_poisson")
    assert res.length.item() <= straight.item() * (1 + 1e-9)
    assert curve_energy(counts, res.curve, metric="fisher_poisson").item() == pytest.approx(
        res.energy.item(), rel=1e-9
    )


class _SquareWithoutForwardMode(torch.autograd.Function):
    """x -> x^2 with a backward pass only (no jvp): forward-mode Jacobians cannot see it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_jacobian_modes_agree_and_nothing_falls_back_silently():
    net = _mlp(g=9, seed=14)
    z = torch.randn(4, 2, dtype=DT)
    G_fwd = pullback_metric(net, z, "fisher_poisson", eps=1e-3)
    G_rev = pullback_metric(net, z, "fisher_poisson", eps=1e-3, jacobian_mode="reverse")
    torch.testing.assert_close(G_fwd, G_rev, rtol=1e-10, atol=1e-12 * G_fwd.abs().max().item())

    def backward_only(z_nd):
        return _SquareWithoutForwardMode.apply(net(z_nd))

    # forward mode cannot differentiate it: the error surfaces, no hidden second method...
    with pytest.raises(RuntimeError):
        pullback_metric(backward_only, z)
    # ...and reverse mode is the explicit way out
    J_ngd = torch.func.vmap(torch.func.jacrev(lambda z_d: net(z_d[None])[0]))(z)
    expected = torch.einsum("ngi,ng,ngj->nij", J_ngd, (2 * net(z)) ** 2, J_ngd).detach()
    G = pullback_metric(backward_only, z, jacobian_mode="reverse")
    torch.testing.assert_close(G, expected, rtol=1e-10, atol=1e-12 * expected.abs().max().item())
    with pytest.raises(ValueError, match="Jacobian mode"):
        pullback_metric(net, z, jacobian_mode="numerical")


def test_pullback_metric_of_a_pyro_module_decoder_with_an_empty_param_store():
    """PyroModule parameters register in Pyro's param store on first access, which torch.func
    transforms forbid (requires_grad_); the plain forward pass before the transform does it."""
    import pyro

    from pyro_compare.models import ContrastiveVAE

    torch.manual_seed(15)
    model = ContrastiveVAE(12, 2, 2, hidden=(8,)).double().eval()
    pyro.clear_param_store()
    z = torch.randn(3, 4, dtype=DT)
    G = pullback_metric(model, z)
    assert G.shape == (3, 4, 4) and not G.requires_grad
    pyro.clear_param_store()
    J = torch.autograd.functional.jacobian(lambda x: model.decoder_mean(x[None])[0], z[0])
    torch.testing.assert_close(G[0], J.T @ J, rtol=1e-10, atol=1e-12 * G.abs().max().item())


def test_fisher_embedding_is_an_isometry_of_the_fisher_metrics():
    net = _mlp(g=7, seed=16)

    def counts(z):
        return 40.0 * torch.softmax(net(z), dim=-1)

    z = torch.randn(5, 2, dtype=DT)
    theta_g = torch.linspace(0.5, 5.0, 7, dtype=DT)
    for kind, theta in (("fisher_poisson", None), ("fisher_nb", theta_g), ("euclidean", None)):

        def embedded(z_nd, kind=kind, theta=theta):
            return fisher_embedding(counts(z_nd), kind, theta)

        torch.testing.assert_close(
            pullback_metric(embedded, z), pullback_metric(counts, z, kind, theta=theta)
        )
    torch.testing.assert_close(fisher_embedding(counts(z)), counts(z))
    with pytest.raises(ValueError, match="theta"):
        fisher_embedding(counts(z), "fisher_nb")


# --------------------------------------------------------------------------- distances


class _Model:
    """Duck-typed model object exposing `decoder_mean`."""

    def __init__(self, fn):
        self.fn = fn

    def decoder_mean(self, z):
        return self.fn(z)


def test_distance_matrix_kinds_and_duck_typing():
    net = _mlp(seed=7)
    torch.manual_seed(8)
    z = torch.randn(5, 2, dtype=DT)
    D_e = distance_matrix(None, z, kind="euclidean")
    torch.testing.assert_close(D_e, torch.cdist(z, z))
    D_g = distance_matrix(_Model(net), z, kind="geodesic", n_points=10)
    assert D_g.shape == (5, 5)
    torch.testing.assert_close(D_g, D_g.T)
    assert torch.all(D_g.diagonal() == 0)
    i, j = torch.triu_indices(5, 5, 1)
    direct = pairwise_distances(net, z[i], z[j], n_points=10)
    torch.testing.assert_close(D_g[i, j], direct)
    # geodesics are no longer than the decoded straight lines
    straight = curve_length(net, _line(z[i], z[j], 10))
    assert torch.all(direct <= straight * (1 + 1e-9))


def _shear(c):
    return lambda z: torch.stack([z[:, 0], z[:, 1] + c * z[:, 0] ** 2], dim=1)


def test_distance_stability_geodesic_beats_euclidean_under_reparametrisation():
    """Models related by nonlinear reparametrisations h_m: decoder f o h_m^{-1}, latents h_m(z).

    Geodesic distances are invariant, Euclidean ones are not."""
    f = _mlp(g=10, seed=9)
    torch.manual_seed(10)
    z = torch.randn(12, 2, dtype=DT)
    decoders, latents = [], []
    for m, (c, scale, angle) in enumerate([(0.0, 1.0, 0.0), (0.6, 2.0, 0.7), (-0.5, 0.5, 2.0)]):
        rot = torch.tensor(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=DT
        )

        def h(x, c=c, s=scale, rot=rot):
            return s * _shear(c)(x) @ rot.T

        def h_inv(y, c=c, s=scale, rot=rot):
            return _shear(-c)((y / s) @ rot)

        torch.testing.assert_close(h_inv(h(z)), z)
        decoders.append((lambda y, h_inv=h_inv: f(h_inv(y))) if m else f)
        latents.append(h(z).numpy() if m == 1 else h(z))  # numpy input is accepted too
    rng = np.random.default_rng(0)
    pairs = np.array([rng.choice(12, size=2, replace=False) for _ in range(10)])
    out = distance_stability(decoders, latents, pairs, n_points=16, tol=1e-6)
    assert set(out.cv) == {"geodesic", "euclidean"}
    assert out.cv["geodesic"].shape == (10,) and out.distances["euclidean"].shape == (3, 10)
    assert out.mean_cv["geodesic"] < 0.01
    assert out.mean_cv["euclidean"] > 0.05
    assert np.all(out.cv["geodesic"] < out.cv["euclidean"])
    assert out.p_value is not None and out.p_value < 0.01

    # Isometries + global rescaling: the normalised Euclidean distances do not move.
    iso = [z, 3.0 * z @ torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=DT) + 1.0]
    out_iso = distance_stability([f, f], iso, pairs, kind=("euclidean",))
    assert out_iso.mean_cv["euclidean"] < 1e-12 and out_iso.p_value is None
    out_raw = distance_stability([f, f], iso, pairs, kind=("euclidean",), normalise=None)
    # without normalisation the scale counts: distances d and 3d have CV sd(1, 3)/2 = 1/sqrt(2)
    np.testing.assert_allclose(out_raw.cv["euclidean"], 1 / math.sqrt(2), rtol=1e-12)


def test_input_validation():
    with pytest.raises(ValueError, match="kind"):
        pullback_metric(lambda z: z, torch.zeros(2, 2), kind="gaussian")
    with pytest.raises(TypeError, match="decoder"):
        geodesic(3, torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="method"):
        geodesic(lambda z: z, torch.zeros(1, 2), torch.ones(1, 2), method="bezier")
    with pytest.raises(ValueError, match="pairs"):
        distance_stability([_polar, _polar], [torch.ones(3, 2)] * 2, np.array([[0, 5]]))


# --------------------------------------------------------------------------- package models


def test_latent_decoder_blocks_of_a_contrastive_vae():
    """Background / salient / full decoders of a ContrastiveVAE; their pullback metrics are
    the diagonal blocks of the full decoder's metric (J_bg = J_full[:, :d_z] at [z, t0])."""
    from pyro_compare.models import ContrastiveVAE

    torch.manual_seed(11)
    model = ContrastiveVAE(20, 3, 2, hidden=(16,)).double().eval()
    d_z, d_t = 3, 2
    z = torch.randn(4, d_z, dtype=DT)
    t = torch.randn(4, d_t, dtype=DT)
    zero_t = torch.zeros(4, d_t, dtype=DT)

    bg = latent_decoder(model)  # default: background decoder, t = 0
    assert bg.kind == "background" and bg.n_latent == d_z
    torch.testing.assert_close(bg(z), model.decoder_mean(torch.cat([z, zero_t], 1)))
    t0 = t[0]
    bg_t0 = latent_decoder(model, "background", fixed=t0, library=500.0)
    torch.testing.assert_close(
        bg_t0(z), model.decoder_mean(torch.cat([z, t0.expand(4, -1)], 1), torch.full((4,), 500.0))
    )
    z0 = z[1].numpy()  # numpy input accepted
    sal = latent_decoder(model, "salient", fixed=z0)
    assert sal.n_latent == d_t
    full_in = torch.cat([torch.as_tensor(z0).expand(4, -1), t], 1)
    torch.testing.assert_close(sal(t), model.decoder_mean(full_in))
    full = latent_decoder(model, "full")
    torch.testing.assert_close(full(torch.cat([z, t], 1)), model.decoder_mean(torch.cat([z, t], 1)))

    G_full = pullback_metric(full, torch.cat([z, zero_t], 1))
    torch.testing.assert_close(pullback_metric(bg, z), G_full[:, :d_z, :d_z])
    G_full_t = pullback_metric(full, full_in)
    torch.testing.assert_close(pullback_metric(sal, t), G_full_t[:, d_z:, d_z:])
    # the background metric really ignores nothing: it is positive definite here
    assert torch.linalg.eigvalsh(pullback_metric(bg, z)).min() > 0

    # NB Fisher geodesics on the background decoder, with the model's own theta
    theta = bg_t0.inverse_dispersion
    torch.testing.assert_close(theta, model.decoder.inverse_dispersion.detach())
    res = geodesic(bg_t0, z[:2], z[2:], n_points=12, metric="fisher_nb", theta=theta)
    assert res.converged.all()
    straight = curve_length(bg_t0, _line(z[:2], z[2:], 12), metric="fisher_nb", theta=theta)
    assert torch.all(res.length <= straight * (1 + 1e-9))
    # metric="fisher_nb": the output is the NB isometric embedding with the model's theta,
    # so its Euclidean geometry is the Fisher geometry
    emb = latent_decoder(model, "background", fixed=t0, library=500.0, metric="fisher_nb")
    torch.testing.assert_close(
        pullback_metric(emb, z), pullback_metric(bg_t0, z, "fisher_nb", theta=theta)
    )
    res_emb = geodesic(emb, z[:2], z[2:], n_points=12)
    torch.testing.assert_close(res_emb.length, res.length, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="3-d"):
        bg(t)
    with pytest.raises(ValueError, match="length 2"):
        latent_decoder(model, "background", fixed=np.zeros(3))
    with pytest.raises(ValueError, match="block"):
        latent_decoder(model, "perturbed")


class _PerturbationLike(torch.nn.Module):
    """Duck-typed perturbation model: the decoder sees [z, design] (conditional VAE)."""

    n_perturbations = 2
    n_latent = 2

    def __init__(self):
        super().__init__()
        self.decoder = _Model(_mlp(d=4, g=6, seed=12))
        self.decoder.mean = self.decoder.fn  # decoder.mean(input) like ObservationDecoder

    def decoder_input(self, z_nd, design_nk):
        return torch.cat([z_nd, design_nk.expand(*z_nd.shape[:-1], -1)], dim=-1)


def test_latent_decoder_single_block_and_perturbation_models():
    from pyro_compare.models import MixturePriorVAE

    torch.manual_seed(13)
    mix = MixturePriorVAE(15, 2, 3, hidden=(8,)).double().eval()
    z = torch.randn(5, 2, dtype=DT)
    dec = latent_decoder(mix)
    assert dec.kind == "full" and dec.n_latent == 2
    torch.testing.assert_close(dec(z), mix.decoder_mean(z))
    torch.testing.assert_close(latent_decoder(mix, library=10.0)(z), 10.0 * mix.decoder_mean(z))
    with pytest.raises(ValueError, match="background/salient"):
        latent_decoder(mix, "background")

    pert = _PerturbationLike()
    net = pert.decoder.fn
    d1 = latent_decoder(pert, design=[0.0, 1.0])
    torch.testing.assert_close(
        d1(z), net(torch.cat([z, torch.tensor([[0.0, 1.0]], dtype=DT).expand(5, -1)], 1))
    )
    d0 = latent_decoder(pert)  # no decoder_mean: the control design 0
    torch.testing.assert_close(d0(z), net(torch.cat([z, torch.zeros(5, 2, dtype=DT)], 1)))
    # different conditions, different geometry
    assert not torch.allclose(pullback_metric(d0, z), pullback_metric(d1, z))
    with pytest.raises(ValueError, match="length 2"):
        latent_decoder(pert, design=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="inverse dispersion"):
        latent_decoder(pert, metric="fisher_nb")
    with pytest.raises(TypeError, match="decoder_mean"):
        latent_decoder(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------- public API


_PUBLIC = (
    "DistanceStability",
    "GeodesicResult",
    "LatentDecoder",
    "curve_energy",
    "curve_length",
    "distance_matrix",
    "distance_stability",
    "geodesic",
    "latent_decoder",
    "pairwise_distances",
    "pullback_metric",
)


def test_public_names_importable_from_metrics_and_geometry():
    import pyro_compare.metrics as metrics
    import pyro_compare.metrics.geometry as geometry

    adapters = importlib.import_module("pyro_compare.models.latent_decoder")
    for name in _PUBLIC:
        assert name in metrics.__all__ and name in geometry.__all__, name
        assert getattr(metrics, name) is getattr(geometry, name), name
    assert geometry.LatentDecoder is adapters.LatentDecoder
    assert geometry.latent_decoder is adapters.latent_decoder
    # the adapters reuse the metric module's embedding instead of a copy of it
    assert adapters.fisher_embedding is geometry.fisher_embedding
    with pytest.raises(AttributeError):
        geometry.no_such_name  # noqa: B018
