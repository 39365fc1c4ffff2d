r"""Objectives: how a step's per-source losses (and penalties) become one backward pass.

The fit loop calls an objective once per step with the step's
:class:`~pyro_compare.infer.elbo.SourceTerms`: the per-source losses from
:class:`~pyro_compare.infer.SourceTrace_ELBO`, already divided by the total number of
training cells N (so ``sum(terms.losses.values())`` is the negative ELBO per cell, and the
relative weight of the sources is that of the ELBO), and the traces they came from (which
penalties read). The objective returns the scalar to backpropagate and a dict of floats to
log (weights, penalty values, multipliers).

The hooks, all declared on :class:`Objective`:

* ``setup(model, params)``: called once before training (e.g. to remember the shared
  parameters on which gradients are compared);
* ``parameters()``: extra trainable parameters the objective owns (e.g. an adversary),
  optimised with the model's;
* ``__call__(terms) -> (loss, log)``: one step, *pure*: it reads its state but changes
  nothing, so it can be called twice (e.g. for a diagnostic) without side effects;
* ``after_step(log)``: called by the fit loop after the optimiser step with the log that
  ``__call__`` returned; state updates (e.g. the dual ascent of :class:`Constrained`) happen
  here;
* ``state_dict()`` / ``load_state_dict()``: objective state (multipliers) for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .distributed import reduce_mean
from .elbo import SourceTerms
from .penalties import Penalty, resolve_penalty

__all__ = ["Constrained", "MultiObjective", "Objective", "Sum", "min_norm_weights"]


class Objective:
    """Base class of the objectives used by :func:`pyro_compare.infer.fit` (see the module
    docstring for the hooks)."""

    def setup(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
        """Called once by ``fit`` before the first step."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters owned by the objective (optimised with the model's)."""
        return []

    def __call__(self, terms: SourceTerms) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to backpropagate and a dict of floats to log, for one step."""
        raise NotImplementedError

    def after_step(self, log: Mapping[str, float]) -> None:
        """Update the objective's state after the optimiser step (``log``: what
        ``__call__`` returned for that step)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def constraints(self) -> list[Constrained]:
        """The :class:`Constrained` objectives in this one (itself and nested ``elbo``
        objectives): ``fit`` checks each ``penalty <= epsilon`` on the full data before it
        ends (see :func:`~pyro_compare.infer.fit`)."""
        return []


