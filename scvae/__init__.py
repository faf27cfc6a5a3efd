"""scvae: variational autoencoders for single-cell count data, on AnnData.

import scanpy as sc, scvae
adata = scvae.datasets.cellbench()
model = scvae.model.fit(adata, batch_key="batch")     # writes adata.obsm["X_scvae"]
sc.pp.neighbors(adata, use_rep="X_scvae")
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scvae")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from . import datasets, metrics, model, pl, tl  # noqa: E402

__all__ = ["datasets", "metrics", "model", "pl", "tl", "__version__"]
