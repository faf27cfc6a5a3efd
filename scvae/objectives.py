"""Importance-sampled log p(x) per cell: :func:`log_likelihood` for a trained model on AnnData, and
:func:`estimate_log_likelihood` for a bare :class:`~scvae.module.VAE` on minibatches. For count likelihoods p(x)
is conditional on the observed library size, as in scVI; the estimates are in nats per cell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import check_bool, check_int, check_seed
from .loaders import Minibatch
from .module import VAE
from .trained import refuse_nonfinite

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from .model import SCVAE


@torch.no_grad()
def estimate_log_likelihood(
    module: VAE,
    batches: Iterable[Minibatch],
    n_samples: int = 1000,
    *,
    seed: int = 0,
    chunk_size: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Importance-sampled log p(x) (the IWAE bound with K = ``n_samples``, as :func:`log_likelihood`) and a
    Monte Carlo ELBO, per cell.

    Parameters
    ----------
    module
        A trained VAE; put in evaluation mode here (as it stays).
    batches
        Minibatches (:class:`~scvae.loaders.Minibatch`), in the order of the cells.
    n_samples
        Importance samples K per cell.
    seed
        Seeds the samples of z (a generator of its own; the global RNG is untouched).
    chunk_size
        Samples drawn at once per minibatch.

    Returns
    -------
    (log_likelihood, elbo): float64 arrays with one value per cell. ``elbo`` is the mean log weight over the
    same K samples (an unbiased ELBO estimate).
    """
    seed = check_seed(seed)
    n_samples, chunk_size = check_int("n_samples", n_samples), check_int("chunk_size", chunk_size)
    module.eval()
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    components = module.prior_components()
    lls, elbos = [], []
    for batch in batches:
        posterior = module.inference(batch)
        parts, total = [], torch.zeros(batch.x.shape[0], dtype=torch.float64, device=device)
        for done in range(0, n_samples, chunk_size):
            s = min(chunk_size, n_samples - done)
            weights = module.log_importance_weights(batch, s, generator=gen, components=components, posterior=posterior)
            lw = weights.log_weight.double()
            parts.append(torch.logsumexp(lw, dim=0))
            total += lw.sum(0)
        lls.append((torch.logsumexp(torch.stack(parts), dim=0) - math.log(n_samples)).cpu())
        elbos.append((total / n_samples).cpu())
    return torch.cat(lls).numpy(), torch.cat(elbos).numpy()


def log_likelihood(
    model: SCVAE,
    adata: AnnData,
    *,
    n_samples: int = 1000,
    batch_size: int = 256,
    seed: int = 0,
    chunk_size: int = 100,
    return_elbo: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Per-cell estimate of the marginal log-likelihood log p(x) of ``adata`` under ``model`` (nats; also
    ``model.log_likelihood(adata, ...)``).

    Importance sampling with q(z | x) as proposal: log (1/K) Σ_k p(x, z_k) / q(z_k | x), K = ``n_samples``,
    in log-space and in chunks of ``chunk_size`` samples (memory does not grow with K). It rises with K towards
    log p(x) and is ≥ the ELBO in expectation. For count likelihoods p(x) is given the cell's library size.
    Works for any prior, objective and likelihood. With ``return_elbo=True`` also the per-cell ELBO estimate.

    Parameters
    ----------
    model
        A trained :class:`~scvae.model.SCVAE`.
    adata
        Cells × genes, read as the model reads its training data (its ``layer``, its genes in its order, its
        labels); an AnnCollection is read the same way.
    n_samples
        Importance samples K per cell.
    batch_size
        Cells per minibatch.
    seed
        Seeds the samples of z (a generator of its own; the global RNG is untouched).
    chunk_size
        Samples drawn at once per minibatch (memory grows with it, not with K).
    return_elbo
        Also return the per-cell ELBO estimate.

    Returns
    -------
    float64 array of log p(x), one value per cell of ``adata`` in its order; with ``return_elbo=True`` the pair
    (log_likelihood, elbo), ``elbo`` the mean log weight over the same K samples. Raises ``FloatingPointError`` if
    an estimate is NaN or inf.
    """
    batch_size, return_elbo = check_int("batch_size", batch_size), check_bool("return_elbo", return_elbo)
    x, codes = model.read(adata)
    batches: Any = model.batches(x, codes, batch_size)
    ll, elbo = estimate_log_likelihood(model.module, batches, n_samples, seed=seed, chunk_size=chunk_size)
    refuse_nonfinite(ll, "log-likelihood estimate")
    return (ll, elbo) if return_elbo else ll
