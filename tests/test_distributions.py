"""The likelihoods against scipy.stats, on random and extreme parameters, in float64 and float32."""

import mpmath as mp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st
import torch

from scvae import distributions as D
from scvae import kernels as K
from scvae import likelihoods as L
from scvae.module import kl_normal_standard

RNG = np.random.default_rng(0)


def _nb_params(n):
    mu = np.exp(RNG.uniform(np.log(1e-3), np.log(1e5), n))
    theta = np.exp(RNG.uniform(np.log(1e-4), np.log(1e6), n))
    x = np.concatenate(
        [
            np.zeros(n // 4),
            RNG.integers(1, 10, n // 4),
            RNG.negative_binomial(
                np.maximum(theta[: n - n // 2], 1e-3), theta[: n - n // 2] / (theta[: n - n // 2] + mu[: n - n // 2])
            ),
        ]
    )
    x = np.concatenate([x[: n - 3], [1e6, 5e4, 0.0]])  # very large counts included
    return x.astype(np.float64), mu, theta


def _t(a, dtype=torch.float64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def test_nb_matches_scipy_float64_over_extreme_parameters():
    x, mu, theta = _nb_params(4000)
    ours = D.log_nb(_t(x), _t(mu), _t(theta)).numpy()
    ref = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    ok = np.isfinite(ref)
    assert ok.mean() > 0.99
    # Absolute error relative to the size of the terms involved (lgamma of large arguments).
    scale = 1.0 + np.abs(ref)
    assert np.max(np.abs(ours[ok] - ref[ok]) / scale[ok]) < 1e-6


def test_nb_float32_is_accurate_in_the_usual_range():
    mu = np.exp(RNG.uniform(np.log(0.01), np.log(1e3), 2000))
    theta = np.exp(RNG.uniform(np.log(0.05), np.log(1e3), 2000))
    x = RNG.negative_binomial(theta, theta / (theta + mu)).astype(np.float64)
    ours = D.log_nb(_t(x, torch.float32), _t(mu, torch.float32), _t(theta, torch.float32)).numpy()
    ref = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    assert np.all(np.isfinite(ours))
    # float32 keeps ~7 digits of the largest term (lgamma(x + theta)), whatever the form of the sum.
    scale = 1 + np.abs(ref) + np.abs(sps.gammaln(x + theta))
    assert np.max(np.abs(ours - ref) / scale) < 1e-6


def test_nb_has_finite_gradients_at_extremes():
    x = _t([0.0, 1.0, 1e5, 3.0], torch.float32)
    mu = _t([1e-6, 1e4, 1e-2, 2.0], torch.float32).requires_grad_()
    theta = _t([1e-4, 1e6, 1e-3, 1e4], torch.float32).requires_grad_()
    D.log_nb(x, mu, theta).sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(theta.grad).all()


def test_zinb_matches_mixture_of_point_mass_and_nb():
    x, mu, theta = _nb_params(2000)
    logits = RNG.normal(0, 4, len(x))
    ours = D.log_zinb(_t(x), _t(mu), _t(theta), _t(logits)).numpy()
    pi = sps.expit(logits)
    nb = st.nbinom.pmf(x, theta, theta / (theta + mu))
    lognb = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    ref = np.where(x == 0, np.log(pi + (1 - pi) * nb), np.log1p(-pi) + lognb)
    ok = np.isfinite(ref)
    assert ok.mean() > 0.99
    assert np.max(np.abs(ours[ok] - ref[ok]) / (1 + np.abs(ref[ok]))) < 1e-6


def test_zinb_is_stable_for_extreme_logits():
    x = _t([0.0, 0.0, 5.0, 5.0], torch.float32)
    mu = _t([3.0, 3.0, 3.0, 3.0], torch.float32)
    theta = _t([2.0, 2.0, 2.0, 2.0], torch.float32)
    logits = _t([80.0, -80.0, 80.0, -80.0], torch.float32)
    out = D.log_zinb(x, mu, theta, logits)
    assert torch.isfinite(out).all()
    assert abs(out[0].item()) < 1e-6  # certain dropout: log p(0) = 0
    assert abs(out[3].item() - D.log_nb(x[3:], mu[3:], theta[3:]).item()) < 1e-5


def test_poisson_matches_scipy():
    mu = np.exp(RNG.uniform(np.log(1e-4), np.log(1e5), 2000))
    x = np.concatenate([RNG.poisson(mu[:-2]), [0, 1e6]]).astype(np.float64)
    ours = D.log_poisson(_t(x), _t(mu)).numpy()
    ref = st.poisson.logpmf(x, mu)
    assert np.max(np.abs(ours - ref) / (1 + np.abs(ref))) < 1e-7


def test_gaussian_matches_scipy_and_clamps_variance():
    x, m = RNG.normal(0, 10, 1000), RNG.normal(0, 10, 1000)
    var = np.exp(RNG.uniform(-10, 10, 1000))
    ours = D.log_gaussian(_t(x), _t(m), _t(var)).numpy()
    np.testing.assert_allclose(ours, st.norm.logpdf(x, m, np.sqrt(var)), rtol=1e-10, atol=1e-10)
    assert torch.isfinite(D.log_gaussian(_t([1.0]), _t([1.0]), _t([0.0]))).all()


def test_bernoulli_matches_scipy_for_extreme_logits():
    logits = np.concatenate([RNG.normal(0, 5, 1000), [-200.0, 200.0, -200.0, 200.0]])
    x = np.concatenate([RNG.integers(0, 2, 1000), [0, 1, 1, 0]]).astype(np.float64)
    ours = D.log_bernoulli(_t(x), _t(logits)).numpy()
    ref = np.where(x == 1, -np.logaddexp(0, -logits), -np.logaddexp(0, logits))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def _objects(n: int, mu: float, theta: float, zi_logit: float, var: float = 2.5, logit: float = 0.7) -> dict:
    """Each likelihood object with the given parameters, n entries (one gene; the count likelihoods' mean is
    library × softmax of one logit, i.e. the library)."""
    full = lambda v: torch.full((n, 1), float(v), dtype=torch.float64)  # noqa: E731
    logits, lib = full(0.0), full(mu)
    return {
        "nb": L.NegativeBinomial(logits, lib, full(theta)),
        "zinb": L.ZeroInflatedNB(logits, lib, full(theta), full(zi_logit)),
        "poisson": L.Poisson(logits, lib),
        "gaussian": L.Gaussian(full(mu), full(var)),
        "bernoulli": L.Bernoulli(full(logit)),
    }


@pytest.mark.parametrize("likelihood", L.LIKELIHOODS)
def test_samples_have_the_likelihoods_mean_and_variance(likelihood):
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    px = _objects(n, 4.0, 2.0, -1.0)[likelihood]
    assert isinstance(px, L.LIKELIHOODS[likelihood])
    x = px.sample(gen).numpy()
    expected_mean = px.mean[0].item()
    pi = sps.expit(-1.0)
    expected_var = {
        "nb": 4 + 16 / 2,
        "zinb": (1 - pi) * (4 + 16 / 2) + pi * (1 - pi) * 16,
        "poisson": 4.0,
        "gaussian": 2.5,
        "bernoulli": sps.expit(0.7) * (1 - sps.expit(0.7)),
    }[likelihood]
    assert abs(x.mean() - expected_mean) < 4 * np.sqrt(expected_var / n)
    assert abs(x.var() / expected_var - 1) < 0.03
    if likelihood in L.COUNT_LIKELIHOODS:
        assert np.all(x == np.round(x)) and x.min() >= 0


def test_log_prob_sums_to_one_over_support():
    # The pmfs normalise: sum over x of p(x) = 1 for a few parameter settings.
    xs = torch.arange(0, 3000, dtype=torch.float64)
    for mu, theta, logit in [(0.5, 0.3, -2.0), (20.0, 5.0, 0.5), (100.0, 50.0, 1.0)]:
        objects = _objects(len(xs), mu, theta, logit)
        for lik in L.COUNT_LIKELIHOODS:
            total = torch.logsumexp(objects[lik].log_prob(xs[:, None]), 0).exp().item()
            assert abs(total - 1) < 1e-8, (lik, mu, theta)


@pytest.mark.parametrize("theta_shape", ["gene", "cell-gene"])
def test_sparse_aware_sums_equal_elementwise_sums_with_gradients(theta_shape):
    """log_poisson_sum skips the count terms at zeros, and the NB likelihood object sums through the fused kernel;
    values and gradients must not change."""
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(50, 300, generator=gen, dtype=torch.float64) ** 4 * 5, generator=gen)
    x[3] = 0  # a cell with no counts
    logits = torch.randn(50, 300, generator=gen, dtype=torch.float64, requires_grad=True)
    log_theta = torch.randn(
        300 if theta_shape == "gene" else (50, 300), generator=gen, dtype=torch.float64, requires_grad=True
    )
    lib = x.sum(1, keepdim=True) + 1.0

    def run(fn):
        mu = lib * torch.softmax(logits, -1)
        val = fn(mu, torch.exp(log_theta))
        g = torch.autograd.grad(val.sum(), [logits, log_theta], allow_unused=True)
        return val, g

    dense, g_dense = run(lambda mu, th: D.log_nb(x, mu, th).sum(-1))
    sparse, g_sparse = run(lambda mu, th: L.NegativeBinomial(logits, lib, th).log_prob_sum(x))
    torch.testing.assert_close(sparse, dense, rtol=1e-10, atol=1e-9)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    pd_, _ = run(lambda mu, th: D.log_poisson(x, mu).sum(-1))
    ps, _ = run(lambda mu, th: D.log_poisson_sum(x, mu))
    torch.testing.assert_close(ps, pd_, rtol=1e-10, atol=1e-9)
    assert (x > 0).float().mean() < 0.5  # the test data are sparse like UMI counts


@pytest.mark.parametrize("theta_shape", ["gene", "cell-gene"])
def test_fused_nb_from_logits_equals_autograd_through_the_formula(theta_shape):
    """log_nb_softmax_sum has a hand-written backward pass: values and gradients (with unequal weights per cell)
    must equal autograd through log_nb(x, library * softmax(logits), theta), also when the given non-zero indices
    include explicit zeros of a sparse matrix; torch's gradcheck confirms the derivatives numerically."""
    gen = torch.Generator().manual_seed(1)
    x = torch.poisson(torch.rand(40, 200, generator=gen, dtype=torch.float64) ** 4 * 8, generator=gen)
    x[3] = 0  # a cell with no counts
    logits = torch.randn(40, 200, generator=gen, dtype=torch.float64, requires_grad=True)
    log_theta = torch.randn(200 if theta_shape == "gene" else (40, 200), generator=gen, dtype=torch.float64) * 3
    log_theta.requires_grad_()
    lib = x.sum(1, keepdim=True) + 1.0
    weight = torch.rand(40, generator=gen, dtype=torch.float64)

    def run(fn):
        val = fn(logits, torch.exp(log_theta))
        return val, torch.autograd.grad((val * weight).sum(), [logits, log_theta])

    ref, g_ref = run(lambda lg, th: D.log_nb(x, lib * torch.softmax(lg, -1), th).sum(-1))
    with_zeros = torch.cat([D.nonzero_indices(x), torch.tensor([[0, 3, 7], [5, 9, 11]])], dim=1)
    keep = x[with_zeros[0], with_zeros[1]] > 0
    assert (~keep).sum() >= 2  # some explicit zeros among the given indices
    for nonzero in (None, with_zeros):
        got, g_got = run(lambda lg, th, nz=nonzero: K.log_nb_softmax_sum(x, lg, lib, th, nz))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-9)
        for a, b in zip(g_got, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # Finite differences of lgamma(x + theta) are too coarse for gradcheck at theta ~ 1e4: moderate theta here.
    small_x, small_lib = x[:6, :15], lib[:6]
    small_logits = logits[:6, :15].detach().clone().requires_grad_()
    small_log_theta = (log_theta[..., :15] if theta_shape == "gene" else log_theta[:6, :15]) / 3
    small_log_theta = small_log_theta.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda lg, lt: K.log_nb_softmax_sum(small_x, lg, small_lib, torch.exp(lt)), (small_logits, small_log_theta)
    )


def test_fused_nb_float32_keeps_the_poisson_limit_and_tiny_means():
    """In float32 the fused form agrees with the float64 reference where theta is huge (Poisson limit, where a
    difference of logs would cancel) and where means are tiny or the counts large."""
    gen = torch.Generator().manual_seed(2)
    x = torch.poisson(torch.rand(30, 500, generator=gen, dtype=torch.float64) ** 6 * 20, generator=gen)
    x[0, :5] = torch.tensor([1e4, 3e3, 500.0, 0.0, 1.0])
    logits = torch.randn(30, 500, generator=gen, dtype=torch.float64) * 4
    theta = torch.exp(torch.linspace(-9.0, 12.0, 500, dtype=torch.float64))  # 1e-4 to e^12
    lib = x.sum(1, keepdim=True)
    ref = D.log_nb(x, lib * torch.softmax(logits, -1), theta).sum(-1)
    got = K.log_nb_softmax_sum(x.float(), logits.float(), lib.float(), theta.float()).double()
    assert torch.isfinite(got).all()
    # float32 keeps ~7 digits of the per-cell sum of terms as large as lgamma(x + theta)
    scale = 1 + torch.abs(torch.lgamma(x + theta)).sum(-1)
    assert ((got - ref).abs() / scale).max() < 2e-6


def test_float32_digamma_matches_scipy_from_tiny_to_huge_arguments():
    y = np.concatenate([np.exp(np.linspace(np.log(1e-6), np.log(1e7), 3000)), np.arange(1, 200) + 0.37])
    ours = K.digamma(_t(y, torch.float32)).double().numpy()
    ref = sps.digamma(y.astype(np.float32).astype(np.float64))  # the same float32 inputs
    assert np.max(np.abs(ours - ref) / (1 + np.abs(ref))) < 1e-6
    np.testing.assert_array_equal(K.digamma(_t(y)).numpy(), torch.digamma(_t(y)).numpy())  # float64: torch's


def test_fused_nb_gives_an_explicit_zero_in_an_empty_cell_its_value():
    """A sparse matrix may store a zero in a cell with no counts (library 0): its log-likelihood is 0, not NaN."""
    x = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
    logits = torch.zeros(2, 3, requires_grad=True)
    nonzero = torch.tensor([[0, 1, 1], [1, 0, 2]])  # (0, 1) is an explicit zero of the empty first cell
    out = K.log_nb_softmax_sum(x, logits, x.sum(1, keepdim=True), torch.ones(3), nonzero)
    out.sum().backward()
    ref = D.log_nb(x, x.sum(1, keepdim=True) * torch.softmax(logits, -1), torch.ones(3)).sum(-1)
    torch.testing.assert_close(out, ref)
    assert out[0] == 0 and torch.isfinite(logits.grad).all()


def _mp_log_nb(x, mu, theta):
    """log NB(x; mu, theta) to 50 digits, and its derivative in theta."""
    mp.mp.dps = 50

    def f(th):
        x_, mu_ = mp.mpf(x), mp.mpf(mu)
        return (
            mp.loggamma(x_ + th) - mp.loggamma(th) - mp.loggamma(x_ + 1)
            + th * mp.log(th / (th + mu_)) + x_ * mp.log(mu_ / (th + mu_))
        )  # fmt: skip

    th = mp.mpf(theta)
    return float(f(th)), float(mp.diff(f, th))


def test_nb_float64_is_exact_relative_to_the_poisson_terms_and_zeros_in_float32():
    """Against mpmath, relative to the size of the Poisson's own terms (x log mu, mu, lgamma(x + 1)) rather than
    to lgamma(x + theta): float64 to 1e-9 up to theta = 1e6; a zero count, where the lgammas cancel exactly,
    keeps its (tiny) log-probability in float32 too."""
    grid = [
        (x, mu, theta)
        for x in (0.0, 1.0, 3.0, 100.0, 1e4)
        for mu in (1e-6, 0.5, 90.0, 1e4)
        for theta in (1e-3, 0.7, 39.0, 1e3, 1e5, 1e6)
    ]
    x, mu, theta = (np.array(v) for v in zip(*grid))
    ref = np.array([_mp_log_nb(*p)[0] for p in grid])
    scale = np.abs(x * np.log(mu)) + mu + sps.gammaln(x + 1) + np.abs(ref)
    got64 = D.log_nb(_t(x), _t(mu), _t(theta)).numpy()
    assert np.max(np.abs(got64 - ref) / scale) < 1e-9  # lgamma(theta) · eps: 8e-11 at theta = 1e6
    zero = x == 0
    got32 = D.log_nb(*(_t(v[zero], torch.float32) for v in (x, mu, theta))).double().numpy()
    np.testing.assert_allclose(got32, ref[zero], rtol=1e-6)


def test_nb_theta_gradient_against_mpmath_in_both_paths():
    """d log p / d theta, down to O(1/theta²) at large theta: the plain form (autograd) and the fused kernel
    (hand-written backward) against mpmath's derivative, in float64."""
    pts = [(3.0, 2.5, 1e4), (0.0, 2.5, 1e4), (7.0, 0.3, 1e3), (40.0, 35.0, 3e3), (2.0, 1.0, 45.0), (2.0, 1.0, 5.0)]
    ref = np.array([_mp_log_nb(*p)[1] for p in pts])
    x, mu, th = (_t([p[i] for p in pts]) for i in range(3))
    theta = th.clone().requires_grad_()
    D.log_nb(x, mu, theta).sum().backward()
    np.testing.assert_allclose(theta.grad.numpy(), ref, rtol=1e-5, atol=1e-14)
    # the fused kernel: one cell per point, two genes (the second with frequency 1 - mu / library)
    lib = torch.full((len(pts), 1), 1e6, dtype=torch.float64)
    logits = torch.stack([torch.log(mu / 1e6), torch.log1p(-mu / 1e6)], dim=1)
    theta = torch.stack([th, torch.ones_like(th)], dim=1).requires_grad_()
    K.log_nb_softmax_sum(torch.stack([x, torch.zeros_like(x)], dim=1), logits, lib, theta).sum().backward()
    np.testing.assert_allclose(theta.grad[:, 0].numpy(), ref, rtol=1e-5, atol=1e-14)


def test_bernoulli_and_kl_near_their_cancellations():
    mp.mp.dps = 40
    # Bernoulli: a likely outcome keeps its (tiny) log-probability, -log1p(exp(-l))
    logits = np.array([20.0, 30.0, 50.0, -30.0])
    got = D.log_bernoulli(_t([1.0, 1.0, 1.0, 0.0]), _t(logits)).numpy()
    np.testing.assert_allclose(got, -np.log1p(np.exp(-np.abs(logits))), rtol=1e-12)
    # KL of a posterior next to the prior: positive, and right to the rounding of logvar's own size (exact:
    # (e^v - 1 - v) / 2 + m² / 2; e^v - 1 - v cancelled to a negative value in float32)
    logvar = _t([[-1e-6], [1e-4], [1e-9], [-0.3]], torch.float32)
    kl = kl_normal_standard(torch.zeros_like(logvar), logvar).double().numpy()
    v = logvar.double().numpy().ravel()
    exact = np.array([float((mp.expm1(mp.mpf(float(a))) - mp.mpf(float(a))) / 2) for a in v])
    assert (kl >= 0).all()
    assert np.all(np.abs(kl - exact) <= 1e-7 * np.abs(v))
