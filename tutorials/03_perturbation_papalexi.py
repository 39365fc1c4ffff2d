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
# # Perturbation modelling with SAMS-VAE (Papalexi et al. 2021)
#
# A CRISPR screen in THP-1 cells stimulated with IFN-γ (ECCITE-seq, low MOI; Papalexi et
# al. 2021, *Nat Genet*): each cell carries one guide RNA that knocks out one of 25 genes
# of the IFN-γ / PD-L1 pathways, or a non-targeting control guide. 299 genes are measured.
#
# The model is {class}`pyro_compare.models.SAMSVAE`, the Sparse Additive Mechanism Shift
# VAE of Bereket & Karaletsos (2023). Every knock-out $k$ gets a sparse binary mask
# $m_k \in \{0,1\}^d$ and an effect $e_k \in \mathbb{R}^d$; a cell with design $d_n$
# (one-hot here, multi-hot for combinations) has latent state
#
# $$z_n = z^{\text{basal}}_n + \sum_k d_{nk}\,(m_k \odot e_k), \qquad
#   z^{\text{basal}}_n \sim N(0, I), \qquad
#   x_n \sim \mathrm{NB}\big(l_n\,\mathrm{softmax}(f(z_n)), \theta\big),$$
#
# with $m_{kj} \sim \mathrm{Bernoulli}(p)$ and $e_k \sim N(0, I)$. The mask says *which*
# latent dimensions a knock-out moves, the effect *how far*. Control cells
# (`"non-targeting"`) are the background source, knocked-out cells the target source.
#
# We fit it on 80% of the cells, look at the learned masks and effects, compare the
# predicted average treatment effect (ATE) of the strongest knock-outs with the one
# observed on held-out cells, make counterfactual predictions for control cells, and
# compare the held-out importance-weighted ELBO with a baseline without masks.
#
# Set `PYRO_COMPARE_FAST=1` for a quick run (subsampled cells, few epochs: what the test
# suite does, and its numbers mean nothing); the docs show the fast run (`make docs-full`
# renders the full one).

# %%
# pyro-compare-data: papalexi2021_sceptre_lowmoi_counts.h5ad
import os

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import torch

import pyro_compare as pc
from pyro_compare.metrics import perturbation as pm

FAST = os.environ.get("PYRO_COMPARE_FAST", "0") == "1"
torch.set_num_threads(int(os.environ.get("PYRO_COMPARE_THREADS", "1")))
pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 20)
MAX_EPOCHS = 5 if FAST else 30
N_CELLS = 3000 if FAST else None
N_LATENT = 10
IWELBO_PARTICLES = 5 if FAST else 100
ATE_SAMPLES = 2 if FAST else 10
STRONG = ["IFNGR1", "IFNGR2", "JAK2", "IRF1"]


# %% [markdown]
# ## Load the screen
#
# Raw counts are in `X`; `obs["perturbation"]` names the knocked-out gene,
# `"non-targeting"` for controls and `"unassigned"` for cells whose guide could not be
# called, which we drop. With `perturbation_key`,
# {meth}`~pyro_compare.data.ComparativeData.from_anndata` builds a multi-hot design matrix
# (cells x knock-outs) that the perturbation models read from the batches.

# %%
adata = ad.read_h5ad(pc.data.dataset_path("papalexi2021_sceptre_lowmoi_counts.h5ad"))
if N_CELLS is not None:
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, N_CELLS, replace=False))].copy()
print(adata)

data = pc.data.ComparativeData.from_anndata(
    adata,
    condition_key="perturbation",
    background="non-targeting",
    perturbation_key="perturbation",
    exclude=("unassigned",),
)
print(data)
print(f"{data.n_perturbations} knock-outs:", ", ".join(data.perturbation_names))

# %% [markdown]
# ## A cell split
#
# {func}`~pyro_compare.data.split_by_cell` holds out 20% of the cells of every label
# (stratified), so every knock-out is seen in training and evaluated on unseen cells of
# the same knock-out. The fit reports the held-out cells' ELBO every epoch (perturbation
# models do not early-stop by default: they keep the last epoch); we use the held-out
# cells for the observed ATE and the held-out IWELBO.

