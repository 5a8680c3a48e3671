"""One real training run (the shared ``trained_run``) and everything it must leave behind."""

from __future__ import annotations

import itertools
import json
import math
import subprocess

import pytest
import torch
from smdebug import modes
from smdebug.trials import create_trial
from train_helpers import TRAINED_RUN_HYPERPARAMETERS

from classifier import artifact, metrics
from classifier.artifact import RESOURCE_USAGE_FILE
from classifier.dataset import class_name
from classifier.preprocessing import PreprocessConfig
from scripts import REPO_ROOT
from scripts.datasets.sample import class_folder_names

SERVE_PYTHON = REPO_ROOT / ".venv" / "serve" / "bin" / "python"

# Runs in the serving environment (torch, no torchvision): the artifact alone must be enough,
# its own code/ included. Prints the predictions on every test image as JSON.
PREDICT_WITH_TORCH_ALONE = """
import json, sys
from pathlib import Path
model_dir, test_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(model_dir / "code"))
import torch
from classifier import artifact
from classifier.preprocessing import PreprocessConfig, eval_transform, load_image
try:
    import torchvision  # noqa: F401
    has_torchvision = True
except ImportError:
    has_torchvision = False
model = torch.export.load(model_dir / artifact.MODEL_FILE).module()
classes = json.loads((model_dir / artifact.CLASSES_FILE).read_text())
config = PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE)
paths = sorted(test_dir.glob("*/*.jpg"))
batch = torch.stack([eval_transform(load_image(p), config) for p in paths])
with torch.no_grad():
    logits = model(batch)
    single = model(batch[:1])
print(json.dumps({
    "has_torchvision": has_torchvision,
    "shape": list(logits.shape),
    "single_matches_batch": bool(torch.allclose(single, logits[:1], atol=1e-5)),
    "predictions": [[p.parent.name, classes[i]] for p, i in zip(paths, logits.argmax(1).tolist())],
}))
"""


@pytest.fixture(scope="module")
def metrics_json(trained_run) -> dict:
    return json.loads((trained_run / "model" / artifact.METRICS_FILE).read_text())


def test_run_reports_success_and_leaves_a_whole_artifact(trained_run):
    assert (trained_run / "output" / "success").is_file()
    assert not (trained_run / "output" / "failure").exists()
    model_dir = trained_run / "model"
    assert artifact.missing_files(model_dir) == []
    for name in artifact.SERVING_CODE_FILES:
        assert (model_dir / artifact.CODE_DIR / name).read_bytes() == (REPO_ROOT / "code" / name).read_bytes()
    assert json.loads((model_dir / artifact.CLASSES_FILE).read_text()) == [
        class_name(folder) for folder in class_folder_names(3)
    ]
    image_size = TRAINED_RUN_HYPERPARAMETERS["image-size"]
    assert PreprocessConfig.load(model_dir / artifact.PREPROCESS_FILE) == PreprocessConfig.for_image_size(
        image_size
    )


def test_exported_model_predicts_with_torch_alone_as_well_as_the_trainer_measured(
    trained_run, sample_dataset, metrics_json
):
    result = subprocess.run(
        [SERVE_PYTHON, "-c", PREDICT_WITH_TORCH_ALONE, trained_run / "model", sample_dataset / "test"],
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout)
    assert served["has_torchvision"] is False
    assert served["shape"] == [24, 3]
    assert served["single_matches_batch"]
    correct = sum(class_name(folder) == predicted for folder, predicted in served["predictions"])
    # The same preprocessing code and weights: serving reproduces the trainer's test accuracy.
    assert correct / 24 == pytest.approx(metrics_json["test"]["test_accuracy"], abs=1e-9)


def test_accuracy_is_clearly_above_chance(metrics_json):
    chance = 1 / 3
    assert metrics_json["test"]["test_accuracy"] >= 2 * chance
    assert metrics_json["epochs"][-1]["valid_accuracy"] >= 2 * chance


