"""Screen: rules for the width of ``predict_perturbation``'s intervals, from one set of calibration predictions.

    python benchmarks/perturbation_interval_rules.py --seeds 0 1 2              # 2,000 HVGs
    python benchmarks/perturbation_interval_rules.py --seeds 0 1 2 --n-hvg 0    # all genes

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells or all genes, ``fit``'s defaults) the default prediction (``predict_perturbation``'s defaults) is
made, and what ``change_intervals`` calibrates on is collected once: each other type t predicted from the rest by
the model alone (``similar=0``), its real change and the sampling variance se² of it, and the change the types
most alike suggest (``scvae.baselines.similar_types_change``, from the types other than t and the target); for the
target, the model's change alone and the similar types' change. Every rule then gives a half-width
√((q s)² + z² se²) around the default's predicted change, q the largest over t of the 0.9 quantile of t's scaled
errors over its 100 genes of largest real change, and differs in the scale s and the noise taken out:

- ``spread``: s = the spread of each gene's real change across the types (``scvae.conditions.interval_scale``),
  the model's share of t's error √max(e² − se², 0): ``change_intervals``' rule;
- ``spread + disagreement``: s = √(spread² + d²), d the model's change minus the similar types' change (genes on
  which the model and the nearest types disagree get wider intervals), the same noise;
- ``spread, noise at z``: the spread, and √max(e² − z² se², 0), the smallest q that covers the gene;
- ``disagreement, noise at z``: both;
- ``spread, per nearest type`` and ``spread, per type disagreement``: ``spread``, with a difficulty per cell type
  (added 2026-12-07, since the rules above leave CD4 T, the largest type with close neighbours, over-covered on all
  genes): each t's quantile is divided by its difficulty f_t before the largest is taken, and the target's q is
  that largest times the target's own f. ``nearest type``: f = the distance (Euclidean, log-normalised control
  means) from the type to the nearest type it is predicted from (for t: the types other than t and the target);
  ``type disagreement``: f = the root mean square, over the type's 100 genes of largest predicted change, of the
  model's change minus the similar types' change.

Scored against the target's real change (real stimulated − control mean, log-normalised, as
``scvae.tl.evaluate_perturbation``): the share of the top-100 |change| genes and of all genes inside the interval,
and the median width over the top-100. The collected arrays are kept in ``--cache`` (one file per run, reused if
present and holding the control means). Writes ``benchmarks/results/perturbation_interval_rules[_all_genes].{csv,md}``
(mean over seeds, spread max − min), with the number of types whose top-change coverage lies within 0.85–0.95.
A screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _screens import LABELS, held_out, parser, run_screen
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED
from scipy.stats import norm

import scvae
from scvae.baselines import similar_types_change
from scvae.conditions import expression_moments, interval_scale, type_groups

LEVEL = 0.9
RULES = {  # name: (scale from the disagreement too?, noise taken out at z² se² rather than se²?, type difficulty)
    "spread": (False, False, None),
    "spread + disagreement": (True, False, None),
    "spread, noise at z": (False, True, None),
    "disagreement, noise at z": (True, True, None),
    "spread, per nearest type": (False, False, "nearest"),
    "spread, per type disagreement": (False, False, "disagreement"),
}
SCORES = ("interval_coverage_top_change", "interval_coverage", "interval_width_top_change")


def collect(adata, target: str, seed: int, n_hvg: int, path: Path) -> None:  # noqa: ANN001
    """Train, predict with the defaults and collect the calibration arrays into ``path`` (an .npz)."""
    train, real_stim, _, _ = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(train, **LABELS, target=target, seed=seed)
    alone = model.predict_perturbation(train, **LABELS, target=target, similar=0.0, cells="decoded", seed=seed)
    x = model.read(train)[0]
    cond, types = (train.obs[k].astype(str).to_numpy() for k in (CONDITION, CELL_TYPE))
    own = np.flatnonzero((types == target) & (cond == CONTROL))
    own_mean, own_var = expression_moments(x, own, counts=True)
    x_stim = model.read(real_stim)[0]
    real = expression_moments(x_stim, np.arange(real_stim.n_obs), counts=True)[0] - own_mean
    groups = type_groups(cond, types, control=CONTROL, stimulated=STIMULATED, exclude=[target], min_cells=10)
    moments = [[expression_moments(x, rows, counts=True) for rows in pair] for pair in groups.values()]
    means = np.stack([mc for (mc, _), _ in moments])  # each other type's control mean and change, read once
    changes = np.stack([ms - mc for (mc, _), (ms, _) in moments])
    rest = train[types != target].copy()
    calibration = {}
    for i, (t, (ctrl, stim)) in enumerate(groups.items()):
        (_, vc), (_, vs) = moments[i]
        p = model.predict_perturbation(rest, **LABELS, target=t, similar=0.0, cells="decoded", seed=seed)
        o = similar_types_change(np.delete(means, i, 0), np.delete(changes, i, 0), means[i])[0]  # types ≠ t, target
        calibration.update(
            {
                f"real_{i}": changes[i],
                f"m_{i}": p.var["change"].to_numpy(),
                f"o_{i}": o,
                f"noise_{i}": vc / len(ctrl) + vs / len(stim),
            }
        )
    np.savez(
        path,
        change=pred.var["change"].to_numpy(),
        m=alone.var["change"].to_numpy(),
        o=similar_types_change(means, changes, own_mean)[0],
        r=real,
        target_noise=2.0 * own_var / len(own),
        cal_types=np.array(list(groups)),
        cal_means=means,
        own_mean=own_mean,
        **calibration,
    )


def top(v: np.ndarray, n: int = 100) -> np.ndarray:
    return np.argsort(-np.abs(v), kind="stable")[:n]


def scale(changes: np.ndarray, disagreement: np.ndarray | None) -> np.ndarray:
    """``interval_scale(changes)``, joined with the disagreement (root sum of squares) when one is given."""
    spread = interval_scale(changes)
    return spread if disagreement is None else np.hypot(spread, disagreement)


def nearest(means: np.ndarray, own: np.ndarray) -> float:
    """Distance from a control mean (``own``) to the nearest of ``means`` (types × genes)."""
    return float(np.sqrt(np.square(means - own).sum(1)).min())


def type_disagreement(m: np.ndarray, o: np.ndarray) -> float:
    """Root mean square of the model's minus the similar types' change over the 100 genes of largest ``|m|``."""
    return float(np.sqrt(np.mean(np.square(m - o)[top(m)])))


def rules(path: Path) -> dict[str, dict[str, float]]:
    """Each rule's coverage of the target's real change and width, from the arrays collected in ``path``."""
    d = np.load(path)
    cal = [{k: d[f"{k}_{i}"] for k in ("real", "m", "o", "noise")} for i in range(len(d["cal_types"]))]
    reals, means = np.stack([c["real"] for c in cal]), d["cal_means"]
    difficulty = {  # per calibration type, and the target's last
        None: np.ones(len(cal) + 1),
        "nearest": [nearest(np.delete(means, i, 0), means[i]) for i in range(len(cal))]
        + [nearest(means, d["own_mean"])],
        "disagreement": [type_disagreement(c["m"], c["o"]) for c in cal] + [type_disagreement(d["m"], d["o"])],
    }
    z2 = norm.ppf(0.5 + LEVEL / 2) ** 2
    r, change, genes = d["r"], d["change"], top(d["r"])
    out = {}
    for name, (apart, at_z, kind) in RULES.items():
        q, f = 0.0, difficulty[kind]
        for i, c in enumerate(cal):
            others = np.delete(reals, i, 0)
            s = scale(others, c["m"] - c["o"] if apart else None)
            error = np.sqrt(np.maximum(np.square(c["real"] - c["m"]) - (z2 if at_z else 1.0) * c["noise"], 0.0))
            q = max(q, float(np.quantile((error / s)[top(c["real"])], LEVEL)) / f[i])
        q *= f[-1]
        s = scale(reals, d["m"] - d["o"] if apart else None)
        half = np.sqrt(np.square(q * s) + z2 * d["target_noise"])
        inside = np.abs(r - change) <= half
        out[name] = {
            "interval_coverage_top_change": float(inside[genes].mean()),
            "interval_coverage": float(inside.mean()),
            "interval_width_top_change": float(np.median(2.0 * half[genes])),
        }
    return out


def main() -> None:
    p = parser(__doc__, [0, 1, 2])
    p.add_argument("--cache", type=Path, default=Path("/tmp/scvae_interval_rules"))
    args = p.parse_args()
    gene_set = "all" if args.n_hvg <= 0 else "hvg"
    args.cache.mkdir(parents=True, exist_ok=True)

    def run(adata, target: str, seed: int) -> list[dict]:  # noqa: ANN001
        path = args.cache / f"{gene_set}_{seed}_{target.replace(' ', '_')}.npz"
        if not path.exists() or "cal_means" not in np.load(path):  # cached runs are not redone (unless older)
            collect(adata, target, seed, args.n_hvg, path)
        return [{"cell_type": target, "seed": seed, "method": m, **s} for m, s in rules(path).items()]

    genes = "all genes" if gene_set == "all" else f"{args.n_hvg} HVGs"
    title = f"Screen: rules for the width of the perturbation intervals ({genes})"
    name = run_screen(args, run, name="perturbation_interval_rules", title=title, options="", scores=SCORES)
    cov = pd.read_csv(args.out / f"{name}.csv").groupby(["method", "cell_type"])["interval_coverage_top_change"].mean()
    within = ", ".join(f"{m} {int(cov[m].between(0.85, 0.95).sum())} of {len(cov[m])}" for m in RULES)
    line = f"\nCell types whose mean top-change coverage lies within 0.85–0.95: {within}. Runs found in --cache "
    line += "are not redone (the time above is then that of the rules alone).\n"
    with open(args.out / f"{name}.md", "a") as f:
        f.write(line)
    print(line)


if __name__ == "__main__":
    main()
