"""The AnnData API: fit, latent quality, outputs, persistence, reproducibility and bad input."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

import scvae
import scvae.train  # the training side, which `import scvae` leaves out until a model trains
from scvae.data import InputError
from scvae.metrics import knn_accuracy


def _snapshot(adata):
    """Everything in an AnnData, for before/after comparison."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return {
        "X": x,
        "X_type": type(adata.X),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "layers": {k: v.copy() for k, v in adata.layers.items()},
        "obsm": set(adata.obsm.keys()),
        "uns": set(adata.uns.keys()),
    }


def _assert_unchanged(before, adata, allowed_obsm=(), allowed_uns=()):
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    np.testing.assert_array_equal(before["X"], x)
    assert type(adata.X) is before["X_type"]
    pd.testing.assert_frame_equal(before["obs"], adata.obs)
    pd.testing.assert_frame_equal(before["var"], adata.var)
    assert set(adata.layers) == set(before["layers"])
    assert set(adata.obsm) - before["obsm"] <= set(allowed_obsm)
    assert set(adata.uns) - before["uns"] <= set(allowed_uns)


def test_fit_writes_latent_and_record_and_nothing_else(pbmc):
    pbmc.layers["extra"] = pbmc.X.copy()
    before = _snapshot(pbmc)
    model = scvae.model.fit(pbmc, max_epochs=5, seed=0, progress_bar=False, key_added="X_test")
    _assert_unchanged(before, pbmc, allowed_obsm={"X_test"}, allowed_uns={"test"})  # the key, less its "X_"
    assert pbmc.obsm["X_test"].shape == (700, 10) and np.isfinite(pbmc.obsm["X_test"]).all()
    rec = pbmc.uns["test"]
    assert rec["key_added"] == "X_test" and rec["likelihood"] == "nb" and rec["seed"] == 0
    assert rec["epochs_trained"] == len(model.history) == 5
    assert {"elbo_train", "elbo_validation", "reconstruction_train", "kl_validation"} <= set(model.history)
    # a second run under the default key records itself apart and leaves the first run's record alone
    scvae.model.fit(pbmc, max_epochs=2, seed=1, progress_bar=False)
    _assert_unchanged(before, pbmc, allowed_obsm={"X_test", "X_scvae"}, allowed_uns={"test", "scvae"})
    assert pbmc.uns["scvae"]["key_added"] == "X_scvae" and pbmc.uns["scvae"]["epochs_trained"] == 2
    assert pbmc.uns["test"] == rec and pbmc.uns["test"]["epochs_trained"] == 5


def test_latent_separates_cell_types_at_least_as_well_as_pca(pbmc_model):
    model, adata = pbmc_model
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.pca(ref, n_comps=50, random_state=0)
    acc_vae = knn_accuracy(adata.obsm["X_scvae"], adata.obs["cell_type"], k=15)
    acc_pca = knn_accuracy(ref.obsm["X_pca"], adata.obs["cell_type"], k=15)
    assert acc_vae > 0.75
    assert acc_vae >= acc_pca - 0.02, (acc_vae, acc_pca)


def test_training_improves_the_validation_elbo_and_history_plots(pbmc_model):
    model, _ = pbmc_model
    h = model.history
    assert h["elbo_validation"].iloc[model.record.best_epoch - 1] > h["elbo_validation"].iloc[0] + 50
    assert np.isclose(h["elbo_train"], h["reconstruction_train"] - h["kl_train"]).all()
    axes = model.plot_history()
    assert len(axes) == 3 and axes[0].get_title().startswith("ELBO")
    import matplotlib.pyplot as plt

    with pytest.raises(InputError, match="ax must be three matplotlib axes"):
        scvae.pl.history(model, ax=plt.subplots()[1])
    with pytest.raises(InputError, match="model has no training history"):
        scvae.pl.history("model")
    with pytest.raises(InputError, match=r"k=0 neighbours|k must be a positive integer"):
        knn_accuracy(model.get_latent(pbmc_model[1]), pbmc_model[1].obs["cell_type"], k=0)
    plt.close("all")


