"""Identifiability metrics that need ground-truth latents.

(One module of ~600 lines: MCC, affine / block R² and the kNN accuracies share the
cross-validation helpers.)

These metrics compare the latents a model has learned with the latents that
generated a simulated data set:

* :func:`mcc` / :func:`mcc_matching` -- mean correlation coefficient after
  Hungarian matching of true and learned dimensions (identifiability up to
  permutation and elementwise rescaling / monotone transforms).
* :func:`affine_r2` -- held-out :math:`R^2` of a linear regression with
  intercept (identifiability up to an affine map).
* :func:`block_r2` -- :func:`affine_r2` for every pair of (true block, learned
  block): the diagonal measures recovery, the off-diagonal measures leakage.
* :func:`knn_accuracy` / :func:`knn_accuracy_within` -- cross-validated kNN
  classification accuracy, to check which label information a latent carries.

All functions accept NumPy arrays or PyTorch tensors (on any device, with or
without gradients); computations are done in float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

# scipy.optimize, scipy.stats and scikit-learn are imported inside the functions that use
# them: together they would add about half a second to `import pyro_compare`.

__all__ = [
    "affine_r2",
    "block_r2",
    "knn_accuracy",
    "knn_accuracy_within",
    "mcc",
    "mcc_matching",
]

CorrelationMethod = Literal["pearson", "spearman"]


# --------------------------------------------------------------------------- helpers


def _to_numpy(x: Any) -> np.ndarray:
    """Convert a tensor / array-like to a NumPy array (no dtype change)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Convert to a finite float64 matrix of shape ``(n, d)`` (1-D input -> ``(n, 1)``)."""
    x_nd = _to_numpy(x).astype(np.float64, copy=False)
    if x_nd.ndim == 1:
        x_nd = x_nd[:, None]
    if x_nd.ndim != 2:
        raise ValueError(f"`{name}` must be 1-D or 2-D (n, d); got shape {x_nd.shape}.")
    if x_nd.shape[0] == 0 or x_nd.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {x_nd.shape}).")
    if not np.all(np.isfinite(x_nd)):
        raise ValueError(f"`{name}` contains NaN or infinite values; remove or impute them first.")
    return x_nd


def _check_same_n(a_nd: np.ndarray, b_nd: np.ndarray, name_a: str, name_b: str) -> None:
    if a_nd.shape[0] != b_nd.shape[0]:
        raise ValueError(
            f"`{name_a}` has {a_nd.shape[0]} rows but `{name_b}` has {b_nd.shape[0]}; "
            "both must describe the same cells in the same order."
        )


def _standardise_columns(x_nd: np.ndarray) -> np.ndarray:
    """Centre and scale columns to unit (population) variance; constant columns -> 0."""
    xc_nd = x_nd - x_nd.mean(axis=0, keepdims=True)
    sd_d = np.sqrt((xc_nd**2).mean(axis=0))
    scale = np.abs(x_nd).max(axis=0)
    constant_d = sd_d <= 1e-12 * np.maximum(scale, np.finfo(np.float64).tiny)
    sd_d = np.where(constant_d, 1.0, sd_d)
    out_nd = xc_nd / sd_d
    out_nd[:, constant_d] = 0.0
    return out_nd


def _abs_correlation(
    z_true_nd: np.ndarray, z_learned_nm: np.ndarray, method: CorrelationMethod
) -> np.ndarray:
    """Matrix ``(d, m)`` of absolute correlations; constant columns correlate 0 with all."""
    if method == "spearman":
        from scipy.stats import rankdata

        z_true_nd = rankdata(z_true_nd, axis=0)
        z_learned_nm = rankdata(z_learned_nm, axis=0)
    elif method != "pearson":
        raise ValueError(f"`method` must be 'pearson' or 'spearman'; got {method!r}.")
    a_nd = _standardise_columns(z_true_nd)
    b_nm = _standardise_columns(z_learned_nm)
    corr_dm = a_nd.T @ b_nm / a_nd.shape[0]
    return np.clip(np.abs(corr_dm), 0.0, 1.0)


# --------------------------------------------------------------------------- MCC


def mcc_matching(
    z_true: Any, z_learned: Any, method: CorrelationMethod = "pearson"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Hungarian matching of true and learned latent dimensions by absolute correlation.

    With :math:`C_{ij} = |\operatorname{corr}(z^{\mathrm{true}}_{:,i},
    z^{\mathrm{learned}}_{:,j})|` (Pearson, or Pearson on column ranks for
    Spearman), the matching is the one-to-one assignment :math:`\pi` of
    :math:`\min(d, m)` pairs that maximises :math:`\sum_i C_{i,\pi(i)}`
    (``scipy.optimize.linear_sum_assignment`` on :math:`-C`).

    Parameters
    ----------
    z_true : array or tensor, shape (n, d)
        Ground-truth latents.
    z_learned : array or tensor, shape (n, m)
        Learned latents (e.g. posterior means) for the same cells; ``m`` may differ from ``d``.
    method : {"pearson", "spearman"}
        Correlation type. Spearman is invariant to monotone elementwise transforms.

    Returns
    -------
    row_ind : numpy.ndarray of int, shape (min(d, m),)
        Indices of the matched true dimensions (sorted increasingly).
    col_ind : numpy.ndarray of int, shape (min(d, m),)
        Indices of the learned dimensions matched to ``row_ind``.
    abs_corr : numpy.ndarray of float, shape (min(d, m),)
        :math:`C_{\text{row\_ind}[k], \text{col\_ind}[k]}`.

    Notes
    -----
    A constant column (zero variance) has correlation 0 with every other column.
    """
    z_true_nd = _as_matrix(z_true, "z_true")
    z_learned_nm = _as_matrix(z_learned, "z_learned")
    _check_same_n(z_true_nd, z_learned_nm, "z_true", "z_learned")
    if z_true_nd.shape[0] < 2:
        raise ValueError("Correlations need at least 2 rows (cells).")
    abs_corr_dm = _abs_correlation(z_true_nd, z_learned_nm, method)
    from scipy.optimize import linear_sum_assignment

    row_ind, col_ind = linear_sum_assignment(-abs_corr_dm)
    return row_ind, col_ind, abs_corr_dm[row_ind, col_ind]


