"""The trainer's own evidence: step timings, the epochs so far, and the live copy beside the checkpoint."""

from __future__ import annotations

import itertools
import json
import os
import time

import pytest

from classifier import artifact
from classifier.evidence import TrainingEvidence, mirror, write_epochs
from classifier.step_timing import StepTimer, process_started


class SlowLoader:
    """Batches that take ``delay_s`` each to arrive, as a data loader that cannot keep up."""

    def __init__(self, batches: int, delay_s: float):
        self.batches, self.delay_s = batches, delay_s

    def __iter__(self):
        for index in range(self.batches):
            time.sleep(self.delay_s)
            yield index


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_step_records_its_wait_for_data_and_its_whole_duration(tmp_path):
    timer = StepTimer(tmp_path / "timings.jsonl")
    for epoch in (1, 2):
        for _batch in timer.timed(SlowLoader(3, delay_s=0.03), epoch):
            time.sleep(0.02)  # the step's own work
    timer.flush()
    steps = read_lines(tmp_path / "timings.jsonl")
    assert [(s["epoch"], s["step"]) for s in steps] == [(1, 0), (1, 1), (1, 2), (2, 3), (2, 4), (2, 5)]
    for step in steps:
        assert step["wait_s"] >= 0.03 and step["step_s"] >= step["wait_s"] + 0.02
    # Consecutive steps of an epoch tile it: each starts when the one before ends.
    for before, after in itertools.pairwise(steps[:3]):
        assert after["elapsed_s"] == pytest.approx(before["elapsed_s"] + before["step_s"], abs=2e-6)
    # elapsed_s counts from the process start, the resource samples' clock too.
    assert 0 < steps[0]["elapsed_s"] <= time.monotonic() - process_started()


def test_steps_are_written_in_batches_and_a_loop_that_breaks_off_keeps_its_last_step(tmp_path):
    path = tmp_path / "timings.jsonl"
    timer = StepTimer(path, flush_every=2)
    for index in timer.timed(range(10), epoch=1):
        if index == 2:
            break  # as the loop does on a stop signal
    assert len(read_lines(path)) == 2  # the first two: one write for both
    timer.flush()
    assert [s["step"] for s in read_lines(path)] == [0, 1, 2]
    StepTimer(path)  # a new run replaces the file
    assert path.read_text() == ""


def test_a_failed_write_is_logged_and_training_goes_on(tmp_path, caplog):
    path = tmp_path / "timings.jsonl"
    timer = StepTimer(path)
    path.unlink()
    path.mkdir()  # no longer writable as a file
    for _ in timer.timed(range(2), epoch=1):
        pass
    timer.flush()
    assert "could not write 2 step timings" in caplog.text


def test_mirror_links_finished_files_copies_growing_ones_and_drops_stale_ones(tmp_path):
    source, target = tmp_path / "data", tmp_path / "checkpoints" / "evidence"
    (source / "tensors" / "events").mkdir(parents=True)
    event = source / "tensors" / "events" / "000000000000_worker_0.tfevents"
    event.write_bytes(b"tensor")
    (source / "tensors" / "events" / "000000000001_worker_0.tfevents.tmp").write_bytes(b"half")
    samples = source / artifact.RESOURCE_USAGE_FILE
    samples.write_text('{"elapsed_s": 1}\n')
    (target / "tensors").mkdir(parents=True)
    (target / "tensors" / "from-an-earlier-run").write_text("old")

    assert mirror(source, target) == 2
    copied = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert copied == [artifact.RESOURCE_USAGE_FILE, "tensors/events/000000000000_worker_0.tfevents"]
    assert os.path.samefile(event, target / "tensors/events/000000000000_worker_0.tfevents")  # no 2nd copy
    assert not os.path.samefile(samples, target / artifact.RESOURCE_USAGE_FILE)  # growing: a real copy
    assert mirror(source, target) == 0  # nothing changed: nothing placed
    with samples.open("a") as out:
        out.write('{"elapsed_s": 2}\n')
    assert mirror(source, target) == 1
    assert (target / artifact.RESOURCE_USAGE_FILE).read_text() == samples.read_text()


def test_the_evidence_folder_shows_the_epochs_so_far_and_keeps_its_live_copy(tmp_path):
    folder, live = tmp_path / "output" / "data", tmp_path / "checkpoints" / "evidence"
    resumed = [{"epoch": 1, "valid_loss": 0.9}]
    with TrainingEvidence(folder, live, history=resumed) as evidence:
        assert read_lines(folder / artifact.EPOCHS_FILE) == resumed  # at once: no earlier run's epochs
        for _ in evidence.timed(range(3), epoch=2):
            pass
        evidence.end_epoch([*resumed, {"epoch": 2, "valid_loss": 0.8}])
        assert [e["epoch"] for e in read_lines(live / artifact.EPOCHS_FILE)] == [1, 2]
        assert len(read_lines(live / artifact.STEP_TIMINGS_FILE)) == 3
        for _ in evidence.timed(range(2), epoch=3):
            pass  # stopped before the epoch ends: the exit writes and copies these steps
    assert len(read_lines(live / artifact.STEP_TIMINGS_FILE)) == 5


def test_a_failing_live_copy_never_stops_training(tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with TrainingEvidence(tmp_path / "data", blocked / "evidence") as evidence:
        evidence.end_epoch([{"epoch": 1, "valid_loss": 1.0}])
    assert "could not copy the evidence" in caplog.text


def test_epochs_are_rewritten_whole(tmp_path):
    path = tmp_path / artifact.EPOCHS_FILE
    write_epochs(path, [{"epoch": 1}, {"epoch": 2}])
    write_epochs(path, [{"epoch": 1}])
    assert read_lines(path) == [{"epoch": 1}] and [p.name for p in tmp_path.iterdir()] == [path.name]
