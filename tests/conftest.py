"""Shared fixtures: small real datasets, loaded once per session and copied per test."""

import matplotlib
import pytest

import scvae

matplotlib.use("Agg")


@pytest.fixture(scope="session")
def _pbmc():
    return scvae.datasets.pbmc68k()


@pytest.fixture
def pbmc(_pbmc):
    """700 PBMCs × 765 genes, raw counts (CSR float32), 10 cell types; a fresh copy per test."""
    return _pbmc.copy()


@pytest.fixture(scope="session")
def pbmc_model(_pbmc):
    """One NB VAE trained on the PBMC data (shared by tests that only read from it)."""
    adata = _pbmc.copy()
    model = scvae.model.fit(adata, max_epochs=60, seed=0, progress_bar=False)
    return model, adata


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (``pytest.mark.usefixtures("one_thread")``): small models train faster
    so, and much faster when the cores are shared (CI runners)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
