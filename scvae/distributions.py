"""Observation likelihoods, written once in numerically stable form.

Every ``log_*`` function returns the element-wise log-probability (same shape as ``x``); the caller sums over
genes. The likelihood objects of :mod:`scvae.likelihoods` are built on these. Parameters are given the way the
decoder produces them:

- ``nb``: mean ``mu`` > 0 and inverse dispersion ``theta`` > 0 (variance = mu + mu**2 / theta).
- ``zinb``: as ``nb`` plus ``zi_logits``, the logit of the probability of an extra (dropout) zero.
- ``poisson``: rate ``mu``.
- ``gaussian``: mean ``mu`` and variance ``var``.
- ``bernoulli``: ``logits`` of the probability that ``x`` is 1.

The forms avoid ``log`` of a difference and ``exp`` of large arguments: NB uses ``lgamma`` and
``log(theta + mu)`` once, ZINB mixes in log-space with ``logaddexp``/``logsigmoid``, Bernoulli uses softplus.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def safe_log(v: torch.Tensor) -> torch.Tensor:
    """log of a non-negative tensor, with 0 mapped to log of the dtype's smallest normal number (finite)."""
    return torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-pmf with mean ``mu`` and inverse dispersion ``theta``.

    theta * log(theta / (theta + mu)) is written -theta * log1p(mu / theta), exact as theta grows large (the
    Poisson limit) where the difference of two logs would cancel; the lgammas are differenced before the small
    terms are added, so that a zero count's log-probability (where they cancel exactly) keeps all its digits.
    What float32 cannot give at large theta: lgamma(x + theta) - lgamma(theta) keeps only ~7 digits of
    lgamma(theta), so for x > 0 the error grows as theta log(theta) (1e-3 relative at theta = 1e4)."""
    theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
    return (
        -theta * torch.log1p(mu / theta)
        + x * (safe_log(mu) - torch.log(theta + mu))
        + (torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0))
    )


def log_zinb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, zi_logits: torch.Tensor) -> torch.Tensor:
    """Zero-inflated NB: with probability sigmoid(zi_logits) an extra zero, otherwise NB(mu, theta)."""
    log_pi = F.logsigmoid(zi_logits)
    log_not_pi = F.logsigmoid(-zi_logits)
    nb = log_nb(x, mu, theta)
    zero = torch.logaddexp(log_pi, log_not_pi + nb)
    return torch.where(x < 0.5, zero, log_not_pi + nb)


def log_poisson(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Poisson log-pmf with rate ``mu``."""
    return x * safe_log(mu) - mu - torch.lgamma(x + 1.0)


def log_gaussian(x: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Gaussian log-density with mean ``mu`` and variance ``var`` (clamped away from zero)."""
    var = var.clamp_min(1e-6)
    return -0.5 * (math.log(2 * math.pi) + torch.log(var) + (x - mu) ** 2 / var)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-pmf of binary ``x`` (0 or 1) given ``logits``: -softplus(-l) for 1, -softplus(l) for 0, in
    one -softplus((1 - 2x) l) (x*l - softplus(l) would cancel to 0 for a likely outcome, l > 20)."""
    return -F.softplus((1.0 - 2.0 * x) * logits)


def nonzero_indices(x: torch.Tensor) -> torch.Tensor:
    """Row and column indices (2 × entries, int64, row-major order) of the non-zero entries of a 2-D ``x``: what
    the loaders give with every minibatch (from the CSR matrix, at almost no cost); computed here, with a scan of
    ``x``, otherwise. Indices of some zero entries may be included (explicit zeros of a sparse matrix): every
    function that takes them gives those entries their correct, zero-count value."""
    return torch.nonzero(x).T


def log_poisson_sum(x: torch.Tensor, mu: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last axis of :func:`log_poisson`, with the count-dependent terms at the non-zero entries
    only (as :func:`scvae.kernels.log_nb_softmax_sum` does for the NB; ``nonzero``: see :func:`nonzero_indices`)."""
    if x.dim() != 2:
        return log_poisson(x, mu).sum(-1)
    if nonzero is None:
        nonzero = nonzero_indices(x)
    flat = nonzero[0] * x.shape[1] + nonzero[1]
    xv = x.reshape(-1).index_select(0, flat)
    per_entry = xv * safe_log(mu.reshape(-1).index_select(0, flat)) - torch.lgamma(xv + 1.0)
    return (-mu.sum(-1)).index_add(-1, nonzero[0], per_entry)
