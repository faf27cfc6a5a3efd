"""The variational autoencoder itself, in pure torch: no Lightning, no AnnData.

    x ──► encoder q(z | x, c) = N(mu, diag sigma^2) ──► z = mu + sigma * eps ──► decoder p(x | z, c, l)

``c`` is the concatenated one-hot encoding of zero or more categorical labels (batch, condition, covariates),
``l`` the observed library size (total counts of the cell) for count likelihoods. The loss is the negative
ELBO per cell, -(E_q[log p(x | z)] - kl_weight * KL(q(z | x) || N(0, I))), with the KL in closed form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributions as D
from .nn import MLP, GaussianEncoder

DISPERSIONS = ("gene", "gene-batch")


class VAE(nn.Module):
    """A (conditional) VAE with a likelihood chosen from :data:`scvae.distributions.LIKELIHOODS`.

    Parameters
    ----------
    n_genes
        Number of input features.
    n_latent, n_hidden, n_layers
        Latent dimension, width and depth of encoder and decoder.
    likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"``, ``"gaussian"`` or ``"bernoulli"``.
    n_categories
        Number of categories of each conditioning label, in order; empty for an unconditional VAE.
    encode_covariates
        Feed the labels to the encoder too (they always go to every decoder layer).
    dispersion
        ``"gene"``: one NB inverse dispersion per gene; ``"gene-batch"``: one per gene and category of the
        label at ``dispersion_key_index``.
    """

    def __init__(
        self,
        n_genes: int,
        *,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        likelihood: str = "nb",
        n_categories: tuple[int, ...] | list[int] = (),
        encode_covariates: bool = True,
        dispersion: str = "gene",
        dispersion_key_index: int | None = None,
        dropout: float = 0.1,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if likelihood not in D.LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {D.LIKELIHOODS}, got {likelihood!r}")
        if dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {DISPERSIONS}, got {dispersion!r}")
        if dispersion == "gene-batch" and dispersion_key_index is None:
            raise ValueError("dispersion='gene-batch' needs a batch label (batch_key)")
        self.n_genes, self.n_latent, self.likelihood = n_genes, n_latent, likelihood
        self.n_categories = tuple(int(k) for k in n_categories)
        self.encode_covariates = encode_covariates
        self.dispersion, self.dispersion_key_index = dispersion, dispersion_key_index
        n_cov = sum(self.n_categories)
        mlp = dict(dropout=dropout, norm=norm)

        self.encoder = GaussianEncoder(
            n_genes, n_latent, n_hidden, n_layers, n_cov=n_cov if encode_covariates else 0, **mlp
        )
        self.decoder = MLP(n_latent, n_hidden, n_layers, n_cov=n_cov, inject_all=True, **mlp)
        self.head = nn.Linear(self.decoder.n_out, n_genes)
        if likelihood == "zinb":
            self.zi_head = nn.Linear(self.decoder.n_out, n_genes)
        if likelihood in ("nb", "zinb"):
            rows = self.n_categories[dispersion_key_index] if dispersion == "gene-batch" else 1
            self.log_theta = nn.Parameter(torch.zeros(rows, n_genes))
        if likelihood == "gaussian":
            self.log_var = nn.Parameter(torch.zeros(n_genes))

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def counts(self) -> bool:
        return self.likelihood in D.COUNT_LIKELIHOODS

    def one_hot(self, cats: torch.Tensor | None) -> torch.Tensor | None:
        """(cells, n_keys) integer codes → (cells, sum of categories) one-hot, or None without labels."""
        if not self.n_categories:
            return None
        return torch.cat(
            [F.one_hot(cats[:, i], k).to(torch.float32) for i, k in enumerate(self.n_categories)], dim=-1
        )

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.counts:
            return torch.log1p(x)
        if self.likelihood == "bernoulli":
            return (x > 0).to(x.dtype)
        return x

    # -- the model -----------------------------------------------------------------------------------------
    def inference(self, x: torch.Tensor, cats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x, c)."""
        cov = self.one_hot(cats) if self.encode_covariates else None
        return self.encoder(self.encoder_input(x), cov)

    def generative(
        self, z: torch.Tensor, cats: torch.Tensor | None = None, library: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters of p(x | z, c); ``library`` (cells, 1) scales the mean of count likelihoods.

        For count likelihoods the result also holds ``rho``, the expected frequencies (rows sum to 1)."""
        h = self.decoder(z, self.one_hot(cats))
        out = self.head(h)
        if self.counts:
            rho = torch.softmax(out, dim=-1)
            lib = library if library is not None else torch.ones_like(out[..., :1])
            params = {"rho": rho, "mu": lib * rho}
            if self.likelihood != "poisson":
                params["theta"] = torch.exp(self.log_theta_for(cats).clamp(-12.0, 12.0))
            if self.likelihood == "zinb":
                params["zi_logits"] = self.zi_head(h)
            return params
        if self.likelihood == "gaussian":
            return {"mu": out, "var": torch.exp(self.log_var.clamp(-12.0, 12.0))}
        return {"logits": out}

    def log_theta_for(self, cats: torch.Tensor | None) -> torch.Tensor:
        if self.dispersion == "gene-batch":
            return self.log_theta[cats[:, self.dispersion_key_index]]
        return self.log_theta[0]

    def library(self, x: torch.Tensor) -> torch.Tensor | None:
        return x.sum(dim=-1, keepdim=True) if self.counts else None

    def loss(
        self, x: torch.Tensor, cats: torch.Tensor | None = None, kl_weight: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """Per-cell reconstruction log-likelihood and KL, and the mean loss (negative weighted ELBO)."""
        mean, logvar = self.inference(x, cats)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        params = self.generative(z, cats, self.library(x))
        reconstruction = D.log_prob(self.likelihood, x, params).sum(-1)
        kl = kl_normal_standard(mean, logvar)
        return {
            "loss": (kl_weight * kl - reconstruction).mean(),
            "reconstruction": reconstruction,
            "kl": kl,
        }


def kl_normal_standard(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(-1)

