"""Minibatches for training and inference, cut in bulk and never cell by cell.

- :class:`TensorRows` cuts minibatches from the count matrix: on the CPU from the AnnData's own matrix (no
  copy); on a GPU the matrix is copied there once (sparse) and every minibatch is cut there, with no host→device
  copy per step.
- :class:`BackedRows` reads a backed (on-disk) ``.h5ad`` matrix in blocks of contiguous rows, so that training
  never loads ``X`` whole; minibatches are shuffled within a window of a few blocks.
- :class:`Minibatches` is the iterable Lightning trains on: a seeded new order every epoch, and under DDP each
  rank takes its own contiguous share of the epoch's minibatches (all ranks the same number of steps).

Every minibatch is a :class:`Minibatch`: the dense float32 counts, the label codes, and the row and column
indices of ``x``'s non-zero entries (2 × entries), taken from the sparse matrix at almost no cost (the likelihood
evaluates its count terms there only; a dense scan for them would cost as much as a layer of the network).
``nonzero`` is None for a dense matrix.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

logger = logging.getLogger(__name__)


class Minibatch(NamedTuple):
    """What the VAE reads of a group of cells: the data ``x`` (cells × genes, dense float32), the label codes
    ``codes`` (cells × labels, int64; None without labels) and, when known, ``nonzero``: the row and column indices
    of ``x``'s non-zero entries (2 × entries; explicit zeros may be among them, duplicates may not)."""

    x: torch.Tensor
    codes: torch.Tensor | None = None
    nonzero: torch.Tensor | None = None


# dtypes torch can hold without conversion; others (e.g. uint16 counts) are converted to float32
_TORCH_DTYPES = {np.dtype(t) for t in ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8")}


def is_backed_matrix(x: Any) -> bool:
    """True for an on-disk matrix of a backed AnnData (an h5py dataset or anndata's sparse dataset)."""
    return (
        not isinstance(x, (np.ndarray, sp.spmatrix, sp.sparray)) and hasattr(x, "shape") and hasattr(x, "__getitem__")
    )


def _as_torch(a: np.ndarray) -> torch.Tensor:
    a = np.ascontiguousarray(a)
    if a.dtype not in _TORCH_DTYPES:
        a = a.astype(np.float32)
    with warnings.catch_warnings():  # read-only arrays are shared as they are: nothing here writes to them
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(a)


def to_dense_float(x: Any, rows: np.ndarray | slice) -> np.ndarray:
    """Rows of ``x`` (in memory, or on disk) as a dense float32 array (one bulk slice)."""
    inverse = None
    if is_backed_matrix(x) and not isinstance(rows, slice):  # on-disk reads need increasing, unique rows
        rows, inverse = np.unique(np.asarray(rows), return_inverse=True)
    block = x[rows]
    block = (block.toarray() if sp.issparse(block) else np.asarray(block)).astype(np.float32, copy=False)
    return block if inverse is None else block[inverse]


def has_duplicates(x: sp.csr_matrix, chunk: int = 16384) -> bool:
    """Whether a row of the CSR matrix ``x`` stores a column twice (checked once, ``chunk`` rows at a time: no copy
    of the whole matrix). Column indices out of order within a row, common after subsetting genes, are not
    duplicates and need no sorting here."""
    if x.has_canonical_format:
        return False
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]  # a copy (scipy copies row slices)
        stored = block.nnz
        block.sum_duplicates()
        if block.nnz != stored:
            return True
    return False


