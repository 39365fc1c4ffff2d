"""AnnData -> tensors for comparative models.

(One file of ~600 lines on purpose: :class:`ComparativeData` is one object whose
construction, splits, feature matching and loaders share its row bookkeeping; reading from
disk lives in :mod:`.streaming`, designs in :mod:`.design`, the batch type in :mod:`.sources`.)

:class:`ComparativeData` splits the cells of an AnnData object into *sources*:

* ``"background"``: cells whose ``condition_key`` equals ``background`` (control cells),
* the target cells: every other (non-excluded) cell, pooled as one source ``"target"``
  (default) or, with ``targets="separate"``, one source per condition value (e.g.
  ``"IFN-beta"`` and ``"LPS"``, or time points),

and, for perturbation screens, builds a multi-hot design matrix ``d_nk`` (combinations
such as ``"A+B"`` switch on two perturbations). Minibatches are mappings ``{source name:
SourceBatch}`` (:mod:`pyro_compare.data.sources`) drawn from every source at each step, so
a model's ``pyro.plate(<source name>, ...)`` can subsample each source with Pyro's usual
scaling.

Sparse matrices stay sparse; one minibatch at a time is densified. The design is a sparse
CSR matrix; its rows are densified per minibatch too.

Data on disk: ``from_anndata`` also takes a path (``.h5ad``, ``.zarr``), a backed AnnData
(``read_h5ad(path, backed="r")``) or a list of them (e.g. one file per plate, same genes).
Then ``matrix`` is a :class:`~pyro_compare.data.streaming.RowStore`: library sizes and the
input checks come from one chunked pass, and the loader reads shuffled blocks of
contiguous rows through a buffer (:mod:`pyro_compare.data.streaming`), so memory does not
grow with the number of cells.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .design import build_design
from .sources import BACKGROUND, RESERVED_SOURCE_NAMES, TARGET, SourceBatch
from .streaming import (
    BLOCK_SIZE,
    BUFFER_BLOCKS,
    RowStore,
    SourceStream,
    _is_path,
    block_order,
    open_parts,
    sparse_design,
)
from .validation import (
    DataValidationError,
    check_labels,
    check_matrix_values,
    check_obs_key,
    check_values_present,
    get_matrix,
    scan_matrix,
)

__all__ = ["ComparativeData", "SOURCES", "TARGET_MODES", "ShardBatch", "build_design"]

#: Source names of the default (pooled-target) layout.
SOURCES: tuple[str, str] = (BACKGROUND, TARGET)
#: How target cells become sources: one pooled ``"target"`` source, or one per condition.
TARGET_MODES = ("pooled", "separate")


class ShardBatch(dict):
    """One rank's share of a data-parallel step: ``{source: SourceBatch}`` (a ``dict``) plus
    ``global_sizes``, ``{source: rows of the step in all ranks}`` (see
    :meth:`ComparativeData.loader`)."""

    def __init__(self, *args, global_sizes: Mapping[str, int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.global_sizes: dict[str, int] = dict(global_sizes or {})

    def weights(self) -> dict[str, float]:
        """Per-source factor ``m_rs / m_s`` that turns this rank's plate scale ``n_s / m_rs``
        into the global ``n_s / m_s`` (for a *sum* all-reduce of the ranks' gradients)."""
        return {s: self[s].size / self.global_sizes[s] for s in self}


@dataclass
class _Split:
    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]


