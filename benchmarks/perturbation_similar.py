"""Screen: a gene-space shift that weighs the other cell types by similarity, alone and averaged with the model's.

    python benchmarks/perturbation_similar.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation`` (``method="transport"``, ``similar=0``: the model's
change alone, its default before this screen; 1,000 cells as the benchmark) predicts it. Rows: ``transport``; ``linear``, the balanced linear shift
(:func:`scvae.perturbation.linear_shift`); ``similar``, the same shift with the other types weighed by how alike
their control cells are to the target's (``linear_shift(..., similar=True)``, whose τ is chosen by predicting
each other type from the rest); ``average``, the mean of ``transport``'s and ``similar``'s predicted changes (every
predicted cell's ``layers["expression"]`` moved by half the gap, gene by gene). Nothing of the target's stimulated
cells is used. Each row of the csv records the chosen τ.

Scored with ``scvae.tl.evaluate_perturbation`` against the real held-out cells. Writes
``benchmarks/results/perturbation_similar.{csv,md}`` (mean over seeds, spread max − min). A screen.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, score, screen_main

import scvae
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(
        train, **LABELS, similar=0.0, target=target, n_cells=max(1000, real_ctrl.n_obs), seed=seed
    )
    linear = linear_shift(train, **LABELS, target=target, seed=seed)
    similar = linear_shift(train, **LABELS, target=target, similar=True, seed=seed)
    control_mean = np.asarray(pred.layers["expression"].mean(0)).ravel() - pred.var["change"].to_numpy()
    similar_change = np.asarray(similar.X.mean(0)).ravel() - control_mean
    average = pred.copy()
    gap = 0.5 * (similar_change - pred.var["change"].to_numpy())
    average.layers["expression"] = (pred.layers["expression"] + gap[None, :]).astype(np.float32)
    preds = {
        "transport": (pred, False),
        "linear": (linear, True),
        "similar": (similar, True),
        "average": (average, False),
    }
    rows = score(preds, real_stim, real_ctrl, top, target, seed, SCORES)
    for row in rows:
        row["similarity_scale"] = similar.uns["scvae_perturbation"]["similarity_scale"]
    return rows


if __name__ == "__main__":
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_similar",
        title="Screen: a similarity-weighted gene-space shift, alone and averaged with the model's prediction",
        scores=SCORES,
    )
