"""The shared training run's OpenVINO models: calibrated on training images, evaluated on test by the
engine classes that serve them, recorded in ``metrics.json``; ``quantize=false`` leaves them out."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from classifier import artifact, engines, export, quantize
from classifier.data import load_splits
from classifier.preprocessing import PreprocessConfig
from scripts import REPO_ROOT

SERVE_PYTHON = REPO_ROOT / ".venv" / "serve" / "bin" / "python"

# Runs in the serving environment with torch made unimportable, as in the default serving image.
SERVE_WITHOUT_TORCH = """
import json, os, sys
sys.modules["torch"] = None
sys.path.insert(0, os.path.join(sys.argv[1], "code"))
import inference
answers = {}
for engine in ("auto", "int8", "fp32"):
    os.environ["SERVE_ENGINE"] = engine
    model = inference.model_fn(sys.argv[1])
    body = open(sys.argv[2], "rb").read()
    top_k = inference.predict_fn(inference.input_fn(body, "image/jpeg"), model)
    answers[engine] = [model.engine.name, top_k.labels]
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def model_dir(trained_run):
    return trained_run / "model"


@pytest.fixture(scope="module")
def record(model_dir) -> dict:
    return json.loads((model_dir / artifact.METRICS_FILE).read_text())[engines.QUANTIZATION_KEY]


@pytest.fixture(scope="module")
def test_split(sample_dataset):
    return load_splits({"training": sample_dataset}, max_bad_fraction=0.0).splits["test"].samples


def test_the_artifact_holds_both_openvino_models_with_their_weights(model_dir):
    assert engines.available_engines(model_dir) == {engines.INT8, engines.FP32, engines.TORCH}
    fp32_bytes = (model_dir / artifact.weights_file(artifact.OPENVINO_FP32_FILE)).stat().st_size
    int8_bytes = (model_dir / artifact.weights_file(artifact.OPENVINO_INT8_FILE)).stat().st_size
    assert int8_bytes < 0.4 * fp32_bytes  # int8 weights: a quarter of fp32's, plus scales


def test_metrics_record_int8_and_fp32_test_accuracy_and_their_difference(record, sample_dataset):
    assert record["engine"] == "openvino"
    assert record["calibration"] == {"split": "train", "images": 3 * 24}  # every training image (< 300)
    assert record["test_images"] == 3 * 8
    fp32, int8 = record["fp32"]["test_accuracy"], record["int8"]["test_accuracy"]
    assert record[engines.DIFFERENCE_KEY] == pytest.approx(100 * (int8 - fp32), abs=1e-3)
    assert 0.0 <= record["int8_top1_agreement"] <= 1.0


def test_recorded_accuracies_are_the_serving_engines_evaluation_of_the_test_split(
    model_dir, record, test_split
):
    config = PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE)
    for engine in (engines.FP32, engines.INT8):
        evaluation = quantize.evaluate(engines.load_engine(model_dir, engine), test_split, config)
        assert evaluation.accuracy == record[engine]["test_accuracy"], engine


def test_openvino_fp32_gives_the_torch_export_probabilities(model_dir, test_split):
    config = PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE)
    batch = np.concatenate(list(quantize.preprocessed([path for path, _ in test_split[:8]], config)))
    torch_probabilities = engines.TorchEngine(model_dir / artifact.MODEL_FILE).probabilities(batch)
    openvino = engines.load_engine(model_dir, engines.FP32).probabilities(batch)
    np.testing.assert_allclose(openvino, torch_probabilities, atol=1e-4)


def test_calibration_images_come_from_the_training_split_only(sample_dataset):
    splits = load_splits({"training": sample_dataset}, max_bad_fraction=0.0).splits
    data = quantize.quantization_data(splits, calibration_images=10, seed=0)
    train_paths = {path for path, _ in splits["train"].samples}
    assert len(data.calibration) == 10 and set(data.calibration) <= train_paths
    assert not set(data.calibration) & {path for path, _ in splits["test"].samples}


def test_the_default_engines_serve_without_torch(model_dir, sample_dataset):
    image = next((sample_dataset / "test").rglob("*.jpg"))
    result = subprocess.run(
        [str(SERVE_PYTHON), "-c", SERVE_WITHOUT_TORCH, str(model_dir), str(image)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout)
    assert [answers[name][0] for name in ("int8", "fp32")] == ["int8", "fp32"]
    assert answers["auto"][0] in ("int8", "fp32")


def test_without_quantization_the_artifact_has_no_openvino_models(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model_dir = tmp_path / "model"
    (model_dir / "openvino").mkdir(parents=True)
    (model_dir / artifact.OPENVINO_FP32_FILE).write_text("from an earlier run")
    metrics = export.metrics_document({}, [], 0, {}, 2, {})
    export.write_artifact(model_dir, model, ["a", "b"], 8, metrics, REPO_ROOT / "code", quantization=None)
    assert engines.available_engines(model_dir) == {engines.TORCH}
    assert engines.QUANTIZATION_KEY not in json.loads((model_dir / artifact.METRICS_FILE).read_text())
    assert engines.engine_choice(model_dir, {}).engine == engines.TORCH


def test_calibration_spreads_over_the_classes_and_is_fixed_by_the_seed(tmp_path):
    samples = [(tmp_path / f"{label}-{index}.jpg", label) for label in range(3) for index in range(10)]
    chosen = quantize.calibration_sample(samples, 7, seed=1)
    labels = [int(path.name.split("-")[0]) for path in chosen]
    assert len(chosen) == len(set(chosen)) == 7
    assert sorted(labels.count(label) for label in range(3)) == [2, 2, 3]
    assert quantize.calibration_sample(samples, 7, seed=1) == chosen
    assert len(quantize.calibration_sample(samples, 100)) == 30
