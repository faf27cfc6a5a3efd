"""How a model is trained and how one run executes, with no Lightning in sight (it is imported only when a model
trains, so ``import scvae`` and the command line start without it): :class:`TrainSettings` (saved with the model),
:class:`Runtime`, the defaults :func:`scvae.model.fit` derives from the data, where a trained model is kept, and
:class:`TrainingDiverged`. The Lightning plan that uses them is :mod:`scvae.plan`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import InputError, check_bool, check_int, check_number, check_seed
from .likelihoods import COUNT_LIKELIHOODS


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite before any usable weights were found."""


@dataclass
class TrainSettings:
    """How a model is trained, checked once here and saved with it; the names are :func:`scvae.model.fit`'s.

    ``kl_warmup_steps`` (minibatches), when given, replaces ``kl_warmup_epochs``; ``validation_size`` is the
    fraction of cells held out for the validation ELBO (0 when that would be under 3 cells); without early
    stopping, the weights returned are the average of those at the end of each of the last ``weight_averaging``
    (a fraction) of ``max_epochs`` (0: the final weights)."""

    max_epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 1e-6
    beta: float = 1.0
    kl_warmup_epochs: int = 0
    kl_warmup_steps: int | None = None
    early_stopping: bool = False
    weight_averaging: float = 0.0
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
        self.weight_averaging = check_number("weight_averaging", self.weight_averaging, low=0.0, high=1.0)
        if self.early_stopping and self.weight_averaging > 0:
            raise InputError(
                "weight_averaging averages the last epochs' weights, but early_stopping=True returns the best "
                "epoch's: set one of them, not both"
            )
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


RUN_DEFAULTS = (
    "the defaults (accelerator='auto', devices='auto', strategy='auto') train on a GPU when PyTorch sees one and "
    "on the CPU otherwise"
)


def check_devices(accelerator: Any, devices: Any) -> None:
    """An :class:`InputError` for an accelerator Lightning does not know, a GPU asked for where PyTorch sees none,
    or a device count below 1 (-1, all devices, is allowed); the rest is Lightning's to check."""
    if isinstance(accelerator, str):
        from lightning.pytorch.accelerators import AcceleratorRegistry  # here: Lightning is imported to train only

        # Lightning's registered accelerators and the two names its Trainer also takes
        accelerators = ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))
        if accelerator not in accelerators:
            raise InputError(f"accelerator must be one of {list(accelerators)}, got {accelerator!r}; {RUN_DEFAULTS}")
        apple = accelerator == "gpu" and torch.backends.mps.is_available()  # "gpu" is Apple's GPU there
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not apple:
            raise InputError(
                f"accelerator={accelerator!r}, but PyTorch sees no GPU here (torch.cuda.is_available() is False: "
                "no GPU, or a CPU-only build of torch); use accelerator='cpu', or 'auto' for a GPU when there is one"
            )
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and devices != -1 and devices < 1:
        raise InputError(f"devices must be a positive number of devices, -1 (all) or 'auto', got {devices!r}")


def default_max_epochs(n_cells: int) -> int:
    """About 3 million cell passes, between 20 and 200 epochs."""
    return int(np.clip(round(3e6 / max(n_cells, 1)), 20, 200))


def default_lr(likelihood: str) -> float:
    """Adam's learning rate when none is given: 4e-3 for count likelihoods (measured for them), else 1e-3."""
    return 4e-3 if likelihood in COUNT_LIKELIHOODS else 1e-3


def home_device(accelerator: str) -> str:
    """Where a trained model is kept for inference: the GPU when training could use one, else the CPU."""
    return "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"


def cuda_devices(accelerator: str) -> list[int]:
    """The CUDA devices whose random state training may touch (for ``torch.random.fork_rng``)."""
    return list(range(torch.cuda.device_count())) if home_device(accelerator) == "cuda" else []
