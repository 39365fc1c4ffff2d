"""pc.tl.knn_leakage: condition information beyond composition, on latents with known answers.

Three labels ("cell types") with different condition mixes (80/20, 25/75, 50/50 control /
stimulated): a latent that encodes only the label predicts the condition at the composition
floor overall and at chance within labels; a latent that also encodes the condition
predicts it (almost) perfectly within labels.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pyro_compare as pc

SHARES = {"A": (400, 0.8), "B": (400, 0.25), "C": (200, 0.5)}  # label: (cells, control share)
NEW_COLUMNS = [
    "label_accuracy",
    "condition_composition_floor",
    "condition_within_label",
    "condition_within_label_chance",
]


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    labels, conditions = [], []
    for label, (n, share) in SHARES.items():
        n_control = int(round(n * share))
        labels += [label] * n
        conditions += ["control"] * n_control + ["stimulated"] * (n - n_control)
    labels, conditions = np.array(labels), np.array(conditions)
    n = len(labels)
    centres = {"A": [0.0, 0.0], "B": [20.0, 0.0], "C": [0.0, 20.0]}
    label_xy = np.array([centres[g] for g in labels])
    stim = (conditions == "stimulated").astype(float)
    noise = rng.normal(size=(n, 4))
    adata = ad.AnnData(
        X=np.zeros((n, 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"condition": conditions, "cell_type": labels}, index=[f"c{i}" for i in range(n)]
        ),
    )
    # only the label (condition-independent noise around the label's centre)
    adata.obsm["X_label_only"] = np.hstack([label_xy, noise[:, :2]])
    # label and condition (the condition shifts every cell by 8 noise sd along a new axis)
    adata.obsm["X_condition"] = np.hstack([label_xy, 8.0 * stim[:, None], noise[:, :2]])
    # neither (pure noise): overall accuracy near the majority share
    adata.obsm["X_noise"] = noise
    return adata


def expected_chance() -> float:
    return sum(n * max(share, 1 - share) for n, share in SHARES.values()) / sum(
        n for n, _ in SHARES.values()
    )


def test_columns_added_not_renamed(adata):
    plain = pc.tl.knn_leakage(adata, ["X_label_only"], "condition")
    assert list(plain.columns) == ["accuracy", "chance"]
    table = pc.tl.knn_leakage(adata, ["X_label_only"], "condition", groups_key="cell_type")
    assert list(table.columns) == ["accuracy", "chance", "accuracy_within", "chance_within"] + (
        NEW_COLUMNS
    )
    # adding the grouped columns does not change the overall ones
    pd.testing.assert_frame_equal(plain, table[["accuracy", "chance"]])


def test_label_only_latent_sits_at_the_composition_floor(adata):
    table = pc.tl.knn_leakage(
        adata, ["X_label_only", "X_condition", "X_noise"], "condition", groups_key="cell_type"
    )
    row = table.loc["X_label_only"]
    chance = expected_chance()  # (320 + 300 + 100) / 1000 = 0.72
    assert row["condition_within_label_chance"] == pytest.approx(chance)
    # the floor is the label-only classifier, cross-validated: its in-sample value is the chance
    assert row["condition_composition_floor"] == pytest.approx(chance, abs=0.03)
    # a label-only latent: overall condition accuracy = composition, nothing within labels
    assert row["accuracy"] == pytest.approx(row["condition_composition_floor"], abs=0.04)
    assert row["condition_within_label"] == pytest.approx(chance, abs=0.05)
    assert row["condition_within_label"] <= chance + 0.03
    assert row["label_accuracy"] == pytest.approx(1.0)
    # the floor and the chance do not depend on the latent
    for col in ("condition_composition_floor", "condition_within_label_chance"):
        assert table[col].nunique() == 1


def test_condition_latent_predicts_the_condition_within_labels(adata):
    row = pc.tl.knn_leakage(adata, ["X_condition"], "condition", groups_key="cell_type").iloc[0]
    assert row["condition_within_label"] > 0.98
    assert row["accuracy"] > 0.98
    assert row["condition_within_label"] - row["condition_within_label_chance"] > 0.25
    assert row["label_accuracy"] == pytest.approx(1.0)


def test_noise_latent_knows_neither(adata):
    row = pc.tl.knn_leakage(adata, ["X_noise"], "condition", groups_key="cell_type").iloc[0]
    assert row["label_accuracy"] < 0.6  # 3 labels, majority share 0.4
    # without the label, kNN cannot reach the composition floor; within labels it can
    # at most reach chance
    assert row["accuracy"] < row["condition_composition_floor"] - 0.05
    assert row["condition_within_label"] <= row["condition_within_label_chance"] + 0.03


def test_within_label_uses_only_same_label_neighbours(adata):
    # the label centres are constant within a label, so they change no distance between two
    # cells of the same label: without them the within-label accuracy is the same, while the
    # label (and with it the composition) can no longer be read from the latent
    sub = adata.copy()
    sub.obsm["X_merged"] = adata.obsm["X_label_only"][:, 2:]
    table = pc.tl.knn_leakage(
        sub, ["X_label_only", "X_merged"], "condition", groups_key="cell_type"
    )
    assert table.loc["X_merged", "condition_within_label"] == pytest.approx(
        table.loc["X_label_only", "condition_within_label"]
    )
    assert table.loc["X_merged", "label_accuracy"] < 0.6


def test_nan_rows_dropped_and_small_labels(adata):
    sub = adata.copy()
    emb = sub.obsm["X_condition"].copy()
    emb[:5] = np.nan
    sub.obsm["X_condition"] = emb
    cell_type = sub.obs["cell_type"].astype(str).to_numpy()
    cell_type[5] = "lonely"  # a label with a single cell: predicted by the training majority
    sub.obs["cell_type"] = cell_type
    row = pc.tl.knn_leakage(sub, ["X_condition"], "condition", groups_key="cell_type").iloc[0]
    assert np.isnan(row["label_accuracy"])  # a single-cell label cannot be cross-validated
    assert row["condition_within_label"] > 0.97
    assert 0.5 < row["condition_within_label_chance"] < 1.0
