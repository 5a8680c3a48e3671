"""Real trainer runs for the rule checks, and the browser the report is looked at with.

Session-scoped: the report and rule tests share them, so each trains once. The healthy and
the not-learning runs differ in their learning rate alone; the healthy one also stands for a job
`make train` started, in the job-report tests. (The suite's shared ``trained_run``
is no healthy run in the rules' sense: its training loss falls by less than 10 % in its three
epochs.)

``chromium``: Debian's headless Chromium, installed with apt-get when missing and root (as the
Docker plumbing installs its packages); otherwise the browser tests are skipped with a warning,
or fail under CI (``CI=true``), like the Docker tests.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest
from report_helpers import real_run

from scripts.datasets.sample import make_dataset
from scripts.engine import apt
from scripts.report.browser import find_chromium

CHROMIUM_PACKAGE = "chromium"

# Small and quick on 2 cores: resnet18 on 32 px images; tensors saved every 25 steps (losses: every step).
# These runs train for about a second: resource samples every 50 ms give the profiler rules the
# five samples while training they need even on a quiet machine (at 200 ms a clean CI run had four).
TINY = {"model-name": "resnet18", "pretrained": False, "image-size": 32, "workers": 0, "seed": 0,
        "early-stopping-patience": 0, "resource-sample-seconds": 0.05}
SAVE_INTERVAL = 25


def tiny_dataset(root: Path, images_per_class: dict[str, int]) -> Path:
    return make_dataset(root / "data", num_classes=3, counts=images_per_class, size=32, seed=1)


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory) -> Path:
    """One image a class seen as it is (no augmentation), the whole network trained for many epochs:
    it memorises them, and the validation loss climbs from epoch 3."""
    root = tmp_path_factory.mktemp("overfit_run")
    data = tiny_dataset(root, {"train": 1, "valid": 4, "test": 2})
    hyperparameters = {
        **TINY, "fine-tune": "all", "optimizer": "adamw", "learning-rate": 0.01, "weight-decay": 0,
        "label-smoothing": 0, "lr-schedule": "constant", "warmup-epochs": 0, "epochs": 10, "batch-size": 6,
        "augment": "none",
    }
    return real_run(data, root / "out", hyperparameters, SAVE_INTERVAL)


@pytest.fixture(scope="session")
def learnable_dataset(tmp_path_factory) -> Path:
    # 24 validation images: three full batches of 8 (the rules average batch losses unweighted).
    return tiny_dataset(tmp_path_factory.mktemp("learnable"), {"train": 16, "valid": 8, "test": 2})


# Only the head trains, on top of fixed (ImageNet-shaped, random) weights: the trainer refuses to
# freeze layers it initialised at random itself.
HEAD_ONLY = {
    **TINY, "pretrained": True, "fine-tune": "head", "optimizer": "sgd", "epochs": 3, "batch-size": 8,
}


@pytest.fixture(scope="session")
def healthy_run(learnable_dataset, imagenet_weights_file, tmp_path_factory) -> Path:
    """The new head learns the classes: both losses fall."""
    out = tmp_path_factory.mktemp("healthy_run") / "out"
    hyperparameters = {**HEAD_ONLY, "weights-path": str(imagenet_weights_file), "learning-rate": 0.01}
    return real_run(learnable_dataset, out, hyperparameters, SAVE_INTERVAL)


@pytest.fixture(scope="session")
def no_learning_run(learnable_dataset, imagenet_weights_file, tmp_path_factory) -> Path:
    """The same run with a learning rate so small that nothing moves."""
    out = tmp_path_factory.mktemp("no_learning_run") / "out"
    hyperparameters = {**HEAD_ONLY, "weights-path": str(imagenet_weights_file), "learning-rate": 1e-6}
    return real_run(learnable_dataset, out, hyperparameters, SAVE_INTERVAL)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a headless-capable Chromium."""
    found = find_chromium()
    if found is None and apt.can_install():
        try:
            apt.install_debian_packages(CHROMIUM_PACKAGE)
        except subprocess.CalledProcessError as error:
            pytest.fail(f"apt-get could not install {CHROMIUM_PACKAGE}: {error}", pytrace=False)
        found = find_chromium()
    if found is None:
        message = (f"NO CHROMIUM: the browser tests did not run (install Debian's {CHROMIUM_PACKAGE}, "
                   "or set CHROMIUM=/path/to/chrome)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return found
