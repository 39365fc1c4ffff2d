"""How nonlinear are the simulated mixing functions? (context for claims 1 and 2)

For each mixing kind and depth, draws random mixing MLPs exactly as the simulators do
(:func:`pyro_compare.data.simulate.random_mixing`, 8 latent inputs, 200 outputs) and reports
the affine R^2 of the noiseless outputs f(z) from z ~ N(0, I): 1 means f is affine (trivially
identifiable by linear methods), lower means more nonlinear.

    python experiments/identifiability/mixing_linearity.py
"""

from __future__ import annotations

import numpy as np
from common import write_json

from pyro_compare.data.simulate import random_mixing
from pyro_compare.metrics.identifiability import affine_r2


def main() -> None:
    rows = []
    for kind in ("relu", "leaky_relu", "smooth"):
        for hidden in ((64,), (64, 64, 64)):
            r2 = []
            for seed in range(5):
                rng = np.random.default_rng(seed)
                f = random_mixing(8, 200, rng, hidden=hidden, kind=kind)
                z = rng.normal(size=(5000, 8))
                r2.append(affine_r2(f(z), z))
            rows.append(
                {
                    "mixing": kind,
                    "hidden": list(hidden),
                    "affine_r2_mean": float(np.mean(r2)),
                    "affine_r2_std": float(np.std(r2)),
                }
            )
            print(f"| {kind} | {hidden} | {np.mean(r2):.3f} ± {np.std(r2):.3f} |")
    write_json("mixing_linearity.json", {"rows": rows})


if __name__ == "__main__":
    main()
