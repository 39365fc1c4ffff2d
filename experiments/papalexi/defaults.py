"""Papalexi et al. 2021: does a perturbation model fitted with pure defaults learn every knock-out?

Issue 14's acceptance check. For each seed: load Papalexi (``unassigned`` dropped, control =
``non-targeting``), hold out 20 % of the cells of every perturbation label (seeded,
stratified ``split_by_cell``; the held-out cells are the data's ``"validation"`` split and
never enter a training step), build ``pc.models.<Model>(data.n_features,
data.n_perturbations)`` and fit it with ``pc.infer.fit(model, data, seed=s)`` and nothing
else. Then, on the held-out cells:

* observed ATE = ``observed_average_treatment_effect(data, kos, split="validation")``
  (held-out knock-out cells minus held-out non-targeting cells, log(1e4 x / lib + 1)),
* predicted ATE = ``average_treatment_effect(model, data, kos)`` with its defaults
  (library sizes matched to each knock-out's training cells; the JSON's
  ``control_library`` repeats the scores with ``library="control"``, and
  ``empirical_train_ate`` scores the ATE observed on the training cells as the prediction),
* Pearson r per knock-out over all 299 genes; "strong six" = STAT1, JAK2, IFNGR1, IFNGR2,
  SMAD4, IRF1; mean r over all 25 knock-outs; mean r over each knock-out's top-20 genes
  (ranked by the ATE observed on the *training* cells);
* optionally the held-out IWELBO per cell (``--iwelbo-particles``, 0 = skip).

``average_treatment_effect``'s defaults abduct the basal states of *all* control cells
(training and held-out) and decode them with and without each knock-out; no held-out
knock-out cell enters the prediction.

Prints one JSON document (per seed and mean ± sd over seeds). ``--n-latent``, ``--hidden``,
``--epochs``, ``--lr``, ``--particles``, ``--guide`` are for exploration only: when given,
the run is marked ``"pure_defaults": false`` and the overrides are listed. ``--trace-every``
only logs the strong-six r during the fit (own RNG: the fit is unchanged).

Usage::

    python experiments/papalexi/defaults.py --seeds 0 1 2 [--model SAMSVAE] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pyro_compare as pc
from pyro_compare.metrics import perturbation as pm

STRONG_SIX = ["STAT1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "IRF1"]
MODELS = ("SAMSVAE", "SparseShiftVAE", "AdditiveShiftVAE", "ConditionalVAE")


def load() -> pc.data.ComparativeData:
    return pc.data.papalexi2021()  # located by pc.data.dataset_path


class _Trace(pc.infer.Callback):
    """Exploration only: strong-six mean r every ``every`` epochs (2 posterior predictive
    draws of the held-out controls, own forked RNG, so the fit itself is unchanged)."""

    def __init__(self, every: int, observed) -> None:
        self.every, self.observed, self.trace = every, observed, {}

    def setup(self, model, data) -> None:
        self.model, self.data = model, data

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        if (epoch + 1) % self.every:
            return
        was = self.model.training
        with torch.random.fork_rng(devices=[]):
            pred = pm.average_treatment_effect(
                self.model, self.data, STRONG_SIX, n_samples=2, split="validation"
            )
        agreement = pm.ate_agreement(pred, self.observed.loc[STRONG_SIX])
        self.model.train(was)
        self.trace[epoch + 1] = round(float(agreement["pearson_all"].mean()), 4)
        print(f"trace epoch {epoch + 1}: strong-six r {self.trace[epoch + 1]}", file=sys.stderr)


def scores(agreement) -> dict:
    """Strong-six mean r, its per-knock-out values and the mean r over all knock-outs of an
    ``ate_agreement`` table (Pearson r over all genes)."""
    r = agreement["pearson_all"]
    return {
        "strong_six_mean_r": float(r.loc[STRONG_SIX].mean()),
        "strong_six_r": {k: round(float(r.loc[k]), 4) for k in STRONG_SIX},
        "mean_r_all": float(r.mean()),
    }


def run_seed(data, args, seed: int) -> dict:
    train_mask = pc.data.split_by_cell(data, validation_fraction=0.2, seed=seed, stratify=True)
    data.set_split(train_mask)
    kos = list(data.perturbation_names)
    observed = pm.observed_average_treatment_effect(data, kos, split="validation")
    de_train = pm.observed_average_treatment_effect(data, kos, split="train")

    model_kwargs = {}
    if args.n_latent is not None:
        model_kwargs["n_latent"] = args.n_latent
    if args.hidden is not None:
        model_kwargs["hidden"] = tuple(args.hidden)
    if args.guide is not None:
        model_kwargs["guide"] = args.guide
    fit_kwargs = {}
    if args.epochs is not None:
        fit_kwargs["max_epochs"] = args.epochs
    if args.lr is not None:
        fit_kwargs["lr"] = args.lr
    if args.particles is not None:
        fit_kwargs["num_particles"] = args.particles
    if args.batch_size is not None:
        fit_kwargs["batch_size"] = args.batch_size
    if args.select is not None:
        fit_kwargs["select"] = args.select
        fit_kwargs["early_stopping"] = args.select == "best_validation"
    if args.lr_schedule is not None:
        fit_kwargs["lr_schedule"] = None if args.lr_schedule == "none" else args.lr_schedule
    for item in args.model_arg or []:
        key, value = item.split("=", 1)
        model_kwargs[key] = json.loads(value)

    callbacks = [_Trace(args.trace_every, observed)] if args.trace_every else []
    torch.manual_seed(seed)
    model = getattr(pc.models, args.model)(data.n_features, data.n_perturbations, **model_kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.device is not None:
        fit_kwargs["device"] = args.device
    history = pc.infer.fit(
        model, data, seed=seed, progress=args.progress, callbacks=callbacks, **fit_kwargs
    )
    fit_seconds = time.perf_counter() - t0
    fit_cpu_seconds = time.process_time() - c0
    model.cpu()  # evaluation on the CPU whatever the training device

    if args.save_model is not None:
        model.save(Path(str(args.save_model).format(seed=seed)))
    predicted = pm.average_treatment_effect(model, data, kos)
    agreement = pm.ate_agreement(predicted, observed, top_n=20, de_scores=de_train)
    out = {
        "seed": seed,
        **scores(agreement),
        "r_all_per_knockout": agreement["pearson_all"].round(3).to_dict(),
        "mean_r_top20": float(agreement["pearson_top"].mean()),
        "fit_seconds": round(fit_seconds, 1),
        "seconds_per_epoch": round(fit_seconds / len(history), 3),
        "fit_cpu_seconds": round(fit_cpu_seconds, 1),
        "epochs": len(history),
        "settings": {k: v for k, v in history.attrs.get("settings", {}).items()},
        "model_args": {"n_latent": model.n_latent, "guide": getattr(model, "guide_type", None)},
    }
    if callbacks:
        out["trace_strong_six_r"] = callbacks[0].trace
    if "validation_loss" in history:
        out["last_validation_loss"] = float(history["validation_loss"].iloc[-1])
        # the epoch select="best_validation" would keep (1-based, as the trace's epochs)
        out["best_validation_epoch"] = int(history["validation_loss"].to_numpy().argmin()) + 1
        out["best_validation_loss"] = float(history["validation_loss"].min())
    # The same model's ATE decoded at each control cell's own library size (the estimator's
    # library="control"), for comparison with the default library="matched".
    at_control = pm.ate_agreement(
        pm.average_treatment_effect(model, data, kos, library="control"),
        observed,
        top_n=20,
        de_scores=de_train,
    )
    out["control_library"] = scores(at_control)
    # The empirical baseline: the ATE observed on the training cells (4x the held-out cells of
    # each label) as the prediction of the held-out ATE, scored the same way.
    empirical = pm.ate_agreement(de_train, observed, top_n=20, de_scores=de_train)
    out["empirical_train_ate"] = scores(empirical)
    if args.iwelbo_particles > 0:
        t1 = time.perf_counter()
        out["heldout_iwelbo"] = pm.iwelbo(
            model.model, model.guide, data, num_particles=args.iwelbo_particles
        )
        out["iwelbo_seconds"] = round(time.perf_counter() - t1, 1)
    return out


def summarise(runs: list[dict]) -> dict:
    keys = ["strong_six_mean_r", "mean_r_all", "mean_r_top20", "fit_seconds", "epochs"]
    if all("heldout_iwelbo" in r for r in runs):
        keys.append("heldout_iwelbo")
    summary = {}
    for k in keys:
        v = np.array([r[k] for r in runs], dtype=float)
        summary[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    summary["strong_six_r_mean"] = {
        k: float(np.mean([r["strong_six_r"][k] for r in runs])) for k in STRONG_SIX
    }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="SAMSVAE", choices=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iwelbo-particles", type=int, default=0)
    parser.add_argument(
        "--device", default=None, help="training device (default: fit's, the CPU); e.g. cuda"
    )
    parser.add_argument("--progress", action="store_true")
    parser.add_argument(
        "--trace-every", type=int, default=0, help="log strong-six r every N epochs (0: off)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    g = parser.add_argument_group("NON-DEFAULT overrides (exploration only)")
    g.add_argument("--n-latent", type=int, default=None)
    g.add_argument("--hidden", type=int, nargs="+", default=None)
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--particles", type=int, default=None)
    g.add_argument("--guide", default=None, choices=["correlated", "mean_field"])
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr-schedule", default=None, help="cosine or none")
    g.add_argument(
        "--select",
        default=None,
        choices=["best_validation", "last"],
        help="model selection (best_validation turns early stopping on)",
    )
    g.add_argument(
        "--model-arg", nargs="+", default=None, help="model keyword=JSON value, e.g. mask_prior=0.2"
    )
    parser.add_argument(
        "--save-model", type=Path, default=None, help="save each fitted model ({seed} expands)"
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="combine the JSON files of earlier runs (e.g. one process per seed) and exit",
    )
    args = parser.parse_args()
    if args.combine:
        parts = [json.loads(p.read_text()) for p in args.combine]
        runs = [r for part in parts for r in part["runs"]]
        result = {
            "script": "experiments/papalexi/defaults.py",
            "combined_from": [str(p) for p in args.combine],
            "argv": [part["argv"] for part in parts],
            "model": sorted({part["model"] for part in parts}),
            "pure_defaults": all(part["pure_defaults"] for part in parts),
            "non_default_overrides": parts[0]["non_default_overrides"],
            "runs": runs,
            "summary": summarise(runs),
        }
        text = json.dumps(result, indent=1)
        print(text)
        if args.out is not None:
            args.out.write_text(text + "\n")
        return
    torch.set_num_threads(args.threads)

    overrides = {
        k: getattr(args, k)
        for k in (
            "n_latent",
            "hidden",
            "epochs",
            "lr",
            "particles",
            "guide",
            "batch_size",
            "lr_schedule",
            "model_arg",
            "select",
        )
        if getattr(args, k) is not None
    }
    data = load()
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(data, args, seed))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    result = {
        "script": "experiments/papalexi/defaults.py",
        "argv": sys.argv[1:],
        "model": args.model,
        "pure_defaults": not overrides,
        "non_default_overrides": overrides,
        "threads": args.threads,
        "device": args.device or "cpu",
        "torch": torch.__version__,
        "runs": runs,
        "summary": summarise(runs),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
