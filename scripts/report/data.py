"""What the debugging report plots and summarises, read from a run's evidence (no drawing here).

Each ``Plot`` holds exactly the numbers that get drawn, so they can be checked against the
smdebug trial, ``metrics.json`` and the resource samples they came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import TensorUnavailableForStep

from scripts.report.rules import GRADIENTS, WEIGHTS, layer_name, loss_at, tensor_l2_norm


@dataclass(frozen=True)
class Series:
    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    log_y: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not any(s.x for s in self.series)


def _series(label: str, points: list[tuple[float, float]]) -> Series:
    return Series(label, tuple(x for x, _ in points), tuple(y for _, y in points))


# ---------------------------------------------------------------- from the smdebug trial
def loss_plot(trial) -> Plot:
    """Training and evaluation loss at every global step where the losses collection was saved."""
    points: dict[ModeKeys, list[tuple[float, float]]] = {ModeKeys.TRAIN: [], ModeKeys.EVAL: []}
    for step in trial.steps():
        mode = trial.mode(step)
        if mode in points:
            loss = loss_at(trial, step)
            if loss is not None:
                points[mode].append((step, loss))
    return Plot(
        "loss", "Loss over steps", "global step", "loss",
        (_series("train", points[ModeKeys.TRAIN]), _series("eval", points[ModeKeys.EVAL])),
    )


def gradient_norm_plot(trial) -> Plot:
    """The L2 norm of every parameter's gradient at each step it was saved."""
    series = []
    for name in trial.tensor_names(collection=GRADIENTS):
        tensor = trial.tensor(name)
        points = []
        for step in tensor.steps():
            try:
                points.append((step, tensor_l2_norm(tensor, step)))
            except TensorUnavailableForStep:
                continue
        series.append(_series(layer_name(name), points))
    return Plot("gradient_norms", "Gradient L2 norm per layer", "global step", "||gradient||",
                tuple(series), log_y=True)


def weight_update_ratio_plot(trial) -> Plot:
    """||W_t - W_prev|| / ||W_prev|| between consecutive saved training steps, per weight tensor.

    A healthy ratio is around 1e-3 per step: far above, the learning rate is too high;
    far below, the layer barely learns. Layers that never change (frozen) are listed, not drawn.
    """
    series, frozen = [], []
    for name in trial.tensor_names(collection=WEIGHTS):
        tensor = trial.tensor(name)
        points, previous = [], None
        for mode_step in tensor.steps(mode=ModeKeys.TRAIN):
            try:
                value = np.asarray(tensor.value(mode_step, mode=ModeKeys.TRAIN), dtype=np.float64)
            except TensorUnavailableForStep:
                continue
            if previous is not None:
                reference = float(np.linalg.norm(previous))
                ratio = float(np.linalg.norm(value - previous)) / reference if reference else math.inf
                points.append((trial.global_step(ModeKeys.TRAIN, mode_step), ratio))
            previous = value
        if points and all(ratio == 0.0 for _, ratio in points):
            frozen.append(name)
        elif points:
            series.append(_series(name, points))
    notes = ()
    if frozen:
        more = f" and {len(frozen) - 5} more" if len(frozen) > 5 else ""
        notes = (f"{len(frozen)} weight tensors did not change (frozen): {', '.join(frozen[:5])}{more}",)
    if not series and not frozen:
        notes = ("needs the weights of two training steps or more (the hook saved fewer)",)
    return Plot("weight_update_ratios", "Weight update ratio per layer", "global step",
                "||ΔW|| / ||W||", tuple(series), log_y=True, notes=notes)


# ---------------------------------------------------------------- from metrics.json
def accuracy_plot(metrics: dict) -> Plot:
    """Training and validation accuracy per epoch (and validation top-5 where recorded), as the
    trainer recorded them."""
    epochs = metrics.get("epochs", [])
    curves = [("train", "train_accuracy"), ("validation", "valid_accuracy")]
    if any(e.get("valid_top5_accuracy") is not None for e in epochs):
        curves.append(("validation top-5", "valid_top5_accuracy"))
    return Plot(
        "accuracy", "Accuracy per epoch", "epoch", "accuracy",
        tuple(
            _series(label, [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None])
            for label, key in curves
        ),
    )


# ---------------------------------------------------------------- from the resource samples
# The sampler counts CPU as 100 per busy core (classifier.resources), memory and GPU as 0-100.
RESOURCE_PERCENTAGES = (
    ("CPU (100 per core)", "cpu_percent"), ("memory", "memory_percent"), ("GPU", "gpu_percent"),
)
RESOURCE_FIELDS = (*(key for _, key in RESOURCE_PERCENTAGES), "memory_used_mb", "gpu_memory_used_mb")


def resource_plot(samples: list[dict]) -> Plot:
    """CPU, memory and (when there is one) GPU utilisation over the run's elapsed time."""
    series = []
    for label, key in RESOURCE_PERCENTAGES:
        points = [(s["elapsed_s"], s[key]) for s in samples if s.get(key) is not None]
        if points or key != "gpu_percent":
            series.append(_series(label, points))
    return Plot("resources", "Resource use over time", "elapsed seconds", "%", tuple(series))


def resource_summary(samples: list[dict]) -> dict[str, tuple[float, float]]:
    """``field -> (mean, max)`` for every resource field that was measured."""
    summary = {}
    for key in RESOURCE_FIELDS:
        values = [s[key] for s in samples if s.get(key) is not None]
        if values:
            summary[key] = (float(np.mean(values)), float(np.max(values)))
    return summary


def resource_findings(summary: dict[str, tuple[float, float]]) -> list[str]:
    """Bottlenecks the utilisation points to, in the spirit of SageMaker's profiler rules.

    CPU is left out: the samples count 100 per busy core without saying how many cores there are.
    """
    findings = []
    if "gpu_percent" in summary and summary["gpu_percent"][0] < 50:
        findings.append(
            f"GPU under-used (mean {summary['gpu_percent'][0]:.0f}%): raise batch-size, add data-loader "
            "workers, or pick a smaller instance."
        )
    if "memory_percent" in summary and summary["memory_percent"][1] > 90:
        findings.append(
            f"Memory nearly full (peak {summary['memory_percent'][1]:.0f}%): lower batch-size or workers."
        )
    return findings
