"""Held-out splits (by cell / perturbation / combination) and the sparse-shift simulator."""

from __future__ import annotations

import numpy as np
import pytest

import pyro_compare as pc
from pyro_compare.data import ComparativeData, DataValidationError
from pyro_compare.data.splits import canonical_label


@pytest.fixture(scope="module")
def adata():
    return pc.data.simulate_sparse_shift(
        n_control=120,
        n_per_perturbation=40,
        n_perturbations=4,
        n_genes=30,
        n_latent=4,
        seed=3,
        combinations=[(0, 1), (1, 2), ("P2", "P3")],
        n_per_combination=30,
    )


@pytest.fixture
def data(adata):
    return ComparativeData.from_anndata(
        adata, "perturbation", "control", perturbation_key="perturbation"
    )


def test_simulator_ground_truth(adata):
    targets = adata.uns["true_targets"]
    effects = adata.uns["true_effects"]
    assert targets.shape == (4, 4)
    assert set(targets.sum(1)) <= {1, 2, 3}
    # Effects live exactly on the targets, with magnitudes in the shift range.
    assert np.all((effects != 0) == (targets == 1))
    assert np.all(np.abs(effects[targets == 1]) >= 1.5)
    assert np.all(np.abs(effects[targets == 1]) <= 3.0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    assert adata.uns["combinations"] == ["P0+P1", "P1+P2", "P2+P3"]
    assert (labels == "P1+P2").sum() == 30 and (labels == "P3").sum() == 40
    # Combinations add the single shifts; the latent is basal + shift.
    shift = adata.obsm["true_shift"]
    np.testing.assert_allclose(shift[labels == "P1+P2"][0], effects[1] + effects[2], rtol=1e-6)
    np.testing.assert_allclose(shift[labels == "control"], 0.0)
    np.testing.assert_allclose(
        adata.obsm["true_latent"], adata.obsm["true_basal"] + shift, atol=1e-5
    )
    x = adata.X.toarray()
    assert np.all(x == np.round(x)) and np.all(x.sum(1) > 0)


def test_simulator_design_matches_data_design(data, adata):
    np.testing.assert_array_equal(data.design.toarray(), adata.obsm["design"])
    assert data.perturbation_names == adata.uns["perturbation_names"]


def test_simulator_is_seeded_and_checks_arguments():
    a = pc.data.simulate_sparse_shift(50, 20, 3, 10, 3, seed=1)
    b = pc.data.simulate_sparse_shift(50, 20, 3, 10, 3, seed=1)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())
    with pytest.raises(ValueError, match="pairs"):
        pc.data.simulate_sparse_shift(50, 20, 3, 10, 3, combinations=4)
    with pytest.raises(ValueError, match="targets"):
        pc.data.simulate_sparse_shift(50, 20, 3, 10, 2, max_targets=3)


def test_labels_are_canonical(data):
    labels = pc.data.perturbation_labels(data)
    assert set(labels) == {"control", "P0", "P1", "P2", "P3", "P0+P1", "P1+P2", "P2+P3"}
    assert canonical_label(data, "P1+P0") == "P0+P1"
    with pytest.raises(DataValidationError, match="unknown perturbation"):
        canonical_label(data, "P9")


def test_split_by_cell_is_stratified_and_seeded(data):
    mask = pc.data.split_by_cell(data, validation_fraction=0.25, seed=0)
    labels = pc.data.perturbation_labels(data)
    for lab in np.unique(labels):
        held = (~mask[labels == lab]).mean()
        assert held == pytest.approx(0.25, abs=0.02)
    np.testing.assert_array_equal(mask, pc.data.split_by_cell(data, 0.25, seed=0))
    assert not np.array_equal(mask, pc.data.split_by_cell(data, 0.25, seed=1))


def test_split_by_perturbation_holds_out_every_cell_of_the_label(data):
    mask = pc.data.split_by_perturbation(data, ["P3"], validation_fraction=0.1, seed=0)
    labels = pc.data.perturbation_labels(data)
    assert not mask[labels == "P3"].any()
    # Other labels (controls included) keep ~90% of their cells in training.
    assert mask[labels == "control"].mean() == pytest.approx(0.9, abs=0.02)
    pc.data.apply_split(data, mask)
    train_labels = set(labels[np.concatenate(list(data.indices("train").values()))])
    assert "P3" not in train_labels
    with pytest.raises(DataValidationError, match="no cells"):
        pc.data.split_by_perturbation(data, ["P0+P3"])
    with pytest.raises(ValueError, match="control"):
        pc.data.split_by_perturbation(data, ["control"])


def test_split_by_combination(data):
    labels = pc.data.perturbation_labels(data)
    mask = pc.data.split_by_combination(data, held_out=["P2+P1"], validation_fraction=0.0)
    assert not mask[labels == "P1+P2"].any()
    assert mask[labels != "P1+P2"].all()
    mask = pc.data.split_by_combination(data, n_held_out=2, seed=4, validation_fraction=0.0)
    held = set(labels[~mask])
    assert len(held) == 2 and all("+" in h for h in held)
    # The singles of a held-out combination stay in training.
    for h in held:
        for part in h.split("+"):
            assert mask[labels == part].all()
    with pytest.raises(ValueError, match="not combinations"):
        pc.data.split_by_combination(data, held_out=["P1"])
