"""Checkpoints for resuming (spot interruptions, stopped jobs) and the stop signal that triggers one.

SageMaker syncs ``/opt/ml/checkpoints`` to S3 when the job has a CheckpointConfig and copies
it back into the next container, so a restarted job finds its checkpoint where it left it.
One file holds everything to continue: model, optimizer, scheduler, scaler, epoch, best
weights, the history so far and the random number generators' states.

A checkpoint is data, never code: whoever can write to the job's checkpoint S3 prefix must not be
able to run code in the training job. So it holds only tensors and plain values (the generators'
states too) and is read with ``torch.load(weights_only=True)``; a file holding any other pickled
object is refused with an error naming it.
"""

from __future__ import annotations

import logging
import os
import pickle
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
    """The state of every random number generator the training draws from, as tensors and plain values."""
    python_version, python_keys, python_gauss = random.getstate()
    numpy_algorithm, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    return {
        "python": {"version": python_version, "keys": list(python_keys), "gauss_next": python_gauss},
        "numpy": {
            "algorithm": str(numpy_algorithm),
            "keys": torch.from_numpy(np.asarray(numpy_keys, dtype=np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Puts back the generators' states saved by :func:`rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["keys"]), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((
        numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
        numpy["cached_gaussian"],
    ))
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
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only refuses any object but tensors and plain values before it is built or run.
        raise TrainingError(
            f"refusing checkpoint {path}: it holds pickled objects other than tensors and plain "
            f"values, which could run code when loaded{_refused_global(error)}; remove it if it is "
            "not from this version of the trainer"
        ) from error
    except Exception as error:
        raise TrainingError(f"cannot read checkpoint {path} ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict):
        raise TrainingError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not a checkpoint")
    for key in IDENTITY_KEYS:
        if checkpoint.get(key) != identity[key]:
            raise TrainingError(
                f"checkpoint {path} was written for another run ({key} differs: "
                f"{_brief(checkpoint.get(key))} vs {_brief(identity[key])}); "
                "remove it or use another checkpoint location"
            )
    return checkpoint


def _refused_global(error: BaseException) -> str:
    """The object torch's weights-only unpickler refused (its message names it), as " (...)"."""
    named = [line.strip() for line in str(error).splitlines() if "global" in line.lower()]
    return f" ({named[0]})" if named else ""


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
