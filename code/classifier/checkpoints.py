"""Checkpoints for resuming (spot interruptions, stopped jobs) and the stop signal that triggers one.

SageMaker syncs ``/opt/ml/checkpoints`` to S3 when the job has a CheckpointConfig and copies
it back into the next container, so a restarted job finds its checkpoint where it left it.
One file holds everything to continue: model, optimizer, scheduler, scaler, epoch, best
weights, the history so far and the random number generators' states.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifier.errors import TrainingError

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
# What a checkpoint must match to be resumed from (the same network with the same outputs).
IDENTITY_KEYS = ("model_name", "class_folders")


def rng_state() -> dict[str, Any]:
    """The state of every random number generator the training draws from."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, checkpoint: dict[str, Any]) -> Path:
    """Writes the checkpoint atomically: a crash mid-write leaves the previous one intact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)
    return path


def load_checkpoint(directory: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``directory``, or None; fails if it belongs to another model or dataset."""
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        # Not weights_only: the checkpoint holds RNG states (numpy arrays, tuples); it is our own file.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise TrainingError(f"cannot read checkpoint {path} ({type(error).__name__}: {error})") from error
    for key in IDENTITY_KEYS:
        if checkpoint.get(key) != identity[key]:
            raise TrainingError(
                f"checkpoint {path} was written for another run ({key} differs: "
                f"{_brief(checkpoint.get(key))} vs {_brief(identity[key])}); "
                "remove it or use another checkpoint location"
            )
    return checkpoint


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StopSignal:
    """Turns SIGTERM (StopTrainingJob, spot interruption) and SIGINT into a flag the loop checks.

    The loop finishes its current step, saves a checkpoint and exits; SageMaker allows
    120 seconds between SIGTERM and SIGKILL.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignal:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            logger.warning("received %s: stopping after the current step", signal.Signals(signum).name)
        self.received = signal.Signals(signum)