class Sum(Objective):
    r"""Fixed-weight sum: :math:`\sum_s w_s \mathcal{L}_s + \beta \, P`.

    With the defaults this is the plain negative ELBO (the classical fit, the baseline).

    Parameters
    ----------
    weights
        Weight per loss key (missing keys weigh 1).
    penalty
        Optional leakage penalty: a callable ``penalty(terms) -> Tensor`` or the name of one
        in :mod:`pyro_compare.infer.penalties`.
    penalty_weight
        :math:`\beta`, the fixed penalty weight.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        penalty: str | Penalty | None = None,
        penalty_weight: float = 1.0,
    ) -> None:
        self.weights = dict(weights or {})
        self.penalty = penalty
        self.penalty_weight = float(penalty_weight)
        self._penalty_fn = None if penalty is None else resolve_penalty(penalty)

    def __call__(self, terms: SourceTerms) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(self.weights.get(k, 1.0) * v for k, v in terms.losses.items())
        log: dict[str, float] = {}
        if self._penalty_fn is not None:
            value = self._penalty_fn(terms)
            total = total + self.penalty_weight * value
            log["penalty"] = float(value.detach())
        return total, log


# --------------------------------------------------------------------------- multi-objective


def min_norm_weights(
    gram_kk: torch.Tensor, max_iter: int = 250, tol: float = 1e-10
) -> torch.Tensor:
    r"""Weights of the min-norm point of the convex hull of K gradients.

    Solves :math:`\min_{\alpha \in \Delta_K} \lVert \sum_k \alpha_k g_k \rVert^2
    = \alpha^\top M \alpha` with :math:`M_{kl} = g_k^\top g_l` (MGDA, Désidéri 2012;
    Sener & Koltun 2018). For :math:`K = 2` the exact solution is

    .. math::

        \alpha_1 = \mathrm{clip}_{[0, 1]}
            \frac{(g_2 - g_1)^\top g_2}{\lVert g_1 - g_2 \rVert^2}
          = \mathrm{clip}_{[0, 1]} \frac{M_{22} - M_{12}}{M_{11} + M_{22} - 2 M_{12}},
        \quad \alpha_2 = 1 - \alpha_1;

    for :math:`K > 2` Frank–Wolfe in its pairwise variant (Lacoste-Julien & Jaggi 2015,
    linear convergence on the simplex): from :math:`\alpha = \mathbf 1 / K`, move weight from
    the active vertex :math:`e_s`, :math:`s = \arg\max_{k: \alpha_k > 0} (M\alpha)_k`, to the
    Frank–Wolfe vertex :math:`e_t`, :math:`t = \arg\min_k (M\alpha)_k`, with the exact line
    search, until the gap :math:`(M\alpha)_s - (M\alpha)_t` is below ``tol`` (relative to
    :math:`\max_k M_{kk}`).

    If :math:`d = \sum_k \alpha_k g_k \ne 0`, :math:`-d` is a descent direction of every
    objective (:math:`g_k^\top d \ge \lVert d \rVert^2`); :math:`d = 0` certifies Pareto
    stationarity.

    Parameters
    ----------
    gram_kk
        Gram matrix of the gradients, (K, K).

    Returns
    -------
    Tensor
        :math:`\alpha`, shape (K,), non-negative, summing to 1.
    """
    m = gram_kk.detach().to(torch.float64)
    k = m.shape[0]
    if k == 1:
        return torch.ones(1, dtype=gram_kk.dtype)
    if k == 2:
        denom = m[0, 0] + m[1, 1] - 2 * m[0, 1]
        if denom <= 1e-30:
            a = torch.tensor(0.5, dtype=torch.float64)
        else:
            a = ((m[1, 1] - m[0, 1]) / denom).clamp(0.0, 1.0)
        return torch.stack([a, 1 - a]).to(gram_kk.dtype)
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)
    scale = float(m.diagonal().max().clamp_min(1e-30))
    for _ in range(max_iter):
        grad = m @ alpha  # half the gradient of alpha' M alpha
        t = int(torch.argmin(grad))
        active = torch.nonzero(alpha > 0).flatten()
        s = int(active[torch.argmax(grad[active])])
        # Frank-Wolfe gap of the pairwise direction e_t - e_s; 0 at the optimum.
        if float(grad[s] - grad[t]) <= tol * scale or s == t:
            break
        curvature = m[t, t] + m[s, s] - 2 * m[t, s]
        gamma = float(alpha[s])
        if curvature > 1e-30:
            gamma = min(gamma, float((grad[s] - grad[t]) / curvature))
        alpha[t] += gamma
        alpha[s] -= gamma
        alpha.clamp_(min=0.0)
    return alpha.to(gram_kk.dtype)


def _shared_parameters(model, params: Sequence[torch.nn.Parameter], shared) -> list:
    """The parameters on which the per-objective gradients are compared."""
    if shared is None or shared == "all":
        return list(params)
    if callable(shared):
        return [p for p in shared(model) if p.requires_grad]
    if isinstance(shared, str):
        module = getattr(model, shared, None)
        if not isinstance(module, torch.nn.Module):
            raise ValueError(
                f"shared={shared!r}: the model has no submodule of that name; use 'all', a "
                f"submodule name (e.g. 'decoder'), a list of parameter names or a callable."
            )
        return [p for p in module.parameters() if p.requires_grad]
    named = dict(model.named_parameters())
    missing = [n for n in shared if n not in named]
    if missing:
        raise ValueError(f"unknown parameter names in shared: {missing}.")
    return [named[n] for n in shared]


class MultiObjective(Objective):
    r"""Multiple-gradient descent (MGDA): per step, the min-norm convex combination of the
    per-objective gradients.

    Each step computes :math:`g_k = \nabla_{\theta_s} \mathcal{L}_k` for the objectives
    :math:`k` (keys of the loss dict, e.g. ``"background"`` and ``"target"``) with respect to
    the *shared* parameters :math:`\theta_s`, the weights
    :math:`\alpha = \arg\min_{\alpha \in \Delta} \lVert \sum_k \alpha_k g_k \rVert`
    (:func:`min_norm_weights`; detached), and returns

    .. math:: \mathcal{L} = \sum_k \alpha_k \mathcal{L}_k + \mathcal{L}_{\text{other}}

    whose gradient on :math:`\theta_s` is the common descent direction (both losses decrease
    for a small enough step), and on the other parameters (source-specific encoders) the
    :math:`\alpha`-weighted gradient.

    Parameters
    ----------
    objectives
        Keys of the loss dict treated as separate objectives.
    method
        ``"mgda"`` (min-norm weights) or ``"equal"`` (:math:`\alpha_k = 1/K`, for ablations).
    shared
        Parameters on which gradients are compared. ``"decoder"`` (default when the model has
        a ``decoder``: the network every source shares, as in MGDA-UB, one short extra
        backward per objective through the decoder only), ``"all"`` (exact MGDA on every
        parameter: K extra full backward passes), a submodule name, a list of parameter
        names or a callable ``model -> parameters``.
    normalize
        Gradient normalisation before the min-norm problem: ``None`` (plain MGDA), ``"l2"``
        (unit gradients: weights depend on directions only) or ``"loss"`` (divide
        :math:`g_k` by :math:`\mathcal{L}_k`).
    global_terms
        Loss keys not in ``objectives`` (e.g. ``"global"``, priors of global latents). Choice
        made here: ``"separate"`` (default) adds them with weight 1 and leaves them out of
        the min-norm problem; ``"add"`` adds their gradient to every :math:`g_k` before
        solving. Since :math:`\sum_k \alpha_k = 1` the returned loss is the same either way
        (:math:`\sum_k \alpha_k (\mathcal{L}_k + \mathcal{L}_g) = \sum_k \alpha_k
        \mathcal{L}_k + \mathcal{L}_g`); only the weights differ.
    scale
        Multiply the combined loss by this (default K, so the loss has the magnitude of the
        sum and the learning rate / clipping behave as with :class:`Sum`).

    Notes
    -----
    Logs ``weight_<objective>`` (the :math:`\alpha_k`), ``mgda_direction_norm``
    (:math:`\lVert \sum_k \alpha_k g_k \rVert`, 0 at a Pareto-stationary point) and, for two
    objectives, ``gradient_cosine``.
    """

    def __init__(
        self,
        objectives: Sequence[str] = ("background", "target"),
        method: str = "mgda",
        shared: str | Sequence[str] | Callable | None = "decoder",
        normalize: str | None = None,
        global_terms: str = "separate",
        scale: float | None = None,
    ) -> None:
        if method not in ("mgda", "equal"):
            raise ValueError(f"unknown method {method!r}; use 'mgda' or 'equal'.")
        if normalize not in (None, "l2", "loss"):
            raise ValueError(f"unknown normalize {normalize!r}; use None, 'l2' or 'loss'.")
        if global_terms not in ("separate", "add"):
            raise ValueError(f"unknown global_terms {global_terms!r}; use 'separate' or 'add'.")
        if len(objectives) < 1 or len(set(objectives)) != len(objectives):
            raise ValueError("objectives must be distinct loss keys.")
        self.objectives = tuple(objectives)
        self.method = method
        self.shared = shared
        self.normalize = normalize
        self.global_terms = global_terms
        self.scale = float(len(self.objectives) if scale is None else scale)
        self._shared_params: list[torch.nn.Parameter] | None = None

    def setup(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
        shared = self.shared
        if shared == "decoder" and not isinstance(getattr(model, "decoder", None), torch.nn.Module):
            shared = "all"
        self._shared_params = _shared_parameters(model, params, shared)
        if not self._shared_params:
            raise ValueError("MultiObjective found no shared parameters to compare gradients on.")

    def _flat_grad(self, loss: torch.Tensor, params: list) -> torch.Tensor:
        if not loss.requires_grad:
            return params[0].new_zeros(sum(p.numel() for p in params))
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        return torch.cat([g.reshape(-1) for g in flat])

    def weights(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The min-norm weights :math:`\\alpha` (one per objective) for these losses."""
        k = len(self.objectives)
        if self.method == "equal":
            return torch.full((k,), 1.0 / k)
        if self._shared_params is None:
            raise RuntimeError("MultiObjective: call setup(model, params) first.")
        params = self._shared_params
        g = [self._flat_grad(losses[o], params) for o in self.objectives]
        if self.global_terms == "add":
            extra = [v for key, v in losses.items() if key not in self.objectives]
            if extra:
                g_extra = self._flat_grad(sum(extra), params)
                g = [gk + g_extra for gk in g]
        # Data-parallel fits: the mean over ranks of the per-source gradients (and losses) is
        # that of the union batch; every rank then solves the same min-norm problem
        # (identity without a process group; see pyro_compare.infer.distributed).
        values = torch.stack([losses[o].detach().to(g[0]) for o in self.objectives])
        reduced = reduce_mean(torch.cat([torch.stack(g).reshape(-1), values]))
        g = list(reduced[:-k].reshape(k, -1))
        values = reduced[-k:]
        if self.normalize == "l2":
            g = [gk / gk.norm().clamp_min(1e-12) for gk in g]
        elif self.normalize == "loss":
            scales = [v.abs().clamp_min(1e-12) for v in values]
            g = [gk / sk for gk, sk in zip(g, scales)]
        g_kp = torch.stack(g)
        gram = g_kp @ g_kp.T
        alpha = min_norm_weights(gram)
        self._last_gram = gram.detach()
        return alpha

    def __call__(self, terms: SourceTerms) -> tuple[torch.Tensor, dict[str, float]]:
        losses = terms.losses
        missing = [o for o in self.objectives if o not in losses]
        if missing:
            raise KeyError(f"MultiObjective: losses {missing} absent (have {sorted(losses)}).")
        alpha = self.weights(losses)
        total = sum(float(a) * losses[o] for a, o in zip(alpha, self.objectives)) * self.scale
        others = [v for key, v in losses.items() if key not in self.objectives]
        if others:
            total = total + sum(others)
        log = {f"weight_{o}": float(a) for a, o in zip(alpha, self.objectives)}
        if self.method == "mgda":
            gram = self._last_gram.to(torch.float64)
            a64 = alpha.to(torch.float64)
            log["mgda_direction_norm"] = float((a64 @ gram @ a64).clamp_min(0).sqrt())
            if len(self.objectives) == 2:
                denom = (gram[0, 0] * gram[1, 1]).sqrt().clamp_min(1e-30)
                log["gradient_cosine"] = float(gram[0, 1] / denom)
        return total, log


