"""``pyro-compare``: command-line entry point (demo, fit)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "run_demo"]


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is None:
        threads = min(os.cpu_count() or 1, 4)
    torch.set_num_threads(max(1, threads))


def run_demo(
    out: str | Path = "pyro_compare_report", fast: bool = False, seed: int = 0, quiet=False
) -> dict:
    """Simulate contrastive data, fit a ContrastiveVAE, report recovery metrics and figures.

    Writes ``metrics.json``, ``history.csv``, ``loss_curves.png`` and ``latents.png`` into
    ``out`` and returns the metrics dict.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from . import plotting
    from .data import ComparativeData, simulate_contrastive
    from .infer import fit
    from .metrics import affine_r2, block_r2
    from .models import ContrastiveVAE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_cells = 600 if fast else 2000
    sim = dict(
        n_background=n_cells,
        n_target=n_cells,
        n_genes=200,
        n_background_latent=5,
        n_salient_latent=3,
        seed=seed,
    )
    adata = simulate_contrastive(**sim)
    data = ComparativeData.from_anndata(adata, condition_key="condition", background="background")
    model = ContrastiveVAE(data.n_features, n_background_latent=5, n_salient_latent=3)
    epochs = 15 if fast else 80
    history = fit(
        model, data, max_epochs=epochs, batch_size=128, lr=3e-3, seed=seed, progress=not quiet
    )
    z = model.latent(data, "background")
    t = model.latent(data, "salient")
    target = np.zeros(data.n_cells, dtype=bool)
    target[data.sources["target"]] = True
    true_z, true_t = adata.obsm["true_background"], adata.obsm["true_salient"]
    table = block_r2(
        {"true_background": true_z, "true_salient": true_t},
        {"learned_background": z, "learned_salient": t},
        subset={"true_salient": target},
    )
    metrics = {
        "r2_background_from_background": affine_r2(true_z, z),
        "r2_salient_from_salient": affine_r2(true_t[target], t[target]),
        "r2_salient_from_background": affine_r2(true_t[target], z[target]),
        "r2_background_from_salient": affine_r2(true_z, t),
        "block_r2": table.to_dict(),
        "epochs": int(len(history)),
        "seconds_per_epoch": float(history["seconds"].mean()),
        "final_validation_loss": float(history["validation_loss"].iloc[-1]),
        "simulation": sim,
        "fast": fast,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    history.to_csv(out / "history.csv", index=False)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    plotting.loss_curves(history, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    plotting.latent_scatter(z, true_z[:, 0], ax=axes[0], title="background latent, colour=true z0")
    plotting.latent_scatter(
        t[target], true_t[target, 0], ax=axes[1], title="salient latent (target), colour=true t0"
    )
    plotting.latent_scatter(
        t, adata.obs["condition"].to_numpy(), ax=axes[2], title="salient latent by source"
    )
    fig.tight_layout()
    fig.savefig(out / "latents.png", dpi=120)
    plt.close(fig)
    model.save(out / "model.pt")
    if not quiet:
        print("Recovery (held-out affine R^2, true block <- learned block):")
        print(table.round(3).to_string())
        print(f"\nreport written to {out.resolve()}")
    return metrics


def _fit_command(args: argparse.Namespace) -> None:
    import anndata as ad

    from . import tools
    from .infer import Sum

    adata = ad.read_h5ad(args.data)
    objective = None
    if args.salient_penalty > 0:
        objective = Sum(penalty="wasserstein_to_zero", penalty_weight=args.salient_penalty)
    model = tools.fit(
        adata,
        condition_key=args.condition_key,
        background=args.background,
        layer=args.layer,
        objective=objective,
        n_background_latent=args.n_background_latent,
        n_salient_latent=args.n_salient_latent,
        hidden=(args.hidden,),
        likelihood=args.likelihood,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    adata.write_h5ad(args.out)
    if args.save_model:
        model.save(args.save_model)
    print(f"wrote {args.out} (obsm: X_background, X_salient; uns: pyro_compare)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-compare", description="Comparative deep generative models in Pyro."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulate, fit, report recovery metrics and figures")
    demo.add_argument("--out", default="pyro_compare_report", help="report folder")
    demo.add_argument("--fast", action="store_true", help="small data, few epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=lambda a: run_demo(a.out, fast=a.fast, seed=a.seed))

    f = sub.add_parser("fit", help="fit a ContrastiveVAE to an .h5ad file")
    f.add_argument("data", help="input .h5ad with raw counts")
    f.add_argument("--condition-key", required=True, help="obs column with the condition")
    f.add_argument("--background", required=True, help="value of the background condition")
    f.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    f.add_argument("--out", required=True, help="output .h5ad")
    f.add_argument("--n-background-latent", type=int, default=10)
    f.add_argument("--n-salient-latent", type=int, default=10)
    f.add_argument("--hidden", type=int, default=128)
    f.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson", "gaussian"])
    f.add_argument("--max-epochs", type=int, default=200)
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument(
        "--salient-penalty",
        type=float,
        default=10.0,
        help="weight of the W2-to-zero term on background cells' salient codes (0: off)",
    )
    f.add_argument("--save-model", default=None, help="also save the model to this path")
    f.set_defaults(func=_fit_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-compare`` command."""
    args = build_parser().parse_args(argv)
    _set_threads(args.threads)
    from .data.validation import DataValidationError

    try:
        args.func(args)
    except DataValidationError as err:
        print(f"pyro-compare: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
