"""Reference mapping (scArches-style architecture surgery): place query cells from batches the reference never saw
into a trained model's latent space without moving it.

The one-hot label vector of the model grows by the query's new categories (appended after the reference's own, so
every reference code keeps its value). Every linear layer that reads that vector gains zero-initialised columns for
the new categories (and ``log_theta`` new rows for ``dispersion="gene-batch"``); only those new entries are
trained, on the query cells, with the reference's batch-norm statistics frozen. Reference cells therefore get the
same latent representation from the mapped model as from the reference (up to floating-point summation order),
and the reference part of every weight is bit-identical.

See :func:`map_query` (also :meth:`scvae.model.SCVAE.map_query`) and :func:`scvae.tl.transfer_labels`.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .data import (
    CategoryEncoder,
    InputError,
    align_genes,
    check_positive_int,
    get_matrix,
    obs_column,
    refuse_view,
    split_indices,
)
from .loaders import make_loaders
from .model import SCVAE, build_module, uns_record
from .module import VAE
from .train import TrainSettings, cuda_devices, default_max_epochs, home_device, train

logger = logging.getLogger(__name__)


def map_query(
    model: SCVAE,
    query: AnnData,
    *,
    max_epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    key_added: str = "X_scvae",
    progress_bar: bool = True,
    validation_size: float = 0.1,
    patience: int = 20,
    accelerator: str = "auto",
) -> SCVAE:
    """Map ``query`` cells onto a trained reference model (scArches-style) and return the extended model.

    The categories of ``query`` that the reference never saw (typically new batches of its ``batch_key``, but
    any label the model is conditioned on) are appended to the model's category lists. A new model is built with
    the wider one-hot encoding, all reference weights are copied into it, and only the new entries (the columns of
    every linear layer that reads the labels, and for ``dispersion="gene-batch"`` the new rows of ``log_theta``)
    are trained on the query cells; they start at zero (``log_theta``: the mean of the reference rows). Everything
    else is frozen, batch-norm layers keep the reference's running statistics, Adam runs without weight decay,
    and there is no KL warm-up. The reference part of every weight and buffer of the returned model is
    bit-identical to the reference's, so reference cells keep their place in the latent space.

    Writes ``query.obsm[key_added]`` (posterior mean of z of the query cells) and ``query.uns["scvae"]``; changes
    nothing else in ``query``. ``model`` itself is not modified.

    Parameters
    ----------
    model
        The trained reference, conditioned on at least one label (fit with ``batch_key``).
    query
        Cells × genes with the model's genes (any order; extra genes are ignored), raw counts for count
        likelihoods, and every ``obs`` column the model is conditioned on (``model.encoder.keys``), without
        missing values.
    max_epochs
        Default: about 3 million cell passes of the query, between 20 and 400 epochs; early stopping usually ends
        sooner.
    lr, batch_size
        Adam's learning rate (weight decay is always 0, see above) and the minibatch size (at most the number of
        training cells).
    seed
        Seeds the validation split, minibatch order and sampling; the caller's random state is left untouched.
    key_added
        ``obsm`` key of the query's latent representation.
    progress_bar
        Show a progress bar over epochs.
    validation_size, patience
        Fraction of query cells held out for the validation ELBO, and the number of epochs without improvement
        after which training stops (the best weights are kept).
    accelerator
        Passed to Lightning's ``Trainer`` (one device): ``"auto"`` uses a GPU if there is one.

    Returns
    -------
    A new :class:`~scvae.model.SCVAE` that embeds reference and query cells. Its config holds the extended
    categories and ``mapped_from`` (the reference's categories and training record, the new categories per label,
    the query training settings); its ``history`` is the query training.

    Examples
    --------
    >>> model = scvae.model.fit(reference, batch_key="batch")
    >>> mapped = model.map_query(query)                      # writes query.obsm["X_scvae"]
    >>> scvae.tl.transfer_labels(reference, query, label_key="cell_type")
    """
    if not isinstance(model, SCVAE):
        raise InputError(f"model must be a trained scvae.model.SCVAE, got {type(model).__name__}")
    if not isinstance(query, AnnData):
        raise InputError(f"query must be an AnnData object, got {type(query).__name__}; e.g. sc.read_h5ad(path)")
    refuse_view(query, "query")
    keys = model.encoder.keys
    if not keys:
        raise InputError(
            "the reference model is conditioned on no labels, so there is no batch to map the query onto; fit the "
            "reference with batch_key= (e.g. scvae.model.fit(reference, batch_key='batch')), or embed the query "
            "directly with model.get_latent(query)"
        )
    missing = [k for k in keys if k not in query.obs.columns]
    if missing:
        raise InputError(
            f"query.obs lacks {missing}, which the model is conditioned on ({keys}); add them (e.g. "
            f"query.obs[{missing[0]!r}] = 'my_new_batch')"
        )
    for key in keys:
        obs_column(query, key, owner="query")  # every query cell needs a label
    get_matrix(query, model.config.get("layer"))  # a clear error for a missing layer before the genes
    align_genes(query, model.genes)
    if max_epochs is not None:
        max_epochs = check_positive_int("max_epochs", max_epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    patience = check_positive_int("patience", patience)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise InputError(f"lr must be a positive number, got {lr!r}")
    if not 0 <= validation_size < 1:
        raise InputError(f"validation_size must be in [0, 1), got {validation_size!r}")

    ref_categories = copy.deepcopy(model.config["categories"])
    seen = CategoryEncoder.fit(query, keys).categories
    new_categories = {k: [c for c in seen[k] if c not in set(ref_categories[k])] for k in keys}
    new_categories = {k: v for k, v in new_categories.items() if v}

    config = copy.deepcopy(model.config)
    for key, cats in new_categories.items():
        config["categories"][key] = ref_categories[key] + cats
    # The reference's label classifiers served its training only; the query's new entries are learnt without them.
    config["adversarial_weight"] = 0.0
    ref_state = {
        k: v.detach().cpu().clone()
        for k, v in model.module.state_dict().items()
        if not k.startswith("label_classifiers.")
    }
    with torch.random.fork_rng(devices=[]):  # its random initial weights are all overwritten; spare the caller's RNG
        module = build_module(config)
    masks = _transplant(
        ref_state, module, [len(v) for v in ref_categories.values()], [len(v) for v in config["categories"].values()]
    )
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    mapped = SCVAE(module, config)
    x, codes = mapped.read(query)  # genes aligned and validated for the likelihood; codes in the new layout

    n = query.n_obs
    max_epochs = max_epochs or default_max_epochs(n)
    val_size = validation_size if n * validation_size >= 3 else 0.0
    train_idx, val_idx = split_indices(n, val_size, seed)
    record: dict[str, Any] = {
        "reference_categories": ref_categories,
        "query_categories": new_categories,
        "reference_epochs_trained": int(model.config.get("epochs_trained", 0)),
        "reference_best_epoch": int(model.config.get("best_epoch", 0)),
        "n_query_cells": int(n),
        "max_epochs": int(max_epochs),
        "lr": float(lr),
        "batch_size": int(min(batch_size, max(len(train_idx), 1))),
        "validation_size": float(val_size),
        "patience": int(patience),
        "seed": int(seed),
    }
    if "mapped_from" in model.config:  # a model mapped before: keep that record too
        record["previous"] = copy.deepcopy(model.config["mapped_from"])

    history: list[dict[str, float]] = []
    best_epoch = 0
    if not masks:
        logger.info("the query has no categories the reference has not seen: nothing to train; embedding it as is")
    else:
        if len(train_idx) < 3:
            raise InputError(f"query has {n} cells; at least a handful are needed to learn its new categories")
        logger.info(
            "mapping %d query cells; new categories: %s; training %d of %d weights",
            n,
            new_categories,
            sum(int(m.sum()) for m in masks.values()),
            sum(p.numel() for p in module.parameters()),
        )
        history, best_epoch = _train_new_entries(
            module,
            masks,
            x,
            codes,
            train_idx,
            val_idx,
            record["batch_size"],
            max_epochs,
            lr,
            patience,
            float(config.get("beta", 1.0)),
            seed,
            progress_bar,
            accelerator,
            config,
        )
        moved = _restore_reference(module, initial, masks)
        if moved:  # cannot happen with zero gradients and no weight decay; kept exact regardless
            logger.warning("%d reference entries moved during query training; restored them", moved)
    module.eval()
    module.to(home_device(accelerator))

    hist = pd.DataFrame(history)
    config["epochs_trained"] = len(hist)
    config["best_epoch"] = int(best_epoch)
    config["mapped_from"] = record
    mapped = SCVAE(module, config, hist)
    latent = mapped.get_latent(query)  # raises before anything is written if the weights are not usable

    query.obsm[key_added] = latent
    query.uns["scvae"] = uns_record(config, hist, key_added)
    logger.info("mapped the query (%d epochs, best %d); wrote query.obsm[%r]", len(hist), best_epoch, key_added)
    return mapped


def _transplant(
    ref_state: dict[str, torch.Tensor], module: VAE, old_sizes: list[int], new_sizes: list[int]
) -> dict[str, torch.Tensor]:
    """Copy the reference weights into ``module`` (built with ``new_sizes`` categories per label) and return, for
    every parameter with new entries, a boolean mask of those entries.

    The one-hot vector is always the last block of a linear layer's input (``cat([x, cov])``), so a widened weight
    keeps its first columns; within the one-hot block, label i's old columns move to the start of its new block."""
    old_off, new_off = np.cumsum([0, *old_sizes]), np.cumsum([0, *new_sizes])
    kept = np.concatenate([new_off[i] + np.arange(k) for i, k in enumerate(old_sizes)]).astype(np.int64)
    added = np.setdiff1d(np.arange(new_off[-1]), kept)
    n_old, n_new = int(old_off[-1]), int(new_off[-1])
    masks: dict[str, torch.Tensor] = {}
    params = dict(module.named_parameters())
    state = module.state_dict()  # shares storage with the parameters and buffers
    if set(state) != set(ref_state):
        raise RuntimeError(f"internal error: the extended module's entries differ: {set(state) ^ set(ref_state)}")
    with torch.no_grad():
        for name, new in state.items():
            old = ref_state[name].to(new.dtype)
            if old.shape == new.shape:
                new.copy_(old)
                continue
            mask = torch.zeros(new.shape, dtype=torch.bool)
            if name == "log_theta":  # gene-batch dispersion: rows of the batch label, new ones appended
                r = old.shape[0]
                new[:r] = old
                new[r:] = old.mean(0, keepdim=True)
                mask[r:] = True
            elif new.dim() == 2 and new.shape[0] == old.shape[0] and new.shape[1] - old.shape[1] == n_new - n_old:
                base = old.shape[1] - n_old  # width of the non-label part of the input
                new.zero_()
                new[:, :base] = old[:, :base]
                new[:, base + torch.from_numpy(kept)] = old[:, base:]
                mask[:, base + torch.from_numpy(added)] = True
            else:
                raise RuntimeError(
                    f"internal error: cannot extend {name} from {tuple(old.shape)} to {tuple(new.shape)}"
                )
            if name not in params:
                raise RuntimeError(f"internal error: {name} grew but is not a parameter")
            masks[name] = mask
    return masks


