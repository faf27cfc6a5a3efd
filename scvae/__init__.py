"""scvae: variational autoencoders for single-cell count data, on AnnData.

import scanpy as sc, scvae
adata = scvae.datasets.cellbench()
model = scvae.model.fit(adata, batch_key="batch")     # writes adata.obsm["X_scvae"]
sc.pp.neighbors(adata, use_rep="X_scvae")
"""

from . import datasets, de, mapping, metrics, model, objectives, perturbation, pl, tl
from .model import SCVAE
from .version import __version__

# The features are functions of their own modules, each taking the model first; they are attached to SCVAE here,
# with their own signatures and docstrings, so that ``model.predict_perturbation(adata, ...)`` works while
# model.py depends on none of them (tests/test_architecture.py checks the direction of every import).
SCVAE.predict_perturbation = perturbation.predict_perturbation
SCVAE.differential_expression = de.differential_expression
SCVAE.map_query = mapping.map_query
SCVAE.log_likelihood = objectives.log_likelihood
SCVAE.plot_history = pl.history

__all__ = ["datasets", "metrics", "model", "pl", "tl", "__version__"]
