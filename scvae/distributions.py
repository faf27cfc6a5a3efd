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


def _safe_log(v: torch.Tensor) -> torch.Tensor:
    """log of a non-negative tensor, with 0 mapped to log of the dtype's smallest normal number (finite)."""
    return torch.log(v.clamp_min(torch.finfo(v.dtype).tiny))


def log_nb(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-pmf with mean ``mu`` and inverse dispersion ``theta``.

    theta * log(theta / (theta + mu)) is written -theta * log1p(mu / theta), exact as theta grows large
    (the Poisson limit) where the difference of two logs would cancel."""
    theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
    return (
        -theta * torch.log1p(mu / theta)
        + x * (_safe_log(mu) - torch.log(theta + mu))
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
    return x * _safe_log(mu) - mu - torch.lgamma(x + 1.0)


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
        xv * (_safe_log(muv) - torch.log(thv + muv)) + torch.lgamma(xv + thv) - lgamma_thv - torch.lgamma(xv + 1.0)
    )
    return zero_part.index_add(-1, rows, per_entry)


def digamma(y: torch.Tensor) -> torch.Tensor:
    """digamma(y) for y > 0. In float32 (and below) a branch-free form, ~3× faster than ``torch.digamma`` for the
    small arguments of count data (whose CPU kernel loops up to 10 for them): the recurrence
    digamma(y) = digamma(y + 6) - sum_{k<6} 1 / (y + k) and the asymptotic series at y + 6 >= 6, whose truncation
    error (< 2e-10) is below float32 rounding. float64 uses ``torch.digamma``."""
    if y.dtype == torch.float64:
        return torch.digamma(y)
    shift = y.reciprocal()
    w = y + 1.0
    for _ in range(5):
        shift += w.reciprocal()
        w += 1.0
    r = w.reciprocal()
    r2 = r * r
    series = r2 * (-1 / 12 + r2 * (1 / 120 + r2 * (-1 / 252 + r2 * (1 / 240 - r2 / 132))))
    return torch.log(w) - 0.5 * r + series - shift


def nonzero_indices(x: torch.Tensor) -> torch.Tensor:
    """Row and column indices (2 × entries, int64, row-major order) of the non-zero entries of a 2-D ``x``: what
    the loaders give with every minibatch (from the CSR matrix, at almost no cost); computed here, with a scan of
    ``x``, otherwise. Indices of some zero entries may be included (explicit zeros of a sparse matrix): every
    function that takes them gives those entries their correct, zero-count value."""
    return torch.nonzero(x).T


class _NBFromLogits(torch.autograd.Function):
    """Per-cell sum over genes of log NB(x; library * softmax(logits), theta), with a hand-written backward pass.

    Autograd through the same formula keeps about a dozen cells × genes temporaries and runs as many element-wise
    kernels forward and back; here the forward pass is one softmax, one log1p and one matrix-vector product over
    the dense entries (plus the count-dependent terms at the non-zero entries only), and the backward pass a handful
    of element-wise kernels. With u = mu / theta and q = 1 / (1 + u), the derivatives per entry are

        d log p / d logit_g = a_g - rho_g * sum_h a_h,   a = (x - mu) * q
        d log p / d theta   = u * q - log1p(u) - x * q / theta + digamma(x + theta) - digamma(theta)
    """

    @staticmethod
    def forward(ctx, logits, theta, x, library, nonzero):  # noqa: ANN001, ANN205 (autograd.Function signature)
        n_genes = logits.shape[-1]
        rows, cols = nonzero[0], nonzero[1]
        nz = rows * n_genes + cols  # flat positions
        rho = torch.softmax(logits, dim=-1)
        mu = rho * library
        u = mu * theta.reciprocal()
        log1p_u = torch.log1p(u)
        per_gene = theta.dim() == 1
        zero_part = -(log1p_u @ theta) if per_gene else -(log1p_u * theta).sum(-1)
        xv = x.reshape(-1).index_select(0, nz)
        if per_gene:
            th_v = theta.index_select(0, cols)
            lgamma_th = torch.lgamma(theta).index_select(0, cols)  # once per gene, not per entry
        else:
            th_v = theta.reshape(-1).index_select(0, nz)
            lgamma_th = torch.lgamma(th_v)
        # log of mu at the entries (an explicit zero stored in an empty cell gives 0 * finite, not 0 * -inf)
        log_mu_v = _safe_log(rho.reshape(-1).index_select(0, nz) * library.reshape(-1).index_select(0, rows))
        per_entry = (
            xv * (log_mu_v - torch.log(th_v) - log1p_u.reshape(-1).index_select(0, nz))
            + torch.lgamma(xv + th_v)
            - lgamma_th
            - torch.lgamma(xv + 1.0)
        )
        ctx.save_for_backward(rho, mu, u, log1p_u, theta, xv, th_v, rows, cols, nz)
        return zero_part.index_add(0, rows, per_entry)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        rho, mu, u, log1p_u, theta, xv, th_v, rows, cols, nz = ctx.saved_tensors
        q = (u + 1.0).reciprocal_()
        q_v = q.reshape(-1).index_select(0, nz)
        g = grad.unsqueeze(-1)
        grad_logits = grad_theta = None
        if ctx.needs_input_grad[0]:
            a = torch.mul(mu, q).neg_()
            a.view(-1).index_add_(0, nz, xv * q_v)  # a = (x - mu) * q, the x part at the non-zeros only
            grad_logits = torch.addcmul(a, rho, a.sum(-1, keepdim=True), value=-1.0).mul_(g)
        if ctx.needs_input_grad[1]:
            dense = torch.mul(u, q).sub_(log1p_u)
            digamma_th = digamma(theta).index_select(0, cols) if theta.dim() == 1 else digamma(th_v)
            count_part = (digamma(xv + th_v) - digamma_th - xv * q_v / th_v) * grad.index_select(0, rows)
            if theta.dim() == 1:  # one theta per gene: sums over cells
                grad_theta = (grad @ dense).index_add_(0, cols, count_part)
            else:
                grad_theta = dense.mul_(g)
                grad_theta.view(-1).index_add_(0, nz, count_part)
        return grad_logits, grad_theta, None, None, None


def log_nb_softmax_sum(
    x: torch.Tensor,
    logits: torch.Tensor,
    library: torch.Tensor,
    theta: torch.Tensor,
    nonzero: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log_nb(x, library * softmax(logits), theta).sum(-1)``, fused: the NB decoder's log-likelihood per cell.

    Equal to that expression (and to :func:`log_nb_sum`) up to rounding, values and gradients, at a fraction of
    the cost: the count-dependent terms only at the non-zero entries, and a hand-written backward pass (see
    :class:`_NBFromLogits`). ``x``, ``logits``: cells × genes; ``library``: cells × 1 (the observed total counts);
    ``theta``: genes (one per gene) or cells × genes; ``nonzero``: row and column indices of ``x``'s non-zero
    entries (:func:`nonzero_indices`; explicit zeros may be among them, duplicates may not), found when not given.
    No gradient reaches ``x`` or ``library``."""
    if nonzero is None:
        nonzero = nonzero_indices(x)
    if logits.dtype in (torch.float16, torch.bfloat16):  # under autocast: the likelihood in float32
        logits, theta = logits.float(), theta.float()
    theta = theta.clamp_min(torch.finfo(theta.dtype).tiny)
    if theta.dim() == 2 and theta.shape[0] == 1:
        theta = theta[0]
    elif theta.dim() == 2:
        theta = theta.expand_as(logits)
    return _NBFromLogits.apply(logits, theta, x.detach().contiguous(), library.detach(), nonzero)


def log_poisson_sum(x: torch.Tensor, mu: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over the last axis of :func:`log_poisson`, with the count-dependent terms at the non-zero entries
    only (see :func:`log_nb_sum`; ``nonzero`` as for :func:`log_nb_softmax_sum`)."""
    if x.dim() != 2:
        return log_poisson(x, mu).sum(-1)
    if nonzero is None:
        nonzero = nonzero_indices(x)
    flat = nonzero[0] * x.shape[1] + nonzero[1]
    xv = x.reshape(-1).index_select(0, flat)
    per_entry = xv * _safe_log(mu.reshape(-1).index_select(0, flat)) - torch.lgamma(xv + 1.0)
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