def test_scanpy_pipeline_runs_on_the_latent(pbmc_model, tmp_path):
    _, adata = pbmc_model
    adata = adata.copy()
    sc.pp.neighbors(adata, use_rep="X_scvae")
    sc.tl.umap(adata)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2)
    assert adata.obs["leiden"].nunique() > 3
    adata.write_h5ad(tmp_path / "out.h5ad")  # uns["scvae"] must be writable


def test_save_load_reproduces_latent_exactly(pbmc_model, tmp_path):
    model, adata = pbmc_model
    model.save(tmp_path / "m")
    loaded = scvae.model.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.get_latent(adata), adata.obsm["X_scvae"])
    np.testing.assert_array_equal(
        loaded.get_normalized_expression(adata, return_numpy=True),
        model.get_normalized_expression(adata, return_numpy=True),
    )
    pd.testing.assert_frame_equal(loaded.history, model.history, check_dtype=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)


def test_load_refuses_damaged_or_foreign_files(pbmc_model, tmp_path):
    model, _ = pbmc_model
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="damaged"):
        scvae.model.load(tmp_path / "m")
    model.save(tmp_path / "v", overwrite=True)
    cfg = tmp_path / "v" / "scvae.json"
    text = cfg.read_text()
    assert '"format_version": 2' in text
    cfg.write_text(text.replace('"format_version": 2', '"format_version": 99'))
    with pytest.raises(InputError, match="format version 99"):
        scvae.model.load(tmp_path / "v")
    cfg.write_text(text.replace('"n_latent"', '"n_latents"'))
    with pytest.raises(InputError, match="misspells a setting.*n_latents"):
        scvae.model.load(tmp_path / "v")
    doc = json.loads(text)
    for edit in ("fewer genes", "one gene twice", "history"):  # each would fail later, far from the file
        bad = json.loads(text)
        if edit == "fewer genes":
            bad["data"]["genes"] = doc["data"]["genes"][:-3]
        elif edit == "one gene twice":
            bad["data"]["genes"] = [doc["data"]["genes"][0], *doc["data"]["genes"][:-1]]
        else:
            bad["history"] = {k: v[:2] if i else v for i, (k, v) in enumerate(doc["history"].items())}
        cfg.write_text(json.dumps(bad))
        with pytest.raises(InputError, match="scvae.json: its .*(do not fit its network|differ in length).*by hand"):
            scvae.model.load(tmp_path / "v")
    with pytest.raises(FileNotFoundError, match="not a saved scvae model"):
        scvae.model.load(tmp_path)
    model.save(tmp_path / "v", overwrite=True)
    with pytest.raises(InputError, match="could not be read onto map_location='nowhere'"):
        scvae.model.load(tmp_path / "v", map_location="nowhere")
    with pytest.raises(InputError, match="overwrite must be True or False, got 'no'"):
        model.save(tmp_path / "v", overwrite="no")  # a truthy string must not replace the saved model


def test_a_model_saved_in_format_1_loads_and_embeds_as_it_did(tmp_path):
    """tests/data/model_format1: a cVAE (batch label, 120 genes) saved by scvae 0.1.0 before the typed settings,
    with the cells it was trained on and their latent as it computed them."""
    data = Path(__file__).parent / "data"
    assert '"format_version": 1' in (data / "model_format1" / "scvae.json").read_text()
    model = scvae.model.load(data / "model_format1")
    cells = ad.read_h5ad(data / "model_format1_cells.h5ad")
    np.testing.assert_allclose(model.get_latent(cells), np.load(data / "model_format1_latent.npy"), rtol=0, atol=1e-6)
    assert model.spec.batch_key == "batch" and model.spec.categories == {"batch": ["b0", "b1"]}
    assert model.module.config.adversarial_weight == 3.0 and model.module.config.adversarial_indices == [0]
    assert model.settings.max_epochs == model.record.epochs_trained == 3 and model.settings.lr == 4e-3
    assert model.get_normalized_expression(cells, transform_batch="b1").shape == (240, 120)
    model.save(tmp_path / "resaved")  # and saved again, in today's format
    again = scvae.model.load(tmp_path / "resaved")
    assert again.spec == model.spec and again.module.config == model.module.config
    np.testing.assert_array_equal(again.get_latent(cells), model.get_latent(cells))


