"""Profiler rules on the trainer's own evidence, for every account (no SageMaker profiler needed).

SageMaker's profiler rules (StepOutlier, LowGPUUtilization, CPUBottleneck, IOBottleneck,
Dataloader, GPUMemoryIncrease, BatchSize, MaxInitializationTime) and its Overtraining rule
read what SageMaker Debugger's profiler collects. These read what the trainer records itself
(``classifier.evidence``): its resource samples (``resource_usage.jsonl``), each training step's
duration and wait for data (``step_timings.jsonl``) and the metrics of each epoch.

"The device" is the GPU when the samples measured one, else the CPUs (a CPU-only run): its
utilisation is the GPU's, or the CPUs' busy share; its memory the GPU's, or the trainer
process's resident memory against the machine's. Each epoch's first step is left out of the
step statistics: it waits for the data loader to fill its queue again, by design.

Every rule returns a ``RuleOutcome`` (``scripts.report.rules``), evaluated or not (too little
data, with the reason), with a finding that shows the figures it judged even when it stays quiet.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from scripts.report.rules import RuleOutcome


@dataclass(frozen=True)
class TrainerRecord:
    """What the profiler rules read: resource samples, step timings, epochs, hyperparameters."""

    samples: Sequence[dict] = ()
    steps: Sequence[dict] = ()
    epochs: Sequence[dict] = ()
    hyperparameters: dict[str, str] = field(default_factory=dict)

    def steady_steps(self) -> list[dict]:
        """The training steps but each epoch's first (the loader refills its queue then)."""
        firsts = {}
        for step in self.steps:
            firsts.setdefault(step["epoch"], step["step"])
        return [step for step in self.steps if step["step"] != firsts[step["epoch"]]]

    def wait_share(self) -> float | None:
        """The share of the steady steps' time spent waiting for data."""
        steady = self.steady_steps()
        total = sum(step["step_s"] for step in steady)
        return sum(step["wait_s"] for step in steady) / total if total > 0 else None

    def training_samples(self) -> list[dict]:
        """The samples taken while training steps ran (the steps' clock is the samples' clock)."""
        if not self.steps:
            return list(self.samples)
        start = self.steps[0]["elapsed_s"]
        end = self.steps[-1]["elapsed_s"] + self.steps[-1]["step_s"]
        return [s for s in self.samples if start <= s["elapsed_s"] <= end]

    def on_gpu(self) -> bool:
        return any(s.get("gpu_percent") is not None or s.get("gpu_memory_used_mb") is not None
                   for s in self.samples)

    def utilisation_label(self) -> str:
        return "GPU utilisation" if self.on_gpu() else "CPU utilisation (all cores)"

    def memory_label(self) -> str:
        return "GPU memory" if self.on_gpu() else "the trainer's memory"

    def device_utilisation(self) -> list[float]:
        """Per training sample: the GPU's utilisation, or the CPUs' busy share, in percent."""
        if self.on_gpu():
            return [s["gpu_percent"] for s in self.training_samples() if s.get("gpu_percent") is not None]
        return [s["cpu_percent"] / s["cpu_count"] for s in self.training_samples()
                if s.get("cpu_percent") is not None and s.get("cpu_count")]

    def device_memory(self, sample: dict) -> tuple[float, float] | None:
        """(used MB, capacity MB) of the device in one sample: GPU memory, or the trainer process's."""
        if self.on_gpu():
            used, total = sample.get("gpu_memory_used_mb"), sample.get("gpu_memory_total_mb")
        else:
            used, percent = sample.get("process_memory_mb"), sample.get("memory_percent")
            machine_used = sample.get("memory_used_mb")
            total = machine_used * 100 / percent if machine_used and percent else None
        return (used, total) if used is not None and total else None

    def hyperparameter(self, name: str) -> str | None:
        value = self.hyperparameters.get(name)
        return None if value in (None, "None", "none", "") else str(value)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class Judgement(NamedTuple):
    """What a profiler rule found: whether it could judge, whether it fired, and the figures."""

    evaluated: bool
    triggered: bool
    message: str
    datapoints: int = 0
    first_step: int | None = None  # the first training step concerned, if one is
    violations: int = 1  # offending items when triggered (steps, for StepOutlier)


