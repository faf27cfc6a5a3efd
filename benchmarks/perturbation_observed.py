"""Screen: how should ``predict_perturbation(..., cells="observed")`` build its cells from the measured ones?

    python benchmarks/perturbation_observed.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults, 1,000 predicted cells or one per control cell), ``method="transport"`` predicts
it, and the same predicted gene means are carried by three sets of cells:

- ``transport``: the model's draws (``cells="decoded"``, the default);
- ``transport, observed``: ``cells="observed"`` as built since this screen: each measured control cell changed as
  the model changes it, count by count (binomial thinning where the decoder's expected frequency falls, thinned
  model draws added where it rises), then each gene moved to the predicted mean;
- ``transport, observed (scaled)``: ``cells="observed"`` as built before (4d2209c): the measured control cells,
  log-normalised, each gene moved to the predicted mean as a whole (a rising gene gets the same amount added to
  every cell, so a gene induced from zero turns bimodal).

Beside them the balanced and the unbalanced linear shift. Scores: Pearson-delta over the top-100 |change| genes
(equal for the three by construction), the E-distance (squared Euclidean: compares centres only, so equal too),
the energy distance (Euclidean, in the PCA of :func:`scvae.tl.evaluate_perturbation`), and
``wasserstein_distance_top_change``: the mean over the top-100 |real change| genes of the 1-D Wasserstein distance
between the predicted and the real stimulated cells' log-normalised values of the gene (one gene's distribution,
what a violin plot shows; scPerturBench scores a Wasserstein distance too). Writes
``benchmarks/results/perturbation_observed.{csv,md}``. A screen.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, score, screen_main
from scipy.stats import wasserstein_distance

import scvae
from scvae import tl
from scvae.conditions import EXPRESSION_LAYER, expression_values, move_to_mean
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "e_distance", "energy_distance")


def wasserstein_top(values: np.ndarray, stim: np.ndarray, genes: np.ndarray) -> float:
    """Mean over ``genes`` (column indices) of the 1-D Wasserstein distance between two sets of cells."""
    return float(np.mean([wasserstein_distance(values[:, g], stim[:, g]) for g in genes]))


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    kw = dict(target=target, method="transport", n_cells=n_cells, seed=seed)
    decoded = model.predict_perturbation(train, **LABELS, similar=0.0, cells="decoded", **kw)
    observed = model.predict_perturbation(train, **LABELS, similar=0.0, cells="observed", **kw)
    source = decoded.obs["source_cell"].to_numpy()
    ctrl = np.asarray(real_ctrl[source].X.toarray(), dtype=np.float64)
    scaled = decoded.copy()
    mean = decoded.layers[EXPRESSION_LAYER].astype(np.float64).mean(0)
    scaled.layers[EXPRESSION_LAYER] = move_to_mean(expression_values(ctrl, counts=True), mean, counts=True)
    preds = {
        "transport": (decoded, False),
        "transport, observed": (observed, False),
        "transport, observed (scaled)": (scaled, False),
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
        "linear_unbalanced": (linear_shift(train, **LABELS, target=target, balanced=False, seed=seed), True),
    }
    rows = score(preds, real_stim, real_ctrl, top, target, seed, SCORES)
    stim = np.asarray(tl.log_normalize(real_stim).toarray(), dtype=np.float64)
    change = stim.mean(0) - np.asarray(tl.log_normalize(real_ctrl).toarray(), dtype=np.float64).mean(0)
    genes = np.argsort(-np.abs(change))[:100]
    for row, (p, normalized) in zip(rows, preds.values(), strict=True):
        values = np.asarray(p.X if normalized else p.layers[EXPRESSION_LAYER], dtype=np.float64)
        row["wasserstein_distance_top_change"] = wasserstein_top(values, stim, genes)
    return rows


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0],
        name="perturbation_observed",
        title="Screen: the predicted change carried by the measured control cells, count by count or gene by gene",
        scores=(*SCORES, "wasserstein_distance_top_change"),
    )


if __name__ == "__main__":
    main()
