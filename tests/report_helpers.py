"""A tiny hooked torch training loop that writes a run's OUT folder the way the trainer does.

Real smdebug output (Hook with TRAIN/EVAL modes; losses, weights, biases, gradients), a
``model/metrics.json`` and ``output/data/resource_usage.jsonl`` in the shared formats, from a
few-parameter MLP on synthetic vectors: seconds on one core. Each scenario builds one kind of
run the debugging rules must tell apart.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from smdebug.pytorch import Hook, SaveConfig, modes

from classifier.artifact import METRICS_FILE

RESOURCE_USAGE_FILE = "resource_usage.jsonl"  # TODO: classifier.resources once the trainer lands
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
    random_labels: bool = False  # labels independent of the inputs: nothing to generalise
    batch_size: int = 8


SCENARIOS = {
    "healthy": Scenario(epochs=3, train_size=192),
    "no_learning": Scenario(learning_rate=1e-7),
    "overfit": Scenario(train_size=8, valid_size=48, features=64, hidden=256, random_labels=True,
                        epochs=20, learning_rate=0.05, batch_size=4),
    "vanishing": Scenario(depth=10, activation="sigmoid", epochs=1),
    "poor_init": Scenario(init_std=1e-4, epochs=1),
}


def _data(scenario: Scenario, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    inputs = torch.randn(size, scenario.features, generator=generator)
    if not scenario.random_labels:
        inputs[torch.arange(size), labels] += 3.0  # the class shows in one feature
    return inputs, labels


def _model(scenario: Scenario) -> torch.nn.Module:
    activation = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}[scenario.activation]
    layers: list[torch.nn.Module] = []
    width = scenario.features
    for _ in range(scenario.depth):
        layers += [torch.nn.Linear(width, scenario.hidden), activation()]
        width = scenario.hidden
    layers.append(torch.nn.Linear(width, NUM_CLASSES))
    model = torch.nn.Sequential(*layers)
    if scenario.init_std is not None:
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=scenario.init_std)
    return model


def _resource_sample(started: float) -> dict:
    memory = psutil.virtual_memory()
    return {
        "elapsed_s": round(time.monotonic() - started, 3),
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_used_mb": round(memory.used / 2**20, 1),
        "memory_percent": memory.percent,
        "gpu_percent": None,
        "gpu_memory_used_mb": None,
    }


def hooked_run(out_dir: Path, scenario: Scenario, seed: int = 0) -> Path:
    """Trains ``scenario`` with an smdebug hook saving every step; returns the OUT folder."""
    out_dir = Path(out_dir)
    for folder in ("model", "output/data", "output/tensors"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = _data(scenario, scenario.train_size, generator)
    valid_x, valid_y = _data(scenario, scenario.valid_size, generator)
    model = _model(scenario)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=scenario.learning_rate, momentum=0.9)
    hook = Hook(
        out_dir=str(out_dir / "output" / "tensors"),
        save_config=SaveConfig(save_interval=1),
        include_collections=["losses", "weights", "biases", "gradients"],
    )
    hook.register_module(model)
    hook.register_loss(loss_fn)

    started = time.monotonic()
    psutil.cpu_percent(interval=None)
    samples, epochs = [], []
    for epoch in range(1, scenario.epochs + 1):
        hook.set_mode(modes.TRAIN)
        model.train()
        order = torch.randperm(scenario.train_size, generator=generator)
        train_loss, train_correct = 0.0, 0
        for start in range(0, scenario.train_size, scenario.batch_size):
            batch = order[start:start + scenario.batch_size]
            optimizer.zero_grad()
            logits = model(train_x[batch])
            loss = loss_fn(logits, train_y[batch])
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(batch)
            train_correct += int((logits.argmax(1) == train_y[batch]).sum())
        hook.set_mode(modes.EVAL)
        model.eval()
        valid_loss, valid_correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, scenario.valid_size, scenario.batch_size):
                logits = model(valid_x[start:start + scenario.batch_size])
                loss = loss_fn(logits, valid_y[start:start + scenario.batch_size])
                valid_loss += loss.item() * len(logits)
                valid_correct += int((logits.argmax(1) == valid_y[start:start + scenario.batch_size]).sum())
        epochs.append({
            "epoch": epoch,
            "train_loss": train_loss / scenario.train_size,
            "train_accuracy": train_correct / scenario.train_size,
            "valid_loss": valid_loss / scenario.valid_size,
            "valid_accuracy": valid_correct / scenario.valid_size,
            "learning_rate": scenario.learning_rate,
            "seconds": round(time.monotonic() - started, 3),
        })
        samples.append(_resource_sample(started))
    hook.close()

    best = min(epochs, key=lambda e: e["valid_loss"] if math.isfinite(e["valid_loss"]) else math.inf)
    metrics = {
        "hyperparameters": {"learning-rate": scenario.learning_rate, "epochs": scenario.epochs,
                            "batch-size": scenario.batch_size},
        "epochs": epochs,
        "best_epoch": best["epoch"],
        "test": {"test_loss": best["valid_loss"], "test_accuracy": best["valid_accuracy"]},
        "num_classes": NUM_CLASSES,
        "bad_images": {"train": 0, "valid": 0, "test": 0},
    }
    (out_dir / "model" / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    lines = "".join(json.dumps(sample) + "\n" for sample in samples)
    (out_dir / "output" / "data" / RESOURCE_USAGE_FILE).write_text(lines)
    (out_dir / "output" / "success").write_text("")
    return out_dir
