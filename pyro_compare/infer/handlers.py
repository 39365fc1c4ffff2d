r"""Poutine handlers that mark which source a trace site belongs to.

A comparative model writes each source's story under that source's plate::

    with source_plate("background", src):       # pyro.plate + source tag
        z = pyro.sample("z_background", ...)

:func:`source_plate` is ``pyro.plate(name, src.plate_size, subsample=src.index_n)`` plus a
:class:`SourceMessenger` that writes ``{"source": name, "role": src.role}`` into the
``infer`` dict of every sample site inside. :class:`~pyro_compare.infer.SourceTrace_ELBO`
splits the ELBO by that tag and the penalties find their tensors by it (e.g. "the salient
posterior of every background-role source"), so neither needs to know the source names in
advance, nor to read attributes that the guide set as a side effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from ..data.sources import SourceBatch

__all__ = [
    "ROLE_KEY",
    "SOURCE_KEY",
    "SourceMessenger",
    "record",
    "site_role",
    "site_tag",
    "source_plate",
]

SOURCE_KEY = "source"
ROLE_KEY = "source_role"


class SourceMessenger(Messenger):
    """Tags every sample site in its context with its source name and role (``infer`` dict)."""

    def __init__(self, name: str, role: str) -> None:
        super().__init__()
        self.name = name
        self.role = role

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample":
            # A fresh dict: ``infer`` may be shared between sites by the caller.
            msg["infer"] = {**(msg.get("infer") or {}), SOURCE_KEY: self.name, ROLE_KEY: self.role}


@contextmanager
def source_plate(name: str, src: SourceBatch) -> Iterator[object]:
    """``pyro.plate`` of one source (with subsampling) whose sites are tagged by source.

    Yields what ``pyro.plate`` yields (the subsample indices).
    """
    with ExitStack() as stack:
        idx = stack.enter_context(pyro.plate(name, src.plate_size, subsample=src.index_n))
        stack.enter_context(SourceMessenger(name, src.role))
        yield idx


def site_tag(site: dict) -> str | None:
    """The source name a trace site was tagged with, or ``None``."""
    return (site.get("infer") or {}).get(SOURCE_KEY)


def site_role(site: dict) -> str | None:
    """The role (``"background"``/``"target"``) a trace site was tagged with, or ``None``."""
    return (site.get("infer") or {}).get(ROLE_KEY)


def record(name: str, value: torch.Tensor, event_dim: int = 1) -> torch.Tensor:
    """Record an auxiliary tensor as a trace site (a ``pyro.deterministic`` site that is also
    marked auxiliary, so it adds nothing to the ELBO and Pyro's model/guide check does not
    expect it in the model). Guides use it for what penalties need, e.g. the salient
    posterior of background cells; readers find it by name and source tag in the trace."""
    return pyro.sample(
        name,
        dist.Delta(value, event_dim=event_dim).mask(False),
        obs=value,
        infer={"_deterministic": True, "is_auxiliary": True},
    )
