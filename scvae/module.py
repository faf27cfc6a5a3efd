"""The variational autoencoder itself, in pure torch: no Lightning, no AnnData.

    x ──► encoder q(z | x, c) = N(mu, diag sigma^2) ──► z = mu + sigma * eps ──► decoder p(x | z, c, l)

``c`` is the concatenated one-hot encoding of zero or more categorical labels (batch, condition, covariates),
``l`` the observed library size (total counts of the cell) for count likelihoods. The default loss is the
negative ELBO per cell, -(E_q[log p(x | z)] - kl_weight * KL(q(z | x) || N(0, I))), with the KL in closed form.

Other objectives and priors (see :mod:`scvae.objectives` and :mod:`scvae.priors`):

- ``prior="vamp"``: a VampPrior, p(z) = 1/K sum_k q(z | u_k) over learned pseudo-inputs u_k; its KL is a
  Monte Carlo estimate, log q(z | x) - log p(z) at the sampled z.
- ``objective="iwae"``: the importance-weighted bound with ``n_importance`` = K samples,
  log 1/K sum_k w_k with log w_k = log p(x | z_k) + kl_weight * (log p(z_k) - log q(z_k | x)). With
  ``kl_weight=1`` this is the IWAE bound (Burda et al. 2016); a ``kl_weight`` (beta, or the KL warm-up) below 1
  tempers the prior-to-posterior ratio inside every weight, so warm-up and beta mean the same for both
  objectives, and K=1 gives back the beta-weighted ELBO. The encoder is trained with the doubly reparameterised
  gradient of the bound (DReG, Tucker et al. 2019), whose signal-to-noise ratio does not decay with K; the
  decoder with the usual IWAE gradient.
- ``objective="elbo"`` with ``n_importance`` > 1 averages the ELBO over K samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data import InputError, check_bool, check_choice, check_int, check_number
from .kernels import Entries
from .likelihoods import LIKELIHOODS, Likelihood
from .loaders import Minibatch
from .nn import MLP, NORMS, GaussianEncoder
from .priors import PRIORS, VampPrior, eval_mode, log_normal_diag, log_standard_normal, mixture_log_prob

DISPERSIONS = ("gene", "gene-batch")
OBJECTIVES = ("elbo", "iwae")


@dataclass
class ModuleConfig:
    """Everything that defines a :class:`VAE`'s architecture and default objective, checked once here and saved
    with the weights (``dataclasses.asdict``). The names are those of :func:`scvae.model.fit`'s arguments.

    n_genes
        Number of input features.
    n_categories, batch_index
        Number of categories of each conditioning label, in order (empty: an unconditional VAE), and the position
        of the batch label among them (None without one).
    n_latent, n_hidden, n_layers
        Latent dimension, width and depth of encoder and decoder.
    likelihood
        A name of :data:`scvae.likelihoods.LIKELIHOODS`.
    dispersion
        ``"gene"``: one NB inverse dispersion per gene; ``"gene-batch"``: one per gene and batch category.
    encode_covariates
        Feed the labels to the encoder too (they always reach every decoder layer).
    dropout, norm
        Dropout rate and normalisation (``"batch"``, ``"layer"`` or ``"none"``) of the hidden layers.
    prior, n_pseudo_inputs
        ``"normal"`` (N(0, I), closed-form KL) or ``"vamp"`` (a VampPrior with ``n_pseudo_inputs`` components,
        Monte Carlo KL; see :mod:`scvae.priors`).
    objective, n_importance
        Training objective of :meth:`VAE.loss`: ``"elbo"`` or ``"iwae"``, with ``n_importance`` samples per cell.
    adversarial_weight, adversarial_indices
        Weight of the adversarial label classifiers on z (0: none), one for each label at ``adversarial_indices``
        (positions in ``n_categories``: the batch and the condition). Each, a small MLP, learns to tell its label
        from the sampled z while, through a gradient-reversal layer (Ganin & Lempitsky 2015), the encoder learns to
        defeat it; the labels still reach the decoder, which puts back from them what z sheds.
    """

    n_genes: int
    n_categories: list[int] = field(default_factory=list)
    batch_index: int | None = None
    n_latent: int = 10
    n_hidden: int = 128
    n_layers: int = 1
    likelihood: str = "nb"
    dispersion: str = "gene"
    encode_covariates: bool = True
    dropout: float = 0.1
    norm: str = "batch"
    prior: str = "normal"
    n_pseudo_inputs: int = 100
    objective: str = "elbo"
    n_importance: int = 1
    adversarial_weight: float = 0.0
    adversarial_indices: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n_genes = check_int("n_genes", self.n_genes, 1)
        self.n_categories = [check_int("n_categories", k, 1) for k in self.n_categories]
        self.n_latent = check_int("n_latent", self.n_latent, 1)
        self.n_hidden = check_int("n_hidden", self.n_hidden, 1)
        self.n_layers = check_int("n_layers", self.n_layers, 0)
        self.likelihood = check_choice("likelihood", self.likelihood, tuple(LIKELIHOODS))
        self.dispersion = check_choice("dispersion", self.dispersion, DISPERSIONS)
        self.encode_covariates = check_bool("encode_covariates", self.encode_covariates)
        self.dropout = check_number("dropout", self.dropout, low=0.0, high=1.0)
        self.norm = check_choice("norm", self.norm, NORMS)
        self.prior = check_choice("prior", self.prior, PRIORS)
        self.n_pseudo_inputs = check_int("n_pseudo_inputs", self.n_pseudo_inputs, 1)
        self.objective = check_choice("objective", self.objective, OBJECTIVES)
        self.n_importance = check_int("n_importance", self.n_importance, 1)
        self.adversarial_weight = check_number("adversarial_weight", self.adversarial_weight, low=0.0)
        if self.batch_index is not None and not 0 <= self.batch_index < len(self.n_categories):
            raise InputError(f"batch_index {self.batch_index} must index the {len(self.n_categories)} labels")
        if self.dispersion == "gene-batch" and self.batch_index is None:
            raise InputError("dispersion='gene-batch' needs batch_key: a batch label to learn a dispersion for")
        indices = [int(i) for i in self.adversarial_indices]
        if any(not 0 <= i < len(self.n_categories) for i in indices):
            raise InputError(f"adversarial_indices {indices} must index the {len(self.n_categories)} labels")
        if self.adversarial_weight > 0 and not indices:
            raise InputError(
                "adversarial_weight > 0 needs batch_key or condition_key: its classifiers learn to tell those labels"
            )
        self.adversarial_indices = indices if self.adversarial_weight > 0 else []


@dataclass(frozen=True)
class Loss:
    """What :meth:`VAE.loss` returns for a minibatch: ``loss``, the scalar to minimise (the negative weighted ELBO,
    or the negative IWAE bound, plus :meth:`VAE.adversarial_loss` while training); ``reconstruction`` and ``kl``
    per cell (averaged over the K samples; the KL in closed form for the normal prior and Monte Carlo for the
    VampPrior, so reconstruction - kl is an ELBO estimate); for ``objective="iwae"``, ``iwae``, the per-cell bound
    with the given ``kl_weight``."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    iwae: torch.Tensor | None = None


