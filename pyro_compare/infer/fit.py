"""The fit loop: minibatch SVI over per-source losses with objectives, model selection,
progress, checkpoints and a NaN guard.

(Over 500 lines because the loop, its settings resolution, checkpoint/resume and the
distributed bookkeeping must agree on one state; the all-reduce primitives live in
:mod:`.distributed`, callbacks in :mod:`.callbacks`.)
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch

from ..data.comparative import ComparativeData
from ..data.sources import sources_to
from .callbacks import ATEAgreementMonitor, Callback
from .distributed import DataParallel, all_reduce_gradients, broadcast_tensors, local_device
from .elbo import GLOBAL, SourceTerms, SourceTrace_ELBO
from .objectives import Objective, Sum

__all__ = [
    "FIT_DEFAULTS",
    "SELECT",
    "ConstraintWarning",
    "TrainingDivergedError",
    "evaluate_losses",
    "fit",
]

#: Which parameters ``fit`` keeps at the end: the best validation loss, the last epoch, or
#: the best held-out ATE agreement (perturbation models; see ``ATEAgreementMonitor``).
SELECT = ("best_validation", "last", "best_ate")

#: Settings of :func:`fit` left as ``None`` by the caller take the model's
#: ``default_fit_settings()`` value, else these.
FIT_DEFAULTS: dict[str, Any] = {
    "max_epochs": 100,
    "batch_size": 128,
    "lr": 1e-3,
    "lr_schedule": None,
    "early_stopping": True,
    "select": "best_validation",
    "num_particles": 1,
}
LR_SCHEDULES = (None, "cosine")


#: Passes through the data (different minibatch orders) averaged by the end-of-fit check of
#: each constraint on the full data (a minibatch penalty such as ``"cluster_mmd"`` is an
#: average over minibatches; one pass is noisy).
CONSTRAINT_CHECK_PASSES = 3


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good parameters were kept."""


class ConstraintWarning(UserWarning):
    """A :class:`~pyro_compare.infer.objectives.Constrained` fit ended with its penalty above
    epsilon on the full data."""


@dataclass
class _LoopState:
    """What the epochs of one fit share: the last good parameters, the best ones so far."""

    good_state: dict
    best_loss: float
    best_state: dict | None
    bad_epochs: int
    best_ate: float
    best_ate_state: dict | None


def _check_constraints(model, data, constraints, batch_size: int, device, ctx) -> list[dict]:
    """Each constraint's penalty on all cells (:func:`~.penalties.evaluate_penalty` with the
    training batch size, mean of :data:`CONSTRAINT_CHECK_PASSES` passes) against epsilon;
    rank 0's verdict on every rank."""
    from .penalties import evaluate_penalty

    checks = []
    for c in constraints:
        passes = [
            evaluate_penalty(model, data, c.penalty, None, batch_size, seed=p, device=device)
            for p in range(CONSTRAINT_CHECK_PASSES)
        ]
        value = float(np.mean(passes))
        holds = ctx.agree(value <= c.epsilon)
        checks.append(
            {
                "name": c.name or "penalty",
                "penalty": str(c.penalty),
                "epsilon": c.epsilon,
                "value": value,
                "holds": bool(holds),
            }
        )
    return checks


def _holds(checks: list[dict]) -> bool:
    return all(c["holds"] for c in checks)


@torch.no_grad()
def evaluate_losses(
    model,
    data: ComparativeData,
    split: str | None = "validation",
    batch_size: int = 512,
    elbo: SourceTrace_ELBO | None = None,
    device: torch.device | str | None = None,
    distributed: bool = False,
) -> dict[str, float]:
    """Per-source negative ELBO per cell of that source, on ``split`` (no gradients).

    ``distributed=True`` (every rank of the initialised process group must call it): each
    rank evaluates its shard of every batch and the sums are averaged over the ranks, so
    every rank returns the value of the one-process evaluation (see
    :mod:`pyro_compare.infer.distributed`).

    Returns ``{<source>: ..., "global": ..., "loss": total per cell}``.
    """
    elbo = elbo or SourceTrace_ELBO()
    ctx = DataParallel.resolve(None) if distributed else DataParallel()
    idx = data.indices(split)
    sizes = {s: len(i) for s, i in idx.items()}
    if min(sizes.values()) == 0:
        return {}
    n_total = sum(sizes.values())
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        steps = 0
        for batch in ctx.loader(data, batch_size, shuffle=False, split=split):
            weights = ctx.source_weights(batch, list(sizes))  # before sources_to
            if device is not None:
                batch = sources_to(batch, device)
            losses = elbo.source_losses(model.model, model.guide, batch)
            if ctx.active:
                losses = _weighted(losses, weights, list(sizes))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
    finally:
        model.train(was_training)
    sums = ctx.mean_dict(sums)
    # Each batch's terms are unbiased full-split estimates: average them over steps.
    out = {k: v / steps for k, v in sums.items()}
    result = {s: out[s] / sizes[s] for s in sizes if s in out}
    if GLOBAL in out:
        result[GLOBAL] = out[GLOBAL] / n_total
    result["loss"] = sum(out.values()) / n_total
    return result