def cut_rows(
    x: np.ndarray | sp.csr_matrix, rows: np.ndarray, duplicates: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows of an in-memory matrix as a dense float32 tensor and, for a CSR matrix, the row and column indices of
    its stored entries (2 × entries; explicit zeros may be among them: the likelihood gives them their value, 0).
    ``duplicates``: the matrix may store an entry twice (see :func:`has_duplicates`); they are summed first."""
    if not sp.issparse(x):
        return torch.from_numpy(to_dense_float(x, rows)), None
    block = x[rows]
    if duplicates and not block.has_canonical_format:
        block.sum_duplicates()
    dense = block.toarray().astype(np.float32, copy=False)
    nonzero = np.empty((2, block.nnz), dtype=np.int64)
    nonzero[0] = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr))
    nonzero[1] = block.indices
    return torch.from_numpy(dense), torch.from_numpy(nonzero)


class TensorRows:
    """A cells × genes matrix from which minibatches are cut; ``cut(idx)`` gives the dense float32 minibatch.

    On the CPU it keeps the AnnData's own matrix (CSR or dense; no copy) and cuts with scipy/numpy, the fastest
    way there. :meth:`to` a GPU copies it there once as torch tensors (the CSR arrays, or the dense array), and
    minibatches are cut there: a gather of the rows' non-zeros and one scatter. Duplicate entries of a
    non-canonical CSR matrix are summed, as scipy does."""

    def __init__(self, x: np.ndarray | sp.spmatrix | sp.sparray, duplicates: bool | None = None) -> None:
        if sp.issparse(x):
            x = x if x.format == "csr" else sp.csr_matrix(x)
            self.duplicates = has_duplicates(x) if duplicates is None else duplicates
        else:
            x = np.asarray(x)
            self.duplicates = False
        self.host: np.ndarray | sp.csr_matrix | None = x
        self.shape = tuple(x.shape)
        self.indptr = self.indices = self.values = self.dense = None  # torch tensors, once on a device
        self.device = torch.device("cpu")
        self._copies: dict[torch.device, TensorRows] = {}  # one copy per device, shared by every loader

    @property
    def nbytes(self) -> int:
        """Bytes this matrix takes on a GPU (values as float32, column indices as int32)."""
        if sp.issparse(self.host):
            return 8 * self.host.nnz + 8 * (self.shape[0] + 1)
        return 4 * self.shape[0] * self.shape[1]

    def to(self, device: torch.device | str) -> TensorRows:
        """A copy on ``device`` (values as float32 and column indices as int32, compact on a GPU), made once and
        shared by every loader of this matrix; itself if it is already there."""
        device = torch.device(device)
        if device == self.device:
            return self
        if device in self._copies:
            return self._copies[device]
        new = TensorRows(self.host, self.duplicates)
        if device.type == "cpu":
            return new
        new.device = device
        if sp.issparse(self.host):
            new.indptr = torch.from_numpy(self.host.indptr.astype(np.int64)).to(device)
            new.indices = _as_torch(self.host.indices).to(device, torch.int32)
            new.values = _as_torch(self.host.data).to(device, torch.float32)
        else:
            new.dense = _as_torch(self.host).to(device, torch.float32)
        self._copies[device] = new
        return new

    def on(self, device: torch.device) -> bool:
        """Whether a copy of this matrix is already on ``device``."""
        return device == self.device or device in self._copies

    def cut(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Dense float32 rows ``idx`` (a 1-D int64 tensor on this matrix's device), in that order, and, for a
        sparse matrix, the row and column indices of their non-zero entries (see :func:`cut_rows`)."""
        if self.device.type == "cpu":
            return cut_rows(self.host, idx.numpy(), self.duplicates)
        if self.dense is not None:
            return self.dense.index_select(0, idx), None
        return csr_rows(self.indptr, self.indices, self.values, idx, self.shape[1], not self.duplicates)


def csr_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    idx: torch.Tensor,
    n_cols: int,
    unique: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of the CSR matrix (``indptr``, ``indices``, ``values``: torch tensors on any device) as a dense
    float32 tensor on that device, a gather of the rows' non-zeros and one scatter (duplicates summed), and the
    row and column indices of the stored entries (2 × entries, each once; ``unique``: the matrix is known to store
    no entry twice)."""
    start = indptr.index_select(0, idx)
    count = indptr.index_select(0, idx + 1) - start
    out = torch.zeros(len(idx), n_cols, dtype=torch.float32, device=idx.device)
    total = int(count.sum())  # the one host sync: the size of the gather
    if total == 0:
        return out, torch.zeros(2, 0, dtype=torch.int64, device=idx.device)
    row = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), count, output_size=total)
    first = torch.cumsum(count, 0) - count  # where each row's entries start in the gathered arrays
    pos = torch.arange(total, device=idx.device) - first.index_select(0, row) + start.index_select(0, row)
    cols = indices.index_select(0, pos).long()
    out.index_put_((row, cols), values.index_select(0, pos).float(), accumulate=not unique)
    if unique:
        return out, torch.stack([row, cols])
    flat = torch.unique(row * n_cols + cols)  # sorted and without duplicates
    return out, torch.stack([flat // n_cols, flat % n_cols])


BLOCK_ROWS = 8192  # contiguous rows read at a time from disk
PREFETCH_BLOCKS = 2  # blocks read ahead by the loader's worker thread


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to release
        return None


TRIM_INTERVAL_S = 2.0  # release_freed_memory trims at most this often: each trim stalls allocation briefly
_last_trim = [float("-inf")]


def release_freed_memory() -> None:
    """Give the heap memory freed since the last trim back to the operating system (glibc's ``malloc_trim``; a
    no-op elsewhere), called before a block is read from disk, at most once every :data:`TRIM_INTERVAL_S`.

    Each block read from disk allocates and frees arrays of several MB. Once glibc has raised its mmap threshold
    it serves them from the heap and keeps the freed pages, so without a trim resident memory grows with every
    block read. A trim locks the allocator while the model trains, so it runs at most every few seconds (peak
    memory and the cost of trimming more often: ``benchmarks/results/scale.md``)."""
    trim = _malloc_trim()
    now = time.monotonic()
    if trim is not None and now - _last_trim[0] >= TRIM_INTERVAL_S:
        _last_trim[0] = now
        trim(0)


class BackedRows:
    """The matrix of a backed AnnData (or a collection of files, :class:`~scvae.stacked.Stacked`), read
    ``block_size`` contiguous rows at a time (one read per block; default :data:`BLOCK_ROWS`)."""

    def __init__(self, x: Any, block_size: int | None = None) -> None:
        self.x, self.shape, self.block_size = x, tuple(x.shape), int(block_size or BLOCK_ROWS)

    def read(self, rows: slice | np.ndarray) -> TensorRows:
        """Rows ``rows``: a slice, in one contiguous read, or increasing row indices, those rows only (for cells
        spread thinly over the matrix, such as the validation cells, where a contiguous read would take in every
        row between them)."""
        release_freed_memory()
        block = self.x[rows]
        return TensorRows(block if sp.issparse(block) else np.asarray(block))


def _shard(n_batches: int) -> tuple[int, int]:
    """(first, last) minibatch of this rank: a contiguous share, the same count on every rank (the last ranks
    wrap around to the epoch's first minibatches when the count does not divide)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0, n_batches
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    per = math.ceil(n_batches / world)
    return rank * per, (rank + 1) * per


def batch_bounds(n: int, batch_size: int) -> list[int]:
    """Start of every minibatch and the end; a last batch of fewer than 3 cells joins the one before (batch norm
    needs more than one cell)."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 3:
        del bounds[-2]
    return bounds


class Minibatches:
    """Iterable of ``(x, codes, nonzero)`` minibatches of the cells ``indices``, for Lightning and for inference.

    With ``shuffle`` a new seeded order every epoch (its own generator: no global random state). A
    :class:`TensorRows` source cuts every minibatch on its device (call :meth:`to` to move the data there
    once); a :class:`BackedRows` source reads contiguous blocks from disk, visits the blocks in a shuffled order and
    shuffles the cells within each pair of consecutive blocks."""

    def __init__(
        self,
        source: TensorRows | BackedRows,
        codes: np.ndarray,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
    ) -> None:
        self.source = source
        self.codes = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
        self.indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.batch_size, self.shuffle = int(batch_size), shuffle
        self.generator = torch.Generator().manual_seed(int(seed))

    def to(self, device: torch.device | str) -> Minibatches:
        """Move the matrix (a :class:`TensorRows` source), codes and indices to ``device``, in place."""
        if isinstance(self.source, TensorRows):
            self.source = self.source.to(device)
        self.codes, self.indices = self.codes.to(device), self.indices.to(device)
        return self

    def __len__(self) -> int:
        first, last = _shard(len(batch_bounds(len(self.indices), self.batch_size)) - 1)
        return last - first

    def __iter__(self) -> Iterator[Minibatch]:
        if isinstance(self.source, BackedRows):
            yield from self._iter_backed()
            return
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator).to(order.device)]
        for idx in self._my_batches(order):
            idx = torch.sort(idx).values  # sorted rows: faster to cut, and the same minibatch
            x, nonzero = self.source.cut(idx)
            yield Minibatch(x, self.codes.index_select(0, idx), nonzero)

    def _my_batches(self, order: torch.Tensor) -> Iterator[torch.Tensor]:
        bounds = batch_bounds(len(order), self.batch_size)
        n = len(bounds) - 1
        first, last = _shard(n)
        for b in range(first, last):
            b %= n
            yield order[bounds[b] : bounds[b + 1]]

    def _iter_backed(self) -> Iterator[Minibatch]:
        cells = self.indices.cpu()  # sorted cell indices, cut into blocks of consecutive cells
        size = self.source.block_size
        n_blocks = math.ceil(len(cells) / size)
        order = torch.arange(len(cells))
        if self.shuffle:  # blocks in a random order, cells shuffled within each pair of consecutive blocks
            blocks = torch.randperm(n_blocks, generator=self.generator)
            order = torch.cat([torch.arange(b * size, min((b + 1) * size, len(cells))) for b in blocks.tolist()])
            for a in range(0, len(order), 2 * size):
                window = order[a : a + 2 * size]
                order[a : a + 2 * size] = window[torch.randperm(len(window), generator=self.generator)]
        batches = list(self._my_batches(order))
        # The blocks in the order they are read: a block is kept while consecutive minibatches need it.
        reads, held = [], set()
        for pos in batches:
            needed = set((pos // size).tolist())
            held &= needed
            reads += sorted(needed - held)
            held |= needed

        def read(b: int) -> tuple[TensorRows, torch.Tensor]:  # a block's rows, and its cells' positions in them
            members = cells[b * size : (b + 1) * size]
            lo, hi = int(members[0]), int(members[-1]) + 1
            if hi - lo > 4 * len(members):  # thinly spread (the validation cells): read only those rows
                return self.source.read(members.numpy()), torch.arange(len(members))
            return self.source.read(slice(lo, hi)), members - lo

        # One worker reads the next blocks while the model trains on this one (torch releases the GIL in its kernels).
        with ThreadPoolExecutor(max_workers=1) as worker:
            ahead = deque(worker.submit(read, b) for b in reads[:PREFETCH_BLOCKS])
            upcoming = iter(reads[PREFETCH_BLOCKS:])
            loaded: dict[int, tuple[TensorRows, torch.Tensor]] = {}
            for pos in batches:
                block_of = pos // size
                needed = sorted(set(block_of.tolist()))
                loaded = {b: v for b, v in loaded.items() if b in needed}
                for b in needed:
                    if b not in loaded:
                        loaded[b] = ahead.popleft().result()
                        nxt = next(upcoming, None)
                        if nxt is not None:
                            ahead.append(worker.submit(read, nxt))
                yield self._minibatch(pos, block_of, needed, loaded, cells, size)

    def _minibatch(
        self,
        pos: torch.Tensor,
        block_of: torch.Tensor,
        needed: list[int],
        loaded: dict[int, tuple[TensorRows, torch.Tensor]],
        cells: torch.Tensor,
        size: int,
    ) -> Minibatch:
        """The cells at positions ``pos`` of the epoch's order, cut from their blocks."""
        parts, part_cells, part_nonzero, offset = [], [], [], 0
        for b in needed:
            rows, local = loaded[b]
            mine = pos[block_of == b] - b * size
            x, nonzero = rows.cut(local[mine])
            parts.append(x)
            part_cells.append(cells[b * size + mine])
            part_nonzero.append(None if nonzero is None else nonzero + torch.tensor([[offset], [0]]))
            offset += x.shape[0]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        idx = part_cells[0] if len(part_cells) == 1 else torch.cat(part_cells)
        nonzero = None if part_nonzero[0] is None else torch.cat(part_nonzero, dim=1)
        return Minibatch(x, self.codes.index_select(0, idx.to(self.codes.device)), nonzero)


def _source(x: Any) -> TensorRows | BackedRows:
    return BackedRows(x) if is_backed_matrix(x) else TensorRows(x)


def make_loader(
    x: Any, codes: np.ndarray, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0
) -> Minibatches:
    """Minibatches of the cells ``indices`` of ``x`` (in memory, or a backed AnnData's on-disk matrix)."""
    return Minibatches(_source(x), codes, indices, batch_size, shuffle=shuffle, seed=seed)


def make_loaders(
    x: Any, codes: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, batch_size: int, seed: int = 0
) -> tuple[Minibatches, Minibatches | None]:
    """Training minibatches (a new seeded order every epoch) and validation minibatches (in order, of at least
    1,024 cells; None without validation cells) over one shared source: the matrix is checked once and, on a GPU,
    copied there once."""
    source = _source(x)
    train = Minibatches(source, codes, train_idx, batch_size, shuffle=True, seed=seed)
    val = Minibatches(source, codes, val_idx, max(batch_size, 1024), shuffle=False) if len(val_idx) else None
    return train, val


def place_on(loader: Minibatches, device: torch.device, resident: bool | None = None) -> None:
    """Put ``loader``'s data on GPU ``device`` when it fits (``resident=None``: when it takes under half of the
    free GPU memory), so that minibatches are cut there; otherwise they are cut on the host and copied to the device
    one by one. Nothing to do on the CPU, or for on-disk data."""
    if device.type == "cpu" or not isinstance(loader.source, TensorRows):
        return
    if loader.source.on(device):  # another loader of the same matrix put it there
        resident = True
    if resident is None:
        need = loader.source.nbytes
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else need * 4
        resident = need < free / 2
        if not resident:
            logger.info(
                "the count matrix (%.1f GB) does not fit in half of the free GPU memory (%.1f GB): minibatches are "
                "cut on the host and copied over one by one",
                need / 1e9,
                free / 1e9,
            )
    if resident:
        loader.to(device)
