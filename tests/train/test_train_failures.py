"""Expected failures end the job with the reason in output/failure and a non-zero exit.

Each test runs the real training toolkit on a tiny dataset it breaks on purpose; most fail
in the checks before training, so they take seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from train_helpers import CodeOnLoad

from scripts.datasets.sample import class_folder_names, make_dataset
from scripts.local.train import CODE_DIR, run_training

TINY_RUN = {
    "model-name": "resnet18",
    "pretrained": False,
    "image-size": 32,
    "batch-size": 8,
    "epochs": 1,
    "workers": 0,
}
CLASSES = class_folder_names(2)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", num_classes=2, counts={"train": 8, "valid": 4, "test": 4}, size=32)


def run_expecting_failure(
    data: Path, out: Path, hyperparameters: dict | None = None, **options
) -> tuple[str, str]:
    """Runs the toolkit; asserts it failed; returns (output/failure, the log)."""
    result = run_training(data, out, {**TINY_RUN, **(hyperparameters or {})}, timeout=300, **options)
    assert result.returncode != 0, result.stdout[-3000:]
    assert not (out / "output" / "success").exists()
    failure = out / "output" / "failure"
    assert failure.is_file(), result.stdout[-3000:]
    return failure.read_text(), result.stdout


def corrupt(paths: list[Path]) -> None:
    for path in paths:
        path.write_bytes(b"this is not a JPEG")


def test_missing_split_folder(dataset, tmp_path):
    shutil.rmtree(dataset / "valid")
    failure, _ = run_expecting_failure(dataset, tmp_path / "out")
    assert failure.startswith("missing split folder(s) ['valid'] in channel 'training'")
    assert "found ['test', 'train']" in failure


def test_missing_split_channel(dataset, tmp_path):
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", channels=("train", "test"))
    assert failure.startswith("missing split channel(s) ['valid']")


def test_empty_class(dataset, tmp_path):
    for image in (dataset / "test" / CLASSES[1]).iterdir():
        image.unlink()
    failure, _ = run_expecting_failure(dataset, tmp_path / "out")
    assert failure.startswith(f"class folder(s) without images [test/{CLASSES[1]}] (1)")


def test_mismatched_classes(dataset, tmp_path):
    (dataset / "valid" / CLASSES[1]).rename(dataset / "valid" / "099.Wolf")
    failure, _ = run_expecting_failure(dataset, tmp_path / "out")
    assert failure.startswith("the splits have different class folders")
    assert f"'valid' lacks [{CLASSES[1]}]" in failure and "'valid' has extra [099.Wolf]" in failure


def test_too_many_corrupt_images(dataset, tmp_path):
    corrupt(sorted((dataset / "train" / CLASSES[0]).iterdir())[:2])
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", {"max-bad-image-fraction": 0.1})
    assert failure.startswith("2 of 16 images in split 'train' (12.5%) cannot be read")
    assert "max-bad-image-fraction=0.1" in failure and f"{CLASSES[0]}/0000.jpg" in failure


def test_freezing_random_layers_is_refused(dataset, tmp_path):
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", {"fine-tune": "last-block"})
    assert failure.startswith("fine-tune last-block with pretrained=false would freeze randomly initialised")


def test_a_pipe_input_channel_is_refused(dataset, tmp_path):
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", input_mode="Pipe")
    assert failure.startswith("channel(s) ['training'] use input mode Pipe") and "File or FastFile" in failure


def test_invalid_hyperparameter(dataset, tmp_path):
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", {"batch-size": 0})
    assert failure.startswith("invalid hyperparameters: argument --batch-size: expected a positive integer")


def test_missing_serving_code(dataset, tmp_path):
    code = tmp_path / "code"
    shutil.copytree(CODE_DIR, code, ignore=shutil.ignore_patterns("__pycache__"))
    (code / "inference.py").unlink()
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", code_dir=code)
    assert failure.startswith("serving code missing from") and "['inference.py']" in failure


def test_diverging_training(dataset, tmp_path):
    failure, _ = run_expecting_failure(dataset, tmp_path / "out", {"learning-rate": 1e30, "warmup-epochs": 0})
    assert "training diverged" in failure and "lower the learning-rate" in failure


def test_unexpected_error_reports_type_and_message_with_traceback_in_the_log(dataset, tmp_path):
    # A checkpoint for this model and these classes but without its contents (say, from an older version).
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model_name": "resnet18", "class_folders": CLASSES}, out / "checkpoints" / "checkpoint.pt")
    failure, log = run_expecting_failure(dataset, out)
    assert failure.strip() == "KeyError: 'model'"
    assert "Traceback (most recent call last)" in log


def test_checkpoint_holding_code_is_refused_naming_the_file_and_never_run(dataset, tmp_path):
    """Whoever can write to the job's checkpoint prefix in S3 must not run code in the job."""
    out, marker = tmp_path / "out", tmp_path / "code-ran"
    (out / "checkpoints").mkdir(parents=True)
    checkpoint = out / "checkpoints" / "checkpoint.pt"
    torch.save({"model_name": "resnet18", "class_folders": CLASSES, "rng": CodeOnLoad(marker)}, checkpoint)
    failure, _ = run_expecting_failure(dataset, out)
    assert failure.startswith(f"refusing checkpoint {checkpoint}: it holds pickled objects"), failure
    assert not marker.exists()


def test_checkpoint_of_another_model_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"model_name": "resnet50", "class_folders": CLASSES}, out / "checkpoints" / "checkpoint.pt")
    failure, _ = run_expecting_failure(dataset, out)
    assert "was written for another run (model_name differs: 'resnet50' vs 'resnet18')" in failure
