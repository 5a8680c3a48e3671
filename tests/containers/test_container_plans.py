"""The container scripts' pure parts, and ECR through moto: no Docker engine needed."""

import tarfile

import pytest

from scripts import demo
from scripts.containers import build, images, local_mode, push
from scripts.datasets.sample import class_folder_names, make_dataset

TORCH_HASH = "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"
REQUIREMENTS = f"""\
# via -r requirements.in
numpy==2.4.6 \\
    --hash=sha256:{"a" * 64} \\
    --hash=sha256:{"b" * 64}
    # via torch
torch==2.13.0+cpu \\
    --hash=sha256:{TORCH_HASH}
typing-extensions==4.16.0 \\
    --hash=sha256:{"c" * 64}
"""


def test_parse_pins_reads_names_versions_and_hashes():
    pins = build.parse_pins(REQUIREMENTS)
    assert set(pins) == {"numpy", "torch", "typing-extensions"}
    assert pins["torch"].version == "2.13.0+cpu"
    assert pins["torch"].hashes == {TORCH_HASH}
    assert pins["numpy"].hashes == {"a" * 64, "b" * 64}


def test_the_real_requirements_files_pin_torch_with_hashes():
    for kind, variant in (("train", "default"), ("serve", build.TORCH_VARIANT)):
        pins = build.parse_pins(build.requirements_file(kind, variant).read_text())
        assert pins["torch"].hashes, kind
        assert all(pin.hashes for pin in pins.values()), kind


def test_the_default_serving_image_has_no_torch_and_shares_the_torch_variants_other_pins():
    default = build.parse_pins(build.requirements_file("serve").read_text())
    with_torch = build.parse_pins(build.requirements_file("serve", build.TORCH_VARIANT).read_text())
    assert "torch" not in default and "openvino" in default
    assert all(pin.hashes for pin in default.values())
    assert {name: with_torch[name] for name in default} == default  # same versions and hashes


def test_the_torch_variant_is_built_from_its_stage_under_suffixed_tags():
    assert build.variant_tags(["abc1234", "latest"], build.TORCH_VARIANT) == ["abc1234-torch", "latest-torch"]
    assert build.variant_tags(["abc1234"]) == ["abc1234"]
    assert build.build_args("b", {}, serve_variant="torch")[-2:] == ["--build-arg", "SERVE_VARIANT=torch"]
    dockerfile = build.dockerfile("serve").read_text()
    assert "FROM python-${SERVE_VARIANT}" in dockerfile and "AS python-torch" in dockerfile


def test_pinned_candidates_match_wheel_names_and_versions(tmp_path):
    pins = build.parse_pins(REQUIREMENTS)
    names = [
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",  # pinned
        "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl",  # another version
        "typing_extensions-4.16.0-py3-none-any.whl",  # pinned, name spelt with an underscore
        "pillow-13.0.0-cp311-cp311-manylinux_2_28_x86_64.whl",  # not pinned
        "notes.txt",
    ]
    found = build.pinned_candidates(pins, [tmp_path / name for name in names])
    assert [path.name for path in found] == [names[0], names[2]]


def test_fill_wheelhouse_links_only_wheels_whose_hash_is_pinned(tmp_path):
    source, target = tmp_path / "source", tmp_path / "wheelhouse"
    source.mkdir()
    target.mkdir()
    good = source / "typing_extensions-4.16.0-py3-none-any.whl"
    good.write_bytes(b"a wheel")
    forged = source / "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"
    forged.write_bytes(b"not the pinned numpy")
    digest = build.sha256_of(good)
    pins = build.parse_pins(REQUIREMENTS.replace("c" * 64, digest))

    hashes = build.fill_wheelhouse(pins, [source, tmp_path / "missing"], target)

    assert hashes == {digest}
    assert sorted(path.name for path in target.iterdir()) == [good.name]


def test_torch_index_is_dropped_when_the_wheelhouse_holds_the_pinned_torch():
    pins = build.parse_pins(REQUIREMENTS)
    index = "https://download.pytorch.org/whl/cpu"
    assert build.torch_index_for(pins, set(), index) == index
    assert build.torch_index_for(pins, {TORCH_HASH}, index) == ""


def test_host_find_links_reads_pip_config_and_environment_but_not_urls():
    listing = "global.find-links='/opt/wheels'\n:env:.find-links='/opt/wheels'\nglobal.cert='/x'\n"
    environ = {"PIP_FIND_LINKS": "/more https://example.com/wheels file:///even/more"}
    found = build.host_find_links(listing, environ)
    assert [str(path) for path in found] == ["/more", "/even/more", "/opt/wheels"]


