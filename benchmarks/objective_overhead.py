"""Time per training step of the objectives relative to the plain sum, on one model and data.

Each step is what ``fit`` does: per-source terms (``SourceTrace_ELBO.source_terms``,
scaled by 1 / training cells), the objective on them, backward, Adam, then the objective's
``after_step`` (e.g. the dual update of ``Constrained``). Objectives are timed in
interleaved rounds (so a busy machine slows them all alike) and the median seconds per step
is reported. Prints JSON with ``*_ratio`` keys (objective time / ``Sum`` time); the target
for two objectives is <= 1.5.

    OMP_NUM_THREADS=1 python benchmarks/objective_overhead.py [--genes 2000] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import pyro_compare as pc
from pyro_compare.infer import Constrained, MultiObjective, SourceTrace_ELBO, Sum


def objectives() -> dict[str, pc.infer.Objective]:
    dual = dict(update="multiplicative", lambda_init=1.0, dual_lr=0.05)
    return {
        "sum": Sum(),
        "mgda": MultiObjective(),  # shared = decoder (MGDA-UB style)
        "mgda_all_params": MultiObjective(shared="all"),
        "constrained": Constrained("mmd", epsilon=0.01, **dual),
        "constrained_w2": Constrained("wasserstein_to_zero", epsilon=0.05, **dual),
        "mo_constrained": Constrained("mmd", epsilon=0.01, elbo=MultiObjective(), **dual),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--cells", type=int, default=1000, help="cells per source")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adata = pc.data.simulate_contrastive(args.cells, args.cells, args.genes, 10, 5, seed=0)
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "background")
    batches = list(data.loader(args.batch_size, seed=0))
    elbo = SourceTrace_ELBO()
    n_train = sum(len(i) for i in data.indices("train").values())

    setups = {}
    for name, objective in objectives().items():
        torch.manual_seed(0)
        model = pc.models.ContrastiveVAE(data.n_features, 10, 10, hidden=(128,))
        params = [p for p in model.parameters() if p.requires_grad]
        objective.setup(model, params)
        optimizer = torch.optim.Adam(params + objective.parameters(), lr=1e-3)
        setups[name] = (model, objective, optimizer)

    def run(name: str, n: int) -> float:
        model, objective, optimizer = setups[name]
        t0 = time.perf_counter()
        for i in range(n):
            batch = batches[i % len(batches)]
            terms = elbo.source_terms(model.model, model.guide, batch).scaled(1 / n_train)
            loss, log = objective(terms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step(log)
        return (time.perf_counter() - t0) / n

    for name in setups:  # warm-up
        run(name, 2)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name in setups:
            times[name].append(run(name, args.steps))
    median = {name: statistics.median(v) for name, v in times.items()}
    out = {
        "benchmark": "objective_overhead",
        "model": "ContrastiveVAE(n_features, 10, 10, hidden=(128,))",
        "genes": args.genes,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        **{f"{name}_seconds_per_step": round(t, 5) for name, t in median.items()},
        **{
            f"{name}_ratio": round(t / median["sum"], 3)
            for name, t in median.items()
            if name != "sum"
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
