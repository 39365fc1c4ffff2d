"""Memory and speed of in-memory vs streamed (on-disk) data at 10k / 100k / 1M cells (issue 15).

Simulated contrastive counts (2,000 genes, ~7 % non-zero, like Kang) are written to
``.h5ad`` files in a cache folder (chunk by chunk, through anndata's ``write_elem`` and
backed-sparse ``append``: the dense matrix is never built; existing files are reused). Each
configuration runs in its own subprocess, which reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``), the time to build ``ComparativeData`` (the loading /
streaming pass), cells/s over a fixed number of SVI steps (after a warm-up) and the share of
step time spent fetching the minibatch from the loader, each from wall-clock time and from
the process's CPU time (``time.process_time``: user + system time of this process only,
the fair measure on a shared machine; the file is in the page cache after writing, so
reads cost CPU, not disk waits). The perturbation case builds a
sparse design with 10,000 perturbations at the largest size and fits a few steps of
``AdditiveShiftVAE`` on the streamed data.

    OMP_NUM_THREADS=1 python benchmarks/scale.py --sizes 10000 100000 1000000 --steps 300

Prints one JSON document (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_GENES = 2000
N_PERTURBATIONS = 10_000
CHUNK = 4096


# ---------------------------------------------------------------------------- data on disk
def _simulator(seed: int = 0):
    """A fixed low-rank NB-ish generator: background latent z (5), salient t (2) on targets."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 3.4, N_GENES)
    w_z = rng.normal(0.0, 0.6, (5, N_GENES))
    w_t = rng.normal(0.0, 0.8, (2, N_GENES)) * (rng.random(N_GENES) < 0.1)
    return base, w_z, w_t


