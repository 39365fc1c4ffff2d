r"""AnnData / scanpy layer: fit and annotate ``AnnData`` objects the scanpy way (``pc.tl``).

Every function takes the user's :class:`~anndata.AnnData` and writes its results where a
scanpy user looks for them, without hiding the Pyro objects (the fitted model is returned
and stays a plain model/guide pair):

==============================================  ==============================================
``adata.obsm["X_<kind>"]``                      posterior mean of each latent (e.g.
                                                ``X_background`` :math:`E_q[z_n]`,
                                                ``X_salient`` :math:`E_q[t_n]`) of the
                                                unnamed fit
``adata.obsm["X_<key_added>_<kind>"]``          the same for a fit named ``key_added``
``adata.layers[layer_added]``                   posterior predictive mean
                                                :math:`E[x_n \mid x_n]` (:func:`predict`)
``adata.uns["pyro_compare"][<fit>]``            model class and arguments, data settings,
                                                fit settings, per-epoch history, the
                                                ``obsm`` keys written (h5ad-writable);
                                                ``<fit>`` is ``key_added`` or ``"default"``
==============================================  ==============================================

One ``obsm`` convention (as scanpy's ``X_pca`` and ``key_added``): an unnamed fit writes
``X_<kind>`` and the next unnamed fit replaces it; a named fit writes only
``X_<key_added>_<kind>``, so fits compared side by side never overwrite each other.

Modules: :mod:`~pyro_compare.tl.fitting` (:func:`fit`, :func:`latents`, :func:`history`,
:func:`comparative_data`), :mod:`~pyro_compare.tl.prediction` (:func:`predict`,
:func:`counterfactual`), :mod:`~pyro_compare.tl.evaluation` (:func:`knn_leakage`,
:func:`posterior_predictive_check`, :func:`ppc_statistics`); the AnnData bookkeeping
(``uns`` records, keys, row matching) is in ``pyro_compare.tl._anndata``.

Examples
--------
>>> import pyro_compare as pc
>>> adata = pc.data.simulate_contrastive(500, 500, 100, 5, 3, seed=0)      # doctest: +SKIP
>>> model = pc.tl.fit(adata, condition_key="condition", background="background",
...                   n_background_latent=5, n_salient_latent=3, max_epochs=30)  # doctest: +SKIP
>>> adata.obsm["X_background"].shape                                       # doctest: +SKIP
(1000, 5)
>>> adata.write_h5ad("fitted.h5ad")                                        # doctest: +SKIP
"""

from ._anndata import DEFAULT_KEY, UNS_KEY, obsm_key
from .evaluation import knn_leakage, posterior_predictive_check, ppc_statistics
from .fitting import MODEL_NAMES, comparative_data, fit, history, latents
from .prediction import counterfactual, predict

__all__ = [
    "DEFAULT_KEY",
    "MODEL_NAMES",
    "UNS_KEY",
    "comparative_data",
    "counterfactual",
    "fit",
    "history",
    "knn_leakage",
    "latents",
    "obsm_key",
    "posterior_predictive_check",
    "ppc_statistics",
    "predict",
]
