"""Two training containers that find each other as SageMaker's hosts do, driven two ways:
``make local-train INSTANCES=2`` (``scripts.containers.local_mode.train_cluster``) and the
SageMaker Python SDK v2's own local mode with ``instance_count=2`` (a client no one here wrote).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from classifier import artifact, metrics
from scripts import REPO_ROOT
from scripts.containers import local_mode
from scripts.engine import apt
from scripts.engine.client import DEBIAN_CLIENT

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

CLUSTER_RUN = {
    "model-name": "resnet18",
    "pretrained": False,
    "image-size": 32,
    "batch-size": 8,
    "epochs": 2,
    "workers": 0,
    "debugger-save-interval": 4,
}
SDK_PYTHON = REPO_ROOT / ".venv" / "sdk" / "bin" / "python"
# Runs in .venv/sdk: SDK v2's generic Estimator on our image, two "local" instances.
TRAIN_WITH_SDK_LOCAL_MODE = """
import json, sys
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession

image, data, output, hyperparameters = sys.argv[1:]
session = LocalSession()
session.config = {"local": {"local_code": True}}
estimator = Estimator(
    image_uri=image, role="arn:aws:iam::123456789012:role/SageMakerRole", instance_count=2,
    instance_type="local", output_path="file://" + output, hyperparameters=json.loads(hyperparameters),
    environment={"OMP_NUM_THREADS": "1"},  # the two "instances" share this machine's cores
    sagemaker_session=session, base_job_name="classifier-sdk-ddp",
)
estimator.fit({"training": "file://" + data})
print("RESULT " + json.dumps({"model_data": estimator.model_data}))
"""


def host_lines(lines: list[str], host: str) -> str:
    return "\n".join(line.split(" | ", 1)[1] for line in lines if line.startswith(f"{host} | "))


def test_two_containers_train_one_model(engine, built_images, sample_dataset, tmp_path):
    out = tmp_path / "out"
    prefix = f"sagemaker-classifier-train-clustertest-{os.getpid()}"
    lines: list[str] = []
    run = local_mode.train_cluster(engine, sample_dataset, out, CLUSTER_RUN, instances=2,
                                   image=built_images["train"], emit=lines.append, name_prefix=prefix)
    log = "\n".join(lines)
    assert run.exit_codes == {"algo-1": 0, "algo-2": 0}, log[-6000:]
    assert not run.stopped
    # Each container saw its own host among both, and the two met over the network.
    for host, folder in (("algo-1", out), ("algo-2", out / "algo-2")):
        config = json.loads((folder / "input" / "config" / "resourceconfig.json").read_text())
        assert config["current_host"] == host and config["hosts"] == ["algo-1", "algo-2"]
        assert (folder / "output" / "success").is_file()
    assert "--nnodes 2 --nproc_per_node 1 --master_addr algo-1 --master_port 7777 --node_rank 1" in log
    assert "data-parallel training: rank 0 of 2 on algo-1" in log
    # One model (with its int8 export), from rank 0 on algo-1, packed as SageMaker packs it; one
    # evidence folder, algo-1's: SageMaker merges the hosts' output/data, so algo-2 writes none.
    with tarfile.open(out / local_mode.MODEL_TAR) as tar:
        names = set(tar.getnames())
    assert {artifact.MODEL_FILE, artifact.METRICS_FILE, artifact.OPENVINO_INT8_FILE} <= names
    assert not any((out / "algo-2" / "model").iterdir())
    assert (out / "output" / "data" / artifact.STEP_TIMINGS_FILE).read_text().strip()
    algo_2_data = out / "algo-2" / "output" / "data"
    assert not algo_2_data.exists() or not any(algo_2_data.iterdir())
    assert len(metrics.parse_metric_lines(host_lines(lines, "algo-1"))["validation:loss"]) == 2
    assert metrics.parse_metric_lines(host_lines(lines, "algo-2"))["validation:loss"] == []
    # Its containers and network are gone.
    assert engine.run("ps", "--all", "--quiet", "--filter", f"name={prefix}").stdout.strip() == ""
    assert engine.run("network", "ls", "--quiet", "--filter", f"name={prefix}").stdout.strip() == ""


def test_a_killed_container_makes_the_other_fail_naming_it(engine, built_images, sample_dataset, tmp_path):
    out = tmp_path / "out"
    prefix = f"sagemaker-classifier-train-killtest-{os.getpid()}"
    lines: list[str] = []
    killed = threading.Event()

    def watch(line: str) -> None:
        lines.append(line)
        if not killed.is_set() and line.startswith(f"algo-1 | {metrics.LINE_PREFIX} epoch=1 "):
            killed.set()
            engine.run("kill", f"{prefix}-algo-2", check=False)

    started = time.monotonic()
    run = local_mode.train_cluster(engine, sample_dataset, out, {**CLUSTER_RUN, "epochs": 4}, instances=2,
                                   image=built_images["train"], emit=watch, name_prefix=prefix)
    log = "\n".join(lines)
    assert killed.is_set(), log[-6000:]
    assert run.exit_codes["algo-2"] == 137  # SIGKILL
    assert run.exit_codes["algo-1"] != 0 and run.stopped == [], log[-6000:]  # it ended by itself
    assert time.monotonic() - started < local_mode.PEER_FAILURE_GRACE_S
    failure = (out / "output" / "failure").read_text()
    assert failure.startswith("rank 0 of 2 on algo-1: lost contact with rank 1 on algo-2"), failure
    assert not (out / local_mode.MODEL_TAR).exists()


@pytest.fixture(scope="module")
def sdk_python() -> Path:
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON} is missing: `make test` builds it (tests/containers/sdk-requirements.txt)")
    if apt.ensure_command("docker-compose", apt.COMPOSE_PACKAGE) is None:
        pytest.fail("docker-compose is missing (apt-get install docker-compose): SDK v2 local mode runs it")
    return SDK_PYTHON


def test_sagemaker_sdk_local_mode_trains_on_two_instances(engine, built_images, sample_dataset, sdk_python,
                                                          tmp_path):
    image = built_images["train"]
    output = tmp_path / "sdk-output"
    output.mkdir()
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text(
        "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    env = {
        **os.environ, "AWS_DEFAULT_REGION": "us-east-1", "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        # docker-compose 1.29 and the client it calls, against this project's engine.
        "PATH": os.pathsep.join([str(Path(DEBIAN_CLIENT).parent), os.environ.get("PATH", "")]),
        **({"DOCKER_HOST": engine.host} if engine.host else {}),
    }
    before = set(engine.run("ps", "--all", "--quiet", "--filter", f"ancestor={image}").stdout.split())
    try:
        result = subprocess.run(
            [str(sdk_python), "-c", TRAIN_WITH_SDK_LOCAL_MODE, image, str(sample_dataset), str(output),
             json.dumps({name: str(value) for name, value in CLUSTER_RUN.items()})],
            env=env, capture_output=True, text=True, timeout=600,
        )
    finally:  # the SDK leaves its exited containers behind
        after = set(engine.run("ps", "--all", "--quiet", "--filter", f"ancestor={image}").stdout.split())
        if after - before:
            engine.run("rm", "--force", *(after - before), check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "RESULT " in result.stdout, log[-6000:]
    assert "data-parallel training: rank 0 of 2 on algo-1-" in log
    assert "Reporting training SUCCESS" in log
    with tarfile.open(output / "model.tar.gz") as tar:
        assert {artifact.MODEL_FILE, artifact.CLASSES_FILE, artifact.METRICS_FILE} <= set(tar.getnames())
