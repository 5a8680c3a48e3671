"""Optimizer and learning-rate schedule (linear warmup, then cosine, step or constant), per epoch."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

# The step schedule multiplies the learning rate by STEP_GAMMA at each third of the epochs after
# warmup: the classic ResNet recipe (x0.1 at epochs 30 and 60 of 90), scaled to the run's length.
STEP_GAMMA = 0.1
STEP_COUNT = 3


def build_optimizer(
    model: nn.Module, name: str, learning_rate: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over the trainable parameters.

    Biases and normalisation parameters (the 1-D tensors) get no weight decay.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(epoch: int, epochs: int, warmup_epochs: int, schedule: str) -> float:
    """The learning-rate multiplier for 0-based ``epoch``.

    Warmup rises linearly to 1 over ``warmup_epochs``; then ``cosine`` decays towards 0
    by the last epoch, ``step`` divides by 10 at each third, ``constant`` stays at 1.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    after, remaining = epoch - warmup_epochs, max(1, epochs - warmup_epochs)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * after / remaining))
    if schedule == "step":
        return STEP_GAMMA ** (after * STEP_COUNT // remaining)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler (``scheduler.step()`` after each epoch) following ``lr_factor``."""
    factor = partial(lr_factor, epochs=epochs, warmup_epochs=warmup_epochs, schedule=schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
