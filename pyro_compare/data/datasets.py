"""Where the real example datasets live.

The project does not ship or download data: tests, tutorials, benchmarks and experiments
read the AnnData files from a folder, found in this order:

1. ``$PYRO_COMPARE_DATA_DIR``;
2. ``shared/data`` next to the source checkout (``<checkout>/../shared/data``);
3. ``shared/data`` in the current directory or one of its parents.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["KANG2018", "PAPALEXI2021", "data_dir", "dataset_path", "papalexi2021"]

#: Kang et al. (2018) PBMCs, control vs IFN-beta stimulated (raw counts).
KANG2018 = "kang2018_scgen_valid_counts.h5ad"
#: Papalexi et al. (2021) ECCITE-seq CRISPR screen, low-MOI (raw counts).
PAPALEXI2021 = "papalexi2021_sceptre_lowmoi_counts.h5ad"


def _candidates() -> list[Path]:
    if "PYRO_COMPARE_DATA_DIR" in os.environ:
        return [Path(os.environ["PYRO_COMPARE_DATA_DIR"])]
    checkout = Path(__file__).resolve().parents[2]
    cwd = Path.cwd().resolve()
    return [checkout.parent / "shared" / "data"] + [
        p / "shared" / "data" for p in (cwd, *cwd.parents)
    ]


def data_dir() -> Path:
    """The first existing data folder (see the module docstring); the default if none."""
    candidates = _candidates()
    for folder in candidates:
        if folder.is_dir():
            return folder
    return candidates[0]


def dataset_path(name: str, must_exist: bool = True) -> Path:
    """Path of dataset file ``name`` (e.g. :data:`KANG2018`).

    Raises
    ------
    FileNotFoundError
        When ``must_exist`` and the file is in none of the searched folders; the message
        lists them and names the environment variable to set.
    """
    candidates = _candidates()
    for folder in candidates:
        if (folder / name).exists():
            return folder / name
    if must_exist:
        searched = ", ".join(str(c) for c in candidates[:3])
        raise FileNotFoundError(
            f"dataset {name!r} not found (searched {searched}, ...). Set PYRO_COMPARE_DATA_DIR "
            f"to the folder that holds it."
        )
    return candidates[0] / name


def papalexi2021(path: str | Path | None = None, **kwargs):
    """The Papalexi et al. (2021) screen as :class:`~pyro_compare.data.ComparativeData`.

    Its conventions in one place: the ``perturbation`` obs column gives both the sources
    (``"non-targeting"`` cells are the background) and the multi-hot design, and
    ``"unassigned"`` cells (no guide called) are dropped. ``path`` defaults to
    :func:`dataset_path` of :data:`PAPALEXI2021`; ``kwargs`` go to
    :meth:`~pyro_compare.data.ComparativeData.from_anndata` (e.g. ``seed=``).
    """
    import anndata as ad

    from .comparative import ComparativeData

    adata = ad.read_h5ad(path if path is not None else dataset_path(PAPALEXI2021))
    return ComparativeData.from_anndata(
        adata,
        condition_key="perturbation",
        background="non-targeting",
        perturbation_key="perturbation",
        exclude=("unassigned",),
        **kwargs,
    )
