"""Constants and helpers of the training tests (pytest puts tests/ on sys.path: `import train_helpers`)."""

from __future__ import annotations

import pytest

# Tiny and quick on 2 CPU cores, yet it exercises the default recipe's moving parts:
# ImageNet-style weights from a file, frozen layers (fine-tune last-block), warmup + cosine
# schedule, a data-loader worker, the local smdebug hook saving every 2 steps.
TRAINED_RUN_HYPERPARAMETERS = {
    "model-name": "resnet18",
    "pretrained": True,
    "fine-tune": "last-block",
    "image-size": 32,
    "batch-size": 8,
    "epochs": 3,
    "learning-rate": 0.01,
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
