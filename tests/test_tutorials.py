"""Every tutorial (``tutorials/[0-9]*.py``, jupytext percent format) runs end to end in fast
mode (``PYRO_COMPARE_FAST=1``: subsampled cells, few epochs) with a headless backend.

A tutorial that needs a real dataset says so in a comment line
``# pyro-compare-data: <file name>``; it is skipped (with the reason) when the file is not in
the data folder. Adding a tutorial is adding a file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_compare.data import data_dir

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = data_dir()
TUTORIALS = sorted((REPO / "tutorials").glob("[0-9]*.py"))
DATA_LINE = re.compile(r"^# pyro-compare-data:\s*(\S+)\s*$", re.MULTILINE)


def test_tutorials_found() -> None:
    assert len(TUTORIALS) >= 2, "tutorials/ should hold the executed tutorials"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs_in_fast_mode(path: Path, tmp_path: Path) -> None:
    for name in DATA_LINE.findall(path.read_text()):
        if not (DATA_DIR / name).exists():
            pytest.skip(f"{path.name} needs {DATA_DIR / name} (set PYRO_COMPARE_DATA_DIR)")
    env = dict(
        os.environ,
        PYRO_COMPARE_FAST="1",
        PYRO_COMPARE_DATA_DIR=str(DATA_DIR),
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        OMP_WAIT_POLICY="PASSIVE",
        PYRO_COMPARE_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"{path.name} failed in fast mode:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
