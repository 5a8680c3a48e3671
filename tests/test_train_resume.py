"""SIGTERM (a spot interruption, StopTrainingJob) leaves a checkpoint; the next run resumes from it."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest
import torch
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import artifact, metrics
from scripts.train_local import run_training, start_training, stop_training

RESUMABLE_RUN = {
    "model-name": "resnet18",
    "pretrained": False,
    "image-size": 32,
    "batch-size": 8,
    "epochs": 4,
    "workers": 1,
    "seed": 0,
    "early-stopping-patience": 0,
}
EPOCH_LINE = re.compile(rf"^{metrics.LINE_PREFIX} epoch=(\d+) ")


def printed_epochs(log: str) -> list[int]:
    return [int(match.group(1)) for line in log.splitlines() if (match := EPOCH_LINE.match(line))]


def test_sigterm_saves_a_checkpoint_and_the_next_run_resumes_at_the_right_epoch(sample_dataset, tmp_path):
    out = tmp_path / "out"
    process = start_training(sample_dataset, out, RESUMABLE_RUN)
    first_log = []
    try:
        for line in process.stdout:  # stop as soon as the first epoch is done, like a spot interruption
            first_log.append(line)
            if EPOCH_LINE.match(line):
                stop_training(process, signal.SIGTERM)
                break
        rest, _ = process.communicate(timeout=TRAINING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_training(process, signal.SIGKILL)
        raise
    first_log = "".join(first_log) + rest
    assert process.returncode != 0, first_log[-3000:]
    failure = (out / "output" / "failure").read_text()
    match = re.match(r"stopped by SIGTERM (during|after) epoch \d of 4; checkpoint saved to (\S+); "
                     r"a new run with the same checkpoints resumes at epoch (\d)", failure)
    assert match, failure
    resume_epoch = int(match.group(3))
    assert resume_epoch == 2
    assert match.group(2) == str(out / "checkpoints" / "checkpoint.pt")
    assert printed_epochs(first_log) == [1]
    assert not (out / "model" / artifact.MODEL_FILE).exists()
    checkpoint = torch.load(out / "checkpoints" / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == resume_epoch - 1
    assert {"model", "optimizer", "scheduler", "rng", "best"} <= set(checkpoint)

    second = run_training(sample_dataset, out, RESUMABLE_RUN, timeout=TRAINING_TIMEOUT_S)
    if second.returncode != 0:
        fail_with_log("the resumed run failed", second.stdout)
    assert f"1 epoch(s) done, continuing at epoch {resume_epoch}" in second.stdout
    assert printed_epochs(second.stdout) == [2, 3, 4]
    assert (out / "output" / "success").is_file() and not (out / "output" / "failure").exists()
    history = json.loads((out / "model" / artifact.METRICS_FILE).read_text())["epochs"]
    assert [entry["epoch"] for entry in history] == [1, 2, 3, 4]
    # Epoch 1 comes from the first run, carried over in the checkpoint.
    first_train_loss = metrics.parse_metric_lines(first_log)["train:loss"]
    assert history[0]["train_loss"] == pytest.approx(first_train_loss[0], abs=1e-6)
