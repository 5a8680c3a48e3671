"""The one definition of the metrics the trainer prints and SageMaker reads back.

The trainer prints one line per epoch and one at the end, e.g.::

    #metrics epoch=3 train_loss=1.204512 train_accuracy=0.612500 valid_loss=1.350211
        valid_accuracy=0.580000 valid_top5_accuracy=0.910000        (one line, wrapped here)
    #metrics test_loss=1.401002 test_accuracy=0.571429 test_top5_accuracy=0.902857

Top-5 accuracy counts an image as right when its class is among the five highest scores (with
five classes or fewer, that is every image).

SageMaker (training jobs and tuning) extracts values from the job's log with regexes;
``METRIC_DEFINITIONS`` are those regexes, built from the same names that ``format_*`` print.
This module imports nothing outside the standard library: the launchers use it too.
"""

from __future__ import annotations

import math
import re

LINE_PREFIX = "#metrics"

TOP_K = 5
EPOCH_FIELDS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "valid_top5_accuracy")
TEST_FIELDS = ("test_loss", "test_accuracy", "test_top5_accuracy")

# SageMaker metric name -> field printed on the metric lines.
SAGEMAKER_METRIC_FIELDS = {
    "train:loss": "train_loss",
    "train:accuracy": "train_accuracy",
    "validation:loss": "valid_loss",
    "validation:accuracy": "valid_accuracy",
    "validation:top5_accuracy": "valid_top5_accuracy",
    "test:loss": "test_loss",
    "test:accuracy": "test_accuracy",
    "test:top5_accuracy": "test_top5_accuracy",
}

# The tuning objective: validation loss, minimised.
OBJECTIVE_METRIC = "validation:loss"
OBJECTIVE_TYPE = "Minimize"

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def field_regex(field: str) -> str:
    """The regex, with one capture group, that reads ``field``'s value from a metric line."""
    return rf"{re.escape(LINE_PREFIX)}\b.*?\b{re.escape(field)}=({_NUMBER})"


METRIC_DEFINITIONS = [
    {"Name": name, "Regex": field_regex(field)} for name, field in SAGEMAKER_METRIC_FIELDS.items()
]


def _format_value(value: float) -> str:
    # nan/inf are printed as such: they never match the regexes, so SageMaker skips them.
    return f"{value:.6f}" if math.isfinite(value) else str(value)


def _format_fields(names: tuple[str, ...], values: tuple[float, ...]) -> str:
    return " ".join(f"{name}={_format_value(value)}" for name, value in zip(names, values, strict=True))


def format_epoch_line(
    epoch: int, train_loss: float, train_accuracy: float, valid_loss: float, valid_accuracy: float,
    valid_top5_accuracy: float,
) -> str:
    """The metric line printed after each epoch (epochs count from 1)."""
    values = (train_loss, train_accuracy, valid_loss, valid_accuracy, valid_top5_accuracy)
    return f"{LINE_PREFIX} epoch={epoch} {_format_fields(EPOCH_FIELDS, values)}"


def format_test_line(test_loss: float, test_accuracy: float, test_top5_accuracy: float) -> str:
    """The metric line printed once, after the test evaluation."""
    return f"{LINE_PREFIX} {_format_fields(TEST_FIELDS, (test_loss, test_accuracy, test_top5_accuracy))}"


def parse_metric_lines(log: str) -> dict[str, list[float]]:
    """Reads a log back the way SageMaker does: every value of every metric definition, in order."""
    return {
        definition["Name"]: [float(match) for match in re.findall(definition["Regex"], log)]
        for definition in METRIC_DEFINITIONS
    }