def _not_enough(reason: str, datapoints: int = 0) -> Judgement:
    return Judgement(False, False, reason, datapoints)


class ProfilerRule:
    """A rule on a ``TrainerRecord``: ``judge`` says what it found, ``evaluate`` makes a ``RuleOutcome``."""

    CHECKS = ""
    ADVICE = ""
    FIX = ""

    def __init__(self, **parameters: float):
        self.parameters = parameters

    @property
    def name(self) -> str:
        return type(self).__name__

    def judge(self, run: TrainerRecord) -> Judgement:
        raise NotImplementedError

    def fix(self, run: TrainerRecord) -> str:
        """The one line to change (some rules name figures of the run)."""
        return self.FIX

    def evaluate(self, run: TrainerRecord) -> RuleOutcome:
        found = self.judge(run)
        return RuleOutcome(
            rule=self.name, checks=self.CHECKS.format(**self.parameters), evaluated=found.evaluated,
            triggered=found.triggered, violations=found.violations if found.triggered else 0,
            datapoints=found.datapoints, first_step=found.first_step, message=found.message,
            advice=self.ADVICE, fix=self.fix(run) if found.triggered else "",
        )


class StepOutlier(ProfilerRule):
    """More than ``n_outliers`` training steps last longer than the mean + ``stddev`` standard deviations."""

    CHECKS = "no more than {n_outliers:g} training steps last longer than the mean + {stddev:g} std devs"
    ADVICE = (
        "Some training steps take far longer than the others. Look for work that runs every few steps: "
        "the Debugger hook saving weights and gradients (raise debugger-save-interval), checkpoints or "
        "logging inside the loop, garbage collection, or other processes competing for the machine."
    )
    FIX = "find the work that runs every few steps (the Debugger hook: raise debugger-save-interval)"

    def __init__(self, stddev: float = 3.0, n_outliers: float = 10, min_steps: float = 10):
        super().__init__(stddev=stddev, n_outliers=n_outliers, min_steps=min_steps)

    def judge(self, run):
        steps = run.steady_steps()
        if len(steps) < self.parameters["min_steps"]:
            return _not_enough(f"{len(steps)} timed steps (after each epoch's first); needs "
                               f"{self.parameters['min_steps']:g}", len(steps))
        durations = np.array([step["step_s"] for step in steps])
        mean, sigma = float(durations.mean()), float(durations.std())
        limit = mean + self.parameters["stddev"] * sigma
        outliers = sorted((step for step in steps if step["step_s"] > limit), key=lambda s: -s["step_s"])
        triggered = len(outliers) > self.parameters["n_outliers"]
        message = (f"{len(outliers)} of {len(steps)} steps took longer than {limit:.3g} s "
                   f"(mean {mean:.3g} s + {self.parameters['stddev']:g} x std dev {sigma:.3g} s)")
        if outliers:
            share = sum(step["step_s"] for step in outliers) / float(durations.sum())
            listed = ", ".join(f"{step['step']} ({step['step_s']:.3g} s)" for step in outliers[:5])
            message += f"; slowest: steps {listed}; {share:.0%} of the steps' time"
            interval = run.hyperparameter("debugger-save-interval")
            if interval and interval.isdigit() and int(interval) > 1:
                on_saves = sum(1 for step in outliers if step["step"] % int(interval) == 0)
                if on_saves * 2 >= len(outliers):
                    message += (f"; {on_saves} of them are steps where the hook saves tensors "
                                f"(every {interval} steps)")
        first = min(step["step"] for step in outliers) if outliers else None
        return Judgement(True, triggered, message, len(steps), first, len(outliers))