def mcc(z_true: Any, z_learned: Any, method: CorrelationMethod = "pearson") -> float:
    r"""Mean correlation coefficient (MCC) between true and learned latents.

    .. math::

        \mathrm{MCC} = \frac{1}{\min(d, m)} \max_{\pi}
        \sum_{i} \left|\operatorname{corr}\left(z^{\mathrm{true}}_{:,i},
        z^{\mathrm{learned}}_{:,\pi(i)}\right)\right|,

    the maximum running over one-to-one matchings of :math:`\min(d, m)` pairs of
    dimensions (Hungarian algorithm, see :func:`mcc_matching`).

    It is 1 when the learned latents are a permutation of sign-flipped / rescaled
    copies of the true ones (Pearson), or of monotone elementwise transforms of
    them (Spearman), and close to 0 for independent latents.

    Parameters
    ----------
    z_true : array or tensor, shape (n, d)
        Ground-truth latents.
    z_learned : array or tensor, shape (n, m)
        Learned latents for the same cells.
    method : {"pearson", "spearman"}
        Correlation type.

    Returns
    -------
    float
        MCC in [0, 1].
    """
    _, _, abs_corr = mcc_matching(z_true, z_learned, method=method)
    return float(abs_corr.mean())


# --------------------------------------------------------------------------- R2


