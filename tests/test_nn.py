"""The encoder's input layer: its sparse path (entries only) against the dense product it replaces."""

import math

import pytest
import torch
from torch import nn

from scvae.kernels import SPARSE_MAX_DENSITY, Entries, entries_times
from scvae.nn import InputLayer


def _entries(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(30, 50, generator=gen, dtype=dtype) * 5, generator=gen)
    x *= torch.rand(30, 50, generator=gen, dtype=dtype) < 0.12  # about 10 % non-zero, like UMI counts
    x[7] = 0  # a cell without entries
    x[:, 11] = 0  # a gene that no cell has
    rows, cols = torch.nonzero(x).T
    rows = torch.cat([rows, torch.tensor([3, 12])])  # two explicit zeros, out of order
    cols = torch.cat([cols, torch.tensor([11, 40])])
    values = torch.log1p(x[rows, cols])
    assert (values == 0).sum() >= 2
    return Entries(values, rows, cols, (30, 50)), torch.log1p(x)


def test_entries_to_dense():
    entries, dense = _entries()
    torch.testing.assert_close(entries.to_dense(), dense, rtol=0, atol=0)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("max_density", [1.0, 0.0])  # the sparse kernel; the dense product
def test_entries_times_weight_equals_the_dense_product_values_and_gradients(shuffle, max_density):
    entries, dense = _entries()
    if shuffle:  # rows out of order: sorted internally
        perm = torch.randperm(entries.values.numel(), generator=torch.Generator().manual_seed(1))
        entries = Entries(entries.values[perm], entries.rows[perm], entries.cols[perm], entries.shape)
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(50, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    out = entries_times(entries, weight, max_density)
    (grad,) = torch.autograd.grad(out, weight, upstream)
    torch.testing.assert_close(out, dense @ weight.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, dense.T @ upstream, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda w: entries_times(entries, w, max_density), (weight,))


def test_input_layer_is_the_linear_layer_it_replaces():
    """Same initial weights as nn.Linear(genes + covariates, width) from the same seed, the same output for dense
    and sparse input, and the same gradients."""
    entries, dense = _entries(torch.float32)
    assert entries.values.numel() < SPARSE_MAX_DENSITY * dense.numel()  # the sparse kernel is used
    cov = torch.nn.functional.one_hot(torch.arange(30) % 3, 3).float()
    torch.manual_seed(5)
    linear = nn.Linear(53, 16)
    torch.manual_seed(5)
    layer = InputLayer(50, 16, n_cov=3)
    torch.testing.assert_close(layer.genes.detach(), linear.weight.detach()[:, :50].T, rtol=0, atol=0)
    torch.testing.assert_close(layer.covariates.detach(), linear.weight.detach()[:, 50:], rtol=0, atol=0)
    torch.testing.assert_close(layer.bias.detach(), linear.bias.detach(), rtol=0, atol=0)
    expected = linear(torch.cat([dense, cov], dim=-1))
    for x in (dense, entries):
        out = layer(x, cov)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        g_layer = torch.autograd.grad(out.square().sum(), [layer.genes, layer.covariates, layer.bias])
        g_linear = torch.autograd.grad(expected.square().sum(), [linear.weight, linear.bias], retain_graph=True)
        torch.testing.assert_close(g_layer[0], g_linear[0][:, :50].T, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g_layer[1], g_linear[0][:, 50:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g_layer[2], g_linear[1], rtol=1e-4, atol=1e-4)


def test_a_frozen_input_layer_computes_no_weight_gradient():
    entries, _ = _entries(torch.float32)
    layer = InputLayer(50, 4)
    layer.genes.requires_grad_(False)
    layer(entries).sum().backward()
    assert layer.genes.grad is None and layer.bias.grad is not None
    assert math.isfinite(float(layer.bias.grad.sum()))
