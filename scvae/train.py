"""Training through PyTorch Lightning: the plan (loss, KL warm-up, per-epoch history), early stopping that keeps
the best weights, divergence detection and an epoch progress bar."""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributions as D
from .loaders import Minibatches, place_on
from .module import VAE

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite before any usable weights were found."""


@dataclass
class TrainSettings:
    max_epochs: int
    lr: float
    weight_decay: float = 1e-6
    beta: float = 1.0
    kl_warmup_steps: int = 0
    kl_warmup_epochs: float | None = None  # if given, replaces kl_warmup_steps: × this process's steps per epoch
    data_on_device: bool | None = None  # keep the data on the GPU and cut minibatches there (None: when it fits)
    early_stopping: bool = False
    patience: int = 20
    progress_bar: bool = True
    checkpoint_dir: Path | None = None
    resume: dict[str, Any] | None = None  # a checkpoint read by read_checkpoint(), to continue from


class TrainingPlan(pl.LightningModule):
    """Wraps a :class:`~scvae.module.VAE`: minimises the negative ELBO with a linear KL warm-up and records
    per-epoch means of ELBO, reconstruction and KL (per cell) for training and validation.

    The validation ELBO always uses the full KL (weight 1): it is the bound itself, comparable across epochs.
    """

    def __init__(self, module: VAE, settings: TrainSettings) -> None:
        super().__init__()
        self.module = module
        self.settings = settings
        resume = settings.resume or {}
        self.history: list[dict[str, float]] = list(resume.get("history", []))
        self.start_epoch = int(resume.get("epoch", 0))
        self.start_step = int(resume.get("step", 0))
        self._sums: dict[str, dict[str, torch.Tensor | float]] = {}

    @property
    def step(self) -> int:
        """Optimizer steps taken, counting those of the run this one resumed."""
        return self.start_step + self.global_step

    def on_train_start(self) -> None:
        # Steps per epoch are known only now (under DDP each process takes its share of the minibatches).
        if self.settings.kl_warmup_epochs is not None:
            self.settings.kl_warmup_steps = round(self.settings.kl_warmup_epochs * self.trainer.num_training_batches)

    def kl_weight(self) -> float:
        steps = self.settings.kl_warmup_steps
        warm = 1.0 if steps <= 0 else min(1.0, self.step / steps)
        return self.settings.beta * warm

    def _accumulate(self, split: str, out: dict[str, torch.Tensor]) -> None:
        rec, kl = out["reconstruction"].detach(), out["kl"].detach()
        sums = self._sums.setdefault(split, {"reconstruction": 0.0, "kl": 0.0, "n": 0})
        sums["reconstruction"] = sums["reconstruction"] + rec.sum()
        sums["kl"] = sums["kl"] + kl.sum()
        sums["n"] += rec.shape[0]
        if "iwae" in out:  # objective="iwae": also the per-cell importance-weighted bound
            sums["iwae"] = sums.get("iwae", 0.0) + out["iwae"].detach().sum()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, cats, nonzero = batch
        out = self.module.loss(x, cats, kl_weight=self.kl_weight(), nonzero=nonzero)
        self._accumulate("train", out)
        return out["loss"]

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, cats, nonzero = batch
        self._accumulate("validation", self.module.loss(x, cats, kl_weight=1.0, nonzero=nonzero))

    def close_epoch(self) -> dict[str, float]:
        """This epoch's history row, computed once (callbacks call it from their ``on_train_epoch_end``,
        which Lightning runs after validation and before the module's own hook)."""
        epoch = float(self.start_epoch + self.current_epoch + 1)
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
            if "iwae" in sums:
                iwae = self.trainer.strategy.reduce(torch.as_tensor(sums["iwae"]).double(), reduce_op="sum")
                row[f"iwae_{split}"] = float(iwae / n_all)
        self._sums = {}
        self.history.append(row)
        return row

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The fused Adam kernel (one pass over all parameters) is ~20 % of a CPU step faster than the per-tensor loop.
        device = next(self.module.parameters()).device.type
        opt = torch.optim.Adam(
            self.module.parameters(),
            lr=self.settings.lr,
            eps=0.01,
            weight_decay=self.settings.weight_decay,
            fused=True if device in ("cpu", "cuda") else None,
        )
        if self.settings.resume is not None:
            opt.load_state_dict(self.settings.resume["optimizer"])
        return opt


