"""The state of a training run between steps: what learns, and how far it has come.

One object holds it all, so that one checkpoint saves it and one call restores it: the model,
optimizer, schedule and gradient scaler, the epochs done with their metrics, the best weights so
far (by validation loss) and the early-stopping count. ``state_dict()`` is the checkpoint's
content (``classifier.checkpoints`` writes and reads the file); ``load_state_dict()`` resumes.
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
        self.epochs_without_improvement = 0
        self.early_stopped = False

    @property
    def next_epoch(self) -> int:
        return self.epochs_done + 1

    @property
    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def end_epoch(self, record: dict[str, float], early_stopping_patience: int) -> None:
        """Books a finished epoch (``record`` holds its ``epoch`` and ``valid_loss``): history, best
        weights, and whether early stopping now ends the run (patience 0: never)."""
        self.history.append(record)
        self.epochs_done = int(record["epoch"])
        if record["valid_loss"] < self.best.valid_loss:
            self.best = BestWeights(self.epochs_done, record["valid_loss"], cpu_state_dict(self.model))
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.early_stopped = 0 < early_stopping_patience <= self.epochs_without_improvement

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue, as one checkpoint."""
        return {
            **self.identity,
            "epoch": self.epochs_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoints.rng_state(),
            "history": self.history,
            "best": {"epoch": self.best.epoch, "valid_loss": self.best.valid_loss, "state": self.best.state},
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
        self.best = BestWeights(**checkpoint["best"])
        self.epochs_without_improvement = checkpoint["epochs_without_improvement"]
        self.early_stopped = checkpoint["early_stopped"]

    def save(self, directory: Path) -> Path:
        """Writes the checkpoint to ``directory`` (atomically); returns its path."""
        return checkpoints.save_checkpoint(directory, self.state_dict())

    def resume(self, directory: Path) -> bool:
        """Loads the checkpoint in ``directory`` if there is one (refusing another run's); whether it did."""
        checkpoint = checkpoints.load_checkpoint(directory, self.identity)
        if checkpoint is None:
            return False
        self.load_state_dict(checkpoint)
        return True
