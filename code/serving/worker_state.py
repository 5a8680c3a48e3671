"""What the model-server workers tell the gateway: which of them hold a warmed-up model, or why
the model failed to load.

MMS cannot say it: its management API shows a worker READY as soon as the worker process
starts, seconds before the model is loaded. So each worker, once the model is loaded and the
warm-up inference passed, leaves a ``ready-<pid>`` file in the state folder (``SERVE_STATE_DIR``),
or the reason of its failure in ``model_failure.txt``; the gateway counts the ready workers that
are still alive.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

STATE_DIR_ENV = "SERVE_STATE_DIR"
READY_PREFIX = "ready-"
FAILURE_FILE = "model_failure.txt"


def _state_dir() -> Path | None:
    folder = os.environ.get(STATE_DIR_ENV)
    return Path(folder) if folder else None


def mark_ready() -> None:
    """Called by a worker whose model is loaded and warmed up."""
    folder = _state_dir()
    if folder is not None:
        (folder / f"{READY_PREFIX}{os.getpid()}").touch()


def record_failure(reason: str) -> None:
    """Called by a worker whose model failed to load."""
    folder = _state_dir()
    if folder is not None:
        # Atomically: every restarted worker writes it again, and /ping must never read it half-written
        # (an empty file read as "no failure" turned an Unhealthy server into "Loading").
        partial = folder / f".{FAILURE_FILE}.{os.getpid()}"
        partial.write_text(reason.strip() + "\n")
        os.replace(partial, folder / FAILURE_FILE)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ready_workers(state_dir: Path) -> list[int]:
    """The process ids of the live workers that hold a warmed-up model."""
    pids = [int(path.name[len(READY_PREFIX):]) for path in Path(state_dir).glob(f"{READY_PREFIX}*")]
    return [pid for pid in pids if _alive(pid)]


def model_failure(state_dir: Path) -> str | None:
    """Why the model failed to load, if a worker said so."""
    path = Path(state_dir) / FAILURE_FILE
    return path.read_text().strip() if path.is_file() else None
