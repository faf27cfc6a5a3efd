"""Screen: does a blend of the model's predicted change with the linear shift's beat either alone?

    python benchmarks/perturbation_blend.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation`` (its default ``method="transport"``, 1,000 cells as
the benchmark) predicts it, and :func:`scvae.perturbation.linear_shift` (balanced) gives the gene-space baseline.
A blend with weight w moves every predicted cell's ``layers["expression"]`` by (1 − w) × (linear change − model
change), gene by gene, so its mean change is w × the model's + (1 − w) × the linear shift's: rows ``w=0.5``,
``w=0.7`` and ``w=0.85``. The row ``w calibrated`` chooses w on the other cell types, as ``change_intervals``
calibrates: every other type t with at least 10 cells per condition is predicted from the rest by the model
(``method="transport"``) and by the linear shift, and w is the least-squares weight (clipped to [0, 1]) of the two
predicted changes against t's real change, pooled over each t's 100 genes of largest real change. The model's
predictions of the other types are in-sample (it was trained on their stimulated cells), so this w leans towards
the model. Nothing of the target's stimulated cells is used. Each row of the csv records its ``w``.

Scored with ``scvae.tl.evaluate_perturbation`` against the real held-out cells. Writes
``benchmarks/results/perturbation_blend.{csv,md}`` (mean over seeds, spread max − min). A screen.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, other_types, score, screen_main
from anndata import AnnData
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL

import scvae
from scvae.conditions import expression_moments
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")
FIXED = (0.5, 0.7, 0.85)


def linear_change(adata, target: str, seed: int) -> tuple[AnnData, np.ndarray]:  # noqa: ANN001
    """The balanced linear shift's prediction of ``target`` and its predicted mean change (its δ)."""
    p = linear_shift(adata, **LABELS, target=target, seed=seed)
    ctrl = (adata.obs[CELL_TYPE] == target).to_numpy() & (adata.obs[CONDITION] == CONTROL).to_numpy()
    return p, np.asarray(p.X.mean(0)).ravel() - expression_moments(adata.X, np.flatnonzero(ctrl), counts=True)[0]


def calibrated_weight(model, train, target: str, seed: int) -> float:  # noqa: ANN001
    """Least-squares w of w·model + (1 − w)·linear against the other types' real change (top-100 genes each)."""
    others = other_types(model, train, target, seed, method="transport")
    types = train.obs[CELL_TYPE].astype(str).to_numpy()
    rest = train[types != target].copy()
    num = den = 0.0
    for t, (real, predicted, _) in others.items():
        lin = linear_change(rest, t, seed)[1]
        top = np.argsort(-np.abs(real))[:100]
        d, e = predicted[top] - lin[top], real[top] - lin[top]
        num, den = num + float(d @ e), den + float(d @ d)
    return float(np.clip(num / den, 0.0, 1.0))


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    pred = model.predict_perturbation(train, **LABELS, similar=0.0, target=target, n_cells=n_cells, seed=seed)
    linear, lin = linear_change(train, target, seed)
    gap = lin - pred.var["change"].to_numpy()
    weights = {f"w={w}": w for w in FIXED}
    weights["w calibrated"] = calibrated_weight(model, train, target, seed)
    preds = {"transport": (pred, False), "linear": (linear, True)}
    for name, w in weights.items():
        blended = pred.copy()
        blended.layers["expression"] = (pred.layers["expression"] + (1 - w) * gap[None, :]).astype(np.float32)
        preds[name] = (blended, False)
    rows = score(preds, real_stim, real_ctrl, top, target, seed, SCORES)
    for row in rows:
        row["w"] = weights.get(row["method"], 1.0 if row["method"] == "transport" else 0.0)
    return rows


if __name__ == "__main__":
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_blend",
        title="Screen: the model's predicted change blended with the linear shift's",
        scores=SCORES,
    )
