"""Each training step's duration and the time it waited for data, recorded cheaply.

``StepTimer.timed(loader, epoch)`` wraps the training loader, and the loop body stays as it
is: for every batch the timer reads the clock when the loop asks for the batch, when it gets
it, and when it asks for the next one. So ``wait_s`` is the time spent waiting for data and
``step_s`` the whole step, waiting included; consecutive steps tile the epoch. Records stay in
memory and are appended to ``step_timings.jsonl`` (in ``output/data``, which SageMaker uploads
as ``output.tar.gz``) every ``flush_every`` steps and whenever ``flush()`` is called::

    {"epoch": 1, "step": 0, "elapsed_s": 9.512337, "wait_s": 0.812306, "step_s": 1.031118}

``step`` counts the run's training steps from 0, as smdebug counts TRAIN steps; ``elapsed_s``
is when the step asked for its batch, in seconds since the training process started (the
resource samples use the same clock, ``classifier.resources``).

The timer reads the host's clock and never synchronises with a GPU itself. The training step
already waits for the GPU once (the gradient scaler reads its overflow check, and the loss is
read back at the end of the epoch), so host time follows device time; a loop that never
waited would show its GPU work as time spent waiting for the next batch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

logger = logging.getLogger(__name__)

Batch = TypeVar("Batch")
FIELDS = ("epoch", "step", "elapsed_s", "wait_s", "step_s")  # of each JSON line, in order


def process_started() -> float:
    """When this process started, on ``time.monotonic()``'s clock (the origin of ``elapsed_s``)."""
    age = time.time() - psutil.Process().create_time()
    return time.monotonic() - max(age, 0.0)


class StepTimer:
    """Times the steps of the loaders it wraps and appends them to ``path`` in batches."""

    def __init__(self, path: Path, origin: float | None = None, flush_every: int = 200):
        self.path = Path(path)
        self.origin = process_started() if origin is None else origin
        self.flush_every = flush_every
        self.steps = 0  # training steps timed so far
        self._pending: list[tuple[int, int, float, float, float]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")  # one run per file: a new run replaces it

    def timed(self, loader: Iterable[Batch], epoch: int) -> Iterator[Batch]:
        """The loader's batches; each step is timed from asking for its batch to asking for the next.

        A loop that breaks off (a stop signal) still gets its last step recorded.
        """
        batches = iter(loader)
        asked = time.monotonic()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            arrived = time.monotonic()
            try:
                yield batch
            finally:
                done = time.monotonic()
                self._record(epoch, asked, arrived, done)
            asked = done

    def _record(self, epoch: int, asked: float, arrived: float, done: float) -> None:
        self._pending.append((epoch, self.steps, asked - self.origin, arrived - asked, done - asked))
        self.steps += 1
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Appends the steps recorded since the last flush (a failed write is logged, never raised:
        timing must not stop training)."""
        if not self._pending:
            return
        lines = [
            json.dumps(dict(zip(FIELDS, (epoch, step, *(round(s, 6) for s in seconds)), strict=True)))
            for epoch, step, *seconds in self._pending
        ]
        try:
            with self.path.open("a") as out:
                out.write("\n".join(lines) + "\n")
        except OSError as error:
            logger.warning("could not write %d step timings to %s: %s", len(lines), self.path, error)
        self._pending.clear()
