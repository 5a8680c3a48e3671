"""Data-parallel training on this host, as ``make train-local NPROC=2`` runs it: the toolkit starts
torchrun, which runs two trainer processes (gloo on the CPU).

One recipe trained by one process and by two, at the same global batch and epochs, reaches the
same test accuracy (within 2 points); the two-process run leaves one artifact, one set of metric
lines and rank 0's smdebug tensors. SIGTERM to one of two processes stops both after the same step
with one checkpoint, from which two processes resume. A process killed mid-run makes the other
fail, naming it, instead of hanging.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import artifact, metrics
from classifier.artifact import RESOURCE_USAGE_FILE
from scripts.datasets.sample import make_dataset
from scripts.local.train import run_training, start_training, stop_training
from scripts.report.sources import load_local_run

# Converges on the sample data within its epochs, so that the comparison measures training, not
# luck: 240 training images, a per-process batch of 16 (BatchNorm's statistics are per process),
# 120 test images (2 points = 2.4 images).
PARITY_RUN = {
    "model-name": "resnet18",
    "pretrained": True,
    "fine-tune": "last-block",
    "image-size": 32,
    "batch-size": 32,  # the global batch: 16 per process with two
    "epochs": 6,
    "learning-rate": 0.02,
    "warmup-epochs": 1,
    "early-stopping-patience": 0,
    "workers": 0,
    "seed": 0,
    "debugger-save-interval": 4,
    "resource-sample-seconds": 0.5,
}
TINY_RUN = {
    "model-name": "resnet18",
    "pretrained": False,
    "image-size": 32,
    "batch-size": 8,
    "epochs": 3,
    "workers": 0,
    "debugger": False,
    "early-stopping-patience": 0,
    "quantize": False,  # the parity runs export it
}
EPOCH_LINE = re.compile(rf"^{metrics.LINE_PREFIX} epoch=(\d+) ")
STOPPED = re.compile(
    r"^rank [01] of 2 on \S+: stopped by SIGTERM (during|after) epoch (\d) of 3; checkpoint saved to (\S+); "
    r"a new run with the same checkpoints resumes at epoch (\d)$"
)


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory, imagenet_weights_file) -> Iterator[dict[int, tuple[Path, str]]]:
    """The parity recipe trained by one process and by two: {processes: (OUT folder, log)}."""
    data = make_dataset(tmp_path_factory.mktemp("parity_data"), num_classes=3,
                        counts={"train": 80, "valid": 8, "test": 40}, seed=0)
    runs = {}
    # One thread per process, as torchrun gives each of two: the same arithmetic in both runs, and
    # a busy 2-core machine is not oversubscribed by one process's threads.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        for processes in (1, 2):
            out = tmp_path_factory.mktemp(f"parity_{processes}_processes")
            result = run_training(data, out, {**PARITY_RUN, "weights-path": str(imagenet_weights_file)},
                                  timeout=TRAINING_TIMEOUT_S, processes=processes)
            if result.returncode != 0:
                fail_with_log(f"the {processes}-process run failed (exit {result.returncode})", result.stdout)
            runs[processes] = (out, result.stdout)
    yield runs
    for out, _ in runs.values():  # two runs' tensors and checkpoints: 2 GB the rest of the suite needs
        shutil.rmtree(out, ignore_errors=True)


def test_one_and_two_processes_reach_the_same_test_accuracy(parity_runs):
    accuracy = {
        processes: json.loads((out / "model" / artifact.METRICS_FILE).read_text())["test"]["test_accuracy"]
        for processes, (out, _) in parity_runs.items()
    }
    assert min(accuracy.values()) >= 0.9, accuracy  # both learned: the comparison means something
    assert abs(accuracy[1] - accuracy[2]) <= 0.02, accuracy


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # smdebug 1.0.34 on current numpy/protobuf
def test_two_processes_leave_one_artifact_one_set_of_metrics_and_rank_0s_tensors(parity_runs):
    out, log = parity_runs[2]
    assert "torchrun --nnodes 1 --nproc_per_node 2 train.py" in log
    assert "data-parallel training: rank 0 of 2 on " in log
    assert (out / "output" / "success").is_file() and not (out / "output" / "failure").exists()
    exported = (artifact.MODEL_FILE, artifact.CLASSES_FILE, artifact.METRICS_FILE,
                artifact.OPENVINO_INT8_FILE)
    for name in exported:
        assert (out / "model" / name).is_file(), name

    # Rank 0 alone prints: each epoch once, as SageMaker's regexes read them.
    assert [int(match.group(1)) for line in log.splitlines() if (match := EPOCH_LINE.match(line))] == [
        1, 2, 3, 4, 5, 6]
    read = metrics.parse_metric_lines(log)
    assert len(read["validation:loss"]) == 6 and len(read["test:accuracy"]) == 1
    recorded = json.loads((out / "model" / artifact.METRICS_FILE).read_text())
    valid_losses = [epoch["valid_loss"] for epoch in recorded["epochs"]]
    assert valid_losses == pytest.approx(read["validation:loss"], abs=1e-6)

    # One evidence folder, rank 0's, read by the debugging report like any run's: one debugger hook
    # (smdebug's worker_0), the host's resource samples, and each step of rank 0 timed once.
    evidence = load_local_run(out)
    assert evidence.trial.workers() == ["worker_0"]
    assert evidence.trial.tensor_names(collection="losses")
    assert evidence.resource_samples
    assert len((out / "output" / "data" / RESOURCE_USAGE_FILE).read_text().splitlines()) == len(
        evidence.resource_samples)
    steps = [timing["step"] for timing in evidence.step_timings]
    assert steps == list(range(len(steps)))
    # 240 images: 7 full steps of 32 in one process, as 7 of 16 per process in two (the rest dropped).
    assert len(steps) == 6 * 7 == len(load_local_run(parity_runs[1][0]).step_timings)
    assert {timing["epoch"] for timing in evidence.step_timings} == set(range(1, 7))
    live = out / "checkpoints" / artifact.LIVE_EVIDENCE_DIR
    assert (live / artifact.STEP_TIMINGS_FILE).read_text() == (
        out / "output" / "data" / artifact.STEP_TIMINGS_FILE).read_text()


def trainer_pid(out: Path, rank: int) -> int:
    """The pid of the trainer process of ``rank`` in the run laid out in ``out`` (from its environment)."""
    wanted = {f"SAGEMAKER_BASE_DIR={out.resolve()}".encode(), f"RANK={rank}".encode()}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = set(environ.read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= variables and any(v.startswith(b"TORCHELASTIC_RUN_ID=") for v in variables):
            return int(environ.parent.name)
    raise AssertionError(f"no trainer process of rank {rank} for {out}")


def run_and_intervene(out: Path, data: Path, trigger: re.Pattern | str, act) -> tuple[int, str]:
    """Starts a two-process run, calls ``act()`` once a log line matches ``trigger``; (exit, log)."""
    process = start_training(data, out, TINY_RUN, processes=2)
    log = []
    try:
        for line in process.stdout:
            log.append(line)
            if trigger.match(line) if isinstance(trigger, re.Pattern) else trigger in line:
                act()
                break
        log.append(process.communicate(timeout=TRAINING_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        stop_training(process, signal.SIGKILL)
        fail_with_log("the run did not end (a hang)", "".join(log))
    return process.returncode, "".join(log)


def test_sigterm_to_one_process_stops_both_with_one_checkpoint_and_both_resume(sample_dataset, tmp_path):
    out = tmp_path / "out"
    code, log = run_and_intervene(out, sample_dataset, EPOCH_LINE,
                                  lambda: os.kill(trainer_pid(out, 1), signal.SIGTERM))
    assert code != 0
    failure = (out / "output" / "failure").read_text().strip()
    stopped = STOPPED.match(failure)
    assert stopped, failure
    assert stopped.group(3) == str(out / "checkpoints" / "checkpoint.pt")
    resume_at = int(stopped.group(4))
    assert resume_at in (2, 3), failure  # after epoch 1, or during epoch 2 (the next step they agreed on)
    assert log.count("stopped by SIGTERM") == 2  # both processes stopped, from the one signal
    assert not (out / "model" / artifact.MODEL_FILE).exists()

    final = run_training(sample_dataset, out, TINY_RUN, timeout=TRAINING_TIMEOUT_S, processes=2)
    if final.returncode != 0:
        fail_with_log("the resumed run failed", final.stdout)
    assert f"{resume_at - 1} epoch(s) done, continuing at epoch {resume_at}" in final.stdout
    printed = [int(m.group(1)) for line in final.stdout.splitlines() if (m := EPOCH_LINE.match(line))]
    assert printed == list(range(resume_at, 4))
    history = json.loads((out / "model" / artifact.METRICS_FILE).read_text())["epochs"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]


def test_a_killed_process_fails_the_run_naming_it(sample_dataset, tmp_path):
    out = tmp_path / "out"
    code, _ = run_and_intervene(out, sample_dataset, EPOCH_LINE,
                                lambda: os.kill(trainer_pid(out, 1), signal.SIGKILL))
    assert code != 0
    failure = (out / "output" / "failure").read_text()
    assert failure.startswith("rank 0 of 2 on "), failure
    assert "lost contact with rank 1 on " in failure, failure
    assert not (out / "output" / "success").exists()
