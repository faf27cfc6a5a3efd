"""The representation scores against cases whose answer is known by construction."""

import numpy as np
import pytest

from scvae.metrics import batch_mixing, ilisi, knn_accuracy


def _two_types(mixed: bool, seed: int = 0):
    """Two well-separated cell types; type A in batches 0 and 1, type B in batch 0 only. Within type A the batches
    are either interleaved at random (mixed) or pulled apart (not mixed)."""
    rng = np.random.default_rng(seed)
    n = 200
    types = np.array(["A"] * n + ["B"] * n)
    batches = np.concatenate([rng.integers(0, 2, n), np.zeros(n, int)])
    rep = rng.normal(size=(2 * n, 2))
    rep[types == "B"] += 100.0
    if not mixed:
        rep[(types == "A") & (batches == 1)] += 30.0
    return rep, batches, types


def test_mixing_within_cell_types_is_one_when_batches_interleave_and_zero_when_apart():
    rep, batches, types = _two_types(mixed=True)
    mixed = batch_mixing(rep, batches, labels=types)
    assert 0.85 < mixed < 1.15, mixed
    # The global form asks type B (batch 0 only) to mix too, and so scores the same mixed space far lower.
    assert batch_mixing(rep, batches) < 0.75 * mixed
    rep, batches, types = _two_types(mixed=False)
    assert batch_mixing(rep, batches, labels=types) < 0.05


def test_mixing_leaves_out_small_and_single_batch_types():
    rep, batches, types = _two_types(mixed=True)
    types = types.copy()
    types[:5] = "tiny"  # fewer than min_cells: not scored
    full = batch_mixing(rep, batches, labels=types, min_cells=20)
    assert full == pytest.approx(batch_mixing(rep[5:], batches[5:], labels=types[5:], min_cells=20), abs=0.05)
    with pytest.raises(ValueError, match="more than one batch"):
        batch_mixing(rep[200:], batches[200:], labels=types[200:])


def test_knn_accuracy_and_ilisi_on_known_layouts():
    rep, batches, types = _two_types(mixed=True)
    assert knn_accuracy(rep, types) == 1.0
    a = types == "A"
    assert 1.7 < ilisi(rep[a], batches[a]) <= 2.0  # two batches evenly mixed
    rep, batches, types = _two_types(mixed=False)
    assert ilisi(rep[a], batches[a]) == pytest.approx(1.0)


def test_batch_mixing_refuses_a_single_batch():
    with pytest.raises(ValueError, match="more than one batch"):
        batch_mixing(np.random.default_rng(0).normal(size=(30, 3)), ["a"] * 30)
