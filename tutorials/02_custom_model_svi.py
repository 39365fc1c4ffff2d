# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Writing your own comparative model in Pyro
#
# `pyro_compare` models are ordinary Pyro model/guide pairs. This tutorial writes one from
# scratch — no `pyro_compare` model class — and fits it with a plain `pyro.infer.SVI` loop.
# Only two conventions make it a *comparative* model:
#
# 1. `model` and `guide` take one argument, a minibatch `{source name: SourceBatch}` as
#    {class}`~pyro_compare.data.ComparativeData` yields it (one
#    {class}`~pyro_compare.data.sources.SourceBatch` per source: `"background"`, `"target"`,
#    or several targets), so `svi.step(batch)` works for any number of sources;
# 2. cells of each source live under their own plate, opened with
#    {func}`pyro_compare.infer.source_plate` (a `pyro.plate` with subsampling that tags the
#    sites with their source), so {class}`pyro_compare.infer.SourceTrace_ELBO` can split the
#    ELBO into one term per source.
#
# We then check the fit with posterior predictive checks (`pyro.infer.Predictive`):
# per-gene means, variances and zero fractions of replicated data against the observed
# counts — and see a Poisson likelihood fail the variance check that a negative binomial
# passes.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyro_compare as pc

FAST = os.environ.get("PYRO_COMPARE_FAST", "0") == "1"
torch.set_num_threads(int(os.environ.get("PYRO_COMPARE_THREADS", "1")))
pd.set_option("display.width", 120)
N_CELLS = 300 if FAST else 2000
N_EPOCHS = 15 if FAST else 150
pyro.set_rng_seed(0)

# %% [markdown]
# ## Data with a known answer
#
# {func}`pyro_compare.data.simulate_contrastive` draws background cells from
# $z \sim N(0, I_4)$, target cells from $(z, t)$ with an extra salient $t \sim N(0, I_2)$, and
# negative-binomial counts through a random ReLU network.

# %%
adata = pc.data.simulate_contrastive(N_CELLS, N_CELLS, 100, 4, 2, seed=0)
data = pc.data.ComparativeData.from_anndata(adata, "condition", "background")
print(data)

# %% [markdown]
# ## The batch contract
#
# `data.loader(batch_size)` yields minibatches holding every source;
# `data.full_batch(split)` returns all cells of a split as one. A batch is a mapping
# `{source name: SourceBatch}`, and each `SourceBatch` carries what its source's plate needs:
#
# * `x_ng`: the counts (cells x genes); `None` asks the model to *sample* them (prior
#   predictive);
# * `library_n`: library sizes; `design_nk`: perturbation design rows (none here);
# * `index_n`: the subsample indices, and `n`: the full size of the source, so the plate
#   scales the minibatch terms by `n / len(index_n)`;
# * `role`: `"background"` or `"target"`: what the model does differs by role (here: the
#   salient latent is zero on background cells), while the plate is named after the source.

# %%
batch = next(iter(data.loader(batch_size=8)))
for name, src in batch.items():
    print(
        f"{name}: role={src.role} x_ng={tuple(src.x_ng.shape)} "
        f"library_n={tuple(src.library_n.shape)} index_n={src.index_n.tolist()} n={src.n}"
    )

# %% [markdown]
# ## The model
#
# $$
# z_n \sim N(0, I), \quad t_n = 0 \text{ (background)},\ t_n \sim N(0, I) \text{ (target)},
# \quad x_{ng} \sim \mathrm{NB}\big(\mu_{ng} = l_n\, \mathrm{softmax}(f([z_n, t_n]))_g,\
#   \theta_g\big)
# $$
#
# with $f$ a one-hidden-layer ReLU network, for the cells of every source. The guide is
# amortised:
# $q(z_n \mid x_n)\, q(t_n \mid x_n)$, diagonal Normals from two encoders of
# $\log(1 + x_n)$. The networks are plain `torch.nn` modules; `pyro.module` registers their
# parameters in Pyro's parameter store, as in Pyro's VAE tutorial.
# `NegativeBinomial(total_count=θ, logits=log μ − log θ)` has mean μ.
# `likelihood="poisson"` swaps the observation model for a Poisson with the same mean.
#
# `model` and `guide` loop over the sources of the batch, one `source_plate` each; site
# names carry the source name (`z_background`, `x_target`, ...). `model` takes
# `observe=False` for the posterior predictive: it then samples `x` instead of conditioning
# on `src.x_ng`. The guide accepts (and ignores) the same argument, since `Predictive`
# passes its arguments to both.


