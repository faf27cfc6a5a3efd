"""The pure-torch VAE, without Lightning or AnnData."""

import numpy as np
import pytest
import torch

from scvae import distributions as D
from scvae.likelihoods import LIKELIHOODS
from scvae.loaders import Minibatch
from scvae.module import VAE, ModuleConfig, kl_normal_standard


def _counts(n=64, g=30, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(n, g, generator=gen) * 5, generator=gen) + 1


def test_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(200_000, 3, 4, dtype=torch.float64)
    log_q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    np.testing.assert_allclose(kl_normal_standard(mean, logvar).numpy(), mc.numpy(), atol=0.02)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("cats", [(), (3,), (2, 4)])
def test_every_likelihood_and_conditioning_trains_down(likelihood, cats):
    torch.manual_seed(0)
    x = _counts()
    if likelihood == "gaussian":
        x = torch.log1p(x)
    if likelihood == "bernoulli":  # detection of x > 0: some entries must be zero for it to be learnt
        x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.4] = 0
    codes = torch.stack([torch.arange(64) % k for k in cats], 1) if cats else None
    dispersion = "gene-batch" if cats and likelihood in ("nb", "zinb") else "gene"
    vae = VAE(
        ModuleConfig(
            30,
            n_latent=3,
            n_hidden=16,
            likelihood=likelihood,
            n_categories=cats,
            dispersion=dispersion,
            batch_index=0 if cats else None,
        )
    )
    batch = Minibatch(x, codes)

    def evaluate() -> tuple[float, float]:  # loss and reconstruction term, eval mode, the same 20 draws of z
        vae.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            outs = [vae.loss(batch) for _ in range(20)]
        vae.train()
        return float(np.mean([o.loss.item() for o in outs])), float(np.mean([o.reconstruction.mean() for o in outs]))

    loss_before, recon_before = evaluate()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(60):
        out = vae.loss(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert out.reconstruction.shape == (64,) and out.kl.shape == (64,)
    loss_after, recon_after = evaluate()
    # measured (the same draws of z before and after, so no sampling noise in the ratio): the loss after 60 steps
    # is 0.48-0.95 of the loss before (bernoulli and poisson learn least)
    assert np.isfinite(loss_after) and loss_after < 0.97 * loss_before
    # the reconstruction term (a log-likelihood) rose as much: the decoder learnt the data, not only the KL term
    assert recon_after - recon_before > 0.03 * abs(recon_before)
    if likelihood in ("nb", "zinb", "poisson", "bernoulli"):  # -log of a pmf: never below zero
        assert loss_after > 0


def test_count_decoder_gives_frequencies_scaled_by_library():
    vae = VAE(ModuleConfig(30, n_latent=4, likelihood="nb")).eval()
    z, lib = torch.randn(5, 4), torch.tensor([[10.0], [100.0], [1.0], [5.0], [1e4]])
    p = vae.generative(z, None, lib)
    torch.testing.assert_close(p.rho.sum(-1), torch.ones(5))
    torch.testing.assert_close(p.mean, p.rho * lib)
    torch.testing.assert_close(p.expression(1e4), p.rho * 1e4)


def test_covariates_reach_the_decoder_and_optionally_not_the_encoder():
    vae = VAE(ModuleConfig(30, n_latent=4, n_categories=(2,), encode_covariates=False)).eval()
    x = _counts(4)
    a = vae.inference(Minibatch(x, torch.zeros(4, 1, dtype=torch.long)))
    b = vae.inference(Minibatch(x, torch.ones(4, 1, dtype=torch.long)))
    torch.testing.assert_close(a, b)  # the encoder does not see the label
    z = torch.randn(4, 4)
    ra = vae.generative(z, torch.zeros(4, 1, dtype=torch.long)).rho
    rb = vae.generative(z, torch.ones(4, 1, dtype=torch.long)).rho
    assert not torch.allclose(ra, rb)  # the decoder does
    with_enc = VAE(ModuleConfig(30, n_latent=4, n_categories=(2,))).eval()
    assert not torch.allclose(
        with_enc.inference(Minibatch(x, torch.zeros(4, 1, dtype=torch.long)))[0],
        with_enc.inference(Minibatch(x, torch.ones(4, 1, dtype=torch.long)))[0],
    )


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="likelihood"):
        VAE(ModuleConfig(10, likelihood="gamma"))
    with pytest.raises(ValueError, match="dispersion"):
        VAE(ModuleConfig(10, dispersion="cell"))
    with pytest.raises(ValueError, match="batch"):
        VAE(ModuleConfig(10, dispersion="gene-batch"))


