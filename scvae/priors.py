"""Priors over the latent space: the standard normal and the VampPrior (Tomczak & Welling, 2018).

The VampPrior is the mixture of the encoder's posteriors at ``K`` learned *pseudo-inputs* u_1..u_K,

    p(z) = 1/K sum_k q(z | u_k),

so the prior follows the aggregate posterior instead of forcing every cell towards N(0, I). Its KL term has no
closed form; the VAE estimates it by Monte Carlo, log q(z | x) - log p(z) at the sampled z.

Design choices (documented here once):

- Pseudo-inputs live in the **encoder's input space**: ``log1p(counts)`` for count likelihoods, the data for
  ``gaussian``, and (relaxed, continuous) 0/1 detection for ``bernoulli``. :meth:`VampPrior.initialize` sets them
  from the encoder input of random training cells (what :func:`scvae.model.fit` does); otherwise they start as a
  small Gaussian (std 0.01).
- **Conditioned models** (cVAE with ``encode_covariates=True``): pseudo-inputs carry no labels; the encoder sees
  them with an all-zero covariate vector. The prior is then one mixture shared by every batch/condition, as the
  standard normal prior is; the decoder still receives each cell's labels.
- The encoder is applied to the pseudo-inputs with its batch-norm and dropout layers in **evaluation mode**
  (running statistics, no dropout), so the prior is a deterministic function of the parameters, identical in
  training and at inference, and the pseudo-inputs never enter the batch statistics of real cells.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

PRIORS = ("normal", "vamp")
_LOG_2PI = math.log(2.0 * math.pi)


def log_normal_diag(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)), summed over the last axis (shapes broadcast)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * (_LOG_2PI + z**2).sum(-1)


def mixture_log_prob(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log of an equally weighted mixture of diagonal Gaussians, as a log-mean-exp over the components.

    Parameters
    ----------
    z
        Points, shape ``(..., d)``.
    means, logvars
        Component parameters, shape ``(K, d)``.

    Returns
    -------
    Tensor of shape ``(...)``: log (1/K) sum_k N(z; means[k], diag exp(logvars[k])).
    """
    comp = log_normal_diag(z.unsqueeze(-2), means, logvars)  # (..., K)
    return torch.logsumexp(comp, dim=-1) - math.log(means.shape[0])


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module``'s batch-norm and dropout layers in evaluation mode for the duration (gradients still flow)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.Dropout)
    changed = [m for m in module.modules() if isinstance(m, kinds) and m.training]
    for m in changed:
        m.training = False
    try:
        yield
    finally:
        for m in changed:
            m.training = True


class VampPrior(nn.Module):
    """Pseudo-inputs of a VampPrior; the owning VAE supplies the encoder that maps them to mixture components.

    Parameters
    ----------
    n_pseudo_inputs
        Number of mixture components ``K``.
    n_features
        Width of the encoder input (number of genes).

    The pseudo-inputs start as N(0, 0.01²) draws until :meth:`initialize` sets them.
    """

    def __init__(self, n_pseudo_inputs: int, n_features: int) -> None:
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.01 * torch.randn(n_pseudo_inputs, n_features))

    @torch.no_grad()
    def initialize(self, encoder_inputs: torch.Tensor) -> None:
        """Set the pseudo-inputs to given encoder inputs (e.g. ``log1p`` of random training cells), one per row.

        Parameters
        ----------
        encoder_inputs
            Tensor of shape ``(K, n_features)``, already in the encoder's input space.
        """
        if encoder_inputs.shape != self.pseudo_inputs.shape:
            raise ValueError(f"expected shape {tuple(self.pseudo_inputs.shape)}, got {tuple(encoder_inputs.shape)}")
        self.pseudo_inputs.copy_(encoder_inputs.to(self.pseudo_inputs))
