"""The from-scratch case, side by side with a plain loop: accuracy, wall time and where the time goes.

The case (issue 12): the UCI handwritten digits (``scripts.datasets.digits``: 10 classes, 1,258
training images) at 48 px, ResNet50 from a random initialisation, with only
``--pretrained false --epochs 10 --learning-rate 0.001 --image-size 48`` and every other
hyperparameter at its default. In one invocation:

* the trainer as SageMaker runs it (the training toolkit, the smdebug hook on, a checkpoint every
  epoch, validation every epoch, the artifact exported at the end; ``scripts.local.train``);
* the anchor, ``scripts.bench.plain_loop``: the same model, data, epochs, batch size, optimizer,
  learning rate, data-loader workers and torch threads, in a plain torchvision loop;
* the trainer again at the other ends of the tuner's learning-rate range (0.01, 0.1).

Both are timed from process start to exit. The trainer's own log gives the breakdown: start-up
(to the first batch), training steps, validation, checkpoints, and the finish (test, export, exit),
the OpenVINO int8 export apart (the plain loop exports nothing: the goal leaves it out).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from classifier import artifact
from classifier.hyperparameters import build_parser
from scripts import REPO_ROOT
from scripts.datasets.digits import make_digits_dataset
from scripts.local.train import start_training, stop_training

# The case, as the issue states it: everything else is the trainer's default.
CASE = {"pretrained": False, "epochs": 10, "learning-rate": 0.001, "image-size": 48}
TARGET_ACCURACY = 0.95
TARGET_RATIO = 1.15
SWEEP_LEARNING_RATES = (0.01, 0.1)
RUN_TIMEOUT_S = 3 * 3600

EPOCH_DONE = re.compile(
    r"epoch (\d+)/\d+ done in ([\d.]+) s \(train ([\d.]+) s, validation ([\d.]+) s, "
    r"checkpoint and evidence ([\d.]+) s"
)
FIRST_BATCH = "first training batch ready"
COMPLETE = "training complete"
WORKERS = re.compile(r"device \S+ \((\d+) torch threads\), (\d+) data-loader workers")
# classifier.quantize's last line: the OpenVINO fp32 + int8 export (conversion, calibration, evaluation).
OPENVINO_DONE = re.compile(r"OpenVINO models: .* in ([\d.]+) s")
OPENVINO_ROW = "OpenVINO fp32 + int8 export (the plain loop exports nothing)"


@dataclass
class TrainerRun:
    """One trainer run under the toolkit, timed from its start (seconds)."""

    hyperparameters: dict
    returncode: int = 0
    total_s: float = 0.0
    first_batch_s: float | None = None
    complete_s: float | None = None
    last_epoch_end_s: float | None = None
    epochs: list[dict] = field(default_factory=list)  # epoch, train_s, valid_s, checkpoint_s
    threads: int | None = None
    workers: int | None = None
    openvino_s: float = 0.0  # the int8 export's own seconds (hyperparameter quantize), part of the finish
    metrics: dict = field(default_factory=dict)
    log_tail: str = ""

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test", {}).get("test_accuracy")

    def breakdown(self) -> dict[str, float]:
        train_s = sum(e["train_s"] for e in self.epochs)
        valid_s = sum(e["valid_s"] for e in self.epochs)
        checkpoint_s = sum(e["checkpoint_s"] for e in self.epochs)
        start_s = self.first_batch_s or 0.0
        finish_s = self.total_s - (self.last_epoch_end_s or self.total_s)
        return {
            "start-up (process start to the first batch)": start_s,
            "training steps": train_s,
            "validation": valid_s,
            "checkpoints and evidence": checkpoint_s,
            "test, export, exit": finish_s - self.openvino_s,
            OPENVINO_ROW: self.openvino_s,
            "other": self.total_s - start_s - train_s - valid_s - checkpoint_s - finish_s,
        }

    @property
    def training_s(self) -> float:
        """Wall time without the OpenVINO export: what the plain loop's wall time compares with."""
        return self.total_s - self.openvino_s


