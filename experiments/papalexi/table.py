"""Markdown tables of ``defaults.py`` results (issue 14): one row per model and seed, and the
mean ± sd over seeds, from the JSON files the script wrote with ``--out``.

    python experiments/papalexi/table.py experiments/papalexi/results/defaults/*_seed*.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

STRONG_SIX = ["STAT1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "IRF1"]
COLUMNS = ["strong six", *STRONG_SIX, "all 25", "top-20", "IWELBO", "fit s", "s/epoch"]


def row_values(run: dict) -> list[float]:
    return [
        run["strong_six_mean_r"],
        *(run["strong_six_r"][k] for k in STRONG_SIX),
        run["mean_r_all"],
        run["mean_r_top20"],
        run.get("heldout_iwelbo", float("nan")),
        run["fit_seconds"],
        run["seconds_per_epoch"],
    ]


def label(result: dict, run: dict) -> str:
    guide = run.get("model_args", {}).get("guide")
    name = result["model"] if isinstance(result["model"], str) else result["model"][0]
    return f"{name} ({guide})" if guide and name == "SAMSVAE" else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", type=Path, nargs="+")
    args = parser.parse_args()
    groups: dict[str, list[tuple[int, list[float], dict]]] = defaultdict(list)
    for path in args.files:
        result = json.loads(path.read_text())
        for run in result["runs"]:
            groups[label(result, run)].append((run["seed"], row_values(run), run))
    print("| model | seed | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, rows in groups.items():
        rows.sort(key=lambda r: r[0])
        for seed, values, _ in rows:
            cells = [f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" for v in values]
            print(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        if len(rows) > 1:
            arr = np.array([v for _, v, _ in rows])
            mean, sd = arr.mean(0), arr.std(0, ddof=1)
            cells = [
                f"{m:.3f} ± {s:.3f}" if abs(m) < 10 else f"{m:.1f} ± {s:.1f}"
                for m, s in zip(mean, sd)
            ]
            print(f"| **{name}** | **mean ± sd** | " + " | ".join(cells) + " |")
    print()
    print(
        "| model | seed | strong six, library='control' | all 25, library='control' "
        "| empirical (train-cell ATE) strong six | best-validation epoch |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in groups.items():
        for seed, _, run in rows:
            ctrl, emp = run.get("control_library", {}), run.get("empirical_train_ate", {})
            print(
                f"| {name} | {seed} | {ctrl.get('strong_six_mean_r', float('nan')):.3f} | "
                f"{ctrl.get('mean_r_all', float('nan')):.3f} | "
                f"{emp.get('strong_six_mean_r', float('nan')):.3f} | "
                f"{run.get('best_validation_epoch', '')} |"
            )


if __name__ == "__main__":
    main()
