"""The fast paths of the training step, apart from the readable model: hand-written autograd kernels.

- :func:`entries_times`: a sparse minibatch (:class:`Entries`) times the encoder's first weight on the CPU, in
  time proportional to the non-zero counts, forward and backward.
- :func:`log_nb_softmax_sum`: the NB decoder's per-cell log-likelihood from its logits, fused, with the
  count-dependent terms at the non-zero entries only and a hand-written backward pass.
- :func:`digamma`: a branch-free float32 digamma for that backward pass.

Each equals the plain torch expression it replaces up to rounding, values and gradients (``tests/test_nn.py``,
``tests/test_distributions.py``); their speed against that code: ``benchmarks/kernels.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .distributions import nonzero_indices, safe_log


class Entries(NamedTuple):
    """A cells × features matrix given by its non-zero entries (explicit zeros may be among them, duplicates may
    not): ``values``, their ``rows`` and ``cols``, and the matrix's ``shape``. Rows in non-decreasing order, as a
    CSR matrix stores them and the loaders give them, save a sort in :func:`entries_times`."""

    values: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    shape: tuple[int, int]

    def to_dense(self) -> torch.Tensor:
        out = self.values.new_zeros(self.shape)
        out.view(-1)[self.rows * self.shape[1] + self.cols] = self.values
        return out


class _EntriesTimesWeight(torch.autograd.Function):
    """``Entries`` (cells × genes) @ ``weight`` (genes × width), CPU, in time proportional to the non-zeros.

    Forward: every cell's output row is the sum of the weight rows of its genes, scaled by the values: one
    embedding-bag sum over the cells' entries. Backward: the weight's gradient row of a gene is the sum of the output
    gradient rows of the cells that have the gene, scaled the same way: the same kernel over the entries ordered by
    gene (a stable radix sort of the gene indices, up to 65,536 genes). The two dense products this replaces read
    every zero."""

    @staticmethod
    def forward(ctx, weight, values, rows, cols, n_rows):  # noqa: ANN001, ANN205 (autograd.Function signature)
        ctx.save_for_backward(values, rows, cols)
        ctx.n_genes = weight.shape[0]
        return F.embedding_bag(cols, weight, _starts(rows, n_rows), mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        values, rows, cols = ctx.saved_tensors
        n_genes = ctx.n_genes
        key = cols.numpy().astype(np.uint16 if n_genes <= 1 << 16 else np.int64)
        order = torch.from_numpy(np.argsort(key, kind="stable"))  # numpy radix-sorts 16-bit keys
        grad_weight = F.embedding_bag(
            rows.index_select(0, order),
            grad.contiguous(),
            _starts(cols, n_genes),
            mode="sum",
            per_sample_weights=values.index_select(0, order),
        )
        return grad_weight, None, None, None, None


def _starts(index: torch.Tensor, n: int) -> torch.Tensor:
    """Where each of the groups 0..n-1 starts in the sorted order of ``index`` (the offsets of an embedding bag)."""
    counts = torch.bincount(index, minlength=n)
    return counts.cumsum(0).sub_(counts)


# Above this fraction of non-zero entries the dense product is used. The crossover depends on the CPU: on the
# 2-core AVX2 CPU of benchmarks/results/kernels.md (128 × 2,000 minibatch, width 128, forward and weight
# gradient) it lies near 0.10, and at 0.15 the entries path runs at 0.79× the dense product's speed.
SPARSE_MAX_DENSITY = 0.15


def entries_times(x: Entries, weight: torch.Tensor, max_density: float = SPARSE_MAX_DENSITY) -> torch.Tensor:
    """``x.to_dense() @ weight`` (genes × width): on the CPU, when at most ``max_density`` of ``x``'s entries are
    given, without the zeros, in time (and gradient time) proportional to the entries; otherwise a dense product."""
    n_rows, n_cols = x.shape
    if x.values.device.type != "cpu" or x.values.numel() > max_density * n_rows * n_cols:
        return x.to_dense().to(weight.dtype) @ weight
    rows, cols, values = x.rows, x.cols, x.values
    if rows.numel() > 1 and bool((rows[1:] < rows[:-1]).any()):  # each cell's entries must be together
        order = torch.argsort(rows, stable=True)
        rows, cols, values = rows[order], cols[order], values[order]
    return _EntriesTimesWeight.apply(weight, values.to(weight.dtype), rows, cols, n_rows)


def digamma(y: torch.Tensor) -> torch.Tensor:
    """digamma(y) for y > 0. In float32 (and below) a branch-free form, 1.3× as fast as ``torch.digamma`` on the
    arguments of the NB backward pass (``benchmarks/results/kernels.md``): the recurrence
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
        log_mu_v = safe_log(rho.reshape(-1).index_select(0, nz) * library.reshape(-1).index_select(0, rows))
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

    Equal to that expression up to rounding, values and gradients, at a fraction of
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