@pytest.mark.parametrize("likelihood, dispersion", [("nb", "gene"), ("nb", "gene-batch"), ("poisson", "gene")])
@pytest.mark.parametrize("objective, k", [("elbo", 1), ("iwae", 3)])
def test_the_loaders_nonzero_indices_change_nothing_but_speed(likelihood, dispersion, objective, k):
    """The loaders pass the indices of x's non-zero entries (from the CSR matrix, explicit zeros possibly among
    them); the encoder input, the loss and every gradient must be those computed without them."""
    gen = torch.Generator().manual_seed(3)
    x = torch.poisson(torch.rand(40, 25, generator=gen) ** 3 * 6, generator=gen)
    x[:, 0] += 1  # no empty cells
    x[1, 3] = x[2, 4] = 0
    codes = (torch.arange(40) % 3)[:, None]
    nonzero = torch.cat([D.nonzero_indices(x), torch.tensor([[1, 2], [3, 4]])], dim=1)  # two explicit zeros
    nonzero = nonzero[:, torch.argsort(nonzero[0] * 25 + nonzero[1])]
    assert (x[nonzero[0], nonzero[1]] == 0).sum() >= 2
    vae = VAE(
        ModuleConfig(
            25,
            n_latent=3,
            n_hidden=16,
            likelihood=likelihood,
            n_categories=(3,),
            dispersion=dispersion,
            batch_index=0,
            objective=objective,
            n_importance=k,
        )
    )
    runs = []
    for nz in (None, nonzero):
        torch.manual_seed(0)
        out = vae.loss(Minibatch(x, codes, nz), kl_weight=0.7)
        grads = torch.autograd.grad(out.loss, list(vae.parameters()), allow_unused=True)
        runs.append((out, grads))
    (a, ga), (b, gb) = runs
    torch.testing.assert_close(vae.encoder_input(x, nonzero).to_dense(), torch.log1p(x))
    for key in ("loss", "reconstruction", "kl"):
        torch.testing.assert_close(getattr(b, key), getattr(a, key), rtol=1e-5, atol=1e-4)
    for u, v in zip(ga, gb):
        if u is not None:
            torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)


def test_adversarial_loss_reverses_the_gradient_reaching_z():
    torch.manual_seed(0)
    vae = VAE(ModuleConfig(30, n_latent=4, n_categories=(3, 2), adversarial_weight=2.0, adversarial_indices=(0, 1)))
    z = torch.randn(16, 4, requires_grad=True)
    cats = torch.stack([torch.arange(16) % 3, torch.arange(16) % 2], 1)
    vae.adversarial_loss(z, cats).backward()
    reversed_grad = z.grad.clone()
    classifier_grad = [p.grad.clone() for p in vae.label_classifiers.parameters()]
    z.grad = None
    vae.zero_grad()
    f = torch.nn.functional
    ce = 2.0 * (
        f.cross_entropy(vae.label_classifiers[0](z), cats[:, 0])
        + f.cross_entropy(vae.label_classifiers[1](z), cats[:, 1])
    )
    ce.backward()
    torch.testing.assert_close(reversed_grad, -z.grad)  # the encoder side works against the classifiers
    for got, want in zip(classifier_grad, vae.label_classifiers.parameters()):
        torch.testing.assert_close(got, want.grad)  # the classifiers themselves minimise their cross-entropy
    with torch.no_grad():
        assert vae.adversarial_loss(z, cats).item() == 0.0  # evaluation: no adversarial term


def test_adversarial_weight_needs_labels_to_remove():
    with pytest.raises(ValueError, match="needs batch_key"):
        VAE(ModuleConfig(30, n_categories=(2,), adversarial_weight=1.0))
    with pytest.raises(ValueError, match=">= 0"):
        VAE(ModuleConfig(30, n_categories=(2,), adversarial_weight=-1.0, adversarial_indices=(0,)))
    with pytest.raises(ValueError, match="must index"):
        VAE(ModuleConfig(30, n_categories=(2,), adversarial_weight=1.0, adversarial_indices=(1,)))
