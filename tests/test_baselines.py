"""The similarity weighting of the gene-space baseline (scvae.baselines.similar_types_change), on made-up types."""

from __future__ import annotations

import numpy as np
import pytest

from scvae.baselines import SIMILARITY_SCALES, similar_types_change


def made_up_types(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six types on 200 genes in two families (T-like and monocyte-like): a type's change is its family's change
    plus a little noise, and control means sit close within a family and far between them."""
    rng = np.random.default_rng(seed)
    family_ctrl = rng.normal(0, 1.0, (2, 200))
    family_change = rng.normal(0, 1.0, (2, 200))
    family = np.array([0, 0, 0, 1, 1, 1])
    ctrl = family_ctrl[family] + rng.normal(0, 0.1, (6, 200))
    change = family_change[family] + rng.normal(0, 0.1, (6, 200))
    return ctrl, change


def test_the_nearest_types_weigh_most_and_the_weights_sum_to_one():
    ctrl, change = made_up_types()
    target = ctrl[0] + 0.01  # a T-like target, almost type 0
    predicted, record = similar_types_change(ctrl[1:], change[1:], target)
    w = np.asarray(record["type_weights"])
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    assert w[:2].sum() > 0.95  # the two other T-like types carry the prediction
    np.testing.assert_allclose(predicted, w @ change[1:])
    # so the predicted change is the T family's, not the average over both families
    assert np.corrcoef(predicted, change[0])[0, 1] > 0.95
    assert np.corrcoef(change[1:].mean(0), change[0])[0, 1] < 0.8


def test_the_scale_is_chosen_by_predicting_each_type_from_the_rest():
    ctrl, change = made_up_types()
    _, record = similar_types_change(ctrl[1:], change[1:], ctrl[0])
    scores = record["similarity_scores"]
    assert set(scores) == {str(t) for t in SIMILARITY_SCALES}
    assert record["similarity_scale"] == float(max(scores, key=scores.get))
    # by hand for τ = 0.1: each type predicted from the other four, Pearson over its 100 largest changes
    r = []
    for i in range(5):
        rest = np.arange(5) != i
        d = np.sqrt(np.square(ctrl[1:][rest] - ctrl[1:][i]).sum(1))
        w = np.exp(-(d / d.min() - 1) / 0.1)
        guess = (w / w.sum()) @ change[1:][rest]
        top = np.argsort(-np.abs(change[1:][i]))[:100]
        r.append(np.corrcoef(guess[top], change[1:][i][top])[0, 1])
    assert scores["0.1"] == pytest.approx(np.mean(r))


def test_with_fewer_than_three_types_the_scale_is_fixed():
    ctrl, change = made_up_types()
    _, record = similar_types_change(ctrl[:2], change[:2], ctrl[3])
    assert record["similarity_scale"] == 0.25 and record["similarity_scores"] == {}
    # one type: its own change
    predicted, _ = similar_types_change(ctrl[:1], change[:1], ctrl[3])
    np.testing.assert_allclose(predicted, change[0])