def test_same_seed_same_latent_and_callers_random_state_untouched(pbmc):
    torch.manual_seed(123)
    np.random.seed(7)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a, b, c = pbmc.copy(), pbmc.copy(), pbmc.copy()
    scvae.model.fit(a, max_epochs=8, seed=3, progress_bar=False)
    scvae.model.fit(b, max_epochs=8, seed=3, progress_bar=False)
    scvae.model.fit(c, max_epochs=8, seed=4, progress_bar=False)
    np.testing.assert_array_equal(a.obsm["X_scvae"], b.obsm["X_scvae"])
    assert not np.allclose(a.obsm["X_scvae"], c.obsm["X_scvae"])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))


def test_new_data_with_genes_in_another_order_gives_the_same_latent(pbmc_model):
    model, adata = pbmc_model
    rng = np.random.default_rng(0)
    shuffled = adata[:, rng.permutation(adata.n_vars)].copy()
    shuffled.X = sp.csc_matrix(shuffled.X)  # another sparse format too
    np.testing.assert_allclose(model.get_latent(shuffled), adata.obsm["X_scvae"], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="genes are missing from adata.var_names"):
        model.get_latent(adata[:, 5:].copy())


def test_outputs_normalized_expression_and_samples(pbmc_model):
    model, adata = pbmc_model
    expr = model.get_normalized_expression(adata, library_size=1e4)
    assert isinstance(expr, pd.DataFrame) and expr.shape == (700, 765)
    np.testing.assert_allclose(expr.sum(1), 1e4, rtol=1e-4)
    assert list(expr.columns) == list(adata.var_names)
    draws = model.sample(adata, n_samples=2, seed=0)
    assert draws.shape == (2, 700, 765) and (draws == np.round(draws)).all() and draws.min() >= 0
    again = model.sample(adata, n_samples=2, seed=0)
    np.testing.assert_array_equal(draws, again)
    # Posterior predictive gene means follow the data's gene means.
    real = np.asarray(adata.X.mean(0)).ravel()
    r = np.corrcoef(np.log1p(real), np.log1p(draws.mean((0, 1))))[0, 1]
    assert r > 0.95
    # ... and each cell's expression follows its own counts, through its latent code (a decoder that ignored z would
    # give every cell the same profile): correlation of log expression with the cell's own log-normalised counts
    # against another cell's; measured 0.66 against 0.44, own ahead for 97 % of the cells.
    x = adata.X.toarray()
    counts = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    profile = np.log1p(expr.to_numpy())

    def rowcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))

    own = rowcorr(profile, counts)
    other = rowcorr(profile, counts[np.random.default_rng(0).permutation(adata.n_obs)])
    assert own.mean() > other.mean() + 0.15 and (own > other).mean() > 0.9


