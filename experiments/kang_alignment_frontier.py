"""Kang 2018: how much cell type can a *label-blind* alignment of the conditions keep?
(issue 13, session 4)

Issue 13 asks the default contrastive fit for a background latent with within-cell-type
condition accuracy <= 0.66 *and* cell-type accuracy >= 0.82 (5-fold kNN, k = 15). This
script asks what post-hoc alignments of a fitted latent reach, without any training
against them: it fits ``w2`` (the W2 term alone, no leakage constraint; 1000 most variable
genes, as ``kang_leakage_study.py``) and moves the stimulated cells' background latents:

* ``K<k>_mean``: k-means (k clusters) of the pooled latent; in each cluster the stimulated
  cells are translated so that their mean is the control cells' mean (a piecewise
  translation: the label-blind analogue of what a within-cluster constraint asks);
* ``K<k>_meancov``: the same, also matching per-dimension standard deviations;
* ``knn_move_<f>``: each stimulated cell moved a fraction f of the way onto the mean of its
  15 nearest control cells;
* ``global_mean``, ``global_coral``: one translation of all stimulated cells onto the
  controls' mean; one affine map matching mean and covariance (CORAL);
* ``ot_move_<f>``: optimal transport (an assignment of stimulated to control cells by
  squared distance), each stimulated cell moved a fraction f of the way to its match;
* ``label_oracle_mean``: the stimulated cells of each *annotated* cell type translated onto
  the control cells of the same type (uses the labels: an upper bound no label-blind
  method can claim).

Each row: cell-type accuracy and within-cell-type condition accuracy (the metrics of
``pc.tl.knn_leakage``). For comparison the same seed also fits the default objective
(``trained_default``, scored the same way), and ``per_type`` breaks the cell-type accuracy
of ``raw``, ``K8_mean``, ``trained_default`` and ``label_oracle_mean`` down by annotated
cell type and condition (the same 5-fold kNN predictions): where an alignment loses
accuracy; ``bg_celltype_monocytes_merged`` is the cell-type accuracy with CD14+ and FCGR3A+
monocytes as one label. ``monocyte_clusters`` describes the monocytes in the K = 8 k-means
clusters of the ``w2`` latent (the clusters of ``K8_mean``): cells per label and condition and the
mean log1p(counts per 10k) of classical / non-classical monocyte markers (all genes) per
label and condition, to tell a change of composition (cluster sizes change) from a change
of labels (cluster sizes stay, the label mix inside a cluster changes).
Writes ``results/kang_alignment_frontier.json``::

    OMP_NUM_THREADS=1 python experiments/kang_alignment_frontier.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from scipy.linalg import sqrtm
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

import pyro_compare as pc
from pyro_compare.metrics import knn_accuracy
from pyro_compare.metrics.identifiability import _knn_composition_cv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kang_label_consistency import MONOCYTES, marker_expression  # noqa: E402
from kang_leakage_study import (  # noqa: E402
    DATA,
    RESULTS,
    knn_correct,
    make_objective,
    top_variable_genes,
)


def alignments(zb: np.ndarray, stim: np.ndarray, cell_type: np.ndarray) -> dict:
    """The aligned copies of ``zb`` described in the module docstring, by name."""
    out = {"raw": zb}
    for k in (4, 8, 16, 32):
        labels = KMeans(k, n_init=4, random_state=0).fit(zb).labels_
        for mode in ("mean", "meancov"):
            z = zb.copy()
            for c in range(k):
                ctrl, tgt = (labels == c) & ~stim, (labels == c) & stim
                if ctrl.sum() < 3 or tgt.sum() < 3:
                    continue
                centred = zb[tgt] - zb[tgt].mean(0)
                if mode == "meancov":
                    centred = centred / (zb[tgt].std(0) + 1e-6) * (zb[ctrl].std(0) + 1e-6)
                z[tgt] = centred + zb[ctrl].mean(0)
            out[f"K{k}_{mode}"] = z
    z = zb.copy()
    for t in np.unique(cell_type):
        ctrl, tgt = (cell_type == t) & ~stim, (cell_type == t) & stim
        z[tgt] = zb[tgt] - zb[tgt].mean(0) + zb[ctrl].mean(0)
    out["label_oracle_mean"] = z
    # global alignments: one translation; one affine map matching mean and covariance
    # (CORAL); optimal transport (an assignment of stimulated to control cells, each
    # control used at most ceil(n_stim / n_ctrl) times) followed a fraction f of the way
    z = zb.copy()
    z[stim] = zb[stim] - zb[stim].mean(0) + zb[~stim].mean(0)
    out["global_mean"] = z
    root_ctrl = np.real(sqrtm(np.cov(zb[~stim].T)))
    root_stim = np.real(sqrtm(np.cov(zb[stim].T)))
    z = zb.copy()
    z[stim] = (zb[stim] - zb[stim].mean(0)) @ (root_ctrl @ np.linalg.inv(root_stim)).T
    z[stim] += zb[~stim].mean(0)
    out["global_coral"] = z
    cost = ((zb[stim][:, None, :] - zb[~stim][None, :, :]) ** 2).sum(-1)
    copies = int(np.ceil(stim.sum() / (~stim).sum()))
    _, col = linear_sum_assignment(np.tile(cost, (1, copies)))
    matched = zb[~stim][col % (~stim).sum()]
    for f in (0.7, 0.85, 1.0):
        z = zb.copy()
        z[stim] = zb[stim] + f * (matched - zb[stim])
        out[f"ot_move_{f}"] = z
    idx = NearestNeighbors(n_neighbors=15).fit(zb[~stim]).kneighbors(zb[stim])[1]
    target = zb[~stim][idx].mean(1)
    for f in (0.5, 0.8, 1.0):
        z = zb.copy()
        z[stim] = zb[stim] + f * (target - zb[stim])
        out[f"knn_move_{f}"] = z
    return out


#: Latents whose cell-type accuracy ``per_type`` breaks down by type and condition.
BROKEN_DOWN = ("raw", "K8_mean", "trained_default", "label_oracle_mean")


def per_type_accuracy(z: np.ndarray, cell_type: np.ndarray, condition: np.ndarray) -> dict:
    """Cell-type kNN accuracy (k = 15, the 5 stratified folds of ``knn_accuracy``) of each
    annotated type's control and stimulated cells, with their numbers."""
    correct = knn_correct(z, cell_type)
    out: dict = {}
    for t in np.unique(cell_type):
        out[t] = {}
        for c in np.unique(condition):
            cells = (cell_type == t) & (condition == c)
            out[t][c] = {"n": int(cells.sum()), "accuracy": round(float(correct[cells].mean()), 4)}
    return out