def _restore_reference(module: VAE, initial: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> int:
    """Put back every entry outside ``masks`` that differs from ``initial`` (none should, in exact arithmetic);
    returns how many had moved."""
    moved = 0
    with torch.no_grad():
        for name, value in module.state_dict().items():
            start = initial[name].to(value.device)
            changed = value != start
            if name in masks:
                changed &= ~masks[name].to(value.device)
            n = int(changed.sum())
            if n:
                moved += n
                value.copy_(torch.where(changed, start, value))
    return moved


def _train_new_entries(
    module: VAE,
    masks: dict[str, torch.Tensor],
    x: Any,
    codes: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    batch_size: int,
    max_epochs: int,
    lr: float,
    patience: int,
    beta: float,
    seed: int,
    progress_bar: bool,
    accelerator: str,
    config: dict[str, Any],
) -> tuple[list[dict[str, float]], int]:
    """Train only the entries of ``masks`` (gradient masks, everything else frozen), batch norm in eval mode."""
    handles = []
    for name, p in module.named_parameters():
        if name in masks:
            p.requires_grad_(True)
            handles.append(p.register_hook(lambda g, m=masks[name]: g.masked_fill(~m.to(g.device), 0.0)))
        else:
            p.requires_grad_(False)
    module.freeze_batchnorm = True
    module.train()
    try:
        with torch.random.fork_rng(devices=cuda_devices(accelerator)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*in eval mode.*")  # the frozen batch norm, on purpose
            torch.manual_seed(seed)
            train_loader, val_loader = make_loaders(x, codes, train_idx, val_idx, batch_size, seed=seed)
            settings = TrainSettings(
                max_epochs=max_epochs,
                lr=lr,
                weight_decay=0.0,  # Adam's decay would move frozen entries of partly trainable weights
                beta=beta,
                kl_warmup_steps=0,  # the reference is trained: no warm-up
                early_stopping=True,
                patience=patience,
                progress_bar=progress_bar,
            )
            history, best = train(
                module, train_loader, val_loader, settings, accelerator=accelerator, devices=1, config=config
            )
    finally:
        for h in handles:
            h.remove()
        for p in module.parameters():
            p.requires_grad_(True)
        module.freeze_batchnorm = False
    return history, int(best.best_epoch)
