"""The containers doing their jobs as SageMaker runs them: ``docker run IMAGE train`` and ``serve``.

Marker ``docker`` (see ``docker_fixtures``). One training run in the training container makes the
artifact the serving container then serves.
"""

import json
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from classifier import artifact, protocol
from classifier.dataset import COMBINED_CHANNEL
from scripts import demo
from scripts.containers import local_mode
from scripts.datasets.sample import SPLITS, class_folder_names
from scripts.local.server import free_port

pytestmark = pytest.mark.docker

NUM_CLASSES = 3
TINY_TRAINING = {
    "model-name": "resnet18", "pretrained": False, "epochs": 1, "batch-size": 8, "image-size": 32,
    "workers": 1, "seed": 0,
}  # fmt: skip
# Each training epoch takes about a second here: long enough to stop one mid-run.
LONG_TRAINING = {**TINY_TRAINING, "epochs": 50, "early-stopping-patience": 0}
SERVE_ENVIRONMENT = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
# Docker's default grace between SIGTERM and SIGKILL on `docker stop` (the serving container's).
STOP_GRACE_S = 10
# A SIGKILLed container exits 137.
SIGKILLED = 137
# The training run below acts for this (non-root) user, as `sudo make local-train` would for its caller.
CALLER = (4321, 4322)


def output_tail(result) -> str:
    return "\n".join(((result.stdout or "") + (result.stderr or "")).splitlines()[-30:])


def post(port: int, body: bytes, content_type: str | None) -> tuple[int, dict]:
    """POST /invocations; the status and the JSON answer (error answers are JSON too)."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def container_training(engine, built_images, sample_dataset, tmp_path_factory):
    """One real training run in the training container, as the user ``CALLER``: (CompletedProcess, OUT)."""
    out = tmp_path_factory.mktemp("opt_ml")
    sample_dataset.chmod(0o755)  # pytest makes it 0700 (root's); the caller's own data is theirs to read
    result = local_mode.train_in_container(
        engine, sample_dataset, out, TINY_TRAINING, image=built_images["train"], capture=True, owner=CALLER
    )
    yield result, out
    shutil.rmtree(out, ignore_errors=True)  # half a GB of tensors and checkpoints, no longer needed


def test_training_container_packs_the_artifact_and_reports_success(container_training):
    result, out = container_training
    assert result.returncode == 0, output_tail(result)
    assert (out / "output" / "success").is_file()
    assert not (out / "output" / "failure").exists()
    with tarfile.open(out / local_mode.MODEL_TAR) as tar:
        members = set(tar.getnames())
        classes = json.load(tar.extractfile(artifact.CLASSES_FILE))
    assert set(artifact.REQUIRED_FILES) <= members
    assert {f"{artifact.CODE_DIR}/{name}" for name in artifact.SERVING_CODE_FILES} <= members
    assert classes == [folder.split(".", 1)[1] for folder in class_folder_names(NUM_CLASSES)]
    # The trainer's evidence where SageMaker uploads it (output.tar.gz), and its live copy.
    for name in (artifact.TENSORS_DIR, artifact.STEP_TIMINGS_FILE, artifact.RESOURCE_USAGE_FILE):
        assert (out / "output" / "data" / name).exists(), name
        assert (out / "checkpoints" / artifact.LIVE_EVIDENCE_DIR / name).exists(), name
    assert (out / "checkpoints" / "checkpoint.pt").is_file()


def test_what_the_training_container_writes_belongs_to_the_caller_not_root(container_training):
    result, out = container_training
    assert result.returncode == 0, output_tail(result)
    written = [out / local_mode.MODEL_TAR, *(out / "model").rglob("*"), *(out / "output").rglob("*"),
               *(out / "checkpoints").rglob("*")]
    assert len(written) > 10
    not_the_callers = [str(path) for path in written if (path.stat().st_uid, path.stat().st_gid) != CALLER]
    assert not_the_callers == []


def test_training_container_reads_channels_mounted_where_sagemaker_puts_them(
    container_training, sample_dataset
):
    _, out = container_training
    channel = out / "input" / "data" / COMBINED_CHANNEL
    assert channel.is_dir() and not channel.is_symlink()  # a mount point, not a link to the host's data
    assert list(channel.iterdir()) == []
    config = json.loads((out / "input" / "config" / "inputdataconfig.json").read_text())
    assert list(config) == [COMBINED_CHANNEL]
    metrics = json.loads((out / "model" / artifact.METRICS_FILE).read_text())
    assert metrics["num_classes"] == NUM_CLASSES
    assert metrics["hyperparameters"]["model-name"] == "resnet18"


def test_broken_dataset_fails_with_the_reason_and_a_non_zero_exit(
    engine, built_images, sample_dataset, tmp_path
):
    broken = tmp_path / "broken"
    shutil.copytree(sample_dataset, broken)
    shutil.rmtree(broken / "valid")
    out = tmp_path / "opt_ml"

    result = local_mode.train_in_container(
        engine, broken, out, TINY_TRAINING, image=built_images["train"], capture=True
    )

    assert result.returncode != 0
    reason = (out / "output" / "failure").read_text()
    assert "valid" in reason, reason
    assert not (out / local_mode.MODEL_TAR).exists()
    assert not (out / "output" / "success").exists()


def test_docker_stop_checkpoints_training_and_says_so_in_output_failure(
    engine, built_images, sample_dataset, tmp_path
):
    """SageMaker's StopTrainingJob and spot interruptions send SIGTERM to the container."""
    out = tmp_path / "opt_ml"
    name = local_mode.container_name("train")
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(
            local_mode.train_in_container, engine, sample_dataset, out, LONG_TRAINING,
            image=built_images["train"], capture=True, name=name,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not any((out / "checkpoints").glob("*.pt")) and not run.done() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any((out / "checkpoints").glob("*.pt")), "no checkpoint after the first epoch"
        # SageMaker's grace: on a busy machine the step, the checkpoint and the toolkit's report take
        # longer than Docker's default 10 s.
        engine.run("stop", "--time", str(local_mode.STOP_GRACE_S), name)
        result = run.result(timeout=local_mode.STOP_GRACE_S + 60)

    assert result.returncode not in (0, SIGKILLED), output_tail(result)  # stopped, by itself
    reason = (out / "output" / "failure").read_text()
    assert "SIGTERM" in reason and "checkpoint" in reason, reason
    assert not (out / "output" / "success").exists()


# ---------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def serving(engine, built_images, container_training):
    """The serving container on the training container's model.tar.gz: ``(name, port)``."""
    result, out = container_training
    assert result.returncode == 0, output_tail(result)
    port = free_port()
    with local_mode.serving_container(
        engine, out / local_mode.MODEL_TAR, port, built_images["serve"], SERVE_ENVIRONMENT
    ) as name:
        yield name, port


def sample_jpeg(sample_dataset: Path) -> bytes:
    return next((sample_dataset / SPLITS[2]).rglob("*.jpg")).read_bytes()


def test_serving_container_answers_ping_and_top5(serving, sample_dataset):
    _, port = serving
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=10) as response:
        assert response.status == 200

    status, answer = post(port, sample_jpeg(sample_dataset), "image/jpeg")

    assert status == 200, answer
    top = answer[protocol.PREDICTIONS_FIELD]
    assert len(top) == NUM_CLASSES  # top-5 of 3 classes
    labels = {folder.split(".", 1)[1] for folder in class_folder_names(NUM_CLASSES)}
    assert {entry[protocol.LABEL_FIELD] for entry in top} == labels
    probabilities = [entry[protocol.PROBABILITY_FIELD] for entry in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-4


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"", "image/jpeg", 400),
        (b"not an image at all", "image/jpeg", 400),
        (b"{not json", protocol.JSON, 400),
        (b"text", "text/csv", 415),
    ],
    ids=["empty", "undecodable", "malformed-json", "unsupported-type"],
)
def test_serving_container_refuses_bad_input_and_keeps_serving(
    serving, sample_dataset, body, content_type, expected
):
    _, port = serving
    status, answer = post(port, body, content_type)
    assert status == expected, answer
    assert answer.get("message"), answer

    status, answer = post(port, sample_jpeg(sample_dataset), "image/jpeg")
    assert status == 200, answer


