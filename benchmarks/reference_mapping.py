"""Reference mapping (scArches-style) on real data, side by side with training from scratch on everything.

- CellBench (``scvae.datasets.cellbench()``): reference = the four CEL-seq2 plates, query = the Drop-seq batch.
  ``map_query`` trains only the new batch's parameters; labels are transferred with ``scvae.tl.transfer_labels``
  (15 nearest reference cells). Compared with one model fitted from scratch on all five batches, whose latent
  is used the same way (labels of the Drop-seq cells transferred from the CEL-seq2 cells).
- Kang (``scvae.datasets.kang()``): reference = control cells, query = stimulated cells, ``condition`` as the
  batch label, again against a model fitted on all cells.

Reported: label-transfer accuracy against the dataset's cell types, mixing of query with reference
(``scvae.metrics.batch_mixing`` on the joint latent with labels reference/query; 1 = ideal, restricted to cell types
present in both), the reference's own batch mixing, and wall time of the query step (mapping) or of the whole fit.

    python benchmarks/reference_mapping.py [--seed 0]

Writes ``benchmarks/results/reference_mapping.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import markdown_table
from anndata import AnnData

import scvae
from scvae.metrics import batch_mixing

OUT = Path(__file__).resolve().parent / "results"


def _scores(ref: AnnData, query: AnnData, label_key: str) -> dict[str, float]:
    pred = scvae.tl.transfer_labels(ref, query, label_key=label_key, k=15)
    accuracy = float((pred[label_key].astype(str).to_numpy() == query.obs[label_key].astype(str).to_numpy()).mean())
    shared = sorted(set(ref.obs[label_key].astype(str)) & set(query.obs[label_key].astype(str)))
    r = ref.obs[label_key].astype(str).isin(shared).to_numpy()
    q = query.obs[label_key].astype(str).isin(shared).to_numpy()
    z = np.vstack([ref.obsm["X_scvae"][r], query.obsm["X_scvae"][q]])
    mixing = batch_mixing(z, np.r_[np.zeros(r.sum()), np.ones(q.sum())])
    return {
        "label_accuracy": accuracy,
        "query_reference_mixing": mixing,
        "mean_uncertainty": float(pred[f"{label_key}_uncertainty"].mean()),
    }


def run_case(name: str, adata: AnnData, batch_key: str, is_query: np.ndarray, label_key: str, seed: int) -> list[dict]:
    rows = []
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    t0 = time.perf_counter()
    ref_model = scvae.model.fit(ref, batch_key=batch_key, seed=seed, progress_bar=False)
    ref_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_model.map_query(query, seed=seed, progress_bar=False)
    map_s = time.perf_counter() - t0
    rows.append(
        {
            "case": name,
            "method": "reference + map_query",
            "n_reference": ref.n_obs,
            "n_query": query.n_obs,
            **_scores(ref, query, label_key),
            "seconds (query step)": map_s,
            "seconds (reference fit)": ref_s,
        }
    )

    both = adata.copy()
    t0 = time.perf_counter()
    scvae.model.fit(both, batch_key=batch_key, seed=seed, progress_bar=False)
    scratch_s = time.perf_counter() - t0
    ref2, query2 = both[~is_query].copy(), both[is_query].copy()
    rows.append(
        {
            "case": name,
            "method": "from scratch on all",
            "n_reference": ref.n_obs,
            "n_query": query.n_obs,
            **_scores(ref2, query2, label_key),
            "seconds (query step)": scratch_s,
            "seconds (reference fit)": float("nan"),
        }
    )
    for r in rows[-2:]:
        logging.getLogger("reference_mapping").info("%s", r)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT / "reference_mapping")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")

    rows = []
    cb = scvae.datasets.cellbench()
    rows += run_case(
        "CellBench: Drop-seq onto 4 CEL-seq2 plates",
        cb,
        "batch",
        (cb.obs["batch"] == "Dropseq_3cl").to_numpy(),
        "cell_type",
        args.seed,
    )
    kang = scvae.datasets.kang()
    rows += run_case(
        "Kang: stimulated onto control",
        kang,
        "condition",
        (kang.obs["condition"] == "stimulated").to_numpy(),
        "cell_type",
        args.seed,
    )
    tab = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tab.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.4f")
    text = "\n".join(
        [
            "# Reference mapping vs training from scratch",
            "",
            "Label accuracy: k-NN (k=15, distance-weighted) transfer from reference to query cells in the latent "
            "space, against the dataset's cell types. Mixing: scvae.metrics.batch_mixing of reference vs query cells "
            "on the joint latent (cell types present in both; 1 = ideal). 'seconds (query step)': map_query for the "
            f"mapping rows, the whole fit for the from-scratch rows. fit's defaults (default epochs, final weights; map_query stops early on its validation ELBO); seed {args.seed}.",
            "",
            markdown_table(tab),
            "",
        ]
    )
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
