"""Training through PyTorch Lightning: :func:`train` runs a :class:`~scvae.plan.TrainingPlan` with the callbacks of
:mod:`scvae.callbacks` (best weights and early stopping, divergence detection, checkpoints, Ctrl-C, progress
bar); :func:`fit_module` is the whole pipeline that :func:`scvae.model.fit` and :func:`scvae.mapping.map_query`
share (split, seeded module, loaders, training)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from .callbacks import BestWeights, Checkpoint, DataOnDevice, EpochBar, StopOnInterrupt, read_checkpoint
from .data import InputError, split_indices
from .likelihoods import LIKELIHOODS
from .loaders import make_loaders, to_dense_float
from .module import VAE
from .plan import TrainingPlan
from .settings import RUN_DEFAULTS, Runtime, TrainingDiverged, TrainSettings, cuda_devices, home_device

__all__ = [
    "Runtime",
    "TrainSettings",
    "TrainingDiverged",
    "fit_module",
    "no_latent_log_likelihood",
    "read_checkpoint",
    "train",
]

logger = logging.getLogger(__name__)

CAUSES = (
    "likely causes: a learning rate that is too high (try lr=1e-4), data that are not what the "
    "likelihood expects (e.g. normalised values with a count likelihood), or extreme outlier cells"
)
# A kept ELBO this many times the no-latent model's log-likelihood below it means training blew up. The margin is
# wide: tests/test_model.py::test_divergence_is_reported_and_nan_never_written has a run at lr=1e3 refused and a
# barely trained model within 1.5 times of that log-likelihood.
BLOWN_UP_FACTOR = 10.0


@contextmanager
def _quiet_lightning():
    """Silence Lightning's start-up chatter and data-loader hints for the duration of a fit."""
    names = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
            warnings.filterwarnings("ignore", message=".*treespec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train(
    module: VAE,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader | None,
    settings: TrainSettings,
    runtime: Runtime | None = None,
    *,
    fingerprint: dict[str, Any] | None = None,
) -> tuple[list[dict[str, float]], BestWeights]:
    """Train ``module`` in place; returns the per-epoch history and the early-stopping record.

    ``settings.max_epochs`` counts from the start of the first run when resuming; ``fingerprint`` (the run's
    data and settings) goes into every checkpoint, for a resumed run to check against."""
    runtime = runtime or Runtime()
    plan = TrainingPlan(module, settings, runtime.resume)
    metric = "iwae" if module.objective == "iwae" else "elbo"  # the bound being optimised
    monitor = f"{metric}_validation" if val_loader is not None else f"{metric}_train"
    best = BestWeights(monitor, settings, runtime.resume)
    interrupt = StopOnInterrupt()
    callbacks: list[pl.Callback] = [DataOnDevice([train_loader, val_loader], runtime.data_on_device), best, interrupt]
    if runtime.checkpoint_dir is not None:
        callbacks.append(Checkpoint(runtime.checkpoint_dir, best, fingerprint or {}))
    if runtime.progress_bar:
        callbacks.append(EpochBar(settings.max_epochs, plan.start_epoch))
    remaining = settings.max_epochs - plan.start_epoch
    if remaining <= 0:
        logger.info("the checkpoint already holds all %d epochs; nothing left to train", settings.max_epochs)
        best.on_train_end(None, plan)  # type: ignore[arg-type]
        return plan.history, best
    with _quiet_lightning():
        trainer = _trainer(runtime, remaining, callbacks)
        try:
            trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_loader)
        finally:
            interrupt.restore()
    if interrupt.requested:
        logger.warning("training interrupted at epoch %d; kept %s", len(plan.history), best.kept())
    if best.diverged_at is not None:
        if best.best_state is None:
            raise TrainingDiverged(f"training diverged (loss became NaN/inf) at epoch {best.diverged_at}; {CAUSES}")
        logger.warning(
            "training diverged (loss became NaN/inf) at epoch %d; kept %s; %s", best.diverged_at, best.kept(), CAUSES
        )
    if best.diverged_at is None and not interrupt.requested:
        logger.info("kept %s", best.kept())
    return plan.history, best


