"""Speed of batched geodesics on a Kang-sized decoder; prints one JSON object.

Task: 100 pairs of points in a 10-d latent space, decoder = ReLU MLP
10 -> 128 -> 6998 with a softmax output times a library size of 2000 (fixed
seed), curves with ``n_points`` points, the same number of iterations for every
method (``tol=-1`` disables early stopping).

* ``batched``: :func:`pyro_compare.metrics.geometry.geodesic` on all pairs at once.
* ``one_at_a_time``: the same function called for one pair at a time, timed on
  ``--seq-pairs`` pairs and scaled; ``batched_speedup`` is the ratio of pairs/s.
* ``batched_default_tol``: the batched call with the default stopping rule
  (pairs drop out of the batch as they converge).
* ``stochman``: stochman's ``CubicSpline`` + ``geodesic_minimizing_energy``
  (Adam, batched over pairs) with the same points and iterations, as a
  reference, if ``import stochman`` works.

Lengths are reported relative to the decoded straight line (lower = better
geodesic) so that speed is compared at a known quality.

Usage: ``python benchmarks/geodesics.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from pyro_compare.metrics.geometry import curve_length, geodesic

N_LATENT, N_HIDDEN, N_GENES, LIBRARY = 10, 128, 6998, 2000.0


def make_decoder(device: str) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_LATENT, N_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(N_HIDDEN, N_GENES)
    )
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)

    def decoder(z_nd: torch.Tensor) -> torch.Tensor:
        return LIBRARY * torch.softmax(net(z_nd), dim=-1)

    return net, decoder


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def straight_lines(z_a: torch.Tensor, z_b: torch.Tensor, n_points: int) -> torch.Tensor:
    t = torch.linspace(0.0, 1.0, n_points, device=z_a.device)[None, :, None]
    return z_a[:, None, :] + t * (z_b - z_a)[:, None, :]


def run_stochman(decoder, z_a, z_b, n_points: int, n_iter: int, device: str) -> dict:
    try:
        from stochman.curves import CubicSpline
        from stochman.geodesic import geodesic_minimizing_energy
        from stochman.manifold import EmbeddedManifold
    except Exception as exc:  # noqa: BLE001 - any import failure is reported
        return {"status": f"not available: {type(exc).__name__}: {exc}"}

    class Decoded(EmbeddedManifold):
        def embed(self, points, jacobian=False):
            if jacobian:
                raise NotImplementedError
            shape = points.shape
            return decoder(points.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)

    def task():
        curve = CubicSpline(z_a, z_b, num_nodes=8).to(device)
        geodesic_minimizing_energy(curve, Decoded(), max_iter=n_iter, eval_grid=n_points)
        alpha = torch.linspace(0, 1, n_points, device=device)
        return curve(alpha).detach()

    try:
        import stochman

        curves, secs = _timed(task, device)
    except Exception as exc:  # noqa: BLE001
        return {"status": f"not available: failed to run: {type(exc).__name__}: {exc}"}
    with torch.no_grad():
        lengths = curve_length(decoder, curves)
    return {
        "status": "ok",
        "version": getattr(stochman, "__version__", "?"),
        "method": "CubicSpline(num_nodes=8) + geodesic_minimizing_energy (Adam lr 0.1)",
        "seconds": secs,
        "pairs_per_s": z_a.shape[0] / secs,
        "lengths": lengths,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (< 3 min)")
    parser.add_argument("--n-pairs", type=int, default=100)
    parser.add_argument("--seq-pairs", type=int, default=10)
    parser.add_argument("--n-points", type=int, default=16)
    parser.add_argument("--n-iter", type=int, default=None, help="default 50 (20 with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-stochman", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_iter = args.n_iter or (20 if args.quick else 50)
    device = args.device

    _, decoder = make_decoder(device)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2 * args.n_pairs, N_LATENT, generator=gen).to(device)
    z_a, z_b = z[: args.n_pairs], z[args.n_pairs :]
    with torch.no_grad():
        straight = curve_length(decoder, straight_lines(z_a, z_b, args.n_points))

    fixed = dict(n_points=args.n_points, max_iter=n_iter, tol=-1.0)
    geodesic(decoder, z_a[:2], z_b[:2], **fixed)  # warm-up

    res_b, t_b = _timed(lambda: geodesic(decoder, z_a, z_b, **fixed), device)
    n_seq = min(args.seq_pairs, args.n_pairs)
    seq, t_s = _timed(
        lambda: [geodesic(decoder, z_a[p], z_b[p], **fixed) for p in range(n_seq)], device
    )
    seq_len = torch.stack([r.length for r in seq])
    res_d, t_d = _timed(lambda: geodesic(decoder, z_a, z_b, n_points=args.n_points), device)

    def ratio(lengths: torch.Tensor) -> float:
        return float((lengths / straight[: lengths.shape[0]]).mean())

    pps_b, pps_s = args.n_pairs / t_b, n_seq / t_s
    out = {
        "task": {
            "n_pairs": args.n_pairs,
            "latent_dim": N_LATENT,
            "decoder": f"ReLU MLP {N_LATENT}->{N_HIDDEN}->{N_GENES}, softmax x {LIBRARY:g}",
            "n_points": args.n_points,
            "iterations": n_iter,
            "method": "spline (6 nodes), L-BFGS",
            "device": device,
            "threads": args.threads,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "quick": args.quick,
        },
        "batched": {
            "seconds": t_b,
            "pairs_per_s": pps_b,
            "mean_evaluations_per_pair": float(res_b.n_iter.float().mean()),
            "length_over_straight": ratio(res_b.length),
        },
        "one_at_a_time": {
            "pairs_timed": n_seq,
            "seconds": t_s,
            "seconds_scaled_to_all_pairs": t_s * args.n_pairs / n_seq,
            "pairs_per_s": pps_s,
            "length_over_straight": ratio(seq_len),
            "max_rel_diff_to_batched": float(
                ((seq_len - res_b.length[:n_seq]).abs() / res_b.length[:n_seq]).max()
            ),
        },
        "batched_speedup": pps_b / pps_s,
        "batched_default_tol": {
            "seconds": t_d,
            "pairs_per_s": args.n_pairs / t_d,
            "mean_evaluations_per_pair": float(res_d.n_iter.float().mean()),
            "converged_fraction": float(res_d.converged.float().mean()),
            "length_over_straight": ratio(res_d.length),
        },
    }
    if args.no_stochman:
        out["stochman"] = "not available: skipped (--no-stochman)"
    else:
        sm = run_stochman(decoder, z_a, z_b, args.n_points, n_iter, device)
        if sm["status"] != "ok":
            out["stochman"] = sm["status"]
        else:
            lengths = sm.pop("lengths")
            sm.pop("status")
            sm["length_over_straight"] = ratio(lengths)
            sm["batched_speedup_vs_stochman"] = pps_b / sm["pairs_per_s"]
            out["stochman"] = sm
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