def _interactive() -> bool:
    """A terminal or a Jupyter kernel: show a progress bar (else print lines)."""
    ipython = sys.modules.get("IPython")
    if ipython is not None:
        # A Jupyter kernel, not merely an imported ipykernel (e.g. by a docs build in the
        # same process): its shell is the ZMQ one.
        shell = getattr(ipython, "get_ipython", lambda: None)()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """tqdm.auto bar on terminals / Jupyter; otherwise a line every ``every`` epochs (or 30 s)
    with the per-source losses, so long fits in logs are not silent."""

    def __init__(self, enabled: bool, total: int, initial: int, every: int = 10) -> None:
        self.enabled = enabled
        self.bar = None
        self.every = every
        self.last_print = time.perf_counter()
        if enabled and _interactive():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="fit", unit="epoch", leave=False)

    def update(self, row: dict[str, Any], sources: Sequence[str]) -> None:
        if not self.enabled:
            return
        parts = {s: row.get(f"train_{s}") for s in sources}
        shown = {s: f"{v:.4g}" for s, v in parts.items() if v is not None}
        if "validation_loss" in row:
            shown["val"] = f"{row['validation_loss']:.4g}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(shown)
            return
        now = time.perf_counter()
        if row["epoch"] % self.every == 0 or now - self.last_print > 30:
            self.last_print = now
            text = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"fit: epoch {row['epoch']} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fit(
    model,
    data: ComparativeData,
    objective: Objective | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    validation: bool = True,
    early_stopping: bool | None = None,
    patience: int = 15,
    min_delta: float = 0.0,
    select: str | None = None,
    max_time: float | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    num_particles: int | None = None,
    feasibility_epochs: int = 30,
    lr_schedule: str | None = None,
    vectorize_particles: bool = True,
    clip_norm: float | None = 10.0,
    weight_decay: float = 0.0,
    elbo: SourceTrace_ELBO | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str | None = None,
    distributed: bool | None = None,
) -> pd.DataFrame:
    """Fit a comparative model by stochastic variational inference.

    Each step draws a minibatch from every source (:meth:`ComparativeData.loader`), computes
    the per-source losses and traces with :class:`SourceTrace_ELBO` (losses divided by the
    number of training cells), lets the ``objective`` combine them, takes an Adam step, then
    calls ``objective.after_step(log)`` and the callbacks.

    Parameters
    ----------
    model
        A :class:`~pyro_compare.models.base.ComparativeModel`.
    data
        Training data with its train/validation split.
    objective
        How the per-source losses and penalties are combined; ``None``: the model's
        :meth:`~pyro_compare.models.base.ComparativeModel.default_objective` (the same
        default for ``pc.infer.fit``, ``pc.tl.fit`` and the CLI).
    max_epochs, batch_size, lr, lr_schedule, early_stopping, select, num_particles
        Left as ``None``, each takes the model's ``default_fit_settings()`` value (e.g. the
        perturbation models train longer, on larger batches, and keep the last epoch), else
        :data:`FIT_DEFAULTS` (100 epochs, batch 128, Adam lr 1e-3 with no schedule, early
        stopping, best validation loss, 1 particle). The settings used are in
        ``history.attrs["settings"]``. ``lr_schedule="cosine"``: the learning rate decays
        from ``lr`` to ``lr / 10`` along a half cosine over ``max_epochs``.
    seed
        Seeds everything the fit draws (minibatch order, ELBO samples) in a forked torch
        RNG (the caller's global RNG is untouched), and a model's initial parameters at its
        first fit (:meth:`~pyro_compare.models.base.ComparativeModel.reinitialize`), so the
        same call reproduces a fit bit for bit on CPU from a fresh process.
    validation, patience, min_delta
        Validation losses are computed every epoch; with early stopping training stops
        after ``patience`` epochs without improvement of the validation loss, but never
        while the objective reports an unmet constraint (``constraint_satisfied`` below 0.5:
        the constraint failed on most of the epoch's steps).
    select
        Parameters kept at the end: ``"best_validation"`` (the epoch with the best validation
        loss among those whose constraint held, when early stopping is on), ``"last"``, or
        ``"best_ate"``: the epoch with the best held-out ATE agreement (mean Pearson r of
        predicted vs observed average treatment effects on the validation cells, computed
        every few epochs by an :class:`~pyro_compare.infer.callbacks.ATEAgreementMonitor`,
        added when absent).
    max_time
        Time budget in seconds: training stops after the epoch that exceeds it.
    feasibility_epochs
        A fit with constraints (:class:`~pyro_compare.infer.objectives.Constrained`) does not
        end while one is violated on the full data: after the last epoch (or early
        stopping), each constraint's penalty is evaluated on all cells (mean of
        :data:`CONSTRAINT_CHECK_PASSES` passes of
        :func:`~pyro_compare.infer.penalties.evaluate_penalty`); if the selected epoch
        violates it, the last epoch is checked; if that violates it too, training goes on
        (dual ascent included, lr held at its final value) for at most this many more
        epochs, stopping at the first epoch whose check holds (the multiplier keeps
        following the dual ascent: nothing is forced, so a fit is never traded for the
        constraint). A
        :class:`ConstraintWarning` reports a constraint still violated. The checks are in
        ``history.attrs["constraints"]`` (penalty, epsilon, value, holds), the epochs added
        in ``history.attrs["feasibility_epochs"]`` and the epoch kept in
        ``history.attrs["selected"]`` (``"best_validation"``, ``"last"``, ``"best_ate"`` or
        ``"feasibility"``).
    checkpoint_dir, resume
        Save a checkpoint every epoch (model, optimiser, objective, history, RNG state);
        ``resume=True`` continues from the latest one in ``checkpoint_dir``.
    progress
        A tqdm.auto progress bar on terminals and in Jupyter; elsewhere (logs) a line with
        the per-source losses every 10 epochs.
    num_particles, vectorize_particles
        ELBO particles per step, vectorised (one batched pass) by default.
    clip_norm
        Gradient norm clipping (``None``: off).
    callbacks
        :class:`~pyro_compare.infer.callbacks.Callback` objects (e.g.
        :class:`~pyro_compare.infer.callbacks.PerPerturbationLogger`).
    device
        ``"cuda"``, ``"cpu"`` or a :class:`torch.device`: the model and every minibatch are
        moved there (latents and predictions come back to the CPU as numpy). Under a
        process group ``"cuda"`` means this process's GPU, ``cuda:LOCAL_RANK``.
    distributed
        Data-parallel fit on the ranks of a :mod:`torch.distributed` process group
        (:mod:`pyro_compare.infer.distributed`): ``None`` (default) uses the process group
        when one is initialised, ``True`` also initialises it from ``torchrun``'s
        environment (gloo on CPU, nccl for a CUDA ``device``), ``False`` fits in this process
        alone. Every rank fits on a disjoint shard of each minibatch (``batch_size`` is the
        global batch, over all ranks), gradients are averaged over ranks, so the parameters
        follow the one-process fit with the same ``batch_size``; checkpoints, history and
        progress come from rank 0; every rank must call ``fit`` with the same arguments.

    Returns
    -------
    pandas.DataFrame
        One row per epoch: ``epoch``, ``train_<source>`` and ``validation_<source>`` (negative
        ELBO per cell of that source), ``train_loss`` / ``validation_loss`` (per cell), the
        objective's and callbacks' logs (averaged over steps) and ``seconds``. Also stored as
        ``model.history_``.

    Raises
    ------
    TrainingDivergedError
        A loss or gradient became NaN/inf; the parameters of the last good epoch are
        restored before raising.
    """
    given = {
        "max_epochs": max_epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "early_stopping": early_stopping,
        "select": select,
        "num_particles": num_particles,
    }
    model_defaults = model.default_fit_settings() if hasattr(model, "default_fit_settings") else {}
    settings = {
        k: v if v is not None else model_defaults.get(k, FIT_DEFAULTS[k]) for k, v in given.items()
    }
    max_epochs, batch_size, lr = settings["max_epochs"], settings["batch_size"], settings["lr"]
    early_stopping, select = settings["early_stopping"], settings["select"]
    num_particles, lr_schedule = settings["num_particles"], settings["lr_schedule"]
    if select not in SELECT:
        raise ValueError(f"unknown select={select!r}; use one of {SELECT}.")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule={lr_schedule!r}; use one of {LR_SCHEDULES}.")
    callbacks = list(callbacks)
    if select == "best_ate" and not any(isinstance(c, ATEAgreementMonitor) for c in callbacks):
        callbacks.append(ATEAgreementMonitor())
    data = model.prepare_data(data) if hasattr(model, "prepare_data") else data
    if hasattr(model, "bind_features"):
        model.bind_features(data)
    if objective is None:
        objective = model.default_objective() if hasattr(model, "default_objective") else Sum()
    if elbo is None:
        elbo = SourceTrace_ELBO(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
        )
    ctx = DataParallel.resolve(distributed, device)
    if ctx.active:
        device = local_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if getattr(model, "_fresh", False) and not resume:
            model.reinitialize(seed)
        if ctx.active and ctx.rank > 0:
            # Same initial parameters and minibatch order on every rank, but each rank's own
            # stream of ELBO noise for its cells.
            torch.manual_seed(int(np.random.SeedSequence([seed, ctx.rank]).generate_state(1)[0]))
        if device is not None:
            model.to(device)
        history = _fit_loop(
            model,
            data,
            objective,
            elbo,
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            seed=seed,
            validation=validation,
            early_stopping=early_stopping,
            patience=patience,
            min_delta=min_delta,
            select=select,
            max_time=max_time,
            feasibility_epochs=feasibility_epochs,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            clip_norm=clip_norm,
            weight_decay=weight_decay,
            callbacks=callbacks,
            device=device,
            ctx=ctx,
        )
    history.attrs["settings"] = settings
    if ctx.active:
        history.attrs["world_size"] = ctx.world_size
    model._fresh = False
    return history


