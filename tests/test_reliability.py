"""Reliability: interruption, resumption, reproducibility in fresh processes, and property-based checks that
no input layout corrupts the user's AnnData or yields NaN."""

import logging
import os
import signal
import subprocess
import sys
import threading

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scvae
import scvae.callbacks  # the training side, which `import scvae` leaves out until a model trains
from scvae.data import InputError


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_keeps_the_best_weights(pbmc, tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(4.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:  # early stopping on (never triggered) and no warm-up: "best" is the epoch of the best validation ELBO
        model = scvae.model.fit(
            pbmc,
            max_epochs=2000,
            early_stopping=True,
            patience=2000,
            kl_warmup_epochs=0,
            progress_bar=False,
            checkpoint_dir=tmp_path,
        )
    finally:
        timer.cancel()
    assert 1 <= model.record.epochs_trained < 2000
    assert np.isfinite(pbmc.obsm["X_scvae"]).all()
    assert signal.getsignal(signal.SIGINT) is previous  # the caller's handler is back
    # The weights returned are those of the epoch with the best validation ELBO among the complete epochs, as the
    # checkpoint recorded them, not the last minibatches' (of the epoch cut short) nor the last epoch's.
    history = model.history.dropna(subset=["elbo_validation"])
    best = int(history["epoch"].iloc[int(np.argmax(history["elbo_validation"].to_numpy()))])
    saved = scvae.callbacks.read_checkpoint(tmp_path)
    assert model.record.best_epoch == saved["best_epoch"] == best >= 1
    state = model.module.state_dict()
    assert set(state) == set(saved["best_state"])
    for name, value in saved["best_state"].items():
        assert torch.equal(state[name].cpu(), value), name
    if best < saved["epoch"]:  # an earlier epoch was best: the last complete epoch's weights were not returned
        assert any(not torch.equal(state[k].cpu(), v) for k, v in saved["module"].items())


def test_a_run_resumes_from_its_checkpoint(pbmc, tmp_path):
    first = scvae.model.fit(pbmc.copy(), max_epochs=4, progress_bar=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()
    resumed = scvae.model.fit(pbmc, max_epochs=8, progress_bar=False, checkpoint_dir=tmp_path, resume=True)
    assert list(resumed.history["epoch"]) == list(range(1, 9))
    pd.testing.assert_frame_equal(resumed.history.iloc[:4], first.history, check_dtype=False)
    assert resumed.history["elbo_validation"].iloc[-1] > first.history["elbo_validation"].iloc[-1]
    with pytest.raises(InputError, match="n_latent differ"):
        scvae.model.fit(pbmc, max_epochs=8, n_latent=5, progress_bar=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        scvae.model.fit(pbmc, max_epochs=8, progress_bar=False, checkpoint_dir=tmp_path / "none", resume=True)
    # a checkpoint written before weight averaging existed (no such setting, no running-mean count) still resumes
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["training"]["weight_averaging"], state["averaged"]
    torch.save(state, path)
    older = scvae.model.fit(pbmc, max_epochs=9, progress_bar=False, checkpoint_dir=tmp_path, resume=True)
    assert list(older.history["epoch"]) == list(range(1, 10))


_FRESH = """
import sys, numpy as np, scvae
a = scvae.datasets.pbmc68k()
scvae.model.fit(a, max_epochs=4, seed=11, progress_bar=False)
np.save(sys.argv[1], a.obsm["X_scvae"])
"""


@pytest.mark.slow
def test_same_seed_is_bit_identical_across_fresh_processes(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"z{i}.npy"
        subprocess.run([sys.executable, "-c", _FRESH, str(out)], check=True, capture_output=True)
        outs.append(np.load(out))
    assert outs[0].tobytes() == outs[1].tobytes()


def test_condition_with_a_single_category_is_refused(pbmc):
    pbmc.obs["condition"] = "control"
    with pytest.raises(InputError, match="single category"):
        scvae.model.fit(pbmc, condition_key="condition", max_epochs=1, progress_bar=False)


# -- property-based: any layout of valid input trains without touching the user's data ---------------------
@st.composite
def count_anndata(draw):
    n = draw(st.integers(12, 60))
    g = draw(st.integers(2, 25))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.poisson(draw(st.floats(0.05, 20.0)), (n, g))
    x[np.arange(n), rng.integers(0, g, n)] += 1  # no empty cells
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint16]))
    fmt = draw(st.sampled_from(["dense", "csr", "csc"]))
    x = x.astype(dtype)
    x = {"dense": x, "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x)}[fmt]
    a = ad.AnnData(x)
    a.obs_names = [f"cell{i}" for i in range(n)]
    a.var_names = [f"gene{j}" for j in range(g)]
    n_batches = draw(st.integers(1, 4))
    labels = rng.integers(0, n_batches, n)
    layout = draw(st.sampled_from(["str", "categorical", "int"]))
    a.obs["batch"] = {
        "str": [f"b{v}" for v in labels],
        "categorical": pd.Categorical([f"b{v}" for v in labels]),
        "int": labels,
    }[layout]
    return a


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adata=count_anndata(), use_batch=st.booleans(), likelihood=st.sampled_from(["nb", "zinb", "poisson"]))
def test_any_valid_count_layout_trains_and_leaves_adata_unchanged(adata, use_batch, likelihood):
    before_x = adata.X.toarray() if sp.issparse(adata.X) else adata.X.copy()
    before_type, before_dtype = type(adata.X), adata.X.dtype
    before_obs = adata.obs.copy()
    model = scvae.model.fit(
        adata,
        batch_key="batch" if use_batch else None,
        likelihood=likelihood,
        max_epochs=2,
        batch_size=8,
        n_hidden=8,
        n_latent=2,
        progress_bar=False,
    )
    after_x = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    np.testing.assert_array_equal(before_x, after_x)
    assert type(adata.X) is before_type and adata.X.dtype == before_dtype
    pd.testing.assert_frame_equal(before_obs, adata.obs)
    assert set(adata.obsm) == {"X_scvae"} and set(adata.uns) == {"scvae"}
    z = adata.obsm["X_scvae"]
    assert z.shape == (adata.n_obs, 2) and np.isfinite(z).all()
    assert np.isfinite(model.get_normalized_expression(adata, return_numpy=True)).all()


@settings(max_examples=40, deadline=None)
@given(adata=count_anndata(), bad=st.sampled_from(["nan", "inf", "negative", "fraction", "empty_cell", "huge"]))
def test_any_corrupted_value_is_refused_before_training(adata, bad):
    x = adata.X.toarray().astype(np.float64) if sp.issparse(adata.X) else adata.X.astype(np.float64)
    i, j = adata.n_obs // 2, adata.n_vars // 2
    if bad == "empty_cell":
        x[i] = 0
    else:
        x[i, j] = {"nan": np.nan, "inf": np.inf, "negative": -3.0, "fraction": 1.5, "huge": 1e40}[bad]
    adata.X = sp.csr_matrix(x) if sp.issparse(adata.X) else x
    with pytest.raises(InputError):
        scvae.model.fit(adata, max_epochs=1, batch_size=8, progress_bar=False)
    assert "X_scvae" not in adata.obsm and "scvae" not in adata.uns


def test_interrupt_handler_is_not_left_behind_after_an_error(pbmc):
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(scvae.settings.TrainingDiverged):
        scvae.model.fit(pbmc, max_epochs=2, lr=1e12, progress_bar=False, norm="none", dropout=0.0)
    assert signal.getsignal(signal.SIGINT) is previous


def test_odd_arguments_and_labels_get_errors_that_name_the_fix(pbmc_model, tmp_path, caplog):
    """What a Scanpy user may hand over besides the data: missing labels in a groupby column, labels given as
    numbers or None, no groups left to rank, a string for a True/False option, a file where a folder goes, an
    empty prefix that would overwrite the query's own labels, too few cells left after the validation split."""
    model, adata = pbmc_model
    adata = adata.copy()
    adata.obs["coded"] = pd.factorize(adata.obs["cell_type"])[0]  # integer-coded labels
    adata.obs["partial"] = adata.obs["cell_type"].astype(object).where(np.arange(adata.n_obs) >= 10)
    de_args = dict(groupby="partial", group1="Dendritic", n_samples=2)
    with pytest.raises(InputError, match=r"adata.obs\['partial'\] has 10 missing values"):
        model.differential_expression(adata, **de_args)
    with pytest.raises(InputError, match="has 10 missing values"):
        scvae.tl.rank_genes_groups(adata, model, "partial", n_samples=2)
    by_number = model.differential_expression(adata, groupby="coded", group1=1, n_samples=2)
    by_text = model.differential_expression(adata, groupby="coded", group1="1", n_samples=2)
    pd.testing.assert_frame_equal(by_number, by_text)
    with pytest.raises(InputError, match="group1 is None"):
        model.differential_expression(adata, groupby="coded", group1=None)
    with pytest.raises(InputError, match="no groups to rank besides the reference '1'"):
        scvae.tl.rank_genes_groups(adata, model, "coded", groups=[1], reference=1, n_samples=2)
    with pytest.raises(InputError, match="give_mean must be True or False, got 'no'"):
        model.get_latent(adata, give_mean="no")
    with pytest.raises(InputError, match="batch_correction must be True or False"):
        model.differential_expression(adata, groupby="coded", group1=1, batch_correction="no")
    (tmp_path / "model.pt").write_text("")
    with pytest.raises(FileExistsError, match="is a file; a model is saved as a folder"):
        model.save(tmp_path / "model.pt")
    query = adata[:50].copy()
    query.obsm["X_scvae"] = model.get_latent(query)
    adata.obsm["X_scvae"] = model.get_latent(adata)
    with pytest.raises(InputError, match="key_added must be a non-empty string"):
        scvae.tl.transfer_labels(adata, query, label_key="cell_type", key_added="")
    assert list(query.obs["cell_type"]) == list(adata.obs["cell_type"][:50])  # the query's labels as they were
    small = adata[:200].copy()
    small.uns["pca"] = {"variance_ratio": np.ones(3)}  # Scanpy's record of a PCA
    with pytest.raises(InputError, match=r"would replace adata.obsm\['X_pca'\] and adata.uns\['pca'\], which hold"):
        scvae.model.fit(small, key_added="X_pca", max_epochs=1, progress_bar=False)
    assert list(small.uns["pca"]) == ["variance_ratio"] and "X_pca" not in small.obsm
    small.obsm["X_umap"] = np.zeros((small.n_obs, 2))  # a UMAP without its record: still the user's
    with pytest.raises(InputError, match=r"would replace adata.obsm\['X_umap'\].*or delete those first"):
        scvae.model.fit(small, key_added="X_umap", max_epochs=1, progress_bar=False)
    assert small.obsm["X_umap"].shape == (200, 2)
    small.obs["barcode"] = small.obs_names  # a label per cell: trained, with a warning
    with caplog.at_level(logging.WARNING, logger="scvae"):
        scvae.model.fit(small, batch_key="barcode", max_epochs=1, progress_bar=False)
    assert "adata.obs['barcode'] has 200 categories for 200 cells" in caplog.text
    with pytest.raises(InputError, match=r"held out by validation_size=0.99: lower it"):
        scvae.model.fit(adata[:200].copy(), validation_size=0.99, max_epochs=1, progress_bar=False)


def test_weight_averaging_returns_the_mean_of_the_last_epochs_weights():
    from types import SimpleNamespace

    from scvae.settings import TrainSettings

    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    settings = TrainSettings(max_epochs=8, lr=1e-3, weight_averaging=0.5)  # epochs 5-8
    best = scvae.callbacks.BestWeights("elbo_train", settings)
    trainer = SimpleNamespace(should_stop=False)
    for epoch in range(1, 9):
        with torch.no_grad():
            net[0].weight.fill_(float(epoch))
            net[1].running_mean.fill_(10.0 * epoch)
            net[1].num_batches_tracked.fill_(epoch)
        row = {"epoch": float(epoch), "elbo_train": -float(epoch)}
        best.on_train_epoch_end(trainer, SimpleNamespace(close_epoch=lambda row=row: row, module=net))
    best.on_train_end(trainer, SimpleNamespace(module=net))
    assert torch.allclose(net[0].weight, torch.full((1, 2), 6.5))  # mean of 5, 6, 7, 8
    assert float(net[1].running_mean) == pytest.approx(65.0)
    assert int(net[1].num_batches_tracked) == 8
    assert best.averaged == 4 and best.best_epoch == 8
    assert best.kept() == "the average of the weights of epochs 5-8"
    assert not trainer.should_stop

    with pytest.raises(InputError, match="early_stopping=True returns the best"):
        TrainSettings(max_epochs=8, lr=1e-3, weight_averaging=0.25, early_stopping=True)
    with pytest.raises(InputError, match=r"weight_averaging must be a number in \[0, 1\)"):
        TrainSettings(max_epochs=8, lr=1e-3, weight_averaging=1.0)


def test_early_stopping_with_a_batch_key_returns_the_best_weights_unaveraged(pbmc):
    pbmc.obs["half"] = np.where(np.arange(pbmc.n_obs) % 2, "a", "b")
    model = scvae.model.fit(pbmc, batch_key="half", early_stopping=True, max_epochs=3, progress_bar=False)
    assert model.settings.early_stopping and model.settings.weight_averaging == 0.0
    assert scvae.model.fit(pbmc, batch_key="half", max_epochs=3, progress_bar=False).settings.weight_averaging == 0.25
    with pytest.raises(InputError, match="set one of them, not both"):
        scvae.model.fit(
            pbmc, batch_key="half", early_stopping=True, weight_averaging=0.25, max_epochs=3, progress_bar=False
        )
