"""The callbacks of a training run. Each is one that Lightning lacks in the form needed, as its docstring says:
the weights kept in memory (best or last) rather than on disk, checkpoints loadable with ``weights_only=True``
that carry those weights and the run's fingerprint, Ctrl-C as a clean stop rather than an exit, and one bar over
epochs rather than one per epoch."""

from __future__ import annotations

import copy
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from tqdm.auto import tqdm

from .loaders import Minibatches, place_on
from .plan import TrainingPlan
from .settings import TrainSettings

logger = logging.getLogger(__name__)


class BestWeights(pl.Callback):
    """Decides which weights training returns, and when it stops.

    With ``settings.early_stopping``: keeps the weights with the best monitored ELBO (validation if there is a
    validation split, else training), stops after ``patience`` epochs without improvement once KL warm-up is over,
    and puts the best weights back at the end. Without (the default): every epoch runs and the final weights are
    returned, as scvi-tools does; on small data the validation ELBO peaks long before the latent space has finished
    separating biology from batch, so the ELBO-best weights integrate batches less well
    (``benchmarks/results/integration_ablation.md``). With ``settings.weight_averaging`` > 0 as well, the weights
    returned are the running mean of those at the end of each of the last epochs (stochastic weight averaging
    at the training learning rate; batch norm's running statistics are averaged too). Either way, a loss that
    becomes NaN/inf stops training at once and the last weights kept (best, or latest finite) are put back.

    Not Lightning's ``EarlyStopping``: that one stops but returns the last weights, counts patience through the
    KL warm-up, and its ``check_finite`` leaves NaN weights in the model; putting the best ones back would need
    ``ModelCheckpoint`` writing to disk every epoch. Not Lightning's ``StochasticWeightAveraging`` either: that
    one also anneals the learning rate to its own ``swa_lrs`` and runs an extra pass over the data for batch norm,
    and it keeps its average outside the checkpoints this class writes."""

    def __init__(self, monitor: str, settings: TrainSettings, resume: dict[str, Any] | None = None) -> None:
        self.monitor, self.settings = monitor, settings
        resume = resume or {}
        self.best = float(resume.get("best", -math.inf))
        self.best_epoch = int(resume.get("best_epoch", 0))
        self.best_state: dict[str, torch.Tensor] | None = resume.get("best_state")
        self.wait = int(resume.get("wait", 0))
        self.averaged = int(resume.get("averaged", 0))  # epochs in the running mean held by best_state
        self.diverged_at: int | None = None

    def kept(self) -> str:
        """Which weights are returned, for a log message."""
        if self.averaged > 1:
            first = self.best_epoch - self.averaged + 1
            return f"the average of the weights of epochs {first}-{self.best_epoch}"
        which = "the best" if self.settings.early_stopping else "the last complete"
        return f"{which} epoch's weights (epoch {self.best_epoch})"

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
        if not self.settings.early_stopping:  # the latest finite weights, or the mean of the last epochs' weights
            epoch, state = int(row["epoch"]), plan.module.state_dict()
            n_average = round(self.settings.weight_averaging * self.settings.max_epochs)
            if n_average < 2 or epoch <= self.settings.max_epochs - n_average + 1 or self.best_state is None:
                self.best_state, self.averaged = copy.deepcopy(state), 1
            else:
                self.averaged += 1
                for name, value_now in state.items():
                    mean = self.best_state[name]
                    if mean.is_floating_point():
                        mean += (value_now.detach() - mean) / self.averaged
                    else:  # batch norm's step count
                        mean.copy_(value_now)
            self.best, self.best_epoch = value, epoch
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
    ``weights_only=True``).

    Not Lightning's ``ModelCheckpoint``: its files pickle the whole Lightning state (not loadable with
    ``weights_only=True``) and lack what resuming needs here: the best weights so far, the early-stopping count
    and the run's data and settings, which a resumed run is checked against."""

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
            "averaged": self.best.averaged,
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
        logger.warning("interrupt received: stopping after this minibatch (Ctrl-C again to stop at once)")

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
    :func:`scvae.loaders.place_on`). Lightning has no such callback: it moves each minibatch as it is used."""

    def __init__(self, loaders: list[Any], resident: bool | None) -> None:
        self.loaders, self.resident = loaders, resident

    def on_fit_start(self, trainer: pl.Trainer, plan: TrainingPlan) -> None:
        for loader in self.loaders:
            if isinstance(loader, Minibatches):
                place_on(loader, plan.device, self.resident)


class EpochBar(pl.Callback):
    """One progress bar over epochs, showing the latest ELBOs (Lightning's ``TQDMProgressBar`` restarts a bar over
    minibatches every epoch)."""

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
