"""The profiler rules on real trainer output: quiet on a run without the problem, firing on one with it.

Overtraining fires by itself on the overfit run (8 epochs, no early stopping). The others judge
what this CPU-only machine cannot be made to show on demand (an idle or leaking GPU, slow storage),
so they fire on the suite's shared real run through their own thresholds, and the figures they
report are checked against the run's files: the same data read the same way, both ways.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifier import artifact
from scripts.report import document, profiler_rules
from scripts.report.profiler_rules import PROFILER_RULES, TrainerRecord, run_profiler_rules
from scripts.report.sources import load_local_run

# Thresholds that make each rule fire on any real run (the rule still reads the run's figures).
FIRING_THRESHOLDS = {
    "StepOutlier": {"stddev": 0, "n_outliers": 0},  # every step slower than the mean is an outlier
    "LowGPUUtilization": {"threshold_p95": 101},
    "CPUBottleneck": {"max_wait_percent": 0, "cpu_threshold": 0},
    "IOBottleneck": {"max_wait_percent": 0, "io_threshold": 0},
    "Dataloader": {"max_wait_percent": 0, "cpu_threshold": 101, "io_threshold": 101},
    "GPUMemoryIncrease": {"increase_percent": -100},
    "BatchSize": {"util_p95": 101, "memory_p95": 101, "max_wait_percent": 101},
    "MaxInitializationTime": {"threshold_minutes": 0},
}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def record(trained_run) -> TrainerRecord:
    return document.trainer_record(load_local_run(trained_run))


@pytest.fixture(scope="module")
def quiet(record):
    return {outcome.rule: outcome for outcome in run_profiler_rules(record)}


@pytest.fixture(scope="module")
def fired(record):
    return {outcome.rule: outcome for outcome in run_profiler_rules(record, FIRING_THRESHOLDS)}


@pytest.mark.parametrize("rule", [rule.__name__ for rule in PROFILER_RULES])
def test_a_run_without_the_problem_keeps_the_rule_quiet(quiet, rule):
    outcome = quiet[rule]
    assert outcome.evaluated, outcome.message
    assert not outcome.triggered, outcome.message
    assert outcome.message and outcome.fix == ""  # the figures it judged, and nothing to change


@pytest.mark.parametrize("rule", sorted(FIRING_THRESHOLDS))
def test_the_rule_fires_on_the_same_run_past_its_threshold_and_says_what_to_change(quiet, fired, rule):
    outcome = fired[rule]
    assert outcome.evaluated and outcome.triggered, outcome.message
    assert outcome.fix and outcome.advice == getattr(profiler_rules, rule).ADVICE
    if rule != "StepOutlier":  # the same figures, judged against another threshold
        assert outcome.message == quiet[rule].message


def test_overtraining_fires_when_training_goes_on_long_after_the_best_epoch(overfit_run):
    metrics = json.loads((overfit_run / "model" / artifact.METRICS_FILE).read_text())
    [outcome] = [o for o in run_profiler_rules(document.trainer_record(load_local_run(overfit_run)))
                 if o.rule == "Overtraining"]
    best, last = metrics["best_epoch"], metrics["epochs"][-1]["epoch"]
    assert last - best > 3, metrics["epochs"]  # the run shows the problem
    assert outcome.triggered and f"last improved in epoch {best} of {last}" in outcome.message
    assert f"{last - best} epochs after it" in outcome.message


def test_the_rules_report_the_figures_of_the_runs_files(trained_run, quiet, fired):
    data = trained_run / "output" / "data"
    steps = lines(data / artifact.STEP_TIMINGS_FILE)
    steady = [s for s in steps if s["step"] % 9 != 0]  # 9 steps an epoch: each epoch's first left out
    wait = 100 * sum(s["wait_s"] for s in steady) / sum(s["step_s"] for s in steady)
    assert f"waited for data {wait:.0f}% " in quiet["Dataloader"].message
    assert f"started {steps[0]['elapsed_s']:.1f} s after" in quiet["MaxInitializationTime"].message
    durations = np.array([s["step_s"] for s in steady])
    slower = sorted((s for s in steady if s["step_s"] > durations.mean()), key=lambda s: -s["step_s"])
    assert fired["StepOutlier"].violations == len(slower) and fired["StepOutlier"].first_step == min(
        s["step"] for s in slower)
    assert f"steps {slower[0]['step']} ({slower[0]['step_s']:.3g} s)" in fired["StepOutlier"].message
    samples = lines(data / artifact.RESOURCE_USAGE_FILE)
    training = [s for s in samples
                if steps[0]["elapsed_s"] <= s["elapsed_s"] <= steps[-1]["elapsed_s"] + steps[-1]["step_s"]]
    busy = [s["cpu_percent"] / s["cpu_count"] for s in training]
    assert f"95th percentile {np.percentile(busy, 95):.0f}%" in quiet["LowGPUUtilization"].message
    assert "workers: 1" in quiet["Dataloader"].message and "from 1 towards the" in fired["Dataloader"].fix


def test_too_little_evidence_is_said_not_judged():
    outcomes = run_profiler_rules(TrainerRecord(samples=[{"elapsed_s": 1.0, "cpu_percent": 50.0}]))
    assert not any(outcome.evaluated or outcome.triggered for outcome in outcomes)
    assert all(outcome.message for outcome in outcomes)
    with pytest.raises(ValueError, match=r"unknown profiler rules \['StepOutlyer'\]"):
        run_profiler_rules(TrainerRecord(), {"StepOutlyer": {}})