class LowGPUUtilization(ProfilerRule):
    """The device's utilisation stays low: its 95th percentile is below ``threshold_p95`` percent."""

    CHECKS = ("the device (the GPU; the CPUs on a CPU-only run) is busy: 95th percentile of utilisation "
              "≥ {threshold_p95:g}%")
    ADVICE = (
        "The device idles much of the time, so the instance costs more than the training needs. If the "
        "loop waits for data (see Dataloader, CPUBottleneck, IOBottleneck) fix that first; otherwise "
        "give each step more work (a larger batch-size) or pick a smaller instance."
    )
    FIX = "keep the device busy: fix the data wait first, else raise batch-size or pick a smaller instance"

    def __init__(self, threshold_p95: float = 70, min_samples: float = 5):
        super().__init__(threshold_p95=threshold_p95, min_samples=min_samples)

    def judge(self, run):
        utilisation = run.device_utilisation()
        if len(utilisation) < self.parameters["min_samples"]:
            return _not_enough(f"{len(utilisation)} utilisation samples while training; needs "
                               f"{self.parameters['min_samples']:g}", len(utilisation))
        p95, median = percentile(utilisation, 95), percentile(utilisation, 50)
        triggered = p95 < self.parameters["threshold_p95"]
        message = (f"{run.utilisation_label()} while training: median {median:.0f}%, "
                   f"95th percentile {p95:.0f}%")
        return Judgement(True, triggered, message, len(utilisation))


class _DataWaitRule(ProfilerRule):
    """The loop waits for data ``max_wait_percent`` % of its time or more, and a condition says why."""

    def __init__(self, max_wait_percent: float = 20, min_steps: float = 10, **more: float):
        super().__init__(max_wait_percent=max_wait_percent, min_steps=min_steps, **more)

    def judge(self, run):
        steps = run.steady_steps()
        if len(steps) < self.parameters["min_steps"]:
            return _not_enough(f"{len(steps)} timed steps (after each epoch's first); needs "
                               f"{self.parameters['min_steps']:g}", len(steps))
        wait = 100 * (run.wait_share() or 0.0)
        cause = self.cause(run)
        if cause is None:
            return _not_enough(self.missing, len(steps))
        explains, what = cause
        triggered = wait >= self.parameters["max_wait_percent"] and explains
        message = f"the loop waited for data {wait:.0f}% of the training steps' time; {what}"
        return Judgement(True, triggered, message, len(steps))

    missing = ""

    def cause(self, run: TrainerRecord) -> tuple[bool, str] | None:
        """(whether this rule's cause holds, the figures that say so), or None without the data."""
        raise NotImplementedError


def _mean_cpu_busy(run: TrainerRecord) -> float | None:
    busy = [s["cpu_percent"] / s["cpu_count"] for s in run.training_samples()
            if s.get("cpu_percent") is not None and s.get("cpu_count")]
    return float(np.mean(busy)) if busy else None


def _mean_iowait(run: TrainerRecord) -> float | None:
    waits = [s["iowait_percent"] for s in run.training_samples() if s.get("iowait_percent") is not None]
    return float(np.mean(waits)) if waits else None


class CPUBottleneck(_DataWaitRule):
    """The loop waits for data while the CPUs are saturated: preprocessing cannot keep up."""

    CHECKS = ("the loop does not wait for data ({max_wait_percent:g}% of the time or more) while the CPUs "
              "are saturated (≥ {cpu_threshold:g}% busy)")
    ADVICE = (
        "The CPUs cannot prepare batches as fast as the model uses them. Make preprocessing cheaper "
        "(store images resized close to image-size, lighter augmentation), or pick an instance with more "
        "vCPUs for the same accelerator."
    )
    FIX = "make preprocessing cheaper (images stored near image-size) or use an instance with more vCPUs"
    missing = "the samples hold no CPU utilisation with a core count"

    def __init__(self, max_wait_percent: float = 20, cpu_threshold: float = 90, min_steps: float = 10):
        super().__init__(max_wait_percent, min_steps, cpu_threshold=cpu_threshold)

    def cause(self, run):
        busy = _mean_cpu_busy(run)
        if busy is None:
            return None
        return busy >= self.parameters["cpu_threshold"], f"the CPUs were {busy:.0f}% busy on average"


