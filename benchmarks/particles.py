"""Cost of K ELBO particles per training step and per epoch: vectorised vs looped vs one.

On the Papalexi et al. (2021) CRISPR screen (``unassigned`` cells dropped, control =
``non-targeting``, an 80 % stratified cell split for training) this builds one perturbation
model (SAMSVAE by default: 20 latents, one hidden layer of 400) per configuration, all from
the same initial parameters, and times the training step of ``pc.infer.fit``:

* ``1 particle``: ``SourceTrace_ELBO()``,
* ``K vectorised``: ``SourceTrace_ELBO(num_particles=K, vectorize_particles=True)`` (one
  batched pass over the K particles, what ``fit(num_particles=K)`` uses),
* ``K looped``: ``SourceTrace_ELBO(num_particles=K, vectorize_particles=False)``.

A step is the one of ``fit``: next minibatch from ``data.loader``, ``elbo.source_terms(...)
.scaled(1 / n_train)``, ``pc.infer.Sum()`` objective, backward, gradient clipping (norm
10, as ``fit``'s default), Adam step, under ``pyro.validation_enabled(False)``. Each
configuration runs ``--warmup`` untimed steps then ``--steps`` timed ones; the rounds are
interleaved over configurations and repeated ``--repeats`` times so machine noise hits all
alike, and the median seconds per step is extrapolated to seconds per epoch (steps per
epoch at ``--batch-size`` times seconds per step; validation not included).

The JSON reports ``seconds_per_epoch`` per configuration, ``ratio`` (K vectorised / one
particle), ``loop_ratio`` (K looped / one particle), ``vectorised_speedup_over_loop`` and
``meets_2_6_s`` (K vectorised seconds per epoch <= 2.6; the target is stated for SAMSVAE,
K=5, batch 512, 2 threads on CPU).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/particles.py [--model SAMSVAE]
        [--particles 5] [--threads 2] [--batch-size 512] [--steps 15] [--warmup 3]
        [--repeats 2] [--device cpu] [--data PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import pyro
import torch

import pyro_compare as pc
from pyro_compare.data.sources import sources_to
from pyro_compare.infer.elbo import SourceTrace_ELBO

MODELS = ("SAMSVAE", "AdditiveShiftVAE", "SparseShiftVAE", "ConditionalVAE")


def load(path: Path, validation_fraction: float, seed: int) -> pc.data.ComparativeData:
    data = pc.data.papalexi2021(path)
    data.set_split(pc.data.split_by_cell(data, validation_fraction, seed=seed))
    return data


def build(name: str, data: pc.data.ComparativeData, n_latent: int, hidden: tuple[int, ...]):
    cls = getattr(pc.models, name)
    return cls(data.n_features, data.n_perturbations, n_latent=n_latent, hidden=hidden)


class Runner:
    """One configuration: its own model copy, ELBO, Adam optimiser and minibatch stream."""

    def __init__(self, model, data, elbo, batch_size, lr, seed, device) -> None:
        self.model, self.data, self.elbo = model, data, elbo
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.objective = pc.infer.Sum()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.objective.setup(model, self.params)
        self.optimizer = torch.optim.Adam(self.params + self.objective.parameters(), lr=lr)
        self.n_train = sum(len(i) for i in data.indices("train").values())
        self.epoch = 0
        self.batches = self._epoch()
        model.train()

    def _epoch(self):
        self.epoch += 1
        return iter(self.data.loader(self.batch_size, split="train", seed=self.seed + self.epoch))

    def step(self) -> None:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = self._epoch()
            batch = next(self.batches)
        if self.device is not None:
            batch = sources_to(batch, self.device)
        terms = self.elbo.source_terms(self.model.model, self.model.guide, batch)
        terms = terms.scaled(1 / self.n_train)
        loss, log = self.objective(terms)
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss in the benchmark")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 10.0)
        self.optimizer.step()
        self.objective.after_step(log)

    def timed(self, warmup: int, steps: int) -> float:
        """Median seconds per step over ``steps`` steps after ``warmup`` untimed ones."""
        for _ in range(warmup):
            self.step()
        sync = torch.cuda.synchronize if str(self.device).startswith("cuda") else None
        times = []
        for _ in range(steps):
            if sync:
                sync()
            t0 = time.perf_counter()
            self.step()
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="SAMSVAE")
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-latent", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    parser.add_argument("--data", type=Path, default=None, help="Papalexi .h5ad")
    args = parser.parse_args()
    if args.particles < 2:
        parser.error("--particles must be at least 2")

    torch.set_num_threads(args.threads)
    path = args.data or pc.data.dataset_path(pc.data.PAPALEXI2021)
    data = load(path, 0.2, args.seed)
    torch.manual_seed(args.seed)
    base = build(args.model, data, args.n_latent, tuple(args.hidden))
    data = base.prepare_data(data)
    base.bind_features(data)
    if args.device is not None:
        base.to(args.device)

    k = args.particles
    configs = {
        "1": SourceTrace_ELBO(),
        f"{k}_vectorised": SourceTrace_ELBO(num_particles=k, vectorize_particles=True),
        f"{k}_looped": SourceTrace_ELBO(num_particles=k, vectorize_particles=False),
    }
    runners = {
        name: Runner(
            copy.deepcopy(base), data, elbo, args.batch_size, args.lr, args.seed, args.device
        )
        for name, elbo in configs.items()
    }
    per_step: dict[str, list[float]] = {name: [] for name in configs}
    torch.manual_seed(args.seed)
    with pyro.validation_enabled(False):
        for _ in range(args.repeats):
            for name, runner in runners.items():
                per_step[name].append(runner.timed(args.warmup, args.steps))

    n_train = sum(len(i) for i in data.indices("train").values())
    steps_per_epoch = max(1, -(-n_train // args.batch_size))
    s_step = {name: statistics.median(v) for name, v in per_step.items()}
    s_epoch = {name: s * steps_per_epoch for name, s in s_step.items()}
    one, vec, loop = s_epoch["1"], s_epoch[f"{k}_vectorised"], s_epoch[f"{k}_looped"]
    device = str(args.device or "cpu")
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    result = {
        "model": args.model,
        "particles": k,
        "device": device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "n_train": n_train,
        "steps_per_epoch": steps_per_epoch,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "seconds_per_step": {n: round(s, 5) for n, s in s_step.items()},
        "seconds_per_step_per_repeat": {n: [round(s, 5) for s in v] for n, v in per_step.items()},
        "seconds_per_epoch": {n: round(s, 3) for n, s in s_epoch.items()},
        "ratio": round(vec / one, 3),
        "loop_ratio": round(loop / one, 3),
        "vectorised_speedup_over_loop": round(loop / vec, 3),
        "meets_2_6_s": bool(vec <= 2.6),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
