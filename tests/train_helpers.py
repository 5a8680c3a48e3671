"""Constants and helpers of the training tests (pytest puts tests/ on sys.path: `import train_helpers`)."""

from __future__ import annotations

import os

import pytest

# Tiny and quick on 2 CPU cores, yet it exercises the transfer-learning recipe's moving parts:
# ImageNet-style weights from a file, frozen layers (fine-tune last-block), SGD with warmup + cosine
# schedule, a data-loader worker, the local smdebug hook saving every 2 steps. (The from-scratch
# defaults have their own run: tests/train/test_from_scratch.py.)
TRAINED_RUN_HYPERPARAMETERS = {
    "model-name": "resnet18",
    "pretrained": True,
    "fine-tune": "last-block",
    "image-size": 32,
    "batch-size": 8,
    "epochs": 3,
    "learning-rate": 0.01,
    "optimizer": "sgd",
    "warmup-epochs": 1,
    "workers": 1,
    "seed": 0,
    "debugger-save-interval": 2,
    "resource-sample-seconds": 0.2,
}
TRAINING_TIMEOUT_S = 600
# What each SageMaker Debugger built-in rule reads (AWS's list of built-in rules): the launcher's
# DebugHookConfig must make the trainer's hook save these collections.
RULE_COLLECTIONS = {
    "VanishingGradient": "gradients",
    "Overfit": "losses",
    "Overtraining": "losses",
    "PoorWeightInitialization": "relu_input",
    "LossNotDecreasing": "losses",
}


def fail_with_log(message: str, log: str) -> None:
    pytest.fail(f"{message}\n---- training log (end) ----\n{log[-6000:]}", pytrace=False)


class CodeOnLoad:
    """A pickled object that runs a function when it is unpickled (here: makes the folder ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)
