"""Shared test settings: threads, seeds, determinism, paths to the real datasets.

Environment variables:

* ``PYRO_COMPARE_TEST_THREADS`` (default 1): torch's intra-op threads. Two torch processes
  on two cores spin-wait each other (OpenMP), hence the default; ``make test`` sets 2 on an
  otherwise idle machine (CI). The suite passes with any value: identities are checked in
  float64 or relative to the norm of the compared quantities, and learned-quality bars sit
  >= 3 standard deviations below the multi-seed mean measured by
  ``experiments/test_thresholds/measure.py`` (another thread count or CPU changes the
  float32 round-off, hence the training trajectory, like another seed would).
* ``PYRO_COMPARE_DETERMINISTIC=1``: ``torch.use_deterministic_algorithms(True)``, so that an
  operation without a deterministic implementation raises instead of varying run to run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pyro_compare.data import KANG2018, PAPALEXI2021, dataset_path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
THREADS = int(os.environ.get("PYRO_COMPARE_TEST_THREADS", "1"))
torch.set_num_threads(THREADS)
if os.environ.get("PYRO_COMPARE_DETERMINISTIC", "0") not in ("", "0"):
    torch.use_deterministic_algorithms(True)

KANG = dataset_path(KANG2018, must_exist=False)
PAPALEXI = dataset_path(PAPALEXI2021, must_exist=False)


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """A test that changes torch's thread count or default dtype does not leak it into the
    tests that follow (their results would then depend on the order the tests run in)."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


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
