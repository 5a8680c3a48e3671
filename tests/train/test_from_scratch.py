"""The from-scratch case, small: a real dataset (the UCI digits), a random initialisation, the defaults.

The full case (ResNet50, 48 px, 10 epochs, at least 95 %) is in ``make bench-train``; this one
keeps its shape at a size the suite can afford: ResNet18, 32 px, a few epochs, every other
hyperparameter at its default.
"""

from __future__ import annotations

import json

import pytest
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import artifact, metrics
from classifier.hyperparameters import SEARCH_SPACE
from scripts.bench import recipe
from scripts.datasets.digits import make_digits_dataset
from scripts.local.train import run_training

SMALL_CASE = {
    "model-name": "resnet18", "pretrained": False, "epochs": 4, "learning-rate": 0.001, "image-size": 32,
}
MIN_TEST_ACCURACY = 0.9


def test_from_scratch_with_the_defaults_learns_a_real_dataset(tmp_path):
    data = make_digits_dataset(tmp_path / "digits", image_size=SMALL_CASE["image-size"])
    out = tmp_path / "out"
    result = run_training(data, out, SMALL_CASE, timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        fail_with_log("the from-scratch run failed", result.stdout)
    assert "fine-tune auto: all (random initialisation)" in result.stdout
    assert "0 data-loader workers" in result.stdout  # on a CPU the model step keeps every core
    written = json.loads((out / "model" / artifact.METRICS_FILE).read_text())
    test = written["test"]
    assert set(test) == set(metrics.TEST_FIELDS)
    assert test["test_accuracy"] >= MIN_TEST_ACCURACY, written["epochs"]
    assert 1.0 >= test["test_top5_accuracy"] >= test["test_accuracy"]
    # Ten classes: top-5 is a real measure here, and it was printed for SageMaker every epoch.
    printed = metrics.parse_metric_lines(result.stdout)
    epochs_top5 = [e["valid_top5_accuracy"] for e in written["epochs"]]
    assert printed["validation:top5_accuracy"] == pytest.approx(epochs_top5, abs=1e-6)
    assert printed["test:top5_accuracy"] == pytest.approx([test["test_top5_accuracy"]], abs=1e-6)
    # make bench-train times the same kind of run from these log lines: they must stay readable.
    assert recipe.FIRST_BATCH in result.stdout and recipe.COMPLETE in result.stdout
    assert recipe.WORKERS.search(result.stdout)
    assert len(recipe.EPOCH_DONE.findall(result.stdout)) == len(written["epochs"])
    assert recipe.OPENVINO_DONE.search(result.stdout)  # the int8 export, which the benchmark sets apart


def test_from_scratch_at_the_top_of_the_tuners_learning_rate_range_learns_too(tmp_path):
    """AdamW at 0.1 scattered a random network with per-epoch warmup (0.21 on this case); step-by-step
    warmup and residual blocks that start as identities keep it learning."""
    top = SEARCH_SPACE["learning-rate"].max_value
    data = make_digits_dataset(tmp_path / "digits", image_size=SMALL_CASE["image-size"])
    out = tmp_path / "out"
    result = run_training(data, out, {**SMALL_CASE, "learning-rate": top}, timeout=TRAINING_TIMEOUT_S)
    if result.returncode != 0:
        fail_with_log(f"the from-scratch run at learning rate {top} failed", result.stdout)
    written = json.loads((out / "model" / artifact.METRICS_FILE).read_text())
    assert written["test"]["test_accuracy"] >= MIN_TEST_ACCURACY, written["epochs"]
