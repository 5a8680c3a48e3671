"""Optimizer and learning-rate schedule: linear warmup step by step, then cosine, step or constant."""

from __future__ import annotations

import math
from collections.abc import Callable
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
    """The learning-rate multiplier for 0-based ``epoch``, per epoch.

    Warmup epochs get 1: within them ``warmup_factor`` sets each step's rate. After warmup, ``cosine``
    decays towards 0 by the last epoch, ``step`` divides by 10 at each third, ``constant`` stays at 1.
    """
    if epoch < warmup_epochs:
        return 1.0
    after, remaining = epoch - warmup_epochs, max(1, epochs - warmup_epochs)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * after / remaining))
    if schedule == "step":
        return STEP_GAMMA ** (after * STEP_COUNT // remaining)
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def warmup_factor(epoch: int, step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """The multiplier for 0-based ``step`` of 0-based ``epoch`` during warmup: it rises linearly, step
    by step, to 1 at warmup's last step (1 after warmup).

    Step by step, not epoch by epoch: a random network's first steps at even half the rate can
    scatter its weights (AdamW at 0.1 from scratch learned next to nothing with per-epoch warmup).
    """
    steps_per_epoch = max(1, steps_per_epoch)
    warmup_steps = warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step + 1
    return min(1.0, done / warmup_steps) if warmup_steps else 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler (``scheduler.step()`` after each epoch) following ``lr_factor``."""
    factor = partial(lr_factor, epochs=epochs, warmup_epochs=warmup_epochs, schedule=schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_for_epoch(
    optimizer: torch.optim.Optimizer, epoch: int, steps_per_epoch: int, warmup_epochs: int
) -> Callable[[int], None] | None:
    """Within warmup, what to call with each step's 0-based index before the step of 0-based ``epoch``;
    None after warmup.

    It sets each parameter group's rate to ``warmup_factor`` times its scheduled rate
    (``initial_lr``); the per-epoch scheduler recomputes every rate at its next step.
    """
    if epoch >= warmup_epochs:
        return None

    def before_step(step: int) -> None:
        factor = warmup_factor(epoch, step, steps_per_epoch, warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    return before_step
