"""Seed spread of tests/models/test_contrastive_kang.py: the test's exact fit over seeds 0-4.

Run: ``OMP_NUM_THREADS=1 python experiments/test_thresholds/kang_contrastive.py``; prints one
JSON line per seed, then mean and sd per metric (quoted in the test's comment).
"""

import json

import anndata as ad
import numpy as np

from pyro_compare.data import KANG2018, ComparativeData, dataset_path
from pyro_compare.infer import Sum, fit
from pyro_compare.metrics import knn_accuracy
from pyro_compare.models import ContrastiveVAE

adata = ad.read_h5ad(dataset_path(KANG2018))
data = ComparativeData.from_anndata(adata, condition_key="condition", background="control")
ct = adata.obs["cell_type"].to_numpy()
cond = adata.obs["condition"].to_numpy()
rows = []
for seed in range(5):
    model = ContrastiveVAE(data.n_features, 10, 10, hidden=(128,))
    fit(
        model,
        data,
        objective=Sum(penalty="wasserstein_to_zero", penalty_weight=10.0),
        max_epochs=25,
        lr=3e-3,
        seed=seed,
        progress=False,
    )
    z = model.latent(data, "background")
    t = model.latent(data, "salient")
    r = dict(
        seed=seed,
        type_z=knn_accuracy(z, ct, k=15, n_folds=5),
        cond_z=knn_accuracy(z, cond, k=15, n_folds=5),
        cond_t=knn_accuracy(t, cond, k=15, n_folds=5),
    )
    bg = data.sources["background"]
    r["t_ratio"] = float(np.abs(t[bg]).mean() / np.abs(np.delete(t, bg, 0)).mean())
    rows.append(r)
    print(json.dumps(r), flush=True)
for k in ("type_z", "cond_z", "cond_t", "t_ratio"):
    v = np.array([r[k] for r in rows])
    print(k, v.mean().round(4), v.std().round(4))
