"""SageMaker's hyperparameter format: every value a string, given as ``--name value`` pairs."""

import pytest

from classifier import hyperparameters


def test_hyperparameters_are_strings_as_sagemaker_writes_them():
    given = {"epochs": 2, "pretrained": False, "learning-rate": 0.01}
    assert hyperparameters.as_sagemaker_strings(given) == {
        "epochs": "2", "pretrained": "false", "learning-rate": "0.01",
    }


def test_parse_hyperparameter_args_reads_pairs_and_rejects_odd_input():
    assert hyperparameters.parse_name_value_pairs(["--epochs", "2", "--model-name", "resnet18"]) == {
        "epochs": "2", "model-name": "resnet18",
    }
    with pytest.raises(ValueError, match="pairs"):
        hyperparameters.parse_name_value_pairs(["--epochs"])
    with pytest.raises(ValueError, match="--name"):
        hyperparameters.parse_name_value_pairs(["epochs", "2"])
