"""The rows of several matrices, one after another, read lazily: what scvae trains on from a collection of files.

A :class:`Stacked` matrix is sliced like a backed AnnData's ``X`` (``x[a:b]``, ``x[rows]``), so the backed code
path (validation block by block, minibatches read in contiguous blocks) reads it unchanged. Each read touches
only the files its rows fall in and the rows asked for; nothing is concatenated and no file is read whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp


class Stacked:
    """Matrices ``parts`` (cells × genes each: on disk, as anndata's sparse datasets or h5py/zarr arrays, or in
    memory) stacked by rows, each reduced to the same genes in one order by its column indices ``columns`` (None:
    all of its columns, in order); ``names`` name the parts (file names) in messages."""

    def __init__(self, parts: Sequence[Any], columns: Sequence[np.ndarray | None], names: Sequence[str]) -> None:
        self.parts, self.columns, self.names = list(parts), list(columns), list(names)
        widths = {p.shape[1] if c is None else len(c) for p, c in zip(self.parts, self.columns)}
        if len(widths) != 1:
            raise ValueError(f"internal error: the parts have {sorted(widths)} genes; they must have the same")
        self.offsets = np.cumsum([0, *(int(p.shape[0]) for p in self.parts)])
        self.shape = (int(self.offsets[-1]), widths.pop())
        self.dtype = np.result_type(*(np.dtype(p.dtype) for p in self.parts))

    def __len__(self) -> int:
        return self.shape[0]

    def select(self, genes: np.ndarray) -> Stacked:
        """The same cells with only the columns ``genes`` (indices into this matrix's columns), in that order;
        nothing is read."""
        genes = np.asarray(genes, dtype=np.int64)
        columns = [genes if c is None else np.asarray(c)[genes] for c in self.columns]
        return Stacked(self.parts, columns, self.names)

    def _read(self, i: int, rows: slice | np.ndarray) -> sp.csr_matrix | np.ndarray:
        block = self.parts[i][rows]
        if sp.issparse(block):
            block = block.tocsr() if block.format != "csr" else block
        else:
            block = np.asarray(block)
        cols = self.columns[i]
        return block if cols is None else block[:, cols]

    def __getitem__(self, key: Any) -> sp.csr_matrix | np.ndarray:
        if isinstance(key, tuple):
            raise TypeError("a Stacked matrix is indexed by rows only; select genes with .select(columns)")
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            blocks = []
            for i in range(len(self.parts)):
                lo, hi = max(start, self.offsets[i]), min(stop, self.offsets[i + 1])
                if lo < hi:
                    blocks.append(self._read(i, slice(int(lo - self.offsets[i]), int(hi - self.offsets[i]))))
            return self._stack(blocks)
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).ravel()
        rows = np.where(rows < 0, rows + self.shape[0], rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} cells")
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        part = np.searchsorted(self.offsets, sorted_rows, side="right") - 1
        blocks = []
        for i in np.unique(part):
            local = sorted_rows[part == i] - self.offsets[i]
            unique, inverse = np.unique(local, return_inverse=True)  # on-disk reads need increasing, unique rows
            block = self._read(int(i), unique)
            blocks.append(block[inverse])
        out = self._stack(blocks)
        if np.any(order != np.arange(len(order))):
            out = out[np.argsort(order, kind="stable")]
        return out

    def _stack(self, blocks: list[Any]) -> sp.csr_matrix | np.ndarray:
        if not blocks:
            return sp.csr_matrix((0, self.shape[1]), dtype=self.dtype)
        if len(blocks) == 1:
            return blocks[0]
        if any(sp.issparse(b) for b in blocks):
            return sp.vstack([sp.csr_matrix(b) for b in blocks], format="csr")
        return np.vstack(blocks)
