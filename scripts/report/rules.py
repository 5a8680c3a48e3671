"""This project's training checks, written as smdebug custom rules.

The module depends on smdebug and numpy only, on purpose: the very same file is
- invoked locally on a run's tensors (``run_rules`` below, through smdebug's ``invoke_rule``),
- uploaded to S3 and evaluated by SageMaker's custom rule evaluator next to a training job
  (``scripts/aws/custom_rules.py`` builds those ``DebugRuleConfigurations``).

SageMaker passes rule parameters as strings, so every constructor converts its own. The
evaluator may load the file without registering it as a module, so no dataclasses here.
Each rule records what it saw in smdebug's ``Rule.report`` dict (``RuleTriggered``,
``Violations``, ``Datapoints``, ``Details``) and carries the advice its finding implies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import TensorUnavailableForStep
from smdebug.rules.rule import Rule
from smdebug.rules.rule_invoker import invoke_rule

LOSSES = "losses"
# SageMaker's built-in rules own the plain names: ours run there as CustomOverfit and so on.
SAGEMAKER_NAME_PREFIX = "Custom"
WEIGHTS = "weights"
GRADIENTS = "gradients"


# ---------------------------------------------------------------- reading a trial
def loss_at(trial, step: int) -> float | None:
    """The loss saved at global ``step`` (mean over the losses collection), or None if none was."""
    values = []
    for name in trial.tensor_names(collection=LOSSES):
        try:
            values.append(float(np.mean(trial.tensor(name).value(step))))
        except TensorUnavailableForStep:
            continue
    return float(np.mean(values)) if values else None


def tensor_l2_norm(tensor, step: int) -> float:
    """The L2 norm of a tensor at ``step``: from its saved value, else from a saved ``l2`` reduction."""
    try:
        return float(np.linalg.norm(np.asarray(tensor.value(step), dtype=np.float64)))
    except TensorUnavailableForStep:
        return float(tensor.reduction_value(step, "l2"))


def tensor_mean_abs(tensor, step: int) -> float:
    """Mean absolute value at ``step``: from the saved value, else from a saved ``mean`` reduction of |x|."""
    try:
        return float(np.mean(np.abs(np.asarray(tensor.value(step), dtype=np.float64))))
    except TensorUnavailableForStep:
        return float(tensor.reduction_value(step, "mean", abs=True))


def layer_name(tensor_name: str) -> str:
    """``gradient/fc.weight`` -> ``fc.weight``: gradients and weights share the parameter's name."""
    return tensor_name.split("/", 1)[1] if tensor_name.startswith("gradient/") else tensor_name


# ---------------------------------------------------------------- rules
def _listing(named_values: list[tuple[str, float]], shown: int = 5) -> str:
    """``a (1e-09), b (2e-09) and 3 more``: the first few offenders of a finding."""
    listed = ", ".join(f"{name} ({value:.3g})" for name, value in named_values[:shown])
    return listed + (f" and {len(named_values) - shown} more" if len(named_values) > shown else "")


class _ProjectRule(Rule):
    """A custom rule that explains itself: what it checks, and what to do when it fires
    (``ADVICE`` in full, ``FIX`` as the one line a report's summary shows)."""

    CHECKS = ""
    ADVICE = ""
    FIX = ""

    def __init__(self, base_trial, action_str: str = "", **parameters: object):
        super().__init__(base_trial, action_str=action_str)
        self.report["RuleParameters"] = ", ".join(f"{k}={v}" for k, v in parameters.items())
        self.report["Details"] = {"first_step": None, "message": ""}

    def _saw_datapoint(self) -> None:
        self.report["Datapoints"] += 1

    def _violation(self, step: int, message: str) -> bool:
        """Records a violation at ``step``; the first one's message explains the finding."""
        self.report["RuleTriggered"] = 1
        self.report["Violations"] += 1
        if self.report["Details"]["first_step"] is None:
            self.report["Details"] = {"first_step": step, "message": message}
        return True


