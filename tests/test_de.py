"""Differential expression on the model: marker genes found, a null comparison stays quiet, batch effects are
corrected, scanpy's layout is written, bad arguments are refused."""

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import scvae
from scvae import tl
from scvae.data import InputError

pytestmark = pytest.mark.slow  # models trained on real data

MONO = "CD14+ Monocyte"


@pytest.fixture(scope="module")
def mono_de(pbmc_model):
    model, adata = pbmc_model
    return model.differential_expression(adata, groupby="cell_type", group1=MONO, n_samples=2000, seed=0)


def test_table_is_complete_sorted_and_coherent(mono_de, pbmc_model):
    model, _ = pbmc_model
    df = mono_de
    assert list(df.index.sort_values()) == sorted(model.genes)
    for col in (
        "lfc_mean",
        "lfc_ci_low",
        "lfc_ci_high",
        "proba_de",
        "bayes_factor",
        "is_de",
        "scale1",
        "scale2",
        "raw_mean1",
        "raw_mean2",
        "non_zeros_proportion1",
        "non_zeros_proportion2",
    ):
        assert col in df and df[col].notna().all(), col
    assert df["proba_de"].between(0, 1).all()
    assert np.allclose(df["proba_de"] + df["proba_not_de"], 1)
    assert (df["lfc_ci_low"] <= df["lfc_median"]).all() and (df["lfc_median"] <= df["lfc_ci_high"]).all()
    assert df["bayes_factor"].is_monotonic_decreasing
    assert (df["n_cells1"] == 129).all() and (df["n_cells2"] == 700 - 129).all()
    # Expression fractions agree with the data.
    assert df.loc["LYZ", "non_zeros_proportion1"] > df.loc["LYZ", "non_zeros_proportion2"]
    ax = scvae.pl.volcano(df, n_labels=5)
    assert len(ax.texts) == 5 and ax.texts[0].get_text() == df.index[0]
    with pytest.raises(InputError, match="n_labels must be a non-negative integer"):
        scvae.pl.volcano(df, n_labels=-3)
    with pytest.raises(InputError, match="de has no 'is_de' column"):
        scvae.pl.volcano(df.drop(columns="is_de"))
    with pytest.raises(InputError, match="model must be a trained scvae.model.SCVAE, got str"):
        tl.rank_genes_groups(pbmc_model[1].copy(), "model", "cell_type", groups=[MONO])


def test_monocyte_markers_found_and_agree_with_wilcoxon(mono_de, pbmc_model):
    _, adata = pbmc_model
    up = mono_de[mono_de["lfc_mean"] > 0]
    top = up.index[:50]
    for marker in ("FCN1", "LYZ", "CST3", "S100A9"):
        assert marker in set(up.index[:100]), marker
    tmp = adata.copy()
    tmp.X = tl.log_normalize(tmp)
    sc.tl.rank_genes_groups(tmp, "cell_type", groups=[MONO], method="wilcoxon")
    wilcoxon = sc.get.rank_genes_groups_df(tmp, group=MONO)["names"][:50]
    assert len(set(top) & set(wilcoxon)) >= 25  # measured 37 of 50
    assert mono_de["is_de"].sum() >= 40  # measured 89


def test_a_null_comparison_calls_few_genes(pbmc_model):
    model, adata = pbmc_model
    cells = adata[adata.obs["cell_type"] == "Dendritic"].copy()
    cells.obs["half"] = np.where(np.random.default_rng(0).random(cells.n_obs) < 0.5, "a", "b")
    df = model.differential_expression(cells, groupby="half", group1="a", group2="b", n_samples=2000)
    assert df["is_de"].sum() <= 0.01 * len(df)  # measured 0
    assert df["lfc_mean"].abs().median() < 0.1


def test_seeded_and_chunking_does_not_change_the_result(pbmc_model):
    model, adata = pbmc_model
    kw = dict(groupby="cell_type", group1="CD19+ B", group2=MONO, n_samples=500)
    a = model.differential_expression(adata, seed=3, **kw)
    b = model.differential_expression(adata, seed=3, gene_chunk=100, batch_size=37, **kw)
    c = model.differential_expression(adata, seed=4, **kw)
    pd.testing.assert_frame_equal(a, b.loc[a.index], check_exact=False, rtol=1e-5)
    assert not np.allclose(a["lfc_mean"], c.loc[a.index, "lfc_mean"])


def test_vanilla_mode(pbmc_model):
    model, adata = pbmc_model
    df = model.differential_expression(adata, groupby="cell_type", group1=MONO, mode="vanilla", n_samples=1000)
    assert df.loc["FCN1", "proba_de"] > 0.8 and df.loc["FCN1", "bayes_factor"] > 1
    assert df["is_de"].sum() > 0