def test_conditional_model_decodes_counterfactually_and_checks_categories():
    adata = scvae.datasets.cellbench()
    adata = adata[:, :800].copy()
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    model = scvae.model.fit(adata, batch_key="batch", dispersion="gene-batch", max_epochs=15, progress_bar=False)
    assert model.spec.categories["batch"] == sorted(adata.obs["batch"].unique())
    # a batch key brings the adversarial batch classifier and weight averaging by default; both are recorded
    assert model.module.config.adversarial_weight == 5.0 and model.module.adversarial_indices == (0,)
    assert adata.uns["scvae"]["adversarial_weight"] == 5.0
    assert model.settings.weight_averaging == adata.uns["scvae"]["weight_averaging"] == 0.25
    as_drop = model.get_normalized_expression(adata, transform_batch="Dropseq_3cl", return_numpy=True)
    own = model.get_normalized_expression(adata, return_numpy=True)
    drop = (adata.obs["batch"] == "Dropseq_3cl").to_numpy()
    np.testing.assert_allclose(as_drop[drop], own[drop], rtol=1e-5, atol=1e-8)
    assert not np.allclose(as_drop[~drop], own[~drop])
    as_dict = model.get_normalized_expression(adata, transform_batch={"batch": "Dropseq_3cl"}, return_numpy=True)
    np.testing.assert_array_equal(as_drop, as_dict)
    with pytest.raises(InputError, match="is not a category of 'batch'"):
        model.get_normalized_expression(adata, transform_batch="nowhere")
    new = adata[:20].copy()
    new.obs["batch"] = "unseen plate"
    with pytest.raises(InputError, match="never saw"):
        model.get_latent(new)


@pytest.mark.parametrize("likelihood", ["zinb", "poisson", "gaussian", "bernoulli"])
def test_other_likelihoods_fit_real_data(pbmc, likelihood):
    if likelihood == "gaussian":
        sc.pp.normalize_total(pbmc, target_sum=1e4)
        sc.pp.log1p(pbmc)
    model = scvae.model.fit(pbmc, likelihood=likelihood, max_epochs=30, progress_bar=False)
    acc = knn_accuracy(pbmc.obsm["X_scvae"], pbmc.obs["cell_type"])
    assert acc > 0.6, (likelihood, acc)
    assert np.isfinite(model.get_normalized_expression(pbmc, return_numpy=True)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_latent": 0}, "n_latent must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 2"),
        ({"batch_size": 1}, "batch_size must be an integer >= 2"),
        ({"key_added": None}, "key_added must be a non-empty string"),
        ({"batch_key": ["cell_type"]}, "batch_key must be the name of one obs column"),
        ({"early_stopping": "no"}, "early_stopping must be True or False"),
        ({"encode_covariates": "no"}, "encode_covariates must be True or False"),
        ({"progress_bar": "no"}, "progress_bar must be True or False"),
        ({"seed": -1}, "seed must be an integer in"),
        ({"seed": 2**64}, "seed must be an integer in"),
        ({"likelihood": "gamma"}, "likelihood must be one of"),
        ({"batch_key": "missing"}, "'missing' is not a column of adata.obs"),
        ({"layer": "counts"}, r"layer 'counts' is not in adata.layers .*fit reads X with layer=None"),
        ({"batch_key": "cell_type", "condition_key": "cell_type"}, "must be different columns"),
        ({"validation_size": 1.5}, "validation_size"),
        ({"dispersion": "gene-batch"}, "needs batch_key"),
        ({"data_on_device": "yes"}, "data_on_device must be True, False or None"),
        ({"data_on_device": 1}, "data_on_device must be True, False or None"),
        ({"devices": 0}, "devices must be a positive number of devices"),
        ({"accelerator": "quantum"}, "accelerator must be one of"),
        ({"strategy": "nonsense"}, "Lightning cannot run with .*strategy='nonsense'"),
        pytest.param(
            {"accelerator": "gpu"},
            "PyTorch sees no GPU here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible"),
        ),
        ({"adversarial_weight": 1.0}, "needs batch_key or condition_key"),
        ({"adversarial_weight": -1.0, "batch_key": "cell_type"}, "adversarial_weight must be a number >= 0"),
    ],
)
def test_bad_arguments_fail_before_training_with_a_clear_message(pbmc, kwargs, message):
    before = _snapshot(pbmc)
    with pytest.raises(InputError, match=message):
        scvae.model.fit(pbmc, **{"max_epochs": 1, "progress_bar": False, **kwargs})
    _assert_unchanged(before, pbmc)