class BestWeights(pl.Callback):
    """Decides which weights training returns, and when it stops.

    With ``settings.early_stopping``: keeps the weights with the best monitored ELBO (validation if there is a
    validation split, else training), stops after ``patience`` epochs without improvement once KL warm-up is over,
    and puts the best weights back at the end. Without (the default): every epoch runs and the final weights are
    returned, as scvi-tools does; on small data the validation ELBO peaks long before the latent space has finished
    separating biology from batch, so the ELBO-best weights integrate batches less well
    (``benchmarks/results/integration_ablation.md``). Either way, a loss that becomes NaN/inf stops training at
    once and the last weights kept (best, or latest finite) are put back."""

    def __init__(self, monitor: str, settings: TrainSettings) -> None:
        self.monitor, self.settings = monitor, settings
        resume = settings.resume or {}
        self.best = float(resume.get("best", -math.inf))
        self.best_epoch = int(resume.get("best_epoch", 0))
        self.best_state: dict[str, torch.Tensor] | None = resume.get("best_state")
        self.wait = int(resume.get("wait", 0))
        self.diverged_at: int | None = None
        self.interrupted_at: int | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        row = plan.close_epoch()
        if self.monitor not in row:  # an epoch cut short (Ctrl-C) has no validation pass to judge it by
            return
        value = row[self.monitor]
        finite = all(math.isfinite(v) for v in row.values()) and all(
            torch.isfinite(p).all() for p in plan.module.parameters()
        )
        if not finite:
            self.diverged_at = int(row["epoch"])
            trainer.should_stop = True
            return
        if not self.settings.early_stopping:  # the latest finite weights are the ones returned
            self.best_state = copy.deepcopy(plan.module.state_dict())
            self.best, self.best_epoch = value, int(row["epoch"])
            return
        # During KL warm-up the bound is not yet what is optimised: keep the latest weights, do not count.
        warming = plan.kl_weight() < plan.settings.beta
        improved = value > self.best
        if warming or self.best_state is None or improved:
            self.best_state = copy.deepcopy(plan.module.state_dict())
            self.best, self.best_epoch = value, int(row["epoch"])
        if warming or improved:
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.settings.patience:
                logger.info(
                    "early stopping at epoch %d: %s has not improved for %d epochs (best %.2f at epoch %d)",
                    row["epoch"],
                    self.monitor,
                    self.wait,
                    self.best,
                    self.best_epoch,
                )
                trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if self.best_state is not None:
            plan.module.load_state_dict(self.best_state)


