"""The verdict's precedence and its "what to change" lines (the pure summary; real runs: test_report.py)."""

from __future__ import annotations

from scripts.report import summary
from scripts.report.rules import RuleOutcome

EPOCHS = [
    {"epoch": 1, "train_loss": 1.0, "valid_loss": 0.9, "valid_accuracy": 0.5},
    {"epoch": 2, "train_loss": 0.6, "valid_loss": 0.7, "valid_accuracy": 0.7},
]
METRICS = {"epochs": EPOCHS, "best_epoch": 2, "test": {"test_loss": 0.72, "test_accuracy": 0.69}}


def outcome(rule: str, triggered: bool = True) -> RuleOutcome:
    return RuleOutcome(rule, "checks", True, triggered, int(triggered), 10, None, f"{rule} saw this",
                       f"{rule} advice", f"fix {rule}" if triggered else "")


def test_learned_when_no_rule_fires_with_the_best_epoch_and_test_accuracy():
    result = summary.summarise([outcome("Overfit", False), outcome("StepOutlier", False)], METRICS)
    assert (result.verdict, result.also, result.changes) == (summary.LEARNED, (), ())
    assert result.facts == (
        "best epoch 2 of 2: validation loss 0.7, accuracy 70.0%", "test accuracy 69.0% (loss 0.72)")
    assert "no rule found a problem" in result.headline


def test_learning_problems_come_before_overfitting_before_bottlenecks():
    fired = [outcome("Dataloader"), outcome("Overtraining"), outcome("LossNotDecreasing")]
    result = summary.summarise(fired, METRICS)
    assert result.verdict == summary.NOT_LEARNING
    assert result.also == (summary.OVERFITTING, summary.BOTTLENECKED)
    assert result.changes == ("LossNotDecreasing: fix LossNotDecreasing", "Overtraining: fix Overtraining")
    result = summary.summarise([outcome("Dataloader"), outcome("StepOutlier")], METRICS)
    assert result.verdict == summary.BOTTLENECKED and "Dataloader saw this" in result.headline
    assert result.changes == ("Dataloader: fix Dataloader", "StepOutlier: fix StepOutlier")


def test_a_loss_that_never_fell_is_not_learning_even_without_the_loss_rule():
    flat = {"epochs": [{**EPOCHS[0]}, {**EPOCHS[1], "train_loss": 1.2}], "best_epoch": 2}
    result = summary.summarise([], flat)
    assert result.verdict == summary.NOT_LEARNING and "check the learning rate" in result.changes[0]


def test_without_metrics_there_is_no_verdict_and_an_unfinished_run_says_so():
    assert summary.summarise([], None, "Failed").verdict == summary.NO_VERDICT
    running = summary.summarise([], {"epochs": EPOCHS, "best_epoch": 2}, "InProgress")
    assert "no test accuracy (the run has not finished)" in running.facts
    assert running.headline.endswith("The run's status: InProgress.")
