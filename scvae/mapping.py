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
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .data import (
    CategoryEncoder,
    InputError,
    check_int,
    check_key_added,
    obs_column,
    refuse_view,
)
from .module import VAE
from .settings import Runtime, TrainSettings, default_max_epochs, home_device
from .stores import check_labels, is_collection
from .trained import LATENT_KEY, SCVAE, TrainingRecord, write_latent

logger = logging.getLogger(__name__)


def map_query(
    model: SCVAE,
    query: AnnData,
    *,
    max_epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = TrainSettings.batch_size,
    seed: int = TrainSettings.seed,
    key_added: str = LATENT_KEY,
    progress_bar: bool = Runtime.progress_bar,
    validation_size: float = TrainSettings.validation_size,
    patience: int = TrainSettings.patience,
    accelerator: str = Runtime.accelerator,
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

    Writes ``query.obsm[key_added]`` (posterior mean of z of the query cells) and its record, ``query.uns["scvae"]``
    (for another ``key_added``: ``uns[key_added]`` without its leading ``"X_"``); changes
    nothing else in ``query``. ``model`` itself is not modified.

    Parameters
    ----------
    model
        The trained reference, conditioned on at least one label (fit with ``batch_key``).
    query
        Cells × genes with the model's genes (any order; extra genes are ignored), raw counts for count
        likelihoods, and every ``obs`` column the model is conditioned on (``model.labels.keys``), without
        missing values.
    max_epochs
        Default: about 3 million cell passes of the query, between 20 and 200 epochs; early stopping usually ends
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
    A new :class:`~scvae.model.SCVAE` that embeds reference and query cells. Its ``spec`` holds the extended
    categories, its ``settings`` and ``history`` the query training, and ``record.mapped_from`` the reference's
    categories, training settings and record, and the new categories per label.

    Examples
    --------
    >>> model = scvae.model.fit(reference, batch_key="batch")
    >>> mapped = model.map_query(query)                      # writes query.obsm["X_scvae"]
    >>> scvae.tl.transfer_labels(reference, query, label_key="cell_type")
    """
    if not isinstance(model, SCVAE):
        raise InputError(f"model must be a trained scvae.model.SCVAE, got {type(model).__name__}")
    if not isinstance(query, AnnData) and not is_collection(query):
        raise InputError(f"query must be an AnnData object, got {type(query).__name__}; e.g. sc.read_h5ad(path)")
    if isinstance(query, AnnData):
        refuse_view(query, "query")
    key_added = check_key_added(key_added, query)
    runtime = Runtime(accelerator=accelerator, devices=1, progress_bar=progress_bar)  # checks them too
    keys = model.labels.keys
    if not keys:
        raise InputError(
            "the reference model is conditioned on no labels, so there is no batch to map the query onto; fit the "
            "reference with batch_key= (e.g. scvae.model.fit(reference, batch_key='batch')), or embed the query "
            "directly with model.get_latent(query)"
        )
    check_labels(query, keys)
    missing = [k for k in keys if k not in query.obs.columns]
    if missing:
        raise InputError(
            f"query.obs lacks {missing}, which the model is conditioned on ({keys}); add them (e.g. "
            f"query.obs[{missing[0]!r}] = 'my_new_batch')"
        )
    for key in keys:
        obs_column(query, key, owner="query")  # every query cell needs a label
    n = query.n_obs
    settings = TrainSettings(
        max_epochs=check_int("max_epochs", max_epochs, optional=True) or default_max_epochs(n),
        lr=lr,
        batch_size=batch_size,
        weight_decay=0.0,  # Adam's decay would move frozen entries of partly trainable weights
        beta=model.settings.beta if model.settings is not None else TrainSettings.beta,
        kl_warmup_epochs=0,  # the reference is trained: no warm-up
        early_stopping=True,
        patience=patience,
        validation_size=validation_size,
        seed=seed,
    )

    ref_categories = copy.deepcopy(model.spec.categories)
    seen = CategoryEncoder.fit(query, keys).categories
    new_categories = {k: [c for c in seen[k] if c not in set(ref_categories[k])] for k in keys}
    new_categories = {k: v for k, v in new_categories.items() if v}

    spec = replace(model.spec, categories={k: ref_categories[k] + new_categories.get(k, []) for k in keys})
    # The reference's label classifiers served its training only; the query's new entries are learnt without them.
    config = replace(
        model.module.config,
        n_categories=[len(v) for v in spec.categories.values()],
        adversarial_weight=0.0,
        adversarial_indices=[],
    )
    ref_state = {
        k: v.detach().cpu().clone()
        for k, v in model.module.state_dict().items()
        if not k.startswith("label_classifiers.")
    }
    with torch.random.fork_rng(devices=[]):  # its random initial weights are all overwritten; spare the caller's RNG
        module = VAE(config)
    masks = _transplant(ref_state, module, [len(v) for v in ref_categories.values()], config.n_categories)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    # genes aligned and validated for the likelihood; the new code layout
    x, codes = SCVAE(module, spec).read(query, name="query")

    history, best_epoch = pd.DataFrame(), 0
    if not masks:
        logger.info("the query has no categories the reference has not seen: nothing to train; embedding it as is")
    else:
        logger.info(
            "mapping %d query cells; new categories: %s; training %d of %d weights",
            n,
            new_categories,
            sum(int(m.sum()) for m in masks.values()),
            sum(p.numel() for p in module.parameters()),
        )
        from .train import fit_module  # Lightning is imported when a model trains, not with scvae

        module, settings, history, best_epoch = fit_module(
            lambda rows: module, x, codes, settings, runtime, trainable=masks, owner="query"
        )
        moved = _restore_reference(module, initial, masks)
        if moved:  # cannot happen with zero gradients and no weight decay; kept exact regardless
            logger.warning("%d reference entries moved during query training; restored them", moved)
    module.eval()
    module.to(home_device(accelerator))

    record = TrainingRecord(
        epochs_trained=len(history),
        best_epoch=best_epoch,
        mapped_from={
            "reference_categories": ref_categories,
            "query_categories": new_categories,
            "reference_epochs_trained": model.record.epochs_trained,
            "reference_best_epoch": model.record.best_epoch,
            "reference_settings": None if model.settings is None else asdict(model.settings),
            "n_query_cells": int(n),
            **({"previous": copy.deepcopy(model.record.mapped_from)} if model.record.mapped_from else {}),
        },
    )
    mapped = SCVAE(module, spec, settings, record, history)
    write_latent(mapped, query, key_added)
    logger.info("mapped the query (%d epochs, best %d); wrote query.obsm[%r]", len(history), best_epoch, key_added)
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
