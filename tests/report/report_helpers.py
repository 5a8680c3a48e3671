"""Runs for the debugging report's tests: real trainer runs, and a tiny hooked torch loop.

``real_run`` runs the real trainer (toolkit, ``code/train.py``) with the Debugger hook set up
as on SageMaker. ``hooked_run`` is a tiny hooked torch loop for what the trainer cannot be made
to do (a deep sigmoid network, a badly scaled initialisation): real smdebug output (Hook with
TRAIN/EVAL modes; losses, weights, biases, gradients), a ``model/metrics.json`` and
``output/data/resource_usage.jsonl`` in the shared formats, from a few-parameter MLP on
synthetic vectors, in seconds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from smdebug.pytorch import Hook, SaveConfig, modes
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import sagemaker_env
from classifier.artifact import METRICS_FILE, RESOURCE_USAGE_FILE
from classifier.resources import sample
from scripts.aws import custom_rules, debugger_config
from scripts.local.train import run_training

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


SCENARIOS = {
    "healthy": Scenario(epochs=3, train_size=192),
    "vanishing": Scenario(depth=10, activation="sigmoid", epochs=1),
    "poor_init": Scenario(init_std=1e-4, epochs=1),
}


def _data(scenario: Scenario, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
    inputs = torch.randn(size, scenario.features, generator=generator)
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
        samples.append(sample(started))  # the trainer's own sampler
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
    lines = "".join(json.dumps(each) + "\n" for each in samples)
    (out_dir / "output" / "data" / RESOURCE_USAGE_FILE).write_text(lines)
    (out_dir / "output" / "success").write_text("")
    return out_dir


# ---------------------------------------------------------------- real trainer runs
def write_sagemaker_hook_config(out_dir: Path, save_interval: int) -> Path:
    """``input/config/debughookconfig.json`` as SageMaker writes it for a job the launcher creates
    (with the custom rules' losses at every step); the trainer's hook follows it. Returns its path."""
    config = debugger_config.debug_hook_config("s3://unused/debug-output", save_interval)
    config["LocalPath"] = str(Path(out_dir).resolve() / "output" / "tensors")
    config["CollectionConfigurations"] = custom_rules.losses_every_step(config["CollectionConfigurations"])
    path = Path(out_dir) / sagemaker_env.DEBUGGER_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def real_run(data_dir: Path, out_dir: Path, hyperparameters: dict, save_interval: int) -> Path:
    """One run of the real trainer through the toolkit (``scripts.local.train``), with the hook
    configured as on SageMaker; fails the test with the log if training fails."""
    write_sagemaker_hook_config(out_dir, save_interval)
    result = run_training(data_dir, out_dir, hyperparameters, timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        fail_with_log(f"training run {out_dir.name} failed (exit {result.returncode})", result.stdout)
    return Path(out_dir)
