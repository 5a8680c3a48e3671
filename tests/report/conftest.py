"""Real trainer runs for the rule checks.

Session-scoped: the report and rule tests share them, so each trains once. The healthy and
the not-learning runs differ in their learning rate alone. (The suite's shared ``trained_run``
is no healthy run in the rules' sense: its training loss falls by less than 10 % in its three
epochs, and its default hook saves every second evaluation loss only.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from report_helpers import real_run

from scripts.datasets.sample import make_dataset

# Small and quick on 2 cores: resnet18 on 32 px images; tensors saved every 25 steps (losses: every step).
TINY = {"model-name": "resnet18", "pretrained": False, "image-size": 32, "workers": 0, "seed": 0,
        "early-stopping-patience": 0, "resource-sample-seconds": 0.5}
SAVE_INTERVAL = 25


def tiny_dataset(root: Path, images_per_class: dict[str, int]) -> Path:
    return make_dataset(root / "data", num_classes=3, counts=images_per_class, size=32, seed=1)


@pytest.fixture(scope="session")
def overfit_run(tmp_path_factory) -> Path:
    """One image a class seen as it is (no augmentation), the whole network trained for many epochs:
    it memorises them, and the validation loss climbs from epoch 5."""
    root = tmp_path_factory.mktemp("overfit_run")
    data = tiny_dataset(root, {"train": 1, "valid": 4, "test": 2})
    hyperparameters = {
        **TINY, "fine-tune": "all", "optimizer": "adamw", "learning-rate": 0.002, "weight-decay": 0,
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