# %%
def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.ReLU(), nn.Linear(n_hidden, n_out))


def std_normal(n: int, d: int) -> dist.TorchDistribution:
    """N(0, I_d) for n cells (batch shape (n,), event shape (d,))."""
    return dist.Normal(torch.zeros(n, d), torch.ones(n, d)).to_event(1)


class TinyContrastive(nn.Module):
    def __init__(self, n_genes, d_z=4, d_t=2, hidden=64, likelihood="nb"):
        super().__init__()
        self.d_z, self.d_t, self.likelihood = d_z, d_t, likelihood
        self.decoder = mlp(d_z + d_t, hidden, n_genes)
        self.encoder_z = mlp(n_genes, hidden, 2 * d_z)
        self.encoder_t = mlp(n_genes, hidden, 2 * d_t)
        self.log_theta = nn.Parameter(torch.full((n_genes,), 2.0))  # log inverse dispersion

    def x_dist(self, z, t, library):
        """p(x_n | z_n, t_n, l_n): NB (or Poisson) with mean l_n softmax(f([z_n, t_n]))."""
        log_mu = torch.log_softmax(self.decoder(torch.cat([z, t], -1)), -1)
        log_mu = log_mu + library.log()[:, None]
        if self.likelihood == "poisson":
            return dist.Poisson(log_mu.exp()).to_event(1)
        theta = self.log_theta.exp()
        return dist.NegativeBinomial(theta, logits=log_mu - self.log_theta).to_event(1)

    @staticmethod
    def q(encoder, x):
        """Diagonal Normal q(. | x_n) from an encoder of log(1 + x_n)."""
        loc, raw_scale = encoder(torch.log1p(x)).chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-4).to_event(1)

    def model(self, sources, observe=True):
        pyro.module("tiny", self)  # registers the networks' parameters with Pyro
        for name, src in sources.items():
            with pc.infer.source_plate(name, src):
                z = pyro.sample(f"z_{name}", std_normal(src.size, self.d_z))
                if src.role == "background":
                    t = z.new_zeros(src.size, self.d_t)  # no salient variation
                else:
                    t = pyro.sample(f"t_{name}", std_normal(src.size, self.d_t))
                obs = src.x_ng if observe else None
                pyro.sample(f"x_{name}", self.x_dist(z, t, src.library_n), obs=obs)

    def guide(self, sources, observe=True):
        pyro.module("tiny", self)
        for name, src in sources.items():
            with pc.infer.source_plate(name, src):
                pyro.sample(f"z_{name}", self.q(self.encoder_z, src.x_ng))
                if src.role != "background":
                    pyro.sample(f"t_{name}", self.q(self.encoder_t, src.x_ng))


# %% [markdown]
# ## A plain SVI loop with per-source losses
#
# `SourceTrace_ELBO` *is* a `Trace_ELBO` (same `loss`, same gradients), so `SVI` uses it
# unchanged: `svi.step(batch)`. After each step, `elbo.last_source_losses` holds that
# step's negative ELBO term of every source (`{"background": ..., "target": ...}`, from the
# step's own traces: nothing is recomputed); their sum is the step's loss. Its extra method
# `source_losses(model, guide, batch)` returns the same terms, differentiable, for any
# batch: we evaluate them on the validation cells. Both are printed per cell of each source
# as training goes.