def test_small_data_continuous_labels_and_integer_gene_names(pbmc):
    small = pbmc[:100].copy()  # fewer cells than the default batch size: one minibatch per epoch
    small.var_names = pd.Index(range(small.n_vars))  # integer gene names, as from a bare matrix
    model = scvae.model.fit(small, max_epochs=2, progress_bar=False)
    assert model.settings.batch_size == 90 and np.isfinite(small.obsm["X_scvae"]).all()
    np.testing.assert_array_equal(model.get_latent(small), small.obsm["X_scvae"])  # the names match
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        model.get_latent(small, batch_size=-1)
    with pytest.raises(InputError, match="library_size must be a number > 0"):
        model.get_normalized_expression(small, library_size=-1.0)
    with pytest.raises(InputError, match="seed must be an integer in"):
        model.get_latent(small, give_mean=False, seed="a")
    before = _snapshot(small)
    small.obs["depth"] = np.random.default_rng(0).normal(size=small.n_obs)
    with pytest.raises(InputError, match=r"obs\['depth'\] holds continuous numbers"):
        scvae.model.fit(small, batch_key="depth", max_epochs=1, progress_bar=False)
    small.obs["plate"] = pd.Series([1, "1"] * 50, index=small.obs_names, dtype=object)
    with pytest.raises(InputError, match=r"obs\['plate'\] holds values that differ but read the same"):
        scvae.model.fit(small, batch_key="plate", max_epochs=1, progress_bar=False)
    small.obs["depth"] = np.repeat([1.0, 2.0], 50)  # whole numbers stored as floats are categories
    model = scvae.model.fit(small, batch_key="depth", max_epochs=1, progress_bar=False, key_added="X_depth")
    assert set(small.obsm) == set(before["obsm"]) | {"X_depth"}
    assert model.labels.categories["depth"] == ["1", "2"]  # 1.0 reads as 1: the same label as an integer 1
    as_int = small.copy()
    as_int.obs["depth"] = pd.Categorical(np.repeat([1, 2], 50))
    np.testing.assert_array_equal(model.get_latent(as_int), small.obsm["X_depth"])
    model.labels.categories["depth"] = ["1.0", "2.0"]  # as a model saved before labels were written this way
    np.testing.assert_array_equal(model.get_latent(as_int), small.obsm["X_depth"])
    small.obs["plate"] = pd.Series([1.0, "1"] * 50, index=small.obs_names, dtype=object)
    with pytest.raises(InputError, match=r"obs\['plate'\] holds values that differ but read the same"):
        scvae.model.fit(small, batch_key="plate", max_epochs=1, progress_bar=False)


