"""Observation likelihoods, written once in numerically stable form.

Every function returns the element-wise log-probability (same shape as ``x``); the caller sums over genes.
Parameters are given the way the decoder produces them:

- ``nb``: mean ``mu`` > 0 and inverse dispersion ``theta`` > 0 (variance = mu + mu**2 / theta).
- ``zinb``: as ``nb`` plus ``zi_logits``, the logit of the probability of an extra (dropout) zero.
- ``poisson``: rate ``mu``.
- ``gaussian``: mean ``mu`` and variance ``var``.
- ``bernoulli``: ``logits`` of the probability that ``x`` is 1.

The forms avoid ``log`` of a difference and ``exp`` of large arguments: NB uses ``lgamma`` and
``log(theta + mu)`` once, ZINB mixes in log-space with ``logaddexp``/``logsigmoid``, Bernoulli uses softplus.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LIKELIHOODS = ("nb", "zinb", "poisson", "gaussian", "bernoulli")
COUNT_LIKELIHOODS = ("nb", "zinb", "poisson")


def safe_log(v: torch.Tensor) -> torch.Tensor:
    """log of a non-negative tensor, with 0 mapped to log of the dtype's smallest normal number (finite)."""
    return torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-pmf with mean ``mu`` and inverse dispersion ``theta``.

    theta * log(theta / (theta + mu)) is written -theta * log1p(mu / theta), exact as theta grows large
    (the Poisson limit) where the difference of two logs would cancel."""
    theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
    return (
        -theta * torch.log1p(mu / theta)
        + x * (safe_log(mu) - torch.log(theta + mu))
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
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
    return -0.5 * (torch.log(2 * torch.pi * var) + (x - mu) ** 2 / var)


def log_bernoulli(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-pmf of binary ``x`` given ``logits``: x*l - softplus(l)."""
    return x * logits - F.softplus(logits)


def log_prob(likelihood: str, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Element-wise log p(x | params) for the named likelihood."""
    if likelihood == "nb":
        return log_nb(x, params["mu"], params["theta"])
    if likelihood == "zinb":
        return log_zinb(x, params["mu"], params["theta"], params["zi_logits"])
    if likelihood == "poisson":
        return log_poisson(x, params["mu"])
    if likelihood == "gaussian":
        return log_gaussian(x, params["mu"], params["var"])
    if likelihood == "bernoulli":
        return log_bernoulli(x, params["logits"])
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def log_nb_sum(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis of :func:`log_nb`, computed with the count-dependent terms at the non-zero entries
    only: equal to ``log_nb(x, mu, theta).sum(-1)`` up to rounding, at a fraction of the cost for sparse counts.

    For x = 0 the NB log-pmf is -theta * log1p(mu / theta); the terms x * log(mu / (theta + mu)) and
    lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) vanish there, so the costly lgamma (and its digamma
    gradient) run only where x > 0. ``x`` is cells × genes; ``theta`` broadcasts against ``mu``; with one
    theta per gene, lgamma(theta) is computed once per gene rather than once per non-zero entry."""
    if x.dim() != 2:
        return log_nb(x, mu, theta).sum(-1)
    theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
    zero_part = -(theta * torch.log1p(mu / theta)).sum(-1)
    rows, cols = torch.nonzero(x, as_tuple=True)
    xv, muv = x[rows, cols], mu[rows, cols]
    if theta.dim() == 1 or theta.shape[0] == 1:  # one theta per gene: lgamma(theta) once per gene, not per entry
        theta_g = theta.reshape(-1)
        thv, lgamma_thv = theta_g[cols], torch.lgamma(theta_g)[cols]
    else:
        thv = theta.expand_as(mu)[rows, cols]
        lgamma_thv = torch.lgamma(thv)
    per_entry = (
        xv * (safe_log(muv) - torch.log(thv + muv)) + torch.lgamma(xv + thv) - lgamma_thv - torch.lgamma(xv + 1.0)
    )
    return zero_part.index_add(-1, rows, per_entry)


def nonzero_indices(x: torch.Tensor) -> torch.Tensor:
    """Row and column indices (2 × entries, int64, row-major order) of the non-zero entries of a 2-D ``x``: what
    the loaders give with every minibatch (from the CSR matrix, at almost no cost); computed here, with a scan of
    ``x``, otherwise. Indices of some zero entries may be included (explicit zeros of a sparse matrix): every
    function that takes them gives those entries their correct, zero-count value."""
    return torch.nonzero(x).T


def log_poisson_sum(x: torch.Tensor, mu: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last axis of :func:`log_poisson`, with the count-dependent terms at the non-zero entries
    only (see :func:`log_nb_sum`; ``nonzero`` as for :func:`log_nb_softmax_sum`)."""
    if x.dim() != 2:
        return log_poisson(x, mu).sum(-1)
    if nonzero is None:
        nonzero = nonzero_indices(x)
    flat = nonzero[0] * x.shape[1] + nonzero[1]
    xv = x.reshape(-1).index_select(0, flat)
    per_entry = xv * safe_log(mu.reshape(-1).index_select(0, flat)) - torch.lgamma(xv + 1.0)
    return (-mu.sum(-1)).index_add(-1, nonzero[0], per_entry)


def log_prob_sum(
    likelihood: str, x: torch.Tensor, params: dict[str, torch.Tensor], nonzero: torch.Tensor | None = None
) -> torch.Tensor:
    """``log_prob(likelihood, x, params).sum(-1)``: the log-likelihood of each cell (a sum over genes), with
    the sparse-aware forms for ``nb`` and ``poisson`` (``nonzero``: see :func:`log_nb_softmax_sum`)."""
    if likelihood == "nb":
        return log_nb_sum(x, params["mu"], params["theta"])
    if likelihood == "poisson":
        return log_poisson_sum(x, params["mu"], nonzero)
    return log_prob(likelihood, x, params).sum(-1)


def sample(likelihood: str, params: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one observation per element from the likelihood (counts for count likelihoods)."""
    if likelihood in ("nb", "zinb"):
        mu, theta = params["mu"], params["theta"].expand_as(params["mu"])
        # NB as a Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu).
        rate = torch._standard_gamma(theta.double(), generator=generator) * (mu.double() / theta.double())
        x = torch.poisson(rate, generator=generator).to(mu.dtype)
        if likelihood == "zinb":
            pi = torch.sigmoid(params["zi_logits"])
            zero = torch.rand(x.shape, generator=generator, dtype=pi.dtype, device=pi.device) < pi
            x = torch.where(zero, torch.zeros_like(x), x)
        return x
    if likelihood == "poisson":
        return torch.poisson(params["mu"], generator=generator)
    if likelihood == "gaussian":
        mu = params["mu"]
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + params["var"].clamp_min(1e-6).sqrt() * eps
    if likelihood == "bernoulli":
        p = torch.sigmoid(params["logits"])
        return (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < p).to(p.dtype)
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")


def mean(likelihood: str, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Expected value of the likelihood."""
    if likelihood == "zinb":
        return params["mu"] * torch.sigmoid(-params["zi_logits"])
    if likelihood in ("nb", "poisson", "gaussian"):
        return params["mu"]
    if likelihood == "bernoulli":
        return torch.sigmoid(params["logits"])
    raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
