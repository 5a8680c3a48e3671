"""The serving pieces that need no server: settings from the environment, the model server's
environment, the wire format's helpers, and the gateway's health verdict."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from classifier import protocol
from scripts.local.server import CODE_DIR, SERVE_PYTHON
from serving import model_server, worker_state
from serving import settings as serve_settings
from serving.gateway import ClientLimits, Gateway, RequestClock, RequestTimeout, Upstream, health
from serving.settings import MB, ServeSettings

T3_MEDIUM = {"cores": 2, "memory_mb": 4096}  # the seeds' endpoint instance: 2 vCPUs, 4 GiB


def settings(env: dict[str, str] | None = None, cores: int = 2, memory_mb: int = 10**6) -> ServeSettings:
    return ServeSettings.from_environ(env or {}, Path("/opt/ml/model"), cores, memory_mb)


@pytest.mark.parametrize("cores, workers, threads", [
    (1, 1, 1), (2, 1, 2), (4, 2, 2), (16, 8, 2), (96, 48, 2),
])
def test_defaults_fit_the_cores(cores, workers, threads):
    chosen = settings(cores=cores)
    assert (chosen.workers, chosen.torch_threads) == (workers, threads)
    assert chosen.workers * chosen.torch_threads <= cores


@pytest.mark.parametrize("engine", [None, *serve_settings.WORKER_MEMORY_MB])
def test_the_default_workers_fit_an_ml_t3_medium_with_their_engines_measured_memory(engine):
    chosen = ServeSettings.from_environ({}, Path("/opt/ml/model"), T3_MEDIUM["cores"], T3_MEDIUM["memory_mb"],
                                        engine=engine)
    budget = serve_settings.WORKER_MEMORY_MB.get(engine, serve_settings.DEFAULT_WORKER_MEMORY_MB)
    used = chosen.workers * budget + serve_settings.RESERVED_MEMORY_MB
    assert chosen.workers >= 1 and used <= T3_MEDIUM["memory_mb"]


def test_the_served_engines_memory_budgets_the_default_workers():
    for engine, budget in serve_settings.WORKER_MEMORY_MB.items():
        room_for_three = serve_settings.RESERVED_MEMORY_MB + 3 * budget
        chosen = ServeSettings.from_environ({}, Path("/m"), 16, room_for_three, engine=engine)
        assert chosen.workers == 3, engine
        overridden = ServeSettings.from_environ({"SERVE_WORKER_MEMORY_MB": str(budget // 2)}, Path("/m"), 16,
                                                room_for_three, engine=engine)
        assert overridden.workers >= 6, engine
    # An engine not known yet gets the largest budget.
    assert max(serve_settings.WORKER_MEMORY_MB.values()) == serve_settings.DEFAULT_WORKER_MEMORY_MB
    unknown = serve_settings.RESERVED_MEMORY_MB + 3 * serve_settings.DEFAULT_WORKER_MEMORY_MB
    assert ServeSettings.from_environ({}, Path("/m"), 16, unknown).workers == 3


@pytest.mark.parametrize("cores, memory_mb, workers", [
    (8, 4096, 3),  # many cores, little memory: the memory decides
    (8, 65536, 4),  # plenty of memory: half the cores
    (2, 1024, 1),  # never fewer than one
])
def test_default_workers_are_bounded_by_cores_and_memory(cores, memory_mb, workers):
    assert settings(cores=cores, memory_mb=memory_mb).workers == workers
    assert settings({"SERVE_WORKER_MEMORY_MB": "500"}, cores=8, memory_mb=4096).workers == 4


def test_available_memory_is_the_containers_limit_else_the_machines(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:  1 kB\n")
    limit, unlimited = tmp_path / "memory.max", tmp_path / "unlimited"
    limit.write_text(f"{4096 * MB}\n")
    unlimited.write_text("max\n")
    assert serve_settings.available_memory_mb((str(limit),), str(meminfo)) == 4096
    assert serve_settings.available_memory_mb((str(unlimited), str(tmp_path / "none")), str(meminfo)) == 16000


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

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = json.dumps({"pid": finished.pid, "started": psutil.Process(finished.pid).create_time()})
    finished.wait()
    (tmp_path / f"{worker_state.READY_PREFIX}{finished.pid}").write_text(dead)  # a dead worker
    (tmp_path / worker_state.FAILURE_FILE).write_text("model failed to load: boom\n")
    status, body = health(upstream)
    assert (status, body["status"], body["reason"]) == (503, "Unhealthy", "model failed to load: boom")

    (tmp_path / f"{worker_state.READY_PREFIX}{os.getpid()}").write_text(identity_of(os.getpid()))  # alive
    assert health(upstream) == (200, {"status": "Healthy", "workers_ready": 1})

    stopped = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: False)
    assert health(stopped)[0] == 503


def identity_of(pid: int) -> str:
    return json.dumps({"pid": pid, "started": psutil.Process(pid).create_time()})


def test_a_ready_file_counts_only_for_the_very_process_that_wrote_it(tmp_path):
    (tmp_path / f"{worker_state.READY_PREFIX}{os.getpid()}").write_text(identity_of(os.getpid()))
    assert worker_state.ready_workers(tmp_path) == [os.getpid()]
    reused = json.dumps({"pid": os.getpid(), "started": psutil.Process().create_time() - 60})
    (tmp_path / f"{worker_state.READY_PREFIX}{os.getpid()}").write_text(reused)  # a pid reused since
    assert worker_state.ready_workers(tmp_path) == []


def test_a_dead_worker_parent_makes_the_server_unhealthy_with_the_reason(tmp_path):
    upstream = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: True)
    (tmp_path / f"{worker_state.READY_PREFIX}{os.getpid()}").write_text(identity_of(os.getpid()))
    (tmp_path / worker_state.WORKER_PARENT_FILE).write_text(identity_of(os.getppid()))
    assert health(upstream)[0] == 200 and worker_state.lost_worker_parent(tmp_path) is None
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    parent = json.dumps({"pid": finished.pid, "started": psutil.Process(finished.pid).create_time()})
    finished.wait()
    (tmp_path / worker_state.WORKER_PARENT_FILE).write_text(parent)
    status, body = health(upstream)
    assert (status, body["status"]) == (503, "Unhealthy")
    assert f"worker parent (pid {finished.pid}) died" in body["reason"]


def test_the_request_clock_waits_idle_then_holds_a_begun_request_to_its_deadline():
    clock = RequestClock(ClientLimits(idle_timeout=7, read_timeout=0.05))
    assert clock.next_read_timeout() == 7  # nothing arrived: an idle connection
    clock.data_arrived()
    assert 0 < clock.next_read_timeout() <= 0.05
    deadline = clock.deadline
    clock.data_arrived()  # more bytes of the same request: the deadline stays
    assert clock.deadline == deadline
    while clock.deadline > time.monotonic():
        pass
    with pytest.raises(RequestTimeout):
        clock.next_read_timeout()
    clock.between_requests()
    assert clock.next_read_timeout() == 7


def test_connections_beyond_the_limit_get_an_immediate_json_503(tmp_path):
    upstream = Upstream(inference_port=1, timeout_seconds=1, state_dir=tmp_path, is_running=lambda: True)
    gateway = Gateway(("127.0.0.1", 0), upstream, MB, 1, ClientLimits(idle_timeout=30, max_connections=2))
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    port = gateway.server_address[1]
    request = b"GET /execution-parameters HTTP/1.1\r\nHost: x\r\n\r\n"
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        for sock in held:  # both are served, and kept alive
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            head, _, body = third.recv(4096).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        assert "SERVE_MAX_CONNECTIONS" in json.loads(body)["message"]

        held.pop().close()  # one ends: a new connection is served again
        deadline, served = time.monotonic() + 10, False
        while not served and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
                again.sendall(request)
                served = again.recv(4096).startswith(b"HTTP/1.1 200")
        assert served
    finally:
        for sock in held:
            sock.close()
        gateway.shutdown()
        gateway.server_close()


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
