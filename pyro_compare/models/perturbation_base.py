r"""Shared machinery of the perturbation models (SAMS-VAE, sVAE+, CPA-style, conditional VAE).

All four describe control cells (the ``"background"`` source plate) and perturbed cells (the
``"target"`` plate) of a screen with multi-hot design :math:`d_n \in \{0,1\}^K` through a
latent state :math:`z_n \in \mathbb{R}^d` and a count decoder:

.. math::

    G &\sim p(G)  &&\text{(global sites in the ``"perturbation"`` plate, one per } k) \\
    \delta_n &= \sum_k d_{nk}\, E_k(G)  &&\text{(latent shift of cell } n) \\
    z_n &= z^{\text{basal}}_n + \delta_n, \quad z^{\text{basal}}_n \sim N(0, I_d) \\
    x_n &\sim NB\big(l_n\, \mathrm{softmax}(f(z_n[, d_n])),\ \theta\big)

Models differ in the globals :math:`G` and the per-perturbation effect :math:`E_k(G)`
(:meth:`PerturbationVAE.effect_matrix`), in whether the cell-level sample site is the basal
state (SAMS-VAE, CPA-style) or the shifted state :math:`z_n \sim N(\delta_n, I)`
(sVAE+: the intervention shifts the *prior*), and in what the decoder sees (the conditional
VAE's decoder sees :math:`d_n` and has no latent shift).

Every global site is sampled once per step *outside* the cell plates, so
:class:`~pyro_compare.infer.SourceTrace_ELBO` assigns it to the ``"global"`` loss, unscaled,
while the local sites under ``pyro.plate("background"|"target", N, subsample=idx)`` get
Pyro's subsample scale :math:`N / |idx|`.

Counterfactuals: a cell's basal state is abducted from the guide,
:math:`z^{\text{basal}}_n = z_n - \delta_n`, and decoded under another design :math:`d'`:
:math:`x'_n \sim p(x \mid z^{\text{basal}}_n + \sum_k d'_k E_k, d', l_n)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.util import broadcast_shape
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import clamp_probs

from ..data.comparative import SOURCES, ComparativeData
from ..data.splits import canonical_label
from ..data.validation import DataValidationError
from ..nn.decoders import COUNT_LIKELIHOODS, ObservationDecoder
from ..nn.encoders import GaussianEncoder
from .base import ComparativeModel

__all__ = ["PerturbationVAE", "StraightThroughBernoulli", "design_matrix"]

_NO_SHAPE = torch.Size()
#: Local guides of the shift models: q(z_basal | x) or q(z_basal | x, shift).
GUIDES = ("mean_field", "correlated")


class StraightThroughBernoulli(dist.TorchDistribution):
    r"""Bernoulli with a relaxed straight-through reparameterisation.

    ``rsample`` returns exact Bernoulli(sigmoid(logits)) samples in the forward pass,
    :math:`m = \mathbb{1}[\mathrm{logits} + \log u - \log(1-u) > 0]`, with the gradient of the
    relaxed (binary Concrete) sample
    :math:`\tilde m = \sigma((\mathrm{logits} + \log u - \log(1-u)) / \tau)`:
    ``m + (m_relaxed - m_relaxed.detach())``.

    ``log_prob`` is the Bernoulli log-mass of the (hard) value, so the ELBO is the one of the
    discrete model, unlike :class:`pyro.distributions.RelaxedBernoulliStraightThrough` whose
    ``log_prob`` is the Concrete density of the relaxed sample.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True

    def __init__(
        self, logits: torch.Tensor, temperature: float = 0.5, validate_args: bool | None = None
    ) -> None:
        self.logits = logits
        self.temperature = float(temperature)
        super().__init__(logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StraightThroughBernoulli, _instance)
        new.logits = self.logits.expand(torch.Size(batch_shape))
        new.temperature = self.temperature
        super(StraightThroughBernoulli, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        return self.probs * (1 - self.probs)

    def rsample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = clamp_probs(torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device))
        noisy = self.logits.expand(shape) + u.log() - (-u).log1p()
        soft = torch.sigmoid(noisy / self.temperature)
        hard = (noisy > 0).to(soft.dtype)
        return hard + (soft - soft.detach())

    def sample(self, sample_shape: torch.Size = _NO_SHAPE) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value.detach())
        shape = broadcast_shape(self.logits.shape, value.shape)
        return -F.binary_cross_entropy_with_logits(
            self.logits.expand(shape), value.expand(shape), reduction="none"
        )

    def entropy(self) -> torch.Tensor:
        return dist.Bernoulli(logits=self.logits).entropy()