def run_trainer(data: Path, out: Path, hyperparameters: dict) -> TrainerRun:
    """Runs the trainer through the toolkit, reading its log line by line as it comes."""
    run = TrainerRun(hyperparameters)
    started = time.monotonic()
    process = start_training(data, out, hyperparameters)
    lines = []
    try:
        for line in process.stdout:
            now = time.monotonic() - started
            lines.append(line)
            if run.first_batch_s is None and FIRST_BATCH in line:
                run.first_batch_s = now
            elif match := EPOCH_DONE.search(line):
                run.epochs.append({
                    "epoch": int(match.group(1)), "train_s": float(match.group(3)),
                    "valid_s": float(match.group(4)), "checkpoint_s": float(match.group(5)),
                })
                run.last_epoch_end_s = now
            elif COMPLETE in line:
                run.complete_s = now
            elif match := WORKERS.search(line):
                run.threads, run.workers = int(match.group(1)), int(match.group(2))
            elif match := OPENVINO_DONE.search(line):
                run.openvino_s = float(match.group(1))
        run.returncode = process.wait(timeout=RUN_TIMEOUT_S)
    except BaseException:
        stop_training(process, 9)
        raise
    run.total_s = time.monotonic() - started
    run.log_tail = "".join(lines[-40:])
    metrics_file = out / "model" / artifact.METRICS_FILE
    if run.returncode == 0 and metrics_file.is_file():
        run.metrics = json.loads(metrics_file.read_text())
    return run


@dataclass
class PlainRun:
    total_s: float
    result: dict

    @property
    def test_accuracy(self) -> float:
        return self.result["test_accuracy"]

    def breakdown(self) -> dict[str, float]:
        start_s, train_s = self.result["first_step_s"], sum(self.result["epoch_s"])
        return {
            "start-up (process start to the first batch)": start_s,
            "training steps": train_s,
            "validation": 0.0,
            "checkpoints and evidence": 0.0,
            "test, export, exit": self.total_s - start_s - train_s,
            OPENVINO_ROW: 0.0,
            "other": 0.0,
        }


def run_plain_loop(data: Path, trainer: TrainerRun) -> PlainRun:
    """The anchor with the trainer's model, epochs, batch, optimizer, learning rate, workers and threads."""
    resolved = build_parser().parse_args(
        [f"--{name}={value}" for name, value in trainer.hyperparameters.items()]
    )
    command = [
        sys.executable, "-m", "scripts.bench.plain_loop", "--data", str(data),
        "--model-name", resolved.model_name, "--epochs", str(resolved.epochs),
        "--batch-size", str(resolved.batch_size), "--learning-rate", str(resolved.learning_rate),
        "--optimizer", resolved.optimizer, "--momentum", str(resolved.momentum),
        "--weight-decay", str(resolved.weight_decay), "--image-size", str(resolved.image_size),
        "--workers", str(trainer.workers or 0),
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=RUN_TIMEOUT_S)
    total_s = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"the plain loop failed: {result.stderr[-3000:]}")
    return PlainRun(total_s, json.loads(result.stdout.strip().splitlines()[-1]))


@dataclass
class RecipeResults:
    data: Path
    trainer: TrainerRun
    plain: PlainRun
    sweep: list[TrainerRun]


def measure(workdir: Path, sweep: tuple[float, ...] = SWEEP_LEARNING_RATES) -> RecipeResults:
    """The case, the anchor and the learning-rate sweep, one after the other on one dataset."""
    data = make_digits_dataset(workdir / "digits", image_size=CASE["image-size"])
    trainer = run_trainer(data, workdir / "trainer", CASE)
    if trainer.returncode != 0:
        raise RuntimeError(f"the trainer failed on the from-scratch case:\n{trainer.log_tail}")
    plain = run_plain_loop(data, trainer)
    runs = [run_trainer(data, workdir / f"trainer-lr-{lr}", {**CASE, "learning-rate": lr}) for lr in sweep]
    return RecipeResults(data, trainer, plain, runs)


def _table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, align, *rows])


def _accuracy(value: float | None) -> str:
    return "failed" if value is None else f"{value:.3f}"


