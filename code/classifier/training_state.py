"""The state of a training run between steps: what learns, and how far it has come.

One object holds it all, so that one checkpoint saves it and one call restores it: the model,
optimizer, schedule and gradient scaler, the epochs done with their metrics, the best weights so
far (by validation loss) and the early-stopping count (``EarlyStopping`` says what counts).
``state_dict()`` is the checkpoint's content (``classifier.checkpoints`` writes and reads the
file); ``load_state_dict()`` resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classifier import checkpoints


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU (the GPU copy keeps training)."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


@dataclass(frozen=True)
class EarlyStopping:
    """When a run ends for lack of progress: ``patience`` epochs without a better validation loss.

    Epochs before ``start_epoch`` (the warmup, whose rising learning rate makes the loss jump)
    count for nothing; the first epoch from there sets the reference. A loss is better only when
    it is at least ``min_delta`` (relative) below the reference, so noise does not reset the
    count. ``patience`` 0: never stop.
    """

    patience: int
    min_delta: float = 0.0
    start_epoch: int = 1

    @classmethod
    def after_warmup(cls, patience: int, min_delta: float, warmup_epochs: int) -> EarlyStopping:
        return cls(patience, min_delta, start_epoch=warmup_epochs + 1)

    def improves(self, loss: float, reference: float) -> bool:
        """Whether ``loss`` is better enough than ``reference`` to reset the count."""
        return not math.isfinite(reference) or loss < reference - self.min_delta * abs(reference)


@dataclass
class BestWeights:
    """The weights of the epoch with the lowest validation loss so far."""

    epoch: int
    valid_loss: float
    state: dict[str, torch.Tensor]


class TrainingState:
    """The modules that learn and the run's progress; ``identity`` says which run a checkpoint belongs to."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        identity: dict[str, Any],
    ):
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.identity = identity
        self.epochs_done = 0
        self.history: list[dict[str, float]] = []
        self.best = BestWeights(epoch=0, valid_loss=math.inf, state=cpu_state_dict(model))
        self.stopping_reference = math.inf  # the validation loss early stopping compares with
        self.epochs_without_improvement = 0
        self.early_stopped = False

    @property
    def next_epoch(self) -> int:
        return self.epochs_done + 1

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def end_epoch(self, record: dict[str, float], stopping: EarlyStopping) -> None:
        """Books a finished epoch (``record`` holds its ``epoch`` and ``valid_loss``): history, best
        weights (any lower validation loss), and whether early stopping now ends the run."""
        self.history.append(record)
        self.epochs_done = int(record["epoch"])
        loss = record["valid_loss"]
        if loss < self.best.valid_loss:
            self.best = BestWeights(self.epochs_done, loss, cpu_state_dict(self.model))
        if self.epochs_done < stopping.start_epoch:
            return
        if stopping.improves(loss, self.stopping_reference):
            self.stopping_reference = loss
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.early_stopped = 0 < stopping.patience <= self.epochs_without_improvement

    def state_dict(self, at_epoch_end: bool = False) -> dict[str, Any]:
        """Everything needed to continue, as one checkpoint.

        ``at_epoch_end``: no step has run since ``end_epoch``, so when that epoch was the best the
        model's weights are the best weights and the checkpoint holds them once, not twice.
        """
        best_is_model = at_epoch_end and self.best.epoch == self.epochs_done
        return {
            **self.identity,
            "epoch": self.epochs_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoints.rng_state(),
            "history": self.history,
            "best": {
                "epoch": self.best.epoch,
                "valid_loss": self.best.valid_loss,
                "state": None if best_is_model else self.best.state,
            },
            "stopping_reference": self.stopping_reference,
            "epochs_without_improvement": self.epochs_without_improvement,
            "early_stopped": self.early_stopped,
        }

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Continues from a checkpoint written by :meth:`state_dict` (its identity checked by the loader)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        checkpoints.restore_rng_state(checkpoint["rng"])
        self.epochs_done = checkpoint["epoch"]
        self.history = checkpoint["history"]
        best = dict(checkpoint["best"])
        if best["state"] is None:  # saved at the end of the best epoch: the model's weights
            best["state"] = cpu_state_dict(self.model)
        self.best = BestWeights(**best)
        self.stopping_reference = checkpoint.get("stopping_reference", self.best.valid_loss)
        self.epochs_without_improvement = checkpoint["epochs_without_improvement"]
        self.early_stopped = checkpoint["early_stopped"]

    def save(self, directory: Path, at_epoch_end: bool = False) -> Path:
        """Writes the checkpoint to ``directory`` (atomically); returns its path."""
        return checkpoints.save_checkpoint(directory, self.state_dict(at_epoch_end))

    def resume(self, directory: Path) -> bool:
        """Loads the checkpoint in ``directory`` if there is one (refusing another run's); whether it did."""
        checkpoint = checkpoints.load_checkpoint(directory, self.identity)
        if checkpoint is None:
            return False
        self.load_state_dict(checkpoint)
        return True
