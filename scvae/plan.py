"""What training optimises and how it is set: :class:`TrainSettings` (saved with the model), :class:`Runtime`
(how one run executes) and :class:`TrainingPlan`, the Lightning module that minimises the negative ELBO with a KL
warm-up and records per-epoch history. The loop around it is :mod:`scvae.train`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.accelerators import AcceleratorRegistry

from .data import InputError, check_bool, check_int, check_number, check_seed
from .loaders import Minibatch
from .module import VAE, Loss

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite before any usable weights were found."""


@dataclass
class TrainSettings:
    """How a model is trained, checked once here and saved with it; the names are :func:`scvae.model.fit`'s.

    ``kl_warmup_steps`` (minibatches), when given, replaces ``kl_warmup_epochs``; ``validation_size`` is the
    fraction of cells held out for the validation ELBO (0 when that would be under 3 cells)."""

    max_epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 1e-6
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    kl_warmup_steps: int | None = None
    early_stopping: bool = False
    patience: int = 20
    validation_size: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.max_epochs = check_int("max_epochs", self.max_epochs)
        self.lr = check_number("lr", self.lr, low=0.0, strict=True)
        self.batch_size = check_int("batch_size", self.batch_size, 2)  # one cell: no batch statistics to learn from
        self.weight_decay = check_number("weight_decay", self.weight_decay, low=0.0)
        self.beta = check_number("beta", self.beta, low=0.0)
        self.kl_warmup_epochs = check_int("kl_warmup_epochs", self.kl_warmup_epochs, 0)
        self.kl_warmup_steps = check_int("kl_warmup_steps", self.kl_warmup_steps, 0, optional=True)
        self.early_stopping = check_bool("early_stopping", self.early_stopping)
        self.patience = check_int("patience", self.patience)
        self.validation_size = check_number("validation_size", self.validation_size, low=0.0, high=1.0)
        self.seed = check_seed(self.seed)


@dataclass
class Runtime:
    """How one run executes, not saved: Lightning's ``accelerator``, ``devices``, ``strategy`` and ``num_nodes``,
    whether the data live on the GPU (None: when they fit), the progress bar, and the checkpoint folder with the
    checkpoint read from it to continue (``resume``, see :func:`read_checkpoint`)."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    data_on_device: bool | None = None
    progress_bar: bool = True
    checkpoint_dir: Path | None = None
    resume: dict[str, Any] | None = None
    num_nodes: int = 1

    def __post_init__(self) -> None:
        self.num_nodes = check_int("num_nodes", self.num_nodes)
        check_devices(self.accelerator, self.devices)
        self.progress_bar = check_bool("progress_bar", self.progress_bar)
        if self.data_on_device is not None and not isinstance(self.data_on_device, (bool, np.bool_)):  # not 0 or 1
            raise InputError(
                f"data_on_device must be True, False or None (decide by free GPU memory), got {self.data_on_device!r}"
            )
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)


# Lightning's registered accelerators and the two names its Trainer also takes
ACCELERATORS = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
RUN_DEFAULTS = (
    "the defaults (accelerator='auto', devices='auto', strategy='auto') train on a GPU when PyTorch sees one and "
    "on the CPU otherwise"
)


def check_devices(accelerator: Any, devices: Any) -> None:
    """An :class:`InputError` for an accelerator Lightning does not know, a GPU asked for where PyTorch sees none,
    or a device count below 1 (-1, all devices, is allowed); the rest is Lightning's to check."""
    if isinstance(accelerator, str):
        if accelerator not in ACCELERATORS:
            raise InputError(f"accelerator must be one of {list(ACCELERATORS)}, got {accelerator!r}; {RUN_DEFAULTS}")
        apple = accelerator == "gpu" and torch.backends.mps.is_available()  # "gpu" is Apple's GPU there
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not apple:
            raise InputError(
                f"accelerator={accelerator!r}, but PyTorch sees no GPU here (torch.cuda.is_available() is False: "
                "no GPU, or a CPU-only build of torch); use accelerator='cpu', or 'auto' for a GPU when there is one"
            )
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and devices != -1 and devices < 1:
        raise InputError(f"devices must be a positive number of devices, -1 (all) or 'auto', got {devices!r}")


class TrainingPlan(pl.LightningModule):
    """Wraps a :class:`~scvae.module.VAE`: minimises the negative ELBO with a linear KL warm-up and records
    per-epoch means of ELBO, reconstruction and KL (per cell) for training and validation.

    The validation ELBO always uses the full KL (weight 1): it is the bound itself, comparable across epochs.
    """

    def __init__(self, module: VAE, settings: TrainSettings, resume: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.module = module
        self.settings = settings
        self.resume = resume
        self.warmup_steps = settings.kl_warmup_steps or 0
        resume = resume or {}
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
        if self.settings.kl_warmup_steps is None:
            self.warmup_steps = round(self.settings.kl_warmup_epochs * self.trainer.num_training_batches)

    def kl_weight(self) -> float:
        steps = self.warmup_steps
        warm = 1.0 if steps <= 0 else min(1.0, self.step / steps)
        return self.settings.beta * warm

    def _accumulate(self, split: str, out: Loss) -> None:
        rec, kl = out.reconstruction.detach(), out.kl.detach()
        sums = self._sums.setdefault(split, {"reconstruction": 0.0, "kl": 0.0, "n": 0})
        sums["reconstruction"] = sums["reconstruction"] + rec.sum()
        sums["kl"] = sums["kl"] + kl.sum()
        sums["n"] += rec.shape[0]
        if out.iwae is not None:  # objective="iwae": also the per-cell importance-weighted bound
            sums["iwae"] = sums.get("iwae", 0.0) + out.iwae.detach().sum()

    def training_step(self, batch: Minibatch, batch_idx: int) -> torch.Tensor:
        out = self.module.loss(batch, kl_weight=self.kl_weight())
        self._accumulate("train", out)
        return out.loss

    def validation_step(self, batch: Minibatch, batch_idx: int) -> None:
        self._accumulate("validation", self.module.loss(batch, kl_weight=1.0))

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
        # Fused Adam (one pass over all parameters): 2.9× as fast as the per-tensor loop, 1.16× per CPU training
        # step (benchmarks/results/kernels.md).
        device = next(self.module.parameters()).device.type
        opt = torch.optim.Adam(
            self.module.parameters(),
            lr=self.settings.lr,
            eps=0.01,
            weight_decay=self.settings.weight_decay,
            fused=True if device in ("cpu", "cuda") else None,
        )
        if self.resume is not None:
            opt.load_state_dict(self.resume["optimizer"])
        return opt
