"""Screen: the default prediction's change stretched by a scale learnt on the other cell types.

    python benchmarks/perturbation_stretch.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells or all genes with ``--n-hvg 0``, ``fit``'s defaults), ``predict_perturbation``'s defaults
(``method="transport"``, ``similar=0.5``, observed cells) predict it. Then every other type t with at least 10
cells per condition is predicted from the rest in turn, the same way (the same model; the latent shift and the
similar types from the types other than t and the target), as ``change_intervals`` does to calibrate its
intervals. The least-squares slope through 0 of the real change on the predicted one, pooled over the other
types, says by how much the change should be stretched: α over all genes (``α all``) or over each type's 100
genes of largest |real change| (``α top``). The stretched prediction moves every predicted cell's
``layers["expression"]`` by (α − 1) × the predicted change, so its mean change is α times the default's. A
single scale cannot change a Pearson correlation; it changes R² of means and the distances.

Besides the scores each row records ``slope_target``, the same all-gene slope on the held-out type itself (from
its real stimulated cells, which no prediction uses: how far off the scale is), and ``alpha`` (the row's α; 1
for the rows that are not stretched). Scored with ``scvae.tl.evaluate_perturbation`` against the real held-out
cells, beside the balanced, the unbalanced and the similar-types linear shifts. Writes
``benchmarks/results/perturbation_stretch.{csv,md}`` (``perturbation_stretch_all_genes`` with ``--n-hvg 0``;
mean over seeds, spread max − min). A screen: ``predict_perturbation`` does not do this.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, other_types, pooled_slope, score, screen_main, stretched

import scvae
from scvae.perturbation import linear_shift

SCORES = (
    "delta_corr_top_change",
    "r2_top_change",
    "r2_top",
    "r2_all",
    "e_distance",
    "energy_distance",
    "wasserstein_top_change",
    "slope_target",
    "alpha",
)
N_TOP = 100


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(train, **LABELS, target=target, seed=seed)
    reals, preds_t, _ = zip(*other_types(model, train, target, seed, method="transport", similar=0.5).values())
    alphas = {"α all": pooled_slope(reals, preds_t, None), "α top": pooled_slope(reals, preds_t, N_TOP)}
    x_stim, x_ctrl = (scvae.tl.log_normalize(a) for a in (real_stim, real_ctrl))
    real_change = np.asarray(x_stim.mean(0)).ravel() - np.asarray(x_ctrl.mean(0)).ravel()
    change = pred.var["change"].to_numpy()
    slope_target = pooled_slope([real_change], [change], None)

    labels = dict(**LABELS, target=target, seed=seed)
    preds = {
        "linear": (linear_shift(train, **labels), True),
        "linear_unbalanced": (linear_shift(train, **labels, balanced=False), True),
        "linear_similar": (linear_shift(train, **labels, similar=True), True),
        "default": (pred, False),
    }
    for name, a in alphas.items():
        preds[f"default × {name}"] = (stretched(pred, a), False)
    rows = score(preds, real_stim, real_ctrl, top, target, seed, SCORES[:-2])
    for row in rows:
        row["slope_target"] = slope_target
        row["alpha"] = next((a for name, a in alphas.items() if row["method"].endswith(name)), 1.0)
    return rows


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_stretch",
        title="Screen: the default's predicted change stretched by a scale learnt on the other cell types",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
