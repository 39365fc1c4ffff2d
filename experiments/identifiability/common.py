"""Helpers shared by the identifiability experiments (threads, stability, JSON, tables)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from pyro_compare.metrics.identifiability import affine_r2, mcc

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads in torch (the experiments default to 1)."""
    torch.set_num_threads(n)
    torch.set_num_interop_threads(n) if n > 0 and torch.get_num_interop_threads() != n else None


def pairwise_stability(latents: list[np.ndarray], rows: np.ndarray | None = None) -> dict:
    """Agreement between latents learned with different seeds on the same cells.

    For every pair (i, j): the affine R^2 of fit j's latent from fit i's (and back; averaged),
    and the MCC (Pearson, Hungarian-matched). Identifiability up to an affine map means the
    R^2 is close to 1; MCC close to 1 additionally needs the maps to be permutations/scalings.
    """
    if rows is not None:
        latents = [z[rows] for z in latents]
    r2s, mccs = [], []
    for a, b in itertools.combinations(range(len(latents)), 2):
        r2s.append(0.5 * (affine_r2(latents[a], latents[b]) + affine_r2(latents[b], latents[a])))
        mccs.append(mcc(latents[a], latents[b]))
    return {
        "pairs": len(r2s),
        "affine_r2_mean": float(np.mean(r2s)),
        "affine_r2_min": float(np.min(r2s)),
        "mcc_mean": float(np.mean(mccs)),
        "mcc_min": float(np.min(mccs)),
    }


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    return obj


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(to_jsonable(payload), indent=2))
    return path
