"""Seconds per epoch of ContrastiveVAE (Pyro, SourceTrace_ELBO) vs a bare-torch twin.

Both fit the same network (10 + 10 latents, one hidden layer of 128, NB likelihood) with
the same single-sample ELBO estimator (Monte Carlo KL, as Trace_ELBO), the same minibatches
(batch 128, ``{source: SourceBatch}`` from ``data.loader``) and the same Adam optimiser on
the Kang et al. (2018) PBMC data. The twin does the same work as the Pyro guide, including
the salient encoder's pass over background cells (the guide records that posterior as
``pyro.deterministic`` sites for the leakage penalties; it is no term of the ELBO). Epochs
of the two are interleaved so machine noise hits both alike; the JSON reports median
seconds per epoch and their ratio (``"ratio"`` = pyro / bare torch).

    python benchmarks/epoch_time.py [--epochs 4] [--threads 2] [--data PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pyro_compare as pc
from pyro_compare.nn import GaussianEncoder, ObservationDecoder, nb_log_prob


class BareContrastiveVAE(torch.nn.Module):
    """Plain-torch twin of ContrastiveVAE: same modules, same ELBO estimator, same NB
    log-density function."""

    def __init__(self, n_features: int, n_z: int = 10, n_t: int = 10, hidden=(128,)):
        super().__init__()
        self.n_t = n_t
        self.background_encoder = GaussianEncoder(n_features, n_z, hidden)
        self.salient_encoder = GaussianEncoder(n_features, n_t, hidden)
        self.decoder = ObservationDecoder(n_z + n_t, n_features, hidden, "nb")

    @staticmethod
    def _normal_logp(x, loc, scale):
        return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.9189385332046727).sum(-1)

    def _nb_logp(self, x_ng, zt, library_n):
        # The same sparse-aware NB log-density as the Pyro model (pc.nn.nb_log_prob).
        log_mu = F.log_softmax(self.decoder.net(zt), -1) + library_n.log().unsqueeze(-1)
        log_theta = self.decoder.log_theta_g
        return nb_log_prob(x_ng, log_theta.exp(), log_mu - log_theta).sum(-1)

    def loss(self, batch: dict) -> torch.Tensor:
        """Negative ELBO of a batch ``{source: SourceBatch}`` (minibatch-scaled per source)."""
        total = 0.0
        for src in batch.values():
            x, lib = src.x_ng, src.library_n
            scale_factor = src.plate_size / src.size
            z_loc, z_scale = self.background_encoder(x)
            z = z_loc + z_scale * torch.randn_like(z_loc)
            elbo = self._normal_logp(z, 0.0, torch.ones_like(z)) - self._normal_logp(
                z, z_loc, z_scale
            )
            # Every cell goes through the salient encoder, as in the Pyro guide.
            t_loc, t_scale = self.salient_encoder(x)
            if src.role == "target":
                t = t_loc + t_scale * torch.randn_like(t_loc)
                elbo = elbo + self._normal_logp(t, 0.0, torch.ones_like(t))
                elbo = elbo - self._normal_logp(t, t_loc, t_scale)
            else:
                # Background cells: t = 0; (t_loc, t_scale) are only recorded (no ELBO term).
                t = z.new_zeros(z.shape[0], self.n_t)
            elbo = elbo + self._nb_logp(x, torch.cat([z, t], -1), lib)
            total = total - scale_factor * elbo.sum()
        return total


def _epoch_pyro(model, data, optimizer, elbo, n_train, seed):
    t0 = time.perf_counter()
    for batch in data.loader(128, seed=seed):
        losses = elbo.source_losses(model.model, model.guide, batch)
        loss = sum(losses.values()) / n_train
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def _epoch_bare(model, data, optimizer, n_train, seed):
    t0 = time.perf_counter()
    for batch in data.loader(128, seed=seed):
        loss = model.loss(batch) / n_train
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def _epoch_fit(model, data, seed):
    """One epoch through the public fit() (adds validation and bookkeeping). The objective
    is the plain negative ELBO, the one the twin computes (and the contrastive default when
    the README's number was measured; the default's constraint is timed by
    experiments/kang_leakage_study.py --benchmark)."""
    objective = pc.infer.Sum()
    history = pc.infer.fit(
        model, data, objective=objective, max_epochs=1, batch_size=128, seed=seed,
        progress=False, validation=False,
    )  # fmt: skip
    return float(history["seconds"].iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="data folder (default: see pc.data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import anndata as ad
    import pyro

    kang = pc.data.KANG2018
    path = Path(args.data) / kang if args.data else pc.data.dataset_path(kang)
    adata = ad.read_h5ad(path)
    data = pc.data.ComparativeData.from_anndata(adata, "condition", "control")
    n_train = sum(len(i) for i in data.indices("train").values())

    torch.manual_seed(0)
    pyro_model = pc.models.ContrastiveVAE(data.n_features, 10, 10, hidden=(128,))
    torch.manual_seed(0)
    bare = BareContrastiveVAE(data.n_features)
    opt_p = torch.optim.Adam(pyro_model.parameters(), lr=1e-3)
    opt_b = torch.optim.Adam(bare.parameters(), lr=1e-3)
    elbo = pc.infer.SourceTrace_ELBO()
    times = {"pyro": [], "bare_torch": [], "fit": []}
    with pyro.validation_enabled(False):
        for epoch in range(args.epochs + 1):  # epoch 0 is a warm-up
            tp = _epoch_pyro(pyro_model, data, opt_p, elbo, n_train, epoch)
            tb = _epoch_bare(bare, data, opt_b, n_train, epoch)
            if epoch:
                times["pyro"].append(tp)
                times["bare_torch"].append(tb)
    fit_model = pc.models.ContrastiveVAE(data.n_features, 10, 10, hidden=(128,))
    for epoch in range(2):
        times["fit"].append(_epoch_fit(fit_model, data, epoch))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "data": "kang2018 (1975 cells x 6998 genes)",
                "batch_size": 128,
                "latent": "10 + 10",
                "hidden": [128],
                "threads": args.threads,
                "epochs_timed": args.epochs,
                "seconds_per_epoch_pyro": round(med["pyro"], 4),
                "seconds_per_epoch_bare_torch": round(med["bare_torch"], 4),
                "seconds_per_epoch_fit": round(med["fit"], 4),
                "ratio": round(med["pyro"] / med["bare_torch"], 4),
                "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
                "torch": torch.__version__,
                "pyro": pyro.__version__,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
