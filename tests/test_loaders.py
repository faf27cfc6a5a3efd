"""Minibatch loaders: tensor slicing equals scipy's, every cell once per epoch, seeded orders, DDP shards,
and backed (on-disk) data read block by block."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scvae.loaders import (
    BackedRows,
    Minibatches,
    TensorRows,
    batch_bounds,
    csr_rows,
    has_duplicates,
    make_loader,
    make_loaders,
    to_dense_float,
)


def _counts(n=300, g=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.negative_binomial(1, 0.7, size=(n, g)).astype(np.float32)
    x[5] = 0  # an empty row
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32, np.uint16])
def test_tensor_rows_equal_scipy_slicing_for_any_count_dtype(dtype):
    x = _counts().astype(dtype)
    rows = torch.tensor([7, 5, 0, 299, 7, 42])  # unsorted, repeated, an empty row
    for source in (TensorRows(sp.csr_matrix(x)), TensorRows(x), TensorRows(sp.csc_matrix(x))):
        got, nonzero = source.cut(rows)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), x[rows.numpy()].astype(np.float32))
        if nonzero is not None:  # sparse sources also give the non-zero entries' indices, in row-major order
            np.testing.assert_array_equal(nonzero.numpy(), np.stack(np.nonzero(got.numpy())))


def test_tensor_rows_keep_the_anndata_matrix_and_sum_duplicate_entries():
    x = sp.csr_matrix(_counts())
    assert TensorRows(x).host is x  # no copy on the CPU
    dup = sp.csr_matrix((np.array([1.0, 2.0, 5.0]), np.array([3, 3, 0]), np.array([0, 2, 3])), shape=(2, 4))
    assert not dup.has_canonical_format
    got, nonzero = TensorRows(dup).cut(torch.tensor([0, 1]))
    np.testing.assert_array_equal(got.numpy(), dup.toarray())
    np.testing.assert_array_equal(nonzero.numpy(), [[0, 1], [3, 0]])  # (0, 3) once, its values summed
    assert dup.nnz == 3  # the user's matrix is not canonicalised in place


def test_unsorted_column_indices_are_not_taken_for_duplicates():
    """Subsetting genes often leaves a CSR matrix with column indices out of order within rows: no duplicates, so
    minibatches are cut without sorting them, and their non-zero indices are still exact."""
    x = sp.csr_matrix(_counts())
    indices, data = x.indices.copy(), x.data.copy()
    for r in range(x.shape[0]):  # every row's entries in reverse column order
        a, b = x.indptr[r], x.indptr[r + 1]
        indices[a:b], data[a:b] = indices[a:b][::-1], data[a:b][::-1]
    unsorted = sp.csr_matrix((data, indices, x.indptr.copy()), shape=x.shape)
    assert not unsorted.has_canonical_format and not has_duplicates(unsorted, chunk=64)
    dup = sp.csr_matrix((np.array([1.0, 2.0, 5.0]), np.array([3, 3, 0]), np.array([0, 2, 3])), shape=(2, 4))
    assert has_duplicates(dup) and not has_duplicates(x)
    source = TensorRows(unsorted)
    assert not source.duplicates
    rows = torch.tensor([7, 5, 0, 299, 42])
    got, nonzero = source.cut(rows)
    np.testing.assert_array_equal(got.numpy(), x[rows.numpy()].toarray())
    flat = np.sort(nonzero[0].numpy() * x.shape[1] + nonzero[1].numpy())
    np.testing.assert_array_equal(flat, np.flatnonzero(got.numpy()))


def test_training_and_validation_loaders_share_one_source():
    x, codes = _identity_data(300)
    train, val = make_loaders(sp.csr_matrix(x), codes, np.arange(0, 300, 2), np.arange(1, 300, 2), 64, seed=1)
    assert train.source is val.source and train.shuffle and not val.shuffle and val.batch_size == 1024
    np.testing.assert_array_equal(np.sort(_cells_seen(train)), np.arange(0, 300, 2))
    np.testing.assert_array_equal(_cells_seen(val), np.arange(1, 300, 2))
    assert make_loaders(sp.csr_matrix(x), codes, np.arange(300), np.arange(0), 64)[1] is None


def test_csr_gather_used_on_the_gpu_equals_scipy_slicing():
    x = sp.csr_matrix(_counts().astype(np.int32))
    rows = torch.tensor([7, 5, 0, 299, 7, 42])
    parts = [torch.from_numpy(a.astype(np.int64)) for a in (x.indptr, x.indices)] + [torch.from_numpy(x.data)]
    for unique in (True, False):
        got, nonzero = csr_rows(*parts, rows, 50, unique)
        np.testing.assert_array_equal(got.numpy(), x[rows.numpy()].toarray())
        np.testing.assert_array_equal(nonzero.numpy(), np.stack(np.nonzero(got.numpy())))
    dup = sp.csr_matrix((np.array([1.0, 2.0, 5.0]), np.array([3, 3, 0]), np.array([0, 2, 3])), shape=(2, 4))
    parts = [torch.from_numpy(a) for a in (dup.indptr.astype(np.int64), dup.indices, dup.data)]
    got, nonzero = csr_rows(*parts, torch.tensor([1, 0, 1]), 4)
    np.testing.assert_array_equal(got.numpy(), dup.toarray()[[1, 0, 1]])
    np.testing.assert_array_equal(nonzero.numpy(), [[0, 1, 2], [0, 3, 0]])  # duplicates once
    empty, none = csr_rows(*parts, torch.tensor([], dtype=torch.int64), 4)
    assert empty.shape == (0, 4) and none.shape == (2, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tensor_rows_on_the_gpu_equal_scipy_slicing():
    x = _counts()
    dup = sp.csr_matrix((np.array([1.0, 2.0, 5.0]), np.array([3, 3, 0]), np.array([0, 2, 3])), shape=(2, 4))
    rows = torch.tensor([7, 5, 0, 299, 7, 42])
    for m, r in ((sp.csr_matrix(x), rows), (x, rows), (dup, torch.tensor([1, 0]))):
        source = TensorRows(m)
        assert source.to("cuda") is source.to("cuda")  # copied to the GPU once, shared by every loader
        got, nonzero = source.to("cuda").cut(r.cuda())
        want, want_nonzero = TensorRows(m).cut(r)
        assert got.device.type == "cuda"
        np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())
        if want_nonzero is not None:
            np.testing.assert_array_equal(nonzero.cpu().numpy(), want_nonzero.numpy())


def _cells_seen(loader):
    """The cell index behind every row of every minibatch (column 0 of x encodes it), checked against the codes."""
    seen = []
    for x, codes, nonzero in loader:
        if nonzero is not None:  # the indices of x's non-zero entries come with every minibatch
            np.testing.assert_array_equal(nonzero.numpy(), np.stack(np.nonzero(x.numpy())))
        cell = x[:, 0].long()
        assert torch.equal(cell, codes[:, 0])  # each row comes with its own cell's labels
        seen.append(cell)
    return torch.cat(seen).numpy()


def _identity_data(n=1000):
    x = _counts(n, 20)
    x[:, 0] = np.arange(n)  # column 0: the cell's own index
    codes = np.stack([np.arange(n), np.arange(n) % 3], axis=1)
    return x, codes


def test_minibatches_visit_every_cell_once_per_epoch_in_a_new_seeded_order():
    x, codes = _identity_data(257)
    idx = np.arange(257)
    loader = make_loader(sp.csr_matrix(x), codes, idx, 128, shuffle=True, seed=3)
    assert len(loader) == 2  # 128 + 129: the lone last cell joins the previous batch
    first, second = _cells_seen(loader), _cells_seen(loader)
    np.testing.assert_array_equal(np.sort(first), idx)
    np.testing.assert_array_equal(np.sort(second), idx)
    assert not np.array_equal(first, second)
    again = make_loader(sp.csr_matrix(x), codes, idx, 128, shuffle=True, seed=3)
    np.testing.assert_array_equal(_cells_seen(again), first)
    in_order = make_loader(x, codes, idx[::2], 50, shuffle=False)
    np.testing.assert_array_equal(_cells_seen(in_order), idx[::2])
    assert batch_bounds(10, 4) == [0, 4, 10] and batch_bounds(9, 4) == [0, 4, 9] and batch_bounds(2, 4) == [0, 2]


@pytest.mark.parametrize("n_batches_per_rank, world", [(4, 2), (3, 3)])
def test_ddp_ranks_take_disjoint_shares_with_the_same_number_of_steps(monkeypatch, n_batches_per_rank, world):
    x, codes = _identity_data(1000)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    seen, steps = [], []
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        loader = make_loader(sp.csr_matrix(x), codes, np.arange(1000), 100, shuffle=True, seed=0)
        steps.append(len(loader))
        seen.append(_cells_seen(loader))
    assert len(set(steps)) == 1 and steps[0] == -(-10 // world)
    union = np.concatenate(seen)
    np.testing.assert_array_equal(np.unique(union), np.arange(1000))  # every cell, on some rank
    if 10 % world == 0:
        assert len(union) == 1000  # disjoint shares
    else:
        assert len(union) == steps[0] * world * 100  # the last rank wraps round to the epoch's first batches


@pytest.fixture
def backed_file(tmp_path):
    x, codes = _identity_data(1000)
    a = ad.AnnData(sp.csr_matrix(x))
    a.write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    yield x, codes, backed
    backed.file.close()


def test_backed_minibatches_read_blocks_once_per_epoch_and_cover_every_cell(backed_file, monkeypatch):
    x, codes, backed = backed_file
    reads = []
    real_read = BackedRows.read
    monkeypatch.setattr(
        BackedRows, "read", lambda self, rows: reads.append(rows.stop - rows.start) or real_read(self, rows)
    )
    train = np.sort(np.random.default_rng(0).choice(1000, 900, replace=False))
    loader = Minibatches(BackedRows(backed.X, block_size=128), codes, train, 64, shuffle=True, seed=1)
    first = _cells_seen(loader)
    np.testing.assert_array_equal(np.sort(first), train)
    assert len(reads) == 8 and max(reads) < 160  # 900 cells in 8 blocks of ≤ 128 training cells, each read once
    second = _cells_seen(loader)
    assert not np.array_equal(first, second)
    assert (np.diff(first[:128]) < 0).sum() > 30  # cells shuffled within a window of blocks
    first_blocks = {np.searchsorted(train, _cells_seen(loader)[0]) // 128 for _ in range(6)}
    assert len(first_blocks) > 2  # blocks visited in a new order each epoch
    np.testing.assert_array_equal(_cells_seen(make_loader(backed.X, codes, train, 64, shuffle=False)), train)


@pytest.mark.slow
def test_fit_trains_from_a_backed_h5ad_like_from_memory(tmp_path, pbmc_model, _pbmc):
    import scvae
    from scvae.metrics import knn_accuracy

    ref_model, mem = pbmc_model
    _pbmc.write_h5ad(tmp_path / "p.h5ad")
    backed = ad.read_h5ad(tmp_path / "p.h5ad", backed="r")
    model = scvae.model.fit(backed, max_epochs=60, progress_bar=False, seed=0)
    acc_mem = knn_accuracy(mem.obsm["X_scvae"], mem.obs["cell_type"])
    acc_backed = knn_accuracy(backed.obsm["X_scvae"], backed.obs["cell_type"])
    assert acc_backed > 0.75 and abs(acc_backed - acc_mem) < 0.04, (acc_backed, acc_mem)
    gap = model.history["elbo_validation"].max() - ref_model.history["elbo_validation"].max()
    assert abs(gap) < 10, gap
    assert backed.isbacked and "X_scvae" not in _pbmc.obsm  # still on disk
    np.testing.assert_allclose(model.get_latent(backed), backed.obsm["X_scvae"], atol=1e-5)
    backed.file.close()


def test_rows_of_an_on_disk_matrix_in_any_order_equal_the_in_memory_rows(tmp_path):
    x = _counts()
    rows = np.array([7, 5, 0, 299, 7, 42])  # unsorted, with a repeat: read once each, in increasing order
    for name, m in (("csr", sp.csr_matrix(x)), ("dense", x)):
        ad.AnnData(m).write_h5ad(tmp_path / f"{name}.h5ad")
        backed = ad.read_h5ad(tmp_path / f"{name}.h5ad", backed="r")
        np.testing.assert_array_equal(to_dense_float(backed.X, rows), x[rows])
        backed.file.close()