def design_matrix(
    data: ComparativeData, perturbations: Sequence | str | np.ndarray, separator: str = "+"
) -> tuple[np.ndarray, list[str]]:
    """Design rows (J x K) and canonical labels for perturbation labels or design vectors.

    ``perturbations`` is a label (``"IFNGR1"``, ``"A+B"``, the control value), a list of
    labels, or an array of design rows (J x K or K).
    """
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    arr = np.asarray(perturbations) if not isinstance(perturbations, list) else None
    if arr is not None and arr.dtype.kind in "fiub":
        rows = np.atleast_2d(arr).astype(np.float32)
        if rows.shape[1] != data.n_perturbations:
            raise ValueError(f"design rows must have {data.n_perturbations} columns.")
        names = np.asarray(data.perturbation_names, dtype=object)
        labels = [separator.join(names[r > 0.5]) or data.background for r in rows]
        return rows, labels
    rows, labels = [], []
    col = {n: j for j, n in enumerate(data.perturbation_names)}
    for p in perturbations:
        label = canonical_label(data, str(p), separator)
        row = np.zeros(data.n_perturbations, dtype=np.float32)
        if label != data.background:
            for part in label.split(separator):
                row[col[part]] = 1.0
        rows.append(row)
        labels.append(label)
    return np.stack(rows), labels


