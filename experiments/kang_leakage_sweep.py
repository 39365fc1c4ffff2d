"""Kang 2018: one-off variants of the contrastive fit around the default (issue 13, sessions 4-5).

Each call fits one configuration, given as JSON: ``name`` (a candidate of
``kang_leakage_study.make_objective``, e.g. ``w2`` or ``w2_cluster_mmd_anchored@0.01``),
``seed`` (default 0), ``genes`` (most variable genes, default 1000), ``model`` (extra
``ContrastiveVAE`` arguments, e.g. ``{"hidden": [256]}``), ``fit`` (extra ``pc.infer.fit``
arguments), ``obj`` (attributes set on the objective, e.g. ``{"lambda_": 10.0,
"dual_lr": 0.01}``), ``penalty`` (attributes set on a constrained objective's penalty, e.g.
``{"n_clusters": 16}``), ``encoder`` (variants of the two encoders that are not
``ContrastiveVAE`` options, made here for the sweep only: ``{"dropout": 0.1}`` adds dropout
after each hidden layer; ``{"input": "per_10k"}`` feeds log1p of counts per 10,000 instead
of log1p of the raw counts) and ``kmm`` (``{"ratio": B, "epsilon": e}``: the default's
constraint with ``kmm_penalty.KMMPenalty(B)`` in place of its ``ClusterMMD``, epsilon e).
It appends one JSON line to ``results/kang_leakage_sweep.jsonl``: background cell type and
within-cell-type condition accuracy (5-fold kNN, k = 15, as in ``kang_leakage_study.py``),
the cell-type accuracy of control and of stimulated cells separately (``type_ctrl``,
``type_stim``), the salient latent's condition and cell-type accuracy, and the final
full-data penalty (10 passes) against epsilon.

Rows with ``"end_of_fit_check": false`` in the results ran before ``fit`` gained its
end-of-fit feasibility check (same code otherwise). Two at a time::

    printf '%s\\n' '{"name":"w2","genes":2000}' '{"name":"w2","model":{"hidden":[256]}}' |
        OMP_NUM_THREADS=1 xargs -d '\\n' -P 2 -I{} python experiments/kang_leakage_sweep.py '{}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anndata as ad
import torch

import pyro_compare as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kang_leakage_study import (  # noqa: E402
    DATA,
    RESULTS,
    constraint_of,
    full_data_penalty,
    knn_correct,
    knn_scores,
    make_objective,
    top_variable_genes,
)
from kmm_penalty import KMMPenalty  # noqa: E402


def vary_encoder(encoder, dropout: float = 0.0, input: str = "log1p") -> None:
    """Sweep-only encoder variants (see the module docstring), in place."""
    if dropout:
        # each ReLU becomes ReLU -> Dropout in its slot: the parameters keep their names,
        # which fit's seeded re-initialisation (a state_dict load) needs
        for i, layer in enumerate(encoder.net):
            if isinstance(layer, torch.nn.ReLU):
                encoder.net[i] = torch.nn.Sequential(layer, torch.nn.Dropout(dropout))
    if input == "per_10k":
        forward = encoder.forward

        def per_10k(x_ng, context_nc=None):
            scale_n1 = 1e4 / x_ng.sum(-1, keepdim=True).clamp_min(1.0)
            return forward(x_ng * scale_n1, context_nc)

        encoder.forward = per_10k
    elif input != "log1p":
        raise ValueError(f"unknown encoder input {input!r}")


def main() -> None:
    torch.set_num_threads(1)
    cfg = json.loads(sys.argv[1])
    name, seed, genes = cfg["name"], cfg.get("seed", 0), cfg.get("genes", 1000)
    adata = top_variable_genes(ad.read_h5ad(DATA), genes)
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "control", seed=seed)
    model = pc.models.ContrastiveVAE(data.n_features, 10, 10, **cfg.get("model", {}))
    for encoder in (model.background_encoder, model.salient_encoder):
        vary_encoder(encoder, **cfg.get("encoder", {}))
    objective = make_objective(name)
    if "kmm" in cfg:
        objective = model.default_objective()
        objective.penalty = KMMPenalty(cfg["kmm"]["ratio"])
        objective.epsilon = cfg["kmm"]["epsilon"]
    if objective is None and ("obj" in cfg or "penalty" in cfg):
        objective = model.default_objective()  # what fit would use, to be varied
    for key, value in cfg.get("obj", {}).items():
        setattr(objective, key, value)
    for key, value in cfg.get("penalty", {}).items():
        setattr(objective.penalty, key, value)
    t0 = time.perf_counter()
    history = pc.infer.fit(
        model, data, objective=objective, seed=seed, progress=False, **cfg.get("fit", {})
    )
    seconds = time.perf_counter() - t0
    cell_type = adata.obs["cell_type"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    zb, ts = model.latent(data, "background"), model.latent(data, "salient")
    scores = knn_scores(zb, ts, adata)
    row = {
        "cfg": cfg,
        "type": scores["bg_celltype"],
        "within": scores["bg_condition_within_celltype"],
        "sal_cond": scores["salient_condition"],
        "sal_type": scores["salient_celltype"],
        "epochs": len(history),
        "sec": seconds,
        "end_of_fit_check": True,
    }
    correct = knn_correct(zb, cell_type)
    control = condition == "control"
    row["type_ctrl"] = float(correct[control].mean())
    row["type_stim"] = float(correct[~control].mean())
    penalty, epsilon = constraint_of(objective, model)
    if penalty is not None:
        row["final"] = full_data_penalty(model, data, penalty)
        row["eps"] = epsilon
    print(json.dumps(row), flush=True)
    with open(RESULTS / "kang_leakage_sweep.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
