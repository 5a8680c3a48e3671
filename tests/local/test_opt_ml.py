"""The local /opt/ml layout matches what SageMaker writes for a training job."""

import json
import shutil

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


def small_dataset(folder):
    return make_dataset(folder, num_classes=2, counts={"train": 1, "valid": 1, "test": 1}, size=16)


@pytest.mark.parametrize("mounted", [False, True], ids=["linked", "mounted"])
def test_a_users_own_folder_or_file_in_the_channel_place_is_never_deleted(tmp_path, mounted):
    data = small_dataset(tmp_path / "data")
    channel = tmp_path / "out" / "input" / "data" / "training"
    (channel / "mine").mkdir(parents=True)
    (channel / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=f"{channel} is a folder holding files of yours"):
        opt_ml.lay_out(tmp_path / "out", {"training": None if mounted else data}, {})
    assert (channel / "mine" / "notes.txt").read_text() == "keep me"

    shutil.rmtree(channel)
    channel.write_text("a file of mine")
    with pytest.raises(FileExistsError, match="is a file of yours"):
        opt_ml.lay_out(tmp_path / "out", {"training": None if mounted else data}, {})
    assert channel.read_text() == "a file of mine"


def test_links_and_empty_mount_points_from_earlier_runs_are_replaced_and_data_stays(tmp_path):
    first, second = small_dataset(tmp_path / "first"), small_dataset(tmp_path / "second")
    channel = tmp_path / "out" / "input" / "data" / "training"
    opt_ml.lay_out(tmp_path / "out", {"training": None}, {})  # a container run's mount point
    assert channel.is_dir() and not channel.is_symlink() and not any(channel.iterdir())
    opt_ml.lay_out(tmp_path / "out", {"training": first}, {})  # then a host run: linked
    assert channel.is_symlink() and channel.resolve() == first.resolve()
    opt_ml.lay_out(tmp_path / "out", {"training": second}, {})  # another dataset: relinked
    assert channel.resolve() == second.resolve()
    assert any(first.rglob("*.jpg"))  # the data behind the old link is untouched
    opt_ml.lay_out(tmp_path / "out", {"training": None}, {})
    assert channel.is_dir() and not channel.is_symlink()


def test_data_already_in_the_channel_place_is_used_where_it_is(tmp_path):
    channel = tmp_path / "out" / "input" / "data" / "training"
    small_dataset(channel)
    opt_ml.lay_out(tmp_path / "out", {"training": channel}, {})
    assert not channel.is_symlink() and any(channel.rglob("*.jpg"))
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
