"""Training through PyTorch Lightning: the plan (loss, KL warm-up, per-epoch history), early stopping that keeps
the best weights, divergence detection and an epoch progress bar."""

from __future__ import annotations

import copy
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from tqdm.auto import tqdm

from .module import VAE

logger = logging.getLogger(__name__)

METRICS = ("elbo", "reconstruction", "kl")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite before any usable weights were found."""


@dataclass
class TrainSettings:
    max_epochs: int
    lr: float = 1e-3
    weight_decay: float = 1e-6
    beta: float = 1.0
    kl_warmup_steps: int = 0
    early_stopping: bool = True
    patience: int = 20
    min_delta: float = 0.0
    progress_bar: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class TrainingPlan(pl.LightningModule):
    """Wraps a :class:`~scvae.module.VAE`: minimises the negative ELBO with a linear KL warm-up and records
    per-epoch means of ELBO, reconstruction and KL (per cell) for training and validation.

    The validation ELBO always uses the full KL (weight 1): it is the bound itself, comparable across epochs.
    """

    def __init__(self, module: VAE, settings: TrainSettings) -> None:
        super().__init__()
        self.module = module
        self.settings = settings
        self.history: list[dict[str, float]] = []
        self._sums: dict[str, dict[str, torch.Tensor | float]] = {}

    def kl_weight(self) -> float:
        steps = self.settings.kl_warmup_steps
        warm = 1.0 if steps <= 0 else min(1.0, self.global_step / steps)
        return self.settings.beta * warm

    def _accumulate(self, split: str, out: dict[str, torch.Tensor]) -> None:
        rec, kl = out["reconstruction"].detach(), out["kl"].detach()
        sums = self._sums.setdefault(split, {"reconstruction": 0.0, "kl": 0.0, "n": 0})
        sums["reconstruction"] = sums["reconstruction"] + rec.sum()
        sums["kl"] = sums["kl"] + kl.sum()
        sums["n"] += rec.shape[0]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, cats = batch
        out = self.module.loss(x, cats, kl_weight=self.kl_weight())
        self._accumulate("train", out)
        return out["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, cats = batch
        self._accumulate("validation", self.module.loss(x, cats, kl_weight=1.0))

    def close_epoch(self) -> dict[str, float]:
        """This epoch's history row, computed once (callbacks call it from their ``on_train_epoch_end``,
        which Lightning runs after validation and before the module's own hook)."""
        epoch = float(self.current_epoch + 1)
        if self.history and self.history[-1]["epoch"] == epoch:
            return self.history[-1]
        row: dict[str, float] = {"epoch": epoch, "kl_weight": self.kl_weight()}
        for split, sums in self._sums.items():
            n = max(int(sums["n"]), 1)
            total = self.trainer.strategy.reduce(
                torch.stack([torch.as_tensor(sums["reconstruction"]), torch.as_tensor(sums["kl"])]).double(),
                reduce_op="sum",
            )
            n_all = self.trainer.strategy.reduce(torch.tensor(float(n), dtype=torch.float64), reduce_op="sum")
            rec, kl = (total / n_all).tolist()
            row[f"reconstruction_{split}"] = rec
            row[f"kl_{split}"] = kl
            row[f"elbo_{split}"] = rec - kl
        self._sums = {}
        self.history.append(row)
        return row

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.module.parameters(), lr=self.settings.lr, eps=0.01, weight_decay=self.settings.weight_decay
        )


class BestWeights(pl.Callback):
    """Keeps the weights with the best monitored ELBO (validation if there is a validation split, else
    training), stops after ``patience`` epochs without improvement once KL warm-up is over, and stops at once
    when the loss becomes NaN/inf. At the end of training the best weights are put back."""

    def __init__(self, monitor: str, settings: TrainSettings) -> None:
        self.monitor, self.settings = monitor, settings
        self.best = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.wait = 0
        self.diverged_at: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        row = plan.close_epoch()
        value = row.get(self.monitor, math.nan)
        finite = all(math.isfinite(v) for v in row.values()) and all(
            torch.isfinite(p).all() for p in plan.module.parameters()
        )
        if not finite:
            self.diverged_at = int(row["epoch"])
            trainer.should_stop = True
            return
        # During KL warm-up the bound is not yet what is optimised: keep the latest weights, do not count.
        warming = plan.kl_weight() < plan.settings.beta
        improved = value > self.best + self.settings.min_delta
        if warming or self.best_state is None or value > self.best:
            self.best_state = copy.deepcopy(plan.module.state_dict())
            self.best, self.best_epoch = value, int(row["epoch"])
        if warming or improved:
            self.wait = 0
        else:
            self.wait += 1
            if self.settings.early_stopping and self.wait >= self.settings.patience:
                logger.info(
                    "early stopping at epoch %d: %s has not improved for %d epochs (best %.2f at epoch %d)",
                    row["epoch"], self.monitor, self.wait, self.best, self.best_epoch,
                )
                trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if self.best_state is not None:
            plan.module.load_state_dict(self.best_state)


class EpochBar(pl.Callback):
    """One progress bar over epochs, showing the latest ELBOs."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if trainer.is_global_zero:
            self.bar = tqdm(total=self.max_epochs, desc="scvae", unit="epoch", dynamic_ncols=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if self.bar is not None:
            row = plan.close_epoch()
            shown = {k: f"{row[k]:.1f}" for k in ("elbo_train", "elbo_validation") if k in row}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def train(
    module: VAE,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader | None,
    settings: TrainSettings,
    *,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
) -> tuple[list[dict[str, float]], BestWeights]:
    """Train ``module`` in place; returns the per-epoch history and the early-stopping record."""
    plan = TrainingPlan(module, settings)
    monitor = "elbo_validation" if val_loader is not None else "elbo_train"
    best = BestWeights(monitor, settings)
    callbacks: list[pl.Callback] = [best]
    if settings.progress_bar:
        callbacks.append(EpochBar(settings.max_epochs))
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            max_epochs=settings.max_epochs,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            deterministic=False,
            **settings.extra,
        )
        trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_loader)
    if best.diverged_at is not None:
        causes = (
            "likely causes: a learning rate that is too high (try lr=1e-4), data that are not what the "
            "likelihood expects (e.g. normalised values with a count likelihood), or extreme outlier cells"
        )
        if best.best_state is None:
            raise TrainingDiverged(f"training diverged (loss became NaN/inf) at epoch {best.diverged_at}; {causes}")
        logger.warning(
            "training diverged (loss became NaN/inf) at epoch %d; kept the best weights, from epoch %d; %s",
            best.diverged_at, best.best_epoch, causes,
        )
    return plan.history, best


def default_max_epochs(n_cells: int) -> int:
    """About 3 million cell passes, between 20 and 400 epochs (early stopping usually ends sooner)."""
    return int(np.clip(round(3e6 / max(n_cells, 1)), 20, 400))
