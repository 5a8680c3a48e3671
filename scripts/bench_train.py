"""Training throughput: the smdebug hook's cost, and data loading against model steps.

    python -m scripts.bench_train [--model-name resnet50] [--image-size 64] [--steps 200] [--out FILE]
    make bench-train

In one process, on one generated dataset, with one seed:

* data loader: images/s of the training loader alone (decode + augmentation, the default workers);
* model step: images/s of ``train.train_one_epoch`` over batches already in memory, without a
  hook and with the local default hook (``classifier.debugger``, the default save interval),
  in alternating rounds so that both see the same machine load; the hook's cost is the
  difference in total time, save steps included.

Writes a Markdown report (default ``benchmarks/train.md``).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

import train
from classifier import models, optimization, sagemaker_env
from classifier.checkpoints import StopSignal
from classifier.data import build_loaders, load_splits
from classifier.debugger import LOCAL_COLLECTIONS, Debugger
from classifier.hyperparameters import build_parser
from scripts.sample_data import make_dataset

DEFAULTS = build_parser().parse_args([])
CPU = torch.device("cpu")


def loader_throughput(loader, passes: int) -> float:
    """Images per second of a loader on its own."""
    next(iter(loader))  # start the workers
    started, images = time.perf_counter(), 0
    for _ in range(passes):
        for batch, _targets in loader:
            images += batch.size(0)
    return images / (time.perf_counter() - started)


class Variant:
    """One network (same seed and weights as the others) trained on the same batches."""

    def __init__(self, name: str, model_name: str, num_classes: int, seed: int, debugger: Debugger):
        torch.manual_seed(seed)
        self.name = name
        self.model = models.build_model(model_name, num_classes, fine_tune=DEFAULTS.fine_tune)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=DEFAULTS.label_smoothing)
        self.optimizer = optimization.build_optimizer(
            self.model, DEFAULTS.optimizer, DEFAULTS.learning_rate, DEFAULTS.momentum, DEFAULTS.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.debugger = debugger
        debugger.watch(self.model, self.criterion)
        self.round_seconds: list[float] = []
        self.images = 0

    def run(self, batches: list) -> None:
        self.debugger.train()
        started = time.perf_counter()
        train.train_one_epoch(
            self.model, batches, self.criterion, self.optimizer, self.scaler, CPU, StopSignal()
        )
        self.round_seconds.append(time.perf_counter() - started)
        self.images += sum(images.size(0) for images, _ in batches)

    @property
    def images_per_second(self) -> float:
        return self.images / sum(self.round_seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-name", default=DEFAULTS.model_name)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=160, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds the steps are split into")
    parser.add_argument("--save-interval", type=int, default=DEFAULTS.debugger_save_interval)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/train.md"))
    args = parser.parse_args(argv)

    workers = sagemaker_env.num_cpus()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        counts = {"train": 64, "valid": 1, "test": 1}
        root = make_dataset(Path(tmp) / "data", 5, counts, size=args.source_size, seed=args.seed)
        data = load_splits({"training": root}, max_bad_fraction=0.0, scan_threads=workers)
        torch.manual_seed(args.seed)
        loader = build_loaders(data, args.image_size, args.batch_size, workers, pin_memory=False)["train"]
        loader_ips = loader_throughput(loader, passes=2)

        steps_per_round = args.steps // args.rounds
        batches = list(itertools.islice(itertools.cycle(list(loader)), steps_per_round))
        num_classes = len(data.class_folders)
        hook = Debugger.create(Path(tmp) / "no-config.json", Path(tmp) / "tensors", args.save_interval)
        plain = Variant("no hook", args.model_name, num_classes, args.seed, Debugger())
        hooked = Variant("local default hook", args.model_name, num_classes, args.seed, hook)
        for variant in (plain, hooked):  # warm up, untimed
            variant.run(batches[:2])
            variant.round_seconds, variant.images = [], 0
        for round_index in range(args.rounds):  # ABBA order cancels drifts in machine load
            order = (plain, hooked) if round_index % 2 == 0 else (hooked, plain)
            for variant in order:
                variant.run(batches)
        hook.close()
        saved_steps = len(list((Path(tmp) / "tensors" / "events").iterdir()))

    overhead = plain.images_per_second / hooked.images_per_second - 1
    # Per-round ratios show the noise of a shared machine (the rounds with a save step are the highest).
    ratios = sorted(h / p - 1 for h, p in zip(hooked.round_seconds, plain.round_seconds, strict=True))
    report = f"""# Training benchmark

Generated by `make bench-train` (`scripts/bench_train.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.
Machine: {platform.processor() or platform.machine()}, {workers} CPU cores, no GPU; torch {torch.__version__}.
Setup: {args.model_name} (fine-tune `{DEFAULTS.fine_tune}`, SGD), {args.image_size} px crops from
{args.source_size} px JPEGs, batch {args.batch_size}, seed {args.seed}; {steps_per_round * args.rounds} timed
steps per variant in {args.rounds} alternating rounds.

## smdebug hook cost

The local default hook saves {", ".join(LOCAL_COLLECTIONS)} every {args.save_interval} steps
(weights, biases and gradients in TRAIN mode only); {saved_steps} steps were saved.

| variant | images/s |
| --- | ---: |
| {plain.name} | {plain.images_per_second:.1f} |
| {hooked.name} (save interval {args.save_interval}) | {hooked.images_per_second:.1f} |

Hook overhead: **{overhead:+.1%}** of training time, save steps included (target: at most +10%).
Per round ({steps_per_round} steps each, paired with the neighbouring no-hook round): median
{statistics.median(ratios):+.1%}, from {ratios[0]:+.1%} to {ratios[-1]:+.1%}.

## Data loading against model steps

| stage | images/s |
| --- | ---: |
| data loader alone ({workers} workers: decode, augment, collate) | {loader_ips:.1f} |
| model step alone (forward, backward, optimizer; no hook) | {plain.images_per_second:.1f} |

The slower of the two bounds training throughput: here the
{"data loader" if loader_ips < plain.images_per_second else "model step"} is the bottleneck.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
