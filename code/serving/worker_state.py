"""What the model-server workers tell the gateway: which of them hold a warmed-up model, or why
the model failed to load.

MMS cannot say it: its management API shows a worker READY as soon as the worker process
starts, seconds before the model is loaded. So each worker, once the model is loaded and the
warm-up inference passed, leaves a ``ready-<pid>`` file in the state folder (``SERVE_STATE_DIR``),
or the reason of its failure in ``model_failure.txt``; the gateway counts the ready workers that
are still alive (the same process: a pid is checked with its start time, as pids are reused).

MMS's Python backend is one process that forks a worker for each of MMS's worker threads; when a
worker dies, MMS asks it for a new one. If that parent dies, no worker can ever be replaced, so
each worker names its parent in ``worker-parent``, and :func:`lost_worker_parent` tells.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil

STATE_DIR_ENV = "SERVE_STATE_DIR"
READY_PREFIX = "ready-"
FAILURE_FILE = "model_failure.txt"
WORKER_PARENT_FILE = "worker-parent"


def _state_dir() -> Path | None:
    folder = os.environ.get(STATE_DIR_ENV)
    return Path(folder) if folder else None


def _identity(pid: int) -> dict[str, float] | None:
    """A process's pid and start time, which together name it for good; None if it is gone."""
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def _write(path: Path, text: str) -> None:
    """Writes ``path`` atomically: the gateway never reads half a file (an empty failure file would
    read as "no failure", and an Unhealthy server as "Loading"). Workers write the same files at
    once (each restarted worker records the failure again), so each writes its own partial file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def record_worker_parent() -> None:
    """Called by a worker when it starts: the process that forked it (MMS's backend)."""
    folder = _state_dir()
    parent = _identity(os.getppid())
    if folder is not None and parent is not None:
        _write(folder / WORKER_PARENT_FILE, json.dumps(parent))


def mark_ready() -> None:
    """Called by a worker whose model is loaded and warmed up."""
    folder = _state_dir()
    me = _identity(os.getpid())
    if folder is not None and me is not None:
        _write(folder / f"{READY_PREFIX}{os.getpid()}", json.dumps(me))


def record_failure(reason: str) -> None:
    """Called by a worker whose model failed to load. The file stays: MMS restarts the worker, and
    ``/ping`` says Unhealthy with this reason until a worker proves ready."""
    folder = _state_dir()
    if folder is not None:
        _write(folder / FAILURE_FILE, reason.strip() + "\n")


def _alive(identity: dict) -> bool:
    """Whether the process named by ``identity`` (pid and start time) still runs."""
    try:
        process = psutil.Process(int(identity["pid"]))
        return process.create_time() == identity["started"] and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def _read(path: Path) -> dict | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def ready_workers(state_dir: Path) -> list[int]:
    """The process ids of the live workers that hold a warmed-up model."""
    ready = []
    for path in Path(state_dir).glob(f"{READY_PREFIX}*"):
        identity = _read(path)
        if identity is not None and _alive(identity):
            ready.append(int(identity["pid"]))
    return sorted(ready)


def lost_worker_parent(state_dir: Path) -> str | None:
    """Why no worker can be started any more (the process that forks them died), or None."""
    parent = _read(Path(state_dir) / WORKER_PARENT_FILE)
    if parent is None or _alive(parent):
        return None
    return f"the model server's worker parent (pid {parent['pid']}) died: no model worker can start again"


def model_failure(state_dir: Path) -> str | None:
    """Why the model failed to load, if a worker said so."""
    path = Path(state_dir) / FAILURE_FILE
    return path.read_text().strip() if path.is_file() else None
