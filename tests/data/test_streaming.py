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


# ---------------------------------------------------------------------------- streaming
def _contrastive(seed=5):
    from pyro_compare.data import simulate_contrastive

    adata = simulate_contrastive(150, 150, 25, 2, 1, seed=seed, library_mean=400)
    # interleave the sources in the file, as in a real screen
    order = np.random.default_rng(0).permutation(adata.n_obs)
    return adata[order].copy()


def _same_batches(a, b, **kw):
    n = 0
    for x, y in zip(a.loader(**kw), b.loader(**kw), strict=True):
        assert list(x) == list(y)
        for s in x:
            np.testing.assert_array_equal(x[s].index_n.numpy(), y[s].index_n.numpy())
            np.testing.assert_array_equal(x[s].x_ng.numpy(), y[s].x_ng.numpy())
            np.testing.assert_array_equal(x[s].library_n.numpy(), y[s].library_n.numpy())
            assert x[s].n == y[s].n
        n += 1
    return n


def test_backed_file_gives_the_in_memory_sources_library_and_batches(tmp_path):
    adata = _contrastive()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    mem = ComparativeData.from_anndata(adata, "condition", "background")
    for source in (path, str(path), ad.read_h5ad(path, backed="r")):
        disk = ComparativeData.from_anndata(source, "condition", "background")
        assert disk.streamed and not mem.streamed and disk.block_size is not None
        assert disk.n_cells == mem.n_cells and disk.n_features == mem.n_features
        np.testing.assert_array_equal(disk.library, mem.library)
        for split in ("train", "validation", None):
            for s, i in mem.indices(split).items():
                np.testing.assert_array_equal(disk.indices(split)[s], i)
        # the same epoch order on both -> the same batches
        mem.set_shuffle(disk.block_size, disk.buffer_blocks)
        assert _same_batches(mem, disk, batch_size=32, seed=4) == mem.n_steps(32)
        assert _same_batches(mem, disk, batch_size=50, shuffle=False, split="validation")
        mem.set_shuffle(None)
        disk.set_shuffle(None)  # full permutation: the in-memory default order
        _same_batches(mem, disk, batch_size=32, seed=4)
        b = next(iter(disk.source_loader("target", batch_size=40)))
        np.testing.assert_array_equal(
            b["target"].x_ng.numpy(), adata.X[mem.sources["target"][:40]].toarray()
        )


def test_block_order_reads_blocks_and_visits_every_cell_once(tmp_path, monkeypatch):
    from pyro_compare.data import streaming

    adata = _adata(n_b=400, n_t=1200, g=10)
    adata = adata[np.argsort(adata.obs["cond"].to_numpy(), kind="stable")].copy()
    adata.write_h5ad(tmp_path / "a.h5ad")
    data = ComparativeData.from_anndata(tmp_path / "a.h5ad", "cond", "ctrl").set_shuffle(16, 4)
    reads = []
    original = streaming._Part.read
    monkeypatch.setattr(
        streaming._Part, "read", lambda self, a, b: reads.append(b - a) or original(self, a, b)
    )
    seen = {s: [] for s in data.source_names}
    for batch in data.loader(64, seed=0):
        for s in seen:
            seen[s].extend(batch[s].index_n.tolist())
    for s, idx in data.indices("train").items():
        assert sorted(seen[s]) == sorted(idx.tolist())
    n_train = sum(len(i) for i in data.indices("train").values())
    # about one read per block of 16 rows (train rows have validation gaps <= max_gap)
    assert len(reads) <= n_train / 16 + 2 * len(seen)
    # the order is shuffled, and differs between seeds
    orders = [next(iter(data.loader(64, seed=k)))["target"].index_n.numpy() for k in (0, 1)]
    assert not np.array_equal(orders[0], np.sort(orders[0]))
    assert not np.array_equal(orders[0], orders[1])


def test_streamed_fit_equals_the_in_memory_fit(tmp_path):
    import torch

    from pyro_compare.infer import fit
    from pyro_compare.models import ContrastiveVAE

    adata = _contrastive()
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    disk = ComparativeData.from_anndata(path, "condition", "background").set_shuffle(8, 4)
    mem = ComparativeData.from_anndata(adata, "condition", "background").set_shuffle(8, 4)
    out = []
    for data in (mem, disk):
        torch.manual_seed(0)
        model = ContrastiveVAE(data.n_features, 2, 1, hidden=(16,))
        history = fit(model, data, max_epochs=2, batch_size=64, lr=1e-2, seed=3, progress=False)
        out.append((history, model.latent(data, "salient"), model.latent(data, "background")))
    (h_mem, s_mem, b_mem), (h_disk, s_disk, b_disk) = out
    for col in ("train_loss", "validation_loss", "train_background", "train_target"):
        np.testing.assert_array_equal(h_disk[col].to_numpy(), h_mem[col].to_numpy())
    np.testing.assert_array_equal(s_disk, s_mem)  # latents of the same cells, same order
    np.testing.assert_array_equal(b_disk, b_mem)
    assert s_disk.shape[0] == adata.n_obs


