"""The report's verdict at a glance: did the run learn, overfit, fail to learn, or waste its instance?

Built from the rule outcomes (tensor rules and profiler rules) and the metrics, in this order of
precedence, the first that applies being the verdict and the others listed beside it:

- **not learning**: LossNotDecreasing fired, or the training loss never fell below its first epoch's;
- **overfitting**: Overfit or Overtraining fired;
- **bottlenecked**: a profiler rule about time or resources fired (data wait, idle device, ...);
- **learned**: none of these, with metrics to show it.

"What to change" is the one-line fix of the first one or two rules that fired, in the same order
(the learning problems first: a fast run of a model that does not learn helps nobody).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scripts.report.rules import RuleOutcome

NOT_LEARNING, OVERFITTING, BOTTLENECKED, LEARNED, NO_VERDICT = (
    "not learning", "overfitting", "bottlenecked", "learned", "no verdict",
)
LEARNING_RULES = ("LossNotDecreasing", "VanishingGradient", "PoorWeightInitialization")
OVERFITTING_RULES = ("Overfit", "Overtraining")
BOTTLENECK_RULES = (
    "Dataloader", "CPUBottleneck", "IOBottleneck", "LowGPUUtilization", "BatchSize", "GPUMemoryIncrease",
    "StepOutlier", "MaxInitializationTime",
)
RULE_ORDER = (*LEARNING_RULES, *OVERFITTING_RULES, *BOTTLENECK_RULES)
MAX_CHANGES = 2


@dataclass(frozen=True)
class Summary:
    verdict: str
    also: tuple[str, ...]  # the other verdicts that apply
    headline: str
    facts: tuple[str, ...]  # best epoch, test accuracy, ...
    changes: tuple[str, ...] = field(default_factory=tuple)  # "Overfit: stop earlier ..."


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _never_learned(epochs: list[dict]) -> bool:
    losses = [e.get("train_loss") for e in epochs]
    losses = [loss for loss in losses if isinstance(loss, int | float) and math.isfinite(loss)]
    return len(losses) >= 2 and min(losses[1:]) >= losses[0]


def summarise(outcomes: list[RuleOutcome], metrics: dict | None, status: str = "") -> Summary:
    """The verdict, the figures that matter and the changes to make, from what the report found."""
    fired = {outcome.rule: outcome for outcome in outcomes if outcome.triggered}
    epochs = (metrics or {}).get("epochs", [])
    verdicts = []
    if "LossNotDecreasing" in fired or _never_learned(epochs):
        verdicts.append(NOT_LEARNING)
    if any(rule in fired for rule in OVERFITTING_RULES):
        verdicts.append(OVERFITTING)
    if any(rule in fired for rule in BOTTLENECK_RULES):
        verdicts.append(BOTTLENECKED)
    if not verdicts:
        verdicts.append(LEARNED if epochs else NO_VERDICT)

    facts = _facts(metrics or {}, epochs)
    changes = [f"{name}: {fired[name].fix or fired[name].advice}" for name in RULE_ORDER if name in fired]
    if NOT_LEARNING in verdicts and "LossNotDecreasing" not in fired:
        changes.insert(0, "the training loss never fell below its first epoch's: check the learning rate")
    return Summary(verdicts[0], tuple(verdicts[1:]), _headline(verdicts[0], fired, epochs, status),
                   tuple(facts), tuple(changes[:MAX_CHANGES]))


def _facts(metrics: dict, epochs: list[dict]) -> list[str]:
    facts = []
    best = next((e for e in epochs if e.get("epoch") == metrics.get("best_epoch")), None)
    if best is not None:
        facts.append(
            f"best epoch {best['epoch']} of {epochs[-1]['epoch']}: validation loss {best['valid_loss']:.4g}, "
            f"accuracy {_percent(best['valid_accuracy'])}"
        )
    test = metrics.get("test") or {}
    if "test_accuracy" in test:
        facts.append(f"test accuracy {_percent(test['test_accuracy'])} (loss {test['test_loss']:.4g})")
    elif epochs:
        facts.append("no test accuracy (the run has not finished)")
    return facts


def _headline(verdict: str, fired: dict[str, RuleOutcome], epochs: list[dict], status: str) -> str:
    ended = f" The run's status: {status}." if status and status != "Completed" else ""
    if verdict == NO_VERDICT:
        return "No metrics were recorded, so there is nothing to judge the learning by." + ended
    if verdict == NOT_LEARNING:
        found = fired.get("LossNotDecreasing")
        return (found.message if found else "The training loss did not come down.") + ended
    if verdict == OVERFITTING:
        found = fired.get("Overfit") or fired.get("Overtraining")
        return f"The model stopped generalising: {found.message}." + ended
    if verdict == BOTTLENECKED:
        found = next(fired[name] for name in BOTTLENECK_RULES if name in fired)
        learned = "It learned, but the" if epochs else "The"
        return f"{learned} instance was not used well: {found.message}." + ended
    other = next((fired[name] for name in RULE_ORDER if name in fired), None)
    caveat = f"but {other.rule} found: {other.message}." if other else "no rule found a problem."
    first, last = epochs[0], epochs[-1]
    if len(epochs) < 2:
        return f"One epoch only: too short for a trend; {caveat}" + ended
    return (f"The losses came down: training {first['train_loss']:.4g} → {last['train_loss']:.4g}, "
            f"validation {first['valid_loss']:.4g} → {min(e['valid_loss'] for e in epochs):.4g} at best; "
            + caveat + ended)