def write_counts(path: Path, n_cells: int, seed: int = 0) -> dict:
    """Write ``n_cells`` x 2,000 simulated counts (CSR) to ``path`` chunk by chunk."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    base, w_z, w_t = _simulator(seed)
    rng = np.random.default_rng(seed + 1)
    condition = np.where(rng.random(n_cells) < 0.5, "background", "target")
    pert = np.where(
        rng.random(n_cells) < 0.1,
        "ctrl",
        "P" + rng.integers(0, N_PERTURBATIONS, n_cells).astype(str),
    )
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(condition),
            "perturbation": pd.Categorical(pert),
        },
        index=pd.Index(np.arange(n_cells).astype(str)),
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
    tmp = path.with_suffix(".part")
    t0 = time.perf_counter()
    nnz = 0
    with h5py.File(tmp, "w") as f:
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", var)
        for start in range(0, n_cells, CHUNK):
            n = min(CHUNK, n_cells - start)
            z = rng.normal(size=(n, 5))
            t = rng.normal(size=(n, 2)) * (condition[start : start + n] == "target")[:, None]
            logits = base + z @ w_z + t @ w_t
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            lib = rng.lognormal(np.log(1000.0), 0.3, n)
            x = rng.poisson(lib[:, None] * p).astype(np.float32)
            x[:, 0] += 1  # no empty cell
            block = sp.csr_matrix(x)
            nnz += block.nnz
            if start == 0:
                ad.io.write_elem(f, "X", block)
            else:
                ad.io.sparse_dataset(f["X"]).append(block)
        for key in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            ad.io.write_elem(f, key, {})
    os.replace(tmp, path)
    return {"seconds": time.perf_counter() - t0, "nnz_fraction": nnz / (n_cells * N_GENES)}


def ensure_file(cache: Path, n_cells: int) -> tuple[Path, dict]:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"scale_{n_cells}.h5ad"
    if path.exists():
        return path, {"reused": True, "bytes": path.stat().st_size}
    info = write_counts(path, n_cells)
    info.update(reused=False, bytes=path.stat().st_size)
    return path, info


# ---------------------------------------------------------------------------- one configuration
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO

    import pyro_compare as pc

    torch.set_num_threads(1)
    out: dict = {"mode": args.mode, "n_cells": args.n_cells, "rss_after_import_mb": _rss_mb()}
    t0 = time.perf_counter()
    if args.mode == "memory":
        import anndata as ad

        source = ad.read_h5ad(args.path)
    else:
        source = args.path
    if args.perturbation:
        data = pc.data.ComparativeData.from_anndata(
            source, "perturbation", "ctrl", perturbation_key="perturbation"
        )
        d = data.design
        out["n_perturbations"] = data.n_perturbations
        out["design_mb"] = (d.data.nbytes + d.indices.nbytes + d.indptr.nbytes) / 2**20
        out["dense_design_mb"] = data.n_cells * data.n_perturbations * 4 / 2**20
        model = pc.models.AdditiveShiftVAE(
            data.n_features, data.n_perturbations, n_latent=10, hidden=(128,)
        )
    else:
        data = pc.data.ComparativeData.from_anndata(source, "condition", "background")
        model = pc.models.ContrastiveVAE(data.n_features, 10, 5)
    del source
    out["build_seconds"] = time.perf_counter() - t0
    out["rss_after_build_mb"] = _rss_mb()
    out["streamed"] = data.streamed
    out["block_size"] = data.block_size
    pyro.set_rng_seed(0)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    epoch = 0
    batches = iter(data.loader(args.batch_size, seed=epoch))
    load = compute = cpu_load = cpu_compute = 0.0
    cells = 0
    for step in range(args.warmup + args.steps):
        a, ca = time.perf_counter(), time.process_time()
        try:
            batch = next(batches)
        except StopIteration:
            epoch += 1
            batches = iter(data.loader(args.batch_size, seed=epoch))
            batch = next(batches)
        b, cb = time.perf_counter(), time.process_time()
        svi.step(batch)
        c, cc = time.perf_counter(), time.process_time()
        if step >= args.warmup:
            load += b - a
            compute += c - b
            cpu_load += cb - ca
            cpu_compute += cc - cb
            cells += sum(s.size for s in batch.values())
    out.update(
        steps=args.steps,
        batch_size=args.batch_size,
        cells_per_step=cells / args.steps,
        seconds_per_step=(load + compute) / args.steps,
        cells_per_s=cells / (load + compute),
        loading_share=load / (load + compute),
        loading_ms_per_step=1000 * load / args.steps,
        # CPU time of this process (user + system): robust to other processes on the cores
        cpu_cells_per_s=cells / (cpu_load + cpu_compute),
        cpu_loading_share=cpu_load / (cpu_load + cpu_compute),
        cpu_loading_ms_per_step=1000 * cpu_load / args.steps,
        peak_rss_mb=_peak_mb(),
    )
    return out


def run_child(path: Path, mode: str, n_cells: int, args, perturbation: bool = False) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--path",
        str(path),
        "--mode",
        mode,
        "--n-cells",
        str(n_cells),
        "--steps",
        str(args.perturbation_steps if perturbation else args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
    ] + (["--perturbation"] if perturbation else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"mode": mode, "n_cells": n_cells, "error": proc.stderr[-2000:]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t0
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def _ratio(a, b):
    return None if a is None or b is None else a / b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--modes", nargs="+", default=["memory", "streamed"])
    parser.add_argument("--memory-max", type=int, default=1_000_000, help="largest in-memory size")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--perturbation-steps", type=int, default=30)
    parser.add_argument("--no-perturbation", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pyro_compare_scale"))
    parser.add_argument("--out", type=Path, default=None)
    # internal: one configuration in a subprocess
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    parser.add_argument("--n-cells", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--perturbation", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    report: dict = {"n_genes": N_GENES, "files": {}, "runs": [], "perturbation": None}
    for n in sorted(args.sizes):
        path, info = ensure_file(args.cache, n)
        report["files"][str(n)] = info
        print(json.dumps({"file": str(path), **info}), file=sys.stderr, flush=True)
        for mode in args.modes:
            if mode == "memory" and n > args.memory_max:
                continue
            report["runs"].append(run_child(path, mode, n, args))
    if not args.no_perturbation:
        n = max(args.sizes)
        path, _ = ensure_file(args.cache, n)
        report["perturbation"] = run_child(path, "streamed", n, args, perturbation=True)

    def get(mode, n, key):
        for r in report["runs"]:
            if r.get("mode") == mode and r.get("n_cells") == n:
                return r.get(key)
        return None

    small, mid, big = min(args.sizes), 100_000, max(args.sizes)
    report["goals"] = {
        "note": "cells/s ratios from CPU time (process_time), robust to a shared machine",
        "streamed_peak_rss_big_over_small (<= 1.5)": _ratio(
            get("streamed", big, "peak_rss_mb"), get("streamed", small, "peak_rss_mb")
        ),
        "streamed_over_memory_cells_per_s_at_100k (>= 0.7)": _ratio(
            get("streamed", mid, "cpu_cells_per_s"), get("memory", mid, "cpu_cells_per_s")
        ),
        "streamed_cells_per_s_big_over_small (>= 0.8)": _ratio(
            get("streamed", big, "cpu_cells_per_s"), get("streamed", small, "cpu_cells_per_s")
        ),
        "sizes": [small, mid, big],
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
