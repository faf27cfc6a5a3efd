"""Screen: does averaging the predictions of several independently seeded models beat one model?

    python benchmarks/perturbation_ensemble.py --seeds 0 --members 3

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``--members`` VAEs are trained with seeds ``seed * members + k`` (the first is
the single model of the seed) and each predicts the target with ``method="delta"`` (1,000 cells, as the
benchmark). "ensemble" pools every member's predicted cells, so its mean change is the members' average and its
cells are a mixture of theirs. Scored with ``scvae.tl.evaluate_perturbation`` beside the balanced linear shift.
Writes ``benchmarks/results/perturbation_ensemble.{csv,md}`` (mean over seeds, spread max − min). A screen:
``predict_perturbation`` predicts with one model.
"""

from __future__ import annotations

import anndata as ad
from _screens import LABELS, held_out, parser, run_screen, score

import scvae
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")


def run(adata, target: str, seed: int, n_hvg: int, members: int) -> list[dict]:
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    n_cells = max(1000, real_ctrl.n_obs)
    preds = []
    for k in range(members):
        s = seed * members + k
        model = scvae.model.fit(train, seed=s, progress_bar=False)
        pred = model.predict_perturbation(
            train, **LABELS, similar=0.0, target=target, method="delta", n_cells=n_cells, seed=s
        )
        pred.obs_names = [f"{name}-m{k}" for name in pred.obs_names]
        preds.append(pred)
    scored = {
        "delta (one model)": (preds[0], False),
        f"ensemble of {members}": (ad.concat(preds, merge="same"), False),
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
    }
    return score(scored, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    p = parser(__doc__, [0])
    p.add_argument("--members", type=int, default=3)
    args = p.parse_args()
    run_screen(
        args,
        lambda adata, target, seed: run(adata, target, seed, args.n_hvg, args.members),
        name="perturbation_ensemble",
        title="Screen: the average of several seeded models' predictions against one model's",
        options=f"--members {args.members}",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
