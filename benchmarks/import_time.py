"""Import time of ``pyro_compare`` against its unavoidable dependencies; prints one JSON object.

Each measurement runs in a fresh interpreter (``sys.executable``) that times, with
``time.perf_counter``, a single import statement (interpreter start-up excluded):

* ``baseline``: ``import torch, pyro, anndata`` (what any use of the package loads);
* ``pyro_compare``: ``import pyro_compare``.

The two are interleaved, after one discarded warm-up of each (file-system cache), and
``--repeats`` times; the medians are reported, with ``ratio = pyro_compare_s / baseline_s``
(goal: at most 1.2, i.e. the package adds no more than 20 % to its dependencies).
``heavy_modules_loaded`` lists the optional heavy libraries (plotting, scikit-learn,
scanpy, ...) that ``import pyro_compare`` left in ``sys.modules`` (should be empty:
they are imported lazily, when a function needs them).

Usage: ``python benchmarks/import_time.py [--repeats 7]``. Set ``OMP_NUM_THREADS=1`` on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

STATEMENTS = {
    "baseline": "import torch, pyro, anndata",
    "pyro_compare": "import pyro_compare",
}
HEAVY = ("matplotlib", "sklearn", "scanpy", "umap", "seaborn", "statsmodels", "scipy.stats")

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
{stmt}
seconds = time.perf_counter() - t0
heavy = [m for m in {heavy!r} if m in sys.modules]
print(json.dumps({{"seconds": seconds, "heavy": heavy}}))
"""


def time_import(statement: str) -> dict:
    """Run ``statement`` in a fresh interpreter; return its import seconds and heavy modules."""
    code = _PROBE.format(stmt=statement, heavy=HEAVY)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    for stmt in STATEMENTS.values():  # warm-up: file-system cache, .pyc files
        time_import(stmt)
    samples: dict[str, list[float]] = {k: [] for k in STATEMENTS}
    heavy: list[str] = []
    for _ in range(args.repeats):
        for key, stmt in STATEMENTS.items():
            res = time_import(stmt)
            samples[key].append(res["seconds"])
            if key == "pyro_compare":
                heavy = res["heavy"]
    baseline = statistics.median(samples["baseline"])
    package = statistics.median(samples["pyro_compare"])
    out = {
        "baseline_s": round(baseline, 3),
        "pyro_compare_s": round(package, 3),
        "ratio": round(package / baseline, 3),
        "repeats": args.repeats,
        "samples_s": {k: [round(s, 3) for s in v] for k, v in samples.items()},
        "heavy_modules_loaded": heavy,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
