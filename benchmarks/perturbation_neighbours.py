"""Screen: the response of the most similar cells of other types, taken from the real cells in gene space.

    python benchmarks/perturbation_neighbours.py --seeds 0

``perturbation_edistance.md`` shows that ``delta``'s decoded change is too small and misses the responses that
only some types share (GIMAP4 in T cells, IRF8 in B cells), while the linear shift, an average of the real
changes of all other types, gets the size right on the T cells but not the type-specific part. This screen keeps
the real cells' changes (no decoding) and lets the model's latent space (posterior means, a VAE with ``fit``'s
defaults, trained as in ``perturbation_kang.py``) say which cells of the other types resemble each target cell:

- ``nearest_types k``: each target control cell's ``k`` nearest control cells of the other types (types with at
  least 10 cells per condition) in the latent space vote for their types; δ_gene = Σ_t w_t (mean stimulated −
  mean control of type t, log-normalised), w_t the share of all votes type t got; added to every target
  control cell (a linear shift weighted by similarity instead of balanced).
- ``gene_transport k``: ``method="transport"``'s pairing (optimal transport of each other type's control and
  stimulated codes, at most 500 each), but each pair's displacement is taken in gene space (log-normalised
  stimulated cell − its paired control cell); each target control cell moves by the mean displacement of its
  ``k`` nearest paired control cells.

Beside them, ``delta`` and ``transport`` (``predict_perturbation``, decoded) and the balanced linear shift. Scored
with ``scvae.tl.evaluate_perturbation``. Writes ``benchmarks/results/perturbation_neighbours.{csv,md}``. A
screen: ``predict_perturbation`` does not do this.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, score, screen_main
from anndata import AnnData
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED

import scvae
from scvae.conditions import transport_pairs, type_groups
from scvae.data import log_normalize
from scvae.latent import posterior_means
from scvae.loaders import to_dense_float
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "delta_corr", "r2_top_change", "r2_top", "e_distance")
KS = (30, 200)


def cells(like: AnnData, values: np.ndarray) -> AnnData:
    return AnnData(values.astype(np.float32), obs=like.obs.copy(), var=like.var.copy())


def gene_pairs(z: np.ndarray, logx: np.ndarray, groups: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``method="transport"``'s pairs of each type's control and stimulated codes (the same seeds): the paired
    control cells' codes and each pair's displacement in gene space (stimulated − control, log-normalised)."""
    anchors, moves = [], []
    for i, (c, s) in enumerate(groups.values()):
        pc, ps = transport_pairs(z[c], z[s], seed=seed + i)
        anchors.append(z[c[pc]])
        moves.append(logx[s[ps]] - logx[c[pc]])
    return np.vstack(anchors), np.vstack(moves)


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    from sklearn.neighbors import NearestNeighbors

    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    preds = {
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
        **{
            m: (
                model.predict_perturbation(
                    train, **LABELS, similar=0.0, target=target, method=m, n_cells=n_cells, seed=seed
                ),
                False,
            )
            for m in ("delta", "transport")
        },
    }
    cond = train.obs[CONDITION].astype(str).to_numpy()
    types = train.obs[CELL_TYPE].astype(str).to_numpy()
    groups = type_groups(cond, types, control=CONTROL, stimulated=STIMULATED, exclude=[target], min_cells=10)
    x, codes = model.read(train)
    logx = to_dense_float(log_normalize(train), slice(None))
    source = np.flatnonzero((types == target) & (cond == CONTROL))
    z = posterior_means(model, x, codes, np.arange(train.n_obs), 1024)
    base = train[source]

    # nearest types: votes of the k nearest control cells of the other types
    ctrl_rows = np.concatenate([c for c, _ in groups.values()])
    ctrl_type = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(groups.values())])
    change = np.stack([logx[s].mean(0) - logx[c].mean(0) for c, s in groups.values()])
    for k in KS:
        _, idx = NearestNeighbors(n_neighbors=k).fit(z[ctrl_rows]).kneighbors(z[source])
        w = np.bincount(ctrl_type[idx].ravel(), minlength=len(groups)) / idx.size
        preds[f"nearest_types k={k}"] = (cells(base, logx[source] + (w @ change)[None, :]), True)

    # gene transport: OT pairs in the latent space, displacements in gene space
    anchors, moves = gene_pairs(z, logx, groups, seed)
    for k in KS:
        _, idx = NearestNeighbors(n_neighbors=k).fit(anchors).kneighbors(z[source])
        shift = np.stack([moves[i].mean(0) for i in idx])
        preds[f"gene_transport k={k}"] = (cells(base, logx[source] + shift), True)
    return score(preds, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0],
        name="perturbation_neighbours",
        title="Screen: the real response of the most similar cells of other types, in gene space",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
