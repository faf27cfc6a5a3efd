"""Diagnostic: where does ``delta``'s E-distance come from, and why is the linear shift closer for some types?

    python benchmarks/perturbation_edistance.py --seeds 0

The E-distance of ``scvae.tl.evaluate_perturbation`` is 2‖P(mean predicted − mean real stimulated)‖², P the
projection on the 50 principal components of the type's real cells (stimulated and control, log-normalised,
centred; ``scvae.scoring.e_distances``). This script splits that error for ``predict_perturbation``'s default
(``method="delta"``, a VAE with ``fit``'s defaults) and for the balanced linear shift, on each held-out Kang
type (as ``perturbation_kang.py``: 2,000 HVGs of the training cells, all cells of each group):

- ``e_distance``: the whole error; ``e_top_change`` / ``e_rest``: the same with the mean difference kept only on
  the 100 genes of largest |real change| / only on the other genes (the two need not add up: cross terms);
- ``pc1_share``: the share of the error along the first component (on Kang, the interferon response);
- ``slope``: least-squares slope of the real change on the predicted one over the top-100 changed genes,
  through 0 (1: the right size; above 1: the prediction is too small);
- ``top_gene``: the gene that adds most to the error (|mean difference| × its loading norm), with its mean
  difference and its real change.

The PCA is computed once on all cells of the type, not subsampled (``evaluate_perturbation`` subsamples groups
above 2,000 cells; only CD4 T has more), so ``e_distance`` can differ slightly from ``perturbation_kang.md``.
Writes ``benchmarks/results/perturbation_edistance.{csv,md}``. A diagnostic: it changes nothing in scvae.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, screen_main
from sklearn.utils.extmath import randomized_svd

import scvae
from scvae.data import log_normalize
from scvae.perturbation import linear_shift

SCORES = ("e_distance", "e_top_change", "e_rest", "pc1_share", "slope")


def dense(m) -> np.ndarray:  # noqa: ANN001
    return np.asarray(m.todense() if hasattr(m, "todense") else m, dtype=np.float64)


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    train, real_stim, real_ctrl, _ = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(
        train, **LABELS, similar=0.0, target=target, method="delta", n_cells=max(1000, real_ctrl.n_obs), seed=seed
    )
    lin = linear_shift(train, **LABELS, target=target, seed=seed)
    stim, ctrl = dense(log_normalize(real_stim)), dense(log_normalize(real_ctrl))
    real = np.vstack([stim, ctrl])
    _, _, vt = randomized_svd(real - real.mean(0), 50, random_state=seed)
    change = stim.mean(0) - ctrl.mean(0)
    top = np.zeros(len(change), dtype=bool)
    top[np.argsort(-np.abs(change), kind="stable")[:100]] = True
    genes, loading = np.asarray(train.var_names), np.linalg.norm(vt, axis=0)
    rows = []
    for name, means in (("delta", dense(pred.layers["expression"]).mean(0)), ("linear", dense(lin.X).mean(0))):
        diff, predicted = means - stim.mean(0), means - ctrl.mean(0)
        proj = vt @ diff
        worst = int(np.argmax(np.abs(diff) * loading))
        rows.append(
            {
                "cell_type": target,
                "seed": seed,
                "method": name,
                "e_distance": 2 * float(proj @ proj),
                "e_top_change": 2 * float(np.square(vt @ np.where(top, diff, 0.0)).sum()),
                "e_rest": 2 * float(np.square(vt @ np.where(top, 0.0, diff)).sum()),
                "pc1_share": float(2 * proj[0] ** 2 / (2 * proj @ proj)),
                "slope": float(change[top] @ predicted[top] / (predicted[top] @ predicted[top])),
                "top_gene": f"{genes[worst]} ({diff[worst]:+.2f}; real change {change[worst]:+.2f})",
            }
        )
    return rows


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0],
        name="perturbation_edistance",
        title="Diagnostic: where the E-distance of `delta` and of the linear shift comes from",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
