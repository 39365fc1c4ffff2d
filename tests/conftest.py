"""Shared test settings: threads, seeds, paths to the real datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pyro_compare.data import KANG2018, PAPALEXI2021, dataset_path

# Two torch processes on two cores spin-wait each other (OpenMP): default to one thread;
# `make test` sets PYRO_COMPARE_TEST_THREADS=2 on an otherwise idle machine (CI).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(int(os.environ.get("PYRO_COMPARE_TEST_THREADS", "1")))

KANG = dataset_path(KANG2018, must_exist=False)
PAPALEXI = dataset_path(PAPALEXI2021, must_exist=False)


def require(path: Path) -> Path:
    """Skip (with the reason) when a real dataset is not available."""
    if not path.exists():
        pytest.skip(f"real dataset not found at {path} (set PYRO_COMPARE_DATA_DIR)")
    return path


@pytest.fixture
def kang_path() -> Path:
    return require(KANG)


@pytest.fixture
def papalexi_path() -> Path:
    return require(PAPALEXI)