def monocyte_clusters(zb: np.ndarray, markers, cell_type, condition) -> dict:
    """Per k-means cluster (K = 8, as ``K8_mean``) of ``zb`` holding >= 10 monocytes: the
    number of cells of each monocyte label and condition and, for groups of >= 5 cells,
    their mean of each column of ``markers`` (``kang_label_consistency.marker_expression``:
    log1p(counts per 10k) of the monocyte markers)."""
    clusters = KMeans(8, n_init=4, random_state=0).fit(zb).labels_
    out: dict = {}
    for c in np.unique(clusters):
        if (np.isin(cell_type, MONOCYTES) & (clusters == c)).sum() < 10:
            continue
        groups: dict = {"size": int((clusters == c).sum())}
        for t in MONOCYTES:
            for cond in np.unique(condition):
                cells = (clusters == c) & (cell_type == t) & (condition == cond)
                group: dict = {"n": int(cells.sum())}
                if cells.sum() >= 5:
                    group["markers"] = markers[cells].mean().round(2).to_dict()
                groups[f"{t} {cond}"] = group
        out[str(c)] = groups
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    full = ad.read_h5ad(DATA)
    adata = top_variable_genes(full, 1000)
    markers = marker_expression(full)  # once: the same cells on every seed
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    stim = condition != "control"
    # the two monocyte labels as one (their boundary is where the labels follow the condition)
    merged = np.where(np.isin(cell_type, MONOCYTES), "Mono", cell_type)
    per_seed: dict = {}
    for seed in args.seeds:
        data = pc.data.ComparativeData.from_anndata(adata, "condition", "control", seed=seed)
        model = pc.models.ContrastiveVAE(data.n_features, 10, 10)
        pc.infer.fit(model, data, objective=make_objective("w2"), seed=seed, progress=False)
        zb = model.latent(data, "background")
        default = pc.models.ContrastiveVAE(data.n_features, 10, 10)
        pc.infer.fit(default, data, seed=seed, progress=False)  # the default objective
        latents = {**alignments(zb, stim, cell_type)}
        latents["trained_default"] = default.latent(data, "background")
        rows = {}
        for name, z in latents.items():
            within = _knn_composition_cv(z, condition, cell_type, k=15, seed=0)["within_group"]
            rows[name] = {
                "bg_celltype": round(knn_accuracy(z, cell_type, k=15), 4),
                "bg_condition_within_celltype": round(float(within), 4),
                "bg_celltype_monocytes_merged": round(knn_accuracy(z, merged, k=15), 4),
            }
            print(seed, name, rows[name], flush=True)
        rows["per_type"] = {
            name: per_type_accuracy(latents[name], cell_type, condition) for name in BROKEN_DOWN
        }
        rows["monocyte_clusters"] = monocyte_clusters(zb, markers, cell_type, condition)
        per_seed[str(seed)] = rows
    names = [
        name
        for name in next(iter(per_seed.values()))
        if name not in ("per_type", "monocyte_clusters")
    ]
    summary = {
        name: {
            metric: round(float(np.mean([per_seed[s][name][metric] for s in per_seed])), 4)
            for metric in (
                "bg_celltype",
                "bg_condition_within_celltype",
                "bg_celltype_monocytes_merged",
            )
        }
        for name in names
    }
    seeds = list(per_seed)
    first = per_seed[seeds[0]]["per_type"]

    def mean_accuracy(name: str, t: str, c: str) -> float:
        values = [per_seed[s]["per_type"][name][t][c]["accuracy"] for s in seeds]
        return round(float(np.mean(values)), 4)

    per_type_mean = {
        name: {t: {c: mean_accuracy(name, t, c) for c in first[name][t]} for t in first[name]}
        for name in BROKEN_DOWN
    }
    result = {
        "genes": 1000,
        "seeds": args.seeds,
        "mean": summary,
        "per_type_mean": per_type_mean,
        "per_seed": per_seed,
    }
    (RESULTS / "kang_alignment_frontier.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
