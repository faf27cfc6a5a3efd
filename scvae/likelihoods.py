"""The observation models p(x | z, c) as objects. The decoder returns one (:meth:`scvae.module.VAE.generative`)
and the rest of scvae asks it for what it needs: the log-probability of each entry or its sum per cell, the mean,
the normalised expression, a sample. :data:`LIKELIHOODS` is the registry, the one place where a likelihood's name
is mapped to what it does; nothing else in scvae branches on the name.

The formulas are those of :mod:`scvae.distributions` (tested against scipy). The count likelihoods keep the
decoder's ``logits`` and the library size and work out the frequencies ``rho`` and the mean ``mu`` only when
asked: the NB's per-cell sum goes straight from the logits through the fused kernel of :mod:`scvae.kernels`.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import nn

from . import distributions as D
from .kernels import log_nb_softmax_sum


class Likelihood:
    """p(x | z, c) of every gene of every cell of a minibatch."""

    counts: ClassVar[bool] = False  # models counts: raw integer data, read by the encoder as log1p

    @staticmethod
    def parameters(n_genes: int, width: int, dispersion_rows: int) -> dict[str, nn.Module]:
        """The decoder's own parameters for this likelihood besides the mean's head (registered on the module
        under these names), given the decoder's output width and the number of dispersion rows."""
        return {}

    @classmethod
    def from_decoder(
        cls, module: nn.Module, out: torch.Tensor, h: torch.Tensor, rows: torch.Tensor | None, library: Any
    ) -> Likelihood:
        """The likelihood of a minibatch from the decoder: ``out`` the head's output, ``h`` the last hidden
        layer, ``rows`` each cell's dispersion row (None: one row), ``library`` (cells × 1) the total counts."""
        raise NotImplementedError

    @staticmethod
    def encoder_input(x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads of the data."""
        return x

    @classmethod
    def without_latent(cls, x: torch.Tensor) -> Likelihood:
        """This family's model of the cells ``x`` with no latent space, fitted to them gene by gene (the yardstick
        a trained VAE must beat: see :func:`scvae.train.no_latent_log_likelihood`)."""
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of every entry."""
        raise NotImplementedError

    def log_prob_sum(self, x: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) of every cell, summed over genes; ``nonzero``: row and column indices of the non-zero entries
        of ``x`` (as the loaders give them), which the sparse-aware forms use."""
        return self.log_prob(x).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError

    def expression(self, library_size: float = 1.0) -> torch.Tensor:
        """Denoised expression: the mean (counts: the expected frequencies times ``library_size``)."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw per entry."""
        raise NotImplementedError


class _Counts(Likelihood):
    counts = True

    def __init__(self, logits: torch.Tensor, library: torch.Tensor | None) -> None:
        self.logits = logits
        self.library = library if library is not None else torch.ones_like(logits[..., :1])

    @staticmethod
    def encoder_input(x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x)

    @classmethod
    def without_latent(cls, x: torch.Tensor) -> Likelihood:
        """Poisson with each gene a fixed share of every cell's total count (for every count family)."""
        share = x.sum(0) / x.sum().clamp_min(1.0)
        return Poisson(torch.log(share.clamp_min(1e-30)).expand_as(x), x.sum(1, keepdim=True))

    @cached_property
    def rho(self) -> torch.Tensor:
        """Expected frequency of each gene (rows sum to 1)."""
        return torch.softmax(self.logits, dim=-1)

    @cached_property
    def mu(self) -> torch.Tensor:
        """Expected count: library size × frequency."""
        return self.library * self.rho

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def expression(self, library_size: float = 1.0) -> torch.Tensor:
        return self.rho * library_size


