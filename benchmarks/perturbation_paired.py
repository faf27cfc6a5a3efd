"""Two prediction methods compared run by run on the rows ``perturbation_kang.py`` already wrote.

    python benchmarks/perturbation_paired.py                      # delta against transport, both gene sets

Within one run (seed and held-out cell type) both methods use the same trained model, the same control cells and
the same real cells, so their difference is free of the model-to-model noise that the seed spread carries. For each
score: the two methods' means over all runs, the mean paired difference (second minus first), in how many runs the
second is better (for the distances: lower), and the mean difference per cell type. Reads
``benchmarks/results/<name>.csv`` for each ``--results`` name, trains nothing, and writes
``benchmarks/results/perturbation_paired.{csv,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
from _common import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
SCORES = {  # score: higher is better?
    "delta_corr_top_change": True,
    "delta_corr_top": True,
    "r2_top_change": True,
    "r2_top": True,
    "delta_corr": True,
    "e_distance": False,
    "energy_distance": False,
    "interval_coverage_top_change": None,  # neither: the goal is the interval's level
}


def paired(results: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    rows = []
    for score, higher in SCORES.items():
        if score not in results:
            continue
        both = results[results["method"].isin([first, second])]
        table = both.pivot_table(index=["cell_type", "seed"], columns="method", values=score).dropna()
        diff = table[second] - table[first]
        better = "" if higher is None else int(((diff > 0) if higher else (diff < 0)).sum())
        row = {
            "score": score,
            first: table[first].mean(),
            second: table[second].mean(),
            "mean difference": diff.mean(),
            f"runs {second} better": f"{better} of {len(diff)}" if better != "" else "–",
        }
        row.update({t: v for t, v in diff.groupby(level="cell_type").mean().items()})
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", default=["perturbation_kang", "perturbation_kang_all_genes"])
    p.add_argument("--methods", nargs=2, default=["delta", "transport"], metavar=("FIRST", "SECOND"))
    args = p.parse_args(argv)
    first, second = args.methods
    command = shlex.join(sys.argv[1:] if argv is None else argv)
    md = [
        f"# {first} against {second}, run by run",
        "",
        f"`python benchmarks/perturbation_paired.py{' ' + command if command else ''}` (reads the result files "
        "named below; trains nothing). What each column is: the script's docstring. Per cell type: mean difference "
        f"{second} − {first} over the seeds.",
        "",
    ]
    tables = []
    for name in args.results:
        table = paired(pd.read_csv(RESULTS / f"{name}.csv"), first, second)
        tables.append(table.assign(results=name))
        md += [f"## {name}.csv", "", markdown_table(table, ".4f"), ""]
    pd.concat(tables).to_csv(RESULTS / "perturbation_paired.csv", index=False, float_format="%.4f")
    (RESULTS / "perturbation_paired.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
