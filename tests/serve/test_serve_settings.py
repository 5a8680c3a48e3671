"""The serving pieces that need no server: settings from the environment, the model server's
environment, the wire format's helpers, and the gateway's health verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from classifier import protocol
from scripts.local.server import CODE_DIR, SERVE_PYTHON
from serving import model_server, worker_state
from serving.gateway import Upstream, health
from serving.settings import MB, ServeSettings


def settings(env: dict[str, str] | None = None, cores: int = 2) -> ServeSettings:
    return ServeSettings.from_environ(env or {}, Path("/opt/ml/model"), cores)


@pytest.mark.parametrize("cores, workers, threads", [
    (1, 1, 1), (2, 1, 2), (4, 2, 2), (16, 8, 2), (96, 48, 2),
])
def test_defaults_fit_the_cores(cores, workers, threads):
    chosen = settings(cores=cores)
    assert (chosen.workers, chosen.torch_threads) == (workers, threads)
    assert chosen.workers * chosen.torch_threads <= cores


def test_defaults_match_sagemaker():
    chosen = settings()
    assert (chosen.port, chosen.bind_host) == (8080, "0.0.0.0")
    assert chosen.max_payload_bytes == 6 * MB
    assert chosen.timeout_seconds == 60


def test_sagemaker_variables_are_honoured():
    chosen = settings({
        "SAGEMAKER_BIND_TO_PORT": "9090",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "2",
        "SAGEMAKER_STARTUP_TIMEOUT": "30",
        "SERVE_BIND_HOST": "127.0.0.1",
    }, cores=8)
    assert (chosen.port, chosen.bind_host, chosen.workers, chosen.torch_threads) == (9090, "127.0.0.1", 3, 2)
    assert chosen.max_payload_bytes == 20 * MB
    assert chosen.timeout_seconds == 120  # sagemaker-inference's SAGEMAKER_MODEL_SERVER_TIMEOUT is in minutes
    assert chosen.startup_timeout_seconds == 30
    both = settings({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "2", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "15"})
    assert both.timeout_seconds == 15


@pytest.mark.parametrize("name, value", [
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "0"),
    ("SAGEMAKER_BIND_TO_PORT", "http"),
    ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
    ("SERVE_TORCH_THREADS", "2.5"),
])
def test_a_bad_value_is_refused_naming_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        settings({name: value})


def test_serve_exits_2_naming_a_bad_variable():
    result = subprocess.run(
        [str(SERVE_PYTHON), str(CODE_DIR / "serve.py"), "serve"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "SAGEMAKER_MODEL_SERVER_WORKERS": "many"},
    )
    assert result.returncode == 2
    assert "SAGEMAKER_MODEL_SERVER_WORKERS" in result.stderr


def test_model_server_environment_keeps_mms_private(tmp_path):
    chosen = settings({"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, cores=4)
    env = model_server.environment(chosen, tmp_path, 21001, 21002, {"PYTHONPATH": "/x", "PATH": "/bin"})
    assert env["MMS_INFERENCE_ADDRESS"] == "http://127.0.0.1:21001"
    assert env["MMS_MANAGEMENT_ADDRESS"] == "http://127.0.0.1:21002"
    assert env["SAGEMAKER_BASE_DIR"] == str(tmp_path)
    assert env[model_server.CONFIG_FILE_ENV].startswith(str(tmp_path))  # not /etc/sagemaker-mms.properties
    assert env["TMPDIR"].startswith(str(tmp_path)) and env["TEMP"].startswith(str(tmp_path))
    assert (env["SAGEMAKER_MODEL_SERVER_WORKERS"], env["OMP_NUM_THREADS"]) == ("2", "2")
    assert int(env["MMS_MAX_REQUEST_SIZE"]) >= chosen.max_payload_bytes
    assert env["PYTHONPATH"].split(os.pathsep) == [str(Path(model_server.__file__).parent.parent), "/x"]


def test_protocol_helpers():
    assert protocol.media_type("Image/JPEG; charset=binary") == "image/jpeg"
    assert protocol.is_image_type("image/webp") and protocol.is_image_type(protocol.X_IMAGE)
    assert not protocol.is_image_type("image/") and not protocol.is_image_type("application/json")
    assert protocol.parse_custom_attributes("k=3, trace = abc;flag") == {"k": "3", "trace": "abc"}
    assert json.loads(protocol.json_request([b"\x01"], k=2)) == {"image": "AQ==", "k": 2}
    assert json.loads(protocol.json_request([b"\x01", b"\x02"])) == {"images": ["AQ==", "Ag=="]}


def test_health_counts_only_live_ready_workers_and_reports_a_failure(tmp_path):
    upstream = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: True)
    assert health(upstream)[1]["status"] == "Loading"

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    (tmp_path / f"{worker_state.READY_PREFIX}{finished.stdout.strip()}").touch()  # a dead worker
    (tmp_path / worker_state.FAILURE_FILE).write_text("model failed to load: boom\n")
    status, body = health(upstream)
    assert (status, body["status"], body["reason"]) == (503, "Unhealthy", "model failed to load: boom")

    (tmp_path / f"{worker_state.READY_PREFIX}{os.getpid()}").touch()  # a live one
    assert health(upstream) == (200, {"status": "Healthy", "workers_ready": 1})

    stopped = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: False)
    assert health(stopped)[0] == 503


def test_a_failure_rewritten_by_restarted_workers_never_reads_as_loading(tmp_path, monkeypatch):
    monkeypatch.setenv(worker_state.STATE_DIR_ENV, str(tmp_path))
    upstream = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: True)
    worker_state.record_failure("model failed to load: boom")
    rewriting = threading.Event()
    rewriting.set()

    def restarted_workers() -> None:  # MMS restarts each dying worker, which records the reason again
        while rewriting.is_set():
            worker_state.record_failure("model failed to load: boom")

    writer = threading.Thread(target=restarted_workers)
    writer.start()
    try:
        verdicts = {health(upstream)[1]["status"] for _ in range(3000)}
    finally:
        rewriting.clear()
        writer.join()
    assert verdicts == {"Unhealthy"}
    assert [path.name for path in tmp_path.iterdir()] == [worker_state.FAILURE_FILE]