class IOBottleneck(_DataWaitRule):
    """The loop waits for data while the CPUs wait for storage."""

    CHECKS = ("the loop does not wait for data ({max_wait_percent:g}% of the time or more) while the CPUs "
              "wait for storage (I/O wait ≥ {io_threshold:g}%)")
    ADVICE = (
        "Batches wait for storage. Copy the data to the instance's local disk before training (File input "
        "mode), store fewer and larger files, or use faster storage (a larger EBS volume, FSx for Lustre)."
    )
    FIX = "read the data from local disk (File mode) or faster storage; fewer, larger files"
    missing = "the samples hold no I/O wait (measured on Linux only)"

    def __init__(self, max_wait_percent: float = 20, io_threshold: float = 10, min_steps: float = 10):
        super().__init__(max_wait_percent, min_steps, io_threshold=io_threshold)

    def cause(self, run):
        iowait = _mean_iowait(run)
        if iowait is None:
            return None
        return iowait >= self.parameters["io_threshold"], f"I/O wait was {iowait:.1f}% on average"


class Dataloader(_DataWaitRule):
    """The loop waits for data although the CPUs and the storage have room: too few loader workers."""

    CHECKS = ("the loop does not wait for data ({max_wait_percent:g}% of the time or more) while CPUs and "
              "storage have room (below {cpu_threshold:g}% busy and {io_threshold:g}% I/O wait)")
    ADVICE = (
        "The data loader prepares batches too slowly although the CPUs have room: raise workers (the "
        "data-loader processes; by default one per vCPU) so that batches are prepared in parallel, and "
        "keep pin_memory on a GPU."
    )
    FIX = "raise workers (data-loader processes) towards the number of vCPUs"
    missing = "the samples hold no CPU utilisation with a core count"

    def __init__(self, max_wait_percent: float = 20, cpu_threshold: float = 90, io_threshold: float = 10,
                 min_steps: float = 10):
        super().__init__(max_wait_percent, min_steps, cpu_threshold=cpu_threshold, io_threshold=io_threshold)

    def cause(self, run):
        busy, iowait = _mean_cpu_busy(run), _mean_iowait(run)
        if busy is None:
            return None
        room = busy < self.parameters["cpu_threshold"] and (iowait or 0.0) < self.parameters["io_threshold"]
        workers = run.hyperparameter("workers") or "one per vCPU (the default)"
        return room, f"the CPUs were {busy:.0f}% busy on average; workers: {workers}"

    def fix(self, run):
        workers, cores = run.hyperparameter("workers"), _cores(run)
        if workers and cores:
            return f"raise workers (data-loader processes) from {workers} towards the {cores} vCPUs"
        return self.FIX


def _cores(run: TrainerRecord) -> int | None:
    counts = [s["cpu_count"] for s in run.samples if s.get("cpu_count")]
    return int(counts[-1]) if counts else None


def epoch_spans(steps: Sequence[dict]) -> dict[int, tuple[float, float]]:
    """Each epoch's (start, end) on the steps' clock: from its first step to the next epoch's first
    (evaluation and checkpoint included); the last epoch ends with its last step."""
    starts: dict[int, float] = {}
    for step in steps:
        starts.setdefault(step["epoch"], step["elapsed_s"])
    epochs = sorted(starts)
    spans = {epoch: (starts[epoch], starts[following]) for epoch, following in itertools.pairwise(epochs)}
    if epochs:
        last = steps[-1]
        spans[epochs[-1]] = (starts[epochs[-1]], last["elapsed_s"] + last["step_s"])
    return spans


