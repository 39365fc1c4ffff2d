"""Held-out splits for perturbation data: by cell, by perturbation, by combination.

Each ``split_*`` function returns a boolean *train mask* (one entry per cell of the
:class:`~pyro_compare.data.ComparativeData`); the complement is the validation / held-out
split. Apply it with :func:`apply_split` (or ``data.set_split(mask)``):

>>> mask = split_by_combination(data, n_held_out=3, seed=0)     # doctest: +SKIP
>>> apply_split(data, mask)                                      # doctest: +SKIP
>>> data.indices("validation")["target"]                         # held-out combinations

Cells are identified by their *canonical perturbation label*, rebuilt from the design
matrix (:func:`perturbation_labels`): the background value for control cells, single
names, and ``"A+B"`` for combinations with the names in the design's column order, so
``"B+A"`` and ``"A+B"`` mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from .comparative import ComparativeData
from .validation import DataValidationError

__all__ = [
    "apply_split",
    "canonical_label",
    "labels_from_design",
    "perturbation_labels",
    "split_by_cell",
    "split_by_combination",
    "split_by_perturbation",
]


def _require_design(data: ComparativeData) -> np.ndarray:
    if data.design is None:
        raise DataValidationError(
            "the data have no perturbation design: build them with "
            "ComparativeData.from_anndata(..., perturbation_key='perturbation')."
        )
    return data.design


def labels_from_design(
    design_nk: np.ndarray, names: Sequence[str], control: str, separator: str = "+"
) -> np.ndarray:
    """Canonical label per row of a multi-hot design: ``control``, ``"A"`` or ``"A+B"``."""
    names = np.asarray(list(names), dtype=object)
    if sp.issparse(design_nk):  # sparse designs: read each row's columns, never densify
        csr = sp.csr_matrix(design_nk > 0.5)
        csr.sort_indices()
        cols = np.split(csr.indices, csr.indptr[1:-1])
        return np.array(
            [separator.join(names[c]) if c.size else control for c in cols], dtype=object
        )
    design_nk = np.asarray(design_nk) > 0.5
    return np.array(
        [separator.join(names[row]) if row.any() else control for row in design_nk], dtype=object
    )


def perturbation_labels(data: ComparativeData, separator: str = "+") -> np.ndarray:
    """Canonical perturbation label of every cell of ``data`` (see module docstring)."""
    return labels_from_design(
        _require_design(data), data.perturbation_names, data.background, separator
    )


def canonical_label(data: ComparativeData, label: str, separator: str = "+") -> str:
    """Rewrite a user label (``"B+A"``) in canonical column order (``"A+B"``)."""
    if label == data.background:
        return label
    parts = [p.strip() for p in str(label).split(separator) if p.strip()]
    unknown = [p for p in parts if p not in data.perturbation_names]
    if unknown:
        raise DataValidationError(
            f"unknown perturbation(s) {unknown} in {label!r}; known: {data.perturbation_names}."
        )
    order = {n: i for i, n in enumerate(data.perturbation_names)}
    return separator.join(sorted(set(parts), key=order.__getitem__))


def _stratified_validation(
    labels: np.ndarray, validation_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Bool mask of validation cells: ``round(fraction * n)`` cells of every label."""
    val = np.zeros(len(labels), dtype=bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        n_val = int(round(validation_fraction * len(idx)))
        n_val = min(n_val, len(idx) - 1)  # keep at least one training cell per label
        if n_val > 0:
            val[rng.choice(idx, size=n_val, replace=False)] = True
    return val


def split_by_cell(
    data: ComparativeData,
    validation_fraction: float = 0.1,
    seed: int = 0,
    stratify: bool = True,
) -> np.ndarray:
    """Random held-out cells; with ``stratify`` the same fraction of every perturbation label.

    Returns
    -------
    numpy.ndarray of bool, shape (n_cells,)
        ``True`` for training cells.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError("validation_fraction must be in [0, 1).")
    rng = np.random.default_rng(seed)
    if stratify and data.design is not None:
        labels = perturbation_labels(data)
    else:
        labels = data.condition
    return ~_stratified_validation(np.asarray(labels), validation_fraction, rng)


def split_by_perturbation(
    data: ComparativeData,
    held_out: Sequence[str],
    validation_fraction: float = 0.1,
    seed: int = 0,
    separator: str = "+",
) -> np.ndarray:
    """Hold out every cell of the given perturbation labels (out-of-distribution split).

    Parameters
    ----------
    held_out
        Labels (``"A"`` or ``"A+B"``, any order of the parts) whose cells are all held out.
    validation_fraction
        Fraction of the *other* labels' cells (controls included) also held out, stratified,
        so that the held-out split has control cells to compute observed treatment effects.

    Returns
    -------
    numpy.ndarray of bool, shape (n_cells,)
        ``True`` for training cells.
    """
    labels = perturbation_labels(data, separator)
    wanted = {canonical_label(data, h, separator) for h in held_out}
    if data.background in wanted:
        raise ValueError("the control label cannot be held out entirely.")
    missing = sorted(wanted - set(labels))
    if missing:
        raise DataValidationError(f"no cells carry the held-out label(s) {missing}.")
    out = np.isin(labels, sorted(wanted))
    rng = np.random.default_rng(seed)
    val = _stratified_validation(labels, validation_fraction, rng)
    return ~(out | val)


def split_by_combination(
    data: ComparativeData,
    held_out: Sequence[str] | None = None,
    n_held_out: int | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    separator: str = "+",
) -> np.ndarray:
    """Hold out combinations of perturbations (the unseen-combination task).

    Either name the combinations (``held_out``) or let the function draw ``n_held_out``
    of them (default: half, at least one) among the combinations whose single perturbations
    all have cells, so the held-out effects are compositions of effects seen in training.

    Returns
    -------
    numpy.ndarray of bool, shape (n_cells,)
        ``True`` for training cells.
    """
    labels = perturbation_labels(data, separator)
    uniq = np.unique(labels)
    combos = [lab for lab in uniq if separator in lab]
    if held_out is None:
        singles = set(uniq)
        eligible = [c for c in combos if all(p in singles for p in c.split(separator))]
        if not eligible:
            raise DataValidationError(
                "no combination whose single perturbations are observed: nothing to hold out."
            )
        n = max(1, len(eligible) // 2) if n_held_out is None else int(n_held_out)
        if not 1 <= n <= len(eligible):
            raise ValueError(f"n_held_out must be in [1, {len(eligible)}].")
        rng = np.random.default_rng(seed)
        held_out = sorted(rng.choice(eligible, size=n, replace=False).tolist())
    else:
        not_combo = [h for h in held_out if separator not in canonical_label(data, h, separator)]
        if not_combo:
            raise ValueError(f"{not_combo} are not combinations; use split_by_perturbation.")
    return split_by_perturbation(data, held_out, validation_fraction, seed, separator)


def apply_split(data: ComparativeData, train_mask: np.ndarray) -> ComparativeData:
    """``data.set_split(train_mask)``; returns ``data`` (for chaining)."""
    return data.set_split(train_mask)
