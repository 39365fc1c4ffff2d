"""Composition-robust MMD by kernel mean matching (issue 13, session 5; experimental).

``KMMPenalty(ratio=B)``: the MMD² between the target cells' background latents and the
background cells' latents *reweighted* by ``w`` (w_i >= 0, sum w = 1, w_i <= B / n), with
``w`` chosen to minimise that MMD² (kernel mean matching, Huang et al. 2007; solved per
minibatch by projected gradient, weights detached). B = 1 is the plain MMD; a larger B lets
the target's composition differ from the background's by up to a factor B per region of
the latent (a population B times more frequent among target cells costs nothing), while
target cells outside the background cells' support are still penalised. Background latents
are constants for the penalty (anchored), as in the default's ``ClusterMMD``.
"""

from __future__ import annotations

import torch

from pyro_compare.data.sources import BACKGROUND, TARGET
from pyro_compare.infer.penalties import MEDIAN_FACTORS, _guide_normal, _sq_dists, rbf_kernel


def _project_capped_simplex(v: torch.Tensor, cap: float, iters: int = 40) -> torch.Tensor:
    """Euclidean projection of ``v`` onto {0 <= w <= cap, sum w = 1} (bisection on the
    shift)."""
    lo, hi = v.min() - cap - 1.0, v.max() + 1.0
    for _ in range(iters):
        tau = (lo + hi) / 2
        if (v - tau).clamp(0.0, cap).sum() > 1.0:
            lo = tau
        else:
            hi = tau
    return (v - (lo + hi) / 2).clamp(0.0, cap)


class KMMPenalty:
    """The reweighted MMD² of the module docstring as a penalty of one step's guide trace
    (background cells' ``z`` posterior means reweighted, density ratio <= ``ratio``; the
    weights by ``iters`` projected-gradient steps from uniform)."""

    def __init__(self, ratio: float = 4.0, iters: int = 50) -> None:
        self.ratio = float(ratio)
        self.iters = int(iters)

    def __call__(self, terms) -> torch.Tensor:
        x = _guide_normal(terms, "z", BACKGROUND)[0].detach()
        y = _guide_normal(terms, "z", TARGET)[0]
        n, m = x.shape[0], y.shape[0]
        d_xx, d_xy, d_yy = _sq_dists(x, x), _sq_dists(x, y), _sq_dists(y, y)
        with torch.no_grad():
            pooled = torch.cat([d_xx.flatten(), d_xy.flatten(), d_yy.flatten()])
            h2 = pooled.median().clamp_min(1e-12) * torch.as_tensor(MEDIAN_FACTORS).to(x)
        k_xx, k_xy, k_yy = rbf_kernel(d_xx, h2), rbf_kernel(d_xy, h2), rbf_kernel(d_yy, h2)
        with torch.no_grad():
            cap = self.ratio / n
            target_mean = k_xy.mean(1)  # K_xy 1/m
            step = 1.0 / (2.0 * k_xx.sum(1).max())  # 1 / Lipschitz bound of the gradient
            w = torch.full((n,), 1.0 / n, dtype=x.dtype)
            for _ in range(self.iters):
                grad = 2.0 * (k_xx @ w - target_mean)
                w = _project_capped_simplex(w - step * grad, cap)
        off = ~torch.eye(m, dtype=torch.bool)
        yy = k_yy[off].mean()
        ww = torch.outer(w, w)
        ww.fill_diagonal_(0.0)
        xx = (ww * k_xx).sum() / ww.sum().clamp_min(1e-30)
        xy = (w @ k_xy).mean()
        return xx + yy - 2.0 * xy

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return f"KMMPenalty(ratio={self.ratio})"
