"""The real serving stack under load and faults (``scripts.local.load``): many clients with good and bad
inputs, a slow client, an idle one, a model worker killed mid-load. Bounded in requests and time,
127.0.0.1 only; the longer soak with the production-sized model is ``make bench-serve``."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from serve_helpers import ServerProcess

from scripts.datasets.sample import make_image
from scripts.local import load

WORKERS = 2
IDLE_TIMEOUT_S = 3
READ_TIMEOUT_S = 6
WORKER_TIMEOUT_S = 60  # SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS (the default)
GATEWAY_TIMEOUT_S = WORKER_TIMEOUT_S + 5  # the gateway's own wait for the model server (serve.py)
SLACK_S = 10  # a busy machine's scheduling


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    """The shared training run's artifact, 2 workers x 1 torch thread, short client timeouts."""
    env = {
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS),
        "SERVE_TORCH_THREADS": "1",
        "SERVE_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT_S),
        "SERVE_REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT_S),
    }
    process = ServerProcess(trained_run / "model", tmp_path_factory.mktemp("faults") / "server.log", env)
    try:
        process.watch_ping(lambda status, body: status == 200 and body["workers_ready"] == WORKERS)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def kinds():
    buffer = io.BytesIO()
    make_image(0, 3, 64, np.random.default_rng(0)).save(buffer, "JPEG")
    return load.probes(buffer.getvalue())


def describe(outcomes) -> list[tuple]:
    return [(item.probe, item.status, round(item.seconds, 2), item.error[:120]) for item in outcomes]


def test_400_mixed_requests_from_16_threads_each_get_their_answer(server, kinds):
    workers = {process.pid for process in server.model_worker_processes()}
    result = load.run_load(server.port, kinds, total=400, threads=16)
    assert len(result.outcomes) == 400
    assert result.unexpected == [], describe(result.unexpected)
    for kind in kinds:  # every kind was sent, bad ones answered with their 4xx as JSON
        answered = [outcome for outcome in result.outcomes if outcome.probe == kind.name]
        assert answered and {outcome.status for outcome in answered} == {kind.expected}, kind.name
    assert {process.pid for process in server.model_worker_processes()} == workers  # none died
    assert server.ping()[0] == 200


def test_a_slow_body_holds_up_no_other_client_and_gets_a_408(server, kinds):
    slow: dict[str, load.SlowClientResult] = {}
    trickle = threading.Thread(
        target=lambda: slow.update(result=load.slow_body(server.port, bytes_per_second=4))
    )
    trickle.start()
    others = load.run_load(server.port, kinds[:2], total=6, threads=2)
    still_trickling = trickle.is_alive()
    trickle.join(timeout=READ_TIMEOUT_S + SLACK_S + 60)
    assert others.unexpected == [] and len(others.outcomes) == 6, describe(others.unexpected)
    assert still_trickling, "the other clients were answered only after the slow one"
    result = slow["result"]
    assert result.status == 408 and result.bytes_sent > 0, result
    assert READ_TIMEOUT_S - 1 <= result.seconds <= READ_TIMEOUT_S + SLACK_S, result


def test_an_idle_connection_is_closed_after_the_idle_timeout(server):
    closed_after = load.idle_close(server.port, limit_s=IDLE_TIMEOUT_S + SLACK_S + 30)
    assert closed_after is not None, "an idle connection was kept open"
    assert IDLE_TIMEOUT_S - 1 <= closed_after <= IDLE_TIMEOUT_S + SLACK_S


def test_a_worker_killed_mid_load_fails_only_its_own_requests_with_json_and_comes_back(server, kinds):
    result = load.kill_worker_under_load(server, server.port, kinds, WORKERS, total=120, threads=8)

    during = result.during.outcomes
    assert len(during) == 120
    hung = [outcome for outcome in during if outcome.status is None or outcome.seconds > GATEWAY_TIMEOUT_S]
    assert hung == [], describe(hung)
    failed = [item for item in result.during.unexpected if not (item.status >= 500 and item.json_error)]
    assert failed == [], describe(failed)  # anything not as expected is a JSON 5xx
    # /ping is honest: 200 exactly while a worker is ready, and it never counts the killed one
    assert all((status == 200) == (ready > 0) and ready <= WORKERS for _, status, ready in result.pings)
    assert result.recovered_s is not None, f"the workers did not all come back: {result.pings[-3:]}"
    assert result.killed_pid not in {process.pid for process in server.model_worker_processes()}
    assert len(result.after.outcomes) == 40
    assert result.after.unexpected == [], describe(result.after.unexpected)
