"""SIGTERM (a spot interruption, StopTrainingJob) leaves a checkpoint; the next run resumes from it.

One output folder, three runs: stopped as soon as training starts (mid-epoch), stopped once
the first epoch is done, then run to the end.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import artifact, metrics
from scripts.local.train import run_training, start_training, stop_training

RESUMABLE_RUN = {
    "model-name": "resnet18",
    "pretrained": False,
    "image-size": 32,
    "batch-size": 4,  # 18 steps an epoch: time enough to stop one mid-way
    "epochs": 3,
    "workers": 1,
    "seed": 0,
    "early-stopping-patience": 0,
}
EPOCH_LINE = re.compile(rf"^{metrics.LINE_PREFIX} epoch=(\d+) ")
# train.py logs this just before the first training step.
TRAINING_STARTS = "debugger: local hook saving"
STOPPED = re.compile(
    r"stopped by SIGTERM (during|after) epoch (\d) of 3; checkpoint saved to (\S+); "
    r"a new run with the same checkpoints resumes at epoch (\d)"
)


def printed_epochs(log: str) -> list[int]:
    return [int(match.group(1)) for line in log.splitlines() if (match := EPOCH_LINE.match(line))]


def run_until(data: Path, out: Path, trigger: re.Pattern | str) -> tuple[str, re.Match]:
    """Starts a run, sends SIGTERM to its process group when a log line matches; (log, failure match)."""
    process = start_training(data, out, RESUMABLE_RUN)
    log = []
    try:
        for line in process.stdout:
            log.append(line)
            if (trigger.match(line) if isinstance(trigger, re.Pattern) else trigger in line):
                stop_training(process, signal.SIGTERM)
                break
        log.append(process.communicate(timeout=TRAINING_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        stop_training(process, signal.SIGKILL)
        raise
    text = "".join(log)
    assert process.returncode != 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]  # a clean exit
    failure = (out / "output" / "failure").read_text()
    match = STOPPED.match(failure)
    assert match, failure
    assert match.group(3) == str(out / "checkpoints" / "checkpoint.pt")
    assert not (out / "model" / artifact.MODEL_FILE).exists()
    return text, match


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes_at_the_right_epoch(sample_dataset, tmp_path):
    out = tmp_path / "out"

    log, stopped = run_until(sample_dataset, out, TRAINING_STARTS)
    assert stopped.group(1, 2, 4) == ("during", "1", "1")  # mid-epoch: epoch 1 starts again
    assert printed_epochs(log) == []
    assert torch.load(out / "checkpoints" / "checkpoint.pt", weights_only=False)["epoch"] == 0

    log, stopped = run_until(sample_dataset, out, EPOCH_LINE)
    assert "0 epoch(s) done, continuing at epoch 1" in log
    assert printed_epochs(log) == [1]
    resume_epoch = int(stopped.group(4))
    assert resume_epoch == 2  # stopped while saving epoch 1 ("after") or early in epoch 2 ("during")
    checkpoint = torch.load(out / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best", "history"} <= set(checkpoint)
    first_epoch_train_loss = metrics.parse_metric_lines(log)["train:loss"][0]

    final = run_training(sample_dataset, out, RESUMABLE_RUN, timeout=TRAINING_TIMEOUT_S)
    if final.returncode != 0:
        fail_with_log("the resumed run failed", final.stdout)
    assert "1 epoch(s) done, continuing at epoch 2" in final.stdout
    assert printed_epochs(final.stdout) == [2, 3]
    assert (out / "output" / "success").is_file() and not (out / "output" / "failure").exists()
    history = json.loads((out / "model" / artifact.METRICS_FILE).read_text())["epochs"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    # Epoch 1 comes from the second run, carried over in the checkpoint.
    assert history[0]["train_loss"] == pytest.approx(first_epoch_train_loss, abs=1e-6)
    # The evidence shows the whole run's epochs, and the steps of the last run (epochs 2 and 3).
    def evidence(name: str) -> list[dict]:
        return [json.loads(line) for line in (out / "output" / "data" / name).read_text().splitlines()]

    assert evidence(artifact.EPOCHS_FILE) == history
    assert {step["epoch"] for step in evidence(artifact.STEP_TIMINGS_FILE)} == {2, 3}