def fit_module(
    make_module: Callable[[np.ndarray], VAE],
    x: Any,
    codes: np.ndarray,
    settings: TrainSettings,
    runtime: Runtime,
    *,
    trainable: dict[str, torch.Tensor] | None = None,
    fingerprint: dict[str, Any] | None = None,
    owner: str = "adata",
) -> tuple[VAE, TrainSettings, pd.DataFrame, int]:
    """The training pipeline of :func:`scvae.model.fit` and :func:`scvae.mapping.map_query`: the seeded
    validation split, the module (``make_module(train_rows)``, built under the run's seed), the minibatch loaders
    and :func:`train`, all inside ``torch.random.fork_rng`` so the caller's random state is left untouched.

    ``trainable`` ({parameter name: boolean mask}) trains only those entries, everything else frozen and batch
    norm in evaluation mode. Returns the trained module (in evaluation mode, on :func:`home_device`), the settings
    as run (the validation fraction actually held out, the batch size cut to the training cells), the history and
    the epoch whose weights were kept."""
    n = x.shape[0]
    val_size = settings.validation_size if n * settings.validation_size >= 3 else 0.0
    train_idx, val_idx = split_indices(n, val_size, settings.seed)
    if len(train_idx) < 3:
        held = f" ({len(val_idx)} held out by validation_size={val_size}: lower it)" if len(val_idx) else ""
        raise InputError(f"{owner} has {n} cells{held}; at least a handful are needed to train")
    settings = replace(settings, validation_size=val_size, batch_size=min(settings.batch_size, len(train_idx)))
    start_epoch = runtime.resume["epoch"] if runtime.resume else 0
    with torch.random.fork_rng(devices=cuda_devices(runtime.accelerator)):
        torch.manual_seed(settings.seed + start_epoch)
        module = make_module(train_idx)
        if runtime.resume:
            module.load_state_dict(runtime.resume["module"])
        loaders = make_loaders(x, codes, train_idx, val_idx, settings.batch_size, seed=settings.seed + start_epoch)
        with _trainable_entries(module, trainable):
            history, best = train(module, *loaders, settings, runtime, fingerprint=fingerprint)
    module.eval()
    module.to(home_device(runtime.accelerator))
    history = pd.DataFrame(history)
    _refuse_blown_up(history, int(best.best_epoch), x, val_idx if len(val_idx) else train_idx, module, settings.seed)
    return module, settings, history, int(best.best_epoch)


def no_latent_log_likelihood(x: np.ndarray, likelihood: str) -> float:
    """Mean per-cell log-likelihood of the cells ``x`` (dense) under ``likelihood``'s model with no latent space
    fitted to them (:meth:`scvae.likelihoods.Likelihood.without_latent`: for counts, Poisson with each gene a
    fixed share of the cell's total count). A trained VAE does better; one far worse has blown up."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return float(LIKELIHOODS[likelihood].without_latent(x).log_prob_sum(x).mean())


def _refuse_blown_up(history: pd.DataFrame, best_epoch: int, x: Any, rows: np.ndarray, module: VAE, seed: int) -> None:
    """Raise :class:`TrainingDiverged` when the kept weights' ELBO is finite but far below the no-latent model's
    log-likelihood on the same (held-out) cells: the weights blew up without reaching NaN."""
    split = "validation" if "elbo_validation" in history else "train"
    if best_epoch < 1 or f"elbo_{split}" not in history:
        return
    elbo = float(history[f"elbo_{split}"].iloc[best_epoch - 1])
    n = min(2000, max(100, 10_000_000 // x.shape[1]))  # at most 2,000 cells and 10 million entries, held dense
    rows = np.sort(np.random.default_rng(seed).permutation(np.asarray(rows))[:n])
    baseline = no_latent_log_likelihood(to_dense_float(x, rows), module.config.likelihood)
    if elbo < baseline - (BLOWN_UP_FACTOR - 1.0) * abs(baseline):
        raise TrainingDiverged(
            f"training diverged: the {split} ELBO of the weights kept (epoch {best_epoch}) is {elbo:.4g} per cell, "
            f"far below {baseline:.4g} for a model without a latent space; {CAUSES}"
        )


@contextmanager
def _trainable_entries(module: VAE, masks: dict[str, torch.Tensor] | None):
    """Within the block, only the entries of ``masks`` receive gradients (every other parameter is frozen) and
    batch norm keeps its running statistics; nothing changes when ``masks`` is None."""
    if masks is None:
        yield
        return
    handles = []
    for name, p in module.named_parameters():
        if name in masks:
            p.requires_grad_(True)
            handles.append(p.register_hook(lambda g, m=masks[name]: g.masked_fill(~m.to(g.device), 0.0)))
        else:
            p.requires_grad_(False)
    module.freeze_batchnorm = True
    module.train()  # Lightning keeps each submodule's mode as found at the start: batch norm stays in eval mode
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*in eval mode.*")  # the frozen batch norm, on purpose
            yield
    finally:
        for h in handles:
            h.remove()
        for p in module.parameters():
            p.requires_grad_(True)
        module.freeze_batchnorm = False


def _trainer(runtime: Runtime, max_epochs: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    """Lightning's trainer for ``runtime``, its refusals of the run settings turned into an :class:`InputError`
    that names them."""
    try:
        return pl.Trainer(
            accelerator=runtime.accelerator,
            devices=runtime.devices,
            strategy=runtime.strategy,
            num_nodes=runtime.num_nodes,
            max_epochs=max_epochs,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )
    except (MisconfigurationException, ValueError, TypeError, ImportError) as err:
        raise InputError(
            f"Lightning cannot run with accelerator={runtime.accelerator!r}, devices={runtime.devices!r}, "
            f"strategy={runtime.strategy!r}, num_nodes={runtime.num_nodes}: {err} ({RUN_DEFAULTS})"
        ) from err
