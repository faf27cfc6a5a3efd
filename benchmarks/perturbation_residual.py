"""Screen: does adding the model's average error on the other cell types improve a perturbation prediction?

    python benchmarks/perturbation_residual.py --seeds 0 1 2
    python benchmarks/perturbation_residual.py --base cvae_transport --seeds 0    # the same on the cVAE's transport

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation(method="delta")`` predicts it; then every other type t
with at least 10 cells per condition is predicted from the rest in turn (the same model, δ from the types other
than t and the target), and its residual is the real mean change of t minus the predicted one, gene by gene
(log-normalised means, as ``var["change"]``). The corrected prediction adds the mean, the median or the
cell-weighted mean of those residuals to every predicted cell's ``layers["expression"]``: a systematic error of
the decoding path, measured where both conditions are observed, taken off the target's prediction. The
residuals are in-sample for the model (it was trained on those types' stimulated cells), so they measure its
systematic error, not the whole of its out-of-sample error. Nothing of the target's stimulated cells is used.

Scored with ``scvae.tl.evaluate_perturbation`` against the real held-out cells, beside the balanced linear shift.
``--base cvae_transport`` corrects the cVAE's ``method="transport"`` prediction instead (a cVAE conditioned on
the condition, as ``perturbation_kang.py``'s ``cvae_transport``). Writes
``benchmarks/results/perturbation_residual[_cvae_transport].{csv,md}`` (mean over seeds, spread max − min). A screen:
``predict_perturbation`` does not do this.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, other_types, parser, run_screen, score
from perturbation_kang import CONDITION

import scvae
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")


BASES = {  # name: fit's extra arguments, predict_perturbation's method
    "delta": ({}, "delta"),
    "cvae_transport": ({"condition_key": CONDITION}, "transport"),
}


def run(adata, target: str, seed: int, n_hvg: int, base: str = "delta") -> list[dict]:
    fit_kw, method = BASES[base]
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False, **fit_kw)
    n_cells = max(1000, real_ctrl.n_obs)
    pred = model.predict_perturbation(
        train, **LABELS, similar=0.0, target=target, method=method, n_cells=n_cells, seed=seed
    )
    others = other_types(model, train, target, seed, method).values()
    residuals = [real - predicted for real, predicted, _ in others]
    sizes = [n for _, _, n in others]
    residuals, w = np.array(residuals), np.array(sizes, dtype=float)
    corrections = {
        "mean": residuals.mean(0),
        "median": np.median(residuals, 0),
        "weighted_mean": (residuals * w[:, None]).sum(0) / w.sum(),
    }
    preds = {base: (pred, False), "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True)}
    for name, r in corrections.items():
        corrected = pred.copy()
        corrected.layers["expression"] = (pred.layers["expression"] + r[None, :]).astype(np.float32)
        preds[f"{base} + {name} residual"] = (corrected, False)
    return score(preds, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    p = parser(__doc__, [0, 1, 2])
    p.add_argument("--base", choices=list(BASES), default="delta", help="the prediction corrected")
    args = p.parse_args()
    run_screen(
        args,
        lambda adata, target, seed: run(adata, target, seed, args.n_hvg, args.base),
        name="perturbation_residual" if args.base == "delta" else f"perturbation_residual_{args.base}",
        title="Screen: the model's residual on the other cell types added to its prediction",
        options=f"--base {args.base}",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
