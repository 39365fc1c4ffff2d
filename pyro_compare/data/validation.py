"""Input checks that fail early, naming the column / layer and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp

__all__ = [
    "DataValidationError",
    "check_labels",
    "check_matrix_values",
    "check_obs_key",
    "get_matrix",
    "scan_matrix",
]


class DataValidationError(ValueError):
    """Raised when the input data cannot be used as given; the message says how to fix it."""


def check_obs_key(adata, key: str, what: str) -> None:
    """Fail if ``key`` is not a column of ``adata.obs``."""
    if key not in adata.obs.columns:
        cols = ", ".join(map(repr, list(adata.obs.columns)[:20]))
        raise DataValidationError(
            f"{what} {key!r} is not a column of adata.obs (available: {cols}). "
            f"Pass the name of the obs column that holds it."
        )


def get_matrix(adata, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]`` with a clear error for a missing layer."""
    if getattr(adata, "isbacked", False):
        raise DataValidationError(
            f"the AnnData is backed (opened with read_h5ad(..., backed='r'), file "
            f"{adata.filename}): its matrix is not loaded into memory. Pass it (or the path) "
            f"to ComparativeData.from_anndata, which streams it from disk, or load it with "
            f"adata = adata.to_memory()."
        )
    if layer is None:
        if adata.X is None:
            raise DataValidationError(
                "adata.X is empty. Put the raw counts in X or pass "
                "layer='<name of the counts layer>'."
            )
        return adata.X
    if layer not in adata.layers:
        layers = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise DataValidationError(
            f"layer {layer!r} is not in adata.layers (available: {layers}). "
            f"Pass layer=None to use adata.X, or one of the available layers."
        )
    return adata.layers[layer]


def check_labels(adata, key: str, what: str) -> np.ndarray:
    """The values of ``adata.obs[key]`` as strings, failing on missing (NaN / None) labels.

    A missing label would otherwise become the string ``"nan"`` and silently count as a
    condition (e.g. a target source) of its own.
    """
    check_obs_key(adata, key, what)
    column = adata.obs[key]
    missing = np.asarray(column.isna())
    if missing.any():
        first = list(adata.obs_names[np.flatnonzero(missing)[:3]])
        raise DataValidationError(
            f"adata.obs[{key!r}] ({what}) has {int(missing.sum())} missing (NaN) value(s) "
            f"(first cells: {first}). Fill them with a label or drop those cells, e.g. "
            f"adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    return column.astype(str).to_numpy()


def _values(matrix) -> np.ndarray:
    """Stored values of a dense or sparse matrix (no densification)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix)


def check_matrix_values(matrix, counts: bool, where: str, chunk: int = 10_000_000) -> None:
    """Check a data matrix for NaN/inf and, for count likelihoods, negative or non-integer values.

    Parameters
    ----------
    matrix
        Dense array or scipy sparse matrix (cells x features).
    counts
        Whether a count likelihood (NB, ZINB, Poisson) will be used.
    where
        Human-readable name of the matrix (``"adata.X"`` or ``"adata.layers['counts']"``).
    """
    values = _values(matrix).ravel()
    # Chunked so that a large dense matrix is checked without a full boolean copy.
    for start in range(0, values.size, chunk):
        v = values[start : start + chunk]
        if not np.issubdtype(v.dtype, np.number):
            raise DataValidationError(f"{where} has non-numeric dtype {v.dtype}.")
        if np.issubdtype(v.dtype, np.floating):
            if np.isnan(v).any():
                raise DataValidationError(
                    f"{where} contains NaN values. Remove or impute them before fitting "
                    f"(e.g. drop the affected cells/genes)."
                )
            if np.isinf(v).any():
                raise DataValidationError(f"{where} contains infinite values. Remove them first.")
        if counts:
            if (v < 0).any():
                raise DataValidationError(
                    f"{where} contains negative values, but a count likelihood (nb, zinb, poisson) "
                    f"needs raw non-negative counts. Pass the raw counts layer (layer=...) or use "
                    f"likelihood='gaussian' with counts=False for continuous data."
                )
            if np.issubdtype(v.dtype, np.floating) and (np.mod(v, 1.0) != 0).any():
                raise DataValidationError(
                    f"{where} contains non-integer values, which looks like normalised or "
                    f"log-transformed data; a count likelihood needs raw integer counts. Pass the "
                    f"raw counts layer (e.g. layer='counts'), or counts=False with "
                    f"likelihood='gaussian'."
                )


def check_values_present(values: Iterable, allowed: Iterable, key: str, what: str) -> None:
    """Fail if any of ``values`` is not among ``allowed`` (the observed categories of ``key``)."""
    allowed = set(map(str, allowed))
    missing = [v for v in values if str(v) not in allowed]
    if missing:
        shown = ", ".join(map(repr, sorted(allowed)[:20]))
        raise DataValidationError(
            f"{what} {missing!r} not found in adata.obs[{key!r}] (values: {shown}). "
            f"Check the spelling or pass one of the listed values."
        )


def scan_matrix(chunks, counts: bool, where: str) -> np.ndarray:
    """One streaming pass over ``(first row, block)`` chunks of a matrix on disk.

    Checks every block as :func:`check_matrix_values` does (non-numeric, NaN / inf, and for
    counts negative or non-integer values) and returns the row sums (float64), from which
    the caller takes library sizes and finds zero-count cells; the matrix is never loaded
    whole.
    """
    sums = []
    for _, block in chunks:
        check_matrix_values(block, counts=counts, where=where)
        sums.append(np.asarray(block.sum(axis=1), dtype=np.float64).ravel())
    return np.concatenate(sums) if sums else np.zeros(0)