class Poisson(_Counts):
    @classmethod
    def from_decoder(cls, module, out, h, rows, library):  # noqa: ANN001, ANN206 (as the base class)
        return cls(out, library)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return D.log_poisson(x, self.mu)

    def log_prob_sum(self, x: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
        return D.log_poisson_sum(x, self.mu, nonzero)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.poisson(self.mu, generator=generator)


class NegativeBinomial(_Counts):
    """NB with mean ``mu`` and inverse dispersion ``theta`` (one per gene, or per gene and batch)."""

    def __init__(self, logits: torch.Tensor, library: torch.Tensor | None, theta: torch.Tensor) -> None:
        super().__init__(logits, library)
        self.theta = theta

    @staticmethod
    def parameters(n_genes: int, width: int, dispersion_rows: int) -> dict[str, nn.Module]:
        return {"log_theta": nn.Parameter(torch.zeros(dispersion_rows, n_genes))}

    @staticmethod
    def dispersion(module: nn.Module, rows: torch.Tensor | None) -> torch.Tensor:
        log_theta = module.log_theta[rows] if rows is not None else module.log_theta[0]
        return torch.exp(log_theta.clamp(-12.0, 12.0))

    @classmethod
    def from_decoder(cls, module, out, h, rows, library):  # noqa: ANN001, ANN206
        return cls(out, library, cls.dispersion(module, rows))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return D.log_nb(x, self.mu, self.theta)

    def log_prob_sum(self, x: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor:
        return log_nb_softmax_sum(x, self.logits, self.library, self.theta, nonzero)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # NB as a Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mu).
        mu, theta = self.mu.double(), self.theta.expand_as(self.mu).double()
        rate = torch._standard_gamma(theta, generator=generator) * (mu / theta)
        return torch.poisson(rate, generator=generator).to(self.mu.dtype)


class ZeroInflatedNB(NegativeBinomial):
    """NB mixed with extra zeros of probability sigmoid(``zi_logits``)."""

    def __init__(self, logits: torch.Tensor, library: Any, theta: torch.Tensor, zi_logits: torch.Tensor) -> None:
        super().__init__(logits, library, theta)
        self.zi_logits = zi_logits

    @staticmethod
    def parameters(n_genes: int, width: int, dispersion_rows: int) -> dict[str, nn.Module]:
        return {"zi_head": nn.Linear(width, n_genes), **NegativeBinomial.parameters(n_genes, width, dispersion_rows)}

    @classmethod
    def from_decoder(cls, module, out, h, rows, library):  # noqa: ANN001, ANN206
        return cls(out, library, cls.dispersion(module, rows), module.zi_head(h))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return D.log_zinb(x, self.mu, self.theta, self.zi_logits)

    log_prob_sum = Likelihood.log_prob_sum  # every entry, not NB's fused sum: zero inflation changes the zeros

    @property
    def mean(self) -> torch.Tensor:
        return self.mu * torch.sigmoid(-self.zi_logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        x = super().sample(generator)
        pi = torch.sigmoid(self.zi_logits)
        zero = torch.rand(x.shape, generator=generator, dtype=pi.dtype, device=pi.device) < pi
        return torch.where(zero, torch.zeros_like(x), x)


class Gaussian(Likelihood):
    """Continuous data (e.g. log-normalised): mean from the decoder, one variance per gene."""

    def __init__(self, mu: torch.Tensor, var: torch.Tensor) -> None:
        self.mu, self.var = mu, var

    @staticmethod
    def parameters(n_genes: int, width: int, dispersion_rows: int) -> dict[str, nn.Module]:
        return {"log_var": nn.Parameter(torch.zeros(n_genes))}

    @classmethod
    def from_decoder(cls, module, out, h, rows, library):  # noqa: ANN001, ANN206
        return cls(out, torch.exp(module.log_var.clamp(-12.0, 12.0)))

    @classmethod
    def without_latent(cls, x: torch.Tensor) -> Likelihood:
        """One normal per gene, with the cells' mean and variance."""
        return cls(x.mean(0).expand_as(x), x.var(0, unbiased=False).clamp_min(1e-6))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return D.log_gaussian(x, self.mu, self.var)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(self.mu.shape, generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.var.clamp_min(1e-6).sqrt() * eps


class Bernoulli(Likelihood):
    """Detection: the probability that a gene has any count (the data are read as x > 0)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    @classmethod
    def from_decoder(cls, module, out, h, rows, library):  # noqa: ANN001, ANN206
        return cls(out)

    @classmethod
    def without_latent(cls, x: torch.Tensor) -> Likelihood:
        """One detection rate per gene, the share of cells that have it."""
        p = (x > 0).to(x.dtype).mean(0).clamp(1e-6, 1 - 1e-6)
        return cls(torch.logit(p).expand_as(x))

    @staticmethod
    def encoder_input(x: torch.Tensor) -> torch.Tensor:
        return (x > 0).to(x.dtype)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return D.log_bernoulli((x > 0).to(self.logits.dtype), self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        p = self.mean
        return (torch.rand(p.shape, generator=generator, dtype=p.dtype, device=p.device) < p).to(p.dtype)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "nb": NegativeBinomial,
    "zinb": ZeroInflatedNB,
    "poisson": Poisson,
    "gaussian": Gaussian,
    "bernoulli": Bernoulli,
}
COUNT_LIKELIHOODS = tuple(name for name, kind in LIKELIHOODS.items() if kind.counts)
