r"""The batch contract between data and models: one :class:`SourceBatch` per source.

A *source* is a group of cells that a comparative model explains with its own plate: the
background (control) cells, and one or several target sources (stimulated cells, time
points, perturbed cells). A minibatch is a mapping ``{source name: SourceBatch}``, and
every model's ``model(sources)`` / ``guide(sources)`` takes exactly that, so a dataset with
three sources needs no new signature::

    batch = next(iter(data.loader(batch_size=256)))
    batch["background"].x_ng        # counts of the minibatch's background cells
    svi.step(batch)                 # pyro.infer.SVI(model.model, model.guide, ...)

Each source carries what its plate needs:

* ``x_ng``: observations (cells x features), or ``None`` for the *prior predictive*
  (then the model samples ``x`` and the guide cannot run);
* ``library_n``: library sizes (count likelihoods);
* ``index_n``: the subsample indices of the plate (row positions in the full source);
* ``n``: the full size of the source, so Pyro scales the minibatch terms by ``n / len(index)``
  and each source's ELBO term estimates the full-data term;
* ``design_nk``: the perturbation design rows (multi-hot), for perturbation models;
* ``role``: ``"background"`` or ``"target"``: what the model does differs by role (e.g. the
  salient latent is 0 on background cells), the plate name is the source's own name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

__all__ = ["BACKGROUND", "RESERVED_SOURCE_NAMES", "ROLES", "TARGET", "SourceBatch", "Sources"]

BACKGROUND = "background"
TARGET = "target"
ROLES = (BACKGROUND, TARGET)
#: Names a source may not take: plates and loss keys used elsewhere.
RESERVED_SOURCE_NAMES = ("global", "perturbation", "loss", "num_particles_vectorized")


@dataclass(frozen=True)
class SourceBatch:
    """The cells of one source in one minibatch (see the module docstring)."""

    x_ng: torch.Tensor | None = None
    library_n: torch.Tensor | None = None
    index_n: torch.Tensor | None = None
    n: int | None = None
    design_nk: torch.Tensor | None = None
    role: str = TARGET

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown source role {self.role!r}; use one of {ROLES}.")
        if self.x_ng is None and self.index_n is None and self.n is None:
            raise ValueError("a SourceBatch needs x_ng, index_n or n (its number of cells).")

    @property
    def size(self) -> int:
        """Number of cells in this minibatch (the subsample size of the plate)."""
        if self.index_n is not None:
            return int(self.index_n.shape[0])
        if self.x_ng is not None:
            return int(self.x_ng.shape[0])
        return int(self.n)

    @property
    def plate_size(self) -> int:
        """Full size of the source (the plate size used for subsample scaling)."""
        return int(self.n) if self.n is not None else self.size

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SourceBatch:
        """A copy with every tensor on ``device`` and the floating ones in ``dtype``."""
        moved = {}
        for k in ("x_ng", "library_n", "index_n", "design_nk"):
            value = getattr(self, k)
            if value is None:
                continue
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            moved[k] = value.to(device) if device is not None else value
        return replace(self, **moved)

    def without_data(self) -> SourceBatch:
        """The same cells with ``x_ng`` removed: the model then samples them (prior predictive)."""
        return replace(self, x_ng=None)


#: A minibatch: source name -> its cells.
Sources = Mapping[str, SourceBatch]


def sources_to(
    sources: Sources, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> dict[str, SourceBatch]:
    """Move every source of a batch to ``device`` (floating tensors to ``dtype``)."""
    return {name: src.to(device, dtype) for name, src in sources.items()}
