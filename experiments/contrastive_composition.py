"""Simulated contrastive data with a known composition shift between the conditions: does a
leakage constraint keep the background latent (composition included) while removing the
salient signal from it? (issue 13)

Data: ``pc.data.simulate_contrastive(1000, 1500, 200 genes, 5 background + 3 salient
latents, ReLU mixing, NB counts)``, whose background latent is N(0, I) for both sources;
the composition shift is made by subsampling: the true background latents are clustered
(k-means, 4 clusters, on all cells) and the target cells of two of the clusters are kept
with probability 0.25 (every background cell is kept), so the background latent's
distribution differs between the conditions by cluster weights only, and an unconditional
MMD of 0 would be wrong.

Fits: ``ContrastiveVAE(200, 5, 3)`` with ``pc.infer.fit`` defaults (batch 128, lr 1e-3,
up to 100 epochs, early stopping), only ``objective=`` differing: the candidates of
``kang_leakage_study.py`` (``w2``: today's default, unconstrained for leakage;
``w2_cluster_mmd``; ``w2_mmd``; ``default``).

Metrics (held-out affine R², ``pc.metrics.affine_r2``): background recovery (true z from the
learned background latent, all cells), salient recovery (true t from the learned salient
latent, target cells), leakage (true t from the learned *background* latent, target cells);
final penalties on the full data (``evaluate_penalty``, batch 128, mean of 10 passes) vs
epsilon; epochs; seconds per epoch. Writes ``results/contrastive_composition.{jsonl,json}``::

    OMP_NUM_THREADS=1 python experiments/contrastive_composition.py \
        --candidates w2 w2_cluster_mmd --seeds 0 1 2
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
from pyro_compare.metrics import affine_r2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kang_leakage_study import (  # noqa: E402
    EPSILON,
    constraint_of,
    full_data_penalty,
    make_objective,
    summarise,
)

RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def simulate(seed: int, keep: float = 0.25, n_clusters: int = 4):
    """Simulated data with target cells of half the true-z clusters thinned to ``keep``."""
    from sklearn.cluster import KMeans

    adata = pc.data.simulate_contrastive(1000, 1500, 200, 5, 3, seed=seed, mixing="relu")
    z = adata.obsm["true_background"]
    cluster = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(z)
    rng = np.random.default_rng(seed)
    target = (adata.obs["condition"] == "target").to_numpy()
    thinned = target & np.isin(cluster, [0, 1]) & (rng.random(len(z)) > keep)
    adata = adata[~thinned].copy()
    adata.obs["true_cluster"] = cluster[~thinned].astype(str)
    return adata


def run(name: str, seed: int, max_epochs: int | None = None) -> dict:
    adata = simulate(seed)
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "background", seed=seed)
    model = pc.models.ContrastiveVAE(data.n_features, 5, 3)
    objective = make_objective(name)
    t0 = time.perf_counter()
    history = pc.infer.fit(
        model, data, objective=objective, seed=seed, max_epochs=max_epochs, progress=False
    )
    seconds = time.perf_counter() - t0
    zb, ts = model.latent(data, "background"), model.latent(data, "salient")
    tgt = (adata.obs["condition"] == "target").to_numpy()
    true_z, true_t = adata.obsm["true_background"], adata.obsm["true_salient"]
    cl = adata.obs["true_cluster"].to_numpy()
    row = {
        "candidate": name,
        "seed": seed,
        "composition_target": {c: round(float((cl[tgt] == c).mean()), 3) for c in sorted(set(cl))},
        "composition_background": {
            c: round(float((cl[~tgt] == c).mean()), 3) for c in sorted(set(cl))
        },
        "r2_background": affine_r2(true_z, zb),
        "r2_salient": affine_r2(true_t[tgt], ts[tgt]),
        "leakage_r2": affine_r2(true_t[tgt], zb[tgt]),
        "epochs": int(len(history)),
        "s_per_epoch": float(history["seconds"].median()),
        "seconds": seconds,
    }
    for pen in ("cluster_mmd", "mmd"):
        row[f"final_{pen}"] = full_data_penalty(model, data, pen)
    penalty, epsilon = constraint_of(objective, model)
    if penalty is not None:
        row["constraint"] = str(penalty)
        row["epsilon"] = epsilon
        row["final_penalty"] = full_data_penalty(model, data, penalty)
        row["constraint_holds"] = bool(row["final_penalty"] <= epsilon)
        row["final_lambda"] = float(history["lambda"].iloc[-1])
        row["feasibility_epochs"] = history.attrs.get("feasibility_epochs")
        row["selected"] = history.attrs.get("selected")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", nargs="+", default=["w2", "w2_cluster_mmd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--max-epochs", type=int, default=None, help="smoke tests only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = args.out / "contrastive_composition.jsonl"
    if not args.summary_only:
        for seed in args.seeds:
            for name in args.candidates:
                row = run(name, seed, args.max_epochs)
                print(json.dumps(row), flush=True)
                with open(lines, "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in lines.read_text().splitlines() if line.strip()]
    summary = {"epsilon": EPSILON, **summarise(rows)}
    text = json.dumps(summary, indent=1)
    (args.out / "contrastive_composition.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
