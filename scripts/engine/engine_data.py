"""The private engine's data under ``CACHE_DIR/docker``: what it holds, how big it is, removing it.

The data-root holds every image the private dockerd built or imported, its containers and
BuildKit's cache (several GB; rebuilding both images from nothing takes minutes). ``make clean``
removes it only when the user confirms, and never under a running engine: that engine may serve
another command (a build, a test session), so it is named and left alone. Standard library only.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import subprocess
from pathlib import Path

from scripts.engine.dockerd import PrivateEngine, mounts_under, read_pid

# What the engine writes under its folder; the folder and its start lock stay.
ENGINE_OUTPUTS = ("data", "exec", "dockerd.log")


class Removal(enum.Enum):
    NOTHING = "no private engine data"
    KEEP = "kept (not confirmed)"
    ENGINE_RUNNING = "kept: the private engine runs on it"
    REMOVE = "remove"


def removal(has_data: bool, confirmed: bool, running_pid: int | None) -> Removal:
    """What to do with the private engine's data (pure)."""
    if not has_data:
        return Removal.NOTHING
    if not confirmed:
        return Removal.KEEP
    if running_pid is not None:
        return Removal.ENGINE_RUNNING
    return Removal.REMOVE


def engine_outputs(private: PrivateEngine) -> list[Path]:
    """The engine's data-root, exec-root and log, those that exist."""
    return [path for name in ENGINE_OUTPUTS if (path := private.root / name).exists()]


def size_of(paths: list[Path]) -> int:
    """Bytes in the files under ``paths`` (links not followed; unreadable entries skipped)."""
    total = 0
    for path in paths:
        if path.is_file():
            total += path.lstat().st_size
            continue
        for folder, _, files in os.walk(path, onerror=lambda _: None):
            for name in files:
                with contextlib.suppress(OSError):  # removed meanwhile
                    total += os.lstat(os.path.join(folder, name)).st_size
    return total


def running_pid(private: PrivateEngine) -> int | None:
    """The pid of the private dockerd if one runs."""
    return read_pid(private.pidfile)


def _mounted_below(root: Path) -> list[str]:
    proc_mounts = Path("/proc/mounts")
    return mounts_under(proc_mounts.read_text(), root) if proc_mounts.exists() else []


def remove_engine_outputs(private: PrivateEngine) -> list[Path]:
    """Removes the data-root, exec-root and log of a stopped private engine; returns what it removed.

    What a stopped dockerd can leave mounted below its folder (its network namespace) is unmounted
    first; anything still mounted after that stops the removal with the mount points named.
    """
    if running_pid(private) is not None:
        raise RuntimeError(f"the private engine runs (pid {running_pid(private)}): stop it first")
    root = private.root.resolve()
    for mount in reversed(_mounted_below(root)):
        subprocess.run(["umount", mount], check=False, capture_output=True)
    still = _mounted_below(root)
    if still:
        raise RuntimeError(f"still mounted under {root}: {', '.join(still)}")
    removed = engine_outputs(private)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed
