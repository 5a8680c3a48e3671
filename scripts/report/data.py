"""What the debugging report plots and summarises, read from a run's evidence (no drawing here).

Each ``Plot`` (lines) and ``Heatmap`` (one row per layer, one column per saved step: 62 layers of a
ResNet18 read at a glance, where 62 lines would not) holds exactly the numbers that get drawn, so
they can be checked against the smdebug trial, ``metrics.json``, the step timings and the resource
samples they came from.
"""

from __future__ import annotations

import math
import re
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


@dataclass(frozen=True)
class Heatmap:
    """``values[i][j]``: row ``rows[i]`` (a layer) at column ``columns[j]`` (a step); NaN where none."""

    key: str
    title: str
    xlabel: str
    colorbar_label: str
    rows: tuple[str, ...]
    columns: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        return not self.rows or not self.columns

    def matrix(self) -> np.ndarray:
        return np.array(self.values, dtype=np.float64).reshape(len(self.rows), len(self.columns))


def natural_key(name: str) -> list[object]:
    """``layer2.10`` after ``layer2.9``: numbers in names compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def short_labels(names: tuple[str, ...]) -> list[str]:
    """Layer names without the prefix smdebug gives them all (the network's class: ``ResNet_``)."""
    heads = {name.split(".")[0].split("_")[0] + "_" for name in names}
    prefix = heads.pop() if len(heads) == 1 and len(names) > 1 else ""
    if not prefix[:1].isupper() or not all(name.startswith(prefix) for name in names):
        return list(names)
    return [name.removeprefix(prefix) for name in names]


def heatmap(key: str, title: str, colorbar_label: str, rows: dict[str, list[tuple[float, float]]],
            notes: tuple[str, ...] = ()) -> Heatmap:
    """A layer x step heatmap from each layer's (step, value) points, layers in natural order."""
    names = sorted(rows, key=natural_key)
    columns = sorted({x for points in rows.values() for x, _ in points})
    index = {x: j for j, x in enumerate(columns)}
    values = np.full((len(names), len(columns)), np.nan)
    for i, name in enumerate(names):
        for x, y in rows[name]:
            values[i, index[x]] = y
    return Heatmap(key, title, "global step", colorbar_label, tuple(names), tuple(columns),
                   tuple(tuple(row) for row in values.tolist()), notes)


def extremes(rows: dict[str, list[tuple[float, float]]], what: str, shown: int = 3) -> str:
    """``largest median ...: a (1.2), b (0.9); smallest: ...``: the few layers that matter."""
    medians = sorted(
        ((float(np.median([y for _, y in points])), name) for name, points in rows.items()
         if points and all(math.isfinite(y) for _, y in points)),
        reverse=True,
    )
    if len(medians) < 2:
        return ""
    short = dict(zip(rows, short_labels(tuple(rows)), strict=True))

    def listed(items):
        return ", ".join(f"{short[name]} ({value:.2g})" for value, name in items)
    shown = min(shown, len(medians) // 2)
    return f"largest median {what}: {listed(medians[:shown])}; smallest: {listed(medians[::-1][:shown])}"


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


def gradient_norm_plot(trial) -> Heatmap:
    """The L2 norm of every parameter's gradient at each step it was saved: layer x step."""
    rows = {}
    for name in trial.tensor_names(collection=GRADIENTS):
        tensor = trial.tensor(name)
        points = []
        for step in tensor.steps():
            try:
                points.append((step, tensor_l2_norm(tensor, step)))
            except TensorUnavailableForStep:
                continue
        rows[layer_name(name)] = points
    notes = tuple(note for note in (extremes(rows, "gradient norm"),) if note)
    return heatmap("gradient_norms", "Gradient L2 norm per layer", "||gradient|| (log scale)", rows, notes)


def weight_update_ratio_plot(trial) -> Heatmap:
    """||W_t - W_prev|| / ||W_prev|| between consecutive saved training steps, per weight tensor.

    A healthy ratio is around 1e-3 per step: far above, the learning rate is too high;
    far below, the layer barely learns. Layers that never change (frozen) are listed, not drawn.
    """
    rows, frozen = {}, []
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
            rows[name] = points
    notes = []
    if extremes(rows, "update ratio"):
        notes.append(extremes(rows, "update ratio") + " (about 1e-3 is healthy)")
    if frozen:
        more = f" and {len(frozen) - 5} more" if len(frozen) > 5 else ""
        notes.append(f"{len(frozen)} weight tensors did not change (frozen): {', '.join(frozen[:5])}{more}")
    if not rows and not frozen:
        notes.append("needs the weights of two training steps or more (the hook saved fewer)")
    return heatmap("weight_update_ratios", "Weight update ratio ||ΔW|| / ||W|| per layer",
                   "||ΔW|| / ||W|| (log scale)", rows, tuple(notes))


# ---------------------------------------------------------------- from metrics.json
def accuracy_plot(metrics: dict) -> Plot:
    """Training and validation accuracy per epoch, as the trainer recorded them."""
    epochs = metrics.get("epochs", [])
    return Plot(
        "accuracy", "Accuracy per epoch", "epoch", "accuracy",
        tuple(
            _series(label, [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None])
            for label, key in (("train", "train_accuracy"), ("validation", "valid_accuracy"))
        ),
    )


# ---------------------------------------------------------------- from the step timings
def step_time_plot(steps: list[dict]) -> Plot:
    """Each training step's duration and its wait for data, over the run's steps."""
    return Plot(
        "step_times", "Training step time", "training step", "seconds",
        (_series("step", [(s["step"], s["step_s"]) for s in steps]),
         _series("waiting for data", [(s["step"], s["wait_s"]) for s in steps])),
        log_y=True,
    )


def step_summary(steps: list[dict]) -> dict[str, float]:
    """Mean and slowest step, the share of time waiting for data, and the time to the first step."""
    if not steps:
        return {}
    durations = [s["step_s"] for s in steps]
    total = sum(durations)
    return {
        "training steps": len(steps),
        "mean step, s": float(np.mean(durations)),
        "slowest step, s": max(durations),
        "waiting for data, % of step time": 100 * sum(s["wait_s"] for s in steps) / total if total else 0.0,
        "first step after, s": steps[0]["elapsed_s"],
    }


# ---------------------------------------------------------------- from the resource samples
def _cpu_share(sample: dict) -> float | None:
    """CPU use as a share of all cores, 0-100 (older samples without a core count: 100 per core)."""
    if sample.get("cpu_percent") is None:
        return None
    return sample["cpu_percent"] / sample["cpu_count"] if sample.get("cpu_count") else sample["cpu_percent"]


def _gpu_memory_share(sample: dict) -> float | None:
    used, total = sample.get("gpu_memory_used_mb"), sample.get("gpu_memory_total_mb")
    return 100 * used / total if used is not None and total else None


RESOURCE_PERCENTAGES = (
    ("CPU (% of all cores)", _cpu_share),
    ("memory", lambda s: s.get("memory_percent")),
    ("I/O wait", lambda s: s.get("iowait_percent")),
    ("GPU", lambda s: s.get("gpu_percent")),
    ("GPU memory", _gpu_memory_share),
)
OPTIONAL_RESOURCES = ("I/O wait", "GPU", "GPU memory")  # drawn only when measured
RESOURCE_FIELDS = ("cpu_percent", "memory_percent", "iowait_percent", "gpu_percent", "memory_used_mb",
                   "process_memory_mb", "gpu_memory_used_mb")


def resource_plot(samples: list[dict]) -> Plot:
    """CPU, memory, I/O wait and (when there is one) GPU utilisation over the run's elapsed time."""
    series = []
    for label, value in RESOURCE_PERCENTAGES:
        points = [(s["elapsed_s"], value(s)) for s in samples if value(s) is not None]
        if points or label not in OPTIONAL_RESOURCES:
            series.append(_series(label, points))
    return Plot("resources", "Resource use over time", "seconds since the trainer started", "%",
                tuple(series))


def resource_summary(samples: list[dict]) -> dict[str, tuple[float, float]]:
    """``field -> (mean, max)`` for every resource field that was measured."""
    summary = {}
    for key in RESOURCE_FIELDS:
        values = [s[key] for s in samples if s.get(key) is not None]
        if values:
            summary[key] = (float(np.mean(values)), float(np.max(values)))
    return summary


def resource_findings(summary: dict[str, tuple[float, float]]) -> list[str]:
    """What the samples say that no profiler rule covers (those judge utilisation and data wait)."""
    findings = []
    if "memory_percent" in summary and summary["memory_percent"][1] > 90:
        findings.append(
            f"Memory nearly full (peak {summary['memory_percent'][1]:.0f}%): lower batch-size or workers."
        )
    return findings
