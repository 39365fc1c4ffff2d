"""Are geodesic latent distances more reproducible across retrainings than Euclidean ones?

Claim tested (Syrota et al. 2025, "identifiable latent geometry"): distances measured along
the decoder's manifold are identifiable, so across models retrained with different seeds
they vary less than Euclidean distances between latent codes.

For each dataset the script fits ``ContrastiveVAE`` once per seed (same data, same split,
only the seed changes), takes the background latent (posterior means) of every cell and
the background decoder ``z -> mu([z, t=0])`` (:func:`pyro_compare.metrics.latent_decoder`)
at the median library size, draws ``--pairs`` random cell pairs (fixed ``--pair-seed``), and
runs :func:`pyro_compare.metrics.distance_stability`: per model, distances are divided by
their mean over the pairs, then each pair's coefficient of variation (sd / mean over seeds)
is computed; the p-value is the paired one-sided Wilcoxon signed-rank test of
"geodesic CV < Euclidean CV".

Observation-space metrics (``--metrics``):

* ``fisher_nb`` (primary): Fisher-Rao metric of the model's NB observation model with its
  own inverse dispersions theta_g (isometric embedding 2 sqrt(theta) asinh sqrt(mu/theta)).
* ``euclidean``: Euclidean metric on the decoded mean counts.

References, same normalisation and CV: ``straight`` = length of the decoded straight latent
line (the geodesic's starting curve, no optimisation) and ``chord`` = distance between the
two decoded endpoints in the metric's embedding (``n_points=2``). They separate "measured
in observation space" from "measured along the shortest curve".

Datasets: ``simulated`` = ``pc.data.simulate_contrastive(2000, 2000, 200, 5, 3, seed=0)``
(model d_z=5, d_t=3); ``kang`` = the shared Kang 2018 file, control = background,
stimulated = target, restricted to the ``--n-hvg`` genes with the largest variance of
log1p(counts per 10k) (model d_z=10, d_t=10).

Writes ``results/distance_stability[_quick].json`` and ``.png``. Run::

    OMP_NUM_THREADS=1 python experiments/geometry/distance_stability.py            # ~10 min
    OMP_NUM_THREADS=1 python experiments/geometry/distance_stability.py --quick    # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon

import pyro_compare as pc
from pyro_compare.metrics import distance_stability, geodesic, latent_decoder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"


# --------------------------------------------------------------------------- data


def top_variance_genes(adata, n_genes: int) -> np.ndarray:
    """Indices (sorted) of the ``n_genes`` genes with the largest variance of log1p(CP10k)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(adata.X, dtype=np.float64)
    library = np.asarray(X.sum(1)).ravel()
    Xn = sp.csr_matrix(X.multiply(1e4 / library[:, None]))
    Xn.data = np.log1p(Xn.data)
    mean = np.asarray(Xn.mean(0)).ravel()
    var = np.asarray(Xn.multiply(Xn).mean(0)).ravel() - mean**2
    return np.sort(np.argsort(-var)[:n_genes])


def load_dataset(name: str, args) -> tuple[pc.data.ComparativeData, dict]:
    if name == "simulated":
        n = 600 if args.quick else 2000
        adata = pc.data.simulate_contrastive(n, n, 200, 5, 3, seed=0)
        data = pc.data.ComparativeData.from_anndata(adata, "condition", "background")
        info = {"cells": adata.n_obs, "genes": adata.n_vars, "dz": 5, "dt": 3}
        info["simulator"] = f"simulate_contrastive({n}, {n}, 200, 5, 3, seed=0)"
        return data, info
    if name == "kang":
        import anndata as ad

        adata = ad.read_h5ad(pc.data.dataset_path(pc.data.KANG2018))
        genes = top_variance_genes(adata, args.n_hvg)
        adata = adata[:, genes].copy()
        data = pc.data.ComparativeData.from_anndata(adata, "condition", "control")
        info = {"cells": adata.n_obs, "genes": adata.n_vars, "dz": 10, "dt": 10}
        info["file"] = pc.data.KANG2018
        info["gene_selection"] = f"top {args.n_hvg} genes by variance of log1p(counts per 10k)"
        return data, info
    raise ValueError(name)


