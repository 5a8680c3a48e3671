"""A second real run in the other SageMaker shapes: one channel per split, Debugger configured by
SageMaker's JSON file, and a few unreadable images, skipped and counted."""

from __future__ import annotations

import json

from smdebug import modes
from smdebug.trials import create_trial
from train_helpers import TRAINING_TIMEOUT_S, fail_with_log

from classifier import artifact, sagemaker_env
from scripts.datasets.sample import class_folder_names, make_dataset
from scripts.local.train import run_training


def test_split_channels_sagemaker_debugger_config_and_skipped_images(tmp_path):
    counts = {"train": 12, "valid": 4, "test": 4}
    data = make_dataset(tmp_path / "data", num_classes=2, counts=counts, size=32)
    (data / "valid").rename(data / "validation")  # SageMaker's usual channel name works too
    (data / "train" / class_folder_names(2)[0] / "0003.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    tensors = tmp_path / "sagemaker-debugger"
    # What SageMaker writes when the job has a DebugHookConfig (values are strings there too).
    config = out / sagemaker_env.DEBUGGER_CONFIG_FILE
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({
        "LocalPath": str(tensors),
        "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [
            {"CollectionName": "losses", "CollectionParameters": {"save_interval": "1"}},
        ],
    }))
    hyperparameters = {
        "model-name": "resnet18", "pretrained": False, "image-size": 32, "batch-size": 8,
        "epochs": 1, "workers": 0, "max-bad-image-fraction": 0.1, "fine-tune": "all",
    }

    result = run_training(
        data, out, hyperparameters, channels=("train", "validation", "test"), timeout=TRAINING_TIMEOUT_S
    )

    if result.returncode != 0:
        fail_with_log("training with split channels failed", result.stdout)
    assert "skipping unreadable image" in result.stdout and "0003.jpg" in result.stdout
    written = json.loads((out / "model" / artifact.METRICS_FILE).read_text())
    assert written["bad_images"] == {"train": 1, "valid": 0, "test": 0}
    assert f"debugger: hook from SageMaker config {config}" in result.stdout
    assert not (out / "output" / "data" / artifact.TENSORS_DIR).exists()  # the local default stayed off
    loss = create_trial(str(tensors)).tensor(create_trial(str(tensors)).tensor_names(collection="losses")[0])
    # 23 readable training images, batches of 8, the last partial batch dropped: 2 steps, each saved.
    assert loss.steps(mode=modes.TRAIN) == [0, 1]
    # Validation (8 images) then test (8 images): one EVAL step each.
    assert loss.steps(mode=modes.EVAL) == [0, 1]