def test_streamed_shards_equal_in_memory_shards(tmp_path):
    adata = _contrastive()
    adata.write_h5ad(tmp_path / "c.h5ad")
    disk = ComparativeData.from_anndata(tmp_path / "c.h5ad", "condition", "background")
    mem = ComparativeData.from_anndata(adata, "condition", "background")
    mem.set_shuffle(disk.block_size, disk.buffer_blocks)
    for r in range(2):
        _same_batches(mem, disk, batch_size=40, seed=1, rank=r, world_size=2)


def test_several_files_fit_together(tmp_path):
    adata = _contrastive()
    a, b = adata[:150].copy(), adata[150:].copy()
    b = b[:, b.var_names[::-1]].copy()  # same genes, another order
    b.obs_names = a.obs_names[: b.n_obs]  # the same barcodes on both plates
    a.write_h5ad(tmp_path / "plate1.h5ad")
    b.write_h5ad(tmp_path / "plate2.h5ad")
    paths = [tmp_path / "plate1.h5ad", tmp_path / "plate2.h5ad"]
    disk = ComparativeData.from_anndata(paths, "condition", "background")
    mem = ComparativeData.from_anndata(adata, "condition", "background")
    assert disk.n_cells == adata.n_obs and disk.adata.obs_names.is_unique
    assert disk.feature_names == list(adata.var_names)
    np.testing.assert_array_equal(disk.library, mem.library)
    mem.set_shuffle(disk.block_size, disk.buffer_blocks)
    _same_batches(mem, disk, batch_size=32, seed=2)
    # in-memory AnnData objects and paths mix
    mixed = ComparativeData.from_anndata([a, paths[1]], "condition", "background")
    np.testing.assert_array_equal(mixed.library, mem.library)
    c = adata[:50, 3:].copy()
    c.write_h5ad(tmp_path / "other_genes.h5ad")
    with pytest.raises(DataValidationError, match="3 missing"):
        ComparativeData.from_anndata(
            [paths[0], tmp_path / "other_genes.h5ad"], "condition", "background"
        )


def test_streamed_exclude_layers_zarr_and_dense(tmp_path):
    adata = _adata(n_b=20, n_t=40)
    adata.obs["cond"] = ["ctrl"] * 20 + ["stim"] * 30 + ["junk"] * 10
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.multiply(0.5).tocsr()  # X is not counts; the layer is
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata.write_zarr(tmp_path / "a.zarr")
    kw = dict(condition_key="cond", background="ctrl", exclude=("junk",), layer="counts")
    mem = ComparativeData.from_anndata(adata, **kw)
    dense = adata.copy()
    dense.layers["counts"] = dense.layers["counts"].toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    for source in (tmp_path / "a.h5ad", tmp_path / "a.zarr", tmp_path / "dense.h5ad"):
        disk = ComparativeData.from_anndata(source, **kw)
        assert disk.n_cells == 50 == mem.n_cells
        assert list(disk.adata.obs_names) == list(mem.adata.obs_names)
        np.testing.assert_array_equal(disk.library, mem.library)
        mem.set_shuffle(disk.block_size)
        _same_batches(mem, disk, batch_size=16, seed=0)
        mem.set_shuffle(None)
    with pytest.raises(DataValidationError, match="layer"):
        ComparativeData.from_anndata(tmp_path / "a.h5ad", "cond", "ctrl", layer="nope")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x: x.__setitem__((3, 1), -1.0), "negative"),
        (lambda x: x.__setitem__((3, 1), 0.5), "non-integer"),
        (lambda x: x.__setitem__((3, 1), np.nan), "NaN"),
        (lambda x: x.__setitem__(5, 0.0), "zero total counts"),
    ],
)
def test_streamed_checks_in_one_pass(tmp_path, change, match):
    adata = _adata()
    x = adata.X.toarray()
    change(x)
    adata.X = sp.csr_matrix(x)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(DataValidationError, match=match):
        ComparativeData.from_anndata(tmp_path / "bad.h5ad", "cond", "ctrl")
    with pytest.raises(DataValidationError, match=match):
        ComparativeData.from_anndata(adata, "cond", "ctrl")


def test_sparse_design_streamed_and_in_memory(tmp_path):
    from pyro_compare.data import build_design

    adata = _adata(n_b=10, n_t=30)
    labels = np.array(["ctrl"] * 10 + ["A"] * 10 + ["B+A"] * 5 + ["C"] * 15)
    adata.obs["pert"] = labels
    adata.write_h5ad(tmp_path / "p.h5ad")
    mem = ComparativeData.from_anndata(adata, "pert", "ctrl", perturbation_key="pert")
    disk = ComparativeData.from_anndata(
        tmp_path / "p.h5ad", "pert", "ctrl", perturbation_key="pert"
    )
    dense, names = build_design(labels, "ctrl")
    for data in (mem, disk):
        assert sp.isspmatrix_csr(data.design) and data.design.dtype == np.float32
        assert data.perturbation_names == names
        np.testing.assert_array_equal(data.design.toarray(), dense)
        batch = next(iter(data.loader(8, seed=0)))
        rows = batch["target"].index_n.numpy()
        np.testing.assert_array_equal(batch["target"].design_nk.numpy(), dense[rows])
    from pyro_compare.data.splits import perturbation_labels

    assert list(perturbation_labels(disk)) == [{"B+A": "A+B"}.get(lab, lab) for lab in labels]
