"""Diagnostic: how high can a perfect prediction score on Kang? Two ceilings for the Pearson-delta.

    python benchmarks/perturbation_ceiling.py --seeds 0 1 2

``perturbation_kang.py``'s ceiling, ``halves``, scores one random half of the target's real stimulated cells as
the prediction of the other half. Each half holds half the cells, so its mean is noisier than the full sample the
methods are scored against: the halves are a pessimistic ceiling. This script adds the score of a *perfect mean*:
a prediction whose mean change equals the true one, scored against a real change measured from as many cells as
the target has. The true change is not known; the measured one stands in for it, and the measurement is redrawn
by adding to each gene normal noise with its sampling variance se² = var(stimulated) / n_stimulated +
var(control) / n_control (log-normalised, the target's own cells), 200 draws per seed. The perfect mean's
Pearson-delta is the correlation between the measured change and each redrawn one over the 100 genes of largest
redrawn |change| (the genes the benchmark would pick from such data), averaged over the draws. It is optimistic
where a gene's real change is noise and pessimistic where the top genes' spread is inflated by it; what it
measures is how much of the distance between a method and 1 the target's sample size forces.

For each held-out Kang type with ≥ 10 cells per condition (as ``perturbation_kang.py``: 2,000 HVGs of the
training cells, or all genes with ``--n-hvg 0``) it reports ``halves`` (``scvae.tl.evaluate_perturbation`` on the
seed's split, as the benchmark computes it) and ``perfect mean`` for ``delta_corr_top_change``. No model is
trained. Writes ``benchmarks/results/perturbation_ceiling.{csv,md}`` (``_all_genes`` with ``--n-hvg 0``).
"""

from __future__ import annotations

import numpy as np
from _screens import held_out, screen_main

from scvae import tl
from scvae.conditions import expression_moments

SCORES = ("delta_corr_top_change",)
N_DRAWS, N_TOP = 200, 100


def moments(cells) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Mean and variance (ddof 1) of each gene's log-normalised expression over ``cells``."""
    return expression_moments(cells.X, np.arange(cells.n_obs), counts=True)


def perfect_mean(real_stim, real_ctrl, seed: int) -> float:  # noqa: ANN001
    """The perfect mean's Pearson-delta over the top ``N_TOP`` genes, averaged over ``N_DRAWS`` redraws."""
    (ms, vs), (mc, vc) = moments(real_stim), moments(real_ctrl)
    change = ms - mc
    se = np.sqrt(vs / real_stim.n_obs + vc / real_ctrl.n_obs)
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(N_DRAWS):
        measured = change + rng.normal(0.0, se)
        top = np.argsort(-np.abs(measured), kind="stable")[:N_TOP]
        scores.append(np.corrcoef(change[top], measured[top])[0, 1])
    return float(np.mean(scores))


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    _, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    perm = np.random.default_rng(seed).permutation(real_stim.n_obs)  # the benchmark's split of the halves
    half = real_stim.n_obs // 2
    first, second = real_stim[np.sort(perm[:half])], real_stim[np.sort(perm[half:])]
    halves = tl.evaluate_perturbation(first, second, real_ctrl, top_genes=top, seed=seed)["delta_corr_top_change"]
    base = {"cell_type": target, "seed": seed}
    return [
        {**base, "method": "halves", "delta_corr_top_change": float(halves)},
        {**base, "method": "perfect mean", "delta_corr_top_change": perfect_mean(real_stim, real_ctrl, seed)},
    ]


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_ceiling",
        title="Diagnostic: two ceilings for the Pearson-delta (halves of the real cells; a perfect mean)",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
