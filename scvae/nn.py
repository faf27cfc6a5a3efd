"""Encoder and decoder building blocks (pure torch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .kernels import Entries, entries_times

NORMS = ("batch", "layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width, momentum=0.01, eps=1e-3)
    if kind == "layer":
        return nn.LayerNorm(width, elementwise_affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class InputLayer(nn.Module):
    """The encoder's first linear layer, ``x @ genes + cov @ covariates.T + bias``, over genes and one-hot
    covariates, the same as ``nn.Linear(n_in + n_cov, n_out)`` over ``cat([x, cov])`` (and initialised the same).

    Its gene weight is stored genes × width, so that a sparse input (:class:`Entries`, on the CPU) costs time in
    proportion to its non-zero entries, forward and backward (see :class:`scvae.kernels._EntriesTimesWeight`):
    UMI counts over 2,000 genes are mostly zeros (94 % on Kang's HVGs, ``benchmarks/results/input_layer.md``).
    A dense input, one with more than :data:`scvae.kernels.SPARSE_MAX_DENSITY` of its entries non-zero, or one
    on another device goes through one matrix product."""

    def __init__(self, n_in: int, n_out: int, n_cov: int = 0) -> None:
        super().__init__()
        weight = torch.empty(n_out, n_in + n_cov)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's initialisation, in its order
        bound = 1.0 / math.sqrt(n_in + n_cov) if n_in + n_cov else 0.0
        self.genes = nn.Parameter(weight[:, :n_in].T.contiguous())
        self.covariates = nn.Parameter(weight[:, n_in:].contiguous()) if n_cov else None
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor | Entries, cov: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(x, Entries):
            out = entries_times(x, self.genes) + self.bias
        else:
            out = torch.addmm(self.bias, x, self.genes)  # bit for bit nn.Linear's product
        if self.covariates is not None:
            out = torch.addmm(out, cov.to(out.dtype), self.covariates.T)
        return out


class MLP(nn.Module):
    """Fully connected layers (Linear → norm → ReLU → dropout), with one-hot covariates concatenated to the
    input of the first layer, or of every layer when ``inject_all`` is set. With ``sparse_input`` the first layer
    is an :class:`InputLayer`, which also takes the input as :class:`Entries`."""

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        n_cov: int = 0,
        inject_all: bool = False,
        dropout: float = 0.1,
        norm: str = "batch",
        sparse_input: bool = False,
    ) -> None:
        super().__init__()
        self.n_cov = n_cov
        self.inject_all = inject_all
        self.linears = nn.ModuleList()
        self.post = nn.ModuleList()
        for i in range(n_layers):
            n_cov_i = n_cov if (i == 0 or inject_all) else 0
            if i == 0 and sparse_input:
                self.linears.append(InputLayer(n_in, n_hidden, n_cov_i))
            else:
                self.linears.append(nn.Linear((n_in if i == 0 else n_hidden) + n_cov_i, n_hidden))
            self.post.append(nn.Sequential(_norm(norm, n_hidden), nn.ReLU(), nn.Dropout(dropout)))
        self.n_out = n_hidden if n_layers > 0 else n_in + n_cov

    def forward(self, x: torch.Tensor | Entries, cov: torch.Tensor | None = None) -> torch.Tensor:
        if not self.linears:
            x = x.to_dense() if isinstance(x, Entries) else x
            return x if cov is None or self.n_cov == 0 else torch.cat([x, cov], dim=-1)
        for i, (linear, post) in enumerate(zip(self.linears, self.post)):
            if isinstance(linear, InputLayer):
                x = post(linear(x, cov))
                continue
            if self.n_cov and (i == 0 or self.inject_all):
                x = torch.cat([x, cov], dim=-1)
            x = post(linear(x))
        return x


class GaussianEncoder(nn.Module):
    """q(z | x, c) = N(mu(x, c), diag sigma^2(x, c)); returns mean and log-variance (clamped)."""

    def __init__(self, n_in: int, n_latent: int, n_hidden: int, n_layers: int, n_cov: int, **kw) -> None:
        super().__init__()
        self.body = MLP(n_in, n_hidden, n_layers, n_cov=n_cov, sparse_input=True, **kw)
        self.mean = nn.Linear(self.body.n_out, n_latent)
        self.logvar = nn.Linear(self.body.n_out, n_latent)

    def forward(self, x: torch.Tensor | Entries, cov: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x, cov)
        return self.mean(h), self.logvar(h).clamp(-15.0, 15.0)