class Checkpoint(pl.Callback):
    """After every epoch, writes what is needed to continue training (weights, optimizer, history, early-stopping
    state) to ``directory/checkpoint.pt`` (tensors and plain Python values only: loadable with
    ``weights_only=True``)."""

    def __init__(self, directory: Path, best: BestWeights, config: dict[str, Any]) -> None:
        self.directory, self.best, self.config = Path(directory), best, config

    def on_train_epoch_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if not trainer.is_global_zero or self.best.diverged_at is not None:
            return
        row = plan.close_epoch()
        state = {
            "config": self.config,
            "epoch": int(row["epoch"]),
            "step": plan.step,
            "history": plan.history,
            "module": {k: v.detach().cpu() for k, v in plan.module.state_dict().items()},
            "optimizer": trainer.optimizers[0].state_dict(),
            "best": self.best.best,
            "best_epoch": self.best.best_epoch,
            "best_state": {k: v.cpu() for k, v in (self.best.best_state or {}).items()} or None,
            "wait": self.best.wait,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.directory / "checkpoint.pt")  # atomic: an interrupted write leaves the old one


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The state written by :class:`Checkpoint`, read without unpickling arbitrary objects."""
    path = Path(directory) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


class StopOnInterrupt(pl.Callback):
    """Turns Ctrl-C (SIGINT) during training into a clean stop after the current minibatch, so the best
    weights so far are kept and returned (Lightning's own handling exits the process)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        logger.warning("interrupt received: stopping after this minibatch and keeping the best weights so far")

    def on_train_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_train_batch_end(self, trainer: pl.Trainer, plan: TrainingPlan, *args: Any) -> None:
        if self.requested:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        self.restore()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class DataOnDevice(pl.Callback):
    """Moves the minibatch loaders' data to the device the model trains on, once, when it fits (see
    :func:`scvae.loaders.place_on`)."""

    def __init__(self, loaders: list[Any], resident: bool | None) -> None:
        self.loaders, self.resident = loaders, resident

    def on_fit_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        for loader in self.loaders:
            if isinstance(loader, Minibatches):
                place_on(loader, plan.device, self.resident)


class EpochBar(pl.Callback):
    """One progress bar over epochs, showing the latest ELBOs."""

    def __init__(self, max_epochs: int, start_epoch: int = 0) -> None:
        self.max_epochs, self.start_epoch = max_epochs, start_epoch
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        if trainer.is_global_zero:
            self.bar = tqdm(
                total=self.max_epochs, initial=self.start_epoch, desc="scvae", unit="epoch", dynamic_ncols=True
            )

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
    *,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    config: dict[str, Any] | None = None,
) -> tuple[list[dict[str, float]], BestWeights]:
    """Train ``module`` in place; returns the per-epoch history and the early-stopping record.

    ``settings.max_epochs`` counts from the start of the first run when resuming."""
    plan = TrainingPlan(module, settings)
    metric = "iwae" if getattr(module, "objective", "elbo") == "iwae" else "elbo"  # the bound being optimised
    monitor = f"{metric}_validation" if val_loader is not None else f"{metric}_train"
    best = BestWeights(monitor, settings)
    interrupt = StopOnInterrupt()
    callbacks: list[pl.Callback] = [DataOnDevice([train_loader, val_loader], settings.data_on_device), best, interrupt]
    if settings.checkpoint_dir is not None:
        callbacks.append(Checkpoint(settings.checkpoint_dir, best, config or {}))
    if settings.progress_bar:
        callbacks.append(EpochBar(settings.max_epochs, plan.start_epoch))
    remaining = settings.max_epochs - plan.start_epoch
    if remaining <= 0:
        logger.info("the checkpoint already holds all %d epochs; nothing left to train", settings.max_epochs)
        best.on_train_end(None, plan)  # type: ignore[arg-type]
        return plan.history, best
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            max_epochs=remaining,
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
            deterministic=False,
        )
        try:
            trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=val_loader)
        finally:
            interrupt.restore()
    if interrupt.requested:
        logger.warning(
            "training interrupted at epoch %d; kept the best weights, from epoch %d",
            len(plan.history),
            best.best_epoch,
        )
    if best.diverged_at is not None:
        causes = (
            "likely causes: a learning rate that is too high (try lr=1e-4), data that are not what the "
            "likelihood expects (e.g. normalised values with a count likelihood), or extreme outlier cells"
        )
        if best.best_state is None:
            raise TrainingDiverged(f"training diverged (loss became NaN/inf) at epoch {best.diverged_at}; {causes}")
        logger.warning(
            "training diverged (loss became NaN/inf) at epoch %d; kept the best weights, from epoch %d; %s",
            best.diverged_at,
            best.best_epoch,
            causes,
        )
    return plan.history, best


def default_max_epochs(n_cells: int) -> int:
    """About 3 million cell passes, between 20 and 200 epochs."""
    return int(np.clip(round(3e6 / max(n_cells, 1)), 20, 200))


def default_lr(likelihood: str) -> float:
    """Adam's learning rate when none is given: 4e-3 for count likelihoods (measured for them), else 1e-3."""
    return 4e-3 if likelihood in D.COUNT_LIKELIHOODS else 1e-3


def home_device(accelerator: str) -> str:
    """Where a trained model is kept for inference: the GPU when training could use one, else the CPU."""
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def cuda_devices(accelerator: str) -> list[int]:
    """The CUDA devices whose random state training may touch (for ``torch.random.fork_rng``)."""
    return list(range(torch.cuda.device_count())) if home_device(accelerator) == "cuda" else []
