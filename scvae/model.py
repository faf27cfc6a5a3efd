"""Training: :func:`fit` trains a (conditional) VAE on an AnnData, writes its latent space into ``adata.obsm`` and
returns the trained :class:`~scvae.trained.SCVAE`, which :func:`load` reads back from disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .data import (
    CategoryEncoder,
    DataSpec,
    InputError,
    check_int,
    check_key_added,
    refuse_view,
)
from .likelihoods import COUNT_LIKELIHOODS
from .loaders import to_dense_float
from .module import VAE, ModuleConfig
from .settings import Runtime, TrainSettings, default_lr, default_max_epochs
from .stores import check_labels, is_collection, matrix, validate
from .trained import LATENT_KEY, SCVAE, TrainingRecord, load, module_config, write_latent

__all__ = ["SCVAE", "fit", "load"]

logger = logging.getLogger(__name__)

# Defaults with a batch_key (benchmarks/results/integration_ablation.md); with only a condition_key the adversary
# keeps the weight the perturbation benchmarks were measured with.
BATCH_ADVERSARIAL_WEIGHT, CONDITION_ADVERSARIAL_WEIGHT, BATCH_WEIGHT_AVERAGING = 5.0, 3.0, 0.25


def fit(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    condition_key: str | None = None,
    covariate_keys: Sequence[str] | None = None,
    likelihood: str = ModuleConfig.likelihood,
    n_latent: int = ModuleConfig.n_latent,
    n_hidden: int = ModuleConfig.n_hidden,
    n_layers: int = ModuleConfig.n_layers,
    dispersion: str = ModuleConfig.dispersion,
    encode_covariates: bool = ModuleConfig.encode_covariates,
    adversarial_weight: float | None = None,
    dropout: float = ModuleConfig.dropout,
    norm: str = ModuleConfig.norm,
    max_epochs: int | None = None,
    batch_size: int = TrainSettings.batch_size,
    lr: float | None = None,
    weight_decay: float = TrainSettings.weight_decay,
    beta: float = TrainSettings.beta,
    kl_warmup_epochs: int | None = None,
    kl_warmup_steps: int | None = TrainSettings.kl_warmup_steps,
    objective: str = ModuleConfig.objective,
    n_importance: int = ModuleConfig.n_importance,
    prior: str = ModuleConfig.prior,
    n_pseudo_inputs: int = ModuleConfig.n_pseudo_inputs,
    validation_size: float = TrainSettings.validation_size,
    early_stopping: bool = TrainSettings.early_stopping,
    patience: int = TrainSettings.patience,
    weight_averaging: float | None = None,
    seed: int = TrainSettings.seed,
    key_added: str = LATENT_KEY,
    accelerator: str = Runtime.accelerator,
    devices: int | str = Runtime.devices,
    strategy: str = Runtime.strategy,
    num_nodes: int = Runtime.num_nodes,
    progress_bar: bool = Runtime.progress_bar,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    data_on_device: bool | None = Runtime.data_on_device,
) -> SCVAE:
    """Train a VAE (or a conditional VAE) on the counts in ``adata`` and write its latent space.

    Writes ``adata.obsm[key_added]`` (posterior mean of z, cells × ``n_latent``) and the run's record (its
    settings and the ELBO of its last epoch, or with early stopping of the epoch kept) in ``adata.uns["scvae"]``,
    or for another ``key_added`` in ``uns[key_added]`` without its leading ``"X_"``; changes nothing else in
    ``adata``.

    Parameters
    ----------
    adata
        Cells × genes. Raw counts (integers, any dtype, dense or sparse) for count likelihoods. Cells with no
        counts are refused (filter them with ``sc.pp.filter_cells(adata, min_counts=1)``); genes with no counts
        are kept and learned as (nearly) never expressed. A backed AnnData (``sc.read_h5ad(path, backed="r")``)
        is trained on from disk: ``X`` is read in blocks of contiguous cells (shuffled block by block, the next
        blocks read by a worker thread while the model trains), never whole, so data larger than memory can be
        used. So are a zarr store (:func:`scvae.stores.open_zarr`) and several files as one collection
        (:func:`scvae.stores.open_files`, or any ``AnnCollection`` of backed files); a collection holds no
        results, so nothing is written for it: ``model.get_latent(collection)`` gives the latent space.
    layer
        Read the data from ``adata.layers[layer]`` instead of ``adata.X``.
    batch_key, condition_key, covariate_keys
        Categorical ``obs`` columns to condition on (cVAE): one-hot encoded and given to the decoder (and to
        the encoder unless ``encode_covariates=False``). ``batch_key`` is the one corrected for, and the one
        ``dispersion="gene-batch"`` and ``transform_batch`` refer to; ``condition_key`` is a perturbation or
        condition for counterfactual decoding.
    likelihood
        ``"nb"`` (negative binomial, default), ``"zinb"``, ``"poisson"``, ``"gaussian"`` (continuous, e.g.
        log-normalised data) or ``"bernoulli"`` (detection: x > 0).
    n_latent, n_hidden, n_layers
        Latent dimension and the width and depth of encoder and decoder.
    dispersion
        ``"gene"`` or ``"gene-batch"`` (NB/ZINB inverse dispersion per gene, or per gene and batch).
    encode_covariates, dropout, norm
        Give the labels to the encoder; dropout rate; ``"batch"``, ``"layer"`` or ``"none"`` normalisation.
    adversarial_weight
        Weight of adversarial label classifiers on the latent space (see :class:`scvae.module.ModuleConfig`): for
        ``batch_key`` and ``condition_key`` each, a small network learns to tell the label from z while the
        encoder learns to defeat it, so z keeps less of the batch and of the condition (which still reach the
        decoder). Default (None): 5 with a ``batch_key``, 3 with only a ``condition_key`` (the weight the
        perturbation benchmarks were measured with), else 0 (none); 0 turns it off. Covariates are not touched.
        Batches mix further for the same cell-type separation (``benchmarks/results/integration.md``,
        ``integration_ablation.md``).
    max_epochs
        Default: about 3 million cell passes, between 20 and 200 epochs (200 for up to 15,000 cells).
    batch_size, lr, weight_decay
        Minibatch size and Adam's learning rate and weight decay. Default ``lr``: 4e-3 for the count likelihoods
        (``nb``, ``zinb``, ``poisson``), 1e-3 for ``gaussian`` and ``bernoulli`` (4e-3 was measured for counts
        only). For counts 4e-3 (scvi-tools: 1e-3) takes the latent space nearly as far in 200 epochs as 1e-3 does
        in 400, in half the time (``benchmarks/results/integration_ablation.md``). Larger minibatches run more
        cells per second on large data (``benchmarks/results/speed_vs_scvi_batch256.md``); raise ``lr`` with
        them. If training diverges, lower ``lr``.
    beta, kl_warmup_epochs, kl_warmup_steps
        Weight of the KL term, reached linearly over ``kl_warmup_epochs`` (default: a quarter of
        ``max_epochs``, at most 50; 0 for none). ``kl_warmup_steps`` (minibatches), if given, replaces
        ``kl_warmup_epochs``. The weight of each epoch is the ``kl_weight`` column of ``model.history``.
    objective, n_importance
        ``"elbo"`` (default) or ``"iwae"``: the importance-weighted bound with ``n_importance`` = K samples
        per cell (for ``"elbo"``, K > 1 averages the ELBO over K samples). With IWAE, beta and the warm-up
        weight log p(z) - log q(z | x) inside every importance weight (see :mod:`scvae.module`).
    prior, n_pseudo_inputs
        ``"normal"`` (N(0, I)) or ``"vamp"``: a VampPrior, the mixture of the encoder's posteriors at
        ``n_pseudo_inputs`` learned pseudo-inputs, initialised from random training cells; its KL is estimated
        by Monte Carlo. Pseudo-inputs carry no labels (see :mod:`scvae.priors`).
    validation_size
        Fraction of cells held out (seeded) for the validation ELBO (in ``model.history``; early stopping
        watches it).
    early_stopping, patience
        ``False`` (default): train all ``max_epochs`` and return the final weights, as scvi-tools does. ``True``:
        stop when the validation ELBO has not improved for ``patience`` epochs after warm-up and return the
        weights of the best validation ELBO. The ELBO-best weights model held-out cells best, but on small data
        they come long before the latent space has finished separating biology from batch: on Kang (condition
        as batch, 2,000 genes) they mixed the two conditions less well than the final weights, for the same
        cell-type separation: mixing 0.790 against 0.908 after 400 epochs at lr 1e-3, seed 0
        (``benchmarks/results/integration_ablation.md``).
    weight_averaging
        Without early stopping, return the average of the weights at the end of each of the last
        ``weight_averaging`` (a fraction) of ``max_epochs`` instead of the final weights (stochastic weight
        averaging); 0 for the final weights. Default (None): 0.25 with a ``batch_key``, else 0. The final weights
        of a run at lr 4e-3 differ from seed to seed in how they split cell types; their average much less so:
        on Kang with all genes (adversarial weight 3, seeds 0-2) scIB bio conservation ran 0.725-0.729 against
        0.718-0.745 for the final weights (``benchmarks/results/integration_ablation/averaging_adversarial_3.md``,
        ``integration_all_genes_scvae.md``). With weight 5 as well, scvae's scIB total is ahead of scVI's beyond
        the seed spread on all four cases of ``benchmarks/results/integration_ablation.md``.
    seed
        Seeds weights, minibatch order, the validation split and sampling. The caller's random state
        (torch, numpy, random) is left untouched.
    key_added
        ``obsm`` key of the latent representation.
    accelerator, devices, strategy, num_nodes
        Passed to Lightning's ``Trainer``: ``"auto"`` uses a GPU if there is one; ``strategy="ddp"`` with
        ``devices=N`` trains on N devices (GPUs, or CPU processes with ``accelerator="cpu"``), each process on its
        own share of every epoch's minibatches. Each process takes ``batch_size`` cells per step, so a step sees
        N × ``batch_size`` cells and an epoch has 1/N of the steps: raise ``lr`` with N to train as far in as
        many epochs (the DDP test doubles lr 1e-3 for two processes; scaling up the default 4e-3 has not been
        measured). ``"ddp"`` runs the calling script again in each new process (run it as a
        script, not in a notebook); every process returns a model, and only rank 0 (``RANK`` 0) should
        write files. Under ``torchrun`` or SLURM, Lightning takes the processes it is given (it starts none);
        ``devices`` is then the processes per node and ``num_nodes`` the nodes (see the README's recipe). From
        files on disk (a backed AnnData, a collection, a zarr store) each process reads only the blocks of its
        own minibatches.
    data_on_device
        Keep the count matrix on the GPU (sparse, copied there once) and cut minibatches there, with no copy
        from the host per step. ``None`` (default): when it takes less than half of the free GPU memory; else
        minibatches are cut on the host and copied one by one. Ignored on the CPU.
    progress_bar
        Show a progress bar over epochs.
    checkpoint_dir, resume
        Write a checkpoint to ``checkpoint_dir`` after every epoch; with ``resume=True``, continue the run saved
        there (same data and settings; ``max_epochs`` counts from the start of that run). Ctrl-C during training
        stops cleanly after the current minibatch and keeps the weights of the last complete epoch (with
        ``early_stopping=True``, the best so far), with or without checkpoints.

    Returns
    -------
    The trained :class:`SCVAE`: ``model.history`` holds per-epoch ELBO, reconstruction and KL (per cell); the
    settings are ``model.spec`` (data), ``model.module.config`` (architecture) and ``model.settings`` (training),
    each checked once where it is declared and saved with the weights.

    Examples
    --------
    >>> adata = scvae.datasets.cellbench()
    >>> model = scvae.model.fit(adata, batch_key="batch")
    >>> sc.pp.neighbors(adata, use_rep="X_scvae")
    """
    if not isinstance(adata, AnnData) and not is_collection(adata):
        raise InputError(
            f"expected an AnnData object or an AnnCollection, got {type(adata).__name__}; e.g. adata = "
            "sc.read_h5ad(path), or scvae.stores.open_files(paths) for several files"
        )
    if isinstance(adata, AnnData):
        refuse_view(adata)
    key_added = check_key_added(key_added, adata)
    x = matrix(adata, layer)  # refuses an empty AnnData or a missing layer before anything else is built
    if isinstance(covariate_keys, str):
        covariate_keys = [covariate_keys]
    for name, key in (("batch_key", batch_key), ("condition_key", condition_key)):
        if key is not None and not isinstance(key, str):
            raise InputError(f"{name} must be the name of one obs column (a string), got {key!r}")
    if not all(isinstance(k, str) for k in covariate_keys or []):
        raise InputError(f"covariate_keys must be obs column names (strings), got {covariate_keys!r}")
    keys = [k for k in (batch_key, condition_key, *(covariate_keys or [])) if k is not None]
    if len(set(keys)) != len(keys):
        raise InputError(f"batch_key, condition_key and covariate_keys must be different columns, got {keys}")
    if not pd.Index(adata.var_names).is_unique:
        raise InputError("adata.var_names are not unique; call adata.var_names_make_unique() first")
    check_labels(adata, keys)
    labels = CategoryEncoder.fit(adata, keys)
    if condition_key is not None and len(labels.categories[condition_key]) < 2:
        raise InputError(
            f"adata.obs[{condition_key!r}] has a single category ({labels.categories[condition_key]}); a condition "
            "needs at least two (e.g. control and stimulated). Pass it as a covariate or drop condition_key"
        )
    for key, cats in labels.categories.items():  # e.g. a cell barcode passed as the batch
        if len(cats) > max(100, adata.n_obs // 2):
            logger.warning(
                "adata.obs[%r] has %d categories for %d cells, where a label (a batch, a condition) has a few; check "
                "that it is the column you meant",
                key,
                len(cats),
                adata.n_obs,
            )
    spec = DataSpec(
        genes=[str(g) for g in adata.var_names],
        categories=labels.categories,
        layer=layer,
        batch_key=batch_key,
        condition_key=condition_key,
        covariate_keys=list(covariate_keys or []),
    )
    if adversarial_weight is None:
        adversarial_weight = (
            BATCH_ADVERSARIAL_WEIGHT if batch_key else CONDITION_ADVERSARIAL_WEIGHT if condition_key else 0.0
        )
    if weight_averaging is None:
        weight_averaging = BATCH_WEIGHT_AVERAGING if batch_key and not early_stopping else 0.0
    arch = module_config(
        spec,
        n_latent=n_latent,
        n_hidden=n_hidden,
        n_layers=n_layers,
        likelihood=likelihood,
        dispersion=dispersion,
        encode_covariates=encode_covariates,
        dropout=dropout,
        norm=norm,
        prior=prior,
        n_pseudo_inputs=n_pseudo_inputs,
        objective=objective,
        n_importance=n_importance,
        adversarial_weight=adversarial_weight,
    )
    max_epochs = check_int("max_epochs", max_epochs, optional=True) or default_max_epochs(adata.n_obs)
    settings = TrainSettings(
        max_epochs=max_epochs,
        lr=default_lr(likelihood) if lr is None else lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        beta=beta,
        kl_warmup_epochs=min(max_epochs // 4, 50) if kl_warmup_epochs is None else kl_warmup_epochs,
        kl_warmup_steps=kl_warmup_steps,
        early_stopping=early_stopping,
        weight_averaging=weight_averaging,
        patience=patience,
        validation_size=validation_size,
        seed=seed,
    )
    if resume and checkpoint_dir is None:
        raise InputError("resume=True needs checkpoint_dir, the folder of the run to continue")
    runtime = Runtime(accelerator, devices, strategy, data_on_device, progress_bar, checkpoint_dir, num_nodes=num_nodes)

    validate(x, likelihood, counts=likelihood in COUNT_LIKELIHOODS, where=spec.where())
    codes = labels.encode(adata)

    from .train import fit_module, read_checkpoint  # Lightning is imported when a model trains, not with scvae

    fingerprint = {"data": asdict(spec), "module": asdict(arch), "training": asdict(settings)}
    if resume:
        runtime.resume = read_checkpoint(checkpoint_dir)
        if kl_warmup_epochs is None:  # the default depends on max_epochs, which may differ when resuming
            saved = runtime.resume.get("config", {}).get("training", {})
            settings.kl_warmup_epochs = saved.get("kl_warmup_epochs", settings.kl_warmup_epochs)
            fingerprint["training"] = asdict(settings)
        _check_checkpoint_matches(runtime.resume, fingerprint, checkpoint_dir)

    def make_module(train_rows: Any) -> VAE:
        module = VAE(arch)
        if arch.prior == "vamp":  # pseudo-inputs start as random training cells (seeded)
            rows = np.random.default_rng(seed).choice(
                train_rows, arch.n_pseudo_inputs, replace=len(train_rows) < arch.n_pseudo_inputs
            )
            module.init_pseudo_inputs(torch.from_numpy(to_dense_float(x, rows)))
        return module

    module, settings, history, best_epoch = fit_module(
        make_module, x, codes, settings, runtime, fingerprint=fingerprint
    )
    model = SCVAE(module, spec, settings, TrainingRecord(len(history), best_epoch), history)
    write_latent(model, adata, key_added)
    logger.info("trained %d epochs; wrote adata.obsm[%r]", len(history), key_added)
    return model


# Settings that may differ between a run and its resumption (they change when training stops or which weights it
# returns, not what it fits; a checkpoint written before weight averaging existed has no such setting).
_RESUMABLE = ("max_epochs", "early_stopping", "patience", "weight_averaging")


def _check_checkpoint_matches(checkpoint: dict[str, Any], fingerprint: dict[str, Any], checkpoint_dir: Any) -> None:
    saved = checkpoint.get("config", {})
    differ = sorted(
        f"{part}.{k}" if part != "training" else k
        for part in set(saved) | set(fingerprint)
        for k in set(saved.get(part, {})) | set(fingerprint.get(part, {}))
        if not (part == "training" and k in _RESUMABLE)
        and saved.get(part, {}).get(k) != fingerprint.get(part, {}).get(k)
    )
    if differ:
        raise InputError(
            f"the checkpoint in {checkpoint_dir} was made with other data or settings ({', '.join(differ)} differ); "
            "resume with the same adata and arguments, or start a new run in an empty checkpoint_dir"
        )
