"""The trainer's own evidence of a run, where SageMaker uploads it, and its live copy.

Everything the debugging report needs is written to the output data folder (``SM_OUTPUT_DATA_DIR``,
``/opt/ml/output/data``), which SageMaker packs into ``output.tar.gz`` when the job ends, whether
it completed, failed or was stopped (names in ``classifier.artifact``)::

    resource_usage.jsonl   CPU, memory and GPU samples (classifier.resources)
    step_timings.jsonl     each training step's duration and wait for data (classifier.step_timing)
    epochs.jsonl           the metrics of the epochs finished so far
    tensors/               the smdebug output of the trainer's local default hook (classifier.debugger)

At each epoch's end the folder is also mirrored into ``checkpoints/evidence``: SageMaker syncs
the checkpoint folder to S3 while the job runs (CheckpointConfig), so a running job can be
reported on too. Files written once (smdebug renames each finished file into place) are
hard-linked when both folders share a file system, so the copy costs no disk; growing files are
copied, so that the checkpoint sync sees them change.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from classifier.artifact import EPOCHS_FILE, STEP_TIMINGS_FILE
from classifier.step_timing import StepTimer

logger = logging.getLogger(__name__)

Batch = TypeVar("Batch")
# Files that grow in place (appended): copied, never linked.
GROWING_SUFFIXES = (".jsonl",)
# Files still being written: smdebug's ".tmp", our own ".partial".
UNFINISHED_SUFFIXES = (".tmp", ".partial")


def write_epochs(path: Path, history: Sequence[dict]) -> None:
    """Rewrites ``path`` with one JSON line per finished epoch (atomically: never half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(record) + "\n" for record in history))
    os.replace(partial, path)


def mirror(source: Path, target: Path) -> int:
    """Makes ``target`` hold the finished files of ``source``, and only those; returns how many it
    (re)placed. Unchanged files are skipped, so calling it every epoch costs little."""
    placed, wanted = 0, set()
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name.endswith(UNFINISHED_SUFFIXES):
            continue
        relative = path.relative_to(source)
        wanted.add(relative)
        copy = target / relative
        if copy.is_file() and _same_content(path, copy):
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(copy.name + ".partial")
        partial.unlink(missing_ok=True)
        if path.suffix in GROWING_SUFFIXES or not _hard_link(path, partial):
            shutil.copy2(path, partial)
        os.replace(partial, copy)
        placed += 1
    for path in target.rglob("*"):
        if path.is_file() and path.relative_to(target) not in wanted:
            path.unlink()  # left by an earlier run (a replaced smdebug trial)
    return placed


def _hard_link(path: Path, link: Path) -> bool:
    try:
        os.link(path, link)
    except OSError:  # another file system, or links not allowed there
        return False
    return True


def _same_content(path: Path, copy: Path) -> bool:
    if os.path.samefile(path, copy):
        return True
    mine, theirs = path.stat(), copy.stat()
    return (mine.st_size, mine.st_mtime_ns) == (theirs.st_size, theirs.st_mtime_ns)


class TrainingEvidence:
    """The run's evidence folder: step timings, the epochs so far, and the live copy of it all.

    ``history`` is the run's epochs so far (a resumed run's, or none), written at once so that
    the folder never shows an earlier run's epochs. ``live_copy`` None keeps no copy.
    """

    def __init__(self, folder: Path, live_copy: Path | None, history: Sequence[dict] = ()):
        self.folder = Path(folder)
        self.live_copy = live_copy
        self.folder.mkdir(parents=True, exist_ok=True)
        self.steps = StepTimer(self.folder / STEP_TIMINGS_FILE)
        write_epochs(self.folder / EPOCHS_FILE, history)

    @property
    def origin(self) -> float:
        """The clock origin of every ``elapsed_s`` in the folder (``time.monotonic()`` at process start)."""
        return self.steps.origin

    def timed(self, loader: Iterable[Batch], epoch: int) -> Iterator[Batch]:
        """The training loader, each step timed (``StepTimer.timed``)."""
        return self.steps.timed(loader, epoch)

    def end_epoch(self, history: Sequence[dict]) -> None:
        """After each epoch: the pending step timings, the epochs so far, and the live copy."""
        self.steps.flush()
        try:
            write_epochs(self.folder / EPOCHS_FILE, history)
        except OSError as error:  # evidence must never stop training
            logger.warning("could not write the epochs to %s: %s", self.folder / EPOCHS_FILE, error)
        self.refresh_live_copy()

    def refresh_live_copy(self) -> None:
        if self.live_copy is None:
            return
        try:
            mirror(self.folder, self.live_copy)
        except OSError as error:  # the copy is a convenience: it must never stop training
            logger.warning("could not copy the evidence to %s: %s", self.live_copy, error)

    def __enter__(self) -> TrainingEvidence:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.steps.flush()
        self.refresh_live_copy()


class NoEvidence:
    """What a data-parallel process other than rank 0 keeps: nothing (its loader untimed), so that
    the job's one evidence folder and its live copy are rank 0's alone."""

    def timed(self, loader: Iterable[Batch], epoch: int) -> Iterable[Batch]:
        return loader

    def end_epoch(self, history: Sequence[dict]) -> None:
        pass

    def __enter__(self) -> NoEvidence:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        pass