class LossNotDecreasing(_ProjectRule):
    """The training loss has not come down from where it started.

    Compares the mean loss over the latest ``window`` saved steps of ``mode`` with the
    mean over the first ``window``, at every saved step once there are ``2 * window``.
    Fires when the latest has not been at least ``min_decrease_percent`` % lower for
    ``patience`` checks in a row (a slow start is not a failure to learn).
    """

    CHECKS = "the training loss comes down from where it started"
    ADVICE = (
        "The model is not learning. Check the learning rate first (too small, or a schedule or "
        "warm-up that keeps it near zero), then that the layers you mean to train really train "
        "(fine-tune policy), that labels match their images (one folder per class in every split) "
        "and that inputs are normalised as the model expects."
    )
    FIX = "check the learning rate first, then which layers train (fine-tune) and that labels match images"

    def __init__(self, base_trial, mode: str = "TRAIN", window: int | str = 5,
                 min_decrease_percent: float | str = 10.0, patience: int | str = 5, action_str: str = ""):
        super().__init__(base_trial, action_str, mode=mode, window=window,
                         min_decrease_percent=min_decrease_percent, patience=patience)
        if str(mode).upper() not in ModeKeys.__members__:
            raise ValueError(f"mode must be one of {', '.join(ModeKeys.__members__)}, got {mode!r}")
        self.mode = ModeKeys[str(mode).upper()]
        self.window = int(window)
        self.min_decrease = float(min_decrease_percent) / 100.0
        self.patience = int(patience)
        if self.window < 1 or self.patience < 1:
            raise ValueError(f"window and patience must be >= 1, got {window!r} and {patience!r}")
        self.losses: list[float] = []
        self.checks_without_progress = 0

    def invoke_at_step(self, step: int) -> bool:
        if self.base_trial.mode(step) != self.mode:
            return False
        loss = loss_at(self.base_trial, step)
        if loss is None:
            return False
        self.losses.append(loss)
        self._saw_datapoint()
        if len(self.losses) < 2 * self.window:
            return False
        first = float(np.mean(self.losses[: self.window]))
        latest = float(np.mean(self.losses[-self.window:]))
        if latest <= first * (1.0 - self.min_decrease):
            self.checks_without_progress = 0
            return False
        self.checks_without_progress += 1
        if self.checks_without_progress < self.patience:
            return False
        return self._violation(step, (
            f"mean {self.mode.name.lower()} loss over the latest {self.window} saved steps is "
            f"{latest:.4g}, not {self.min_decrease:.0%} below the first {self.window} ({first:.4g}), "
            f"for {self.checks_without_progress} saved steps in a row"
        ))

    def enough_data(self) -> bool:
        return len(self.losses) >= 2 * self.window + self.patience - 1


