"""Screen: which cells carry a prediction's change? The model's decoded cells, or the real control cells moved.

    python benchmarks/perturbation_cells.py --seeds 0

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the
training cells, ``fit``'s defaults), ``predict_perturbation(method="delta")`` predicts it (1,000 cells, as the
benchmark) and its gene-wise mean change c (``var["change"]``: predicted minus real control mean, on the
log-normalised scale, the decoder's bias removed) is carried by three sets of cells:

- ``delta``: the predicted cells themselves (counts drawn from the decoder, log-normalised), what
  ``predict_perturbation`` returns by default (``cells="decoded"``);
- ``delta, control cells + change``: the target's real control cells, log-normalised, each gene moved by c (the
  linear shift's construction with the model's change in place of the other types' mean difference);
- ``delta, control cells + own change``: the same cells, each moved by its own decoded change (log1p of 10,000
  × the decoder's expected frequencies at z + δ minus at z, the cell's posterior mean z), recentred gene by gene
  so that the mean change is c again.

The last two have the same gene means as ``delta`` (so the same Pearson-delta, R² and E-distance, which with
squared distances compares the centres only): only the cells differ, which is what the energy distance (Euclidean)
scores. Beside them the balanced linear shift. Writes
``benchmarks/results/perturbation_cells.{csv,md}`` (mean over seeds, spread max − min). A screen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from _screens import LABELS, held_out, score, screen_main
from anndata import AnnData

import scvae
from scvae import tl
from scvae.latent import decode, posterior_means
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "r2_top_change", "r2_top", "e_distance", "energy_distance")


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    n_cells = max(1000, real_ctrl.n_obs)
    kw = dict(target=target, method="delta", n_cells=n_cells, cells="decoded", seed=seed)
    pred = model.predict_perturbation(train, **LABELS, similar=0.0, **kw)
    change = pred.var["change"].to_numpy()
    ctrl_log = np.asarray(tl.log_normalize(real_ctrl).toarray(), dtype=np.float64)

    # each control cell's own decoded change, from its posterior mean z and z + δ
    x = model.read(real_ctrl)[0]
    codes = model.labels.encode(real_ctrl)
    z = posterior_means(model, x, codes, np.arange(real_ctrl.n_obs), 1024)
    delta = np.asarray(pred.uns["scvae_perturbation"]["delta"], dtype=np.float32)
    _, before = decode(model, z, codes, None, 1024, seed)
    _, after = decode(model, z + delta[None, :], codes, None, 1024, seed)
    own = np.log1p(1e4 * after.astype(np.float64)) - np.log1p(1e4 * before.astype(np.float64))
    own += (change - own.mean(0))[None, :]

    def cells(values: np.ndarray, name: str) -> AnnData:
        return AnnData(
            X=values.astype(np.float32),
            obs=pd.DataFrame(index=[f"{name}{i}" for i in range(len(values))]),
            var=pd.DataFrame(index=real_ctrl.var_names.copy()),
        )

    scored = {
        "delta": (pred, False),
        "delta, control cells + change": (cells(ctrl_log + change[None, :], "shift"), True),
        "delta, control cells + own change": (cells(ctrl_log + own, "own"), True),
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
    }
    return score(scored, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0],
        name="perturbation_cells",
        title="Screen: the model's predicted change carried by decoded cells or by the real control cells",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