def test_batch_correction_removes_a_confounded_batch_effect(pbmc):
    """Two random halves of the same cells; one half (batch 'b') has 20 genes scaled ×4 and is also the group
    compared. Without batch correction those genes look DE; decoding both groups in both batches cancels it."""
    rng = np.random.default_rng(0)
    batch = np.where(rng.random(pbmc.n_obs) < 0.5, "a", "b")
    x = pbmc.X.toarray()
    genes = np.argsort(-(x > 0).mean(0))[:20]  # 20 well-detected genes
    x[np.ix_(batch == "b", genes)] *= 4
    pbmc.X = sp.csr_matrix(x)
    pbmc.obs["batch"] = batch
    model = scvae.model.fit(pbmc, batch_key="batch", max_epochs=60, progress_bar=False, seed=0)
    kw = dict(groupby="batch", group1="b", group2="a", n_samples=2000)
    naive = model.differential_expression(pbmc, **kw)
    fixed = model.differential_expression(pbmc, batch_correction=True, **kw)
    shifted = pbmc.var_names[genes]
    assert naive.loc[shifted, "lfc_mean"].median() > 1.0  # log2(4) = 2 in the data
    assert abs(fixed.loc[shifted, "lfc_mean"].median()) < 0.3
    assert fixed["is_de"].sum() < naive["is_de"].sum()


def test_rank_genes_groups_writes_scanpys_layout(pbmc_model):
    model, fitted = pbmc_model
    adata = fitted.copy()
    before = set(adata.uns)
    tl.rank_genes_groups(adata, model, "cell_type", groups=[MONO, "CD19+ B"], n_samples=500, n_genes=30)
    assert set(adata.uns) - before == {"rank_genes_groups_scvae"}
    res = adata.uns["rank_genes_groups_scvae"]
    assert res["params"]["groupby"] == "cell_type" and res["names"].dtype.names == (MONO, "CD19+ B")
    df = sc.get.rank_genes_groups_df(adata, group=MONO, key="rank_genes_groups_scvae")
    assert len(df) == 30 and df["scores"].is_monotonic_decreasing
    assert {"FCN1", "LYZ"} & set(df["names"])
    assert df["pvals_adj"].between(0, 1).all()
    sc.pl.rank_genes_groups(adata, key="rank_genes_groups_scvae", n_genes=5, show=False)
    sc.pl.rank_genes_groups_dotplot(adata, key="rank_genes_groups_scvae", n_genes=3, show=False)
    two = fitted[fitted.obs["cell_type"].isin([MONO, "CD19+ B"]).to_numpy()].copy()
    two.obs["cell_type"] = two.obs["cell_type"].astype("category").cat.add_categories(["unused"])
    tl.rank_genes_groups(two, model, "cell_type", n_samples=50, n_genes=5)  # groups="all": the cells' own groups
    assert two.uns["rank_genes_groups_scvae"]["names"].dtype.names == tuple(sorted([MONO, "CD19+ B"]))
    with pytest.raises(InputError, match="n_genes must be a positive integer"):
        tl.rank_genes_groups(two, model, "cell_type", n_genes=-5)
    tl.rank_genes_groups(two, model, "cell_type", n_samples=50, n_genes=5)  # its own earlier result: replaced
    two.uns["pca"] = {"variance_ratio": np.ones(3)}
    with pytest.raises(InputError, match=r"adata.uns\['pca'\] holds something else"):
        tl.rank_genes_groups(two, model, "cell_type", n_samples=50, key_added="pca")
    with pytest.raises(InputError, match="is a view"):
        tl.rank_genes_groups(two[:100], model, "cell_type", n_samples=50)
    assert list(two.uns["pca"]) == ["variance_ratio"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(groupby="nope", group1="x"), "not a column"),
        (dict(groupby="cell_type", group1="T cells"), "not a category"),
        (dict(groupby="cell_type", group1=MONO, group2=MONO), "share"),
        (dict(groupby="cell_type", group1=MONO, mode="bayes"), "mode must be"),
        (dict(groupby="cell_type", group1=MONO, n_samples=0), "n_samples"),
        (dict(groupby="cell_type", group1=MONO, batch_correction=True), "batch_key"),
        (dict(groupby="cell_type", group1=MONO, delta="0.5"), "delta must be a number"),
        (dict(groupby="cell_type", group1=MONO, fdr=1.0), r"fdr must be a number in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_refused(pbmc_model, kwargs, message):
    model, adata = pbmc_model
    with pytest.raises(InputError, match=message):
        model.differential_expression(adata, **kwargs)