# --------------------------------------------------------------------------- constrained


class Constrained(Objective):
    r"""Constrained fit: minimise the ELBO losses subject to ``penalty <= epsilon``.

    The Lagrangian of :math:`\min_\theta \mathcal{L}(\theta)` s.t. :math:`P(\theta) \le
    \epsilon` is

    .. math:: \mathcal{L}(\theta) + \lambda \, (P(\theta) - \epsilon), \qquad \lambda \ge 0.

    Each step takes a gradient step on :math:`\theta` at fixed :math:`\lambda` (this objective
    returns the Lagrangian; :math:`\mathcal{L}` is the loss of ``elbo``, by default the plain
    sum of the per-source losses, or e.g. a :class:`MultiObjective`), then a projected dual
    ascent step on the multiplier with the constraint value :math:`c` of the step:

    * ``update="additive"``: :math:`\lambda \leftarrow \max(0, \lambda + \eta\,(c - \epsilon))`;
    * ``update="multiplicative"``: :math:`\lambda \leftarrow \lambda \exp\big(\eta\,
      \mathrm{clip}_{[-1, 1]}((c - \epsilon) / \epsilon)\big)` (exponentiated-gradient dual
      ascent, GECO-like, Rezende & Viola 2018): scale-free, :math:`\lambda` moves by at most a
      factor :math:`e^{\eta}` per step, reaches any scale geometrically, stays > 0 (floored
      at ``lambda_min``). Needs ``lambda_init > 0``.

    With ``moving_average=rho`` the dual step uses the exponential moving average
    :math:`\bar c \leftarrow \rho \bar c + (1 - \rho) c` instead of the noisy minibatch value
    (GECO). At a fixed point :math:`\lambda^\star (P - \epsilon) = 0`, :math:`P \le \epsilon`:
    the KKT conditions, with :math:`\lambda^\star` the price of the constraint in loss units
    per penalty unit. Epsilon is in the penalty's own units (e.g. squared latent units per
    cell for ``"wasserstein_to_zero"``, kernel units for ``"mmd"``), so it can be chosen by
    meaning; the losses are per cell (see :func:`~pyro_compare.infer.fit`).

    Parameters
    ----------
    penalty
        Name in :data:`~pyro_compare.infer.penalties.PENALTIES` (``"wasserstein_to_zero"``,
        ``"mmd"``, ``"mmd_salient"``, ``"hsic"``, ``"cluster_mmd"``: the condition within
        clusters of the background latent, blind to composition differences) or a callable
        ``terms -> Tensor``. For noisy minibatch penalties such as ``"mmd"`` and
        ``"cluster_mmd"``, whose epsilon is small in kernel units, the defaults below
        (additive steps of size ``dual_lr * (c - epsilon)``) move the multiplier very
        slowly; ``update="multiplicative", lambda_init=1.0, dual_lr=0.05,
        moving_average=0.9`` is scale-free (issue 13).
    epsilon
        Tolerance of the constraint.
    elbo
        Objective for the ELBO part (default :class:`Sum`); any :class:`Objective`, including
        another :class:`Constrained` (several constraints; give them distinct ``name``).
    dual_lr
        :math:`\eta`.
    lambda_init, lambda_min, lambda_max
        Initial multiplier and bounds (``lambda_max=None``: unbounded).
    moving_average
        :math:`\rho \in [0, 1)` of the constraint's moving average, or ``None`` (raw value).
    update
        ``"additive"`` or ``"multiplicative"``.
    warmup_steps
        Steps during which :math:`\lambda` is not updated (the penalty still enters with
        ``lambda_init``).
    slack
        :math:`s \in [0, 1)`: the dual step aims at :math:`(1 - s)\,\epsilon` instead of
        :math:`\epsilon` (replace :math:`\epsilon` by it in the updates above). Stochastic
        dual ascent only holds the constraint *on average*, the end-of-training value
        fluctuating around the target; the default 10 % margin makes ``penalty <= epsilon``
        hold at the end of training, not half of the time. ``slack=0`` gives the exact
        Lagrangian fixed point (deterministic problems). ``constraint_satisfied`` is always
        checked against :math:`\epsilon` itself.
    name
        Suffix of the log keys (``penalty_<name>``...); default: plain ``penalty``,
        ``lambda``, ``constraint_satisfied``, ``constraint_value``.
    leakage
        Alias of ``penalty`` (the spelling of DESIGN.md); overrides it when given.

    Notes
    -----
    Logs ``penalty`` (minibatch value), ``constraint_value`` (the value used for the dual
    step: moving average or raw), ``lambda`` (multiplier used in this step) and
    ``constraint_satisfied`` (1 if the constraint value <= epsilon, else 0; its epoch mean is
    the fraction of satisfied steps), plus the ``elbo`` objective's logs (an entry of the
    same name, e.g. the ``penalty`` of ``elbo=Sum(penalty=...)``, as ``elbo_<name>``).
    """

    def __init__(
        self,
        penalty: str | Penalty = "wasserstein_to_zero",
        epsilon: float = 0.01,
        elbo: Objective | None = None,
        dual_lr: float = 1.0,
        lambda_init: float = 0.0,
        lambda_min: float = 0.0,
        lambda_max: float | None = None,
        moving_average: float | None = None,
        update: str = "additive",
        warmup_steps: int = 0,
        slack: float = 0.1,
        name: str | None = None,
        leakage: str | Penalty | None = None,
    ) -> None:
        if leakage is not None:
            # DESIGN.md spells the argument ``leakage=``; both names mean the same penalty.
            penalty = leakage
        if not 0.0 <= slack < 1.0:
            raise ValueError("slack must be in [0, 1).")
        if epsilon < 0:
            raise ValueError("epsilon must be >= 0.")
        if update not in ("additive", "multiplicative"):
            raise ValueError(f"unknown update {update!r}; use 'additive' or 'multiplicative'.")
        if update == "multiplicative" and (epsilon <= 0 or lambda_init <= 0):
            raise ValueError("update='multiplicative' needs epsilon > 0 and lambda_init > 0.")
        if moving_average is not None and not 0.0 <= moving_average < 1.0:
            raise ValueError("moving_average must be in [0, 1).")
        if lambda_min < 0 or lambda_init < 0:
            raise ValueError("the multiplier must stay >= 0 (lambda_init, lambda_min).")
        self.penalty = penalty
        self.epsilon = float(epsilon)
        self.elbo = elbo if elbo is not None else Sum()
        self.dual_lr = float(dual_lr)
        self.lambda_min = float(lambda_min)
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        self.moving_average = moving_average
        self.update = update
        self.warmup_steps = int(warmup_steps)
        self.slack = float(slack)
        self.name = name
        self.lambda_ = max(float(lambda_init), self.lambda_min)
        self._penalty_fn: Penalty = resolve_penalty(penalty)
        self.constraint_average: float | None = None
        self.steps = 0

    def _key(self, key: str) -> str:
        return key if self.name is None else f"{key}_{self.name}"

    def setup(self, model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> None:
        self.elbo.setup(model, params)

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.elbo.parameters()

    def constraints(self) -> list[Constrained]:
        return [self, *self.elbo.constraints()]

    def __call__(self, terms: SourceTerms) -> tuple[torch.Tensor, dict[str, float]]:
        elbo_loss, log = self.elbo(terms)
        value = self._penalty_fn(terms)
        lam = self.lambda_
        total = elbo_loss + lam * (value - self.epsilon)
        # Data-parallel fits: the penalty averaged over ranks, so the dual step (and the
        # multiplier) is identical on every rank (identity without a process group).
        c = float(reduce_mean(value))
        if self.moving_average is None or self.constraint_average is None:
            c_used = c
        else:
            rho = self.moving_average
            c_used = rho * self.constraint_average + (1.0 - rho) * c
        log = dict(log)
        for key in ("penalty", "constraint_value", "lambda", "constraint_satisfied"):
            # an inner objective's entry of the same name (e.g. the fixed-weight penalty of
            # ``elbo=Sum(penalty=...)``) is kept as ``elbo_<key>`` instead of overwritten
            if self._key(key) in log:
                log[f"elbo_{self._key(key)}"] = log.pop(self._key(key))
        log[self._key("penalty")] = c
        log[self._key("constraint_value")] = c_used
        log[self._key("lambda")] = lam
        log[self._key("constraint_satisfied")] = float(c_used <= self.epsilon)
        return total, log

    def after_step(self, log: Mapping[str, float]) -> None:
        """Dual ascent on the multiplier with the step's constraint value (and the moving
        average's update), then the ``elbo`` objective's own ``after_step``."""
        self.elbo.after_step(log)
        c_used = log[self._key("constraint_value")]
        self.constraint_average = c_used
        self._dual_step(c_used)

    @property
    def target(self) -> float:
        """The value the dual step drives the constraint to: :math:`(1 - s)\\epsilon`."""
        return (1.0 - self.slack) * self.epsilon

    def _dual_step(self, c: float) -> None:
        """Projected dual ascent on the multiplier (after the primal loss was built)."""
        self.steps += 1
        if self.steps <= self.warmup_steps or not math.isfinite(c):
            return
        target = self.target
        if self.update == "additive":
            lam = self.lambda_ + self.dual_lr * (c - target)
        else:
            relative = max(min((c - target) / target, 1.0), -1.0)
            lam = self.lambda_ * math.exp(self.dual_lr * relative)
        lam = max(lam, self.lambda_min)
        if self.lambda_max is not None:
            lam = min(lam, self.lambda_max)
        self.lambda_ = lam

    def state_dict(self) -> dict[str, Any]:
        return {
            "lambda": self.lambda_,
            "constraint_average": self.constraint_average,
            "steps": self.steps,
            "elbo": self.elbo.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lambda_ = float(state["lambda"])
        self.constraint_average = state.get("constraint_average")
        self.steps = int(state.get("steps", 0))
        self.elbo.load_state_dict(state.get("elbo", {}))