def _fit_loop(
    model,
    data: ComparativeData,
    objective: Objective,
    elbo: SourceTrace_ELBO,
    *,
    max_epochs: int,
    batch_size: int,
    lr: float,
    lr_schedule: str | None,
    seed: int,
    validation: bool,
    early_stopping: bool,
    patience: int,
    min_delta: float,
    select: str,
    max_time: float | None,
    feasibility_epochs: int,
    checkpoint_dir: str | Path | None,
    resume: bool,
    progress: bool,
    clip_norm: float | None,
    weight_decay: float,
    callbacks: list[Callback],
    device,
    ctx: DataParallel,
) -> pd.DataFrame:
    params = [p for p in model.parameters() if p.requires_grad]
    objective.setup(model, params)
    all_params = params + objective.parameters()
    optimizer = torch.optim.Adam(all_params, lr=lr, weight_decay=weight_decay)
    # Rank 0's parameters everywhere (identical anyway with the same seed and a fresh model;
    # this also covers models built or loaded differently on each rank).
    broadcast_tensors([*model.state_dict().values(), *objective.parameters()])
    for cb in callbacks:
        cb.setup(model, data)
    train_sizes = {s: len(i) for s, i in data.indices("train").items()}
    n_train = sum(train_sizes.values())
    has_validation = validation and min(len(i) for i in data.indices("validation").values()) > 0

    rows: list[dict[str, Any]] = []
    start_epoch = 0
    best_loss, best_state, bad_epochs = math.inf, None, 0
    best_ate, best_ate_state = -math.inf, None
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None:
        if ctx.is_main:
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            objective.load_state_dict(state["objective"])
            for cb, cb_state in zip(callbacks, state.get("callbacks", [])):
                cb.load_state_dict(cb_state)
            rows = state["history"]
            start_epoch = state["epoch"] + 1
            best_loss, best_state, bad_epochs = state["best"]
            best_ate, best_ate_state = state.get("best_ate", (-math.inf, None))
            ranks_rng = state.get("torch_rng_ranks")
            if ranks_rng is not None and ranks_rng.shape[0] == ctx.world_size:
                torch.set_rng_state(ranks_rng[ctx.rank].clone())
            else:
                torch.set_rng_state(state["torch_rng"])
    if ckpt_path is not None and resume:
        ctx.check_same(
            start_epoch,
            f"resume: the ranks found different checkpoints in {ckpt_path.parent} (or only "
            f"some found one); with several nodes checkpoint_dir must be on a filesystem "
            f"every rank sees.",
        )

    state = _LoopState(
        good_state=copy.deepcopy(model.state_dict()),
        best_loss=best_loss,
        best_state=best_state,
        bad_epochs=bad_epochs,
        best_ate=best_ate,
        best_ate_state=best_ate_state,
    )
    bar = _Progress(progress and ctx.is_main, total=max_epochs, initial=start_epoch)
    source_names = list(train_sizes)
    started = time.perf_counter()

    def run_epoch(epoch: int) -> None:
        """One pass over the training cells, validation, callbacks, bookkeeping."""
        model.train()
        t0 = time.perf_counter()
        if lr_schedule == "cosine":
            # lr -> lr / 10 along a half cosine over max_epochs (set per epoch, so a
            # resumed fit continues the same schedule); feasibility epochs stay at lr / 10.
            progress_ = min(epoch, max_epochs) / max(max_epochs, 1)
            factor = 0.1 + 0.45 * (1 + math.cos(math.pi * progress_))
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
        sums: dict[str, float] = {}
        n_steps = 0
        loader = ctx.loader(
            data, batch_size, shuffle=True, split="train", seed=seed * 100_003 + epoch
        )
        for step, batch in enumerate(loader):
            weights = ctx.source_weights(batch, source_names)  # before sources_to
            if device is not None:
                batch = sources_to(batch, device)
            terms = elbo.source_terms(model.model, model.guide, batch).scaled(1 / n_train)
            if ctx.active:
                terms = SourceTerms(_weighted(terms.losses, weights, source_names), terms.traces)
            losses = terms.losses
            loss, log = objective(terms)
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            if not ctx.active and (bad or not torch.isfinite(loss)):
                _diverged(model, state.good_state, epoch, step, bad or ["objective"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if ctx.active:
                # Average the gradients over the ranks; a non-finite loss on any rank
                # stops every rank (the flag travels in the same all-reduce).
                local_bad = float(bool(bad) or not bool(torch.isfinite(loss)))
                if all_reduce_gradients(all_params, local_bad) > 0:
                    _diverged(model, state.good_state, epoch, step, bad or ["objective"])
            if clip_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
                if not torch.isfinite(norm):
                    _diverged(model, state.good_state, epoch, step, ["gradient"])
            optimizer.step()
            objective.after_step(log)
            log = dict(log)
            for cb in callbacks:
                log.update(cb.on_step(batch, terms, log))
            for k, v in losses.items():
                sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + float(v.detach())
            sums["train_loss"] = sums.get("train_loss", 0.0) + sum(
                float(v.detach()) for v in losses.values()
            )
            for k, v in log.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_steps += 1
        row: dict[str, Any] = {"epoch": epoch}
        sums = ctx.mean_dict(sums)  # the mean over ranks: the one-process values
        for k, v in sums.items():
            row[k] = v / n_steps
        # train_<source> in per-cell-of-that-source units, like the validation columns.
        for s, size in train_sizes.items():
            if f"train_{s}" in row:
                row[f"train_{s}"] *= n_train / size
        if has_validation:
            val = evaluate_losses(
                model, data, "validation", max(batch_size, 512), elbo, device, ctx.active
            )
            row.update({f"validation_{k}": v for k, v in val.items()})
        for cb in callbacks:
            cb.on_epoch_end(epoch, row)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        state.good_state = copy.deepcopy(model.state_dict())
        monitor = row.get("validation_loss", row["train_loss"])
        # An epoch whose constraint did not hold (on average) is neither "best" nor
        # counted towards early stopping: the fit goes on until it holds.
        feasible = all(v >= 0.5 for k, v in row.items() if k.startswith("constraint_satisfied"))
        if feasible and monitor < state.best_loss - min_delta:
            state.best_loss, state.best_state, state.bad_epochs = monitor, state.good_state, 0
        elif feasible:
            state.bad_epochs += 1
        ate = row.get("validation_ate_pearson")
        if ate is not None and math.isfinite(ate) and ate > state.best_ate:
            state.best_ate, state.best_ate_state = ate, state.good_state
        bar.update(row, list(train_sizes))
        ranks_rng = ctx.gather_rng_states() if ckpt_path is not None else None
        if ckpt_path is not None and ctx.is_main:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "objective": objective.state_dict(),
                    "callbacks": [cb.state_dict() for cb in callbacks],
                    "history": rows,
                    "epoch": epoch,
                    "best": (state.best_loss, state.best_state, state.bad_epochs),
                    "best_ate": (state.best_ate, state.best_ate_state),
                    "torch_rng": torch.get_rng_state(),
                    "torch_rng_ranks": ranks_rng,
                    "world_size": ctx.world_size,
                },
                ckpt_path,
            )

    constraints = objective.constraints()
    selected = select
    try:
        with pyro.validation_enabled(False):
            epoch = start_epoch - 1
            for epoch in range(start_epoch, max_epochs):
                run_epoch(epoch)
                if early_stopping and state.bad_epochs >= patience:
                    break
                out_of_time = max_time is not None and time.perf_counter() - started > max_time
                if ctx.agree(out_of_time):  # rank 0's clock decides for every rank
                    break
            if select == "best_validation" and early_stopping and state.best_state is not None:
                model.load_state_dict(state.best_state)
            elif select == "best_ate" and state.best_ate_state is not None:
                model.load_state_dict(state.best_ate_state)
            else:
                selected = "last"
            checks: list[dict[str, Any]] = []
            extra = 0
            if constraints:
                checks = _check_constraints(model, data, constraints, batch_size, device, ctx)
                if not _holds(checks) and selected != "last":
                    # The selected epoch violates the constraint on the full data: fall
                    # back to the last one (the dual ascent's current state).
                    model.load_state_dict(state.good_state)
                    selected = "last"
                    checks = _check_constraints(model, data, constraints, batch_size, device, ctx)
                # A fit does not end while a constraint is violated on the full data: more
                # epochs (the dual ascent goes on) until it holds or the budget is spent.
                while not _holds(checks) and extra < feasibility_epochs:
                    out_of_time = max_time is not None and time.perf_counter() - started > max_time
                    if ctx.agree(out_of_time):
                        break
                    epoch += 1
                    extra += 1
                    run_epoch(epoch)
                    selected = "feasibility"
                    checks = _check_constraints(model, data, constraints, batch_size, device, ctx)
                if not _holds(checks):
                    text = ", ".join(
                        f"{c['penalty']} = {c['value']:.4g} > epsilon {c['epsilon']:.4g}"
                        for c in checks
                        if not c["holds"]
                    )
                    warnings.warn(
                        f"the constraint does not hold on the full data after {extra} "
                        f"feasibility epochs ({text}); train longer (max_epochs, "
                        f"feasibility_epochs) or relax epsilon.",
                        ConstraintWarning,
                        stacklevel=3,
                    )
    finally:
        bar.close()
    history = pd.DataFrame(rows)
    history.attrs["best_loss"] = state.best_loss
    history.attrs["stopped_epoch"] = int(rows[-1]["epoch"]) if rows else start_epoch
    history.attrs["selected"] = selected
    if constraints:
        history.attrs["constraints"] = checks
        history.attrs["feasibility_epochs"] = extra
    model.history_ = history
    model.eval()
    return history


def _weighted(
    losses: dict[str, torch.Tensor], weights: dict[str, float], sources: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Per-source losses times this rank's weight (see :mod:`pyro_compare.infer.distributed`),
    with a zero for a source absent from this rank's shard, so every rank has the same keys
    in the same order (sources, then ``"global"``)."""
    ref = next(iter(losses.values()), None)
    out: dict[str, torch.Tensor] = {}
    for s in sources:
        v = losses.get(s)
        if v is not None:
            out[s] = v * weights[s]
        else:
            out[s] = ref.detach().new_zeros(()) if ref is not None else torch.zeros(())
    for k, v in losses.items():
        if k not in out:
            out[k] = v
    return out


def _diverged(model, good_state, epoch: int, step: int, what: list[str]) -> None:
    model.load_state_dict(good_state)
    raise TrainingDivergedError(
        f"non-finite {', '.join(what)} loss at epoch {epoch}, step {step}; the parameters of the "
        f"last good epoch were restored. Try a smaller lr, gradient clipping (clip_norm), or "
        f"check the data for extreme values."
    )
