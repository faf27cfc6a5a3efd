"""Screen: does a different decoder — deeper, another count likelihood, or a Gaussian on log-normalised data —
predict the held-out response better than ``fit``'s default?

    python benchmarks/perturbation_decoder.py --seeds 0 1 2

``perturbation_oracle.md`` found the default VAE close to what its own decoder gives back from the real stimulated
cells' codes, so the decoder looked like the limit. This screen changes the decoder and nothing else: for each
held-out Kang type (as ``perturbation_kang.py``: its stimulated cells left out, 2,000 HVGs of the training cells, or
all genes with ``--n-hvg 0``) and seed, one model per variant is trained and predicts with
``predict_perturbation``'s defaults (``method="transport"``, ``similar=0.5``, 1,000 cells):

- ``default``: ``fit``'s defaults (negative binomial, one hidden layer of 128);
- ``2 layers``: ``n_layers=2`` in encoder and decoder;
- ``poisson``: ``likelihood="poisson"``;
- ``gaussian``: ``likelihood="gaussian"`` fitted to the log-normalised training cells (log1p of counts per 10,000,
  scGen's input), so the model predicts on the scale that is scored.

Beside them the gene-space ``linear_similar`` baseline. Scored with ``scvae.tl.evaluate_perturbation``. Writes
``benchmarks/results/perturbation_decoder.{csv,md}`` (``_all_genes`` with ``--n-hvg 0``; mean over seeds, spread
max − min). A screen: it changes nothing in scvae.
"""

from __future__ import annotations

from _screens import LABELS, held_out, parser, run_screen, score

import scvae
from scvae.data import log_normalize
from scvae.loaders import to_dense_float
from scvae.perturbation import linear_shift

SCORES = ("delta_corr_top_change", "delta_corr_top", "r2_top_change", "r2_top", "e_distance")
VARIANTS = {
    "default": {},
    "2 layers": {"n_layers": 2},
    "poisson": {"likelihood": "poisson"},
    "gaussian": {"likelihood": "gaussian"},
}


def log_normalised(train):  # noqa: ANN001, ANN201
    """A copy of ``train`` whose ``X`` is dense log1p(counts per 10,000), float32."""
    out = train.copy()
    out.X = to_dense_float(log_normalize(train), slice(None))
    return out


def run(adata, target: str, seed: int, n_hvg: int, variants: list[str]) -> list[dict]:  # noqa: ANN001
    train, real_stim, real_ctrl, top = held_out(adata, target, n_hvg)
    n_cells = max(1000, real_ctrl.n_obs)
    preds = {}
    for name in variants:
        kw = VARIANTS[name]
        data = log_normalised(train) if kw.get("likelihood") == "gaussian" else train
        model = scvae.model.fit(data, seed=seed, progress_bar=False, **kw)
        pred = model.predict_perturbation(data, **LABELS, target=target, n_cells=n_cells, seed=seed)
        preds[name] = (pred, False)  # scored from layers["expression"], log-normalised on every variant
    preds["linear_similar"] = (linear_shift(train, **LABELS, target=target, similar=True, seed=seed), True)
    return score(preds, real_stim, real_ctrl, top, target, seed, SCORES)


def main() -> None:
    p = parser(__doc__, [0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = p.parse_args()
    run_screen(
        args,
        lambda adata, target, seed: run(adata, target, seed, args.n_hvg, args.variants),
        name="perturbation_decoder",
        title="Screen: other decoders (depth, likelihood, Gaussian on log-normalised data) against the default",
        options="--variants " + " ".join(f'"{v}"' if " " in v else v for v in args.variants),
        scores=SCORES,
    )


if __name__ == "__main__":
    main()
