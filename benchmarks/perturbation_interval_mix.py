"""Screen: calibrate the default's intervals on the other types' mixed predictions, or on the model's alone?

    python benchmarks/perturbation_interval_mix.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation(..., interval=0.9)`` with its defaults
(``method="transport"``, ``similar=0.5``) predicts it; its intervals are calibrated by predicting each other type
from the rest with the model's change alone (``similar=0``, what ``predict_perturbation`` does: row ``model
alone``). The same prediction is then given the half-widths that ``change_intervals`` returns when each other
type is predicted as the default predicts the target, with ``similar=0.5`` (row ``mixed``). Both are centred on
the same predicted change; scored with ``scvae.tl.evaluate_perturbation`` against the real held-out cells: the
share of the top-100 |change| genes, of scGen's top-100 up-regulated DEGs and of all genes whose real change lies
in the interval, and the median width over the top-100 |change| genes. Writes
``benchmarks/results/perturbation_interval_mix.{csv,md}`` (mean over seeds, spread max − min). A screen.
"""

from __future__ import annotations

from _screens import LABELS, held_out, score, screen_main

import scvae
from scvae.perturbation import change_intervals

SCORES = ("interval_coverage_top_change", "interval_coverage_top", "interval_coverage", "interval_width_top_change")
LEVEL = 0.9


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(train, **LABELS, target=target, interval=LEVEL, seed=seed)
    half, _ = change_intervals(
        model, train, **LABELS, target=target, level=LEVEL, seed=seed, method="transport", similar=0.5
    )
    mixed = pred.copy()
    change = pred.var["change"].to_numpy()
    mixed.var["change_lower"], mixed.var["change_upper"] = change - half, change + half
    return score(
        {"model alone": (pred, False), "mixed": (mixed, False)}, real_stim, real_ctrl, top, target, seed, SCORES
    )


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_interval_mix",
        title="Screen: the default's intervals calibrated on the model's change alone or on the mixed predictions",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
