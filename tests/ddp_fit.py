"""Trains on the bundled PBMCs with N CPU processes (Lightning DDP over gloo when N > 1) and writes the result as
JSON; run by tests/test_ddp.py as ``python tests/ddp_fit.py OUT.json N LR [FILE ...]``. With files, the cells are
read from disk as one collection (scvae.stores.open_files) in blocks of 50 rows, 32 cells per step, and each rank also writes how many
rows it read in training (``OUT.json.rank<R>``). Lightning starts the other ranks by running this script again, so
every rank trains; rank 0 writes the result."""

import json
import os
import sys

import torch

import scvae
import scvae.loaders
from scvae.metrics import knn_accuracy
from scvae.stores import open_files

ROWS_READ = [0]


def count_reads() -> None:
    """Count the rows the training loaders read from disk, in this process."""
    read = scvae.loaders.BackedRows.read

    def counted(self, rows):
        ROWS_READ[0] += rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        return read(self, rows)

    scvae.loaders.BackedRows.read = counted
    scvae.loaders.BLOCK_ROWS = 50


def main(out: str, devices: int, lr: float, files: list[str]) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    if files:
        count_reads()
        cells = open_files(files)
        labels = cells.obs["cell_type"]
    else:
        cells = scvae.datasets.pbmc68k()
        labels = cells.obs["cell_type"]
    model = scvae.model.fit(
        cells,
        max_epochs=40 if files else 80,
        seed=0,
        progress_bar=False,
        accelerator="cpu",
        devices=devices,
        lr=lr,
        strategy="ddp" if devices > 1 else "auto",
        batch_size=32 if files else 128,  # from files: 20 steps per epoch, so that the ranks' shares are halves
    )
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if files:
        with open(f"{out}.rank{rank}", "w") as f:
            json.dump({"rows_read": ROWS_READ[0], "epochs": len(model.history)}, f)
    if rank == 0:
        h = model.history
        result = {
            "knn": knn_accuracy(model.get_latent(cells), labels),
            "elbo_validation": float(h["elbo_validation"].max()),
            "epochs": len(h),
            "world_size": int(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else 1,
            "kl_weight_first_epochs": h["kl_weight"].head(3).tolist(),
        }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])