def test_normalised_data_view_and_nan_are_refused_without_changing_adata(pbmc):
    norm = pbmc.copy()
    sc.pp.normalize_total(norm)
    with pytest.raises(InputError, match="non-integer values.*likelihood='gaussian'"):
        scvae.model.fit(norm, max_epochs=1, progress_bar=False)
    with pytest.raises(InputError, match="view"):
        scvae.model.fit(pbmc[:100], max_epochs=1, progress_bar=False)
    bad = pbmc.copy()
    bad.X = bad.X.toarray()
    bad.X[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        scvae.model.fit(bad, max_epochs=1, progress_bar=False)
    assert "X_scvae" not in bad.obsm and "scvae" not in bad.uns


def test_divergence_is_reported_and_nan_never_written(pbmc):
    with pytest.raises(scvae.settings.TrainingDiverged, match="lr"):
        scvae.model.fit(pbmc, max_epochs=3, lr=1e12, progress_bar=False, norm="none", dropout=0.0)
    assert "X_scvae" not in pbmc.obsm
    # a blow-up that stays finite (ELBO near -1e17 per cell here) is refused too, against the no-latent model
    with pytest.raises(scvae.settings.TrainingDiverged, match="far below .* without a latent space"):
        scvae.model.fit(pbmc, max_epochs=3, lr=1e3, progress_bar=False)
    assert "X_scvae" not in pbmc.obsm and "scvae" not in pbmc.uns
    model = scvae.model.fit(pbmc, max_epochs=1, lr=1e-6, progress_bar=False)  # barely trained is not diverged
    baseline = scvae.train.no_latent_log_likelihood(pbmc.X.toarray(), "nb")
    assert baseline * 1.5 < model.history["elbo_validation"].iloc[0] < baseline * 0.9


def test_no_latent_log_likelihood_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, (40, 12)).astype(float)
    rate = x.sum(1, keepdims=True) * x.sum(0) / x.sum()
    want = stats.poisson.logpmf(x, rate).sum(1).mean()
    assert scvae.train.no_latent_log_likelihood(x, "poisson") == pytest.approx(want, rel=1e-10)
    g = rng.normal(1.0, 2.0, (40, 12))
    want = stats.norm.logpdf(g, g.mean(0), g.std(0)).sum(1).mean()
    assert scvae.train.no_latent_log_likelihood(g, "gaussian") == pytest.approx(want, rel=1e-10)
    b = (rng.random((40, 12)) < 0.3).astype(float)
    want = stats.bernoulli.logpmf(b, b.mean(0)).sum(1).mean()
    assert scvae.train.no_latent_log_likelihood(b, "bernoulli") == pytest.approx(want, rel=1e-10)


def test_genes_never_expressed_are_kept_without_nan(pbmc):
    x = pbmc.X.toarray()
    x[:, :5] = 0  # five genes with no counts in any cell
    pbmc.X = sp.csr_matrix(x)
    model = scvae.model.fit(pbmc, max_epochs=40, progress_bar=False)
    expr = model.get_normalized_expression(pbmc, return_numpy=True)
    assert np.isfinite(expr).all() and np.isfinite(pbmc.obsm["X_scvae"]).all()
    assert expr[:, :5].mean() < expr[:, 5:].mean() / 5  # learned as (nearly) never expressed


def _oddities(pbmc):
    """What a Scanpy user may hand over: duplicate cell names, labels as plain strings, integers or a categorical
    with unused categories, a batch of 3 cells, a cell type that only one batch has."""
    a = pbmc.copy()
    a.obs_names = ["cell"] * 350 + [f"c{i}" for i in range(350)]  # anndata warns; scanpy keeps working
    batch = np.where(np.arange(a.n_obs) % 2 == 0, "plate1", "plate2").astype(object)
    batch[:3] = "tiny"
    only = (a.obs["cell_type"] == a.obs["cell_type"].cat.categories[0]).to_numpy()
    batch[only & (np.arange(a.n_obs) >= 3)] = "plate1"  # that cell type is in plate1 only
    a.obs["batch_str"] = batch
    a.obs["batch_cat"] = pd.Categorical(batch, categories=["unused", "plate1", "plate2", "tiny"])
    a.obs["batch_int"] = pd.Series(batch).map({"plate1": 1, "plate2": 2, "tiny": 3}).to_numpy()
    return a


@pytest.mark.parametrize("key", ["batch_str", "batch_cat", "batch_int"])
def test_anndata_oddities_train_and_leave_adata_unchanged(pbmc, key):
    a = _oddities(pbmc)
    before = _snapshot(a)
    model = scvae.model.fit(a, batch_key=key, max_epochs=3, seed=0, progress_bar=False)
    _assert_unchanged(before, a, allowed_obsm={"X_scvae"}, allowed_uns={"scvae"})
    assert list(a.obs_names[:2]) == ["cell", "cell"]
    assert np.isfinite(a.obsm["X_scvae"]).all()
    names = ["1", "2", "3"] if key == "batch_int" else ["plate1", "plate2", "tiny"]
    assert model.spec.categories[key] == names  # only the categories present, in their order
    expr = model.get_normalized_expression(a, transform_batch=names[2])  # the 3-cell batch decodes every cell
    assert expr.shape == (a.n_obs, a.n_vars) and np.isfinite(expr.to_numpy()).all()
    np.testing.assert_array_equal(model.get_latent(a), a.obsm["X_scvae"])