class Overfit(_ProjectRule):
    """The validation loss rises while the training loss falls.

    Losses are grouped into phases by mode: each EVAL phase is one evaluation of the
    validation set, the TRAIN phase before it is that epoch's training. Once the current
    evaluation has covered as many batches as an earlier one, their means are compared
    (an evaluation directly followed by a test evaluation in EVAL mode is cut to the
    validation batches). Fires when the current validation loss is above the best earlier
    one by more than ``min_rise_percent`` % and more than ``min_rise`` (in loss units: a
    rise from 0.001 to 0.003 is no finding) while the epoch's mean training loss is lower
    than in that best epoch.

    Batch losses are averaged unweighted: a small last batch counts as much as a full one.
    Comparing like with like needs the loss of every evaluation step: when the hook saved
    only every n-th one (each epoch would show different batches), the rule stops and says so.
    """

    CHECKS = "the validation loss does not rise while the training loss falls"
    ADVICE = (
        "The model is memorising the training images. Stop earlier (lower "
        "early-stopping-patience: the best epoch's weights are the ones to keep), add data or "
        "augmentation, regularise more (weight-decay, label-smoothing), fine-tune fewer layers "
        "(fine-tune=head or last-block) or lower the learning rate."
    )
    FIX = "stop earlier (early-stopping-patience), regularise more (weight-decay, augmentation) or add data"

    def __init__(self, base_trial, min_rise_percent: float | str = 10.0, min_rise: float | str = 0.01,
                 action_str: str = ""):
        super().__init__(base_trial, action_str, min_rise_percent=min_rise_percent, min_rise=min_rise)
        self.min_rise_fraction = float(min_rise_percent) / 100.0
        self.min_rise = float(min_rise)
        # One entry per evaluation: (mean training loss of its epoch, or None, validation losses).
        self.epochs: list[tuple[float | None, list[float]]] = []
        self.train_phase: list[float] = []
        self.in_eval = False
        self.last_eval_step: int | None = None  # mode step of the last evaluation loss seen
        self.sparse = False

    def invoke_at_step(self, step: int) -> bool:
        mode = self.base_trial.mode(step)
        if self.sparse or mode not in (ModeKeys.TRAIN, ModeKeys.EVAL):
            return False
        loss = loss_at(self.base_trial, step)
        if loss is None:
            return False
        if mode == ModeKeys.EVAL:
            eval_step = self.base_trial.mode_step(step)
            if self.last_eval_step is not None and eval_step != self.last_eval_step + 1:
                self.sparse = True
                if not self.report["RuleTriggered"]:
                    self.report["Details"]["message"] = (
                        "not every evaluation step's loss was saved (the losses collection needs "
                        "eval.save_interval 1): epochs cannot be compared batch for batch"
                    )
                return False
            self.last_eval_step = eval_step
        self._saw_datapoint()
        if mode == ModeKeys.TRAIN:
            if self.in_eval:
                self.train_phase, self.in_eval = [], False
            self.train_phase.append(loss)
            return False
        if not self.in_eval:
            train_mean = float(np.mean(self.train_phase)) if self.train_phase else None
            self.epochs.append((train_mean, []))
            self.in_eval = True
        train_mean, current = self.epochs[-1]
        current.append(loss)
        return self._check(step, train_mean, current)

    def _check(self, step: int, train_mean: float | None, current: list[float]) -> bool:
        if train_mean is None:
            return False
        earlier = [
            (float(np.mean(values)), float(np.mean(current[: len(values)])), epoch_train)
            for epoch_train, values in self.epochs[:-1]
            if values and epoch_train is not None and len(current) >= len(values)
        ]
        if not earlier:
            return False
        best_valid, current_valid, best_train = min(earlier, key=lambda e: e[0])
        rise = current_valid - best_valid
        if rise <= max(self.min_rise, best_valid * self.min_rise_fraction) or train_mean >= best_train:
            return False
        return self._violation(step, (
            f"validation loss {current_valid:.4g} is {rise / best_valid:.0%} above its best "
            f"({best_valid:.4g}) while the training loss fell from {best_train:.4g} to {train_mean:.4g}"
        ))

    def enough_data(self) -> bool:
        complete = sum(1 for train_mean, values in self.epochs if values and train_mean is not None)
        return not self.sparse and complete >= 2


class VanishingGradient(_ProjectRule):
    """Gradients fade away on their way back through the network.

    Fires at a step where some parameter's mean absolute gradient is below ``threshold``
    and below ``relative_threshold`` times the largest parameter's at that step. The
    second condition keeps a converged model (every gradient tiny because the loss is)
    from counting as vanishing. At step 0 a gradient of exactly zero does not count: residual blocks
    that start as identities (the trainer's random initialisation) give their branches no gradient
    before the first update, by design.
    """

    CHECKS = "every trained layer receives a gradient"
    ADVICE = (
        "Some layers receive almost no gradient, so they do not learn. Start from pretrained "
        "weights or He (Kaiming) initialisation, keep BatchNorm and ReLU-family activations, raise "
        "the learning rate, or fine-tune only the layers that do learn (fine-tune=head or last-block)."
    )
    FIX = "start from pretrained weights or He initialisation, or fine-tune only the layers that learn"

    def __init__(self, base_trial, threshold: float | str = 1e-7, relative_threshold: float | str = 1e-4,
                 action_str: str = ""):
        super().__init__(base_trial, action_str, threshold=threshold, relative_threshold=relative_threshold)
        self.threshold = float(threshold)
        self.relative_threshold = float(relative_threshold)

    def invoke_at_step(self, step: int) -> bool:
        gradients = {}
        for name in self.base_trial.tensor_names(collection=GRADIENTS):
            try:
                gradients[layer_name(name)] = tensor_mean_abs(self.base_trial.tensor(name), step)
            except TensorUnavailableForStep:
                continue
        if step == 0:
            gradients = {name: value for name, value in gradients.items() if value > 0.0}
        if not gradients:
            return False
        self._saw_datapoint()
        largest = max(gradients.values())
        vanished = [
            (name, value) for name, value in gradients.items()
            if value < self.threshold and value < largest * self.relative_threshold
        ]
        if not vanished:
            return False
        return self._violation(step, (
            f"{len(vanished)} of {len(gradients)} parameters get a mean |gradient| below {self.threshold:g} "
            f"while the largest gets {largest:.2g}: {_listing(vanished)}"
        ))

    def enough_data(self) -> bool:
        return self.report["Datapoints"] > 0