# %%
data.set_split(pc.data.split_by_cell(data, validation_fraction=0.2, seed=0))
for split in ("train", "validation"):
    print(split, {source: len(rows) for source, rows in data.indices(split).items()})

# %% [markdown]
# ## Fit SAMS-VAE
#
# We use the *correlated* guide: the basal encoder sees the cell and the sampled shift
# $\delta_n = \sum_k d_{nk}(m_k \odot e_k)$ and removes it,
# $q(z^{\text{basal}}_n \mid x_n, \delta_n)$. (With the mean-field guide the encoder
# removes the *expected* shift, which differs from the sampled one while the masks are
# uncertain.) The masks are sampled with a straight-through relaxed Bernoulli.
#
# The objective is the model's default (the plain ELBO). The callback
# {class}`~pyro_compare.infer.PerPerturbationLogger` changes nothing in the optimisation and
# only adds a `loss_<knock-out>` column per label to the history: the per-cell negative ELBO
# of each knock-out, read from each step's traces, which shows which perturbations the
# model finds hard.


# %%
def fit(model):
    pyro.set_rng_seed(0)
    return pc.infer.fit(
        model,
        data,
        callbacks=[pc.infer.PerPerturbationLogger(data=data)],
        max_epochs=MAX_EPOCHS,
        batch_size=512,
        lr=3e-3,
        seed=0,
        patience=8,
        progress=False,
    )


torch.manual_seed(0)
sams = pc.models.SAMSVAE(data.n_features, data.n_perturbations, N_LATENT, guide="correlated")
history = fit(sams)
pc.plotting.loss_curves(history)
plt.show()
per_ko = history[[c for c in history if c.startswith("loss_")]].iloc[-1]
per_ko = per_ko.rename(lambda c: c.removeprefix("loss_")).sort_values(ascending=False)
print("training loss per cell, last epoch, hardest labels first:")
print(per_ko.head(8).round(1).to_string())

# %% [markdown]
# ## Masks and effects
#
# `mask_probabilities()` is $q(m_{kj} = 1)$ and `effects()` the posterior-mean shift
# $E[m_k \odot e_k]$, both knock-outs x latent dimensions. A knock-out that does nothing
# should end with its mask switched off (the Bernoulli prior with $p = 0.1$ prunes
# unused dimensions) or a small effect; a knock-out of the IFN-γ receptor should move the
# cells along the dimensions that encode the IFN-γ response. Latent dimensions are only
# identifiable up to permutation, so their order means nothing.
#
# Sparse masks are a prior preference, not a guarantee: in the full run the knock-outs
# with the largest shifts keep most of their mask entries on (weaker ones fewer), so read
# the masks together with the effect sizes. On simulated screens with known target sets,
# `experiments/papalexi/README.md` measures how well masks are recovered.

# %%
mask_kd = sams.mask_probabilities().numpy()
effect_kd = sams.effects()
names = list(data.perturbation_names)
order = np.argsort(-np.abs(effect_kd).sum(1))  # strongest shift first