def test_unknown_batch_and_duplicate_gene_names_fail_with_the_fix(pbmc):
    a = _oddities(pbmc)
    model = scvae.model.fit(a, batch_key="batch_str", max_epochs=2, seed=0, progress_bar=False)
    b = a.copy()
    b.obs["batch_str"] = "plate9"
    with pytest.raises(InputError, match=r"never saw: \['plate9'\].*Map them to known categories"):
        model.get_latent(b)
    c = a.copy()
    c.var_names = ["g"] * 2 + list(c.var_names[2:])
    before = _snapshot(c)
    with pytest.raises(InputError, match="var_names_make_unique"):
        scvae.model.fit(c, batch_key="batch_str", max_epochs=2, progress_bar=False)
    _assert_unchanged(before, c)


def test_default_training_runs_every_epoch_and_keeps_the_final_weights(pbmc):
    model = scvae.model.fit(pbmc, max_epochs=12, seed=0, progress_bar=False)
    assert model.settings.early_stopping is False
    assert model.record.epochs_trained == model.record.best_epoch == 12
    # the final weights: the training state of the last epoch, as saved, reproduces the latent written to adata
    np.testing.assert_array_equal(model.get_latent(pbmc), pbmc.obsm["X_scvae"])
    assert pbmc.uns["scvae"]["elbo_validation"] == pytest.approx(model.history["elbo_validation"].iloc[-1])


def test_early_stopping_keeps_the_weights_of_the_best_validation_elbo(pbmc):
    model = scvae.model.fit(
        pbmc, max_epochs=400, early_stopping=True, patience=3, kl_warmup_epochs=0, seed=0, progress_bar=False
    )
    h = model.history
    assert len(h) < 400  # it stopped
    best = int(h["elbo_validation"].to_numpy().argmax()) + 1
    assert model.record.best_epoch == best and len(h) == best + 3
    assert pbmc.uns["scvae"]["elbo_validation"] == pytest.approx(h["elbo_validation"].max())


@pytest.mark.slow
def test_adversarial_classifier_mixes_batches_further_on_real_data():
    """CellBench (five batches over two technologies): the default adversarial batch classifier mixes the
    batches within each cell line further than the same cVAE without it, for the same cell-line separation."""
    adata = scvae.datasets.cellbench()
    adata = adata[:, :1000].copy()
    adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()
    scores = {}
    for weight in (0.0, None):
        a = adata.copy()
        model = scvae.model.fit(a, batch_key="batch", adversarial_weight=weight, max_epochs=60, progress_bar=False)
        z = a.obsm["X_scvae"]
        scores[weight] = (
            scvae.metrics.batch_mixing(z, a.obs["batch"], labels=a.obs["cell_type"]),
            knn_accuracy(z, a.obs["cell_type"]),
        )
        assert model.module.config.adversarial_weight == (0.0 if weight == 0.0 else 5.0)
    # measured (both with fit's weight averaging): mixing 0.896 without, 0.937 with; 15-NN accuracy 0.980 and 0.984
    assert scores[None][0] > scores[0.0][0] + 0.02, scores
    assert scores[None][1] > scores[0.0][1] - 0.02, scores


def test_adversary_trains_with_iwae_and_a_condition_key(pbmc):
    a = pbmc.copy()
    a.obs["condition"] = np.where(np.arange(a.n_obs) % 2, "control", "stimulated")
    model = scvae.model.fit(
        a,
        batch_key="cell_type",
        condition_key="condition",
        objective="iwae",
        n_importance=3,
        max_epochs=3,
        progress_bar=False,
    )
    assert model.module.adversarial_indices == (0, 1) and len(model.module.label_classifiers) == 2
    assert np.isfinite(a.obsm["X_scvae"]).all()
