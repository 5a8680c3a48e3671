"""The metric lines the trainer prints are read back by the regexes SageMaker is given."""

import re

import pytest

from classifier import metrics


def test_epoch_and_test_lines_round_trip_through_the_metric_definitions():
    log = "\n".join([
        "some toolkit noise",
        metrics.format_epoch_line(1, 2.5, 0.25, 2.25, 0.3125, 0.75),
        metrics.format_epoch_line(2, 1.125, 0.5, 1.0625, 0.625, 0.875),
        metrics.format_test_line(1.5e-3, 0.875, 1.0),
    ])
    values = metrics.parse_metric_lines(log)
    assert values == {
        "train:loss": [2.5, 1.125],
        "train:accuracy": [0.25, 0.5],
        "validation:loss": [2.25, 1.0625],
        "validation:accuracy": [0.3125, 0.625],
        "validation:top5_accuracy": [0.75, 0.875],
        "test:loss": [0.0015],
        "test:accuracy": [0.875],
        "test:top5_accuracy": [1.0],
    }


def test_every_definition_has_one_capture_group_and_the_objective_is_defined():
    names = [d["Name"] for d in metrics.METRIC_DEFINITIONS]
    assert metrics.OBJECTIVE_METRIC in names
    for definition in metrics.METRIC_DEFINITIONS:
        assert re.compile(definition["Regex"]).groups == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_values_are_printed_but_never_read_as_numbers(value):
    line = metrics.format_epoch_line(1, value, 0.5, value, 0.5, 0.75)
    values = metrics.parse_metric_lines(line)
    assert values["train:loss"] == [] and values["validation:loss"] == []
    assert values["train:accuracy"] == [0.5]


def test_lines_without_the_prefix_are_ignored():
    assert metrics.parse_metric_lines("valid_loss=0.5 train_loss=0.25")["validation:loss"] == []
