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
        # Under torchrun, the processes of one node share its cores.
        per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        threads = min((os.cpu_count() or 1) // per_node, 4)
    torch.set_num_threads(max(1, threads))


def _torchrun() -> bool:
    """Started by torchrun (or another launcher setting the torch.distributed environment)
    with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def run_demo(
    out: str | Path = "pyro_compare_report", fast: bool = False, seed: int = 0, quiet=False
) -> dict:
    """Simulate contrastive data, fit a ContrastiveVAE, report recovery metrics and figures.

    Writes ``metrics.json``, ``history.csv``, ``loss_curves.png``, ``constraint.png`` (the
    default objective's leakage constraint by epoch, :func:`~.plotting.constraint_trace`),
    ``latents.png`` and ``model.pt`` into ``out`` and returns the metrics dict.
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
        # the default objective's leakage constraint, checked on all cells at the end
        "constraints": history.attrs.get("constraints", []),
        "feasibility_epochs": history.attrs.get("feasibility_epochs", 0),
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
    if metrics["constraints"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        plotting.constraint_trace(history, ax=ax)
        fig.tight_layout()
        fig.savefig(out / "constraint.png", dpi=120)
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
        for c in metrics["constraints"]:
            verdict = "holds" if c["holds"] else "VIOLATED"
            print(
                f"leakage constraint {c['penalty']} <= {c['epsilon']:g} on all cells: "
                f"{c['value']:.4g} ({verdict})"
            )
        print(f"\nreport written to {out.resolve()}")
    return metrics


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already explains the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.required:
            return text
        return super()._get_help_string(action)


class _CLIError(Exception):
    """A problem with the command line or its files: reported as one line, exit status 2."""


def _check_input(path: Path) -> None:
    """Fail early unless ``path`` is a readable HDF5 (``.h5ad``) file."""
    if not path.exists():
        raise _CLIError(f"input file {str(path)!r} does not exist.")
    if path.is_dir():
        raise _CLIError(f"input {str(path)!r} is a directory; pass an .h5ad file.")
    if not os.access(path, os.R_OK):
        raise _CLIError(f"input file {str(path)!r} is not readable (permission denied).")
    import h5py

    if not h5py.is_hdf5(path):
        raise _CLIError(
            f"input file {str(path)!r} is not an .h5ad file (not HDF5); write it with "
            f"adata.write_h5ad(...)."
        )


def _check_output(path: Path, what: str) -> None:
    """Fail early unless ``path`` can be written (its folder exists or can be created)."""
    if path.is_dir():
        raise _CLIError(f"{what} {str(path)!r} is a directory; pass a file name.")
    if path.exists() and not os.access(path, os.W_OK):
        raise _CLIError(f"{what} {str(path)!r} exists and is not writable.")
    folder = path.absolute().parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _CLIError(f"cannot create the folder of {what} {str(path)!r}: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "folder" if existing == folder else "folder (to create it)"
        raise _CLIError(
            f"cannot write {what} {str(path)!r}: no write permission in {where} {existing}."
        )


def _check_device(device: str) -> bool:
    """Validate ``--device``; return whether ``pc.infer.fit`` takes a ``device`` argument."""
    import inspect

    import torch

    from .infer import fit

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise _CLIError(f"--device {device!r} is not a torch device ({err}).") from None
    if "device" not in inspect.signature(fit).parameters:
        if dev.type != "cpu":
            raise _CLIError(
                f"--device {device!r}: this version of pyro_compare fits on the CPU only."
            )
        return False
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _CLIError(f"--device {device!r}: CUDA is not available on this machine.")
    return True


def _read_input(path: Path):
    import anndata as ad

    try:
        return ad.read_h5ad(path)
    except Exception as err:  # h5py / anndata raise many types; the user needs one line.
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise _CLIError(f"cannot read {str(path)!r} as AnnData: {reason}") from None


def _write_h5ad(adata, path: Path) -> None:
    """Write ``adata`` to ``path`` through a temporary file in the same folder (atomic)."""
    import tempfile

    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5ad", prefix=f".{path.name}.", dir=path.absolute().parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_model(model, path: Path) -> None:
    path.absolute().parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def _fit_command(args: argparse.Namespace) -> None:
    """``fit``; under torchrun every process fits its shard (data-parallel, see
    :mod:`pyro_compare.infer.distributed`) and rank 0 writes the outputs."""
    if not _torchrun():
        _fit_one(args)
        return
    import torch.distributed as dist

    from .infer.distributed import init_process_group

    created = init_process_group(args.device)
    try:
        _fit_one(args, distributed=True, main=dist.get_rank() == 0)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _fit_one(args: argparse.Namespace, distributed: bool = False, main: bool = True) -> None:
    data_path, out = Path(args.data), Path(args.out)
    save_model = Path(args.save_model) if args.save_model else None
    _check_input(data_path)
    _check_output(out, "output")
    if save_model is not None:
        _check_output(save_model, "--save-model")
        if save_model.absolute() == out.absolute():
            raise _CLIError("--save-model and --out name the same file; pass two paths.")
    fit_kwargs = {}
    if _check_device(args.device):
        fit_kwargs["device"] = args.device
    if distributed:
        fit_kwargs["distributed"] = True
    objective = None
    if args.salient_penalty is not None:
        from .infer import Sum

        objective = Sum(penalty="wasserstein_to_zero", penalty_weight=args.salient_penalty)
    if args.model == "ContrastiveVAE":
        model_kwargs = {
            "n_background_latent": args.n_background_latent,
            "n_salient_latent": args.n_salient_latent,
        }
    else:
        if args.perturbation_key is None:
            raise _CLIError(f"--model {args.model} needs --perturbation-key.")
        model_kwargs = {"n_latent": args.n_latent}
    adata = _read_input(data_path)

    from . import tl

    model = tl.fit(
        adata,
        model=args.model,
        condition_key=args.condition_key,
        background=args.background,
        layer=args.layer,
        exclude=args.exclude,
        counts=args.counts,
        library_key=args.library_key,
        perturbation_key=args.perturbation_key,
        objective=objective,
        key_added=args.key_added,
        hidden=tuple(args.hidden),
        likelihood=args.likelihood,
        model_kwargs=model_kwargs,
        progress=args.progress,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        **fit_kwargs,
    )
    if not main:  # data-parallel: rank 0 writes the (identical) results
        return
    # The model first: if the h5ad cannot be written, the fit is not lost.
    if save_model is not None:
        try:
            _save_model(model, save_model)
        except OSError as err:
            raise _CLIError(f"cannot write --save-model {str(save_model)!r}: {err}") from None
    try:
        _write_h5ad(adata, out)
    except OSError as err:
        rescue = save_model
        if rescue is None:
            import tempfile

            rescue = Path(tempfile.gettempdir()) / f"pyro_compare_model_{os.getpid()}.pt"
            try:
                _save_model(model, rescue)
            except OSError:
                rescue = None
        kept = f"; the fitted model is in {rescue}" if rescue is not None else ""
        raise _CLIError(f"cannot write output {str(out)!r}: {err}{kept}") from None
    name = tl.DEFAULT_KEY if args.key_added is None else args.key_added
    keys = ", ".join(adata.uns[tl.UNS_KEY][name]["obsm_keys"].values())
    saved = f"; model: {save_model}" if save_model is not None else ""
    print(f"wrote {out} (obsm: {keys}; uns: {tl.UNS_KEY}[{name!r}]{saved})")


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-compare`` argument parser (every option with its help and default)."""
    from .tl.fitting import MODEL_NAMES

    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="pyro-compare",
        description="Comparative deep generative models in Pyro.",
        formatter_class=fmt,
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: min(cores, 4); under torchrun: min(cores / processes "
        "per node, 4))",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="simulate, fit, report recovery metrics and figures", formatter_class=fmt
    )
    demo.add_argument("--out", default="pyro_compare_report", help="report folder")
    demo.add_argument("--fast", action="store_true", help="small data, few epochs")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and the fit")
    demo.set_defaults(func=lambda a: run_demo(a.out, fast=a.fast, seed=a.seed))

    f = sub.add_parser(
        "fit",
        help="fit a comparative model to an .h5ad file",
        description="Fit a comparative model to an .h5ad file; write its latents to obsm and "
        "its settings and history to uns['pyro_compare'] of the output .h5ad. The input, "
        "output and --save-model paths are checked before training. Data-parallel on N "
        "processes: `torchrun --nproc-per-node N -m pyro_compare.cli fit ...` (--batch-size "
        "is then the global batch; rank 0 writes the outputs).",
        formatter_class=fmt,
    )
    f.add_argument("data", help="input .h5ad (raw counts in X or --layer)")
    f.add_argument("--out", required=True, help="output .h5ad (its folder is created if needed)")
    f.add_argument("--condition-key", required=True, help="obs column with each cell's condition")
    f.add_argument("--background", required=True, help="value of the background condition")
    f.add_argument("--layer", default=None, help="layer with the data (default: X)")
    f.add_argument(
        "--exclude", nargs="+", default=[], help="condition values whose cells are left out"
    )
    f.add_argument(
        "--library-key", default=None, help="obs column with library sizes (default: row sums)"
    )
    f.add_argument(
        "--perturbation-key",
        default=None,
        help="obs column naming each cell's perturbation(s) (perturbation models)",
    )
    f.add_argument("--model", default="ContrastiveVAE", choices=MODEL_NAMES, help="model class")
    f.add_argument(
        "--n-background-latent", type=int, default=10, help="ContrastiveVAE: background latent dims"
    )
    f.add_argument(
        "--n-salient-latent", type=int, default=10, help="ContrastiveVAE: salient latent dims"
    )
    f.add_argument("--n-latent", type=int, default=10, help="perturbation models: latent dims")
    f.add_argument(
        "--hidden", type=int, nargs="+", default=[128], help="hidden layer widths of the networks"
    )
    f.add_argument(
        "--likelihood",
        default="nb",
        choices=["nb", "zinb", "poisson", "gaussian"],
        help="observation model (gaussian: continuous data, implies --no-counts)",
    )
    f.add_argument(
        "--counts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="validate the data as raw counts (default: yes for nb/zinb/poisson, no for "
        "gaussian); --no-counts for normalised or continuous data with --likelihood gaussian",
    )
    f.add_argument(
        "--key-added",
        default=None,
        help="name of the fit: obsm X_<key>_<kind> and uns['pyro_compare'][<key>] (default: "
        "obsm X_<kind> and uns['pyro_compare']['default'])",
    )
    f.add_argument("--max-epochs", type=int, default=200, help="maximum number of epochs")
    f.add_argument("--batch-size", type=int, default=128, help="cells per minibatch")
    f.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    f.add_argument("--seed", type=int, default=0, help="seed of the split, init and minibatches")
    f.add_argument(
        "--device",
        default="cpu",
        help="torch device to fit on (under torchrun, cuda is each process's own GPU)",
    )
    f.add_argument(
        "--salient-penalty",
        type=float,
        default=None,
        help="instead of the model's default objective (for the contrastive VAE: W2 weight "
        "10 and a within-cluster leakage constraint), fit the negative ELBO plus this weight "
        "times the W2-to-zero penalty on background cells' salient codes, unconstrained",
    )
    f.add_argument("--save-model", default=None, help="also save the fitted model to this path")
    f.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="progress bar on a terminal, a line every few epochs otherwise",
    )
    f.set_defaults(func=_fit_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-compare`` command; returns the exit status.

    Problems with the command line, its files or the input data are reported as one line
    ``pyro-compare: error: ...`` on stderr with status 2, before any training.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, printed)
        return int(exit_.code or 0)
    _set_threads(args.threads)
    from .data.validation import DataValidationError

    try:
        args.func(args)
    except (_CLIError, DataValidationError) as err:
        message = " ".join(str(err).split())
        if isinstance(err, DataValidationError) and "counts=False" in message:
            message += " On the command line: --likelihood gaussian (implies --no-counts)."
        print(f"pyro-compare: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
