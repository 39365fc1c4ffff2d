"""AnnData -> tensors for comparative models.

:class:`ComparativeData` splits the cells of an AnnData object into two *sources*:

* ``"background"``: cells whose ``condition_key`` equals ``background`` (control cells),
* ``"target"``: every other (non-excluded) cell (stimulated / perturbed cells),

and, for perturbation screens, builds a multi-hot design matrix ``d_nk`` (combinations
such as ``"A+B"`` switch on two perturbations).  Minibatches are drawn from both sources
at every step, so the model's ``pyro.plate("background", ...)`` and
``pyro.plate("target", ...)`` can subsample each source with Pyro's usual scaling.

Sparse matrices stay sparse; one minibatch at a time is densified.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .validation import (
    DataValidationError,
    check_matrix_values,
    check_obs_key,
    check_values_present,
    get_matrix,
)

__all__ = ["ComparativeData", "SOURCES"]

SOURCES: tuple[str, str] = ("background", "target")


@dataclass
class _Split:
    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]


class ComparativeData:
    """Cells of two sources (background / target) ready for a comparative model.

    Build it with :meth:`from_anndata` (or :meth:`from_arrays`).  Indices used
    throughout (``data.sources[s]``, ``index_background`` ...) are *row positions of
    the kept cells* in ``data.adata``.

    Attributes
    ----------
    adata
        The (possibly subsetted, when ``exclude`` is used) AnnData object.
    sources
        ``{"background": idx_b, "target": idx_t}`` row positions per source.
    library
        Library size ``l_n`` per cell (float32 array).
    design
        Multi-hot perturbation design ``d_nk`` (n_cells x n_perturbations) or ``None``.
    perturbation_names
        Names of the K perturbations (columns of ``design``).
    """

    def __init__(
        self,
        adata,
        matrix,
        condition: np.ndarray,
        background: str,
        library: np.ndarray,
        counts: bool,
        design: np.ndarray | None = None,
        perturbation_names: Sequence[str] = (),
        condition_key: str | None = None,
        layer: str | None = None,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.adata = adata
        self.matrix = matrix.tocsr() if sp.issparse(matrix) else np.asarray(matrix)
        self.condition = np.asarray(condition).astype(str)
        self.background = str(background)
        self.library = np.asarray(library, dtype=np.float32)
        self.counts = counts
        self.design = None if design is None else np.asarray(design, dtype=np.float32)
        self.perturbation_names = list(perturbation_names)
        self.condition_key = condition_key
        self.layer = layer
        is_bg = self.condition == self.background
        self.sources: dict[str, np.ndarray] = {
            "background": np.flatnonzero(is_bg),
            "target": np.flatnonzero(~is_bg),
        }
        for name, idx in self.sources.items():
            if idx.size == 0:
                raise DataValidationError(
                    f"source {name!r} has zero cells (condition_key={condition_key!r}, "
                    f"background={background!r}). A comparative model needs both background and "
                    f"target cells: check the background value and the excluded values."
                )
        self.split(validation_fraction=validation_fraction, seed=seed)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_anndata(
        cls,
        adata,
        condition_key: str,
        background: str,
        layer: str | None = None,
        library_key: str | None = None,
        perturbation_key: str | None = None,
        exclude: Sequence[str] = (),
        separator: str = "+",
        counts: bool = True,
        validation_fraction: float = 0.1,
        seed: int = 0,
    ) -> ComparativeData:
        """Build from an AnnData object.

        Parameters
        ----------
        adata
            Cells x features; raw counts in ``X`` or in ``layers[layer]``.
        condition_key
            ``obs`` column giving each cell's condition.
        background
            The value of ``condition_key`` marking background (control) cells; every other
            value is a target.
        layer
            Layer holding the data (``None``: ``X``).
        library_key
            ``obs`` column with library sizes; default: the row sums of the data.
        perturbation_key
            ``obs`` column naming each cell's perturbation(s); combinations are written
            ``"A+B"`` (see ``separator``). Builds ``design`` (multi-hot) with one column per
            single perturbation; the background value maps to the all-zero row.
        exclude
            Values of ``condition_key`` whose cells are dropped (e.g. ``("unassigned",)``).
        counts
            Validate the data as raw counts (non-negative integers) for count likelihoods.
            Set ``False`` for continuous data and ``likelihood="gaussian"``.
        validation_fraction, seed
            Seeded per-source train/validation split.

        Raises
        ------
        DataValidationError
            Missing key or layer, absent background value, empty source, NaN / inf, negative or
            non-integer counts, or cells with zero total counts. Zero-count cells are an error,
            not silently dropped, so the rows of the result always line up with ``adata``:
            filter them first with ``scanpy.pp.filter_cells(adata, min_counts=1)``.
        """
        check_obs_key(adata, condition_key, "condition_key")
        condition = adata.obs[condition_key].astype(str).to_numpy()
        check_values_present([background], np.unique(condition), condition_key, "background value")
        if exclude:
            exclude = [str(e) for e in exclude]
            check_values_present(exclude, np.unique(condition), condition_key, "excluded value(s)")
            keep = ~np.isin(condition, exclude)
            adata = adata[keep].copy()
            condition = condition[keep]
        matrix = get_matrix(adata, layer)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        check_matrix_values(matrix, counts=counts, where=where)
        if library_key is not None:
            check_obs_key(adata, library_key, "library_key")
            library = adata.obs[library_key].to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(library)) or (library <= 0).any():
                raise DataValidationError(
                    f"adata.obs[{library_key!r}] must hold positive finite library sizes."
                )
        else:
            library = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)
        if counts:
            zero = np.flatnonzero(np.asarray(matrix.sum(axis=1)).ravel() == 0)
            if zero.size:
                raise DataValidationError(
                    f"{zero.size} cell(s) have zero total counts in {where} (first: "
                    f"{list(adata.obs_names[zero[:3]])}). Remove them before fitting, e.g. "
                    f"scanpy.pp.filter_cells(adata, min_counts=1)."
                )
        design = None
        names: list[str] = []
        if perturbation_key is not None:
            check_obs_key(adata, perturbation_key, "perturbation_key")
            labels = adata.obs[perturbation_key].astype(str).to_numpy()
            design, names = build_design(labels, control=background, separator=separator)
        return cls(
            adata,
            matrix,
            condition,
            background,
            library,
            counts=counts,
            design=design,
            perturbation_names=names,
            condition_key=condition_key,
            layer=layer,
            validation_fraction=validation_fraction,
            seed=seed,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_cells(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_features(self) -> int:
        return self.matrix.shape[1]

    @property
    def n_perturbations(self) -> int:
        return 0 if self.design is None else self.design.shape[1]

    @property
    def var_names(self) -> pd.Index:
        return self.adata.var_names

    def __repr__(self) -> str:
        n_b, n_t = (len(self.sources[s]) for s in SOURCES)
        extra = f", {self.n_perturbations} perturbations" if self.design is not None else ""
        return (
            f"ComparativeData({n_b} background + {n_t} target cells x {self.n_features} "
            f"features{extra})"
        )

    # ------------------------------------------------------------------ splits
    def split(self, validation_fraction: float = 0.1, seed: int = 0) -> ComparativeData:
        """Seeded random train/validation split within each source (in place; returns self)."""
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1).")
        rng = np.random.default_rng(seed)
        train, val = {}, {}
        for s, idx in self.sources.items():
            perm = rng.permutation(idx)
            n_val = int(round(validation_fraction * len(idx)))
            if len(idx) - n_val < 1:
                n_val = 0
            val[s], train[s] = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self._split = _Split(train, val)
        self.validation_fraction = validation_fraction
        return self

    def set_split(self, train_mask: np.ndarray) -> ComparativeData:
        """Use an explicit split: ``train_mask`` (bool, one per cell); the rest is validation.

        Used for held-out cells, held-out perturbations or unseen combinations.
        """
        train_mask = np.asarray(train_mask, dtype=bool)
        if train_mask.shape != (self.n_cells,):
            raise ValueError(f"train_mask must have shape ({self.n_cells},).")
        train = {s: idx[train_mask[idx]] for s, idx in self.sources.items()}
        val = {s: idx[~train_mask[idx]] for s, idx in self.sources.items()}
        for s in SOURCES:
            if train[s].size == 0:
                raise DataValidationError(f"the training split has no {s!r} cells.")
        self._split = _Split(train, val)
        return self

    def indices(self, split: str | None = "train") -> dict[str, np.ndarray]:
        """Row positions per source for ``split`` in {"train", "validation", None (all)}."""
        if split is None or split == "all":
            return dict(self.sources)
        if split == "train":
            return dict(self._split.train)
        if split == "validation":
            return dict(self._split.validation)
        raise ValueError(f"unknown split {split!r}; use 'train', 'validation' or None.")

    # ------------------------------------------------------------------ tensors
    def dense(self, rows: np.ndarray) -> torch.Tensor:
        """Densify the given rows (one minibatch) as a float32 tensor."""
        block = self.matrix[rows]
        if sp.issparse(block):
            block = block.toarray()
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    def batch(self, rows: dict[str, np.ndarray], sizes: dict[str, int] | None = None) -> dict:
        """The keyword arguments of ``model()`` / ``guide()`` for the given rows per source.

        Keys: ``x_<s>`` (cells x features), ``library_<s>`` (cells,), ``index_<s>`` (the
        subsample indices, used by the source plates), ``n_<s>`` (the plate size: number of
        cells of the split the rows are drawn from), and ``design_<s>`` when the data
        have a perturbation design.
        """
        out: dict = {}
        for s in SOURCES:
            r = np.asarray(rows[s], dtype=np.int64)
            out[f"x_{s}"] = self.dense(r)
            out[f"library_{s}"] = torch.from_numpy(self.library[r])
            out[f"index_{s}"] = torch.from_numpy(r)
            out[f"n_{s}"] = int(sizes[s]) if sizes is not None else len(r)
            if self.design is not None:
                out[f"design_{s}"] = torch.from_numpy(self.design[r])
        return out

    def full_batch(self, split: str | None = None) -> dict:
        """One batch holding every cell of ``split`` (default: all cells)."""
        idx = self.indices(split)
        return self.batch(idx, {s: len(i) for s, i in idx.items()})

    def n_steps(self, batch_size: int, split: str | None = "train") -> int:
        """Number of steps :meth:`loader` makes per epoch."""
        total = sum(len(i) for i in self.indices(split).values())
        return max(1, math.ceil(total / batch_size))

    def loader(
        self,
        batch_size: int = 128,
        shuffle: bool = True,
        split: str | None = "train",
        seed: int | None = None,
    ) -> Iterator[dict]:
        """Minibatches holding both sources, one epoch's worth.

        Each step draws from each source a share of ``batch_size`` proportional to its size
        (at least one cell), so one epoch visits every cell about once. Each batch is a dict
        whose keys are exactly the keyword arguments of the models' ``model``/``guide``:
        ``svi.step(**batch)`` works.
        """
        idx = self.indices(split)
        sizes = {s: len(i) for s, i in idx.items()}
        for s, n in sizes.items():
            if n == 0:
                raise DataValidationError(f"split {split!r} has no {s!r} cells.")
        total = sum(sizes.values())
        n_steps = max(1, math.ceil(total / batch_size))
        rng = np.random.default_rng(seed)
        order = {s: (rng.permutation(i) if shuffle else i) for s, i in idx.items()}
        chunks = {s: np.array_split(order[s], min(n_steps, sizes[s])) for s in SOURCES}
        for step in range(n_steps):
            rows = {}
            for s in SOURCES:
                parts = chunks[s]
                # A source smaller than the number of steps is cycled.
                rows[s] = parts[step % len(parts)]
            yield self.batch(rows, sizes)


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
