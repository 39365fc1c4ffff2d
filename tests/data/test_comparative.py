import inspect

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyro_compare.data import ComparativeData, DataValidationError, simulate_contrastive
from pyro_compare.data.sources import SourceBatch
from pyro_compare.models import ContrastiveVAE


def _adata(n_b=30, n_t=50, g=12, seed=0, sparse=True):
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(n_b + n_t, g)).astype(np.float32)
    x[:, 0] += 1  # no empty cell
    obs = pd.DataFrame(
        {"cond": ["ctrl"] * n_b + ["stim"] * n_t}, index=[f"c{i}" for i in range(n_b + n_t)]
    )
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs)


def test_sources_library_and_sparse_kept():
    adata = _adata()
    data = ComparativeData.from_anndata(adata, "cond", "ctrl")
    assert sp.isspmatrix_csr(data.matrix) or sp.issparse(data.matrix)
    assert len(data.sources["background"]) == 30 and len(data.sources["target"]) == 50
    np.testing.assert_allclose(data.library, np.asarray(adata.X.sum(1)).ravel())
    assert data.n_features == 12 and data.n_cells == 80


def test_library_key_used():
    adata = _adata()
    adata.obs["lib"] = 1000.0
    data = ComparativeData.from_anndata(adata, "cond", "ctrl", library_key="lib")
    assert np.all(data.library == 1000.0)


def test_batch_is_a_source_mapping():
    data = ComparativeData.from_anndata(_adata(), "cond", "ctrl")
    batch = next(iter(data.loader(16)))
    assert list(batch) == ["background", "target"]
    assert all(isinstance(src, SourceBatch) for src in batch.values())
    assert batch["background"].role == "background" and batch["target"].role == "target"
    assert batch["background"].x_ng.dtype.is_floating_point
    assert batch["background"].n == len(data.indices("train")["background"])
    # model and guide take the same arguments: the batch, and the observe flag.
    for fn in (ContrastiveVAE.model, ContrastiveVAE.guide):
        assert list(inspect.signature(fn).parameters) == ["self", "sources", "observe"]


def test_loader_visits_every_training_cell_once_per_epoch():
    data = ComparativeData.from_anndata(_adata(n_b=37, n_t=91), "cond", "ctrl")
    seen = {"background": [], "target": []}
    n_steps = 0
    for batch in data.loader(batch_size=20, seed=1):
        n_steps += 1
        for s in seen:
            seen[s].extend(batch[s].index_n.tolist())
    assert n_steps == data.n_steps(20)
    for s, idx in data.indices("train").items():
        assert sorted(seen[s]) == sorted(idx.tolist())


def test_small_source_is_cycled():
    data = ComparativeData.from_anndata(_adata(n_b=3, n_t=200), "cond", "ctrl")
    batches = list(data.loader(batch_size=16))
    assert all(b["background"].size >= 1 for b in batches)


def test_split_is_seeded_and_disjoint():
    adata = _adata()
    a = ComparativeData.from_anndata(adata, "cond", "ctrl", seed=3, validation_fraction=0.2)
    b = ComparativeData.from_anndata(adata, "cond", "ctrl", seed=3, validation_fraction=0.2)
    c = ComparativeData.from_anndata(adata, "cond", "ctrl", seed=4, validation_fraction=0.2)
    for s in ("background", "target"):
        np.testing.assert_array_equal(a.indices("train")[s], b.indices("train")[s])
        assert not set(a.indices("train")[s]) & set(a.indices("validation")[s])
    assert any(
        not np.array_equal(a.indices("train")[s], c.indices("train")[s])
        for s in ("background", "target")
    )


def test_minibatch_matches_dense_rows():
    adata = _adata()
    data = ComparativeData.from_anndata(adata, "cond", "ctrl")
    batch = next(iter(data.loader(10, seed=0)))
    rows = batch["target"].index_n.numpy()
    np.testing.assert_array_equal(batch["target"].x_ng.numpy(), adata.X[rows].toarray())


