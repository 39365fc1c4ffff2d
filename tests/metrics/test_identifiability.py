import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from pyro_compare.metrics.identifiability import (
    affine_r2,
    block_r2,
    knn_accuracy,
    knn_accuracy_within,
    mcc,
    mcc_matching,
)

# derandomize: the same 30 examples on every run (seeded, like the rest of the suite); a
# random draw per run would make a pass on one machine say nothing about the next.
FAST = settings(max_examples=30, deadline=None, derandomize=True)
seeds = st.integers(0, 2**32 - 1)


def _well_conditioned(rng: np.random.Generator, d: int) -> np.ndarray:
    """Random d x d matrix with singular values in [0.5, 2]."""
    q1 = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    q2 = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    return q1 @ np.diag(rng.uniform(0.5, 2.0, size=d)) @ q2


# --------------------------------------------------------------------------- MCC


@FAST
@given(seed=seeds, n=st.integers(50, 300), d=st.integers(1, 6), extra=st.integers(0, 3))
def test_mcc_is_one_for_permuted_flipped_rescaled_copies(seed, n, d, extra):
    rng = np.random.default_rng(seed)
    z_true_nd = rng.normal(size=(n, d))
    perm = rng.permutation(d)
    signs_d = rng.choice([-1.0, 1.0], size=d)
    scales_d = rng.uniform(0.1, 10.0, size=d)
    z_learned_nd = z_true_nd[:, perm] * signs_d * scales_d + rng.normal(size=d)
    # extra, irrelevant learned dims must not lower the MCC (matching uses min(d, m) pairs)
    z_learned_nm = np.concatenate([z_learned_nd, rng.normal(size=(n, extra))], axis=1)
    assert mcc(z_true_nd, z_learned_nm) == pytest.approx(1.0, abs=1e-6)
    row_ind, col_ind, abs_corr = mcc_matching(z_true_nd, z_learned_nm)
    assert row_ind.shape == col_ind.shape == abs_corr.shape == (d,)
    # the matching recovers the permutation: true dim perm[j] <-> learned dim j
    np.testing.assert_array_equal(col_ind[np.argsort(row_ind)], np.argsort(perm))
    # symmetric in the number of dims: fewer learned than true dims
    assert mcc(z_learned_nm, z_true_nd) == pytest.approx(1.0, abs=1e-6)


@FAST
@given(seed=seeds, d=st.integers(1, 6))
def test_mcc_is_low_for_independent_noise(seed, d):
    rng = np.random.default_rng(seed)
    z_true_nd = rng.normal(size=(2000, d))
    z_noise_nd = rng.normal(size=(2000, d))
    assert mcc(z_true_nd, z_noise_nd) < 0.3
    assert mcc(z_true_nd, z_noise_nd, method="spearman") < 0.3


@FAST
@given(seed=seeds, n=st.integers(100, 400), d=st.integers(1, 5))
def test_spearman_mcc_is_one_for_monotone_transforms(seed, n, d):
    rng = np.random.default_rng(seed)
    z_true_nd = rng.normal(size=(n, d))
    z_learned_nd = np.concatenate([np.exp(2 * z_true_nd), -(z_true_nd**3)], axis=1)
    z_learned_nd = z_learned_nd[:, rng.permutation(2 * d)]
    assert mcc(z_true_nd, z_learned_nd, method="spearman") == pytest.approx(1.0, abs=1e-6)


def test_pearson_mcc_is_below_one_for_nonlinear_transform():
    # the Spearman test above can only pass because of the rank transform
    z_true_nd = np.random.default_rng(0).normal(size=(1000, 3))
    assert mcc(z_true_nd, np.exp(2 * z_true_nd)) < 0.9