def _train_test_split_idx(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be in (0, 1); got {test_size}.")
    n_test = int(round(test_size * n))
    n_test = min(max(n_test, 2), n - 2)
    if n < 4 or n_test < 2:
        raise ValueError(f"Need at least 4 rows (cells) for a train/test split; got {n}.")
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def affine_r2(
    target: Any,
    predictors: Any,
    test_size: float = 0.3,
    seed: int = 0,
    per_dim: bool = False,
    ridge: float = 1e-6,
) -> float | tuple[float, np.ndarray]:
    r"""Held-out :math:`R^2` of an affine regression of ``target`` on ``predictors``.

    The rows are split at random (``numpy.random.default_rng(seed)``) into a
    training set and a held-out set of ``round(test_size * n)`` rows (at least 2
    each). On the training set the affine map :math:`\hat y = W^\top x + b` is fitted
    by (nearly unregularised) ridge regression on centred data,

    .. math::

        W = (X_c^\top X_c + \lambda I)^{-1} X_c^\top Y_c, \qquad
        b = \bar y - W^\top \bar x, \qquad
        \lambda = \mathrm{ridge} \cdot \operatorname{tr}(X_c^\top X_c) / d_p,

    (the relative :math:`\lambda` keeps the fit invariant to the scale of the
    predictors and makes collinear / constant predictors harmless). For each target
    dimension :math:`j`, on the held-out set,

    .. math::

        R^2_j = 1 - \frac{\sum_i (y_{ij} - \hat y_{ij})^2}
                         {\sum_i (y_{ij} - \bar y^{\mathrm{test}}_j)^2}.

    Nothing is clipped: :math:`R^2_j` can be negative when the fit generalises worse
    than predicting the held-out mean, which is informative (e.g. overfitting many
    noise predictors on few cells).

    A target dimension that is constant on the held-out set (zero variance, e.g.
    all zeros; checked as held-out variance
    :math:`\le (10^{-10} \max_i |y_{ij}|)^2`) has an undefined :math:`R^2_j`,
    reported as NaN and excluded from the mean. If every dimension is constant the
    mean is NaN. No warning is emitted in either case.

    Parameters
    ----------
    target : array or tensor, shape (n, d_t)
        Variables to predict (e.g. true latents). 1-D input is one dimension.
    predictors : array or tensor, shape (n, d_p)
        Regressors (e.g. learned latents) for the same cells.
    test_size : float
        Fraction of rows held out for evaluation, in (0, 1).
    seed : int
        Seed of the random split.
    per_dim : bool
        Also return the per-dimension :math:`R^2_j`.
    ridge : float
        Relative ridge penalty (see above); ``0`` is ordinary least squares.

    Returns
    -------
    float or (float, numpy.ndarray of shape (d_t,))
        Mean of :math:`R^2_j` over non-constant target dimensions, and, when
        ``per_dim=True``, the vector of :math:`R^2_j` (NaN for constant dimensions).
    """
    y_nt = _as_matrix(target, "target")
    x_np = _as_matrix(predictors, "predictors")
    _check_same_n(y_nt, x_np, "target", "predictors")
    if ridge < 0:
        raise ValueError(f"`ridge` must be >= 0; got {ridge}.")
    train_idx, test_idx = _train_test_split_idx(y_nt.shape[0], test_size, seed)

    x_train, y_train = x_np[train_idx], y_nt[train_idx]
    x_mean_p, y_mean_t = x_train.mean(axis=0), y_train.mean(axis=0)
    xc_np, yc_nt = x_train - x_mean_p, y_train - y_mean_t
    xtx_pp = xc_np.T @ xc_np
    d_p = xtx_pp.shape[0]
    scale = np.trace(xtx_pp) / d_p
    lam = ridge * (scale if scale > 0 else 1.0)
    w_pt = np.linalg.lstsq(xtx_pp + lam * np.eye(d_p), xc_np.T @ yc_nt, rcond=None)[0]

    y_test = y_nt[test_idx]
    y_pred = (x_np[test_idx] - x_mean_p) @ w_pt + y_mean_t
    sse_t = ((y_test - y_pred) ** 2).sum(axis=0)
    yc_test = y_test - y_test.mean(axis=0)
    sst_t = (yc_test**2).sum(axis=0)
    var_t = sst_t / y_test.shape[0]
    constant_t = var_t <= (1e-10 * np.abs(y_test).max(axis=0)) ** 2
    r2_t = np.full(y_nt.shape[1], np.nan)
    r2_t[~constant_t] = 1.0 - sse_t[~constant_t] / sst_t[~constant_t]

    mean_r2 = float(r2_t[~constant_t].mean()) if np.any(~constant_t) else float("nan")
    if per_dim:
        return mean_r2, r2_t
    return mean_r2


def block_r2(
    true_blocks: Mapping[str, Any],
    learned_blocks: Mapping[str, Any],
    test_size: float = 0.3,
    seed: int = 0,
    subset: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    r"""Affine :math:`R^2` of every true latent block from every learned latent block.

    Entry ``(a, b)`` is ``affine_r2(true_blocks[a], learned_blocks[b])``
    (see :func:`affine_r2`): how much of true block ``a`` is affinely decodable from
    learned block ``b`` on held-out cells. With matching block orders (e.g. rows
    ``["z", "t"]`` = true background / salient, columns ``["z", "t"]`` = learned
    background / salient), the diagonal measures *recovery* (should be close to 1)
    and the off-diagonal measures *leakage* (should stay close to 0).

    Parameters
    ----------
    true_blocks : mapping of str to array or tensor of shape (n, d_a)
        Ground-truth latent blocks; all with the same ``n``.
    learned_blocks : mapping of str to array or tensor of shape (n, m_b)
        Learned latent blocks for the same cells.
    test_size, seed : float, int
        Passed to :func:`affine_r2` (the same split for every entry).
    subset : mapping of str to boolean array of shape (n,), optional
        Row masks per *true* block: the row of true block ``a`` is computed on the
        cells where ``subset[a]`` is True only (e.g. evaluate the true salient block
        on target cells, where it is non-zero, since it is identically zero and its
        :math:`R^2` undefined on background cells). Blocks absent from ``subset``
        use all cells.

    Returns
    -------
    pandas.DataFrame
        Shape ``(len(true_blocks), len(learned_blocks))``; index named ``"true"``,
        columns named ``"learned"``. Entries are NaN where the true block is constant
        on the held-out cells.
    """
    if not true_blocks or not learned_blocks:
        raise ValueError("`true_blocks` and `learned_blocks` must each hold at least one block.")
    true_np = {k: _as_matrix(v, f"true_blocks[{k!r}]") for k, v in true_blocks.items()}
    learned_np = {k: _as_matrix(v, f"learned_blocks[{k!r}]") for k, v in learned_blocks.items()}
    n = next(iter(true_np.values())).shape[0]
    for group, blocks in (("true_blocks", true_np), ("learned_blocks", learned_np)):
        for k, v in blocks.items():
            if v.shape[0] != n:
                raise ValueError(
                    f"{group}[{k!r}] has {v.shape[0]} rows, expected {n} "
                    "(all blocks must describe the same cells)."
                )
    subset = dict(subset or {})
    unknown = set(subset) - set(true_np)
    if unknown:
        raise ValueError(f"`subset` names blocks not in `true_blocks`: {sorted(unknown)}.")

    out = pd.DataFrame(
        np.nan,
        index=pd.Index(list(true_np), name="true"),
        columns=pd.Index(list(learned_np), name="learned"),
    )
    for a, t_nd in true_np.items():
        rows_n = np.ones(n, dtype=bool)
        if a in subset:
            rows_n = _to_numpy(subset[a])
            if rows_n.dtype != bool or rows_n.shape != (n,):
                raise ValueError(
                    f"subset[{a!r}] must be a boolean mask of shape ({n},); "
                    f"got dtype {rows_n.dtype}, shape {rows_n.shape}."
                )
        for b, l_nm in learned_np.items():
            out.loc[a, b] = affine_r2(
                t_nd[rows_n], l_nm[rows_n], test_size=test_size, seed=seed, per_dim=False
            )
    return out


# --------------------------------------------------------------------------- kNN


def _knn_cv_correct(
    x_nd: np.ndarray, y_n: np.ndarray, k: int, n_folds: int, seed: int
) -> tuple[int, int]:
    """Return (number correctly classified, number classified) under stratified CV."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    correct = 0
    for train_idx, test_idx in skf.split(x_nd, y_n):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train_idx)))
        clf.fit(x_nd[train_idx], y_n[train_idx])
        correct += int((clf.predict(x_nd[test_idx]) == y_n[test_idx]).sum())
    return correct, len(y_n)


def _n_folds_for(y_n: np.ndarray, n_folds: int) -> int:
    """Effective number of folds: ``min(n_folds, smallest class size)``; 0 if not evaluable."""
    _, counts = np.unique(y_n, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:
        return 0
    return int(min(n_folds, counts.min()))


def _check_knn_args(embedding: Any, labels: Any, k: int, n_folds: int):
    x_nd = _as_matrix(embedding, "embedding")
    y_n = _to_numpy(labels)
    if y_n.ndim != 1 or y_n.shape[0] != x_nd.shape[0]:
        raise ValueError(
            f"`labels` must be 1-D with one entry per row of `embedding` ({x_nd.shape[0]}); "
            f"got shape {y_n.shape}."
        )
    if k < 1:
        raise ValueError(f"`k` must be >= 1; got {k}.")
    if n_folds < 2:
        raise ValueError(f"`n_folds` must be >= 2; got {n_folds}.")
    return x_nd, y_n


def knn_accuracy(
    embedding: Any, labels: Any, k: int = 15, n_folds: int = 5, seed: int = 0
) -> float:
    r"""Cross-validated kNN classification accuracy of ``labels`` from ``embedding``.

    Rows are split into ``n_folds`` stratified folds
    (``StratifiedKFold(shuffle=True, random_state=seed)``); each fold is classified
    by a ``KNeighborsClassifier`` (Euclidean, uniform weights,
    :math:`\min(k, n_{\mathrm{train}})` neighbours) fitted on the other folds, and

    .. math::

        \mathrm{acc} = \frac{1}{n} \sum_i \mathbb{1}[\hat y_i = y_i]

    pools the held-out predictions of all folds. Chance level is the frequency of
    the majority class (:math:`1/C` for :math:`C` balanced classes).

    Parameters
    ----------
    embedding : array or tensor, shape (n, d)
        Latent representation of the cells.
    labels : array-like, shape (n,)
        Class labels (any hashable dtype: ints, strings, categoricals).
    k : int
        Number of neighbours.
    n_folds : int
        Number of folds; reduced to the size of the smallest class when that is
        smaller (so each fold holds every class).
    seed : int
        Seed of the fold shuffling.

    Returns
    -------
    float
        Accuracy in [0, 1].

    Raises
    ------
    ValueError
        If there are fewer than 2 classes or a class has fewer than 2 members.
    """
    x_nd, y_n = _check_knn_args(embedding, labels, k, n_folds)
    folds = _n_folds_for(y_n, n_folds)
    if folds == 0:
        raise ValueError(
            "`labels` needs at least 2 classes with at least 2 members each for "
            "cross-validated kNN accuracy."
        )
    correct, total = _knn_cv_correct(x_nd, y_n, k, folds, seed)
    return correct / total


def knn_accuracy_within(
    embedding: Any,
    labels: Any,
    groups: Any,
    k: int = 15,
    n_folds: int = 5,
    seed: int = 0,
    min_cells: int = 10,
) -> dict[Hashable, float]:
    r"""kNN accuracy of ``labels`` computed separately within each group.

    E.g. condition accuracy within each cell type: ``labels`` = condition,
    ``groups`` = cell type. For each group :math:`g` the accuracy
    :math:`\mathrm{acc}_g` is :func:`knn_accuracy` on the cells of :math:`g` only.

    A group is *skipped* (absent from the result) when it has fewer than
    ``min_cells`` cells, fewer than 2 distinct labels, or a label with fewer than 2
    cells. The entry ``"weighted_mean"`` is

    .. math::

        \frac{\sum_g n_g\, \mathrm{acc}_g}{\sum_g n_g}

    over the evaluated groups (NaN if none was evaluated).

    Parameters
    ----------
    embedding : array or tensor, shape (n, d)
        Latent representation of the cells.
    labels : array-like, shape (n,)
        Class labels to predict.
    groups : array-like, shape (n,)
        Group of every cell.
    k, n_folds, seed : int
        As in :func:`knn_accuracy`.
    min_cells : int
        Minimum number of cells for a group to be evaluated.

    Returns
    -------
    dict
        ``{group: accuracy}`` for the evaluated groups plus ``"weighted_mean"``.
    """
    x_nd, y_n = _check_knn_args(embedding, labels, k, n_folds)
    g_n = _to_numpy(groups)
    if g_n.ndim != 1 or g_n.shape[0] != x_nd.shape[0]:
        raise ValueError(
            f"`groups` must be 1-D with one entry per row of `embedding` ({x_nd.shape[0]}); "
            f"got shape {g_n.shape}."
        )
    result: dict[Hashable, float] = {}
    total_correct, total_cells = 0.0, 0
    for g in pd.unique(g_n):
        rows_n = g_n == g
        if rows_n.sum() < min_cells:
            continue
        folds = _n_folds_for(y_n[rows_n], n_folds)
        if folds == 0:
            continue
        correct, total = _knn_cv_correct(x_nd[rows_n], y_n[rows_n], k, folds, seed)
        key = g.item() if isinstance(g, np.generic) else g
        if key == "weighted_mean":
            raise ValueError("A group named 'weighted_mean' clashes with the summary key.")
        result[key] = correct / total
        total_correct += correct
        total_cells += total
    result["weighted_mean"] = total_correct / total_cells if total_cells else float("nan")
    return result


def _majority(y_n: np.ndarray) -> Any:
    """Most frequent value of ``y_n`` (ties: the smallest in sorted order, as sklearn's kNN)."""
    values, counts = np.unique(y_n, return_counts=True)
    return values[np.argmax(counts)]


def _knn_composition_cv(
    embedding: Any, labels: Any, groups: Any, k: int = 15, n_folds: int = 5, seed: int = 0
) -> dict[str, float]:
    r"""Condition information beyond composition, on the folds of :func:`knn_accuracy`.

    ``labels`` :math:`y` (e.g. the condition) are predicted in the stratified folds that
    :func:`knn_accuracy` uses (same ``n_folds`` and ``seed``, stratified on ``labels``), by
    two classifiers fitted on the training folds only:

    * ``"composition_floor"``: a classifier that sees the group :math:`g` (e.g. the cell
      type) and nothing else, :math:`\hat y_i = \arg\max_c \#\{j \in \mathrm{train} :
      g_j = g_i, y_j = c\}` (the majority label of the cell's group among the training
      cells; the overall training majority for a group absent from the training folds);
    * ``"within_group"``: kNN (``min(k, n)`` neighbours, Euclidean, uniform) on the
      embedding restricted to training cells of the same group, :math:`\hat y_i =` majority
      of :math:`y` among the :math:`k` nearest training cells :math:`j` with
      :math:`g_j = g_i` (a group absent from the training folds: the floor's prediction).

    Each accuracy pools the held-out predictions of all folds,
    :math:`\frac1n \sum_i \mathbb 1[\hat y_i = y_i]`. ``"within_group_chance"`` is the
    in-sample accuracy of the group-only classifier,

    .. math::

        \sum_g \frac{n_g}{n} \max_c \frac{n_{g,c}}{n_g},

    the level ``"within_group"`` reaches when the embedding carries no information on
    :math:`y` beyond :math:`g` (and the cross-validated ``"composition_floor"`` estimates).
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    x_nd, y_n = _check_knn_args(embedding, labels, k, n_folds)
    g_n = _to_numpy(groups)
    if g_n.ndim != 1 or g_n.shape[0] != x_nd.shape[0]:
        raise ValueError(
            f"`groups` must be 1-D with one entry per row of `embedding` ({x_nd.shape[0]}); "
            f"got shape {g_n.shape}."
        )
    folds = _n_folds_for(y_n, n_folds)
    if folds == 0:
        raise ValueError(
            "`labels` needs at least 2 classes with at least 2 members each for "
            "cross-validated kNN accuracy."
        )
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    floor_correct, within_correct = 0, 0
    for train_idx, test_idx in skf.split(x_nd, y_n):
        fallback = _majority(y_n[train_idx])
        for g in pd.unique(g_n[test_idx]):
            test_g = test_idx[g_n[test_idx] == g]
            train_g = train_idx[g_n[train_idx] == g]
            if len(train_g) == 0:
                floor_pred = within_pred = fallback
            else:
                floor_pred = _majority(y_n[train_g])
                clf = KNeighborsClassifier(n_neighbors=min(k, len(train_g)))
                clf.fit(x_nd[train_g], y_n[train_g])
                within_pred = clf.predict(x_nd[test_g])
            floor_correct += int((y_n[test_g] == floor_pred).sum())
            within_correct += int((y_n[test_g] == within_pred).sum())
    n = len(y_n)
    chance = sum(pd.Series(y_n[g_n == g]).value_counts().iloc[0] for g in pd.unique(g_n)) / n
    return {
        "composition_floor": floor_correct / n,
        "within_group": within_correct / n,
        "within_group_chance": float(chance),
    }