class PoorWeightInitialization(_ProjectRule):
    """The starting weights are scaled badly for their layer's fan-in.

    At the first step with saved weights, each weight matrix or kernel (two or more
    dimensions) has its standard deviation scaled by sqrt(fan-in); He and Glorot
    initialisations give values near 0.5-1.5, which keeps activations from shrinking or
    blowing up layer after layer. Fires when a layer is outside
    [``min_scaled_std``, ``max_scaled_std``] (a constant or zero initialisation gives 0).
    """

    CHECKS = "the starting weights are scaled for their fan-in (no constant, tiny or huge init)"
    ADVICE = (
        "Layers start with weights scaled so that signals shrink or explode through the network "
        "(or with identical weights that never break symmetry). Use He (Kaiming) initialisation for "
        "ReLU networks or Glorot for tanh/sigmoid, or start from pretrained weights (pretrained=true)."
    )
    FIX = "initialise with He (Kaiming) or Glorot scaling, or start from pretrained weights"

    def __init__(self, base_trial, min_scaled_std: float | str = 0.1, max_scaled_std: float | str = 10.0,
                 action_str: str = ""):
        super().__init__(base_trial, action_str, min_scaled_std=min_scaled_std, max_scaled_std=max_scaled_std)
        self.low, self.high = float(min_scaled_std), float(max_scaled_std)
        self.checked = False

    def invoke_at_step(self, step: int) -> bool:
        if self.checked:
            return False
        badly_scaled = []
        seen = 0
        for name in self.base_trial.tensor_names(collection=WEIGHTS):
            try:
                weights = np.asarray(self.base_trial.tensor(name).value(step), dtype=np.float64)
            except TensorUnavailableForStep:
                continue
            if weights.ndim < 2:
                continue
            seen += 1
            scaled_std = float(weights.std() * math.sqrt(weights[0].size))
            if not self.low <= scaled_std <= self.high:
                badly_scaled.append((name, scaled_std))
        if not seen:
            return False
        self.checked = True
        self._saw_datapoint()
        if not badly_scaled:
            return False
        return self._violation(step, (
            f"{len(badly_scaled)} of {seen} weight tensors have std x sqrt(fan-in) outside "
            f"[{self.low:g}, {self.high:g}]: {_listing(badly_scaled)}"
        ))

    def enough_data(self) -> bool:
        return self.checked


RULES: tuple[type[_ProjectRule], ...] = (
    LossNotDecreasing, Overfit, VanishingGradient, PoorWeightInitialization,
)


# ---------------------------------------------------------------- running them locally
class RuleOutcome(NamedTuple):
    """What one rule found on one trial."""

    rule: str
    checks: str
    evaluated: bool  # False: the trial did not hold the tensors the rule needs
    triggered: bool
    violations: int
    datapoints: int
    first_step: int | None
    message: str
    advice: str
    fix: str = ""  # the one line to change, for the report's summary


def run_rule(rule: _ProjectRule, trial) -> RuleOutcome:
    """Invokes ``rule`` with smdebug's ``invoke_rule`` over every saved step of a finished trial."""
    steps = trial.steps()
    if steps:
        invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1, raise_eval_cond=False)
    report = rule.report
    return RuleOutcome(
        rule=rule.rule_name,
        checks=rule.CHECKS,
        evaluated=bool(steps) and rule.enough_data(),
        triggered=bool(report["RuleTriggered"]),
        violations=int(report["Violations"]),
        datapoints=int(report["Datapoints"]),
        first_step=report["Details"]["first_step"],
        message=report["Details"]["message"],
        advice=rule.ADVICE,
        fix=rule.FIX,
    )


def run_rules(trial, rules: tuple[type[_ProjectRule], ...] = RULES) -> list[RuleOutcome]:
    """Every rule, with its default parameters, on ``trial``."""
    return [run_rule(rule_class(trial), trial) for rule_class in rules]
