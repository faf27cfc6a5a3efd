"""How long what a newcomer runs first takes, as written: the README quickstart and every tutorial in full mode.

    python benchmarks/docs_timing.py

Each runs in its own Python process, one after the other, headless (``MPLBACKEND=Agg``) from a scratch folder;
the tutorials run without ``SCVAE_TUTORIAL_FAST`` (as a reader runs them) and redraw their figures in
``tutorials/figures/``. For the quickstart the script also measures what the test suite asserts on it
(``tests/test_docs.py``): 15-NN cell-line accuracy over singlets and the mixing of batches and of technologies
within cell lines (``scvae.metrics``). Writes ``benchmarks/results/docs_timing.{csv,md}``: wall time per item and
the lines each printed that carry a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _common import markdown_table

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"

QUICKSTART_SCORES = """
import json, scvae
singlet = adata.obs["is_singlet"].to_numpy()
print("SCORES " + json.dumps({
    "knn_accuracy": scvae.metrics.knn_accuracy(adata.obsm["X_scvae"][singlet], adata.obs["cell_type"][singlet]),
    "mixing_batch": scvae.metrics.batch_mixing(adata.obsm["X_scvae"], adata.obs["batch"], labels=adata.obs["cell_type"]),
    "mixing_tech": scvae.metrics.batch_mixing(adata.obsm["X_scvae"], adata.obs["tech"], labels=adata.obs["cell_type"]),
}))
"""


def run(name: str, argv: list[str], workdir: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "SCVAE_TUTORIAL_FAST"}
    env["MPLBACKEND"] = "Agg"
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return {"item": name, "seconds": round(seconds, 1)}, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    rows, printed = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "quickstart.py").write_text(code + QUICKSTART_SCORES)
        row, out = run("README quickstart", [sys.executable, "quickstart.py"], work)
        row.update(json.loads(next(ln for ln in out.splitlines() if ln.startswith("SCORES "))[7:]))
        rows.append(row)
        print(row, flush=True)
        for script in sorted((ROOT / "tutorials").glob("[0-9]*.py")):
            row, out = run(f"tutorials/{script.name}", [sys.executable, str(script)], work)
            rows.append(row)
            printed[script.name] = [ln for ln in out.splitlines() if re.search(r"\d\.\d", ln)]
            print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "docs_timing.csv", index=False)
    parts = [
        "# Time to run the README quickstart and the tutorials, as written\n",
        "`python benchmarks/docs_timing.py` (2-core CPU, one process at a time). What each row is: the script's "
        "docstring.\n",
        markdown_table(df) + "\n",
    ]
    for name, lines in printed.items():
        parts.append(f"## What tutorials/{name} printed (lines with figures)\n\n```\n" + "\n".join(lines) + "\n```\n")
    (args.out / "docs_timing.md").write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