fig, axes = plt.subplots(1, 2, figsize=(11, 7), sharey=True)
im = axes[0].imshow(mask_kd[order], aspect="auto", cmap="Greys", vmin=0, vmax=1)
axes[0].set_title("mask probability q(m = 1)")
fig.colorbar(im, ax=axes[0], shrink=0.6)
lim = np.abs(effect_kd).max()
im = axes[1].imshow(effect_kd[order], aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
axes[1].set_title("effect E[m * e]")
fig.colorbar(im, ax=axes[1], shrink=0.6)
axes[0].set_yticks(range(len(names)), [names[i] for i in order], fontsize=8)
for ax in axes:
    ax.set_xlabel("latent dimension")
    ax.set_xticks(range(N_LATENT))
plt.tight_layout()
plt.show()

shift_norm = pd.Series(np.linalg.norm(effect_kd, axis=1), index=names, name="|E_k|")
summary = pd.DataFrame(
    {"|E_k|": shift_norm, "active dims (q > 0.5)": (mask_kd > 0.5).sum(1)}, index=names
)
print(summary.sort_values("|E_k|", ascending=False).head(10).round(2))

# %% [markdown]
# ## Predicted vs observed average treatment effects
#
# The ATE of knock-out $k$ on gene $g$ is the change of the mean log-normalised expression
# $y = \log(1 + 10^4 x / \sum_g x_g)$:
#
# * **observed** ({func}`~pyro_compare.metrics.observed_average_treatment_effect`): held-out
#   cells of $k$ minus held-out controls;
# * **predicted** ({func}`~pyro_compare.metrics.average_treatment_effect`): the training
#   control cells' basal states are abducted from the guide, decoded with and without the
#   shift of $k$, and counts are drawn from the likelihood (common random numbers for every
#   knock-out, so differences are low-variance) at the control cells' library sizes scaled
#   to the mean depth of $k$'s training cells (`library="matched"`: on this 299-gene panel
#   the IFN-γ pathway knock-outs have 13–16 % smaller libraries than the controls, and
#   log-normalised counts drawn at the controls' depth are biased gene by gene).
#
# We look at the four knock-outs with the strongest effects in the paper, the IFN-γ
# receptor (IFNGR1, IFNGR2), its kinase JAK2 and the transcription factor IRF1.

# %%
observed = pm.observed_average_treatment_effect(data, STRONG, split="validation")
de_train = pm.observed_average_treatment_effect(data, STRONG, split="train")
predicted = pm.average_treatment_effect(sams, data, STRONG, n_samples=ATE_SAMPLES, split="train")

fig, axes = plt.subplots(1, len(STRONG), figsize=(4 * len(STRONG), 4))
for ax, ko in zip(axes, STRONG):
    pc.plotting.ate_scatter(
        predicted.loc[ko], observed.loc[ko], gene_names=data.var_names, n_labels=5, ax=ax, title=ko
    )
plt.tight_layout()
plt.show()

# %% [markdown]
# {func}`~pyro_compare.metrics.ate_agreement` summarises each scatter: Pearson r and
# $R^2$ (no refitting, so a biased prediction is penalised) over all genes and over the
# top-20 DE genes of each knock-out, ranked on the *training* cells so that genes are not
# chosen on the noise of the held-out cells.

# %%
agreement = pm.ate_agreement(predicted, observed, top_n=20, de_scores=de_train)
print(agreement.round(3))

# %% [markdown]
# In the full run of this tutorial (all cells, d = 10, 30 epochs: a short fit that keeps
# the tutorial quick) the receptor and kinase knock-outs (IFNGR1, IFNGR2, JAK2) are
# predicted closely and IRF1 poorly. That is under-training, not a limit of the model:
# IRF1's effect on these 299 genes is small and is learned late. Fitted with the defaults,
# `pc.infer.fit(pc.models.SAMSVAE(data.n_features, data.n_perturbations), data)` (latent
# 20, hidden 400, batches of 256, 300 epochs with a cosine-decayed learning rate, keeping
# the last epoch: about 380 s with 2 threads), SAMSVAE reaches IRF1 r = 0.76 and a mean r
# of 0.871 over the six strongest knock-outs (STAT1, JAK2, IFNGR1, IFNGR2, SMAD4, IRF1),
# 3 seeds, as good as the plain mean of the training cells (0.868). The last epoch is kept
# because the validation ELBO is best around epoch 170 while the ATE agreement keeps
# improving to the end; choosing the epoch by ATE agreement would need cells other than
# the ones it is evaluated on
# (`experiments/papalexi/defaults.py`, `experiments/papalexi/README.md`).

# %% [markdown]
# ## Counterfactual predictions
#
# "What would these control cells look like had IFNGR1 been knocked out?"
# `model.counterfactual` keeps each control cell's abducted basal state and library size,
# adds the knock-out's shift and decodes. It returns an AnnData with the input's `var`
# (one row per sample and cell; `obs["cell"]` names the source cell), so scanpy works on
# it directly. Here: the expected counts (`sample_counts=False`) of the held-out control
# cells, factual (`"non-targeting"`) and under IFNGR1.

# %%
ctrl_kwargs = dict(cells="control", split="validation", sample_counts=False)
factual = sams.counterfactual(data, "non-targeting", **ctrl_kwargs)
cf = sams.counterfactual(data, "IFNGR1", **ctrl_kwargs)
print(cf)
print(cf.obs.head(3))

# Change of the mean log-normalised expression, as for the ATE above.
change = pd.Series(
    pm.log_normalize(cf.X).mean(0) - pm.log_normalize(factual.X).mean(0), index=cf.var_names
).sort_values()
print("predicted change of log-normalised expression under IFNGR1 knock-out:")
print(pd.concat([change.head(5), change.tail(5)]).round(3).to_string())

# %% [markdown]
# The IFN-γ response genes should drop when the receptor is gone. Counterfactuals also
# answer questions the data cannot: a knock-out combination never observed, e.g.
# `"IFNGR1+IRF1"`, composes the two shifts additively in latent space.

# %%
combo = sams.counterfactual(data, "IFNGR1+IRF1", **ctrl_kwargs)
top = change.index[:5]
table = pd.DataFrame(
    {
        "control": factual[:, top].X.mean(0),
        "IFNGR1": cf[:, top].X.mean(0),
        "IFNGR1+IRF1": combo[:, top].X.mean(0),
    },
    index=top,
)
print("mean predicted counts of the genes IFNGR1 lowers most:")
print(table.round(2))

# %% [markdown]
# ## Held-out likelihood against a baseline
#
# Are the sparse masks worth it? {class}`~pyro_compare.models.AdditiveShiftVAE` is the same
# model without masks (a dense CPA-style shift $E_k = e_k$ per knock-out). We compare the
# held-out importance-weighted ELBO ({func}`~pyro_compare.metrics.iwelbo`,
# $\log \frac1S \sum_s p(x_n, z^s_n \mid G^s) / q(z^s_n \mid x_n, G^s)$, globals from the
# guide; higher is better), per cell, and the ATE agreement of the strong knock-outs.

# %%
torch.manual_seed(0)
additive = pc.models.AdditiveShiftVAE(data.n_features, data.n_perturbations, N_LATENT)
history_additive = fit(additive)
predicted_additive = pm.average_treatment_effect(
    additive, data, STRONG, n_samples=ATE_SAMPLES, split="train"
)
rows = {}
for name, model, pred in (
    ("SAMSVAE", sams, predicted),
    ("AdditiveShiftVAE", additive, predicted_additive),
):
    agree = pm.ate_agreement(pred, observed, top_n=20, de_scores=de_train).mean()
    rows[name] = {
        "heldout_iwelbo": pm.iwelbo(model.model, model.guide, data, IWELBO_PARTICLES),
        "pearson_all (strong 4)": agree["pearson_all"],
        "pearson_top20 (strong 4)": agree["pearson_top"],
    }
print(pd.DataFrame(rows).T.round(3))

# %% [markdown]
# The differences in held-out IWELBO between such models are small on this dataset (most
# knock-outs barely move these 299 genes), so a single seed does not rank them; see
# `experiments/papalexi/` for a four-model comparison (with sVAE+ and a conditional VAE).
# What the masks add is interpretability: which latent dimensions each knock-out
# touches, and a latent space in which unseen combinations compose.
#
# ## References
#
# * Papalexi, E. et al. (2021). Characterizing the molecular regulation of inhibitory
#   immune checkpoints with multimodal single-cell screens. *Nature Genetics* 53, 322–331.
# * Bereket, M. & Karaletsos, T. (2023). Modelling cellular perturbations with the sparse
#   additive mechanism shift variational autoencoder. *NeurIPS 2023*.
