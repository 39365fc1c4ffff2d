"""Kang 2018 (control vs IFN-beta PBMCs): which contrastive default removes the condition
from the background latent *within* cell types without removing the cell types? (issue 13)

Candidates (only ``objective=`` differs; everything else is what ``pc.infer.fit`` gives a
user: ``ContrastiveVAE(n_genes, 10, 10)``, batch 128, lr 1e-3, up to 100 epochs, early
stopping with patience 15 that never counts an epoch whose constraint failed on most steps,
best-validation selection among feasible epochs):

* ``w2``: today's default, ``Sum(penalty="wasserstein_to_zero", penalty_weight=10)``;
* ``w2_cluster_mmd``: ``Constrained("cluster_mmd", epsilon=0.003, elbo=<w2>, **DUAL)``:
  condition information *within* k-means clusters of the background latent
  (``pc.infer.penalties.cluster_mmd``); ``DUAL`` = multiplicative dual update from
  lambda 1, dual lr 0.05, moving average 0.9 (scale-free, the README's settings);
* ``w2_mmd``: ``Constrained("mmd", epsilon=0.005, elbo=<w2>, **DUAL)``, the unconditional
  MMD of the README, for reference;
* ``default``: ``objective=None``, whatever ``ContrastiveVAE.default_objective`` is now.

Epsilon of ``cluster_mmd`` by meaning, not fitted to Kang: with the multi-bandwidth kernel
at the within-cluster scale, a mean shift of delta within-cluster standard deviations
between the conditions in a 10-dimensional cluster gives MMD^2 ~ 0.0235 delta^2, so
0.003 tolerates a shift of ~1/3 sd (balanced-class Bayes accuracy < 0.57).

Metrics (5-fold kNN, k = 15, the folds of ``pc.metrics.knn_accuracy``): background latent
cell type, condition, condition *within cell type* (neighbours restricted to cells of the
same cell type, ``condition_within_label`` of ``pc.tl.knn_leakage``) with its chance
level; salient latent condition and cell type; the final penalty on the full data
(``pc.infer.penalties.evaluate_penalty`` with the training batch size, averaged over 10
passes with different minibatch orders) vs epsilon; epochs; seconds per epoch (training
loop only, median over epochs). One fit at a time, 1 torch thread.

Writes one JSON line per fit to ``experiments/results/kang_leakage_study.jsonl`` (appends;
reruns of a (candidate, seed) replace the earlier line in the summary) and the summary
(mean +- sd, ddof=1) to ``experiments/results/kang_leakage_study.json``. Run::

    OMP_NUM_THREADS=1 python experiments/kang_leakage_study.py \
        --candidates w2 w2_cluster_mmd --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import pyro_compare as pc
from pyro_compare.infer import Constrained, Sum
from pyro_compare.infer.penalties import ClusterMMD, evaluate_penalty
from pyro_compare.metrics import knn_accuracy
from pyro_compare.metrics.identifiability import _knn_composition_cv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DATA = ROOT.parent / "shared" / "data" / "kang2018_scgen_valid_counts.h5ad"
EPSILON = {"cluster_mmd": 0.003, "mmd": 0.005}
#: Passes through the data for the final full-data penalty.
PASSES = 10
#: Scale-free dual settings (exponentiated-gradient dual ascent on a moving average): the
#: multiplier reaches any scale geometrically from 1, whatever the penalty's units.
DUAL = dict(update="multiplicative", lambda_init=1.0, dual_lr=0.05, moving_average=0.9)


def w2() -> Sum:
    return Sum(penalty="wasserstein_to_zero", penalty_weight=10.0)


def make_objective(name: str):
    """The candidate objective called ``name``; ``<name>@<epsilon>`` overrides epsilon and
    ``<name>@<epsilon>@<slack>`` also the dual's slack."""
    name, _, eps = name.partition("@")
    if eps:
        eps, _, slack = eps.partition("@")
        objective = make_objective(name)
        objective.epsilon = float(eps)
        if slack:
            objective.slack = float(slack)
        return objective
    if name == "default":
        return None  # the model's default_objective (what fit uses when given none)
    if name == "w2":
        return w2()
    if name == "elbo":
        return Sum()  # the plain negative ELBO
    if name == "w2_cluster_mmd":
        return Constrained("cluster_mmd", epsilon=EPSILON["cluster_mmd"], elbo=w2(), **DUAL)
    if name == "w2_cluster_mmd16":
        return Constrained(
            ClusterMMD(n_clusters=16), epsilon=EPSILON["cluster_mmd"], elbo=w2(), **DUAL
        )
    if name in ("w2_cluster_mmd_anchored", "w2_cluster_mmd16_anchored"):
        k = 16 if "16" in name else 8
        return Constrained(
            ClusterMMD(n_clusters=k, anchor="background"),
            epsilon=EPSILON["cluster_mmd"],
            elbo=w2(),
            **DUAL,
        )
    if name.startswith("w2_cluster_mean"):
        # the linear-kernel cluster MMD: matches the conditions' means within clusters
        k = int(name.removeprefix("w2_cluster_mean") or 8)
        return Constrained(
            ClusterMMD(n_clusters=k, anchor="background", kernel="linear"),
            epsilon=EPSILON["cluster_mmd"],
            elbo=w2(),
            **DUAL,
        )
    if name == "w2_mmd":
        return Constrained("mmd", epsilon=EPSILON["mmd"], elbo=w2(), **DUAL)
    raise ValueError(name)