# %%
def train(likelihood: str) -> tuple[TinyContrastive, pd.DataFrame]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    tiny = TinyContrastive(data.n_features, likelihood=likelihood)
    elbo = pc.infer.SourceTrace_ELBO()
    svi = pyro.infer.SVI(tiny.model, tiny.guide, pyro.optim.Adam({"lr": 3e-3}), loss=elbo)
    n_train = {s: len(i) for s, i in data.indices("train").items()}
    val = data.full_batch("validation")
    rows = []
    for epoch in range(N_EPOCHS):
        train_loss, train_sources = [], []
        for b in data.loader(batch_size=128, seed=epoch):
            train_loss.append(svi.step(b))
            train_sources.append(elbo.last_source_losses)  # this step's per-source terms
        with torch.no_grad():
            losses = elbo.source_losses(tiny.model, tiny.guide, val)
        row = {"epoch": epoch, "train_loss": float(np.mean(train_loss)) / sum(n_train.values())}
        row.update(
            {
                f"train_{s}": float(np.mean([t[s] for t in train_sources])) / n
                for s, n in n_train.items()
            }
        )
        row.update({f"validation_{s}": float(v) / val[s].n for s, v in losses.items()})
        rows.append(row)
        if epoch % max(1, N_EPOCHS // 5) == 0 or epoch == N_EPOCHS - 1:
            print(likelihood, {k: round(v, 2) for k, v in row.items()})
    return tiny, pd.DataFrame(rows)


nb_model, nb_history = train("nb")
pc.plotting.loss_curves(nb_history)
plt.show()

# %% [markdown]
# The per-source terms have different scales (target cells carry an extra latent): this is
# what the multi-objective and constrained fitting rules of
# {mod}`pyro_compare.infer.objectives` balance.
#
# ## Posterior predictive checks
#
# `pyro.infer.Predictive` runs the guide on the observed cells and then the model with the
# sampled latents. Called with `observe=False`, the model leaves the sites `x_background` /
# `x_target` unobserved, so they draw *replicated* counts instead of returning the data
# (`pc.models.ContrastiveVAE.posterior_predictive` does the same). Each replicate has
# the cells' own latents and library sizes, so per-gene statistics of the replicates should
# match those of the data if the model is adequate.


# %%
def replicate(tiny: TinyContrastive, num_samples: int = 20) -> dict[str, torch.Tensor]:
    predictive = pyro.infer.Predictive(
        tiny.model,
        guide=tiny.guide,
        num_samples=num_samples,
        return_sites=["x_background", "x_target"],
    )
    with torch.no_grad():
        return predictive(data.full_batch(), observe=False)


full = data.full_batch()
nb_samples = replicate(nb_model)
print({k: tuple(v.shape) for k, v in nb_samples.items()})
nb_stats = pc.tl.ppc_statistics(full["target"].x_ng, nb_samples["x_target"], data.var_names)
print(nb_stats.head())
pc.plotting.ppc(nb_stats, title="NB, target:")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A model that fails the check
#
# The same model with a Poisson likelihood reproduces the means (the decoder adapts) but
# not the over-dispersion: its replicated variances fall below the observed ones, and the
# posterior predictive p-values $P(T(x^{rep}) \ge T(x))$ of the variance pile up at 0.

# %%
poisson_model, poisson_history = train("poisson")
poisson_stats = pc.tl.ppc_statistics(
    full["target"].x_ng, replicate(poisson_model)["x_target"], data.var_names
)
pc.plotting.ppc(poisson_stats, title="Poisson, target:")
plt.tight_layout()
plt.show()


# %%
def summary(stats: pd.DataFrame) -> dict[str, float]:
    ratio = stats["predicted_var"] / stats["observed_var"]
    return {
        "median variance ratio (pred/obs)": float(ratio.median()),
        "fraction of genes with ppp_var < 0.05": float((stats["ppp_var"] < 0.05).mean()),
        "mean |zero-fraction error|": float(
            (stats["predicted_zero"] - stats["observed_zero"]).abs().mean()
        ),
    }


table = pd.DataFrame({"NB": summary(nb_stats), "Poisson": summary(poisson_stats)})
print(table.round(3))

# %% [markdown]
# ## Where to go from here
#
# * The same model/guide pair can be handed to {func}`pyro_compare.infer.fit`, which adds
#   early stopping, checkpoints and the multi-objective / constrained objectives.
# * The prior predictive is the model alone on sources without counts:
#   `pyro.infer.Predictive(tiny.model, num_samples=20)({s: src.without_data() for s, src in
#   data.full_batch().items()})` (sizes, library sizes and designs are kept, `x_ng` is
#   dropped, so every `x_<source>` site is sampled).
# * `pc.models.ContrastiveVAE` is this model with count heads to choose from, encoders
#   shared across sources, and helpers (`latent`, `posterior_predictive`, `save`/`load`).