def test_metrics_json_follows_the_contract(metrics_json):
    assert set(metrics_json) == {
        "hyperparameters", "epochs", "best_epoch", "test", "num_classes", "bad_images", "quantization",
    }
    assert metrics_json["num_classes"] == 3
    assert metrics_json["bad_images"] == {"train": 0, "valid": 0, "test": 0}
    assert metrics_json["hyperparameters"]["learning-rate"] == 0.01
    assert metrics_json["hyperparameters"]["model-name"] == "resnet18"
    epochs = metrics_json["epochs"]
    assert [entry["epoch"] for entry in epochs] == [1, 2, 3]
    for entry in epochs:
        assert set(entry) == {"epoch", *metrics.EPOCH_FIELDS, "learning_rate", "seconds"}
        assert all(math.isfinite(value) for value in entry.values())
    best = min(epochs, key=lambda entry: entry["valid_loss"])
    assert metrics_json["best_epoch"] == best["epoch"]
    # Each epoch records its last step's rate: warmup (1 epoch) rises step by step to the full rate
    # at its last step, cosine starts there and decays.
    rates = [entry["learning_rate"] for entry in epochs]
    assert rates[0] == pytest.approx(0.01) and rates[1] == pytest.approx(0.01) and rates[2] < 0.01
    assert set(metrics_json["test"]) == set(metrics.TEST_FIELDS)
    # Three classes: every class is among the five best, so top-5 accuracy is 1.
    assert metrics_json["test"]["test_top5_accuracy"] == 1.0
    assert all(entry["valid_top5_accuracy"] == 1.0 for entry in epochs)


def test_printed_metric_lines_match_the_shared_regexes(trained_run_log, metrics_json):
    parsed = metrics.parse_metric_lines(trained_run_log)
    for name, field in metrics.SAGEMAKER_METRIC_FIELDS.items():
        if field in metrics.EPOCH_FIELDS:
            expected = [entry[field] for entry in metrics_json["epochs"]]
        else:
            expected = [metrics_json["test"][field]]
        assert parsed[name] == pytest.approx(expected, abs=1e-6), name


def test_smdebug_trial_reads_back_the_loss_of_every_train_and_eval_step(trained_run):
    # In output/data: SageMaker uploads it (output.tar.gz) with or without SageMaker Debugger.
    trial = create_trial(str(trained_run / "output" / "data" / artifact.TENSORS_DIR))
    loss_names = trial.tensor_names(collection="losses")
    assert loss_names, "no loss tensor saved"
    loss = trial.tensor(loss_names[0])
    train_steps, eval_steps = loss.steps(mode=modes.TRAIN), loss.steps(mode=modes.EVAL)
    # 72 training images in batches of 8, 24 validation images, 3 epochs; then the test split.
    assert train_steps == list(range(27)) and eval_steps == list(range(3 * 3 + 3))
    for step, mode in [(train_steps[-1], modes.TRAIN), (eval_steps[-1], modes.EVAL)]:
        assert math.isfinite(float(loss.value(step, mode=mode)))


def test_smdebug_saves_weights_biases_and_only_trainable_gradients(trained_run):
    trial = create_trial(str(trained_run / "output" / "data" / artifact.TENSORS_DIR))
    weights = trial.tensor_names(collection="weights")
    biases = trial.tensor_names(collection="biases")
    gradients = trial.tensor_names(collection="gradients")
    assert any("fc.weight" in name for name in weights) and any("fc.bias" in name for name in biases)
    # fine-tune last-block: gradients exist for layer4 and the head, none for the frozen layers.
    assert any("layer4" in name for name in gradients) and any("fc.weight" in name for name in gradients)
    parameters = [name.split("_", 1)[-1] for name in gradients]  # "gradient/ResNet_layer4.0..."
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    assert parameters and not [name for name in parameters if name.startswith(frozen)]