class PerturbationVAE(ComparativeModel):
    """Base class of the perturbation models (see the module docstring for the maths).

    Subclasses implement the global part:

    * :meth:`model_globals` / :meth:`guide_globals`: sample the global sites (inside
      ``pyro.plate("perturbation", K)`` where per perturbation) and return them as a dict,
    * :meth:`mean_globals`: a point summary of the variational posterior of the globals,
    * :meth:`effect_matrix`: the K x d latent shift :math:`E_k` of each perturbation,

    and may override :meth:`encode_site` (the amortised local guide) and
    :meth:`decoder_input`.

    Latent kinds for :meth:`latent`: ``"basal"`` (:math:`z^{\\text{basal}}`) and
    ``"latent"`` (:math:`z = z^{\\text{basal}} + \\delta`, what the decoder sees).
    """

    latent_kinds = ("basal", "latent")
    #: True when the cell site is z ~ N(shift, I) (sVAE+), False when it is z_basal ~ N(0, I).
    shift_in_prior: bool = False

    # ------------------------------------------------------------------ construction
    def _build(
        self,
        n_features: int,
        n_perturbations: int,
        n_latent: int,
        hidden: Sequence[int],
        likelihood: str,
        encoder_context: int = 0,
        decoder_context: int = 0,
        global_lr_scale: float = 1.0,
        guide: str = "mean_field",
    ) -> None:
        if n_perturbations < 1:
            raise ValueError("a perturbation model needs n_perturbations >= 1.")
        self.n_features = int(n_features)
        self.n_perturbations = int(n_perturbations)
        self.n_latent = int(n_latent)
        self.likelihood = likelihood
        if global_lr_scale <= 0:
            raise ValueError("global_lr_scale must be positive.")
        self.global_lr_scale = float(global_lr_scale)
        if guide not in GUIDES:
            raise ValueError(f"unknown guide {guide!r}; use one of {GUIDES}.")
        self.guide_type = guide
        if guide == "correlated":
            encoder_context += n_latent
        self.encoder = GaussianEncoder(
            n_features,
            n_latent,
            hidden,
            log_input=likelihood in COUNT_LIKELIHOODS,
            n_context=encoder_context,
        )
        self.decoder = ObservationDecoder(
            n_latent + decoder_context, n_features, hidden, likelihood
        )
        #: Per-cell (detached) log p terms of the last model call, per source.
        self.model_outputs: dict[str, dict[str, torch.Tensor]] = {}

    def _global_param(self, name: str, init: torch.Tensor) -> None:
        """Register a variational parameter of the globals, stored divided by
        ``global_lr_scale`` (read it with :meth:`global_param`).

        The globals get one gradient signal per step however many cells there are, so with
        Adam (whose step is about ``lr`` per parameter) a shift of size 3 needs ``3 / lr``
        steps; the scaling multiplies their effective learning rate by ``global_lr_scale``
        (a reparameterisation: the model and its optimum are unchanged).
        """
        setattr(self, f"{name}_raw", nn.Parameter(init / self.global_lr_scale))

    def global_param(self, name: str) -> torch.Tensor:
        """The value of a parameter registered with :meth:`_global_param`."""
        return self.global_lr_scale * getattr(self, f"{name}_raw")

    def check_data(self, data: ComparativeData) -> None:
        super().check_data(data)
        if data.n_perturbations != self.n_perturbations:
            raise DataValidationError(
                f"the model was built for {self.n_perturbations} perturbations but the data have "
                f"{data.n_perturbations} design columns. Build the data with "
                f"perturbation_key=... (same perturbation names) or a new model with "
                f"n_perturbations={data.n_perturbations}."
            )

    # ------------------------------------------------------------------ hooks
    def model_globals(self) -> dict[str, torch.Tensor]:
        """Sample the global sites of the model; returns them by name."""
        return {}

    def guide_globals(self) -> dict[str, torch.Tensor]:
        """Sample the global sites of the guide; returns them by name."""
        return {}

    def mean_globals(self) -> dict[str, torch.Tensor]:
        """Point summary of q(globals) used by :meth:`latent` (posterior means)."""
        return {}

    def effect_matrix(self, g: dict[str, torch.Tensor]) -> torch.Tensor:
        """K x d latent shift of each perturbation given the globals (zeros: no shift)."""
        return torch.zeros(self.n_perturbations, self.n_latent)

    def encode_site(
        self, x_ng: torch.Tensor, design_nk: torch.Tensor, shift_nd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Location and scale of q(cell site | x_n, ...).

        Both guides encode the full state of the cell and remove its shift, so that a
        perturbation's effect is learnt in the globals instead of being absorbed by the
        encoder (a flexible encoder/decoder pair otherwise fits perturbed cells with
        zero effects, a strong local optimum):

        * ``"mean_field"``: :math:`q(z^{\text{basal}}_n \mid x_n) = N(h_\mu(x_n) -
          d_n^\top E_q[E], h_\sigma(x_n))`, with the posterior-mean effects
          :math:`E_q[E]` (a function of the variational *parameters* of the globals, not of
          their samples: q still factorises into q(globals) q(local));
        * ``"correlated"``: :math:`q(z^{\text{basal}}_n \mid x_n, \delta_n) =
          N(h_\mu(x_n, \delta_n) - \delta_n, h_\sigma(x_n, \delta_n))` with the *sampled*
          shift :math:`\delta_n`, which the encoder also sees.

        Models whose cell site is the shifted state (``shift_in_prior``, sVAE+) encode it
        from the cell alone.
        """
        if self.shift_in_prior:
            return self.encoder(x_ng)
        if self.guide_type == "mean_field":
            loc, scale = self.encoder(x_ng)
            return loc - design_nk @ self.effect_matrix(self.mean_globals()), scale
        loc, scale = self.encoder(x_ng, shift_nd)
        return loc - shift_nd, scale

    def decoder_input(self, z_nd: torch.Tensor, design_nk: torch.Tensor) -> torch.Tensor:
        """What the decoder sees (``z``; the conditional VAE appends the design)."""
        return z_nd

    # ------------------------------------------------------------------ generative story
    def shift(self, g: dict[str, torch.Tensor], design_nk: torch.Tensor) -> torch.Tensor:
        r"""Latent shift :math:`\delta_n = \sum_k d_{nk} E_k`, shape (n, d)."""
        return design_nk @ self.effect_matrix(g)

    def z_dist(self, shift_nd: torch.Tensor) -> dist.TorchDistribution:
        """Prior of the cell site: N(shift, I) (sVAE+) or N(0, I) (basal state)."""
        loc = shift_nd if self.shift_in_prior else torch.zeros_like(shift_nd)
        return dist.Normal(loc, torch.ones_like(loc))

    def x_dist(
        self, z_nd: torch.Tensor, design_nk: torch.Tensor, library_n: torch.Tensor | None
    ) -> dist.TorchDistribution:
        """p(x_n | z_n, d_n, l_n), batch shape (n, G)."""
        return self.decoder.make_dist(self.decoder_input(z_nd, design_nk), library_n)

    def _source_args(self, kwargs: dict, s: str):
        x = kwargs.get(f"x_{s}")
        if x is None or x.shape[0] == 0:
            return None
        design = kwargs.get(f"design_{s}")
        if design is None:
            if s == "target":
                raise DataValidationError(
                    "perturbation models need design_target: build the data with "
                    "ComparativeData.from_anndata(..., perturbation_key='perturbation')."
                )
            design = x.new_zeros(x.shape[0], self.n_perturbations)
        n = self._plate_size(kwargs.get(f"n_{s}"), x, kwargs.get(f"index_{s}"))
        return x, kwargs.get(f"library_{s}"), kwargs.get(f"index_{s}"), n, design

    def model(
        self,
        x_background: torch.Tensor | None = None,
        x_target: torch.Tensor | None = None,
        library_background: torch.Tensor | None = None,
        library_target: torch.Tensor | None = None,
        index_background: torch.Tensor | None = None,
        index_target: torch.Tensor | None = None,
        n_background: int | None = None,
        n_target: int | None = None,
        design_background: torch.Tensor | None = None,
        design_target: torch.Tensor | None = None,
    ) -> None:
        """Generative model: globals first, then each source's cells under its plate."""
        kwargs = locals()
        g = self.model_globals()
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        for s in SOURCES:
            args = self._source_args(kwargs, s)
            if args is None:
                continue
            x, library, index, n, design = args
            with pyro.plate(s, n, subsample=index):
                shift = self.shift(g, design)
                pz = self.z_dist(shift)
                site = pyro.sample(f"z_{s}", pz.to_event(1))
                z = site if self.shift_in_prior else site + shift
                px = self.x_dist(z, design, library)
                x_value = pyro.sample(f"x_{s}", px.to_event(1), obs=x)
            with torch.no_grad():
                log_p = pz.log_prob(site).sum(-1) + px.log_prob(x_value).sum(-1)
            outputs[s] = {"log_p": log_p, "design": design}
        self.model_outputs = outputs

    def guide(
        self,
        x_background: torch.Tensor | None = None,
        x_target: torch.Tensor | None = None,
        library_background: torch.Tensor | None = None,
        library_target: torch.Tensor | None = None,
        index_background: torch.Tensor | None = None,
        index_target: torch.Tensor | None = None,
        n_background: int | None = None,
        n_target: int | None = None,
        design_background: torch.Tensor | None = None,
        design_target: torch.Tensor | None = None,
    ) -> None:
        """Guide: q(globals) then amortised q(cell site | x_n, ...) under each source plate."""
        kwargs = locals()
        g = self.guide_globals()
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        for s in SOURCES:
            args = self._source_args(kwargs, s)
            if args is None:
                continue
            x, library, index, n, design = args
            with pyro.plate(s, n, subsample=index):
                shift = self.shift(g, design)
                loc, scale = self.encode_site(x, design, shift)
                qz = dist.Normal(loc, scale)
                site = pyro.sample(f"z_{s}", qz.to_event(1))
            with torch.no_grad():
                log_q = qz.log_prob(site).sum(-1)
            outputs[s] = {
                "z_loc": loc,
                "z_scale": scale,
                "z": site,
                "shift": shift,
                "design": design,
                "log_q": log_q,
            }
        self.guide_outputs = outputs

    # ------------------------------------------------------------------ latents
    def _basal(
        self,
        g: dict[str, torch.Tensor],
        x_ng: torch.Tensor,
        design_nk: torch.Tensor,
        sample: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Abducted basal state and own shift of cells, from the guide."""
        shift = self.shift(g, design_nk)
        loc, scale = self.encode_site(x_ng, design_nk, shift)
        site = loc + scale * torch.randn_like(loc) if sample else loc
        basal = site - shift if self.shift_in_prior else site
        return basal, shift

    def _guide_global_sample(self) -> dict[str, torch.Tensor]:
        """One sample of the globals from the guide, outside any inference."""
        with pyro.poutine.block():
            return self.guide_globals()

    def encode(self, kind: str, batch: dict, source: str, sample: bool = False) -> torch.Tensor:
        """Posterior mean (or one sample) of ``"basal"`` or ``"latent"`` for one source."""
        x = batch[f"x_{source}"]
        design = batch.get(f"design_{source}")
        if design is None:
            design = x.new_zeros(x.shape[0], self.n_perturbations)
        g = self._guide_global_sample() if sample else self.mean_globals()
        basal, shift = self._basal(g, x, design, sample)
        return basal if kind == "basal" else basal + shift

    @torch.no_grad()
    def effects(self) -> np.ndarray:
        """Posterior-mean latent shift of each perturbation, K x d (:math:`E_k`)."""
        return self.effect_matrix(self.mean_globals()).detach().cpu().numpy()

    # ------------------------------------------------------------------ counterfactuals
    def _cell_rows(self, data: ComparativeData, cells, split: str | None) -> np.ndarray:
        if isinstance(cells, str):
            idx = data.indices(split)
            if cells == "control":
                return np.asarray(idx["background"])
            if cells == "all":
                return np.sort(np.concatenate([idx[s] for s in SOURCES]))
            raise ValueError("cells must be 'control', 'all' or an array of row positions.")
        return np.asarray(cells, dtype=np.int64)

    def _iter_predictions(
        self,
        data: ComparativeData,
        designs_jk: np.ndarray,
        rows: np.ndarray,
        n_samples: int,
        basal: str,
        sample_counts: bool,
        batch_size: int,
    ) -> Iterator[tuple[int, np.ndarray, int, torch.Tensor]]:
        """Yield ``(sample, rows, j, x_or_mean)`` for every sample, row chunk and design."""
        if basal not in ("control", "prior"):
            raise ValueError("basal must be 'control' (abducted from cells) or 'prior'.")
        designs = torch.as_tensor(designs_jk, dtype=torch.float32)
        for s in range(n_samples):
            g = self._guide_global_sample()
            effect_kd = self.effect_matrix(g)
            for start in range(0, len(rows), batch_size):
                r = rows[start : start + batch_size]
                x = data.dense(r)
                library = torch.from_numpy(data.library[r])
                if basal == "prior":
                    z0 = torch.randn(len(r), self.n_latent)
                else:
                    own = (
                        torch.from_numpy(data.design[r])
                        if data.design is not None
                        else x.new_zeros(len(r), self.n_perturbations)
                    )
                    z0, _ = self._basal(g, x, own, sample=True)
                for j in range(designs.shape[0]):
                    d_nk = designs[j].expand(len(r), -1)
                    z = z0 + d_nk @ effect_kd
                    if sample_counts:
                        out = self.x_dist(z, d_nk, library).sample()
                    else:
                        out = self.decoder.mean(self.decoder_input(z, d_nk), library)
                    yield s, r, j, out

    @torch.no_grad()
    def counterfactual(
        self,
        data: ComparativeData,
        perturbation,
        n_samples: int = 1,
        cells="control",
        split: str | None = None,
        basal: str = "control",
        sample_counts: bool = True,
        batch_size: int = 1024,
    ) -> ad.AnnData:
        r"""Predicted expression of ``cells`` had they received ``perturbation``.

        For each of ``n_samples`` draws of the globals :math:`G \sim q(G)` and of each
        cell's basal state (abducted from the guide, :math:`z^{\text{basal}}_n = z_n -
        \delta_n`; or drawn from N(0, I) with ``basal="prior"``), decode
        :math:`z^{\text{basal}}_n + \sum_k d'_k E_k(G)` with the cell's library size.

        Parameters
        ----------
        perturbation
            A label (``"IFNGR1"``, ``"A+B"``, or the control value) or a design vector (K,).
        cells
            ``"control"`` (control cells of ``split``), ``"all"`` or row positions.
        sample_counts
            Draw counts from the likelihood (posterior predictive); ``False``: the mean.

        Returns
        -------
        AnnData
            ``n_samples * n_cells`` rows (sample-major) with the input's ``var``;
            ``obs["sample"]``, ``obs["cell"]`` (source cell name), ``obs["perturbation"]``.
        """
        self.check_data(data)
        design_jk, labels = design_matrix(data, perturbation)
        if design_jk.shape[0] != 1:
            raise ValueError("counterfactual takes one perturbation; call it once per label.")
        rows = self._cell_rows(data, cells, split)
        was_training = self.training
        self.eval()
        try:
            out = np.zeros((n_samples, len(rows), data.n_features), dtype=np.float32)
            pos = {int(r): i for i, r in enumerate(rows)}
            for s, r, _, value in self._iter_predictions(
                data, design_jk, rows, n_samples, basal, sample_counts, batch_size
            ):
                out[s, [pos[int(i)] for i in r]] = value.numpy()
        finally:
            self.train(was_training)
        obs = pd.DataFrame(
            {
                "sample": np.repeat(np.arange(n_samples), len(rows)),
                "cell": np.tile(np.asarray(data.adata.obs_names[rows]), n_samples),
                "perturbation": labels[0],
            }
        )
        obs.index = [f"{c}-{s}" for s, c in zip(obs["sample"], obs["cell"])]
        return ad.AnnData(X=out.reshape(-1, data.n_features), obs=obs, var=data.adata.var.copy())

    @torch.no_grad()
    def predicted_means(
        self,
        data: ComparativeData,
        perturbations,
        n_samples: int = 10,
        cells="control",
        split: str | None = None,
        basal: str = "control",
        sample_counts: bool = True,
        transform=None,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        r"""Mean over samples and cells of ``transform(x')`` under each perturbation.

        The same draws of globals and basal states serve every perturbation (common random
        numbers), so differences between rows are low-variance treatment effects.
        ``transform`` maps a (cells x genes) tensor to the same shape (default: identity);
        e.g. :math:`\log(1 + 10^4 x / \sum_g x_g)`.

        Returns
        -------
        pandas.DataFrame
            Perturbation labels x genes.
        """
        self.check_data(data)
        design_jk, labels = design_matrix(data, perturbations)
        rows = self._cell_rows(data, cells, split)
        sums = torch.zeros(len(labels), data.n_features, dtype=torch.float64)
        was_training = self.training
        self.eval()
        try:
            for _, _, j, value in self._iter_predictions(
                data, design_jk, rows, n_samples, basal, sample_counts, batch_size
            ):
                if transform is not None:
                    value = transform(value)
                sums[j] += value.double().sum(0)
        finally:
            self.train(was_training)
        means = (sums / (n_samples * len(rows))).numpy()
        return pd.DataFrame(means, index=labels, columns=data.var_names)
