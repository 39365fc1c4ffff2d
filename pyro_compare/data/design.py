"""Perturbation designs: multi-hot rows ``d_nk`` from labels such as ``"A+B"``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .comparative import ComparativeData

__all__ = ["build_design", "design_matrix"]


def build_design(
    labels: np.ndarray, control: str, separator: str = "+"
) -> tuple[np.ndarray, list[str]]:
    """Multi-hot design matrix from perturbation labels.

    ``"A+B"`` switches on the columns of ``A`` and ``B``; the ``control`` label gives the
    all-zero row.  Columns are the sorted single perturbation names.
    """
    labels = np.asarray(labels).astype(str)
    parts = [
        [] if lab == control else [p.strip() for p in lab.split(separator) if p.strip()]
        for lab in labels
    ]
    names = sorted({p for ps in parts for p in ps if p != control})
    if not names:
        warnings.warn("no perturbations found: every cell is a control.", stacklevel=2)
    col = {n: j for j, n in enumerate(names)}
    design = np.zeros((len(labels), len(names)), dtype=np.float32)
    for i, ps in enumerate(parts):
        for p in ps:
            if p != control:
                design[i, col[p]] = 1.0
    return design, names


def design_matrix(
    data: ComparativeData, perturbations: Sequence | str | np.ndarray, separator: str = "+"
) -> tuple[np.ndarray, list[str]]:
    """Design rows (J x K) and canonical labels for perturbation labels or design vectors.

    ``perturbations`` is a label (``"IFNGR1"``, ``"A+B"``, the control value), a list of
    labels, or an array of design rows (J x K or K).
    """
    from .splits import canonical_label  # splits imports comparative, which imports us

    if isinstance(perturbations, str):
        perturbations = [perturbations]
    arr = np.asarray(perturbations) if not isinstance(perturbations, list) else None
    if arr is not None and arr.dtype.kind in "fiub":
        rows = np.atleast_2d(arr).astype(np.float32)
        if rows.shape[1] != data.n_perturbations:
            raise ValueError(f"design rows must have {data.n_perturbations} columns.")
        names = np.asarray(data.perturbation_names, dtype=object)
        labels = [separator.join(names[r > 0.5]) or data.background for r in rows]
        return rows, labels
    rows, labels = [], []
    col = {n: j for j, n in enumerate(data.perturbation_names)}
    for p in perturbations:
        label = canonical_label(data, str(p), separator)
        row = np.zeros(data.n_perturbations, dtype=np.float32)
        if label != data.background:
            for part in label.split(separator):
                row[col[part]] = 1.0
        rows.append(row)
        labels.append(label)
    return np.stack(rows), labels
