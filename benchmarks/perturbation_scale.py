"""Screen: is the model's predicted change too small or too large, and does a scale learnt on the other cell
types fix it?

    python benchmarks/perturbation_scale.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation(method="delta")`` predicts it; then every other type t
with at least 10 cells per condition is predicted from the rest in turn (the same model, δ from the types other
than t and the target), as ``change_intervals`` does to calibrate its intervals. On t's 100 genes of largest
|real change| the least-squares slope of the real change on the predicted one (through 0) says by how much the
model's change should be stretched; α is that slope over the pooled genes of all other types (``pooled``) or
the median of the per-type slopes (``median``). The scaled prediction moves every predicted cell's
``layers["expression"]`` by (α − 1) × the predicted change, so its mean change is α times the model's. A single
scale cannot change a Pearson correlation; it changes R² of means and the E-distance.

Besides the scores, each row records ``slope_target``: the same slope measured on the held-out type itself (from
its real stimulated cells, which no prediction uses: a diagnostic of how far off the model's scale is) and
``alpha`` (the pooled α; for the ``median`` row the median). Scored with ``scvae.tl.evaluate_perturbation``
against the real held-out cells, beside the balanced linear shift. Writes
``benchmarks/results/perturbation_scale.{csv,md}`` (mean over seeds, spread max − min). A screen:
``predict_perturbation`` does not do this.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, other_types, pooled_slope, score, screen_main, stretched

import scvae
from scvae.conditions import expression_moments
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "r2_top_change", "r2_top", "r2_all", "e_distance", "slope_target", "alpha")
N_TOP = 100


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    pred = model.predict_perturbation(
        train, **LABELS, similar=0.0, target=target, method="delta", n_cells=n_cells, seed=seed
    )
    reals, preds_t, _ = zip(*other_types(model, train, target, seed).values())
    alphas = {
        "pooled": pooled_slope(reals, preds_t, N_TOP),
        "median": float(np.median([pooled_slope([r], [p], N_TOP) for r, p in zip(reals, preds_t, strict=True)])),
    }

    stim_mean, ctrl_mean = (
        expression_moments(model.read(a)[0], np.arange(a.n_obs), counts=True)[0] for a in (real_stim, real_ctrl)
    )
    real_change = stim_mean - ctrl_mean
    slope_target = pooled_slope([real_change], [pred.var["change"].to_numpy()], N_TOP)

    preds = {"delta": (pred, False), "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True)}
    for name, a in alphas.items():
        preds[f"delta × {name} α"] = (stretched(pred, a), False)
    rows = score(preds, real_stim, real_ctrl, top, target, seed, SCORES[:-2])
    for row in rows:
        row["slope_target"] = slope_target
        row["alpha"] = alphas["median"] if row["method"].endswith("median α") else alphas["pooled"]
    return rows


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_scale",
        title="Screen: the model's predicted change stretched by a scale learnt on the other cell types",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
