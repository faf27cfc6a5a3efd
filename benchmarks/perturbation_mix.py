"""Screen: the decoded prediction averaged with the real responses of the most similar cells, in gene space.

    python benchmarks/perturbation_mix.py --seeds 0 1 2

The decoded methods (``predict_perturbation``) are held back by the decoder: given the target's real stimulated
cells they reach a Pearson-delta of 0.941 (``perturbation_oracle.md``). ``gene_transport`` of
``perturbation_neighbours.py`` never decodes: ``method="transport"``'s optimal-transport pairs of each other type's
control and stimulated codes, with each pair's displacement taken in gene space (log-normalised stimulated cell −
its paired control cell); each target control cell moves by the mean displacement of its 30 nearest paired
control cells. Its errors come from the other types' real responses, not from the decoder, so an average of the
two may be better than either. For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated
cells left out, 2,000 HVGs of the training cells, ``fit``'s defaults):

- ``linear``: the balanced linear shift; ``transport`` and ``delta``: ``predict_perturbation`` (1,000 cells, as
  the benchmark; the model's draws, ``cells="decoded"``); ``gene_transport``: as above;
- ``mix w``: each target control cell's decoded ``transport`` prediction (one per control cell, the same model
  and seed) times w plus its ``gene_transport`` prediction times 1 − w, on the log-normalised scale;
- ``delta mix 0.5``: the same with ``delta`` in place of ``transport``;
- ``transport, observed cells``: the target's real control cells (log-normalised), each moved by ``transport``'s
  predicted mean change (``var["change"]``), so that the cells keep the real cells' spread;
  ``mix 0.5, observed cells``: the same cells moved half by that change and half by their ``gene_transport``
  displacement.

Scored with ``scvae.tl.evaluate_perturbation``. Writes ``benchmarks/results/perturbation_mix.{csv,md}`` (mean over
seeds, spread max − min). A screen: ``predict_perturbation`` does not mix. Its ``cells="observed"``, added after
this screen, gives the ``transport, observed cells`` row's cells, except that a gene that falls is scaled down
rather than shifted (so that values stay at or above 0).
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, score, screen_main
from anndata import AnnData
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL
from perturbation_neighbours import gene_pairs

import scvae
from scvae.conditions import EXPRESSION_LAYER, type_groups
from scvae.data import log_normalize
from scvae.latent import posterior_means
from scvae.loaders import to_dense_float
from scvae.perturbation import linear_shift

SCORES = (
    "delta_corr_top_change",
    "delta_corr_top",
    "delta_corr",
    "r2_top_change",
    "r2_top",
    "e_distance",
    "energy_distance",
)
K = 30
WEIGHTS = (0.75, 0.5, 0.25)


def cells(like: AnnData, values: np.ndarray) -> AnnData:
    return AnnData(values.astype(np.float32), obs=like.obs.copy(), var=like.var.copy())


def gene_transport(model, train: AnnData, target: str, seed: int) -> np.ndarray:  # noqa: ANN001
    """Each target control cell (in order) moved by the gene-space displacements of its K nearest paired cells."""
    from sklearn.neighbors import NearestNeighbors

    cond = train.obs[CONDITION].astype(str).to_numpy()
    types = train.obs[CELL_TYPE].astype(str).to_numpy()
    groups = type_groups(cond, types, control=CONTROL, stimulated=LABELS["stimulated"], exclude=[target], min_cells=10)
    x, codes = model.read(train)
    logx = to_dense_float(log_normalize(train), slice(None))
    source = np.flatnonzero((types == target) & (cond == CONTROL))
    z = posterior_means(model, x, codes, np.arange(train.n_obs), 1024)
    anchors, moves = gene_pairs(z, logx, groups, seed)
    _, idx = NearestNeighbors(n_neighbors=K).fit(anchors).kneighbors(z[source])
    return logx[source] + np.stack([moves[i].mean(0) for i in idx])


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    decoded = dict(cells="decoded", seed=seed)  # the model's draws (the default)
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    preds = {"linear": (linear_shift(train, **LABELS, target=target, seed=seed), True)}
    for m in ("delta", "transport"):
        p = model.predict_perturbation(
            train, **LABELS, similar=0.0, target=target, method=m, n_cells=n_cells, **decoded
        )
        preds[m] = (p, False)
    genes = gene_transport(model, train, target, seed)
    base = real_ctrl[:, list(train.var_names)]
    preds["gene_transport"] = (cells(base, genes), True)
    own = {  # one decoded cell per control cell, in the control cells' order
        m: model.predict_perturbation(train, **LABELS, similar=0.0, target=target, method=m, **decoded).layers[
            EXPRESSION_LAYER
        ]
        for m in ("delta", "transport")
    }
    for w in WEIGHTS:
        preds[f"mix {w}"] = (cells(base, w * own["transport"] + (1 - w) * genes), True)
    preds["delta mix 0.5"] = (cells(base, 0.5 * own["delta"] + 0.5 * genes), True)
    observed = to_dense_float(log_normalize(base), slice(None))  # the target's real control cells
    change = preds["transport"][0].var["change"].to_numpy()
    preds["transport, observed cells"] = (cells(base, observed + change[None, :]), True)
    preds["mix 0.5, observed cells"] = (cells(base, 0.5 * (observed + change[None, :]) + 0.5 * genes), True)
    return score(preds, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_mix",
        title="Screen: the decoded prediction averaged with the real responses of similar cells, in gene space",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