def test_mcc_accepts_torch_and_handles_constant_dims():
    rng = np.random.default_rng(1)
    z_true_nd = rng.normal(size=(200, 3))
    z_learned = torch.tensor(z_true_nd[:, ::-1].copy(), dtype=torch.float32, requires_grad=True)
    assert mcc(torch.from_numpy(z_true_nd), z_learned) == pytest.approx(1.0, abs=1e-6)
    # a collapsed (constant) learned dim has correlation 0, not NaN
    z_collapsed = np.concatenate([z_true_nd[:, :2], np.zeros((200, 1))], axis=1)
    value = mcc(z_true_nd, z_collapsed)
    assert value == pytest.approx(2 / 3, abs=1e-6)


def test_mcc_input_checks():
    with pytest.raises(ValueError, match="rows"):
        mcc(np.zeros((10, 2)), np.zeros((11, 2)))
    with pytest.raises(ValueError, match="method"):
        mcc(np.ones((10, 2)), np.ones((10, 2)), method="kendall")
    with pytest.raises(ValueError, match="NaN"):
        mcc(np.full((10, 2), np.nan), np.ones((10, 2)))


# --------------------------------------------------------------------------- affine R2


@FAST
@given(
    seed=seeds,
    n=st.integers(60, 500),
    d=st.integers(1, 6),
    shift=st.floats(-100, 100),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_affine_r2_is_one_for_invertible_affine_maps(seed, n, d, shift, scale):
    rng = np.random.default_rng(seed)
    z_nd = rng.normal(size=(n, d))
    a_dd = _well_conditioned(rng, d)
    b_d = shift + rng.normal(size=d)
    z_mapped_nd = scale * (z_nd @ a_dd.T + b_d)
    assert affine_r2(z_nd, z_mapped_nd, seed=seed % 100) > 0.999
    assert affine_r2(z_mapped_nd, z_nd, seed=seed % 100) > 0.999


@FAST
@given(seed=seeds, d_t=st.integers(1, 4), d_p=st.integers(1, 4))
def test_affine_r2_is_near_zero_for_independent_noise(seed, d_t, d_p):
    rng = np.random.default_rng(seed)
    target_nd = rng.normal(size=(5000, d_t))
    noise_nd = rng.normal(size=(5000, d_p))
    mean, per_dim = affine_r2(target_nd, noise_nd, per_dim=True)
    assert abs(mean) < 0.05
    assert per_dim.shape == (d_t,)
    assert np.all(np.abs(per_dim) < 0.05)


def test_affine_r2_per_dim_partial_information():
    rng = np.random.default_rng(0)
    z_nd = rng.normal(size=(3000, 2))
    target_nd = np.stack([z_nd[:, 0], rng.normal(size=3000)], axis=1)
    mean, per_dim = affine_r2(target_nd, z_nd, per_dim=True)
    assert per_dim.shape == (2,)
    assert per_dim[0] > 0.999 and abs(per_dim[1]) < 0.05
    assert mean == pytest.approx(per_dim.mean())
    assert isinstance(affine_r2(target_nd, z_nd), float)


def test_affine_r2_constant_dims_are_nan_and_excluded():
    rng = np.random.default_rng(0)
    z_nd = rng.normal(size=(500, 2))
    target_nd = np.concatenate([z_nd, np.zeros((500, 1)), np.full((500, 1), 0.1)], axis=1)
    mean, per_dim = affine_r2(target_nd, z_nd, per_dim=True)
    assert np.all(np.isnan(per_dim[2:]))
    assert np.all(per_dim[:2] > 0.999)
    assert mean > 0.999
    all_const_mean, all_const = affine_r2(np.zeros((100, 2)), z_nd[:100], per_dim=True)
    assert np.isnan(all_const_mean) and np.all(np.isnan(all_const))


def test_affine_r2_is_not_clipped_and_depends_on_seed_only():
    # many noise predictors on few cells: overfitting gives a negative held-out R2
    rng = np.random.default_rng(3)
    target_n = rng.normal(size=40)
    noise_np = rng.normal(size=(40, 20))
    assert affine_r2(target_n, noise_np) < 0.0
    assert affine_r2(target_n, noise_np, seed=5) == affine_r2(target_n, noise_np, seed=5)
    # torch input gives the same number
    assert affine_r2(torch.from_numpy(target_n), torch.from_numpy(noise_np)) == pytest.approx(
        affine_r2(target_n, noise_np)
    )


def test_affine_r2_collinear_predictors():
    rng = np.random.default_rng(0)
    z_nd = rng.normal(size=(400, 2))
    predictors = np.concatenate([z_nd, z_nd[:, :1], np.ones((400, 1))], axis=1)
    assert affine_r2(z_nd, predictors) > 0.999


def test_affine_r2_input_checks():
    with pytest.raises(ValueError, match="rows"):
        affine_r2(np.zeros((10, 2)), np.zeros((12, 2)))
    with pytest.raises(ValueError, match="test_size"):
        affine_r2(np.ones((10, 2)), np.ones((10, 2)), test_size=1.5)


# --------------------------------------------------------------------------- block R2


def _blocks(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    z_nd = rng.normal(size=(n, 3))
    t_nd = rng.normal(size=(n, 2))
    z_learned = z_nd @ _well_conditioned(rng, 3).T + 1.0
    t_learned = t_nd @ _well_conditioned(rng, 2).T - 2.0
    return rng, z_nd, t_nd, z_learned, t_learned


@FAST
@given(seed=seeds)
def test_block_r2_recovery_without_leakage(seed):
    _, z_nd, t_nd, z_learned, t_learned = _blocks(seed)
    table = block_r2({"z": z_nd, "t": t_nd}, {"z": z_learned, "t": torch.from_numpy(t_learned)})
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["z", "t"] and list(table.columns) == ["z", "t"]
    assert table.index.name == "true" and table.columns.name == "learned"
    diag = np.diag(table.to_numpy())
    off = table.to_numpy()[~np.eye(2, dtype=bool)]
    assert np.all(diag > 0.999)
    assert np.all(np.abs(off) < 0.05)


@FAST
@given(seed=seeds)
def test_block_r2_detects_leakage(seed):
    rng, z_nd, t_nd, z_learned, t_learned = _blocks(seed)
    clean = block_r2({"z": z_nd, "t": t_nd}, {"z": z_learned, "t": t_learned})
    # learned salient block also carries a (mixed) copy of the true background
    leaky_t = np.concatenate([t_learned, z_nd @ rng.normal(size=(3, 3))], axis=1)
    leaky = block_r2({"z": z_nd, "t": t_nd}, {"z": z_learned, "t": leaky_t})
    assert leaky.loc["z", "t"] > 0.9
    assert leaky.loc["z", "t"] > clean.loc["z", "t"] + 0.5
    assert leaky.loc["t", "t"] > 0.999  # recovery unaffected


def test_block_r2_subset_restricts_rows():
    rng, z_nd, t_nd, z_learned, _ = _blocks(0)
    target_n = rng.random(z_nd.shape[0]) < 0.5
    t_true = np.where(target_n[:, None], t_nd, 0.0)  # salient latent is zero on background cells
    t_learned = np.where(target_n[:, None], t_nd @ np.array([[2.0, 1.0], [0.0, 1.0]]), 0.0)
    t_learned = t_learned + 0.3 * rng.normal(size=t_learned.shape) * ~target_n[:, None]
    full = block_r2({"z": z_nd, "t": t_true}, {"z": z_learned, "t": t_learned})
    sub = block_r2(
        {"z": z_nd, "t": t_true}, {"z": z_learned, "t": t_learned}, subset={"t": target_n}
    )
    assert sub.loc["t", "t"] > 0.999
    assert full.loc["t", "t"] < 0.99  # background-cell noise is not affinely predictable
    assert sub.loc["z", "z"] == full.loc["z", "z"]  # blocks without a mask use all cells
    with pytest.raises(ValueError, match="boolean"):
        block_r2({"t": t_true}, {"t": t_learned}, subset={"t": target_n.astype(int)})
    with pytest.raises(ValueError, match="not in"):
        block_r2({"t": t_true}, {"t": t_learned}, subset={"x": target_n})
    with pytest.raises(ValueError, match="rows"):
        block_r2({"t": t_true}, {"t": t_learned[:10]})


# --------------------------------------------------------------------------- kNN accuracy


@FAST
@given(seed=seeds, n_classes=st.integers(2, 5), d=st.integers(2, 8))
def test_knn_accuracy_high_on_separated_clusters(seed, n_classes, d):
    rng = np.random.default_rng(seed)
    labels_n = rng.permutation(np.arange(400) % n_classes)
    # centres spaced 20 apart along a random direction; noise has unit variance
    u_d = rng.normal(size=d)
    centres_cd = 20.0 * np.arange(n_classes)[:, None] * (u_d / np.linalg.norm(u_d))
    x_nd = centres_cd[labels_n] + rng.normal(size=(400, d))
    assert knn_accuracy(x_nd, labels_n, seed=seed % 100) > 0.95


@FAST
@given(seed=seeds, n_classes=st.integers(2, 4))
def test_knn_accuracy_near_chance_on_random_labels(seed, n_classes):
    rng = np.random.default_rng(seed)
    x_nd = rng.normal(size=(1500, 4))
    labels_n = np.arange(1500) % n_classes
    rng.shuffle(labels_n)
    assert abs(knn_accuracy(x_nd, labels_n) - 1 / n_classes) < 0.08


def test_knn_accuracy_string_labels_torch_and_checks():
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"])[rng.integers(0, 2, size=300)]
    x = torch.from_numpy((labels == "a")[:, None] * 10.0 + rng.normal(size=(300, 2)))
    assert knn_accuracy(x, labels) > 0.95
    # tiny classes reduce the number of folds rather than failing
    assert 0.0 <= knn_accuracy(x[:10], np.array(["a"] * 8 + ["b"] * 2)) <= 1.0
    with pytest.raises(ValueError, match="2 classes"):
        knn_accuracy(x, np.array(["a"] * 300))
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(x, labels[:-1])


def test_knn_accuracy_within_groups():
    rng = np.random.default_rng(0)
    n = 1200
    cell_type = rng.choice(["T", "B", "NK"], size=n)
    condition = rng.choice(["ctrl", "stim"], size=n)
    x_nd = rng.normal(size=(n, 3))
    x_nd[:, 0] += 20.0 * (cell_type == "T")
    x_nd[:, 1] += 20.0 * (cell_type == "B")
    # condition shifts the embedding in T cells only
    x_nd[:, 2] += 10.0 * ((cell_type == "T") & (condition == "stim"))
    # a group with one condition only and a group with too few cells are skipped
    cell_type = cell_type.astype(object)
    cell_type[:30] = "mono_ctrl_only"
    condition[:30] = "ctrl"
    cell_type[30:35] = "tiny"
    out = knn_accuracy_within(x_nd, condition, cell_type)
    assert set(out) == {"T", "B", "NK", "weighted_mean"}
    assert out["T"] > 0.95
    assert abs(out["B"] - 0.5) < 0.15 and abs(out["NK"] - 0.5) < 0.15
    sizes = {g: np.sum(cell_type == g) for g in ("T", "B", "NK")}
    expected = sum(out[g] * sizes[g] for g in sizes) / sum(sizes.values())
    assert out["weighted_mean"] == pytest.approx(expected)
    # overall condition accuracy is diluted by the uninformative cell types
    assert knn_accuracy(x_nd, condition) < out["T"]
    empty = knn_accuracy_within(x_nd[:30], condition[:30], cell_type[:30])
    assert set(empty) == {"weighted_mean"} and np.isnan(empty["weighted_mean"])