def constraint_of(objective, model):
    objective = objective if objective is not None else model.default_objective()
    if isinstance(objective, Constrained):
        return objective.penalty, objective.epsilon
    return None, None


def full_data_penalty(model, data, penalty, passes: int = PASSES) -> float:
    """``evaluate_penalty`` (training batch size) averaged over ``passes`` passes through
    the data with different minibatch orders: the full-data value of a minibatch penalty,
    with the pass-to-pass noise of the minibatch estimates averaged out."""
    vals = [evaluate_penalty(model, data, penalty, batch_size=128, seed=s) for s in range(passes)]
    return float(np.mean(vals))


def knn_scores(zb: np.ndarray, ts: np.ndarray, adata) -> dict[str, float]:
    """The study's metrics of a background latent ``zb`` and a salient latent ``ts`` of
    ``adata``'s cells (5-fold kNN, k = 15; see the module docstring)."""
    condition = adata.obs["condition"].astype(str).to_numpy()
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()
    beyond = _knn_composition_cv(zb, condition, cell_type, k=15, seed=0)
    return {
        "bg_celltype": knn_accuracy(zb, cell_type, k=15),
        "bg_condition": knn_accuracy(zb, condition, k=15),
        "bg_condition_within_celltype": beyond["within_group"],
        "bg_condition_within_celltype_chance": beyond["within_group_chance"],
        "bg_condition_composition_floor": beyond["composition_floor"],
        "salient_condition": knn_accuracy(ts, condition, k=15),
        "salient_celltype": knn_accuracy(ts, cell_type, k=15),
    }


