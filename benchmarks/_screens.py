"""What the perturbation screens share: the held-out split of ``perturbation_kang.py``, scoring a set of
predictions, the command line and the loop over seeds and cell types that writes ``<name>.{csv,md}``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _common import seed_tables
from anndata import AnnData
from perturbation_kang import CELL_TYPE, CONDITION, CONTROL, STIMULATED, select_genes

import scvae
from scvae import tl

OUT = Path(__file__).resolve().parent / "results"
LABELS = dict(condition_key=CONDITION, control=CONTROL, stimulated=STIMULATED, cell_type_key=CELL_TYPE)
CELL_TYPES = ["CD4 T", "CD14 Mono", "CD8 T", "B", "CD16 Mono", "NK", "DC"]


def held_out(adata: AnnData, target: str, n_hvg: int) -> tuple[AnnData, AnnData, AnnData, list[str]]:
    """Training cells (all but the target's stimulated ones, on the HVGs of the training cells), the target's real
    stimulated and control cells on those genes, and scGen's top-100 up-regulated DEGs of the target."""
    is_target = (adata.obs[CELL_TYPE] == target).to_numpy()
    is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    train = adata[~(is_target & is_stim)].copy()
    genes = select_genes(train, n_hvg)
    train = train[:, genes].copy()
    real_stim = adata[is_target & is_stim][:, genes].copy()
    real_ctrl = adata[is_target & ~is_stim][:, genes].copy()
    top = tl.rank_de_genes(adata[is_target][:, genes].copy(), CONDITION, STIMULATED, CONTROL, n=100)
    return train, real_stim, real_ctrl, top


def other_types(
    model,  # noqa: ANN001
    train: AnnData,
    target: str,
    seed: int,
    method: str = "delta",
    similar: float = 0.0,
) -> dict[str, tuple]:
    """Each other type t with at least 10 cells per condition predicted from the rest (the same model, δ from the
    types other than t and ``target``; ``method`` and ``similar`` of ``predict_perturbation``): {t: (real mean
    change, predicted ``var["change"]``, min(n control, n stimulated))}, log-normalised means as
    ``var["change"]``."""

    from scvae.conditions import expression_moments, type_groups

    cond = train.obs[CONDITION].astype(str).to_numpy()
    types = train.obs[CELL_TYPE].astype(str).to_numpy()
    groups = type_groups(cond, types, control=CONTROL, stimulated=STIMULATED, exclude=[target], min_cells=10)
    x = model.read(train)[0]
    rest = train[types != target].copy()
    out = {}
    for t, (ctrl, stim) in groups.items():
        real = expression_moments(x, stim, counts=True)[0] - expression_moments(x, ctrl, counts=True)[0]
        p = model.predict_perturbation(
            rest, **LABELS, similar=similar, target=t, method=method, n_cells=None, cells="decoded", seed=seed
        )
        out[t] = (real, p.var["change"].to_numpy(), min(len(ctrl), len(stim)))
    return out


def pooled_slope(reals: Sequence[np.ndarray], preds: Sequence[np.ndarray], n_top: int | None) -> float:
    """Least-squares slope through 0 of the real changes on the predicted ones, pooled over types, over all genes
    (``n_top=None``) or each type's ``n_top`` genes of largest |real change|: by how much to stretch the prediction."""
    keep = [np.argsort(-np.abs(r), kind="stable")[:n_top] if n_top else np.arange(len(r)) for r in reals]
    r = np.concatenate([a[i] for a, i in zip(reals, keep, strict=True)])
    p = np.concatenate([a[i] for a, i in zip(preds, keep, strict=True)])
    return float(r @ p / (p @ p))


def stretched(pred: AnnData, alpha: float) -> AnnData:
    """A copy of ``predict_perturbation``'s ``pred`` whose cells' ``layers["expression"]`` each move by
    (``alpha`` − 1) × the predicted change, so that their mean change is ``alpha`` times ``pred``'s."""
    out = pred.copy()
    change = pred.var["change"].to_numpy()
    out.layers["expression"] = (pred.layers["expression"] + (alpha - 1.0) * change[None, :]).astype(np.float32)
    return out


def score(
    preds: dict[str, tuple[AnnData, bool]],
    real_stim: AnnData,
    real_ctrl: AnnData,
    top: list[str],
    target: str,
    seed: int,
    scores: Sequence[str],
) -> list[dict]:
    """One row per prediction ({name: (cells, log-normalised already?)}) with ``scores`` of
    :func:`scvae.tl.evaluate_perturbation`."""
    rows = []
    for name, (p, normalized) in preds.items():
        res = tl.evaluate_perturbation(p, real_stim, real_ctrl, top_genes=top, pred_normalized=normalized, seed=seed)
        rows.append({"cell_type": target, "seed": seed, "method": name, **{s: float(res[s]) for s in scores}})
    return rows


def parser(doc: str, seeds: list[int]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=seeds)
    p.add_argument("--cell-types", nargs="+", default=CELL_TYPES)
    p.add_argument("--n-hvg", type=int, default=2000)
    p.add_argument("--out", type=Path, default=OUT)
    return p


def run_screen(
    args: argparse.Namespace,
    run: Callable[[AnnData, str, int], list[dict]],
    *,
    name: str,
    title: str,
    options: str,
    scores: Sequence[str],
) -> str:
    """``run(adata, target, seed)`` for every seed and cell type on Kang; writes ``<name>.csv`` as the runs end and
    ``<name>.md`` (``title``; the command: the script, ``options``, then the common arguments) at the end, and
    returns the name used: with ``--n-hvg 0`` (all genes) ``<name>_all_genes``, so that such a run does not replace
    the HVGs' results."""
    name += "_all_genes" if args.n_hvg <= 0 else ""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    adata = scvae.datasets.kang()
    t0, rows = time.perf_counter(), []
    for seed in args.seeds:
        for target in args.cell_types:
            new = run(adata, target, seed)
            rows += new
            print(pd.DataFrame(new).round(3).to_string(index=False), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out / f"{name}.csv", index=False)
    df = pd.DataFrame(rows)
    script = Path(sys.argv[0]).name
    parts = [
        f"# {title}\n",
        f"`python benchmarks/{script} {options}{' ' if options else ''}--seeds {' '.join(map(str, args.seeds))} "
        "--cell-types "
        + " ".join(f'"{t}"' for t in args.cell_types)
        + f" --n-hvg {args.n_hvg}` ({time.perf_counter() - t0:.0f} s, 2-core CPU). What each row is: the "
        "script's docstring. Each cell: mean over seeds (max − min).\n",
    ]
    parts += seed_tables(df, scores, args.cell_types)
    (args.out / f"{name}.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return name


def screen_main(
    doc: str,
    run: Callable[[AnnData, str, int, int], list[dict]],
    *,
    seeds: list[int],
    name: str,
    title: str,
    scores: Sequence[str],
) -> None:
    """The command line of a screen with no options of its own: the common arguments (:func:`parser`, default
    ``seeds``), then ``run(adata, target, seed, n_hvg)`` for every seed and cell type (:func:`run_screen`)."""
    args = parser(doc, seeds).parse_args()
    run_screen(
        args,
        lambda adata, target, seed: run(adata, target, seed, args.n_hvg),
        name=name,
        title=title,
        options="",
        scores=scores,
    )
