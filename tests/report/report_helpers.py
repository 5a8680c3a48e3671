"""Runs for the debugging report's tests: real trainer runs, and a tiny hooked torch loop.

``real_run`` runs the real trainer (toolkit, ``code/train.py``) with its default hook, as a job
without SageMaker Debugger runs it. ``hooked_run`` runs a tiny hooked torch loop
(``hooked_loop.py``) for what the trainer cannot be made to do (a deep sigmoid network, a badly
scaled initialisation): real smdebug output (Hook with TRAIN/EVAL modes; losses, weights, biases,
gradients), a ``model/metrics.json`` and ``output/data/resource_usage.jsonl`` in the shared
formats, from a few-parameter MLP on synthetic vectors, in seconds. Both run in the trainer's
environment, ``.venv/train``, as child processes: this module imports no torch, so the job-report
tests run in the launchers' environment.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from scripts import REPO_ROOT
from scripts.local.train import run_training

TRAIN_PYTHON = REPO_ROOT / ".venv" / "train" / "bin" / "python"

NUM_CLASSES = 3


@dataclass(frozen=True)
class Scenario:
    """How to build a run: data, model depth/activation, initialisation and learning rate."""

    learning_rate: float = 0.1
    epochs: int = 4
    train_size: int = 96
    valid_size: int = 48
    features: int = 16
    hidden: int = 32
    depth: int = 1  # hidden layers
    activation: str = "relu"
    init_std: float | None = None  # None: PyTorch's default initialisation
    batch_size: int = 8
    num_classes: int = NUM_CLASSES


SCENARIOS = {
    "healthy": Scenario(epochs=3, train_size=192),
    "vanishing": Scenario(depth=10, activation="sigmoid", epochs=1),
    "poor_init": Scenario(init_std=1e-4, epochs=1),
}


def hooked_run(out_dir: Path, scenario: str, seed: int = 0) -> Path:
    """Runs the hooked loop (``hooked_loop.py``) of ``SCENARIOS[scenario]`` in the trainer's
    environment, ``.venv/train`` (the launcher tests' environment has no torch); returns OUT."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {sorted(SCENARIOS)}")
    environment = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'code'}{os.pathsep}{REPO_ROOT}"}
    fields = json.dumps(dataclasses.asdict(SCENARIOS[scenario]))
    command = [str(TRAIN_PYTHON), str(Path(__file__).with_name("hooked_loop.py")), str(out_dir), fields,
               "--seed", str(seed)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment,
                            timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        log = result.stdout + result.stderr
        fail_with_log(f"hooked run {scenario} failed (exit {result.returncode})", log)
    return Path(out_dir)


# ---------------------------------------------------------------- real trainer runs
def real_run(data_dir: Path, out_dir: Path, hyperparameters: dict, save_interval: int) -> Path:
    """One run of the real trainer through the toolkit (``scripts.local.train``) with its default
    hook, as a job without SageMaker Debugger runs it: the loss at every step, weights, biases and
    gradients every ``save_interval`` steps, in ``output/data``; fails the test with the log if
    training fails."""
    result = run_training(data_dir, out_dir, {**hyperparameters, "debugger-save-interval": save_interval},
                          timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        fail_with_log(f"training run {out_dir.name} failed (exit {result.returncode})", result.stdout)
    return Path(out_dir)