def library_sizes(data: pc.data.ComparativeData) -> np.ndarray:
    batch = data.full_batch()
    return np.concatenate([src.library_n.numpy() for src in batch.values()])


# --------------------------------------------------------------------------- fits


def fit_models(name: str, data, info: dict, args) -> tuple[list, list[dict]]:
    models, fits = [], []
    for seed in args.seeds:
        cache = None if args.cache is None else args.cache / f"{name}_seed{seed}.pt"
        t0 = time.perf_counter()
        if cache is not None and cache.exists():
            model = pc.models.ContrastiveVAE.load(cache)
            history = None
        else:
            torch.manual_seed(seed)
            model = pc.models.ContrastiveVAE(data.n_features, info["dz"], info["dt"])
            # the objective the documented results were measured with (the contrastive
            # default then: the plain negative ELBO)
            objective = pc.infer.Sum()
            history = pc.infer.fit(
                model, data, objective=objective, max_epochs=args.epochs[name], lr=args.lr,
                seed=seed, progress=False,
            )  # fmt: skip
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                model.save(cache)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        fit = {"seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
        if history is not None:
            fit["epochs"] = int(len(history))
            fit["validation_loss"] = float(history["validation_loss"].min())
        print(f"[{name}] seed {seed}: {fit}", flush=True)
        models.append(model)
        fits.append(fit)
    return models, fits


# --------------------------------------------------------------------------- analysis


def paired_less(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Wilcoxon signed-rank p-value for a < b (paired)."""
    if np.all(a == b):
        return float("nan")
    return float(wilcoxon(a, b, alternative="less").pvalue)


def analyse(name: str, models, data, pairs: np.ndarray, args) -> dict:
    zs = [m.latent(data, "background") for m in models]
    library = float(np.median(library_sizes(data)))
    out = {"library": library, "metrics": {}}
    for metric in args.metrics:
        decoders = [latent_decoder(m, "background", library=library, metric=metric) for m in models]
        geo_kw = dict(n_points=args.n_points, max_iter=args.max_iter)
        t0 = time.perf_counter()
        main = distance_stability(decoders, zs, pairs, **geo_kw)
        seconds = time.perf_counter() - t0
        straight = distance_stability(
            decoders, zs, pairs, kind=("geodesic",), n_points=args.n_points, max_iter=0
        )
        chord = distance_stability(decoders, zs, pairs, kind=("geodesic",), n_points=2)
        # Diagnostics on the raw (unnormalised) geodesics of every model.
        converged, shortening = [], []
        for dec, z in zip(decoders, zs):
            za, zb = torch.as_tensor(z[pairs[:, 0]]), torch.as_tensor(z[pairs[:, 1]])
            res = geodesic(dec, za, zb, **geo_kw)
            line = geodesic(dec, za, zb, n_points=args.n_points, max_iter=0)
            converged.append(float(res.converged.float().mean()))
            shortening.append(float((res.length / line.length).median()))
        cv = {
            "geodesic": main.cv["geodesic"],
            "euclidean": main.cv["euclidean"],
            "straight": straight.cv["geodesic"],
            "chord": chord.cv["geodesic"],
        }
        entry = {
            "mean_cv": {k: float(v.mean()) for k, v in cv.items()},
            "median_cv": {k: float(np.median(v)) for k, v in cv.items()},
            "p_geodesic_lt_euclidean": main.p_value,
            "wilcoxon_statistic": main.statistic,
            "fraction_pairs_geodesic_lt_euclidean": float(
                np.mean(cv["geodesic"] < cv["euclidean"])
            ),
            "p_straight_lt_euclidean": paired_less(cv["straight"], cv["euclidean"]),
            "p_chord_lt_euclidean": paired_less(cv["chord"], cv["euclidean"]),
            "p_geodesic_lt_straight": paired_less(cv["geodesic"], cv["straight"]),
            "geodesic_converged_fraction": converged,
            "median_geodesic_over_straight_length": shortening,
            "geodesic_seconds_all_models": round(seconds, 1),
            "cv_per_pair": {k: v.tolist() for k, v in cv.items()},
        }
        m = entry["mean_cv"]
        print(
            f"[{name}/{metric}] mean CV geodesic {m['geodesic']:.4f} euclidean "
            f"{m['euclidean']:.4f} straight {m['straight']:.4f} chord {m['chord']:.4f}; "
            f"p(geo<euc) = {main.p_value:.3g}; geo/straight {np.round(shortening, 3)}",
            flush=True,
        )
        out["metrics"][metric] = entry
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    metrics = list(next(iter(results.values()))["analysis"]["metrics"])
    fig, axes = plt.subplots(
        len(names), len(metrics), figsize=(4.2 * len(metrics), 4.0 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            e = results[name]["analysis"]["metrics"][metric]
            x = np.asarray(e["cv_per_pair"]["euclidean"])
            y = np.asarray(e["cv_per_pair"]["geodesic"])
            hi = 1.05 * max(x.max(), y.max())
            ax.plot([0, hi], [0, hi], color="0.6", lw=1, ls="--")
            ax.scatter(x, y, s=10, alpha=0.6)
            ax.set_xlim(0, hi)
            ax.set_ylim(0, hi)
            ax.set_xlabel("CV across seeds, Euclidean latent distance")
            ax.set_ylabel(f"CV across seeds, geodesic ({metric})")
            m = e["mean_cv"]
            ax.set_title(
                f"{name}: mean CV geo {m['geodesic']:.3f} vs euc {m['euclidean']:.3f}\n"
                f"Wilcoxon one-sided p = {e['p_geodesic_lt_euclidean']:.2g}",
                fontsize=9,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["simulated", "kang"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--pair-seed", type=int, default=0)
    p.add_argument("--metrics", nargs="+", default=["fisher_nb", "euclidean"])
    p.add_argument("--epochs-simulated", type=int, default=60)
    p.add_argument("--epochs-kang", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-hvg", type=int, default=2000)
    p.add_argument("--n-points", type=int, default=16)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help="save/load fitted models here")
    p.add_argument("--quick", action="store_true", help="2 seeds, few epochs, 40 pairs")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.epochs = {"simulated": args.epochs_simulated, "kang": args.epochs_kang}
    if args.quick:
        args.seeds, args.pairs = args.seeds[:2], min(args.pairs, 40)
        args.epochs = {k: min(v, 8) for k, v in args.epochs.items()}

    t_start = time.perf_counter()
    results = {}
    for name in args.datasets:
        data, info = load_dataset(name, args)
        n_cells = data.n_cells
        rng = np.random.default_rng(args.pair_seed)
        pairs = np.array([rng.choice(n_cells, size=2, replace=False) for _ in range(args.pairs)])
        models, fits = fit_models(name, data, info, args)
        results[name] = {
            "data": info,
            "epochs": args.epochs[name],
            "fits": fits,
            "analysis": analyse(name, models, data, pairs, args),
        }

    args.out.mkdir(parents=True, exist_ok=True)
    stem = "distance_stability_quick" if args.quick else "distance_stability"
    payload = {
        "script": "experiments/geometry/distance_stability.py",
        "settings": {
            "seeds": args.seeds,
            "pairs": args.pairs,
            "pair_seed": args.pair_seed,
            "epochs": args.epochs,
            "lr": args.lr,
            "n_points": args.n_points,
            "max_iter": args.max_iter,
            "method": "spline (6 nodes), L-BFGS",
            "normalise": "each model's distances / their mean over the pairs",
            "latent": "background (posterior means), decoder mu([z, 0]) at the median library",
            "threads": args.threads,
        },
        "platform": platform.platform(),
        "torch": torch.__version__,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "results": results,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    plot(results, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json/.png in {payload['total_seconds']} s")


if __name__ == "__main__":
    main()
