r"""Batched optimisers with one independent state per problem (used by :func:`geodesic`).

``P`` independent problems (pairs of endpoints) with parameters stored as the rows of a
``(P, D)`` tensor are minimised together: each iteration evaluates the objective and its
gradient on the rows of the still active problems, ``idx``. ``torch.optim`` would
couple the problems (a shared step size, a shared line search on the summed loss); here
every row keeps its own state, so a problem's trajectory depends only on its own
objective, and a batch gives the same iterates as solving one problem at a time.

Protocol (what :func:`~pyro_compare.metrics.geometry.geodesics.geodesic` calls):

* ``trial[idx]``: the next parameters to evaluate;
* ``acceptable(idx, e)``: whether the trial energies ``e`` are accepted (never an
  increase of a problem's accepted energy ``e_acc``);
* ``accept(idx, w, e, g)`` / ``reject(idx)``: update the state of the accepted /
  rejected rows and set their next trial;
* ``exhausted(idx)``: the step has shrunk so far that the problem should stop;
* ``w_acc``, ``e_acc``: the accepted parameters and energies.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["BatchedAdam", "BatchedLBFGS"]


class BatchedAdam:
    r"""Adam with one independent state per problem (rows of ``(P, D)`` tensors).

    With gradient :math:`g`, moments :math:`m \leftarrow \beta_1 m + (1-\beta_1) g`,
    :math:`v \leftarrow \beta_2 v + (1-\beta_2) g^2` and their bias corrections
    :math:`\hat m, \hat v`, the step is

    .. math::

        \Delta = \eta_p\, \hat m / \big(\sqrt{\hat v} + \epsilon\, \mathrm{rms}(\hat v) \big),

    where :math:`\eta_p` is the problem's step size and :math:`\mathrm{rms}(\hat v)` the
    root of the mean of :math:`\hat v` over the problem's coordinates: epsilon is
    relative to the problem's gradient scale, so coordinates whose gradient is
    round-off (by symmetry, say) are not blown up to full steps.

    A trial that raises the problem's energy is rejected; the step towards it is
    halved (for good: :math:`\eta_p` is halved too) and retried, so the accepted
    energy never increases. A problem is exhausted once :math:`\eta_p` has been
    halved 20 times.
    """

    beta1, beta2, eps = 0.9, 0.999, 1e-3

    def __init__(self, P: int, D: int, lr_p: Tensor, dtype: torch.dtype, device: Any) -> None:
        z_pD = torch.zeros(P, D, dtype=dtype, device=device)
        self.trial, self.w_acc, self.step = z_pD, z_pD.clone(), z_pD.clone()
        self.m1, self.m2 = z_pD.clone(), z_pD.clone()
        self.e_acc = torch.full((P,), math.inf, dtype=dtype, device=device)
        self.t = torch.zeros(P, dtype=dtype, device=device)
        self.lr_p = lr_p.clone()
        self.lr_min = lr_p * 2.0**-20
        self.tiny = torch.finfo(dtype).tiny

    def acceptable(self, idx: Tensor, e: Tensor) -> Tensor:
        return e <= self.e_acc[idx]

    def accept(self, idx: Tensor, w: Tensor, e: Tensor, g: Tensor) -> None:
        self.w_acc[idx], self.e_acc[idx] = w, e
        self.m1[idx] = self.beta1 * self.m1[idx] + (1 - self.beta1) * g
        self.m2[idx] = self.beta2 * self.m2[idx] + (1 - self.beta2) * g * g
        self.t[idx] += 1
        t = self.t[idx][:, None]
        m_hat = self.m1[idx] / (1 - self.beta1**t)
        v_hat = self.m2[idx] / (1 - self.beta2**t)
        rms = v_hat.mean(1, keepdim=True).sqrt()
        denom = v_hat.sqrt() + self.eps * rms + self.tiny
        self.step[idx] = self.lr_p[idx][:, None] * m_hat / denom
        self.trial[idx] = w - self.step[idx]

    def reject(self, idx: Tensor) -> None:
        self.step[idx] = 0.5 * self.step[idx]
        self.lr_p[idx] = 0.5 * self.lr_p[idx]
        self.trial[idx] = self.w_acc[idx] - self.step[idx]

    def exhausted(self, idx: Tensor) -> Tensor:
        return self.lr_p[idx] < self.lr_min[idx]


class BatchedLBFGS:
    r"""L-BFGS with one independent state per problem and a backtracking Armijo search.

    The two-loop recursion runs on all active problems at once (per-problem dot
    products); each problem keeps its own history of the last ``m`` steps
    :math:`s = w_{k+1} - w_k`, :math:`y = g_{k+1} - g_k` (a pair is stored only if
    the curvature :math:`s^\top y` is positive). Trials start at the full
    quasi-Newton step :math:`p` and are halved, :math:`\alpha \in \{1, 1/2, \dots\}`,
    until the energy satisfies the Armijo condition
    :math:`E(w + \alpha p) \le E(w) + c_1 \alpha\, g^\top p` (so the accepted energy
    never increases). Without history, or when round-off gives no descent
    direction, the direction is steepest descent scaled so that the largest
    coordinate moves by the problem's ``lr_p``. A problem is exhausted once
    :math:`\alpha < 2^{-20}`.
    """

    m, c1 = 10, 1e-4

    def __init__(self, P: int, D: int, lr_p: Tensor, dtype: torch.dtype, device: Any) -> None:
        z_pD = torch.zeros(P, D, dtype=dtype, device=device)
        self.trial, self.w_acc = z_pD, z_pD.clone()
        self.g_acc, self.dirn = z_pD.clone(), z_pD.clone()
        self.e_acc = torch.full((P,), math.inf, dtype=dtype, device=device)
        self.alpha = torch.ones(P, dtype=dtype, device=device)
        self.S = torch.zeros(P, self.m, D, dtype=dtype, device=device)
        self.Y = torch.zeros_like(self.S)
        self.rho = torch.zeros(P, self.m, dtype=dtype, device=device)  # 0 = empty slot
        self.lr_p = lr_p
        self.tiny = torch.finfo(dtype).tiny

    def acceptable(self, idx: Tensor, e: Tensor) -> Tensor:
        slope = (self.g_acc[idx] * self.dirn[idx]).sum(1)  # g^T p <= 0
        return e <= self.e_acc[idx] + self.c1 * self.alpha[idx] * slope

    def _direction(self, idx: Tensor, g: Tensor) -> Tensor:
        S, Y, rho = self.S[idx], self.Y[idx], self.rho[idx]
        q = g.clone()
        a = torch.zeros_like(rho)
        for i in range(self.m):  # newest first
            a[:, i] = rho[:, i] * (S[:, i] * q).sum(1)
            q = q - a[:, i, None] * Y[:, i]
        has_hist = rho[:, 0] > 0
        sy = (S[:, 0] * Y[:, 0]).sum(1)
        yy = (Y[:, 0] * Y[:, 0]).sum(1).clamp_min(self.tiny)
        gmax = g.abs().amax(1).clamp_min(self.tiny)
        gamma = torch.where(has_hist, sy / yy, self.lr_p[idx] / gmax)
        r = gamma[:, None] * q
        for i in reversed(range(self.m)):  # oldest first
            b = rho[:, i] * (Y[:, i] * r).sum(1)
            r = r + (a[:, i] - b)[:, None] * S[:, i]
        p = -r
        # Not a descent direction (round-off, kinks of a ReLU decoder): forget the
        # history and fall back to scaled steepest descent.
        bad = (p * g).sum(1) >= 0
        if bad.any():
            self.rho[idx[bad]] = 0
            p[bad] = -(self.lr_p[idx[bad]] / gmax[bad])[:, None] * g[bad]
        return p

    def accept(self, idx: Tensor, w: Tensor, e: Tensor, g: Tensor) -> None:
        had = torch.isfinite(self.e_acc[idx])
        s = w - self.w_acc[idx]
        y = g - self.g_acc[idx]
        sy = (s * y).sum(1)
        keep = had & (sy > 1e-10 * s.norm(dim=1) * y.norm(dim=1)) & (sy > 0)
        if keep.any():
            k = idx[keep]
            self.S[k] = torch.cat([s[keep, None], self.S[k, :-1]], 1)
            self.Y[k] = torch.cat([y[keep, None], self.Y[k, :-1]], 1)
            self.rho[k] = torch.cat([(1 / sy[keep])[:, None], self.rho[k, :-1]], 1)
        self.w_acc[idx], self.e_acc[idx], self.g_acc[idx] = w, e, g
        self.dirn[idx] = self._direction(idx, g)
        self.alpha[idx] = 1.0
        self.trial[idx] = w + self.dirn[idx]

    def reject(self, idx: Tensor) -> None:
        self.alpha[idx] = 0.5 * self.alpha[idx]
        self.trial[idx] = self.w_acc[idx] + self.alpha[idx, None] * self.dirn[idx]

    def exhausted(self, idx: Tensor) -> Tensor:
        return self.alpha[idx] < 2.0**-20