class GPUMemoryIncrease(ProfilerRule):
    """The device's peak memory keeps growing from epoch to epoch (after the first, which warms up)."""

    CHECKS = ("the device's memory (the GPU's; the trainer's on a CPU-only run) does not grow by more than "
              "{increase_percent:g}% from the second epoch to the last")
    ADVICE = (
        "Memory grows epoch after epoch, which ends in an out-of-memory failure on a long run. Look for "
        "tensors kept across steps: losses or outputs stored with their graph (keep loss.item() or "
        "loss.detach()), growing lists or caches, or hooks that keep references."
    )
    FIX = "find what keeps tensors alive across steps (losses kept with their graph, growing lists)"

    def __init__(self, increase_percent: float = 10, min_epochs: float = 2):
        super().__init__(increase_percent=increase_percent, min_epochs=min_epochs)

    def judge(self, run):
        peaks = []
        for epoch, (start, end) in sorted(epoch_spans(run.steps).items())[1:]:  # the first epoch warms up
            used = [run.device_memory(s)[0] for s in run.samples
                    if start <= s["elapsed_s"] <= end and run.device_memory(s) is not None]
            if used:
                peaks.append((epoch, max(used)))
        if len(peaks) < self.parameters["min_epochs"]:
            return _not_enough(f"memory samples in {len(peaks)} epochs after the first; needs "
                               f"{self.parameters['min_epochs']:g}", len(peaks))
        (first_epoch, first), (last_epoch, last) = peaks[0], peaks[-1]
        growth = 100 * (last - first) / first
        triggered = growth > self.parameters["increase_percent"]
        message = (f"{run.memory_label()} peaked at {first:.0f} MB in epoch {first_epoch}, {last:.0f} MB in "
                   f"epoch {last_epoch} ({growth:+.1f}%)")
        return Judgement(True, triggered, message, len(peaks))


class BatchSize(ProfilerRule):
    """The device and its memory are mostly unused while data keeps up: the batch is too small."""

    CHECKS = ("the batch uses the device: not both utilisation (95th percentile) below {util_p95:g}% and "
              "memory below {memory_p95:g}% while the loop waits for data less than {max_wait_percent:g}%")
    ADVICE = (
        "Each step gives the device too little work: neither its compute nor its memory is used much, "
        "and data is not what holds it back. Raise batch-size (and scale the learning rate with it), or "
        "pick a smaller instance."
    )
    FIX = "raise batch-size (scaling the learning rate with it) or pick a smaller instance"

    def __init__(self, util_p95: float = 70, memory_p95: float = 70, max_wait_percent: float = 20,
                 min_samples: float = 5):
        super().__init__(util_p95=util_p95, memory_p95=memory_p95, max_wait_percent=max_wait_percent,
                         min_samples=min_samples)

    def judge(self, run):
        utilisation = run.device_utilisation()
        measured = [run.device_memory(s) for s in run.training_samples()]
        memory = [100 * used / total for used, total in filter(None, measured)]
        wait = run.wait_share()
        if len(utilisation) < self.parameters["min_samples"] or len(memory) < self.parameters["min_samples"]:
            return _not_enough(f"{min(len(utilisation), len(memory))} samples with utilisation and memory "
                               f"while training; needs {self.parameters['min_samples']:g}")
        if wait is None:
            return _not_enough("no timed steps: cannot tell whether data holds the device back")
        util_p95, memory_p95, wait = percentile(utilisation, 95), percentile(memory, 95), 100 * wait
        triggered = (util_p95 < self.parameters["util_p95"] and memory_p95 < self.parameters["memory_p95"]
                     and wait < self.parameters["max_wait_percent"])
        batch = run.hyperparameter("batch-size")
        message = (f"{run.utilisation_label()} p95 {util_p95:.0f}%, {run.memory_label()} p95 "
                   f"{memory_p95:.0f}% of capacity, data wait {wait:.0f}%")
        if batch:
            message += f"; batch-size {batch}"
        return Judgement(True, triggered, message, len(utilisation))


