"""Data-parallel fits on torch.distributed: 2 gloo processes on CPU against 1 process.

The ELBO's reparameterised noise is switched off (every Normal sample is its mean) in both
the 2-process and the 1-process fits, so that the comparison tests the distributed algebra
(sharding, plate scaling, gradient averaging, MGDA weights, the multiplier) and not the
random numbers: with noise, N ranks draw different noise for their cells than one process
for the same cells, and no bit-for-bit comparison is possible.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro_compare as pc
from pyro_compare.data import ComparativeData, simulate_contrastive
from pyro_compare.infer import Constrained, MultiObjective, Sum, evaluate_losses, fit
from pyro_compare.infer.distributed import DataParallel, reduce_mean, shard_batch
from pyro_compare.models import ContrastiveVAE

WORLD = 2
EPOCHS = 3
BATCH = 50  # uneven per-source shares: exercises the per-rank weights of uneven shards
LAMBDA0 = 2.0


@contextlib.contextmanager
def _no_noise():
    """Every reparameterised Normal sample is its mean: a deterministic ELBO."""
    original = torch.distributions.Normal.rsample

    def mean_sample(self, sample_shape=()):
        return self.loc.expand(self._extended_shape(torch.Size(sample_shape))).clone()

    torch.distributions.Normal.rsample = mean_sample
    try:
        yield
    finally:
        torch.distributions.Normal.rsample = original


def _data():
    adata = simulate_contrastive(90, 70, 20, 2, 1, seed=3, library_mean=300)
    return ComparativeData.from_anndata(adata, "condition", "background")


def _model(data):
    return ContrastiveVAE(data.n_features, 2, 1, hidden=(16,))


def _salient_mean_penalty(terms):
    """A nonlinear penalty: squared norm of the mean salient location of background cells."""
    return terms.guide_values("t_loc", "background").mean(0).pow(2).sum()


def _shard_mean_penalty(terms):
    """The same penalty averaged over the 2 ranks' shards (rows r::2 of the batch)."""
    values = terms.guide_values("t_loc", "background")
    return sum(values[r::WORLD].mean(0).pow(2).sum() for r in range(WORLD)) / WORLD


def _objectives(penalty):
    return {
        "sum": Sum(),
        "multi": MultiObjective(),
        "constrained": Constrained(
            penalty=penalty, epsilon=1e-4, lambda_init=LAMBDA0, dual_lr=50.0, slack=0.0
        ),
    }


def _flat(model):
    return torch.cat([v.detach().reshape(-1).double() for v in model.state_dict().values()])


def _run_fits(objectives, ckpt: Path | None = None, **kw):
    data = _data()
    out = {}
    for name, objective in objectives.items():
        model = _model(data)
        fit(
            model,
            data,
            objective=objective,
            max_epochs=EPOCHS,
            batch_size=BATCH,
            seed=1,
            lr=1e-2,
            validation=False,
            early_stopping=False,
            progress=False,
            **kw,
        )
        out[name] = _flat(model)
        if isinstance(objective, Constrained):
            out[f"{name}_lambda"] = torch.tensor(objective.lambda_, dtype=torch.float64)
    if ckpt is not None:
        # Resume: 2 epochs with checkpoints, then a new process state resuming to EPOCHS.
        model = _model(data)
        fit(model, data, max_epochs=2, checkpoint_dir=ckpt, **_resume_kw(kw))
        resumed = _model(data)
        fit(resumed, data, max_epochs=EPOCHS, checkpoint_dir=ckpt, resume=True, **_resume_kw(kw))
        out["resumed"] = _flat(resumed)
    return out


def _resume_kw(kw):
    return dict(
        objective=Sum(),
        batch_size=BATCH,
        seed=1,
        lr=1e-2,
        validation=False,
        early_stopping=False,
        progress=False,
        **kw,
    )


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        assert DataParallel.resolve(None).active
        with _no_noise():
            out = _run_fits(_objectives(_salient_mean_penalty), ckpt=Path(out_dir) / "ckpt")
        # reduce_mean averages over ranks.
        out["mean_rank"] = reduce_mean(torch.tensor([float(rank)], dtype=torch.float64))
        # Epoch logs: averaged over the ranks that have each key (callbacks may differ).
        logs = DataParallel.resolve(None).mean_dict({"a": float(rank), f"only{rank}": 2.0})
        out["logs"] = torch.tensor([logs[k] for k in ("a", "only0", "only1")])
        # Validation losses: each rank evaluates its shards, the sums are averaged.
        data = _data()
        torch.manual_seed(0)  # the same model on every rank
        model = _model(data)
        with _no_noise():
            shared = evaluate_losses(model, data, "validation", 40, distributed=True)
            alone = evaluate_losses(model, data, "validation", 40)
        out["validation"] = torch.tensor([shared[k] for k in sorted(alone)], dtype=torch.float64)
        out["validation_alone"] = torch.tensor(
            [alone[k] for k in sorted(alone)], dtype=torch.float64
        )
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return ranks, out_dir


@pytest.fixture(scope="module")
def one_process():
    with _no_noise():
        return _run_fits(_objectives(_shard_mean_penalty))


