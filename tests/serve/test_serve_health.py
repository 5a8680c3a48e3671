"""``/ping`` tells the truth: 200 only with a warmed-up model, 503 with the reason when the artifact
is broken (never 200 while the workers die), and the server stops cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import shutil
import time

import psutil
import pytest
from serve_helpers import ServerProcess

from classifier import artifact

NEVER_HEALTHY_WINDOW_S = 10  # after the failure shows, /ping is watched this long more


@pytest.fixture(scope="module")
def good_artifact(trained_run):
    """The artifact of the suite's one real training run."""
    return trained_run / "model"


def broken_copy(good_artifact, tmp_path, breakage: str):
    model_dir = tmp_path / "broken"
    shutil.copytree(good_artifact, model_dir)
    if breakage == "corrupt":
        (model_dir / artifact.MODEL_FILE).write_bytes(b"not a torch.export archive")
    else:
        (model_dir / artifact.MODEL_FILE).unlink()
    return model_dir


def is_unhealthy(status: int, body: dict) -> bool:
    return body["status"] == "Unhealthy"


@pytest.mark.parametrize("breakage, words", [
    ("corrupt", f"cannot load {{model_dir}}/{artifact.MODEL_FILE}"),
    ("missing", f"missing {artifact.MODEL_FILE}"),
])
def test_broken_artifact_is_reported_unhealthy_with_its_reason_and_never_healthy(
    good_artifact, tmp_path, breakage, words
):
    model_dir = broken_copy(good_artifact, tmp_path, breakage)
    words = words.format(model_dir=model_dir.resolve())
    server = ServerProcess(model_dir, tmp_path / "server.log")
    try:
        seen = server.watch_ping(is_unhealthy)
        assert all(status == 503 for status, _ in seen)
        assert words in seen[-1][1]["reason"], seen[-1]

        deadline = time.monotonic() + NEVER_HEALTHY_WINDOW_S
        while time.monotonic() < deadline:  # MMS restarts the workers; each dies again
            answer = server.ping()
            assert answer is not None, f"/ping did not answer\n{server.log_tail()}"
            assert answer[0] == 503 and answer[1]["status"] == "Unhealthy", answer
            time.sleep(0.5)

        response = server.invoke(b"\xff\xd8\xff", "image/jpeg")
        assert response.status_code == 503 and words in response.json()["message"]
        assert f"model failed to load from {model_dir.resolve()}: " in server.log_text()
    finally:
        code = server.stop()
    assert code == 0, server.log_tail()


def worker_parent(server: ServerProcess) -> list[psutil.Process]:
    """MMS's Python backend, which forks every model worker (a child of java)."""
    backend = server.model_server_processes()
    found = []
    for process in server.all_processes():
        with contextlib.suppress(psutil.Error):
            if process.pid in backend and process.parent().name() == "java":
                found.append(process)
    return found


@pytest.mark.parametrize("victim", ["java", "worker parent"])
def test_model_server_dying_stops_the_server_with_status_1(good_artifact, tmp_path, victim):
    """MMS's frontend gone, or the process that forks its workers (no worker could start again)."""
    server = ServerProcess(broken_copy(good_artifact, tmp_path, "missing"), tmp_path / "server.log")
    try:
        server.watch_ping(is_unhealthy)
        targets = [p for p in server.all_processes() if p.name() == "java"] if victim == "java" else (
            worker_parent(server))
        assert len(targets) == 1
        targets[0].kill()
        server.process.wait(timeout=60)
    finally:
        code = server.stop()
    assert code == 1
    expected = "the model server exited on its own" if victim == "java" else "worker parent"
    assert expected in server.log_text()


def test_sigterm_stops_a_healthy_server_and_its_model_server(good_artifact, tmp_path):
    server = ServerProcess(good_artifact, tmp_path / "server.log", {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"})
    try:
        server.watch_ping(lambda status, body: status == 200)
        processes = server.all_processes()
        assert any(p.name() == "java" for p in processes) and server.model_server_processes()
    finally:
        started = time.monotonic()
        code = server.stop()
    assert code == 0, server.log_tail()
    assert server.leftovers == []
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    assert time.monotonic() - started < 30
    assert "SIGTERM received: stopping" in server.log_text()