@dataclass(frozen=True)
class Weights:
    """What :meth:`VAE.log_importance_weights` returns: (S, cells) tensors ``log_weight`` = ``log_px_z +
    kl_weight * (log_pz - log_qz)`` and its terms, the samples ``z`` (S, cells, n_latent), and ``mean`` and
    ``logvar`` of q (cells × n_latent)."""

    log_weight: torch.Tensor
    log_px_z: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    z: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


class VAE(nn.Module):
    """A (conditional) VAE built from a :class:`ModuleConfig`."""

    def __init__(self, config: ModuleConfig) -> None:
        super().__init__()
        self.config = c = config
        self.n_genes, self.n_latent, self.likelihood = c.n_genes, c.n_latent, c.likelihood
        self.n_categories = tuple(c.n_categories)
        self.encode_covariates, self.dispersion, self.batch_index = c.encode_covariates, c.dispersion, c.batch_index
        self.prior, self.objective, self.n_importance = c.prior, c.objective, c.n_importance
        self.adversarial_weight, self.adversarial_indices = c.adversarial_weight, tuple(c.adversarial_indices)
        n_cov = sum(self.n_categories)
        mlp = dict(dropout=c.dropout, norm=c.norm)

        self.encoder = GaussianEncoder(
            c.n_genes, c.n_latent, c.n_hidden, c.n_layers, n_cov=n_cov if c.encode_covariates else 0, **mlp
        )
        self.decoder = MLP(c.n_latent, c.n_hidden, c.n_layers, n_cov=n_cov, inject_all=True, **mlp)
        self.head = nn.Linear(self.decoder.n_out, c.n_genes)
        self.kind = LIKELIHOODS[c.likelihood]  # the likelihood's own parameters (dispersion, ...) next
        rows = self.n_categories[c.batch_index] if c.dispersion == "gene-batch" else 1
        for name, param in self.kind.parameters(c.n_genes, self.decoder.n_out, rows).items():
            setattr(self, name, param)
        if c.prior == "vamp":
            self.vamp = VampPrior(c.n_pseudo_inputs, c.n_genes)
        if self.adversarial_indices:
            self.label_classifiers = nn.ModuleList(
                nn.Sequential(nn.Linear(c.n_latent, 32), nn.ReLU(), nn.Linear(32, self.n_categories[i]))
                for i in self.adversarial_indices
            )
        # When set, train() leaves every batch-norm layer in evaluation mode: its running statistics do not move
        # and minibatches are normalised with them (query mapping, see :mod:`scvae.mapping`). Off by default.
        self.freeze_batchnorm = False

    def train(self, mode: bool = True) -> VAE:
        """As :meth:`torch.nn.Module.train`, except that batch-norm layers stay in evaluation mode while
        ``freeze_batchnorm`` is set."""
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(False)
        return self

    # -- helpers -------------------------------------------------------------------------------------------
    @property
    def counts(self) -> bool:
        return self.kind.counts

    def one_hot(self, codes: torch.Tensor | None) -> torch.Tensor | None:
        """(cells, n_keys) integer codes → (cells, sum of categories) one-hot, or None without labels."""
        if not self.n_categories:
            return None
        return torch.cat([F.one_hot(codes[:, i], k).to(torch.float32) for i, k in enumerate(self.n_categories)], dim=-1)

    def encoder_input(self, x: torch.Tensor, nonzero: torch.Tensor | None = None) -> torch.Tensor | Entries:
        """What the encoder reads: log1p of counts, the presence of binary data, continuous data as they are.

        For counts with the ``nonzero`` indices given, the log1p values at those entries only, as
        :class:`~scvae.kernels.Entries`, which the encoder's first layer multiplies without reading the zeros."""
        if self.counts and nonzero is not None and x.dim() == 2:
            rows, cols = nonzero[0], nonzero[1]
            values = torch.log1p(x.reshape(-1).index_select(0, rows * x.shape[1] + cols))
            return Entries(values, rows, cols, (x.shape[0], x.shape[1]))
        return self.kind.encoder_input(x)

    def library(self, x: torch.Tensor) -> torch.Tensor | None:
        """Total counts of each cell (cells × 1) for count likelihoods, else None."""
        return x.sum(dim=-1, keepdim=True) if self.counts else None

    # -- the model -----------------------------------------------------------------------------------------
    def inference(self, batch: Minibatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of q(z | x, c)."""
        cov = self.one_hot(batch.codes) if self.encode_covariates else None
        return self.encoder(self.encoder_input(batch.x, batch.nonzero), cov)

    def generative(
        self, z: torch.Tensor, codes: torch.Tensor | None = None, library: torch.Tensor | None = None
    ) -> Likelihood:
        """p(x | z, c) as a :class:`~scvae.likelihoods.Likelihood`; ``library`` (cells × 1) scales the mean of
        count likelihoods (None: 1, so that their mean is the expected frequency ``rho``)."""
        h = self.decoder(z, self.one_hot(codes))
        rows = codes[:, self.batch_index] if self.dispersion == "gene-batch" else None
        return self.kind.from_decoder(self, self.head(h), h, rows, library)

    def log_px(self, batch: Minibatch, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z, c) of every cell of ``batch``, summed over genes, at ``z`` (cells × n_latent)."""
        x = batch.x
        return self.generative(z, batch.codes, self.library(x)).log_prob_sum(x, batch.nonzero)

    def adversarial_loss(self, z: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """``adversarial_weight`` × the summed mean cross-entropies of the label classifiers on ``z`` (cells ×
        n_latent), with the gradient reaching ``z`` reversed; 0 without classifiers or when gradients are off."""
        if not self.adversarial_indices or not torch.is_grad_enabled():
            return z.new_zeros(())
        reversed_z = _ReverseGradient.apply(z)
        ce = sum(
            F.cross_entropy(clf(reversed_z), codes[:, i])
            for clf, i in zip(self.label_classifiers, self.adversarial_indices)
        )
        return self.adversarial_weight * ce

    # -- prior -----------------------------------------------------------------------------------------------
    def prior_components(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Means and log-variances (K, n_latent) of the VampPrior's mixture, or None for the normal prior.

        The pseudo-inputs are encoded with an all-zero covariate vector (they carry no labels) and with the
        encoder's batch-norm/dropout in evaluation mode."""
        if self.prior != "vamp":
            return None
        u = self.vamp.pseudo_inputs
        n_cov = sum(self.n_categories) if self.encode_covariates else 0
        with eval_mode(self.encoder):
            return self.encoder(u, u.new_zeros(u.shape[0], n_cov) if n_cov else None)

    def log_prior(self, z: torch.Tensor, components: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """log p(z), summed over the latent axis; ``components`` may be passed to reuse the VampPrior's."""
        if self.prior != "vamp":
            return log_standard_normal(z)
        return mixture_log_prob(z, *(components if components is not None else self.prior_components()))

    @torch.no_grad()
    def init_pseudo_inputs(self, x: torch.Tensor) -> None:
        """Initialise the VampPrior's pseudo-inputs from cells ``x`` (K × genes, raw data as given to
        :meth:`loss`): their encoder input, e.g. ``log1p`` of counts."""
        if self.prior != "vamp":
            raise ValueError("init_pseudo_inputs needs prior='vamp'")
        self.vamp.initialize(self.encoder_input(x))

    # -- objectives ------------------------------------------------------------------------------------------
    def log_importance_weights(
        self,
        batch: Minibatch,
        n_samples: int = 1,
        *,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
        components: tuple[torch.Tensor, torch.Tensor] | None = None,
        posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
        dreg: bool = False,
    ) -> Weights:
        """Draw ``n_samples`` z ~ q(z | x) per cell and return the terms of the log importance weights.

        Parameters
        ----------
        batch
            The cells, as for :meth:`loss`.
        n_samples
            Samples S of z per cell.
        kl_weight
            Weight on log p(z) - log q(z | x) inside the weight (1 for the true weights).
        generator
            Source of the noise (seeded by the caller); the global torch RNG when None.
        components, posterior
            Precomputed VampPrior components and (mean, logvar) of q(z | x), to avoid recomputing them.
        dreg
            Give the encoder the doubly reparameterised gradient of the IWAE bound (Tucker et al. 2019) instead of
            the standard one, whose signal-to-noise ratio falls as K grows: log q(z | x) is evaluated with
            q's parameters detached (z keeps its path), and the gradient reaching z from
            ``logsumexp(log_weight)`` is multiplied by ``(1 - kl_weight) + kl_weight * w``, ``w`` the normalised
            weight (``w`` itself for the true weights; the mixture keeps the gradient unbiased during KL warm-up).
            The values returned are unchanged; only gradients differ. Meant for the IWAE loss only.
        """
        x, codes, nonzero = batch
        mean, logvar = posterior if posterior is not None else self.inference(batch)
        eps = torch.randn((n_samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype)
        z = reparameterize(mean, logvar, eps)  # (S, B, d)
        s, b = n_samples, x.shape[0]
        flat_codes = codes.repeat(s, 1) if codes is not None and self.n_categories else codes
        if nonzero is not None and s > 1:  # the same entries in each of the S copies of x, stacked
            shift = torch.arange(s, device=nonzero.device).repeat_interleave(nonzero.shape[1]) * b
            nonzero = nonzero.repeat(1, s) + torch.stack([shift, torch.zeros_like(shift)])
        log_px_z = self.log_px(Minibatch(x.repeat(s, 1), flat_codes, nonzero), z.reshape(s * b, -1)).reshape(s, b)
        log_qz = log_normal_diag(z, mean.detach(), logvar.detach()) if dreg else log_normal_diag(z, mean, logvar)
        log_pz = self.log_prior(z, components)
        log_weight = log_px_z + kl_weight * (log_pz - log_qz)
        if dreg and z.requires_grad:
            # The score term that DReG replaces carries kl_weight: the path gradient w·∂log w/∂z becomes
            # w·((1 - kl_weight) + kl_weight·w)·∂log w/∂z (w²·… for the true weights, Tucker et al. eq. 5).
            w = torch.softmax(log_weight.detach(), dim=0).unsqueeze(-1)  # normalised weights (S, B, 1)
            factor = (1.0 - kl_weight) + kl_weight * w
            z.register_hook(lambda grad: grad * factor)
        return Weights(log_weight, log_px_z, log_pz, log_qz, z, mean, logvar)

    def loss(
        self,
        batch: Minibatch,
        *,
        kl_weight: float = 1.0,
        objective: str | None = None,
        n_importance: int | None = None,
    ) -> Loss:
        """Per-cell reconstruction log-likelihood and KL, and the mean loss.

        Parameters
        ----------
        batch
            The cells: data (cells × genes), label codes (cells × n_keys, or None) and, when known, the indices of
            the data's non-zero entries (as the loaders give them).
        kl_weight
            beta times the KL warm-up factor.
        objective, n_importance
            ``"elbo"`` or ``"iwae"`` and the number of samples K; default: the module's own settings.

        Returns
        -------
        A :class:`Loss`.
        """
        objective = self.objective if objective is None else objective
        k = self.n_importance if n_importance is None else int(n_importance)
        check_choice("objective", objective, OBJECTIVES)
        if objective == "elbo" and k == 1 and self.prior == "normal":
            # The default: one sample, closed-form KL.
            mean, logvar = self.inference(batch)
            z = reparameterize(mean, logvar, torch.randn_like(mean))
            reconstruction = self.log_px(batch, z)
            kl = kl_normal_standard(mean, logvar)
            loss = (kl_weight * kl - reconstruction).mean() + self.adversarial_loss(z, batch.codes)
            return Loss(loss, reconstruction, kl)
        dreg = objective == "iwae" and torch.is_grad_enabled()
        terms = self.log_importance_weights(batch, k, kl_weight=kl_weight, dreg=dreg)
        reconstruction = terms.log_px_z.mean(0)
        if self.prior == "normal":
            kl = kl_normal_standard(terms.mean, terms.logvar)
        else:
            kl = (terms.log_qz - terms.log_pz).mean(0)
        # (With DReG, the hook on z also scales the adversary's gradient of each sample, as the bound's.)
        flat_codes = None if batch.codes is None else batch.codes.repeat(k, 1)
        adversarial = self.adversarial_loss(terms.z.reshape(-1, self.n_latent), flat_codes)
        if objective == "elbo":
            return Loss((kl_weight * kl - reconstruction).mean() + adversarial, reconstruction, kl)
        iwae = torch.logsumexp(terms.log_weight, dim=0) - math.log(k)
        return Loss(-iwae.mean() + adversarial, reconstruction, kl, iwae)


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps: a draw from N(mean, diag exp(logvar)) given standard normal noise ``eps`` (which may
    carry leading sample axes), differentiable in ``mean`` and ``logvar``."""
    return mean + torch.exp(0.5 * logvar) * eps


def kl_normal_standard(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * (torch.expm1(logvar) - logvar + mean**2).sum(-1)  # expm1: no cancellation near the prior


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient's sign flipped backward (the gradient-reversal layer of Ganin & Lempitsky)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return -grad