def knn_correct(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per cell, whether 5-fold kNN (k = 15, the stratified folds of ``knn_accuracy``)
    predicts its label from ``z`` (for accuracies of subsets of the cells)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(KNeighborsClassifier(15), z, labels, cv=folds) == labels


def run(name: str, seed: int, adata) -> dict:
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "control", seed=seed)
    model = pc.models.ContrastiveVAE(data.n_features, 10, 10)
    objective = make_objective(name)
    t0 = time.perf_counter()
    history = pc.infer.fit(model, data, objective=objective, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    zb, ts = model.latent(data, "background"), model.latent(data, "salient")
    row = {
        "candidate": name,
        "seed": seed,
        **knn_scores(zb, ts, adata),
        "epochs": int(len(history)),
        "s_per_epoch": float(history["seconds"].median()),
        "seconds": seconds,
    }
    penalty, epsilon = constraint_of(objective, model)
    for pen in ("cluster_mmd", "mmd"):
        row[f"final_{pen}"] = full_data_penalty(model, data, pen)
    if penalty is not None:
        row["constraint"] = str(penalty)
        row["epsilon"] = epsilon
        row["final_penalty"] = full_data_penalty(model, data, penalty)
        row["constraint_holds"] = bool(row["final_penalty"] <= epsilon)
        row["final_lambda"] = float(history["lambda"].iloc[-1])
        row["feasibility_epochs"] = history.attrs.get("feasibility_epochs")
        row["selected"] = history.attrs.get("selected")
        row["last_epoch_constraint_satisfied"] = float(history["constraint_satisfied"].iloc[-1])
        # the epoch fit kept: best validation loss among epochs whose constraint held
        feasible = history[history["constraint_satisfied"] >= 0.5]
        if len(feasible):
            best = feasible["validation_loss"].idxmin()
            row["selected_epoch"] = int(history.loc[best, "epoch"])
            row["selected_epoch_train_penalty"] = float(history.loc[best, "penalty"])
    row["final_w2"] = evaluate_penalty(model, data, "wasserstein_to_zero", batch_size=128)
    return row


def top_variable_genes(adata, n_genes: int):
    """``adata`` restricted to the ``n_genes`` genes of largest variance of log1p(counts per
    10k) (all genes when ``n_genes`` is 0 or at least the number of genes)."""
    if not n_genes or n_genes >= adata.n_vars:
        return adata
    import scipy.sparse as sp

    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = np.log1p(1e4 * x / x.sum(1, keepdims=True))
    keep = np.sort(np.argsort(-x.var(0))[:n_genes])
    return adata[:, keep].copy()


def benchmark(adata, names: list[str], rounds: int, out: Path, epochs: int = 3) -> dict:
    """Seconds per training epoch of each candidate: ``epochs``-epoch fits (no validation,
    no early stopping, no end-of-fit repair epochs), interleaved rounds on the same model
    size, the fit's own per-epoch wall clock (``history["seconds"]``, the epoch's steps
    only); ``ratio`` = median / median of ``w2``. Also the rest of each fit call
    (``other_seconds``: setup and, for constrained objectives, the end-of-fit check of the
    constraint on the full data), which is paid once per fit, not per epoch."""
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "control", seed=0)
    per_epoch: dict[str, list] = {n: [] for n in names}
    other: dict[str, list] = {n: [] for n in names}
    for r in range(rounds):
        for name in names:
            model = pc.models.ContrastiveVAE(data.n_features, 10, 10)
            w0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pc.infer.ConstraintWarning)
                history = pc.infer.fit(
                    model, data, objective=make_objective(name), max_epochs=epochs, seed=r,
                    validation=False, early_stopping=False, progress=False,
                    feasibility_epochs=0,
                )  # fmt: skip
            wall = time.perf_counter() - w0
            per_epoch[name].extend(history["seconds"].tolist())
            other[name].append(wall - float(history["seconds"].sum()))
    result: dict = {
        "rounds": rounds,
        "epochs_per_fit": epochs,
        "genes": int(adata.n_vars),
        "unit": "seconds per training epoch (wall clock, 1 torch thread)",
    }
    for name in names:
        result[name] = {
            "epoch_median": float(np.median(per_epoch[name])),
            "other_seconds_median": float(np.median(other[name])),
        }
        if name != "w2" and "w2" in names:
            result[name]["ratio"] = result[name]["epoch_median"] / result["w2"]["epoch_median"]
    (out / "kang_leakage_study_benchmark.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


def summarise(rows: list[dict]) -> dict:
    """Mean and sd (ddof=1) over seeds per candidate (and gene set), the latest line of
    each (candidate, genes, seed)."""
    latest: dict[tuple, dict] = {}
    for row in rows:
        label = row["candidate"] + (
            f"_{row['genes']}genes" if row.get("genes", 6998) < 6998 else ""
        )
        latest[(label, row["seed"])] = row
    out: dict = {}
    for name in dict.fromkeys(label for label, _ in latest):
        group = [r for (c, _), r in sorted(latest.items()) if c == name]
        summary: dict = {"seeds": [r["seed"] for r in group]}
        for key, value in group[0].items():
            if isinstance(value, bool):
                summary[key] = [r[key] for r in group]
            elif isinstance(value, (int, float)) and key != "seed":
                vals = np.array([r[key] for r in group if r.get(key) is not None], float)
                sd = float(vals.std(ddof=1)) if len(vals) > 1 else None
                summary[key] = {
                    "mean": round(float(vals.mean()), 4),
                    "sd": None if sd is None else round(sd, 4),
                }
            elif key not in ("candidate", "seed"):
                summary[key] = value
        out[name] = summary
    return out


def main() -> None:
    import anndata as ad

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", nargs="+", default=["w2", "w2_cluster_mmd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument(
        "--genes", type=int, default=0,
        help="fit on the N most variable genes (0: all 6998, the issue's setting)",
    )  # fmt: skip
    parser.add_argument(
        "--benchmark", type=int, default=0, metavar="ROUNDS",
        help="only time one epoch of each candidate, interleaved, ROUNDS times",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "kang_leakage_study.jsonl"
    if args.benchmark:
        adata = top_variable_genes(ad.read_h5ad(args.data), args.genes)
        benchmark(adata, args.candidates, args.benchmark, args.out)
        return
    if not args.summary_only:
        adata = top_variable_genes(ad.read_h5ad(args.data), args.genes)
        for seed in args.seeds:
            for name in args.candidates:
                row = run(name, seed, adata)
                row["genes"] = int(adata.n_vars)
                print(json.dumps(row), flush=True)
                with open(lines, "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    summary = summarise(rows)
    text = json.dumps(summary, indent=1)
    (args.out / "kang_leakage_study.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