class ComparativeData:
    """Cells of several sources (background + one or more targets) for a comparative model.

    Build it with :meth:`from_anndata`. Indices used throughout (``data.sources[s]``,
    ``SourceBatch.index_n``) are *row positions of the kept cells* in ``data.adata``.

    Attributes
    ----------
    adata
        The (possibly subsetted, when ``exclude`` is used) AnnData object.
    sources
        ``{source name: row positions}``; ``"background"`` first, then the target sources.
    source_roles
        ``{source name: "background" | "target"}``.
    library
        Library size ``l_n`` per cell (float32 array).
    design
        Multi-hot perturbation design ``d_nk`` (n_cells x n_perturbations, scipy CSR float32)
        or ``None``; minibatches carry its rows densified (``SourceBatch.design_nk``).
    matrix
        The data: a scipy CSR matrix or array in memory, or a
        :class:`~pyro_compare.data.streaming.RowStore` over files on disk (``streamed``).
    block_size, buffer_blocks
        Epoch order of :meth:`loader`: ``block_size=None`` is a full random permutation (the
        in-memory default); an integer shuffles blocks of that many consecutive rows, then
        rows within buffers of ``buffer_blocks`` blocks (the streamed default,
        :func:`~pyro_compare.data.streaming.block_order`). Change with :meth:`set_shuffle`.
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
        targets: str = "pooled",
        library_from_data: bool = True,
        block_size: int | None = None,
        buffer_blocks: int = BUFFER_BLOCKS,
    ) -> None:
        if targets not in TARGET_MODES:
            raise ValueError(f"unknown targets={targets!r}; use one of {TARGET_MODES}.")
        self.adata = adata
        if isinstance(matrix, RowStore):
            self.matrix = matrix
        else:
            self.matrix = matrix.tocsr() if sp.issparse(matrix) else np.asarray(matrix)
        self.condition = np.asarray(condition).astype(str)
        self.background = str(background)
        self.library = np.asarray(library, dtype=np.float32)
        self.library_from_data = library_from_data
        self.counts = counts
        if design is not None:
            design = sp.csr_matrix(design if sp.issparse(design) else np.asarray(design))
            design = design.astype(np.float32)
        self.design = design
        self.perturbation_names = list(perturbation_names)
        self.condition_key = condition_key
        self.layer = layer
        self.targets = targets
        self.set_shuffle(block_size, buffer_blocks)
        is_bg = self.condition == self.background
        self.sources: dict[str, np.ndarray] = {BACKGROUND: np.flatnonzero(is_bg)}
        if targets == "pooled":
            self.sources[TARGET] = np.flatnonzero(~is_bg)
        else:
            values = pd.unique(self.condition[~is_bg])
            if len(values) == 0:
                self.sources[TARGET] = np.empty(0, dtype=np.int64)
            for value in sorted(values):
                if value in self.sources or value in RESERVED_SOURCE_NAMES:
                    raise DataValidationError(
                        f"condition value {value!r} cannot name a target source (reserved: "
                        f"{(BACKGROUND, *RESERVED_SOURCE_NAMES)}). Rename it in "
                        f"adata.obs[{condition_key!r}]."
                    )
                self.sources[value] = np.flatnonzero(self.condition == value)
        self.source_roles = {s: (BACKGROUND if s == BACKGROUND else TARGET) for s in self.sources}
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
        targets: str = "pooled",
        block_size: int | None | str = "auto",
        buffer_blocks: int = BUFFER_BLOCKS,
    ) -> ComparativeData:
        """Build from an AnnData object, a file, or several files.

        Parameters
        ----------
        adata
            Cells x features; raw counts in ``X`` or in ``layers[layer]``. An AnnData in
            memory, or data left on disk and streamed: a path to an ``.h5ad`` / ``.zarr``,
            a backed AnnData (``anndata.read_h5ad(path, backed="r")``), or a list of
            paths / AnnData objects fitted together (e.g. one file per plate; the same genes
            by name, in any order; ``obs`` concatenated, duplicate cell names made unique
            as ``"<name>-<file index>"``). On-disk matrices must be CSR (or dense).
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
        targets
            ``"pooled"`` (default): every non-background cell in one source ``"target"``;
            ``"separate"``: one target source per value of ``condition_key`` (named by the
            value), e.g. control + IFN-beta + LPS, or time points. Each source gets its own
            plate and its own term in :class:`~pyro_compare.infer.SourceTrace_ELBO`.
        block_size, buffer_blocks
            Epoch order of the loader (see the class docs): ``"auto"`` is a full permutation
            in memory and blocks of :data:`~pyro_compare.data.streaming.BLOCK_SIZE` rows on
            disk.

        Raises
        ------
        DataValidationError
            Missing key or layer, absent background value, missing (NaN) labels, empty source,
            NaN / inf, negative or non-integer counts, or cells with zero total counts.
            Zero-count cells are an error, not silently dropped, so the rows of the result
            always line up with ``adata``: filter them first with
            ``scanpy.pp.filter_cells(adata, min_counts=1)``.
        """
        streamed = (
            _is_path(adata) or isinstance(adata, (list, tuple)) or getattr(adata, "isbacked", False)
        )
        if streamed:
            adata, parts = open_parts(adata, layer)
            store = RowStore(parts)
        if block_size == "auto":
            block_size = BLOCK_SIZE if streamed else None
        condition = check_labels(adata, condition_key, "condition_key")
        check_values_present([background], np.unique(condition), condition_key, "background value")
        if exclude:
            exclude = [str(e) for e in exclude]
            check_values_present(exclude, np.unique(condition), condition_key, "excluded value(s)")
            keep = ~np.isin(condition, exclude)
            if streamed:
                store = RowStore(parts, np.flatnonzero(keep))
                adata = adata[keep]
            else:
                adata = adata[keep].copy()
            condition = condition[keep]
        if not adata.var_names.is_unique:
            dup = list(adata.var_names[adata.var_names.duplicated()][:3])
            raise DataValidationError(
                f"adata.var_names has duplicated feature names (first: {dup}); genes are "
                f"matched by name. Make them unique with adata.var_names_make_unique()."
            )
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        if streamed:
            # One chunked pass: value checks and row sums, never the whole matrix.
            matrix = store
            row_sums = scan_matrix(store.chunks(), counts=counts, where=where)
        else:
            matrix = get_matrix(adata, layer)
            check_matrix_values(matrix, counts=counts, where=where)
            row_sums = None
        if library_key is not None:
            check_obs_key(adata, library_key, "library_key")
            library = adata.obs[library_key].to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(library)) or (library <= 0).any():
                raise DataValidationError(
                    f"adata.obs[{library_key!r}] must hold positive finite library sizes."
                )
        else:
            if row_sums is None:
                row_sums = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float64)
            library = row_sums
        if counts:
            if row_sums is None:
                row_sums = np.asarray(matrix.sum(axis=1)).ravel()
            zero = np.flatnonzero(row_sums == 0)
            if zero.size:
                raise DataValidationError(
                    f"{zero.size} cell(s) have zero total counts in {where} (first: "
                    f"{list(adata.obs_names[zero[:3]])}). Remove them before fitting, e.g. "
                    f"scanpy.pp.filter_cells(adata, min_counts=1)."
                )
        design = None
        names: list[str] = []
        if perturbation_key is not None:
            labels = check_labels(adata, perturbation_key, "perturbation_key")
            design, names = sparse_design(labels, control=background, separator=separator)
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
            targets=targets,
            library_from_data=library_key is None,
            block_size=block_size,
            buffer_blocks=buffer_blocks,
        )

    # ------------------------------------------------------------------ properties
    @property
    def n_cells(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_features(self) -> int:
        return self.matrix.shape[1]

    @property
    def streamed(self) -> bool:
        """Whether the data stay on disk (``matrix`` is a RowStore)."""
        return isinstance(self.matrix, RowStore)

    def set_shuffle(
        self, block_size: int | None = None, buffer_blocks: int = BUFFER_BLOCKS
    ) -> ComparativeData:
        """Set the loader's epoch order (in place; returns self): ``block_size=None`` is a full
        random permutation, an integer a block shuffle (see the class docs)."""
        if block_size is not None and (int(block_size) < 1 or int(buffer_blocks) < 1):
            raise ValueError("block_size and buffer_blocks must be positive (or block_size=None).")
        self.block_size = None if block_size is None else int(block_size)
        self.buffer_blocks = int(buffer_blocks)
        return self

    @property
    def n_perturbations(self) -> int:
        return 0 if self.design is None else self.design.shape[1]

    @property
    def var_names(self) -> pd.Index:
        return self.adata.var_names

    @property
    def feature_names(self) -> list[str]:
        """Feature (gene) names, in column order."""
        return [str(v) for v in self.adata.var_names]

    @property
    def source_names(self) -> tuple[str, ...]:
        """Source names, background first."""
        return tuple(self.sources)

    @property
    def target_sources(self) -> tuple[str, ...]:
        """Names of the target sources."""
        return tuple(s for s, r in self.source_roles.items() if r == TARGET)

    def __repr__(self) -> str:
        parts = " + ".join(f"{len(i)} {s}" for s, i in self.sources.items())
        extra = f", {self.n_perturbations} perturbations" if self.design is not None else ""
        return f"ComparativeData({parts} cells x {self.n_features} features{extra})"

    # ------------------------------------------------------------------ features
    def align_features(self, feature_names: Sequence[str]) -> ComparativeData:
        """These data with their features matched *by name* to ``feature_names``.

        Features in another order are reordered; features the data lack raise an error
        (how many, and the first few names); extra features are dropped with a warning (and
        library sizes computed from the data are recomputed over the kept features, as at
        training time). Returns ``self`` when the names already match.
        """
        names = pd.Index([str(n) for n in feature_names])
        current = pd.Index(self.feature_names)
        if current.equals(names):
            return self
        have = set(current)
        missing = [n for n in names if n not in have]
        if missing:
            raise DataValidationError(
                f"gene mismatch: the data lack {len(missing)} of the model's {len(names)} "
                f"features (first: {missing[:5]}). Use data with the genes the model was "
                f"fitted on (model.feature_names), e.g. adata[:, model.feature_names]."
            )
        wanted = set(names)
        extra = [n for n in current if n not in wanted]
        if extra:
            warnings.warn(
                f"the data have {len(extra)} feature(s) the model was not fitted on (first: "
                f"{extra[:5]}); they are dropped.",
                UserWarning,
                stacklevel=2,
            )
        cols = current.get_indexer(names)
        new = copy.copy(self)
        new.matrix = self.matrix[:, cols]
        new.adata = self.adata[:, cols]
        if extra and self.library_from_data:
            new.library = np.asarray(new.matrix.sum(axis=1), dtype=np.float32).ravel()
        return new

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
        for s in self.sources:
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

    def _design_rows(self, rows: np.ndarray) -> torch.Tensor:
        block = self.design[rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))

    def source_batch(
        self, source: str, rows: np.ndarray, n: int | None = None, x=None
    ) -> SourceBatch:
        """The :class:`SourceBatch` of ``rows`` (row positions) of ``source``; ``n`` is the
        plate size (the number of cells of the split the rows are drawn from); ``x`` the
        rows' data when already read (else read from ``matrix``)."""
        r = np.asarray(rows, dtype=np.int64)
        if x is not None:
            x = x.toarray() if sp.issparse(x) else x
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return SourceBatch(
            x_ng=self.dense(r) if x is None else x,
            library_n=torch.from_numpy(self.library[r]),
            index_n=torch.from_numpy(r),
            n=int(n) if n is not None else len(r),
            design_nk=None if self.design is None else self._design_rows(r),
            role=self.source_roles[source],
        )

    def batch(
        self, rows: Mapping[str, np.ndarray], sizes: Mapping[str, int] | None = None
    ) -> dict[str, SourceBatch]:
        """The argument of ``model()`` / ``guide()`` for the given rows per source.

        Returns ``{source: SourceBatch}`` for each source in ``rows`` (see
        :mod:`pyro_compare.data.sources`); ``sizes`` gives each plate's full size.
        """
        for s in rows:
            if s not in self.sources:
                raise KeyError(f"unknown source {s!r}; the data have {self.source_names}.")
        return {
            s: self.source_batch(s, r, None if sizes is None else sizes[s]) for s, r in rows.items()
        }

    def full_batch(self, split: str | None = None) -> dict[str, SourceBatch]:
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
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[dict[str, SourceBatch]]:
        """Minibatches holding every source, one epoch's worth.

        Each step draws from each source a share of ``batch_size`` proportional to its size
        (at least one cell), so one epoch visits every cell about once. Each batch is a
        ``{source: SourceBatch}`` mapping, the argument of the models' ``model``/``guide``:
        ``svi.step(batch)`` works.

        Data-parallel sharding (``world_size > 1``): ``batch_size`` is the *global* batch.
        Every rank draws the same epoch order (pass the same ``seed`` on every rank) and the
        same per-step source minibatches as the 1-process loader with ``batch_size``; rank
        ``r`` keeps rows ``r::world_size`` of each source's minibatch. So the ranks' shards
        of a step are disjoint, their union is the 1-process step, every rank makes
        :meth:`n_steps` steps, and ``SourceBatch.n`` stays the full source size. With
        ``world_size > 1`` the batches are :class:`ShardBatch` mappings whose
        ``global_sizes`` give each source's rows in the whole step (all ranks), ``m_s``.
        Pyro scales rank ``r``'s plate by ``n_s / m_rs``; to reproduce the 1-process
        gradient exactly, weight rank ``r``'s source-``s`` loss by ``m_rs / m_s`` before a
        *sum* all-reduce (``world_size * m_rs / m_s`` before an average, as DDP does); when
        ``m_s`` is divisible by ``world_size`` the weight is 1 (sum: ``1 / world_size``).
        A source whose step minibatch has fewer than ``world_size`` rows raises
        :class:`DataValidationError` (a rank would get no cell of it): raise the batch size.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}."
            )
        idx = self.indices(split)
        sizes = {s: len(i) for s, i in idx.items()}
        for s, n in sizes.items():
            if n == 0:
                raise DataValidationError(f"split {split!r} has no {s!r} cells.")
        total = sum(sizes.values())
        n_steps = max(1, math.ceil(total / batch_size))
        rng = np.random.default_rng(seed)
        streams = None
        if self.block_size is None and not self.streamed:
            order = {s: (rng.permutation(i) if shuffle else i) for s, i in idx.items()}
        else:
            # Read through per-source buffers (chunk-friendly when block_size is set).
            order, streams = {}, {}
            for s, i in idx.items():
                if shuffle and self.block_size is not None:
                    order[s], bounds = block_order(i, rng, self.block_size, self.buffer_blocks)
                else:
                    order[s] = rng.permutation(i) if shuffle else i
                    step = (self.block_size or BLOCK_SIZE) * self.buffer_blocks
                    bounds = np.unique(np.r_[np.arange(0, len(i), step), len(i)])
                streams[s] = SourceStream(self.matrix, order[s], bounds)
        chunks = {s: np.array_split(order[s], min(n_steps, sizes[s])) for s in idx}
        if world_size > 1:
            for s, parts in chunks.items():
                smallest = min(len(p) for p in parts)
                if smallest < world_size:
                    raise DataValidationError(
                        f"source {s!r} ({sizes[s]} {split} cells) gets only {smallest} cell(s) in "
                        f"some steps of global batch_size={batch_size}, fewer than "
                        f"world_size={world_size}: a rank would have no {s!r} cell. Use a "
                        f"larger batch_size (or fewer processes)."
                    )
        starts = {s: np.cumsum([0] + [len(p) for p in parts]) for s, parts in chunks.items()}
        shard = slice(rank, None, world_size)
        for step in range(n_steps):
            # A source smaller than the number of steps is cycled.
            rows = {s: parts[step % len(parts)] for s, parts in chunks.items()}
            if streams is None:
                batch = self.batch({s: r[shard] for s, r in rows.items()}, sizes)
            else:
                batch = {}
                for s, r in rows.items():
                    j = step % len(chunks[s])
                    x = streams[s].take(int(starts[s][j]), int(starts[s][j + 1]))
                    x = x if world_size == 1 else x[shard]
                    batch[s] = self.source_batch(s, r[shard], sizes[s], x=x)
            if world_size == 1:
                yield batch
            else:
                yield ShardBatch(batch, global_sizes={s: len(r) for s, r in rows.items()})

    def source_loader(
        self, source: str, batch_size: int = 1024, split: str | None = None
    ) -> Iterator[dict[str, SourceBatch]]:
        """Batches of one source only, in row order (for latents and predictions)."""
        idx = self.indices(split)[source]
        for start in range(0, len(idx), batch_size):
            yield self.batch({source: idx[start : start + batch_size]}, {source: len(idx)})