def test_build_args_pass_base_and_proxies_by_name_and_never_an_index_url():
    environ = {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "localhost",
               "PIP_INDEX_URL": "https://user:token@mirror/simple"}
    args = build.build_args("base:1", environ, torch_index="https://t:token@torch/cpu",
                            pretrained_models="resnet50")
    assert args == [
        "--build-arg", "BASE_IMAGE=base:1",
        "--build-arg", "HTTPS_PROXY",  # the value stays in the environment, not on the command line
        "--build-arg", "no_proxy",
        "--build-arg", "TORCH_INDEX=",  # the public default gives way to the secret
        "--build-arg", "PRETRAINED_MODELS=resnet50",
    ]  # fmt: skip
    assert not [arg for arg in build.build_args("b", environ) if "token" in arg or "INDEX" in arg]


def test_index_urls_are_build_secrets_and_only_http_ones():
    environ = {"PIP_INDEX_URL": "https://user:token@mirror/simple"}
    assert build.url_secrets(environ, "https://torch/cpu") == {
        "pip_index_url": "https://user:token@mirror/simple", "torch_index_url": "https://torch/cpu"}
    assert build.url_secrets({"PIP_INDEX_URL": "file:///x"}, "") == {}
    assert build.url_secrets({}) == {}


def test_secret_files_are_private_and_removed_after_the_build():
    with build.secret_files({"pip_index_url": "https://user:token@mirror/simple"}) as files:
        path = files["pip_index_url"]
        assert path.read_text() == "https://user:token@mirror/simple"
        assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    assert not path.exists()


def test_build_command_tags_targets_amd64_and_passes_secrets_as_files():
    secrets = {"pip_cert": "/etc/ca.pem", "pip_index_url": "/tmp/s/pip_index_url"}
    command = build.build_command("serve", ["abc1234", "latest"], [], secrets)
    assert command[:5] == ["build", "--platform", "linux/amd64", "--network", "host"]
    assert command[command.index("-f") + 1].endswith("docker/serve/Dockerfile")
    tags = [command[i + 1] for i, option in enumerate(command) if option == "-t"]
    assert tags == ["sagemaker-classifier-serve:abc1234", "sagemaker-classifier-serve:latest"]
    passed = [command[i + 1] for i, option in enumerate(command) if option == "--secret"]
    assert passed == ["id=pip_cert,src=/etc/ca.pem", "id=pip_index_url,src=/tmp/s/pip_index_url"]
    assert command[-1] == str(build.REPO_ROOT)
    assert "--secret" not in build.build_command("train", ["t"], [])
    assert "--no-cache" in build.build_command("train", ["t"], [], no_cache=True)


def test_dockerfiles_take_no_index_url_as_a_build_argument():
    for kind in images.REPOSITORIES:
        text = build.dockerfile(kind).read_text()
        assert "ARG PIP_INDEX_URL" not in text and "--index-url" not in text, kind
        assert "--mount=type=secret,id=pip_index_url" in text, kind


def test_training_mounts_follow_the_sagemaker_layout_with_channels_mounted_read_only(tmp_path):
    command = local_mode.train_command(
        "img:1", "job", tmp_path / "out", {"training": tmp_path / "data"}, gpus="all"
    )
    mounts = [command[i + 1] for i, option in enumerate(command) if option == "-v"]
    assert mounts == [
        f"{tmp_path}/out/input:/opt/ml/input",
        f"{tmp_path}/out/model:/opt/ml/model",
        f"{tmp_path}/out/output:/opt/ml/output",
        f"{tmp_path}/out/checkpoints:/opt/ml/checkpoints",
        f"{tmp_path}/data:/opt/ml/input/data/training:ro",
    ]
    assert command[-2:] == ["img:1", "train"]
    assert command[command.index("--gpus") + 1] == "all"
    assert command[command.index("--network") + 1] == "host"
    assert "--user" not in command  # root (SageMaker's user) when the caller is root


def test_the_training_container_runs_as_the_calling_user_with_a_writable_home(tmp_path):
    command = local_mode.train_command("img:1", "job", tmp_path / "out", {}, owner=(1000, 1001))
    assert command[command.index("--user") + 1] == "1000:1001"
    assert f"HOME={local_mode.CONTAINER_HOME}" in command
    assert command.index("--user") < command.index("img:1")


def test_the_caller_is_the_user_behind_sudo(monkeypatch):
    sudo = {"SUDO_UID": "1000", "SUDO_GID": "1001"}
    monkeypatch.setattr(local_mode.os, "geteuid", lambda: 0)
    assert local_mode.caller_ids(sudo) == (1000, 1001)
    monkeypatch.setattr(local_mode.os, "geteuid", lambda: 1000)  # not root: SUDO_* means nothing
    assert local_mode.caller_ids(sudo) == (local_mode.os.getuid(), local_mode.os.getgid())


