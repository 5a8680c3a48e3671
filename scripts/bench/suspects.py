"""Where a training epoch's time went, suspect by suspect, each measured before and after its fix.

On the from-scratch case's data and model (ResNet50, the digits at 48 px, batch 64), in this
process, with this process's torch threads:

* data-loader workers: training steps fed by two worker processes (the old default on two
  cores) against batches loaded in the training process (the default on a CPU now);
* memory layout: the same steps in channels-last (the trainer's) against contiguous tensors;
* checkpoint: a synchronous ``torch.save`` of the whole state (model, AdamW moments, best
  weights, as every epoch used to write) against what the loop waits for now (a copy of the
  state; the best weights are stored once; the file is written on a thread);
* best-weights copy and one resource sample: their cost where they happen.

The variants take turns (ABBA) so that both see the same load on a shared machine.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classifier import checkpoints, models, optimization, resources, training_state
from classifier.checkpoint_writer import CheckpointWriter
from classifier.data import build_loaders, load_splits
from classifier.hyperparameters import build_parser

DEFAULTS = build_parser().parse_args([])
CPU = torch.device("cpu")
STEPS = 8  # timed steps per variant and round
ROUNDS = 2  # A B then B A


@dataclass
class Suspect:
    name: str
    before: str  # what was there
    after: str  # what there is now
    before_s: float
    after_s: float
    unit: str  # what the seconds are per

    def saved(self) -> str:
        """The share of the old cost that is gone, or a dash where nothing changed."""
        if self.after_s == self.before_s or not self.before_s:
            return "-"
        return f"{1 - self.after_s / self.before_s:.0%}"


def _model_and_optimizer(num_classes: int, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = models.build_model(DEFAULTS.model_name, num_classes, pretrained=False, fine_tune="all")
    optimizer = optimization.build_optimizer(
        model, DEFAULTS.optimizer, DEFAULTS.learning_rate, DEFAULTS.momentum, DEFAULTS.weight_decay
    )
    return model, optimizer


def _steps_seconds(model, optimizer, batches, channels_last: bool) -> float:
    """Seconds per training step over ``batches`` (an iterable of ``(images, targets)``)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=DEFAULTS.label_smoothing)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    count, started = 0, time.perf_counter()
    for images, targets in batches:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        images = images.contiguous(memory_format=layout)
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += 1
    return (time.perf_counter() - started) / max(count, 1)


def _alternate(measure_a, measure_b) -> tuple[float, float]:
    """Medians of ``measure_a()`` and ``measure_b()``, run A B B A ... (ROUNDS x 2 each)."""
    a, b = [], []
    for round_ in range(ROUNDS):
        order = ((measure_a, a), (measure_b, b)) if round_ % 2 == 0 else ((measure_b, b), (measure_a, a))
        for measure, results in order:
            results.append(measure())
    return statistics.median(a), statistics.median(b)


def measure(data_root: Path, image_size: int) -> list[Suspect]:
    splits = load_splits({"training": data_root})
    num_classes = len(splits.class_folders)
    model, optimizer = _model_and_optimizer(num_classes)
    suspects = []

    def steps_with(workers: int) -> float:
        loader = build_loaders(splits, image_size, DEFAULTS.batch_size, workers, pin_memory=False,
                               augment=DEFAULTS.augment)["train"]
        batches = itertools.islice(loader, 1 + STEPS)
        next(batches)  # worker start-up is not a step
        return _steps_seconds(model, optimizer, batches, channels_last=True)

    two, none = _alternate(lambda: steps_with(2), lambda: steps_with(0))
    suspects.append(Suspect("data-loader workers", "2 worker processes",
                            "none: loaded in the training process", two, none, "step"))

    loader = build_loaders(splits, image_size, DEFAULTS.batch_size, 0, pin_memory=False)["train"]
    fixed = list(itertools.islice(loader, STEPS))
    contiguous, channels_last = _alternate(
        lambda: _steps_seconds(model, optimizer, fixed, channels_last=False),
        lambda: _steps_seconds(model, optimizer, fixed, channels_last=True),
    )
    suspects.append(Suspect("memory layout", "contiguous (NCHW)", "channels-last", contiguous,
                            channels_last, "step"))

    schedule = optimization.build_scheduler(optimizer, DEFAULTS.epochs, DEFAULTS.warmup_epochs,
                                            DEFAULTS.lr_schedule)
    state = training_state.TrainingState(
        model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False),
        identity={"model_name": "bench", "class_folders": []},
    )
    state.end_epoch({"epoch": 1, "valid_loss": 1.0}, training_state.EarlyStopping(patience=0))
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as folder:
        directory = Path(folder)
        writer = CheckpointWriter(directory)

        def synchronous() -> float:
            started = time.perf_counter()
            checkpoints.save_checkpoint(directory, state.state_dict(at_epoch_end=False))
            return time.perf_counter() - started

        def background() -> float:
            started = time.perf_counter()
            writer.save(state, at_epoch_end=True)
            waited = time.perf_counter() - started
            writer.wait()  # an epoch is far longer than a write: the next save never waits
            return waited

        before, after = _alternate(synchronous, background)
    suspects.append(Suspect("checkpoint", "torch.save of model, optimizer and best weights",
                            "copy; best stored once; written on a thread", before, after, "epoch"))

    started = time.perf_counter()
    for _ in range(3):
        training_state.cpu_state_dict(model)
    copy_s = (time.perf_counter() - started) / 3
    suspects.append(Suspect("best-weights copy", "a copy per better epoch", "unchanged (needed)", copy_s,
                            copy_s, "better epoch"))

    resources.sample(time.monotonic())  # the first call sets psutil's reference
    started = time.perf_counter()
    for _ in range(10):
        resources.sample(time.monotonic())
    sample_s = (time.perf_counter() - started) / 10
    suspects.append(Suspect("resource sampler", f"one sample every {DEFAULTS.resource_sample_seconds:g} s",
                            "unchanged", sample_s, sample_s, "sample"))
    return suspects


def markdown(suspects: list[Suspect], threads: int) -> str:
    rows = "\n".join(
        f"| {s.name} | {s.before} | {s.before_s * 1000:.3g} | {s.after} | {s.after_s * 1000:.3g} "
        f"| per {s.unit} | {s.saved()} |"
        for s in suspects
    )
    return f"""### The suspects, one by one

Measured in one process on the case's data and model, {threads} torch thread(s), {STEPS} steps a
variant, the variants alternating ({ROUNDS} rounds, medians). "Saved" is the share of the old cost
that is gone.

| suspect | before | ms | now | ms | | saved |
| --- | --- | ---: | --- | ---: | --- | ---: |
{rows}

The smdebug hook's share is measured in its own section below.
"""