def test_serving_container_listens_on_this_machine_only(serving):
    _, port = serving
    listening = {
        connection.laddr.ip for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
    }
    assert listening == {"127.0.0.1"}


def test_serving_container_runs_as_non_root(engine, serving):
    name, _ = serving
    processes = engine.run("top", name, "-o", "pid,uid,comm").stdout.splitlines()[1:]
    assert len(processes) >= 3, processes  # serve, the model server's Java frontend, a worker
    assert all(line.split()[1] != "0" for line in processes), processes


def test_serving_container_exits_cleanly_on_docker_stop(engine, built_images, container_training):
    _, out = container_training
    port = free_port()
    with local_mode.serving_container(
        engine, out / local_mode.MODEL_TAR, port, built_images["serve"], SERVE_ENVIRONMENT, remove=False
    ) as name:
        engine.run("stop", "--time", str(STOP_GRACE_S), name)
    state = json.loads(engine.run("inspect", "--format", "{{json .State}}", name).stdout)
    logs = engine.run("logs", name).stderr
    engine.run("rm", name)
    assert state["ExitCode"] == 0, logs[-2000:]  # SIGKILL after the grace would give 137


def test_demo_trains_serves_and_prints_the_top5_of_each_class(
    engine, built_images, sample_dataset, tmp_path, capsys
):
    """`make demo` on the shared sample data (two epochs): the README's main command, end to end."""
    quick = demo.demo_hyperparameters(real_data=False, overrides=["--epochs", "2"])
    # The demo's containers are named after the images (local_mode.container_name); the engine may be
    # shared with other work, whose containers come and go meanwhile.
    ours = ("ps", "--all", "--quiet", "--filter", "name=sagemaker-classifier-")
    before = set(engine.run(*ours).stdout.split())

    assert demo.run(sample_dataset, tmp_path / "demo", quick) == 0

    printed = capsys.readouterr().out
    # int8, or fp32 when this short run's int8 test top-1 drops more than the bound
    assert ("serving the quantized int8 model: int8 (" in printed
            or "serving not the int8 model: fp32 (" in printed), printed[-3000:]
    assert printed.count("(true class: ") == NUM_CLASSES
    assert printed.count("  1. ") == NUM_CLASSES
    assert (tmp_path / "demo" / "opt_ml" / local_mode.MODEL_TAR).is_file()
    assert set(engine.run(*ours).stdout.split()) <= before  # its containers are gone
    report_html = tmp_path / "demo" / "report.html"
    assert f"report: {report_html}" in printed
    html = report_html.read_text()
    assert "LossNotDecreasing" in html and "data:image/png;base64," in html
    assert "Verdict: " in html and "verdict: " in printed
    # The default hook saves every loss: the report judges overfitting (two epochs are enough).
    assert re.search(r"^  Overfit +(ok|ISSUE)", printed, flags=re.MULTILINE), printed