def test_serve_command_binds_the_port_and_mounts_the_model_read_only(tmp_path):
    workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    command = local_mode.serve_command("img:1", "srv", tmp_path, 8123, workers)
    assert command[-2:] == ["img:1", "serve"]
    assert f"{tmp_path}:/opt/ml/model:ro" in command
    assert "SAGEMAKER_BIND_TO_PORT=8123" in command
    assert "SAGEMAKER_MODEL_SERVER_WORKERS=1" in command
    assert "SERVE_BIND_HOST=127.0.0.1" in command  # host networking: loopback keeps it local
    exposed = local_mode.serve_command("img:1", "srv", tmp_path, 8123, bind_host="0.0.0.0")
    assert "SERVE_BIND_HOST=0.0.0.0" in exposed


def test_pack_model_packs_contents_at_the_archive_root_and_unpacks_back(tmp_path):
    model = tmp_path / "model"
    (model / "code" / "__pycache__").mkdir(parents=True)
    (model / "classes.json").write_text("[]")
    (model / "code" / "inference.py").write_text("x = 1\n")
    (model / "code" / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"")

    tar_path = local_mode.pack_model(model, tmp_path / "model.tar.gz")

    with tarfile.open(tar_path) as tar:
        assert tar.getnames() == ["classes.json", "code", "code/inference.py"]
    unpacked = local_mode.unpack_model(tar_path, tmp_path / "unpacked")
    assert (unpacked / "code" / "inference.py").read_text() == "x = 1\n"


def test_push_plan_names_every_image_under_every_tag():
    plan = push.push_plan("1.dkr.ecr.eu-west-1.amazonaws.com", ["train", "serve"], ["abc", "latest"])
    assert plan[0] == (
        "sagemaker-classifier-train:abc",
        "1.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-classifier-train:abc",
    )
    assert len(plan) == 4


def test_a_channel_without_data_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        local_mode.train_in_container(None, tmp_path / "missing", tmp_path / "out", {"epochs": 1})
    assert not (tmp_path / "out").exists()


def test_demo_hyperparameters_quick_recipe_for_generated_data_overridable_and_checked():
    quick = demo.demo_hyperparameters(real_data=False, overrides=["--epochs", "1"])
    assert quick["epochs"] == "1" and quick["model-name"] == "resnet18" and quick["pretrained"] is False
    assert demo.demo_hyperparameters(real_data=True, overrides=[]) == {}  # the trainer's defaults
    with pytest.raises(SystemExit):
        demo.demo_hyperparameters(real_data=True, overrides=["--model-name", "vgg11"])


def test_demo_sends_one_test_image_per_class(tmp_path):
    data = make_dataset(tmp_path, num_classes=3, counts={"train": 1, "valid": 1, "test": 2}, size=16)
    samples = demo.one_image_per_class(data)
    assert [folder for folder, _ in samples] == class_folder_names(3)
    assert all(path.parent.parent.name == "test" and path.name == "0000.jpg" for _, path in samples)


def test_host_torch_index_is_kept_unless_a_local_wheel_has_the_pinned_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_pip_config_listing", lambda: "")
    impostor = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    impostor.write_bytes(b"not the pinned wheel")
    environ = {"PIP_FIND_LINKS": str(tmp_path)}
    assert build.host_torch_index("serve", "https://index.example/cpu", environ) == (
        "https://index.example/cpu")
    pins = build.parse_pins(build.requirements_file("serve", build.TORCH_VARIANT).read_text())
    monkeypatch.setattr(build, "sha256_of", lambda path: next(iter(pins["torch"].hashes)))
    assert build.host_torch_index("serve", "https://index.example/cpu", environ) == ""


def test_several_instances_are_hosts_on_a_network_each_with_its_own_opt_ml(tmp_path):
    out = tmp_path / "out"
    hosts = ["algo-1", "algo-2"]
    assert [local_mode.host_folder(out, host, hosts) for host in hosts] == [out, out / "algo-2"]
    command = local_mode.cluster_train_command(
        "img:1", "job-algo-2", "job-net", "algo-2", out / "algo-2", {"training": tmp_path / "data"},
        out / "checkpoints", environment={"OMP_NUM_THREADS": "1"},
    )
    for option, value in (("--network", "job-net"), ("--network-alias", "algo-2"), ("--hostname", "algo-2")):
        assert command[command.index(option) + 1] == value
    mounts = [command[i + 1] for i, option in enumerate(command) if option == "-v"]
    assert f"{out}/algo-2/input:/opt/ml/input" in mounts
    assert f"{out}/checkpoints:/opt/ml/checkpoints" in mounts  # one checkpoint folder, as S3 syncs it
    assert "OMP_NUM_THREADS=1" in command and "--detach" in command
    assert command[-2:] == ["img:1", "train"]
    assert local_mode.shared_machine_environment(2, cores=8) == {"OMP_NUM_THREADS": "4"}
    assert local_mode.shared_machine_environment(4, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert local_mode.ClusterRun({"algo-1": 0, "algo-2": 137}).returncode == 137
    assert local_mode.ClusterRun({"algo-1": 0, "algo-2": 0}).returncode == 0
