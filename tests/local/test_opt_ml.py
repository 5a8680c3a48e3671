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
    assert list(json.loads((config / "inputdataconfig.json").read_text())) == ["training"]
    assert (base / "input" / "data" / "training" / "train" / class_folder_names(2)[0]).is_dir()
    assert all((base / name).is_dir() for name in ("model", "output", "checkpoints"))


def test_lay_out_names_a_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        opt_ml.lay_out(tmp_path / "out", {"training": tmp_path / "nope"}, {})


def test_each_host_of_a_job_has_its_own_resource_config(tmp_path):
    hosts = opt_ml.host_names(2)
    assert hosts == ["algo-1", "algo-2"]
    config = opt_ml.resource_config_json("algo-2", hosts, "eth0")
    assert config == {"current_host": "algo-2", "hosts": hosts, "network_interface_name": "eth0"}
    base = opt_ml.lay_out(tmp_path / "algo-2", {"training": None}, {}, resource_config=config)
    assert json.loads((base / "input" / "config" / "resourceconfig.json").read_text()) == config
    with pytest.raises(ValueError, match="not one of the job's hosts"):
        opt_ml.resource_config_json("algo-3", hosts)
    with pytest.raises(ValueError, match="at least one instance"):
        opt_ml.host_names(0)


def test_local_training_runs_the_toolkit_as_the_image_does(tmp_path, monkeypatch):
    from scripts.local import train as local_train

    monkeypatch.setenv("SM_HOSTS", "stale")
    env = local_train.training_env(tmp_path, master_port=29999)
    assert env["SAGEMAKER_TRAINING_MODULE"] == "train_launcher:main"
    assert env["PYTHONPATH"] == str(tmp_path / "code")  # the copy of code/ in OUT, as /opt/ml/code
    assert env["PATH"].split(":")[0] == str(local_train.TOOLKIT_TRAIN.parent)  # torchrun beside the toolkit
    assert env["PET_MASTER_PORT"] == "29999" and "SM_HOSTS" not in env
    assert local_train.with_processes({"epochs": 1}, 1) == {"epochs": 1}
    assert local_train.with_processes({"epochs": 1}, 2) == {
        "epochs": 1, "sagemaker_torch_distributed_enabled": "true",
        "sagemaker_mpi_num_of_processes_per_host": "2",
    }
