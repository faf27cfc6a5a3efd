"""Training from disk on collections of files and zarr stores (scvae.stores): the same model as from one backed
file, labels and genes matched across files, and a clear error for every bad collection."""

import hashlib
import logging
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import scvae
from scvae.data import InputError
from scvae.stacked import Stacked
from scvae.stores import open_files, open_zarr

# zarr's and anndata's notices about its coming defaults (v3, sharding, consolidated metadata) are not ours
ZARR_NOTICES = ("Writing zarr v2", "zarr v3 autosharding", "Consolidated metadata")
pytestmark = [pytest.mark.usefixtures("one_thread"), *(pytest.mark.filterwarnings(f"ignore:{m}") for m in ZARR_NOTICES)]
FIT = dict(max_epochs=4, seed=0, progress_bar=False)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(pbmc, tmp_path):
    """The PBMCs in three .h5ad files (one with its genes in reverse order, one with an extra gene), and the same
    cells in one file."""
    pbmc.obs["batch"] = pd.Categorical(np.where(np.arange(pbmc.n_obs) % 2, "b0", "b1"))
    parts = [pbmc[:250].copy(), pbmc[250:500, ::-1].copy(), pbmc[500:].copy()]
    extra = ad.AnnData(sp.csr_matrix(np.ones((parts[2].n_obs, 1), dtype=np.float32)), obs=parts[2].obs)
    extra.var_names = ["EXTRA"]
    parts[2] = ad.concat([parts[2], extra], axis=1, merge="first")
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"part{i}.h5ad")
        p.write_h5ad(paths[-1])
    pbmc.write_h5ad(tmp_path / "whole.h5ad")
    return paths, tmp_path / "whole.h5ad"


def test_a_collection_trains_the_same_model_as_one_backed_file(files, caplog):
    paths, whole_path = files
    before = [_digest(p) for p in paths]
    with caplog.at_level(logging.WARNING, logger="scvae"):
        collection = open_files(paths)
    assert collection.n_obs == 700 and collection.n_vars == 765  # EXTRA is not in every file
    assert "genes only some files have are left out: {'part2.h5ad': 1}" in caplog.text  # said, as a warning
    whole = ad.read_h5ad(whole_path, backed="r")
    with pytest.raises(InputError, match=r"adata = adata\[mask\].to_memory\(\)"):  # .copy() fails in backed mode
        scvae.model.fit(whole[:100], **FIT)
    m1 = scvae.model.fit(whole, batch_key="batch", **FIT)
    m2 = scvae.model.fit(collection, batch_key="batch", **FIT)
    assert m2.genes == list(collection.var_names)
    # the same cells read in the same blocks: the same minibatches, the same model, bit for bit
    np.testing.assert_array_equal(m2.get_latent(collection), m1.get_latent(whole))
    np.testing.assert_array_equal(m2.history["elbo_validation"], m1.history["elbo_validation"])
    assert collection.obsm is None and [_digest(p) for p in paths] == before  # nothing written anywhere
    expr = m2.get_normalized_expression(collection, return_numpy=True)
    np.testing.assert_allclose(expr, m1.get_normalized_expression(whole, return_numpy=True), rtol=1e-6)


def test_files_as_batches_and_a_collection_mapped_as_a_query(files):
    paths, _ = files
    model = scvae.model.fit(open_files(paths[:2]), batch_key="file", **FIT)
    assert model.spec.categories == {"file": ["part0", "part1"]}
    query = open_files(paths[2:], keys=["new_lab"])
    mapped = model.map_query(query, max_epochs=3, progress_bar=False)
    assert mapped.spec.categories["file"] == ["part0", "part1", "new_lab"]
    z = mapped.get_latent(query)
    assert z.shape == (200, 10) and np.isfinite(z).all()


def test_a_zarr_store_is_read_lazily_and_trains_as_the_h5ad(files, tmp_path):
    _, whole_path = files
    with ad.settings.override(zarr_write_format=3):
        ad.read_h5ad(whole_path).write_zarr(tmp_path / "whole.zarr")
    store = open_zarr(tmp_path / "whole.zarr")
    assert not isinstance(store.X, (np.ndarray, sp.spmatrix))  # still on disk
    m1 = scvae.model.fit(ad.read_h5ad(whole_path, backed="r"), **FIT)
    m2 = scvae.model.fit(store, **FIT)
    np.testing.assert_array_equal(store.obsm["X_scvae"], m1.get_latent(ad.read_h5ad(whole_path, backed="r")))
    assert m2.record.epochs_trained == 4


