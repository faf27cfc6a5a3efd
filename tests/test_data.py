"""The data layer: matrix access, validation, label codes, gene alignment, splits."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvae.data import (
    CategoryEncoder,
    InputError,
    align_genes,
    category_order,
    get_matrix,
    label_text,
    label_texts,
    log_normalize,
    split_indices,
    validate_matrix,
)
from scvae.likelihoods import COUNT_LIKELIHOODS


def _adata(x, **obs):
    a = ad.AnnData(x)
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.var_names = [f"g{j}" for j in range(a.n_vars)]
    for k, v in obs.items():
        a.obs[k] = v
    return a


COUNTS = np.random.default_rng(0).poisson(2.0, (40, 7)).astype(np.float32) + np.eye(40, 7, dtype=np.float32)


@pytest.mark.parametrize(
    "convert",
    [
        np.asarray,
        sp.csr_matrix,
        sp.csc_matrix,
        lambda x: x.astype(np.int32),
        lambda x: sp.csr_matrix(x.astype(np.int64)),
    ],
)
def test_get_matrix_accepts_dense_sparse_and_integer_inputs(convert):
    x = get_matrix(_adata(convert(COUNTS)), None)
    assert sp.isspmatrix_csr(x) or isinstance(x, np.ndarray)
    dense = x.toarray() if sp.issparse(x) else x
    np.testing.assert_array_equal(dense, COUNTS)
    validate_matrix(x, "nb", counts=True)


def test_get_matrix_reads_a_layer_and_names_missing_ones():
    a = _adata(np.zeros((40, 7), np.float32))
    a.layers["counts"] = COUNTS
    np.testing.assert_array_equal(get_matrix(a, "counts"), COUNTS)
    with pytest.raises(InputError, match="layer 'raw' is not in adata.layers"):
        get_matrix(a, "raw")


@pytest.mark.parametrize(
    ("value", "likelihood", "message"),
    [
        (np.nan, "gaussian", "NaN or infinite"),
        (np.inf, "nb", "NaN or infinite"),
        (-1.0, "nb", "negative values"),
        (0.5, "zinb", "non-integer values"),
        (2.5, "poisson", "non-integer values"),
    ],
)
@pytest.mark.parametrize("fmt", [np.asarray, sp.csr_matrix])
def test_validation_refuses_bad_values_with_a_clear_message(value, likelihood, message, fmt):
    x = COUNTS.copy()
    x[3, 2] = value
    with pytest.raises(InputError, match=message):
        validate_matrix(get_matrix(_adata(fmt(x)), None), likelihood, counts=likelihood in COUNT_LIKELIHOODS)


def test_validation_accepts_continuous_data_for_gaussian_and_refuses_empty_cells_for_counts():
    x = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    validate_matrix(x, "gaussian", counts=False)
    empty = COUNTS.copy()
    empty[5] = 0
    with pytest.raises(InputError, match="1 cells have zero total counts.*filter_cells"):
        validate_matrix(empty, "nb", counts=True)


def test_empty_anndata_is_refused():
    with pytest.raises(InputError, match="empty"):
        get_matrix(ad.AnnData(np.zeros((0, 5), np.float32)), None)


@pytest.mark.parametrize("sparse", [True, False])
def test_backed_matrix_is_kept_on_disk_and_checked_block_by_block(tmp_path, monkeypatch, sparse):
    monkeypatch.setattr("scvae.data._BACKED_BLOCK", 16)  # three blocks for 40 cells
    counts = COUNTS.copy()
    counts[35, 2] = -1  # in the last block only
    a = _adata(sp.csr_matrix(counts) if sparse else counts)
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    x = get_matrix(backed, None)
    assert not isinstance(x, (np.ndarray, sp.spmatrix))  # not read into memory
    with pytest.raises(InputError, match="negative"):
        validate_matrix(x, "nb", counts=True)
    counts[35, 2] = 0
    counts[[3, 20, 30]] = 0  # empty cells in every block: counted over all blocks
    _adata(sp.csr_matrix(counts) if sparse else counts).write_h5ad(tmp_path / "b.h5ad")
    with pytest.raises(InputError, match="^3 cells have zero total counts"):
        validate_matrix(get_matrix(ad.read_h5ad(tmp_path / "b.h5ad", backed="r"), None), "nb", counts=True)
    counts[[3, 20, 30]] = COUNTS[[3, 20, 30]]
    counts[3] = 0  # a cell with no counts stays zero
    _adata(sp.csr_matrix(counts) if sparse else counts).write_h5ad(tmp_path / "c.h5ad")
    on_disk = log_normalize(ad.read_h5ad(tmp_path / "c.h5ad", backed="r"))  # block by block
    in_memory = log_normalize(_adata(sp.csr_matrix(counts) if sparse else counts))
    assert sp.issparse(on_disk) == sparse and on_disk.shape == counts.shape
    dense = on_disk.toarray() if sparse else on_disk
    np.testing.assert_array_equal(dense, in_memory.toarray() if sparse else in_memory)
    np.testing.assert_allclose(np.expm1(dense[1]).sum(), 1e4, rtol=1e-4)
    assert not dense[3].any()


def test_category_encoder_keeps_category_order_and_refuses_unseen_or_missing_labels():
    a = _adata(COUNTS, batch=pd.Categorical(["b"] * 20 + ["a"] * 20, categories=["b", "a"]), cond=["x", "y"] * 20)
    enc = CategoryEncoder.fit(a, ["batch", "cond"])
    assert enc.categories == {"batch": ["b", "a"], "cond": ["x", "y"]}
    codes = enc.encode(a)
    assert codes.shape == (40, 2) and codes[0, 0] == 0 and codes[-1, 0] == 1
    assert (enc.encode(a, {"cond": "y"})[:, 1] == 1).all()
    b = a.copy()
    b.obs["batch"] = ["c"] * 40
    with pytest.raises(InputError, match="never saw.*'c'"):
        enc.encode(b)
    # a categorical column is encoded by category: same codes, unused and reordered categories ignored
    b.obs["batch"] = pd.Categorical(a.obs["batch"].astype(str), categories=["unused", "a", "b"])
    np.testing.assert_array_equal(enc.encode(b), codes)
    b.obs["batch"] = pd.Categorical(["a"] * 39 + ["c"], categories=["a", "c", "unused"])
    with pytest.raises(InputError, match=r"never saw: \['c'\]"):
        enc.encode(b)
    with pytest.raises(InputError, match="'z' is not a category of 'cond'"):
        enc.encode(a, {"cond": "z"})
    with pytest.raises(InputError, match="'nope' is not a column of adata.obs"):
        CategoryEncoder.fit(a, ["nope"])
    b.obs["batch"] = [None] + ["a"] * 39
    with pytest.raises(InputError, match="missing values"):
        CategoryEncoder.fit(b, ["batch"])


def test_labels_read_the_same_whether_stored_as_integers_floats_or_text():
    assert label_texts([1.0, 2, "a", 1.5, np.float32(3), -0.0, True]) == ["1", "2", "a", "1.5", "3", "0", "True"]
    col = pd.Series([2.0, 1.0, np.nan, 2.0], index=list("wxyz"))
    assert label_text(col).tolist() == ["2", "1", "nan", "2"] and list(label_text(col).index) == list("wxyz")
    assert category_order(col) == ["1", "2"]  # sorted, missing values left out
    cat = pd.Series(pd.Categorical([3.0, 1.0], categories=[3.0, 1.0, 2.0]))
    assert category_order(cat) == ["3", "1", "2"] and category_order(cat, present_only=True) == ["3", "1"]


def test_labels_that_read_the_same_are_refused_and_dates_encode_as_they_were_fitted():
    """A categorical column with categories 1 and "1" would merge two labels into one; a column of dates is
    written as text one way when fitted and must be read the same way when encoded."""
    a = _adata(COUNTS, batch=pd.Categorical([1, "1"] * 20, categories=[1, "1"]))
    with pytest.raises(InputError, match=r"differ but read the same as text \(\[1, '1'\]\)"):
        CategoryEncoder.fit(a, ["batch"])
    a.obs["batch"] = pd.Categorical([1, "1"] * 20, categories=[1, "1", "unused"])[:40].remove_categories("1")
    assert CategoryEncoder.fit(a[a.obs["batch"].notna().to_numpy()], ["batch"]).categories == {"batch": ["1"]}
    a.obs["batch"] = pd.to_datetime(["2020-01-01", "2021-06-30"] * 20)
    enc = CategoryEncoder.fit(a, ["batch"])
    assert enc.categories == {"batch": ["2020-01-01 00:00:00", "2021-06-30 00:00:00"]}
    np.testing.assert_array_equal(enc.encode(a)[:, 0], [0, 1] * 20)


def test_align_genes_reorders_ignores_extras_and_names_missing_genes():
    a = _adata(COUNTS)
    assert align_genes(a, list(a.var_names)) is None
    order = ["g3", "g0", "g6"]
    np.testing.assert_array_equal(align_genes(a, order), [3, 0, 6])
    with pytest.raises(InputError, match="1 of the model's 2 genes are missing.*'gX'"):
        align_genes(a, ["g0", "gX"])


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(100, 0.1, seed=0)
    assert len(va) == 10 and len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 100
    tr2, va2 = split_indices(100, 0.1, seed=0)
    np.testing.assert_array_equal(va, va2)


def test_scoring_helpers_refuse_meaningless_arguments():
    from scvae.data import log_normalize
    from scvae.scoring import rank_de_genes

    a = ad.AnnData(np.ones((4, 3), dtype=np.float32), obs=pd.DataFrame({"g": ["x", "x", "y", "y"]}))
    with pytest.raises(InputError, match="target_sum must be a number > 0"):
        log_normalize(a, target_sum=0)
    with pytest.raises(InputError, match="group1 and group2 are the same group"):
        rank_de_genes(a, "g", "x", "x")
    with pytest.raises(InputError, match="n must be a positive integer"):
        rank_de_genes(a, "g", "x", "y", n=0)
