"""Shared session fixtures: a tiny learnable dataset, and ONE real training run on it.

``trained_run`` runs ``code/train.py`` through the SageMaker training toolkit on the host
(``scripts.train_local.run_training``), like ``make train-local``; every test that needs a
trained artifact, smdebug output or a training log reuses it, so the suite trains once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from train_helpers import TRAINED_RUN_HYPERPARAMETERS, TRAINING_TIMEOUT_S, fail_with_log

from scripts.sample_data import make_dataset
from scripts.train_local import run_training


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """3 classes (``001.Affenpinscher`` ...), 24/8/8 images per class in train/valid/test, 64 px."""
    return make_dataset(tmp_path_factory.mktemp("sample_dataset"), num_classes=3, seed=0)


@pytest.fixture(scope="session")
def imagenet_weights_file(tmp_path_factory) -> Path:
    """A resnet18 state_dict shaped like torchvision's ImageNet weights (random: none can be downloaded)."""
    import torch
    from torchvision import models

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet-shaped.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def _training_result(sample_dataset, imagenet_weights_file, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("trained_run")
    hyperparameters = {**TRAINED_RUN_HYPERPARAMETERS, "weights-path": str(imagenet_weights_file)}
    result: subprocess.CompletedProcess = run_training(
        sample_dataset, out, hyperparameters, timeout=TRAINING_TIMEOUT_S
    )
    if result.returncode != 0:
        fail_with_log(f"the shared training run failed (exit {result.returncode})", result.stdout)
    return out, result.stdout


@pytest.fixture(scope="session")
def trained_run(_training_result) -> Path:
    """The OUT folder (like /opt/ml) of one successful training run on ``sample_dataset``."""
    return _training_result[0]


@pytest.fixture(scope="session")
def trained_run_log(_training_result) -> str:
    """That run's whole log (toolkit and train.py, stdout and stderr)."""
    return _training_result[1]