def _close(a, b, rtol=1e-4):
    return float((a - b).norm()) <= rtol * float(a.norm())


def test_reduce_mean_and_identical_ranks(two_process):
    ranks, out_dir = two_process
    assert float(ranks[0]["mean_rank"]) == float(ranks[1]["mean_rank"]) == 0.5
    for r in ranks:
        assert r["logs"].tolist() == [0.5, 2.0, 2.0]
    for key in ("sum", "multi", "constrained", "constrained_lambda", "resumed"):
        # Identical averaged gradients on every rank: identical parameters, bit for bit.
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert (out_dir / "ckpt" / "checkpoint.pt").exists()


@pytest.mark.parametrize("objective", ["sum", "multi", "constrained"])
def test_two_processes_equal_one_process(two_process, one_process, objective):
    """Same global batch: the 2-process parameters are those of the 1-process fit (for
    Constrained with a nonlinear penalty: the 1-process fit whose penalty is averaged over the
    same 2 shards of each batch, the equivalence that holds; see infer/distributed.py)."""
    ranks, _ = two_process
    a, b = one_process[objective], ranks[0][objective]
    assert _close(a, b), float((a - b).norm() / a.norm())
    if objective == "constrained":
        lam1, lam2 = float(one_process["constrained_lambda"]), float(ranks[0]["constrained_lambda"])
        assert lam2 != LAMBDA0  # the dual step moved it
        assert abs(lam1 - lam2) <= 1e-4 * abs(lam1)


def test_validation_losses_distributed(two_process):
    """Sharded evaluation averaged over ranks = one process evaluating every batch whole."""
    ranks, _ = two_process
    for r in ranks:
        torch.testing.assert_close(r["validation"], r["validation_alone"], rtol=1e-5, atol=0)


def test_resume_distributed(two_process):
    ranks, _ = two_process
    assert _close(ranks[0]["sum"], ranks[0]["resumed"], rtol=1e-6)


def test_shard_batch_takes_rows_and_keeps_n():
    data = _data()
    batch = next(iter(data.loader(BATCH, seed=0)))
    parts = [shard_batch(batch, r, WORLD) for r in range(WORLD)]
    for s, src in batch.items():
        rows = torch.cat([p[s].index_n for p in parts])
        assert sorted(rows.tolist()) == sorted(src.index_n.tolist())
        assert all(p[s].n == src.n for p in parts)
        torch.testing.assert_close(parts[1][s].x_ng, src.x_ng[1::WORLD])


def test_without_process_group_is_one_process():
    ctx = DataParallel.resolve(None)
    assert not ctx.active and ctx.rank == 0 and ctx.world_size == 1
    t = torch.tensor([1.5, 2.0])
    torch.testing.assert_close(reduce_mean(t), t)
    with pytest.raises(RuntimeError, match="torchrun"):
        env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}
        try:
            fit(_model(_data()), _data(), distributed=True, max_epochs=1, progress=False)
        finally:
            os.environ.update(env)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_and_predictions_on_cuda():
    data = _data()
    model = _model(data)
    fit(model, data, max_epochs=2, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    z = model.latent(data, "background")
    assert z.shape == (data.n_cells, 2)
    pp = model.posterior_predictive(data, num_samples=2)
    assert all(v.device.type == "cpu" for v in pp.values())
    prior = model.prior_predictive(data, num_samples=2)
    assert all(v.device.type == "cpu" for v in prior.values())
    assert pc.infer.evaluate_losses(model, data, device="cuda")["loss"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_perturbation_predictions_on_cuda():
    sim = pc.data.simulate_sparse_shift(
        n_control=100,
        n_per_perturbation=50,
        n_perturbations=2,
        n_genes=20,
        n_latent=2,
        max_targets=2,
        seed=0,
    )
    data = ComparativeData.from_anndata(
        sim, "perturbation", "control", perturbation_key="perturbation"
    )
    model = pc.models.SAMSVAE(data.n_features, data.n_perturbations, n_latent=2, hidden=(16,))
    fit(model, data, max_epochs=1, device="cuda", progress=False)
    label = data.perturbation_names[0]
    cf = model.counterfactual(data, label, n_samples=1)
    assert cf.shape == (len(data.sources["background"]), data.n_features)
    means = model.predicted_means(data, [label], n_samples=1)
    assert means.shape == (1, data.n_features)


def test_cli_fit_under_torchrun(tmp_path):
    """`torchrun --nproc-per-node 2 -m pyro_compare.cli fit ...`: rank 0 writes the output."""
    import subprocess
    import sys

    import anndata as ad

    simulate_contrastive(60, 60, 15, 2, 1, seed=0).write_h5ad(tmp_path / "in.h5ad")
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pyro_compare.cli", "fit", str(tmp_path / "in.h5ad"),
        "--out", str(tmp_path / "out.h5ad"), "--condition-key", "condition",
        "--background", "background", "--max-epochs", "2", "--n-background-latent", "2",
        "--n-salient-latent", "1", "--hidden", "8", "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote") == 1  # rank 0 only
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert out.obsm["X_background"].shape == (120, 2)
