"""Diagnostic: how far could a better latent shift take ``delta``? The model given the answer.

    python benchmarks/perturbation_oracle.py --seeds 0 1 2

For each held-out Kang cell type (as ``perturbation_kang.py``: its stimulated cells left out of training, 2,000
HVGs of the training cells, ``fit``'s defaults), the same model predicts the target five ways:

- ``delta``: ``predict_perturbation(method="delta")`` (1,000 cells, as the benchmark);
- ``oracle δ``: the target's control cells moved by the shift measured on the target itself, mean z of its real
  stimulated cells (encoded by the model, which never trained on them) − mean z of its control cells, then
  decoded and corrected for the decoder's bias as ``delta`` is: the shift an ideal δ estimate would find;
- ``best δ``: the one shared δ that maximises the scored metric itself (Pearson-delta over the top-100 genes by
  |real change| of the corrected decoded cells, the same draws at every step), found by Nelder-Mead from the
  oracle δ: an upper bound for every method that moves all cells by one shift, fitted to the answer;
- ``reconstruction``: the target's real stimulated cells encoded and decoded with their own codes, with the same
  correction: what any method that moves cells to their right place in this latent space (``transport``, a
  better δ, a neighbour map) could at best reach;
- ``linear``: the balanced linear shift, for reference.

``trained_recon`` (one value per model, repeated on every row): the Pearson-delta over the top-100 genes by
|real change| of the reconstructed change (decoded stimulated − decoded control cells' mean) on the *other* types,
whose stimulated cells the model trained on, averaged over them: how faithfully the decoder reproduces a response
it has seen (compare ``halves`` in ``perturbation_kang.md``). Scored with ``scvae.tl.evaluate_perturbation``.
Writes ``benchmarks/results/perturbation_oracle.{csv,md}`` (mean over seeds, spread max − min). A diagnostic:
nothing here is a method a user can run, since it reads the cells it predicts.
"""

from __future__ import annotations

import numpy as np
from _screens import LABELS, held_out, score, screen_main
from anndata import AnnData
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED
from scipy.optimize import minimize

import scvae
from scvae.conditions import expression_moments, expression_values
from scvae.latent import decode, decoder_bias, posterior_means, subtract_bias
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "r2_top_change", "e_distance", "trained_recon")
BATCH = 1024
NELDER_MEAD = dict(maxfev=600, xatol=1e-3, fatol=1e-5)


def top_corr(change: np.ndarray, real: np.ndarray, k: int = 100) -> float:
    """Pearson correlation of ``change`` with ``real`` over the ``k`` genes of largest |real|."""
    top = np.argsort(-np.abs(real), kind="stable")[:k]
    return float(np.corrcoef(change[top], real[top])[0, 1])


def run(adata, target: str, seed: int, n_hvg: int) -> list[dict]:
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    model = scvae.model.fit(train, seed=seed, progress_bar=False)
    pred = model.predict_perturbation(
        train, **LABELS, similar=0.0, target=target, method="delta", n_cells=max(1000, real_ctrl.n_obs), seed=seed
    )

    x, codes = model.read(train)
    cond, types = (train.obs[k].astype(str).to_numpy() for k in (CONDITION, CELL_TYPE))
    x_s, codes_s = model.read(real_stim)

    def encoded(xm, cm, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = posterior_means(model, xm, cm, rows, BATCH)
        return z, np.asarray(xm[rows].sum(axis=1), dtype=np.float64).ravel()

    def decoded(z: np.ndarray, library: np.ndarray, cm: np.ndarray) -> np.ndarray:
        counts, _ = decode(model, z, cm, library, BATCH, seed)
        return expression_values(counts, counts=True)

    ctrl = np.flatnonzero((types == target) & (cond == CONTROL))
    z_c, lib_c = encoded(x, codes, ctrl)
    z_s, lib_s = encoded(x_s, codes_s, np.arange(real_stim.n_obs))

    _, shrunk, _ = decoder_bias(model, x, z_c, codes, ctrl, lib_c, BATCH, seed)  # once: it depends on z_c alone

    def cells(z: np.ndarray, cm: np.ndarray, library: np.ndarray) -> AnnData:
        values = subtract_bias(decoded(z, library, cm), shrunk, counts=True)
        return AnnData(X=np.zeros(values.shape, np.float32), var=pred.var[[]].copy(), layers={"expression": values})

    shift = z_s.mean(0) - z_c.mean(0)
    ctrl_mean = expression_moments(x, ctrl, counts=True)[0]
    real = expression_moments(x_s, np.arange(real_stim.n_obs), counts=True)[0] - ctrl_mean

    def metric(d: np.ndarray) -> float:
        corrected = cells(z_c + d[None, :].astype(np.float32), codes[ctrl], lib_c).layers["expression"]
        return top_corr(corrected.mean(0) - ctrl_mean, real)

    best = minimize(lambda d: -metric(d), shift.astype(np.float64), method="Nelder-Mead", options=NELDER_MEAD).x
    scored = {
        "delta": (pred, False),
        "oracle δ": (cells(z_c + shift[None, :], codes[ctrl], lib_c), False),
        "best δ": (cells(z_c + best[None, :].astype(np.float32), codes[ctrl], lib_c), False),
        "reconstruction": (cells(z_s, codes_s, lib_s), False),
        "linear": (linear_shift(train, **LABELS, target=target, seed=seed), True),
    }
    rows = score(scored, real_stim, real_ctrl, top, target, seed, SCORES[:-1])

    recon = []
    for t in sorted(set(types) - {target}):
        c, s = (np.flatnonzero((types == t) & (cond == k)) for k in (CONTROL, STIMULATED))
        if min(len(c), len(s)) < 10:
            continue
        real = expression_moments(x, s, counts=True)[0] - expression_moments(x, c, counts=True)[0]
        stim_mean, ctrl_mean = (decoded(*encoded(x, codes, r), codes[r]).mean(0) for r in (s, c))
        recon.append(top_corr(stim_mean - ctrl_mean, real))
    for row in rows:
        row["trained_recon"] = float(np.mean(recon))
    return rows


def main() -> None:
    screen_main(
        __doc__,
        run,
        seeds=[0, 1, 2],
        name="perturbation_oracle",
        title="Diagnostic: the model given the target's real stimulated cells (an upper bound for latent shifts)",
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
