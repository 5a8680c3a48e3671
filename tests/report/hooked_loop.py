"""The tiny hooked torch loop of the report tests, run by ``report_helpers.hooked_run`` in ``.venv/train``.

    python tests/report/hooked_loop.py OUT SCENARIO_JSON [--seed 0]

Trains a scenario (``report_helpers.Scenario`` as JSON: a few-parameter MLP on synthetic vectors)
with an smdebug hook saving every step, and writes OUT like a trainer run: ``output/tensors/``,
``model/metrics.json``, ``output/data/resource_usage.jsonl`` and ``output/success``. It needs the
trainer's environment only (torch, smdebug, ``code/``), not the test tools.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from types import SimpleNamespace as Scenario

import torch
from smdebug.pytorch import Hook, SaveConfig, modes

from classifier.artifact import METRICS_FILE, RESOURCE_USAGE_FILE
from classifier.resources import sample


def _data(scenario: Scenario, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, scenario.num_classes, (size,), generator=generator)
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
    layers.append(torch.nn.Linear(width, scenario.num_classes))
    model = torch.nn.Sequential(*layers)
    if scenario.init_std is not None:
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=scenario.init_std)
    return model


def run_loop(out_dir: Path, scenario: Scenario, seed: int = 0) -> Path:
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
        "num_classes": scenario.num_classes,
        "bad_images": {"train": 0, "valid": 0, "test": 0},
    }
    (out_dir / "model" / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    lines = "".join(json.dumps(each) + "\n" for each in samples)
    (out_dir / "output" / "data" / RESOURCE_USAGE_FILE).write_text(lines)
    (out_dir / "output" / "success").write_text("")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("scenario", type=json.loads, help="report_helpers.Scenario's fields as JSON")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run_loop(args.out, Scenario(**args.scenario), args.seed)


if __name__ == "__main__":
    main()
