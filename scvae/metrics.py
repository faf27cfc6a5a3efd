"""Measures of a representation: how well it keeps cell types apart and how well it mixes batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from .data import InputError, check_int


def _neighbours(rep: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest other cells of each cell (Euclidean)."""
    if check_int("k", k) >= len(rep):
        raise InputError(f"k={k} neighbours need more than {k} cells, got {len(rep)}; lower k")
    return NearestNeighbors(n_neighbors=k + 1).fit(rep).kneighbors(rep, return_distance=False)[:, 1:]


def knn_accuracy(rep: np.ndarray, labels: np.ndarray | pd.Series | Sequence[str], *, k: int = 15) -> float:
    """Leave-one-out k-NN classification accuracy: the fraction of cells whose label is the majority label of
    their ``k`` nearest neighbours in ``rep`` (ties go to the first label in sorted order).

    Parameters
    ----------
    rep
        Cells × dimensions, e.g. ``adata.obsm["X_scvae"]`` (Euclidean distances).
    labels
        One label per cell, e.g. ``adata.obs["cell_type"]``.
    k
        Number of neighbours (the cell itself excluded).

    Returns
    -------
    The accuracy, from 0 to 1.
    """
    codes, _ = pd.factorize(np.asarray(labels), sort=True)
    nbr = codes[_neighbours(np.asarray(rep), k)]
    counts = np.zeros((len(codes), codes.max() + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(len(codes)), k), nbr.ravel()), 1)
    return float((counts.argmax(1) == codes).mean())


def batch_mixing(
    rep: np.ndarray,
    batches: np.ndarray | pd.Series | Sequence[str],
    *,
    k: int = 15,
    labels: np.ndarray | pd.Series | Sequence[str] | None = None,
    min_cells: int = 20,
) -> float:
    """How well batches are mixed among each cell's ``k`` nearest neighbours in ``rep``: 1 is ideal, 0 none.

    Without ``labels``: the mean over cells of the fraction of neighbours from another batch, divided by the
    fraction expected if batches were perfectly mixed (1 - the cell's own batch share).

    With ``labels`` (cell types): the expected fraction is taken within the cell's own type,
    1 - n(type, batch) / n(type), so that a cell type that only some batches have is not asked to mix with the
    others. Cells whose type has fewer than ``min_cells`` cells, or is present in one batch only, are left out
    of the mean (their neighbours are still any cells).

    Parameters
    ----------
    rep
        Cells × dimensions, e.g. ``adata.obsm["X_scvae"]`` (Euclidean distances).
    batches
        One batch label per cell.
    k
        Number of neighbours (the cell itself excluded).
    labels, min_cells
        Cell types, and the fewest cells a type needs to count (see above).

    Returns
    -------
    The mixing score: 1 for batches mixed as well as their shares allow, 0 for none mixed.
    """
    rep = np.asarray(rep)
    codes, _ = pd.factorize(np.asarray(batches))
    if codes.max(initial=-1) < 1:
        raise InputError("batch mixing needs cells from more than one batch")
    other = (codes[_neighbours(rep, k)] != codes[:, None]).mean(1)
    if labels is None:
        share = np.bincount(codes) / len(codes)
        return float(np.mean(other / (1.0 - share[codes])))
    types, _ = pd.factorize(np.asarray(labels))
    table = np.zeros((types.max() + 1, codes.max() + 1))
    np.add.at(table, (types, codes), 1)
    per_type = table.sum(1)
    expected = 1.0 - table[types, codes] / per_type[types]
    keep = (per_type[types] >= min_cells) & (expected > 0)
    if not keep.any():
        raise InputError("no cell type with at least min_cells cells is present in more than one batch")
    return float(np.mean(other[keep] / expected[keep]))


def ilisi(rep: np.ndarray, batches: np.ndarray | pd.Series | Sequence[str], *, k: int = 30) -> float:
    """Median local inverse Simpson index of batches over each cell's ``k``-neighbourhood (itself included):
    1 when neighbourhoods hold one batch, up to the number of batches when they are evenly mixed.

    Parameters
    ----------
    rep
        Cells × dimensions, e.g. ``adata.obsm["X_scvae"]`` (Euclidean distances).
    batches
        One batch label per cell.
    k
        Number of neighbours (besides the cell itself).

    Returns
    -------
    The median iLISI, from 1 to the number of batches.
    """
    codes, _ = pd.factorize(np.asarray(batches))
    nbr = np.concatenate([np.arange(len(codes))[:, None], _neighbours(np.asarray(rep), k)], axis=1)
    counts = np.zeros((len(codes), codes.max() + 1))
    np.add.at(counts, (np.repeat(np.arange(len(codes)), k + 1), codes[nbr].ravel()), 1)
    p = counts / counts.sum(1, keepdims=True)
    return float(np.median(1.0 / (p**2).sum(1)))
