"""The local /opt/ml layout matches what SageMaker writes for a training job."""

import json

import pytest

from scripts.datasets.sample import class_folder_names, make_dataset
from scripts.local import opt_ml


def test_lay_out_writes_configs_links_data_and_creates_folders(tmp_path):
    data = make_dataset(tmp_path / "data", num_classes=2, counts={"train": 1, "valid": 1, "test": 1}, size=16)
    base = opt_ml.lay_out(tmp_path / "out", {"training": data}, {"epochs": 1})
    config = base / "input" / "config"
    assert json.loads((config / "hyperparameters.json").read_text()) == {"epochs": "1"}
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["localhost"]
    assert json.loads((config / "inputdataconfig.json").read_text()) == {"training": {
        "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}}
    assert (base / "input" / "data" / "training" / "train" / class_folder_names(2)[0]).is_dir()
    assert all((base / name).is_dir() for name in ("model", "output", "checkpoints"))


def test_lay_out_declares_the_input_mode_asked_for(tmp_path):
    data = make_dataset(tmp_path / "data", num_classes=2, counts={"train": 1, "valid": 1, "test": 1}, size=16)
    base = opt_ml.lay_out(tmp_path / "out", {"training": data}, {}, input_mode="FastFile")
    config = json.loads((base / "input" / "config" / "inputdataconfig.json").read_text())
    assert config["training"]["TrainingInputMode"] == "FastFile"


def test_lay_out_names_a_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        opt_ml.lay_out(tmp_path / "out", {"training": tmp_path / "nope"}, {})