def verdict(results: RecipeResults) -> str:
    """The one-line summary for the top of the report."""
    trainer, plain = results.trainer, results.plain
    ratio = trainer.training_s / plain.total_s
    reached = (trainer.test_accuracy or 0) >= TARGET_ACCURACY
    met = ratio <= TARGET_RATIO and (trainer.test_accuracy or 0) >= plain.test_accuracy
    return (
        f"From scratch with the defaults the trainer reached **{_accuracy(trainer.test_accuracy)}** test "
        f"accuracy ({'meets' if reached else 'misses'} the {TARGET_ACCURACY:.0%} target) in "
        f"{trainer.training_s:.0f} s: **{ratio:.2f}x** the plain loop's {plain.total_s:.0f} s "
        f"(accuracy {plain.test_accuracy:.3f}; goal at most {TARGET_RATIO}x at equal or better accuracy: "
        f"{'met' if met else 'not met'}); the OpenVINO int8 export added {trainer.openvino_s:.0f} s "
        f"({trainer.total_s / plain.total_s:.2f}x with it)."
    )


def markdown(results: RecipeResults) -> str:
    """The section of ``benchmarks/train.md``."""
    trainer, plain = results.trainer, results.plain
    arguments = " ".join(f"--{name} {str(value).lower()}" for name, value in CASE.items())
    ours, theirs = trainer.breakdown(), plain.breakdown()
    breakdown = _table(
        ["", "trainer, s", "plain loop, s", "difference, s"],
        [[name, f"{ours[name]:.1f}", f"{theirs[name]:.1f}", f"{ours[name] - theirs[name]:+.1f}"]
         for name in ours] + [[
            "total (wall)", f"{trainer.total_s:.1f}", f"{plain.total_s:.1f}",
            f"{trainer.total_s - plain.total_s:+.1f} ({trainer.total_s / plain.total_s:.2f}x)",
        ], [
            "**total without the OpenVINO export**", f"**{trainer.training_s:.1f}**",
            f"**{plain.total_s:.1f}**",
            f"**{trainer.training_s - plain.total_s:+.1f}** ({trainer.training_s / plain.total_s:.2f}x)",
        ]],
    )
    per_epoch = _table(
        ["epoch", "trainer: train, s", "validation, s", "checkpoint + evidence, s", "plain loop: train, s"],
        [[str(e["epoch"]), f"{e['train_s']:.1f}", f"{e['valid_s']:.1f}", f"{e['checkpoint_s']:.1f}",
          f"{plain.result['epoch_s'][i]:.1f}" if i < len(plain.result["epoch_s"]) else ""]
         for i, e in enumerate(trainer.epochs)],
    )
    sweep_rows = []
    for run in [trainer, *results.sweep]:
        test = run.metrics.get("test", {})
        sweep_rows.append([
            f"{run.hyperparameters['learning-rate']:g}", _accuracy(test.get("test_accuracy")),
            _accuracy(test.get("test_top5_accuracy")), str(len(run.metrics.get("epochs", []))),
            str(run.metrics.get("best_epoch", "")), f"{run.total_s:.0f}",
        ])
    sweep = _table(["learning-rate", "test accuracy", "test top-5", "epochs run", "best epoch", "wall, s"],
                   sweep_rows)
    return f"""## From scratch, side by side with a plain loop

{verdict(results)}

The case: `{arguments}` on the UCI digits at 48 px (10 classes; 1,258 / 269 / 270 images),
every other hyperparameter at its default. The trainer runs under the SageMaker training toolkit
with the local smdebug hook on, validation and a checkpoint every epoch, the best weights tested
and exported. The plain loop (`scripts/bench/plain_loop.py`) trains the same {CASE["epochs"]} epochs
with the same model, batch, optimizer and learning rate (constant), {trainer.workers} data-loader
workers and {trainer.threads} torch threads, no augmentation, and tests once at the end. Both are
timed from process start to exit. The trainer's export also converts the best weights to OpenVINO
and quantizes them to int8 (hyperparameter `quantize`, on by default: fast CPU serving); the plain
loop has no counterpart of it, so the goal compares the wall times without it.

### Where the time goes

{breakdown}

{per_epoch}

### Learning rate across the tuner's range

{sweep}
"""
