"""Encoder and decoder building blocks (pure torch)."""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "layer", "none")


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width, momentum=0.01, eps=1e-3)
    if kind == "layer":
        return nn.LayerNorm(width, elementwise_affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class MLP(nn.Module):
    """Fully connected layers (Linear → norm → ReLU → dropout), with one-hot covariates concatenated to the
    input of the first layer, or of every layer when ``inject_all`` is set."""

    def __init__(
        self,
        n_in: int,
        n_hidden: int,
        n_layers: int,
        n_cov: int = 0,
        inject_all: bool = False,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.n_cov = n_cov
        self.inject_all = inject_all
        self.linears = nn.ModuleList()
        self.post = nn.ModuleList()
        for i in range(n_layers):
            width_in = (n_in if i == 0 else n_hidden) + (n_cov if (i == 0 or inject_all) else 0)
            self.linears.append(nn.Linear(width_in, n_hidden))
            self.post.append(nn.Sequential(_norm(norm, n_hidden), nn.ReLU(), nn.Dropout(dropout)))
        self.n_out = n_hidden if n_layers > 0 else n_in + n_cov

    def forward(self, x: torch.Tensor, cov: torch.Tensor | None = None) -> torch.Tensor:
        if not self.linears:
            return x if cov is None or self.n_cov == 0 else torch.cat([x, cov], dim=-1)
        for i, (linear, post) in enumerate(zip(self.linears, self.post)):
            if self.n_cov and (i == 0 or self.inject_all):
                x = torch.cat([x, cov], dim=-1)
            x = post(linear(x))
        return x


class GaussianEncoder(nn.Module):
    """q(z | x, c) = N(mu(x, c), diag sigma^2(x, c)); returns mean and log-variance (clamped)."""

    def __init__(self, n_in: int, n_latent: int, n_hidden: int, n_layers: int, n_cov: int, **kw) -> None:
        super().__init__()
        self.body = MLP(n_in, n_hidden, n_layers, n_cov=n_cov, **kw)
        self.mean = nn.Linear(self.body.n_out, n_latent)
        self.logvar = nn.Linear(self.body.n_out, n_latent)

    def forward(self, x: torch.Tensor, cov: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x, cov)
        return self.mean(h), self.logvar(h).clamp(-15.0, 15.0)
