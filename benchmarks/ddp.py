"""Data-parallel fitting: 1 process vs 2 processes (torch.distributed, gloo on CPU).

Simulated contrastive counts (``pc.data.simulate_contrastive``), a ContrastiveVAE, the same
global batch and seed in every configuration, ``--epochs`` epochs of ``pc.infer.fit``
(``validation=False``, no early stopping: the same steps everywhere). Configurations:

* ``1 process x 1 thread``: the baseline, ``fit(..., distributed=False)``;
* ``1 process x T threads`` (T = ``--threads``): the same machine's cores through intra-op
  threads instead of processes;
* ``2 processes x 1 thread``: ``fit`` under a gloo process group of 2 ranks started with
  ``torch.multiprocessing.spawn`` (what ``torchrun --nproc-per-node 2`` gives), each rank
  fitting half of every minibatch and all-reducing its gradients.

Every configuration runs in fresh processes (``spawn``), one after the other.
``seconds_per_epoch`` is the median over the epochs after the first (rank 0's clock), the
``speedup`` of a configuration is the baseline's seconds per epoch over its own, and the
``efficiency`` of the 2-process run is its speedup / 2; the ``_min`` variants use the
fastest epoch instead (less sensitive to other work on the machine, whose load average is
recorded before and after). Also reported: the seconds of one
gradient all-reduce of the model's size (median of 50, 2 ranks), to separate communication
from compute.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/ddp.py [--cells 2000] [--genes 500]
        [--batch-size 256] [--epochs 4] [--threads 2] [--hidden 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, threads: int, args: dict, out: str) -> None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    torch.set_num_threads(threads)
    import pyro_compare as pc
    from pyro_compare.infer.distributed import all_reduce_gradients

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        adata = pc.data.simulate_contrastive(
            args["cells"], args["cells"], args["genes"], 5, 3, seed=0
        )
        data = pc.data.ComparativeData.from_anndata(adata, "condition", "background")
        model = pc.models.ContrastiveVAE(data.n_features, 5, 3, hidden=(args["hidden"],))
        history = pc.infer.fit(
            model,
            data,
            # the objective these timings were first measured with (the contrastive default
            # before issue 13's within-cluster constraint), kept for comparability
            objective=pc.infer.Sum(penalty="wasserstein_to_zero", penalty_weight=10.0),
            max_epochs=args["epochs"],
            batch_size=args["batch_size"],
            seed=0,
            validation=False,
            early_stopping=False,
            progress=False,
            distributed=world > 1,
        )
        result = {
            "seconds_per_epoch": statistics.median(history["seconds"].iloc[1:]),
            "seconds_per_epoch_min": float(history["seconds"].iloc[1:].min()),
            "epochs": list(history["seconds"]),
            "steps_per_epoch": data.n_steps(args["batch_size"]),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_train_loss": float(history["train_loss"].iloc[-1]),
        }
        if world > 1:
            params = list(model.parameters())
            for p in params:
                p.grad = torch.randn_like(p)
            times = []
            for _ in range(50):
                t0 = time.perf_counter()
                all_reduce_gradients(params)
                times.append(time.perf_counter() - t0)
            result["allreduce_seconds"] = statistics.median(times)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(world: int, threads: int, args: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_run, args=(world, _free_port(), threads, args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=2000, help="cells per source")
    parser.add_argument("--genes", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process run")
    parser.add_argument("--hidden", type=int, default=128)
    a = parser.parse_args()
    args = vars(a)
    configs = {
        "1 process x 1 thread": (1, 1),
        f"1 process x {a.threads} threads": (1, a.threads),
        "2 processes x 1 thread": (2, 1),
    }
    load_before = os.getloadavg()[0]
    results = {name: run(world, threads, args) for name, (world, threads) in configs.items()}
    base = results["1 process x 1 thread"]
    for r in results.values():
        r["speedup"] = base["seconds_per_epoch"] / r["seconds_per_epoch"]
        r["speedup_min"] = base["seconds_per_epoch_min"] / r["seconds_per_epoch_min"]
    two = results["2 processes x 1 thread"]
    two["efficiency"] = two["speedup"] / 2
    two["efficiency_min"] = two["speedup_min"] / 2
    report = {
        "settings": args,
        "cpu_count": os.cpu_count(),
        # Other work on the machine distorts these timings: the 1-minute load average
        # before and after the runs.
        "load_average": [load_before, os.getloadavg()[0]],
        "torch": torch.__version__,
        "configurations": results,
        "ddp_speedup": two["speedup"],
        "ddp_efficiency": two["efficiency"],
        # Fastest epoch of each configuration: less sensitive to other work on the machine.
        "ddp_speedup_min": two["speedup_min"],
        "ddp_efficiency_min": two["efficiency_min"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