def test_design_matrix_with_combinations_and_exclude():
    adata = _adata(n_b=10, n_t=30)
    labels = ["ctrl"] * 10 + ["A"] * 10 + ["B+A"] * 5 + ["C"] * 10 + ["junk"] * 5
    adata.obs["pert"] = labels
    data = ComparativeData.from_anndata(
        adata, "pert", "ctrl", perturbation_key="pert", exclude=("junk",)
    )
    assert data.n_cells == 35
    assert data.perturbation_names == ["A", "B", "C"]
    assert sp.issparse(data.design)  # never dense cells x perturbations
    np.testing.assert_array_equal(data.design[:10].toarray().sum(1), 0)
    np.testing.assert_array_equal(data.design[20].toarray().ravel(), [1, 1, 0])
    batch = next(iter(data.loader(8)))
    assert batch["target"].design_nk.shape[1] == 3


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: a.obs.drop(columns="cond", inplace=True), "condition_key 'cond'"),
        (lambda a: None, None),
    ],
)
def test_missing_condition_key(mutate, match):
    adata = _adata()
    mutate(adata)
    if match is None:
        ComparativeData.from_anndata(adata, "cond", "ctrl")
    else:
        with pytest.raises(DataValidationError, match=match):
            ComparativeData.from_anndata(adata, "cond", "ctrl")


def test_background_absent_names_values():
    with pytest.raises(DataValidationError, match="'control'.*'ctrl'"):
        ComparativeData.from_anndata(_adata(), "cond", "control")


def test_empty_source():
    adata = _adata()
    adata.obs["cond"] = "ctrl"
    with pytest.raises(DataValidationError, match="source 'target' has zero cells"):
        ComparativeData.from_anndata(adata, "cond", "ctrl")


@pytest.mark.parametrize(
    ("value", "match"),
    [(-1.0, "negative"), (0.5, "non-integer"), (np.nan, "NaN"), (np.inf, "infinite")],
)
@pytest.mark.parametrize("sparse", [True, False])
def test_bad_values(value, match, sparse):
    adata = _adata(sparse=False)
    adata.X[3, 2] = value
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with pytest.raises(DataValidationError, match=match):
        ComparativeData.from_anndata(adata, "cond", "ctrl")


def test_continuous_data_allowed_with_counts_false():
    adata = _adata(sparse=False)
    adata.X = adata.X - 2.5
    data = ComparativeData.from_anndata(adata, "cond", "ctrl", counts=False)
    assert data.counts is False
    with pytest.raises(DataValidationError, match="needs raw counts"):
        ContrastiveVAE(data.n_features, 2, 2, likelihood="nb").check_data(data)


def test_missing_layer_lists_layers():
    adata = _adata()
    adata.layers["raw"] = adata.X.copy()
    with pytest.raises(DataValidationError, match="layer 'counts'.*'raw'"):
        ComparativeData.from_anndata(adata, "cond", "ctrl", layer="counts")
    data = ComparativeData.from_anndata(adata, "cond", "ctrl", layer="raw")
    assert data.layer == "raw"


def test_normalised_layer_rejected_with_hint():
    adata = _adata()
    adata.layers["lognorm"] = sp.csr_matrix(np.log1p(adata.X.toarray()))
    with pytest.raises(DataValidationError, match="normalised"):
        ComparativeData.from_anndata(adata, "cond", "ctrl", layer="lognorm")


def test_zero_count_cells_are_an_error():
    adata = _adata(sparse=False)
    adata.X[5] = 0
    with pytest.raises(DataValidationError, match="1 cell.*zero total counts.*filter_cells"):
        ComparativeData.from_anndata(adata, "cond", "ctrl")


def test_gene_mismatch():
    data = ComparativeData.from_anndata(_adata(), "cond", "ctrl")
    model = ContrastiveVAE(data.n_features + 1, 2, 2)
    with pytest.raises(DataValidationError, match="gene mismatch"):
        model.latent(data, "background")


def test_simulate_contrastive_ground_truth():
    adata = simulate_contrastive(50, 70, 30, 4, 2, seed=1)
    assert adata.shape == (120, 30)
    assert sp.issparse(adata.X)
    x = adata.X.toarray()
    assert (x >= 0).all() and np.all(np.mod(x, 1) == 0) and (x.sum(1) > 0).all()
    t = adata.obsm["true_salient"]
    assert np.all(t[:50] == 0) and np.all(t[50:].std(0) > 0.5)
    assert adata.obsm["true_background"].shape == (120, 4)
    again = simulate_contrastive(50, 70, 30, 4, 2, seed=1)
    np.testing.assert_array_equal(again.X.toarray(), x)
