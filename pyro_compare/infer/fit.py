"""The fit loop: minibatch SVI over per-source losses with objectives, early stopping,
checkpoints and a NaN guard."""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyro
import torch
from tqdm.auto import tqdm

from ..data.comparative import SOURCES, ComparativeData
from .elbo import GLOBAL, SourceTrace_ELBO
from .objectives import Objective, Sum

__all__ = ["TrainingDivergedError", "fit", "evaluate_losses"]


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or gradient; the last good parameters were kept."""


def _scaled_losses(
    elbo: SourceTrace_ELBO, model, batch: dict, n_total: int
) -> dict[str, torch.Tensor]:
    """Per-source losses divided by the number of cells of the split (negative ELBO per cell)."""
    raw = elbo.source_losses(model.model, model.guide, **batch)
    return {k: v / n_total for k, v in raw.items()}


@torch.no_grad()
def evaluate_losses(
    model,
    data: ComparativeData,
    split: str | None = "validation",
    batch_size: int = 512,
    elbo: SourceTrace_ELBO | None = None,
) -> dict[str, float]:
    """Per-source negative ELBO per cell of that source, on ``split`` (no gradients).

    Returns ``{"background": ..., "target": ..., "global": ..., "loss": total per cell}``.
    """
    elbo = elbo or SourceTrace_ELBO()
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
        for batch in data.loader(batch_size, shuffle=False, split=split):
            for k, v in elbo.source_losses(model.model, model.guide, **batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            steps += 1
    finally:
        model.train(was_training)
    # Each batch's terms are unbiased full-split estimates: average them over steps.
    out = {k: v / steps for k, v in sums.items()}
    result = {s: out[s] / sizes[s] for s in SOURCES if s in out}
    if GLOBAL in out:
        result[GLOBAL] = out[GLOBAL] / n_total
    result["loss"] = sum(out.values()) / n_total
    return result


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def fit(
    model,
    data: ComparativeData,
    objective: Objective | None = None,
    max_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    validation: bool = True,
    early_stopping: bool = True,
    patience: int = 15,
    min_delta: float = 0.0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    num_particles: int = 1,
    clip_norm: float | None = 10.0,
    weight_decay: float = 0.0,
    elbo: SourceTrace_ELBO | None = None,
) -> pd.DataFrame:
    """Fit a comparative model by stochastic variational inference.

    Each step draws a minibatch from both sources (:meth:`ComparativeData.loader`), computes
    the per-source losses with :class:`SourceTrace_ELBO` (divided by the number of training
    cells), lets the ``objective`` combine them (``None``: the plain negative ELBO,
    :class:`~pyro_compare.infer.objectives.Sum`), and takes an Adam step.

    Parameters
    ----------
    model
        A :class:`~pyro_compare.models.base.ComparativeModel` (any PyroModule with
        ``model``/``guide`` taking the batch keywords works).
    data
        Training data with its train/validation split.
    objective
        How the per-source losses and penalties are combined.
    max_epochs, batch_size, lr, seed
        Optimisation settings; runs with the same seed are reproducible on CPU.
    validation, early_stopping, patience, min_delta
        Validation losses are computed every epoch; with ``early_stopping`` training stops
        after ``patience`` epochs without improvement of the validation loss and the best
        parameters are restored.
    checkpoint_dir, resume
        Save a checkpoint every epoch (model, optimiser, objective, history, RNG state);
        ``resume=True`` continues from the latest one in ``checkpoint_dir``.
    progress
        tqdm progress bar with per-source losses (shown only on a terminal).
    num_particles
        ELBO particles per step.
    clip_norm
        Gradient norm clipping (``None``: off).

    Returns
    -------
    pandas.DataFrame
        One row per epoch: ``epoch``, ``train_<source>`` and ``validation_<source>`` (negative
        ELBO per cell of that source), ``train_loss`` / ``validation_loss`` (per cell), the
        objective's logs (weights, penalties, multipliers, averaged over steps) and
        ``seconds``. Also stored as ``model.history_``.

    Raises
    ------
    TrainingDivergedError
        A loss or gradient became NaN/inf; the parameters of the last good epoch are
        restored before raising.
    """
    model.check_data(data) if hasattr(model, "check_data") else None
    objective = objective or Sum()
    elbo = elbo or SourceTrace_ELBO(num_particles=num_particles)
    pyro.set_rng_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    objective.setup(model, params)
    extra = list(getattr(objective, "parameters", lambda: [])())
    optimizer = torch.optim.Adam(params + extra, lr=lr, weight_decay=weight_decay)
    n_train = sum(len(i) for i in data.indices("train").values())
    has_validation = validation and min(len(i) for i in data.indices("validation").values()) > 0

    rows: list[dict[str, Any]] = []
    start_epoch = 0
    best_loss, best_state, bad_epochs = math.inf, None, 0
    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            objective.load_state_dict(state["objective"])
            rows = state["history"]
            start_epoch = state["epoch"] + 1
            best_loss, best_state, bad_epochs = state["best"]
            torch.set_rng_state(state["torch_rng"])

    good_state = copy.deepcopy(model.state_dict())
    show = progress and _is_tty()
    bar = tqdm(range(start_epoch, max_epochs), disable=not show, desc="fit", leave=False)
    model.train()
    with pyro.validation_enabled(False):
        for epoch in bar:
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            n_steps = 0
            for step, batch in enumerate(
                data.loader(batch_size, shuffle=True, split="train", seed=seed * 100_003 + epoch)
            ):
                losses = _scaled_losses(elbo, model, batch, n_train)
                loss, log = objective(losses, model)
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                if bad or not torch.isfinite(loss):
                    _diverged(model, good_state, epoch, step, bad or ["objective"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
                    if not torch.isfinite(norm):
                        _diverged(model, good_state, epoch, step, ["gradient"])
                optimizer.step()
                after = getattr(objective, "after_step", None)
                if after is not None:
                    after()
                for k, v in losses.items():
                    sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + float(v.detach())
                sums["train_loss"] = sums.get("train_loss", 0.0) + float(
                    sum(v.detach() for v in losses.values())
                )
                for k, v in log.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n_steps += 1
            row: dict[str, Any] = {"epoch": epoch}
            for k, v in sums.items():
                row[k] = v / n_steps
            # train_<source> in per-cell-of-that-source units, like the validation columns.
            sizes = {s: len(i) for s, i in data.indices("train").items()}
            for s in SOURCES:
                if f"train_{s}" in row:
                    row[f"train_{s}"] *= n_train / sizes[s]
            if has_validation:
                val = evaluate_losses(model, data, "validation", max(batch_size, 512), elbo)
                row.update({f"validation_{k}": v for k, v in val.items()})
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            good_state = copy.deepcopy(model.state_dict())
            monitor = row.get("validation_loss", row["train_loss"])
            if monitor < best_loss - min_delta:
                best_loss, best_state, bad_epochs = monitor, good_state, 0
            else:
                bad_epochs += 1
            if show:
                bar.set_postfix(
                    {s: f"{row.get(f'train_{s}', float('nan')):.4g}" for s in SOURCES}
                    | {"val": f"{monitor:.4g}"}
                )
            if ckpt_path is not None:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "objective": objective.state_dict(),
                        "history": rows,
                        "epoch": epoch,
                        "best": (best_loss, best_state, bad_epochs),
                        "torch_rng": torch.get_rng_state(),
                    },
                    ckpt_path,
                )
            if early_stopping and bad_epochs >= patience:
                break
    bar.close()
    if early_stopping and best_state is not None:
        model.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    history.attrs["best_loss"] = best_loss
    history.attrs["stopped_epoch"] = int(rows[-1]["epoch"]) if rows else start_epoch
    model.history_ = history
    model.eval()
    return history


def _diverged(model, good_state, epoch: int, step: int, what: list[str]) -> None:
    model.load_state_dict(good_state)
    raise TrainingDivergedError(
        f"non-finite {', '.join(what)} loss at epoch {epoch}, step {step}; the parameters of the "
        f"last good epoch were restored. Try a smaller lr, gradient clipping (clip_norm), or "
        f"check the data for extreme values."
    )
