"""Trains on the bundled PBMCs with N CPU processes (Lightning DDP over gloo when N > 1) and writes the result as
JSON; run by tests/test_ddp.py as ``python tests/ddp_fit.py OUT.json N LR``. Lightning starts the other ranks by
running this script again, so every rank trains; rank 0 writes the file."""

import json
import os
import sys

import torch

import scvae
from scvae.metrics import knn_accuracy


def main(out: str, devices: int, lr: float) -> None:
    torch.set_num_threads(1)  # the ranks share the machine's cores
    adata = scvae.datasets.pbmc68k()
    model = scvae.model.fit(
        adata,
        max_epochs=80,
        seed=0,
        progress_bar=False,
        accelerator="cpu",
        devices=devices,
        lr=lr,
        strategy="ddp" if devices > 1 else "auto",
    )
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        h = model.history
        result = {
            "knn": knn_accuracy(adata.obsm["X_scvae"], adata.obs["cell_type"]),
            "elbo_validation": float(h["elbo_validation"].max()),
            "epochs": len(h),
            "world_size": int(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else 1,
            "kl_weight_first_epochs": h["kl_weight"].head(3).tolist(),
        }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
