"""Data-parallel sharding of the loader, and minibatches streamed from files on disk."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyro_compare.data import ComparativeData, DataValidationError, ShardBatch


def _adata(n_b=37, n_t=91, g=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(n_b + n_t, g)).astype(np.float32)
    x[:, 0] += 1
    cond = np.array(["ctrl"] * n_b + ["stim"] * n_t)
    rng.shuffle(cond)
    obs = pd.DataFrame({"cond": cond}, index=[f"c{i}" for i in range(n_b + n_t)])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs)


# ---------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_and_union_is_the_one_process_step(world_size):
    data = ComparativeData.from_anndata(_adata(), "cond", "ctrl")
    full = list(data.loader(24, seed=5))
    shards = [
        list(data.loader(24, seed=5, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    assert all(len(s) == len(full) == data.n_steps(24) for s in shards)
    for step, one in enumerate(full):
        for s, src in one.items():
            parts = [shards[r][step][s] for r in range(world_size)]
            idx = [p.index_n.numpy() for p in parts]
            # disjoint, and the union (interleaved r::world_size) is the 1-process minibatch
            assert sum(len(i) for i in idx) == src.size
            assert len(set(np.concatenate(idx).tolist())) == src.size
            np.testing.assert_array_equal(idx[0], src.index_n.numpy()[0::world_size])
            rebuilt = np.empty(src.size, dtype=np.int64)
            for r in range(world_size):
                rebuilt[r::world_size] = idx[r]
            np.testing.assert_array_equal(rebuilt, src.index_n.numpy())
            for r, p in enumerate(parts):
                assert p.n == src.n  # plate size: the full source
                np.testing.assert_array_equal(p.x_ng.numpy(), src.x_ng.numpy()[r::world_size])
                batch = shards[r][step]
                assert isinstance(batch, ShardBatch) and batch.global_sizes[s] == src.size
                assert batch.weights()[s] == pytest.approx(p.size / src.size)


def test_shards_cover_every_training_cell_once_per_epoch():
    data = ComparativeData.from_anndata(_adata(), "cond", "ctrl")
    seen = {s: [] for s in data.source_names}
    for r in range(2):
        for batch in data.loader(20, seed=1, rank=r, world_size=2):
            for s in seen:
                seen[s].extend(batch[s].index_n.tolist())
    for s, idx in data.indices("train").items():
        assert sorted(seen[s]) == sorted(idx.tolist())


def test_world_size_one_is_the_plain_loader():
    data = ComparativeData.from_anndata(_adata(), "cond", "ctrl")
    for a, b in zip(data.loader(16, seed=2), data.loader(16, seed=2, rank=0, world_size=1)):
        assert type(b) is dict
        for s in a:
            np.testing.assert_array_equal(a[s].index_n.numpy(), b[s].index_n.numpy())


def test_shard_errors():
    data = ComparativeData.from_anndata(_adata(n_b=3, n_t=200), "cond", "ctrl")
    with pytest.raises(DataValidationError, match="world_size=2"):
        next(iter(data.loader(16, rank=0, world_size=2)))
    with pytest.raises(ValueError, match="rank"):
        next(iter(data.loader(16, rank=2, world_size=2)))