def test_stacked_rows_read_like_one_matrix():
    rng = np.random.default_rng(0)
    a, b = sp.random(7, 5, density=0.5, format="csr", random_state=1), sp.random(4, 6, density=0.5, format="csr")
    cols_b = np.array([5, 0, 1, 2, 3])
    x = Stacked([a, b], [None, cols_b], ["a", "b"])
    full = sp.vstack([a, b[:, cols_b]]).toarray()
    assert x.shape == (11, 5)
    np.testing.assert_array_equal(x[3:9].toarray(), full[3:9])
    rows = rng.permutation(11)[:6]
    np.testing.assert_array_equal(x[rows].toarray(), full[rows])  # any order, across both parts
    np.testing.assert_array_equal(x.select(np.array([4, 0]))[5:10].toarray(), full[5:10][:, [4, 0]])
    assert x[0:0].shape == (0, 5)


def test_bad_collections_fail_with_a_message_that_names_the_file(files, tmp_path):
    paths, _ = files
    with pytest.raises(FileNotFoundError, match="missing.h5ad does not exist"):
        open_files([paths[0], tmp_path / "missing.h5ad"])
    other = ad.AnnData(sp.csr_matrix(np.ones((5, 3), dtype=np.float32)))
    other.var_names = ["ENSG1", "ENSG2", "ENSG3"]
    other.write_h5ad(tmp_path / "ensembl.h5ad")
    with pytest.raises(InputError, match="share no gene names.*same gene identifiers"):
        open_files([paths[0], tmp_path / "ensembl.h5ad"])
    unlabelled = ad.read_h5ad(paths[2])
    del unlabelled.obs["batch"]
    unlabelled.write_h5ad(tmp_path / "unlabelled.h5ad")
    collection = open_files([paths[0], tmp_path / "unlabelled.h5ad"])
    with pytest.raises(InputError, match="'batch' is missing from .*unlabelled.h5ad"):
        scvae.model.fit(collection, batch_key="batch", **FIT)
    with pytest.raises(InputError, match="part0.h5ad has no layers\\['counts'\\]"):
        scvae.model.fit(open_files(paths[:2]), layer="counts", **FIT)
    ad.AnnData(obs=pd.DataFrame(index=["a", "b"])).write_zarr(tmp_path / "empty.zarr")
    with pytest.raises(InputError, match="holds no counts"):
        open_zarr(tmp_path / "empty.zarr")
    csc = ad.read_h5ad(paths[0])
    csc.X = sp.csc_matrix(csc.X)
    csc.write_zarr(tmp_path / "csc.zarr")
    with pytest.raises(InputError, match="stored as CSC"):
        open_zarr(tmp_path / "csc.zarr")
    normalised = ad.read_h5ad(paths[1])
    normalised.X = normalised.X / 2.0
    normalised.write_h5ad(tmp_path / "normalised.h5ad")
    with pytest.raises(InputError, match="normalised.h5ad: adata.X has non-integer values"):
        scvae.model.fit(open_files([paths[0], tmp_path / "normalised.h5ad"]), **FIT)
    with pytest.raises(InputError, match="the files' keys .* must differ.*give files with different names"):
        open_files([paths[0], paths[0]])


def test_the_command_line_trains_on_several_files(files, tmp_path, capsys):
    from scvae.cli import main

    paths, _ = files
    out = tmp_path / "out.h5ad"
    argv = ["fit", *map(str, paths), "-o", str(out), "--batch-key", "file", "-q"]
    assert main([*argv, "--max-epochs", "2"]) == 0
    result = ad.read_h5ad(out)
    assert result.n_obs == 700 and result.obsm["X_scvae"].shape == (700, 10) and result.X is None
    assert result.obs["file"].value_counts().to_dict() == {"part0": 250, "part1": 250, "part2": 200}
    capsys.readouterr()
    assert main([*argv[:2], str(tmp_path / "nope.h5ad"), "-o", str(tmp_path / "x.h5ad")]) == 2
    assert "nope.h5ad does not exist" in capsys.readouterr().err


def test_h5ad_files_are_read_without_a_chunk_cache(files):
    """Every block fills HDF5's chunk cache (8 MB per matrix under read_h5ad(backed="r")) and nothing empties it:
    with one per file it grew with the number of files. open_files opens them without one."""
    paths, _ = files
    backed = ad.read_h5ad(paths[0], backed="r")
    assert backed.X.group["data"].id.get_access_plist().get_chunk_cache()[1] > 0  # what anndata gives
    backed.file.close()
    collection = open_files(paths)
    for part in collection.adatas:
        data = part.X.group["data"]  # X is left on disk: anndata's sparse dataset over the file
        assert data.id.get_access_plist().get_chunk_cache()[1] == 0


def test_release_freed_memory_runs_here_and_is_safe_to_repeat():
    from scvae.loaders import _malloc_trim, release_freed_memory

    release_freed_memory()
    release_freed_memory()
    if sys.platform.startswith("linux"):  # glibc: the call is made, not skipped
        assert _malloc_trim() is not None