class MaxInitializationTime(ProfilerRule):
    """The first training step starts more than ``threshold_minutes`` after the trainer process."""

    CHECKS = "the first training step starts within {threshold_minutes:g} minutes of the trainer's start"
    ADVICE = (
        "The trainer takes long to start training: imports, the check of every image, building the model, "
        "loading a checkpoint, starting data-loader workers. Install packages in the image rather than at "
        "start, keep the dataset in fewer and larger files, and on SageMaker consider FastFile input mode "
        "(the download before the trainer starts is in the job's SecondaryStatusTransitions)."
    )
    FIX = "start faster: packages in the image, fewer and larger data files, FastFile input mode"

    def __init__(self, threshold_minutes: float = 20):
        super().__init__(threshold_minutes=threshold_minutes)

    def judge(self, run):
        if not run.steps:
            return _not_enough("no timed steps")
        first = run.steps[0]["elapsed_s"]
        triggered = first > 60 * self.parameters["threshold_minutes"]
        message = f"the first training step started {first:.1f} s after the trainer process"
        return Judgement(True, triggered, message, 1, run.steps[0]["step"] if triggered else None)


class Overtraining(ProfilerRule):
    """Training goes on for more than ``patience`` epochs after the validation loss last improved."""

    CHECKS = "training stops within {patience:g} epochs of the validation loss's last improvement"
    ADVICE = (
        "The validation loss stopped improving, yet training went on: those epochs cost time and money "
        "without making the model better (the exported weights are the best epoch's). Lower "
        "early-stopping-patience or epochs; if the validation loss rose meanwhile, see Overfit."
    )
    FIX = "stop earlier: lower early-stopping-patience or epochs"

    def __init__(self, patience: float = 3, min_delta: float = 0.0):
        super().__init__(patience=patience, min_delta=min_delta)

    def judge(self, run):
        epochs = [e for e in run.epochs if isinstance(e.get("valid_loss"), int | float)]
        if len(epochs) < 2:
            return _not_enough(f"{len(epochs)} epochs with a validation loss; needs 2", len(epochs))
        best = epochs[0]
        for epoch in epochs[1:]:
            if epoch["valid_loss"] < best["valid_loss"] - self.parameters["min_delta"]:
                best = epoch
        after = [e for e in epochs if e["epoch"] > best["epoch"]]
        triggered = len(after) > self.parameters["patience"]
        message = f"the validation loss last improved in epoch {best['epoch']} of {epochs[-1]['epoch']}"
        if after:
            seconds = sum(e.get("seconds", 0.0) for e in after)
            message += (f"; {len(after)} epochs after it ({seconds:.0f} s), the training loss going from "
                        f"{best['train_loss']:.4g} to {after[-1]['train_loss']:.4g}")
        return Judgement(True, triggered, message, len(epochs))


PROFILER_RULES: tuple[type[ProfilerRule], ...] = (
    StepOutlier, LowGPUUtilization, CPUBottleneck, IOBottleneck, Dataloader, GPUMemoryIncrease,
    BatchSize, MaxInitializationTime, Overtraining,
)


def run_profiler_rules(
    run: TrainerRecord, parameters: dict[str, dict[str, float]] | None = None
) -> list[RuleOutcome]:
    """Every profiler rule on ``run``; ``parameters`` overrides a rule's defaults by its name."""
    parameters = parameters or {}
    unknown = set(parameters) - {rule.__name__ for rule in PROFILER_RULES}
    if unknown:
        raise ValueError(f"unknown profiler rules {sorted(unknown)}")
    return [rule(**parameters.get(rule.__name__, {})).evaluate(run) for rule in PROFILER_RULES]