def test_frozen_layers_keep_the_weights_from_weights_path(trained_run, imagenet_weights_file):
    given = torch.load(imagenet_weights_file, weights_only=True)
    trained = torch.export.load(trained_run / "model" / artifact.MODEL_FILE).state_dict
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer3.1.bn2.weight"):
        assert torch.equal(trained[name], given[name]), f"frozen {name} changed"
    assert not torch.equal(trained["layer4.0.conv1.weight"], given["layer4.0.conv1.weight"])


def test_every_epoch_leaves_a_checkpoint(trained_run):
    checkpoint = torch.load(trained_run / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3
    assert [entry["epoch"] for entry in checkpoint["history"]] == [1, 2, 3]


def test_resource_usage_is_sampled(trained_run):
    lines = (trained_run / "output" / "data" / RESOURCE_USAGE_FILE).read_text().splitlines()
    assert len(lines) >= 2
    samples = [json.loads(line) for line in lines]
    for sample in samples:
        assert set(sample) == {
            "elapsed_s", "cpu_percent", "cpu_count", "iowait_percent", "memory_used_mb", "memory_percent",
            "process_memory_mb", "gpu_percent", "gpu_memory_used_mb", "gpu_memory_total_mb",
        }
        assert sample["memory_used_mb"] > sample["process_memory_mb"] > 0
        assert sample["cpu_count"] >= 1 and sample["iowait_percent"] >= 0
        if not torch.cuda.is_available():
            assert sample["gpu_percent"] is None and sample["gpu_memory_used_mb"] is None
    assert samples[-1]["elapsed_s"] > samples[0]["elapsed_s"]
    assert max(sample["cpu_percent"] for sample in samples) > 0


def read_json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_training_step_is_timed_on_the_resource_samples_clock(trained_run):
    steps = read_json_lines(trained_run / "output" / "data" / artifact.STEP_TIMINGS_FILE)
    epochs = [1] * 9 + [2] * 9 + [3] * 9  # 72 training images in batches of 8
    assert [(s["epoch"], s["step"]) for s in steps] == [(epoch, i) for i, epoch in enumerate(epochs)]
    for step in steps:
        assert 0 <= step["wait_s"] <= step["step_s"]
    # Each figure is rounded to the microsecond: a sum of two may exceed the next start by 1 µs.
    assert all(a["elapsed_s"] + a["step_s"] <= b["elapsed_s"] + 2e-6 for a, b in itertools.pairwise(steps))
    # Both count from the trainer's start: the sampler runs while the steps do, and after.
    samples = read_json_lines(trained_run / "output" / "data" / RESOURCE_USAGE_FILE)
    first_step, last_step = steps[0]["elapsed_s"], steps[-1]["elapsed_s"] + steps[-1]["step_s"]
    assert any(first_step <= s["elapsed_s"] <= last_step for s in samples)
    assert first_step - 1 < samples[0]["elapsed_s"] and samples[-1]["elapsed_s"] > last_step


def test_the_epochs_so_far_and_a_live_copy_of_the_evidence_are_kept(trained_run, metrics_json):
    data = trained_run / "output" / "data"
    assert read_json_lines(data / artifact.EPOCHS_FILE) == metrics_json["epochs"]
    # Beside the checkpoint, which SageMaker syncs to S3 while the job runs: the same files.
    live = trained_run / "checkpoints" / artifact.LIVE_EVIDENCE_DIR
    files = sorted(str(path.relative_to(data)) for path in data.rglob("*") if path.is_file())
    assert files == sorted(str(path.relative_to(live)) for path in live.rglob("*") if path.is_file())
    assert f"{artifact.TENSORS_DIR}/training_job_end.ts" in files  # copied after the hook closed
    for name in files:
        assert (live / name).read_bytes() == (data / name).read_bytes(), name


def test_log_says_what_the_run_did(trained_run_log):
    assert "Reporting training SUCCESS" in trained_run_log  # the toolkit's verdict
    assert "3 classes; train 72, valid 24, test 24 images" in trained_run_log
    assert "fine-tune last-block" in trained_run_log
    assert "train.py --batch-size 8" in trained_run_log  # the toolkit ran it as SAGEMAKER_PROGRAM
